//! Watching for lost events while the session runs, and saying so at once: losses are never
//! silent. Also never early: a loss is claimed only once the ring has been drained past it.
//!
//! Why the care: a skipped run of the primary program is counted by the kernel the moment it
//! happens, but the backup program's copy of that transition is counted as recovered only when
//! the reader takes it from the ring. Read together, the counters claimed as lost every copy
//! still waiting in the ring: under a storm, `report` printed "lost 55 events", then "lost 351",
//! and ended with "lost 0 … recovered 5091". So the kernel counters read at one poll are judged
//! at a later poll, once the reader's watermark has passed the moment they were read: every
//! record stamped before then has been read and applied (see `probe/reader.rs`).

use std::time::{Duration, Instant};

use crate::{
    clock::monotonic_ns,
    probe::{KernelCounters, LossReport},
    source::kernel::KernelSource,
    view::loss::progress_line,
};

/// How often the kernel counters are read (a few syscalls each time).
const POLL_EVERY: Duration = Duration::from_millis(100);
/// A program counts a record (e.g. a recovered transition) a little before it stamps it: a
/// millisecond covers that program run.
const RECORD_AFTER_COUNT_NS: u64 = 1_000_000;
/// At most one progress line a second.
const LINE_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct LossWatch {
    /// Kernel counters read at the last poll, and when (CLOCK_MONOTONIC ns).
    read: Option<(KernelCounters, u64)>,
    /// The newest loss picture the ring has been drained past.
    settled: LossReport,
    /// Lost events already said on stderr.
    said: u64,
    last_poll: Option<Instant>,
    last_line: Option<Instant>,
}

impl LossWatch {
    /// The newest loss picture whose events the ring has been drained past.
    pub fn settled(&self) -> LossReport {
        self.settled
    }

    /// At most every `POLL_EVERY`: settles the counters read at the previous poll if the ring
    /// was drained since, reads them anew, and prints a line when the settled loss grew.
    pub fn poll(&mut self, k: &KernelSource) {
        if self.last_poll.is_some_and(|t| t.elapsed() < POLL_EVERY) {
            return;
        }
        self.last_poll = Some(Instant::now());
        if let Some((counters, at)) = &self.read {
            if k.reader.handed_out_ns() <= at + RECORD_AFTER_COUNT_NS {
                // Not read that far yet: judge these counters at a later poll.
                return;
            }
            self.settled = k.loss_with(counters);
        }
        let at = monotonic_ns();
        self.read = Some((k.probe.kernel_counters(), at));
        let lost = self.settled.lost();
        if lost > self.said && self.last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY) {
            eprintln!("{}", progress_line(lost - self.said, &self.settled));
            self.said = lost;
            self.last_line = Some(Instant::now());
        }
    }

    /// The final picture: counters read before the last drain of the ring (`read_then_drain`
    /// reads them, drains and applies what it drained).
    pub fn settle_final(&mut self, k: &KernelSource, counters: &KernelCounters) {
        self.settled = k.loss_with(counters);
        self.read = None;
    }
}
