//! `--record FILE`: the session written as it runs, in the order it applied things, so that a
//! replay with `--from FILE` rebuilds exactly the same tables.
//!
//! Written to survive the incident it records: a heartbeat record flushes the buffer four times
//! a second (a killed tcptrace loses at most the last 250 ms), and the file's data is synced to
//! disk every few seconds from a blocking thread (a host crash loses at most that much). The
//! replay reads a file cut short up to its last complete record.

use std::{
    fs::File,
    io::BufWriter,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::{
    event::Event,
    probe::LossReport,
    source::{
        kernel::Dump,
        record::{Header, RecordWriter},
    },
};

/// How often the recorded data is pushed from the page cache to the disk.
const SYNC_EVERY: Duration = Duration::from_secs(5);

pub struct Recorder {
    writer: RecordWriter<BufWriter<File>>,
    /// A second handle on the file, for `sync_data` off the event loop.
    file: File,
    last_sync: Instant,
    /// Loss counters last written, so unchanged ones are not written again.
    last_loss: LossReport,
}

impl Recorder {
    pub fn create(path: &Path, header: &Header) -> anyhow::Result<Recorder> {
        let writer = RecordWriter::create(path, header)
            .with_context(|| format!("creating the recording {}", path.display()))?;
        let file = File::options()
            .append(true)
            .open(path)
            .with_context(|| format!("opening the recording {} to sync it", path.display()))?;
        Ok(Recorder {
            writer,
            file,
            last_sync: Instant::now(),
            last_loss: LossReport::default(),
        })
    }

    pub fn events(&mut self, evs: &[Event]) -> std::io::Result<()> {
        evs.iter().try_for_each(|ev| self.writer.write_event(ev))
    }

    /// A dump, at the point in the event stream where the session applies it.
    pub fn dump(&mut self, d: &Dump) -> std::io::Result<()> {
        self.writer.write_snapshot(&d.snap)?;
        self.writer.write_fd_owners(d.scan_ns, &d.holders)
    }

    /// The timer tick: a heartbeat (the replay expires timewait sockets at the same moments; it
    /// also flushes), the loss counters when they changed, and now and then a sync to disk.
    pub fn tick(&mut self, now_ns: u64, loss: LossReport) -> std::io::Result<()> {
        if loss != self.last_loss {
            self.writer.write_loss(&loss, now_ns)?;
            self.last_loss = loss;
        }
        self.writer.write_mark(now_ns)?;
        if self.last_sync.elapsed() >= SYNC_EVERY {
            self.last_sync = Instant::now();
            if let Ok(f) = self.file.try_clone() {
                // Off the event loop: a sync can wait on a busy disk for seconds.
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = f.sync_data() {
                        log::warn!("syncing the recording: {e}");
                    }
                });
            }
        }
        Ok(())
    }

    /// The End record with the final counters, flushed and synced.
    pub fn finish(self, loss: &LossReport, now_ns: u64) -> anyhow::Result<()> {
        let out = self
            .writer
            .finish(loss, now_ns)
            .context("finishing the recording")?;
        drop(out);
        self.file.sync_data().context("syncing the recording")
    }
}
