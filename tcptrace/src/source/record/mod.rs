//! Recorded sessions: a file that holds what a live session saw (kernel events, socket-table
//! snapshots, fd owners, losses), so that every view can be replayed later or elsewhere.
//!
//! The byte layout is documented in `docs/record-format.md`. In short: a header (magic, version,
//! flags, JSON metadata), then records framed as `type: u8, length: u32 LE, payload`. Events are
//! the kernel's 104-byte `RawEvent` verbatim. The file ends with an End record, so a recording cut
//! short is told apart from a complete one.
//!
//! [`RecordWriter`] writes one, [`RecordReader`] streams one back in constant memory.

mod error;
mod header;
mod io;
mod payload;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

pub use error::{Corruption, RecordError, TruncatedAt};
pub use header::{FLAG_SUMMARIES, FORMAT_MAJOR, FORMAT_MINOR, FormatVersion, Header, MAGIC};
pub use reader::RecordReader;
pub use writer::RecordWriter;

use crate::event::Event;
use crate::owner::process::ProcessRef;
use crate::probe::LossReport;
use crate::source::snapshot::Snapshot;

/// Record type tags, the first byte of every record. 0 is never used: a run of zero bytes (what
/// some filesystems leave after a crash) is then always corrupt, never a record.
pub mod tag {
    pub const EVENT: u8 = 1;
    pub const SNAPSHOT: u8 = 2;
    pub const FD_OWNERS: u8 = 3;
    pub const LOSS: u8 = 4;
    pub const MARK: u8 = 5;
    pub const END: u8 = 6;
    /// A [`tcptrace_common::SockSummary`] verbatim (format 1.2, files with `FLAG_SUMMARIES`).
    pub const SUMMARY: u8 = 7;
    /// The receive clocks of a snapshot's CLOSE_WAIT sockets (format 1.3): written in one or
    /// more parts right after every snapshot, joined into it by the reader.
    pub const RECEIVE_CLOCKS: u8 = 8;
}

/// Type tag (u8) and payload length (u32 LE) in front of every payload.
pub const FRAME_LEN: usize = 5;
/// No payload is longer: a corrupt length never costs more memory than this.
pub const MAX_PAYLOAD_LEN: u32 = 1 << 20;

/// One record of a recording, as the reader hands it out.
#[derive(Clone, Debug)]
pub enum Record {
    /// A kernel event, decoded.
    Event(Event),
    /// The kernel's socket table at one moment (joined from its parts).
    Snapshot(Snapshot),
    /// Which processes held which socket inodes, from an fd scan.
    FdOwners(FdOwners),
    /// The loss counters at `ts_ns`.
    Loss { ts_ns: u64, loss: LossReport },
    /// A heartbeat written on a timer, so replay can pace quiet periods.
    Mark { ts_ns: u64 },
    /// The clean end of the recording; nothing follows it.
    End(End),
}

// By hand because `Snapshot` does not derive `PartialEq` (its rows do).
impl PartialEq for Record {
    fn eq(&self, other: &Record) -> bool {
        use Record::*;
        match (self, other) {
            (Event(a), Event(b)) => a == b,
            (Snapshot(a), Snapshot(b)) => a.taken_ns == b.taken_ns && a.sockets == b.sockets,
            (FdOwners(a), FdOwners(b)) => a == b,
            (Loss { ts_ns: t, loss: l }, Loss { ts_ns: u, loss: m }) => t == u && l == m,
            (Mark { ts_ns: a }, Mark { ts_ns: b }) => a == b,
            (End(a), End(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Record {}

/// The fd scan's result: socket inode -> every process holding a descriptor for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FdOwners {
    /// CLOCK_MONOTONIC nanoseconds when the scan started.
    pub taken_ns: u64,
    pub owners: HashMap<u64, Vec<ProcessRef>>,
}

/// What the End record says about the whole recording.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct End {
    /// CLOCK_MONOTONIC nanoseconds when recording stopped.
    pub ts_ns: u64,
    /// Event records in the file.
    pub events: u64,
    /// Records before End, of every type (a snapshot or fd-owner table counts once, however
    /// many parts it was written in).
    pub records: u64,
    /// The loss counters at the end.
    pub loss: LossReport,
}

/// Reads a whole recording held in memory: every record up to and including End. For fuzzing
/// and tests; files are read with [`RecordReader`], which does not hold them in memory.
pub fn read_all_from_bytes(bytes: &[u8]) -> Result<Vec<Record>, RecordError> {
    let mut reader = RecordReader::from_reader(bytes)?;
    let mut out = Vec::new();
    while let Some(r) = reader.next()? {
        out.push(r);
    }
    Ok(out)
}
