//! Reads a recording back, one record at a time, in constant memory.

use std::fs::File;
use std::io::{BufReader, Read};
use std::ops::RangeInclusive;
use std::path::Path;

use tcptrace_common::event::{RAW_EVENT_SIZE, SUMMARY_SIZE};

use crate::event::decode;
use crate::source::snapshot::Snapshot;

use super::error::{Corruption, RecordError, TruncatedAt};
use super::header::{FORMAT_MINOR, FormatVersion, Header};
use super::io::read_full;
use super::payload::{self, Cursor, MARK_LEN, PART_HEAD_LEN};
use super::{End, FRAME_LEN, FdOwners, MAX_PAYLOAD_LEN, Record, tag};

const FILE_BUFFER: usize = 256 * 1024;

/// Streams the records of a recording. Memory stays bounded by the largest record (capped at
/// [`MAX_PAYLOAD_LEN`]) plus the snapshot being joined, whatever the file's size.
///
/// After End, an error, or the end of the input, `next` returns `Ok(None)`.
pub struct RecordReader<R: Read> {
    input: R,
    header: Header,
    version: FormatVersion,
    /// The file is from a newer minor version of our major: skip record types we do not know,
    /// and ignore bytes past the end of the fixed-size records we do.
    newer_minor: bool,
    /// Bytes consumed: the offset of the next record.
    position: u64,
    /// Records handed out (End not included).
    records: u64,
    events: u64,
    /// Records of unknown type skipped (only in files of a newer minor version).
    skipped: u64,
    /// Receive-clock parts read with their snapshots: in End's `records`, not in `records`.
    clock_parts: u64,
    state: State,
    payload: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Reading,
    /// End was read: only the end of the input may follow.
    Ended,
    Done,
}

/// A record's frame, read and checked, with its payload in `RecordReader::payload`.
struct Frame {
    tag: u8,
    offset: u64,
}

impl RecordReader<BufReader<File>> {
    /// Opens the recording at `path` and reads its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RecordError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| RecordError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        RecordReader::from_reader(BufReader::with_capacity(FILE_BUFFER, file))
    }
}

