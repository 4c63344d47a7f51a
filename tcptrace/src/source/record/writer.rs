//! Writes a recording: the header at creation, then one record per call, End at `finish`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::mem::offset_of;
use std::path::Path;

use tcptrace_common::event::{AF_INET, AF_INET6, RAW_EVENT_SIZE, SUMMARY_SIZE, SockSummary};
use tcptrace_common::{EventKind, RawEvent, TcpState};

use crate::event::{Event, encode, encode_summary, raw_bytes, summary_bytes};
use crate::owner::process::ProcessRef;
use crate::probe::LossReport;
use crate::source::snapshot::Snapshot;

use super::header::Header;
use super::payload::{self, MARK_LEN};
use super::{End, FRAME_LEN, tag};

/// Buffer in front of the file: large writes, few syscalls.
const FILE_BUFFER: usize = 256 * 1024;

/// Writes a recording to any `Write`: a file (`create`) or, in tests, a `Vec<u8>`.
///
/// A record is written whole or not at all as far as this writer knows; after an I/O error the
/// writer refuses further records, because the file may now end inside one and anything written
/// after it would be read as garbage. What was written before stays readable.
///
/// The format stores integers little-endian and events in the kernel's layout, which is the
/// host's byte order: recordings are written on little-endian hosts (x86_64, aarch64).
pub struct RecordWriter<W: Write> {
    out: W,
    /// Bytes written so far: the offset the next record starts at.
    position: u64,
    events: u64,
    records: u64,
    failed: bool,
    /// Reused for snapshot and fd-owner parts.
    scratch: Vec<u8>,
}

impl RecordWriter<BufWriter<File>> {
    /// Creates (or truncates) the file at `path` and writes the header.
    pub fn create(path: impl AsRef<Path>, header: &Header) -> io::Result<Self> {
        let file = File::create(path)?;
        RecordWriter::new(BufWriter::with_capacity(FILE_BUFFER, file), header)
    }
}

impl<W: Write> RecordWriter<W> {
    /// Writes the header to `out` and returns a writer for the records.
    pub fn new(mut out: W, header: &Header) -> io::Result<Self> {
        let bytes = header.encode()?;
        out.write_all(&bytes)?;
        Ok(RecordWriter {
            out,
            position: bytes.len() as u64,
            events: 0,
            records: 0,
            failed: false,
            scratch: Vec::new(),
        })
    }

