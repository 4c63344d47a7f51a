//! When the table is checked against the kernel's own socket table, and the dumps that check
//! uses: taken on a blocking thread, so ring draining and `/metrics` answers never wait for a
//! dump or a `/proc/*/fd` scan (hundreds of ms with many processes).
//!
//! Ordering keeps counts exact: a dump shows each socket as it was when the kernel reached it,
//! which can be after transitions still waiting in the rings. So a dump that arrives is applied
//! only once the reader's watermark has passed its arrival, i.e. every event before it has been
//! applied (see `Session::run` and `probe/reader.rs`).

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::{
    clock::monotonic_ns,
    filter::Filters,
    source::kernel::{self, Dump},
};

/// How often the table is checked against the kernel's (and owners re-read from /proc).
pub const EVERY: Duration = Duration::from_secs(10);
/// The same while the overload guard has the kernel counting instead of sending events: the
/// kernel table is then what keeps the counts exact. At least this often...
pub const EVERY_COUNTING: Duration = Duration::from_secs(2);
/// ...unless dumping would take more than 1/`DUTY` of the time. The guard acts at the rates
/// where the table is largest (131,072 TIME_WAIT sockets, the `tcp_max_tw_buckets` cap, in
/// the bench's storm), and there a dump contends with the traffic for the hash buckets' locks:
/// under the storm `tcp_diag_dump` was 54% of the tracer's CPU in counting mode (`perf record
/// -p`), a two-family dump taking ~130 ms, every 2 s. Spacing the checks to 40 times the last
/// dump's duration (never beyond [`EVERY`]) keeps the guard from costing what it protects.
pub const DUTY: u32 = 40;

pub struct Reconciler {
    /// When the last dump was started.
    last: Instant,
    /// How long the last dump took, from its start to its result.
    took: Duration,
    /// Check at the next tick whatever the interval (after an overload ends).
    soon: bool,
    /// A dump being taken.
    task: Option<JoinHandle<anyhow::Result<Dump>>>,
    /// A dump taken, waiting to be applied once every event older than its arrival (CLOCK_MONOTONIC
    /// ns) has been.
    arrived: Option<(Dump, u64)>,
}

impl Reconciler {
    pub fn new() -> Reconciler {
        Reconciler {
            last: Instant::now(),
            took: Duration::ZERO,
            soon: false,
            task: None,
            arrived: None,
        }
    }

    /// Whether a dump should start now.
    pub fn due(&self, counting: bool) -> bool {
        self.task.is_none() && (self.soon || self.last.elapsed() >= self.every(counting))
    }

    /// The interval between checks: see [`EVERY_COUNTING`] and [`DUTY`].
    pub fn every(&self, counting: bool) -> Duration {
        if counting {
            (self.took * DUTY).clamp(EVERY_COUNTING, EVERY)
        } else {
            EVERY
        }
    }

    pub fn soon(&mut self) {
        self.soon = true;
    }

    /// Starts a dump on a blocking thread.
    pub fn start(&mut self, filters: &Filters) {
        self.last = Instant::now();
        self.soon = false;
        let filters = filters.clone();
        self.task = Some(tokio::task::spawn_blocking(move || kernel::dump(&filters)));
    }

    /// Resolves when the dump being taken is ready; never when none is.
    pub async fn taken(&mut self) -> anyhow::Result<Dump> {
        let Some(task) = &mut self.task else {
            return std::future::pending().await;
        };
        let res = task.await;
        self.task = None;
        self.took = self.last.elapsed();
        res.map_err(|e| anyhow::anyhow!("the kernel table reader failed: {e}"))?
    }

    pub fn arrived(&mut self, d: Dump) {
        self.arrived = Some((d, monotonic_ns()));
    }

    /// The dump that arrived, once the events have been handed out up to its arrival
    /// (`handed_out_ns`: see `Source::handed_out_ns`): it shows each socket as it was when the
    /// kernel reached it, and the events before that must be in the table first.
    pub fn take_arrived(&mut self, handed_out_ns: u64) -> Option<Dump> {
        match &self.arrived {
            Some((_, at)) if *at < handed_out_ns => self.arrived.take().map(|(d, _)| d),
            _ => None,
        }
    }

    /// Drops a dump in progress or waiting (the final check at shutdown supersedes it).
    pub fn cancel(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.arrived = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_while_counting_take_at_most_a_fortieth_of_the_time() {
        let mut r = Reconciler::new();
        assert_eq!(r.every(false), EVERY);
        assert_eq!(r.every(true), EVERY_COUNTING, "no dump timed yet");
        r.took = Duration::from_millis(20);
        assert_eq!(r.every(true), EVERY_COUNTING, "cheap dumps: every 2 s");
        r.took = Duration::from_millis(130);
        assert_eq!(r.every(true), Duration::from_millis(5200));
        r.took = Duration::from_secs(1);
        assert_eq!(r.every(true), EVERY, "never rarer than without the guard");
        assert_eq!(r.every(false), EVERY);
    }
}
