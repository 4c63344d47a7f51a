//! Reading a recorded session back, paced in real time, faster, or as fast as possible.
//!
//! A recording cut short (tcptrace killed, the host crashed, the disk filled up) is what an
//! incident leaves behind, so it is replayed up to its last complete record, and the cut is
//! reported ([`Truncation`]) rather than refused. Bytes that no tcptrace writes, before the end,
//! are still an error with their offset.

use std::{
    collections::VecDeque,
    fs::File,
    io::{BufReader, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::{
    event::Event,
    owner::fdscan::FdHolders,
    probe::LossReport,
    source::{
        record::{Corruption, Header, Record, RecordError, RecordReader},
        snapshot::Snapshot,
    },
};

/// What the replay asks the session to do besides applying events, in file order.
pub enum Step {
    /// Reconcile with this kernel table dump (and the fd scan taken with it).
    Reconcile(Snapshot, Option<FdHolders>),
    /// Timer work that ran at this time in the live session (expiry of timewait sockets).
    Tick(u64),
    /// The end of the recording.
    End(u64),
}

/// Where a recording stopped without its End record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// Byte offset of the first unusable byte.
    pub offset: u64,
    /// Complete records before it, all replayed.
    pub records: u64,
    /// The reader's words for it.
    pub why: String,
}

/// Replay speed: a multiple of real time, or None for as fast as possible.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Speed(pub Option<f64>);

pub struct FileSource {
    path: PathBuf,
    reader: RecordReader<BufReader<File>>,
    pub header: Header,
    /// Latest loss counters in the stream.
    pub loss: LossReport,
    /// Latest timestamp seen: the session's "now".
    pub now_ns: u64,
    pub ended: bool,
    /// Set when the file stops without its End record: its last loss counters are unknown.
    pub truncated: Option<Truncation>,
    /// Steps read ahead, to be handed out after the events that preceded them are applied.
    steps: VecDeque<Step>,
    held: Option<Record>,
    speed: Option<f64>,
    pace_start: Option<(Instant, u64)>,
}

/// Events handed out per batch when replaying as fast as possible.
const BATCH: usize = 4096;

impl FileSource {
    /// `speed`: None replays as fast as possible; Some(1.0) in real time.
    pub fn open(path: &Path, speed: Speed) -> anyhow::Result<FileSource> {
        let reader =
            RecordReader::open(path).with_context(|| format!("reading {}", path.display()))?;
        let header = reader.header().clone();
        Ok(FileSource {
            path: path.to_path_buf(),
            now_ns: header.start_mono_ns,
            header,
            reader,
            loss: LossReport::default(),
            ended: false,
            truncated: None,
            steps: VecDeque::new(),
            held: None,
            speed: speed.0,
            pace_start: None,
        })
    }

    /// The next record; `Ok(None)` at the end of the file, also when it was cut short (then
    /// [`FileSource::truncated`] says where).
    fn next_record(&mut self) -> anyhow::Result<Option<Record>> {
        if let Some(r) = self.held.take() {
            return Ok(Some(r));
        }
        let at = self.reader.position();
        match self.reader.next() {
            Ok(r) => Ok(r),
            Err(e) if self.is_cut_short(&e) => {
                self.truncated = Some(Truncation {
                    offset: e.offset(),
                    records: e.records_before(),
                    why: e.to_string(),
                });
                Ok(None)
            }
            Err(e) => Err(e).with_context(|| {
                format!(
                    "recording broken after {} records (byte {at})",
                    self.reader.records()
                )
            }),
        }
    }

    /// A file that stops early, inside a record or between two without End, was cut short.
    /// So was one whose tail is all zero bytes: what some filesystems leave in a file's last
    /// blocks when the host crashed before the data reached them.
    fn is_cut_short(&self, e: &RecordError) -> bool {
        match e {
            RecordError::Truncated { .. } => true,
            RecordError::Corrupt {
                offset,
                what: Corruption::UnknownType(0),
                ..
            } => zeros_from(&self.path, *offset).unwrap_or(false),
            _ => false,
        }
    }

    /// Read to the end and every step handed out.
    pub fn finished(&self) -> bool {
        self.ended && self.steps.is_empty() && self.held.is_none()
    }

    /// Stops reading (a broken file): what was read stays applied.
    pub fn stop(&mut self) {
        self.ended = true;
        self.held = None;
    }

    /// Takes the next step that must run before more events, if any.
    pub fn take_step(&mut self) -> Option<Step> {
        self.steps.pop_front()
    }

    /// Reads the next events, up to the next non-event record (which becomes a step). Paces
    /// them when a speed is set.
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> anyhow::Result<usize> {
        let before = out.len();
        while !self.ended && self.steps.is_empty() && out.len() - before < BATCH {
            let Some(rec) = self.next_record()? else {
                self.ended = true;
                self.steps.push_back(Step::End(self.now_ns));
                break;
            };
            match rec {
                Record::Event(ev) => {
                    if self.speed.is_some()
                        && out.len() > before
                        && self.wait_for(ev.ts_ns).is_some()
                    {
                        // Due later: hand out what is due now, keep this one.
                        self.held = Some(Record::Event(ev));
                        break;
                    }
                    self.now_ns = self.now_ns.max(ev.ts_ns);
                    out.push(ev);
                }
                Record::Snapshot(snap) => {
                    self.now_ns = self.now_ns.max(snap.taken_ns);
                    let owners = match self.next_record()? {
                        Some(Record::FdOwners(f)) => Some(f.owners),
                        other => {
                            self.held = other;
                            None
                        }
                    };
                    self.steps.push_back(Step::Reconcile(snap, owners));
                }
                Record::FdOwners(_) => {}
                Record::Loss { ts_ns, loss } => {
                    self.now_ns = self.now_ns.max(ts_ns);
                    self.loss = loss;
                }
                Record::Mark { ts_ns } => {
                    self.now_ns = self.now_ns.max(ts_ns);
                    self.steps.push_back(Step::Tick(ts_ns));
                }
                Record::End(end) => {
                    self.now_ns = self.now_ns.max(end.ts_ns);
                    self.loss = end.loss;
                    self.ended = true;
                    self.steps.push_back(Step::End(end.ts_ns));
                }
            }
        }
        if let Some(first) = out.get(before).map(|e| e.ts_ns)
            && let Some(d) = self.wait_for(first)
        {
            tokio::time::sleep(d).await;
        }
        Ok(out.len() - before)
    }

    /// How long to wait before an event at `ts_ns` is due, at the replay speed.
    fn wait_for(&mut self, ts_ns: u64) -> Option<Duration> {
        let speed = self.speed?;
        let (t0, ts0) = *self.pace_start.get_or_insert((Instant::now(), ts_ns));
        let due = t0 + Duration::from_secs_f64(ts_ns.saturating_sub(ts0) as f64 / 1e9 / speed);
        due.checked_duration_since(Instant::now())
            .filter(|d| *d > Duration::from_millis(1))
    }
}

/// True when every byte of the file from `offset` to its end is zero.
fn zeros_from(path: &Path, offset: u64) -> std::io::Result<bool> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

/// `--speed`: a multiplier of real time, or `max`.
pub fn parse_speed(s: &str) -> Result<Speed, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Speed(None));
    }
    match s.trim_end_matches('x').parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(Speed(Some(v))),
        _ => Err(format!(
            "'{s}' is not a speed: use a positive multiplier (1 = real time, 10, 0.5) or max"
        )),
    }
}