impl<R: Read> RecordReader<R> {
    /// Reads the header from `input`. Records are read with many small reads: give it a
    /// buffered reader (or a byte slice).
    pub fn from_reader(mut input: R) -> Result<Self, RecordError> {
        let (header, version, position) = Header::read(&mut input)?;
        Ok(RecordReader {
            input,
            header,
            version,
            newer_minor: version.minor > FORMAT_MINOR,
            position,
            records: 0,
            events: 0,
            skipped: 0,
            clock_parts: 0,
            state: State::Reading,
            payload: Vec::new(),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The format version the file was written in.
    pub fn version(&self) -> FormatVersion {
        self.version
    }

    /// Byte offset of the next record.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Records read so far (End not included).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Records of types this build does not know, skipped (files of a newer minor version).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The next record; `Ok(None)` after End.
    ///
    /// A file that stops early gives `Truncated`, also when it stops cleanly between two records
    /// but has no End record: such a file was not finished, and a caller must not take it for a
    /// complete session. The records returned before any error stay valid.
    #[allow(
        clippy::should_implement_trait,
        reason = "fallible: the caller needs the error, then the stream stops"
    )]
    pub fn next(&mut self) -> Result<Option<Record>, RecordError> {
        let res = match self.state {
            State::Done => return Ok(None),
            State::Ended => self.after_end().map(|()| None),
            State::Reading => self.read_record().map(Some),
        };
        self.state = match &res {
            Ok(Some(Record::End(_))) => State::Ended,
            Ok(Some(_)) => State::Reading,
            Ok(None) | Err(_) => State::Done,
        };
        res
    }

    fn after_end(&mut self) -> Result<(), RecordError> {
        let mut byte = [0u8; 1];
        if read_full(&mut self.input, &mut byte, self.position)? != 0 {
            return Err(self.corrupt(self.position, Corruption::AfterEnd));
        }
        Ok(())
    }

    fn read_record(&mut self) -> Result<Record, RecordError> {
        let frame = loop {
            let Some(frame) = self.read_frame(self.position)? else {
                return Err(self.truncated(self.position, TruncatedAt::MissingEnd));
            };
            if is_known(frame.tag) {
                break frame;
            }
            self.skipped += 1;
        };
        let start = frame.offset;
        let record = match frame.tag {
            tag::EVENT => {
                let ev = decode(&self.payload[..RAW_EVENT_SIZE])
                    .map_err(|e| self.corrupt(start, Corruption::Event(e)))?;
                self.events += 1;
                Record::Event(ev)
            }
            tag::SUMMARY => {
                let ev = decode(&self.payload[..SUMMARY_SIZE])
                    .map_err(|e| self.corrupt(start, Corruption::Event(e)))?;
                self.events += 1;
                Record::Event(ev)
            }
            tag::SNAPSHOT => Record::Snapshot(self.read_snapshot(start)?),
            tag::FD_OWNERS => Record::FdOwners(self.read_fd_owners(start)?),
            tag::LOSS => {
                let mut c = Cursor::new(&self.payload);
                let parsed = c
                    .u64()
                    .and_then(|ts| Ok((ts, payload::read_loss(&mut c, self.version.minor)?)));
                let (ts_ns, loss) = parsed.map_err(|d| self.malformed(start, "loss record", d))?;
                Record::Loss { ts_ns, loss }
            }
            tag::MARK => {
                let ts_ns = Cursor::new(&self.payload)
                    .u64()
                    .map_err(|d| self.malformed(start, "mark", d))?;
                Record::Mark { ts_ns }
            }
            tag::END => return self.read_end(start).map(Record::End),
            t => return Err(self.corrupt(start, Corruption::UnknownType(t))),
        };
        self.records += 1;
        Ok(record)
    }

    fn read_snapshot(&mut self, start: u64) -> Result<Snapshot, RecordError> {
        let mut snap = Snapshot::default();
        let mut part_at = start;
        loop {
            let mut c = Cursor::new(&self.payload);
            let head =
                payload::part_head(&mut c).map_err(|d| self.malformed(part_at, "snapshot", d))?;
            if part_at == start {
                snap.taken_ns = head.taken_ns;
            } else if head.taken_ns != snap.taken_ns {
                return Err(self.broken_continuation(part_at, "snapshot", start));
            }
            payload::read_sockets(&mut c, head.count, &mut snap.sockets)
                .map_err(|d| self.malformed(part_at, "snapshot", d))?;
            if !head.more {
                break;
            }
            part_at = self.continuation(start, tag::SNAPSHOT, "snapshot")?;
        }
        if self.version.minor >= 3 {
            self.read_receive_clocks(start, &mut snap)?;
        }
        Ok(snap)
    }

    /// The receive-clock parts every snapshot of a 1.3 file is followed by.
    fn read_receive_clocks(&mut self, start: u64, snap: &mut Snapshot) -> Result<(), RecordError> {
        const WHAT: &str = "snapshot receive clocks";
        let mut clocks = std::collections::HashMap::new();
        loop {
            let part_at = self.continuation(start, tag::RECEIVE_CLOCKS, WHAT)?;
            let mut c = Cursor::new(&self.payload);
            let head = payload::part_head(&mut c).map_err(|d| self.malformed(part_at, WHAT, d))?;
            if head.taken_ns != snap.taken_ns {
                return Err(self.broken_continuation(part_at, WHAT, start));
            }
            payload::read_receive_clocks(&mut c, head.count, &mut clocks)
                .map_err(|d| self.malformed(part_at, WHAT, d))?;
            // In End's count one by one, as a reader that skips them counts them.
            self.clock_parts += 1;
            if !head.more {
                break;
            }
        }
        for s in &mut snap.sockets {
            s.last_recv_ms = clocks.get(&s.cookie).copied();
        }
        Ok(())
    }

    fn read_fd_owners(&mut self, start: u64) -> Result<FdOwners, RecordError> {
        let mut table = FdOwners::default();
        let mut part_at = start;
        loop {
            let mut c = Cursor::new(&self.payload);
            let head = payload::part_head(&mut c)
                .map_err(|d| self.malformed(part_at, "fd-owner table", d))?;
            if part_at == start {
                table.taken_ns = head.taken_ns;
            } else if head.taken_ns != table.taken_ns {
                return Err(self.broken_continuation(part_at, "fd-owner table", start));
            }
            payload::read_fd_owners(&mut c, head.count, &mut table.owners)
                .map_err(|d| self.malformed(part_at, "fd-owner table", d))?;
            if !head.more {
                return Ok(table);
            }
            part_at = self.continuation(start, tag::FD_OWNERS, "fd-owner table")?;
        }
    }

    /// The next part of a record written in parts (it must follow at once, with the same type):
    /// reads it and returns its offset.
    fn continuation(
        &mut self,
        start: u64,
        want: u8,
        what: &'static str,
    ) -> Result<u64, RecordError> {
        match self.read_frame(start)? {
            None => Err(self.truncated(start, TruncatedAt::Record)),
            Some(f) if f.tag == want => Ok(f.offset),
            Some(f) => Err(self.broken_continuation(f.offset, what, start)),
        }
    }

    fn read_end(&mut self, start: u64) -> Result<End, RecordError> {
        let mut c = Cursor::new(&self.payload);
        let parsed = (|| {
            Ok::<_, payload::Malformed>(End {
                ts_ns: c.u64()?,
                events: c.u64()?,
                records: c.u64()?,
                loss: payload::read_loss(&mut c, self.version.minor)?,
            })
        })();
        let end = parsed.map_err(|d| self.malformed(start, "End record", d))?;
        // Records of types skipped here were counted by the (newer) writer that knew them.
        let records = self.records + self.skipped + self.clock_parts;
        for (what, claimed, found) in [
            ("events", end.events, self.events),
            ("records", end.records, records),
        ] {
            if claimed != found {
                return Err(self.corrupt(
                    start,
                    Corruption::CountMismatch {
                        what,
                        claimed,
                        found,
                    },
                ));
            }
        }
        Ok(end)
    }

    /// Reads one frame and its payload into `self.payload`. `Ok(None)` when the input ends
    /// exactly where the frame would start. `logical_start` is where the record being read began
    /// (earlier than the frame for a continuation part), for truncation errors.
    fn read_frame(&mut self, logical_start: u64) -> Result<Option<Frame>, RecordError> {
        let offset = self.position;
        let mut frame = [0u8; FRAME_LEN];
        let got = read_full(&mut self.input, &mut frame, offset)?;
        if got == 0 {
            return Ok(None);
        }
        if got < FRAME_LEN {
            return Err(self.truncated_at(logical_start, offset + got as u64));
        }
        let tag = frame[0];
        let len = u32::from_le_bytes([frame[1], frame[2], frame[3], frame[4]]);
        let allowed = self
            .payload_len(tag)
            .ok_or_else(|| self.corrupt(offset, Corruption::UnknownType(tag)))?;
        if !allowed.contains(&len) {
            return Err(self.corrupt(offset, Corruption::BadLength { tag, len }));
        }
        // `len` is at most MAX_PAYLOAD_LEN here, so a corrupt length costs at most that much.
        self.payload.resize(len as usize, 0);
        let body = offset + FRAME_LEN as u64;
        let got = read_full(&mut self.input, &mut self.payload, body)?;
        if got < self.payload.len() {
            return Err(self.truncated_at(logical_start, body + got as u64));
        }
        self.position = body + u64::from(len);
        Ok(Some(Frame { tag, offset }))
    }

    /// The payload lengths a record type may have; `None` for a type that is corrupt here.
    fn payload_len(&self, tag: u8) -> Option<RangeInclusive<u32>> {
        let (loss_len, end_len) = payload::loss_and_end_len(self.version.minor);
        let fixed = |n: usize| {
            let n = n as u32;
            // A newer minor version may append fields to a fixed-size record.
            if self.newer_minor {
                n..=MAX_PAYLOAD_LEN
            } else {
                n..=n
            }
        };
        Some(match tag {
            tag::EVENT => fixed(RAW_EVENT_SIZE),
            tag::SUMMARY if self.header.summaries => fixed(SUMMARY_SIZE),
            tag::LOSS => fixed(loss_len),
            tag::MARK => fixed(MARK_LEN),
            tag::END => fixed(end_len),
            tag::SNAPSHOT | tag::FD_OWNERS => PART_HEAD_LEN as u32..=MAX_PAYLOAD_LEN,
            tag::RECEIVE_CLOCKS if self.version.minor >= 3 => {
                PART_HEAD_LEN as u32..=MAX_PAYLOAD_LEN
            }
            // A type added by a newer minor version: skipped. Tag 0 is never a record.
            t if self.newer_minor && t != 0 => 0..=MAX_PAYLOAD_LEN,
            _ => return None,
        })
    }

    /// The input ended where the next frame would start.
    fn truncated(&self, offset: u64, at: TruncatedAt) -> RecordError {
        RecordError::Truncated {
            offset,
            end: self.position,
            records: self.records,
            at,
        }
    }

    fn truncated_at(&self, offset: u64, end: u64) -> RecordError {
        RecordError::Truncated {
            offset,
            end,
            records: self.records,
            at: TruncatedAt::Record,
        }
    }

    fn corrupt(&self, offset: u64, what: Corruption) -> RecordError {
        RecordError::Corrupt {
            offset,
            records: self.records,
            what,
        }
    }

    fn malformed(
        &self,
        offset: u64,
        record: &'static str,
        detail: payload::Malformed,
    ) -> RecordError {
        self.corrupt(offset, Corruption::Payload { record, detail })
    }

    fn broken_continuation(&self, offset: u64, record: &'static str, started: u64) -> RecordError {
        self.corrupt(offset, Corruption::BrokenContinuation { record, started })
    }
}

fn is_known(t: u8) -> bool {
    matches!(
        t,
        tag::EVENT
            | tag::SNAPSHOT
            | tag::FD_OWNERS
            | tag::LOSS
            | tag::MARK
            | tag::END
            | tag::SUMMARY
            // Known, but only as the tail of a snapshot: alone it is corruption.
            | tag::RECEIVE_CLOCKS
    )
}