    /// Byte offset the next record will start at (the bytes written so far, buffered or not).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The output, e.g. to `sync_all` the file after a flush.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Event records written.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Records written, of every type (a snapshot counts once).
    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        match encode_summary(ev) {
            Some(summary) => self.write_summary(&summary),
            None => self.write_raw(raw_bytes(&encode(ev))),
        }
    }

    /// Writes a summary record (the file's header must say it holds them: `Header::summaries`).
    pub fn write_summary(&mut self, s: &SockSummary) -> io::Result<()> {
        self.check_usable()?;
        let mut rec = [0u8; FRAME_LEN + SUMMARY_SIZE];
        rec[0] = tag::SUMMARY;
        rec[1..FRAME_LEN].copy_from_slice(&(SUMMARY_SIZE as u32).to_le_bytes());
        rec[FRAME_LEN..].copy_from_slice(summary_bytes(s));
        self.put(&rec)?;
        self.events += 1;
        self.records += 1;
        Ok(())
    }

    /// Writes a ring buffer record as it came from the kernel, without decoding it.
    ///
    /// Refuses (with `InvalidData`, writing nothing) a record `tcptrace::event::decode` would
    /// reject: the reader treats an undecodable event as corruption, so one bad record must not
    /// make the rest of the file unreadable. Count it as `undecodable` loss instead.
    pub fn write_raw(&mut self, raw: &[u8]) -> io::Result<()> {
        if let Err(why) = check_raw(raw) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
        self.check_usable()?;
        let mut rec = [0u8; FRAME_LEN + RAW_EVENT_SIZE];
        rec[0] = tag::EVENT;
        rec[1..FRAME_LEN].copy_from_slice(&(RAW_EVENT_SIZE as u32).to_le_bytes());
        rec[FRAME_LEN..].copy_from_slice(raw);
        self.put(&rec)?;
        self.events += 1;
        self.records += 1;
        Ok(())
    }

    pub fn write_snapshot(&mut self, snap: &Snapshot) -> io::Result<()> {
        self.check_usable()?;
        let mut buf = std::mem::take(&mut self.scratch);
        let res = payload::snapshot_parts(snap.taken_ns, &snap.sockets, &mut buf, |part| {
            self.put_record(tag::SNAPSHOT, part)
        })
        .and_then(|()| {
            payload::receive_clock_parts(snap.taken_ns, &snap.sockets, &mut buf, |part| {
                self.put_record(tag::RECEIVE_CLOCKS, part)
            })
        });
        self.scratch = buf;
        // Each receive-clock part counts as a record: a 1.2 reader skips each as one.
        let clock_parts = res?;
        self.records += 1 + clock_parts;
        Ok(())
    }

    /// Writes the result of an fd scan (`owner::fdscan::scan_socket_owners`) started at
    /// `taken_ns` (CLOCK_MONOTONIC). Inodes are written in ascending order.
    pub fn write_fd_owners(
        &mut self,
        taken_ns: u64,
        owners: &HashMap<u64, Vec<ProcessRef>>,
    ) -> io::Result<()> {
        self.check_usable()?;
        let mut buf = std::mem::take(&mut self.scratch);
        let res = payload::fd_owner_parts(taken_ns, owners, &mut buf, |part| {
            self.put_record(tag::FD_OWNERS, part)
        });
        self.scratch = buf;
        res?;
        self.records += 1;
        Ok(())
    }

    /// Records the loss counters as they stood at `ts_ns` (CLOCK_MONOTONIC).
    pub fn write_loss(&mut self, loss: &LossReport, ts_ns: u64) -> io::Result<()> {
        self.check_usable()?;
        self.put_record(tag::LOSS, &payload::loss_payload(ts_ns, loss))?;
        self.records += 1;
        Ok(())
    }

    /// Writes a heartbeat at `ts_ns` and flushes: marks are written on a timer, so a recording
    /// that is killed loses at most what came after the last one.
    pub fn write_mark(&mut self, ts_ns: u64) -> io::Result<()> {
        self.check_usable()?;
        let payload: [u8; MARK_LEN] = ts_ns.to_le_bytes();
        self.put_record(tag::MARK, &payload)?;
        self.records += 1;
        self.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.check_usable()?;
        let res = self.out.flush();
        self.failed |= res.is_err();
        res
    }

    /// Writes the End record with the final loss counters at `ts_ns`, flushes, and returns the
    /// output (for a file: call `into_inner()?.sync_all()` if it must survive a host crash).
    pub fn finish(mut self, loss: &LossReport, ts_ns: u64) -> io::Result<W> {
        self.check_usable()?;
        let end = End {
            ts_ns,
            events: self.events,
            records: self.records,
            loss: *loss,
        };
        self.put_record(tag::END, &payload::end_payload(&end))?;
        self.flush()?;
        Ok(self.out)
    }

    fn check_usable(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(
                "an earlier write to this recording failed; it may end inside a record",
            ));
        }
        Ok(())
    }

    fn put_record(&mut self, tag: u8, payload: &[u8]) -> io::Result<()> {
        debug_assert!(payload.len() <= super::MAX_PAYLOAD_LEN as usize);
        let mut frame = [0u8; FRAME_LEN];
        frame[0] = tag;
        frame[1..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        self.put(&frame)?;
        self.put(payload)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        let res = self.out.write_all(bytes);
        self.failed |= res.is_err();
        res?;
        self.position += bytes.len() as u64;
        Ok(())
    }
}

/// The checks `event::decode` makes, on the raw bytes and without building the event: size,
/// kind, the two states of a transition, address family.
fn check_raw(raw: &[u8]) -> Result<(), String> {
    if raw.len() != RAW_EVENT_SIZE {
        return Err(format!(
            "event record is {} bytes, expected {RAW_EVENT_SIZE}",
            raw.len()
        ));
    }
    let byte = |off: usize| raw[off];
    let kind = byte(offset_of!(RawEvent, kind));
    match EventKind::from_u8(kind) {
        None => return Err(format!("unknown event kind {kind}")),
        Some(EventKind::StateChange) => {
            for off in [
                offset_of!(RawEvent, oldstate),
                offset_of!(RawEvent, newstate),
            ] {
                if TcpState::from_u8(byte(off)).is_none() {
                    return Err(format!("unknown TCP state {}", byte(off)));
                }
            }
        }
        Some(EventKind::TimeWaitEnter) => {
            let s = byte(offset_of!(RawEvent, newstate));
            if s != TcpState::TimeWait as u8 && s != TcpState::FinWait2 as u8 {
                return Err(format!(
                    "timewait substate {s} is not TIME_WAIT or FIN_WAIT2"
                ));
            }
        }
        Some(EventKind::ResetReceived | EventKind::ResetSent | EventKind::TimeWaitEnd) => {}
    }
    let at = offset_of!(RawEvent, family);
    let family = u16::from_ne_bytes([raw[at], raw[at + 1]]);
    if family != AF_INET && family != AF_INET6 {
        return Err(format!("unknown address family {family}"));
    }
    Ok(())
}

#[cfg(test)]
pub(super) fn raw_would_decode(raw: &[u8]) -> bool {
    check_raw(raw).is_ok()
}
