//! The loop: what wakes it, what each wake-up does, the timer work between batches, and the
//! one shutdown.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::sync::mpsc;

use super::{
    EXPIRE_EVERY, Flow, Query, Session, Sink,
    overload::{Switch, Why},
    reconcile,
};
use crate::{
    clock::monotonic_ns,
    event::Event,
    lifecycle::ReconcileStats,
    probe::Overload,
    source::{
        Source,
        file::Step,
        kernel::{self, Dump},
        snapshot::Snapshot,
    },
};

/// What woke the loop.
enum Wake {
    Stop,
    Events(anyhow::Result<usize>),
    Query(Query),
    Dump(anyhow::Result<Dump>),
}

impl Session {
    /// Applies events until the user stops, `duration` passes, a replay ends or the sink has
    /// what it wanted; then shuts down (see the module doc).
    pub async fn run(
        &mut self,
        sink: &mut dyn Sink,
        duration: Option<Duration>,
    ) -> anyhow::Result<()> {
        let stop = stop_signal(duration);
        tokio::pin!(stop);
        let mut batch = Vec::new();
        let mut sink_stopped = false;
        // Sockets in the start-up dump, once it has arrived.
        let mut loaded = None;
        if !self.is_live() {
            sink.started(self)?;
        }
        loop {
            let mut stopping = false;
            // A replay's recorded dumps and ticks run in file order, between their events.
            if let Some(step) = self.source.take_step() {
                self.step(step);
            } else {
                let wake = tokio::select! {
                    r = &mut stop => { r?; Wake::Stop }
                    r = self.source.next_batch(&mut batch) => Wake::Events(r),
                    Some(q) = next_query(&mut self.queries) => Wake::Query(q),
                    d = self.reconcile.taken() => Wake::Dump(d),
                };
                match wake {
                    Wake::Stop => {
                        self.drain(&mut batch);
                        stopping = true;
                    }
                    Wake::Events(Ok(n)) => self.took(&mut batch, n),
                    Wake::Events(Err(e)) => {
                        // A corrupt recording: what was read stays applied, the error ends it.
                        if let Source::File(f) = &mut self.source {
                            f.stop();
                        }
                        self.replay_error = Some(e);
                    }
                    Wake::Query(q) => {
                        // Answer with every transition made before the question came: a plain
                        // drain hands out only what is older than the watermark, which trails
                        // by the clock slack and stays put at a record still being written.
                        self.drain_past(monotonic_ns(), &mut batch, "a query's arrival")
                            .await;
                        self.apply_all(&mut batch, sink);
                        self.settle();
                        q(self);
                        continue;
                    }
                    Wake::Dump(d) => {
                        // The dump may show transitions still in the ring: those are drained and
                        // applied first (below), the dump at the tick after them.
                        self.drain(&mut batch);
                        match d {
                            Ok(d) => {
                                let starting = self.starting;
                                if starting {
                                    loaded = Some(d.snap.sockets.len());
                                }
                                self.reconcile.arrived(d);
                                if starting {
                                    // The start-up dump is applied before the session says it
                                    // has started (`top --iterations 1` shows the sockets that
                                    // existed), so the events before it are taken in first.
                                    self.drain_past(monotonic_ns(), &mut batch, "a dump's arrival")
                                        .await;
                                }
                            }
                            Err(e) if self.starting => {
                                return Err(e.context("loading the existing sockets"));
                            }
                            Err(e) => log::warn!(
                                "reconciliation with the kernel socket table failed: {e:#}"
                            ),
                        }
                    }
                }
            }
            self.apply_all(&mut batch, sink);
            self.tick();
            if let Some(n) = loaded.take() {
                // From here on every change is seen live (tests wait for "attached").
                self.starting = false;
                if let Source::Kernel(k) = &self.source {
                    k.announce(n);
                }
                sink.started(self)?;
            }
            if stopping || self.is_done() {
                break;
            }
            // A sink sees batches once the session has started (`top --iterations 1` shows
            // the sockets that existed already, not an empty table).
            if self.starting {
                continue;
            }
            if sink.batch(self, false)? == Flow::Stop {
                sink_stopped = true;
                break;
            }
        }
        self.shutdown(sink, &mut batch, sink_stopped).await
    }

    /// The one way a session ends.
    async fn shutdown(
        &mut self,
        sink: &mut dyn Sink,
        batch: &mut Vec<Event>,
        sink_stopped: bool,
    ) -> anyhow::Result<()> {
        if self.is_live() {
            // Counts are the sockets in each state at the end: one last check against the
            // kernel's table makes them exact (a replay has that check in its file). The dump
            // may show transitions still in the ring: drained and applied before it.
            self.reconcile.cancel();
            self.reconcile.start(&self.filters);
            // The ring is drained while the table is read: a slow dump (many processes to scan)
            // must not fill it.
            let dump = loop {
                tokio::select! {
                    d = self.reconcile.taken() => break d?,
                    r = self.source.next_batch(batch) => {
                        if let Ok(n) = r {
                            self.took(batch, n);
                        }
                        self.apply_all(batch, sink);
                    }
                }
            };
            let counters = self.source.kernel().map(|k| k.probe.kernel_counters());
            // Everything read from the rings, younger than the watermark too: nothing comes
            // after it.
            let n = self.source.drain_all(batch);
            self.took(batch, n);
            self.apply_all(batch, sink);
            if let (Some(k), Some(c)) = (self.source.kernel(), counters) {
                self.losses.settle_final(k, &c);
            }
            self.apply_dump(dump);
        }
        if !sink_stopped {
            sink.batch(self, true)?;
        }
        let end_ns = self.now_ns();
        self.finish(end_ns)?;
        if let Some(e) = self.replay_error.take() {
            return Err(e);
        }
        if let Some(t) = self.truncation() {
            eprintln!(
                "tcptrace: warning: the recording was cut short at byte {} ({}); the {} records \
                 before it were replayed, and the loss counters after its last Loss record are \
                 unknown",
                t.offset, t.why, t.records
            );
        }
        sink.finish(self, end_ns)?;
        eprintln!("{}", self.closing_line());
        Ok(())
    }

    /// The last timer work (a replay runs it from its End record) and the recording's End
    /// record with the final counters.
    fn finish(&mut self, now_ns: u64) -> anyhow::Result<()> {
        if let Some(k) = self.source.kernel() {
            log::debug!(
                "kernel counters at the end: {:?}",
                k.probe.kernel_counters()
            );
            log::debug!(
                "fullest ring {} of {} bytes (one CPU's), longest gap between drains {:.1} ms",
                k.reader.high_water,
                k.probe.rings.per_cpu,
                k.reader.max_drain_gap.as_secs_f64() * 1e3
            );
            self.expire(now_ns);
        }
        if let Some(r) = self.recorder.take() {
            let loss = self.loss();
            r.finish(&loss, now_ns)?;
        }
        Ok(())
    }

    fn apply_all(&mut self, batch: &mut Vec<Event>, sink: &mut dyn Sink) {
        // By reference, then cleared: `drain(..)` moved each event out of the batch first, a
        // copy of the whole `Event` per event (1.3% of the tracer's samples at 40k conn/s).
        for ev in batch.iter() {
            self.apply(ev);
            sink.event(ev, &self.applied);
        }
        batch.clear();
    }

    /// Drains until every event stamped before `t_ns` has been handed out (the reader's
    /// watermark trails its drains by a millisecond); gives up after a second, when a ring's
    /// record stays half-written (a CPU stopped mid-program), and says so.
    async fn drain_past(&mut self, t_ns: u64, out: &mut Vec<Event>, what: &str) {
        let give_up = Instant::now() + Duration::from_secs(1);
        loop {
            self.drain(out);
            if self.source.handed_out_ns() > t_ns {
                return;
            }
            if Instant::now() >= give_up {
                log::warn!("the ring buffers were not read past {what} within 1 s");
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Appends what the rings hold now, up to the watermark, without waiting.
    fn drain(&mut self, out: &mut Vec<Event>) {
        let n = self.source.drain(out);
        self.took(out, n);
    }

    /// Takes in the `n` events just appended to `out`: applies `--netns`, records them, counts.
    fn took(&mut self, out: &mut Vec<Event>, n: usize) {
        let n = self.keep_namespaces(out, n);
        if let Some(r) = &mut self.recorder
            && let Err(e) = r.events(&out[out.len() - n..])
        {
            eprintln!("tcptrace: recording stopped: {e}");
            self.recorder = None;
        }
        self.events += n as u64;
    }

    /// Applies `--netns` to the `n` events just appended; returns how many remain. (The kernel
    /// filters ports and families; namespaces are few and cheap to test here.)
    fn keep_namespaces(&self, out: &mut Vec<Event>, n: usize) -> usize {
        if self.filters.netns.is_empty() {
            return n;
        }
        // In place: no second vector and no second move of every event per batch.
        let start = out.len() - n;
        let mut i = 0;
        out.retain(|e| {
            let keep = i < start || self.filters.matches_netns(e.netns);
            i += 1;
            keep
        });
        out.len() - start
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Reconcile(snap, holders) => {
                self.apply_snapshot(snap, holders.as_ref());
            }
            Step::Tick(ts) | Step::End(ts) => self.expire(ts),
        }
    }

    fn expire(&mut self, now: u64) {
        let expired = self.table.expire(now);
        self.agg.observe_expired(&expired, now);
    }

    /// Timer work: expire timewait sockets, reconcile with the kernel table every
    /// `RECONCILE_EVERY`, watch the event rate and losses. Replayed sessions run the recorded
    /// ticks instead.
    fn tick(&mut self) {
        if !self.is_live() {
            return;
        }
        self.settle();
        // Expiry takes what is due from a deadline heap: a few times a second is plenty for
        // 60 s timers.
        if self.last_expire.elapsed() >= EXPIRE_EVERY {
            self.last_expire = Instant::now();
            let now = monotonic_ns();
            self.expire(now);
            let loss = self.losses.settled();
            if let Some(r) = &mut self.recorder
                && let Err(e) = r.tick(now, loss)
            {
                eprintln!("tcptrace: recording stopped: {e}");
                self.recorder = None;
            }
            self.guard_overload();
            if self.reconcile.due(self.guard.counting()) {
                self.reconcile.start(&self.filters);
            }
        }
        if let Source::Kernel(k) = &self.source {
            self.losses.poll(k);
        }
    }

    fn guard_overload(&mut self) {
        let Source::Kernel(k) = &mut self.source else {
            return;
        };
        match self.guard.check(&mut k.probe, self.events) {
            Some(Switch::ToCounting(rate, why)) => {
                let cause = match why {
                    Why::Rate => format!(
                        "{rate:.0} events/s exceeds --max-event-rate {}",
                        self.guard.budget()
                    ),
                    Why::RingFull(n) => format!(
                        "the ring refused {n} records in the last second at {rate:.0} events/s \
                         (under --max-event-rate {}, but faster than tcptrace drained it: a larger \
                         --ring-size or a less loaded host helps)",
                        self.guard.budget()
                    ),
                    Why::RingFilled(n) => format!(
                        "a CPU's ring was three quarters full (tcptrace did not drain it as \
                         fast as the kernel filled it: a larger --ring-size or a less loaded \
                         host helps); the ring refused {n} records before that"
                    ),
                };
                eprintln!(
                    "tcptrace: {cause}: the kernel now counts transitions instead of sending \
                     them; per-connection detail pauses, counts stay exact through the kernel \
                     socket table (checked every {}s, or {} times as long as a check takes when \
                     that is longer, up to {}s)",
                    reconcile::EVERY_COUNTING.as_secs(),
                    reconcile::DUTY,
                    reconcile::EVERY.as_secs()
                )
            }
            Some(Switch::ToEvents(rate)) => {
                eprintln!("tcptrace: {rate:.0} events/s: back to tracing every transition");
                self.reconcile.soon();
            }
            None => {}
        }
    }

    /// What the overload guard did, once it has acted (None before, and for replays).
    pub fn overload(&self) -> Option<Overload> {
        self.guard.report(self.probe()?)
    }

    /// Applies the kernel table dump that arrived, if any. Only once the events before it have
    /// been applied, so the dump never looks newer than the table.
    pub fn settle(&mut self) {
        if let Some(d) = self.reconcile.take_arrived(self.source.handed_out_ns()) {
            self.apply_dump(d);
        }
    }

    /// Records a dump (at the point in the event stream where it is applied, so a replay
    /// applies it at the same point) and corrects the table from it.
    fn apply_dump(&mut self, d: Dump) -> ReconcileStats {
        if let Some(r) = &mut self.recorder
            && let Err(e) = r.dump(&d)
        {
            eprintln!("tcptrace: recording stopped: {e}");
            self.recorder = None;
        }
        self.apply_snapshot(d.snap, Some(&d.holders))
    }

    fn apply_snapshot(
        &mut self,
        mut snap: Snapshot,
        holders: Option<&crate::lifecycle::FdHolders>,
    ) -> ReconcileStats {
        // A recording may have been made with wider filters than this replay's.
        kernel::keep_wanted(&self.filters, &mut snap);
        let began = Instant::now();
        let source = &mut self.source;
        let st = self
            .table
            .reconcile_keeping_up(&snap, holders, &mut || source.keep_up());
        log::debug!(
            "reconciled with a dump of {} sockets taken {} ms ago, in {:.1} ms: {st:?}",
            snap.sockets.len(),
            monotonic_ns().saturating_sub(snap.taken_ns) / 1_000_000,
            began.elapsed().as_secs_f64() * 1e3
        );
        if let Some(fd) = holders {
            // Decided from the recorded dump and scan alone, so a replay folds the same groups
            // at the same moment.
            let pids: HashSet<u32> = fd.values().flatten().map(|p| p.pid).collect();
            let table = &self.table;
            self.agg.fold_ended(
                |o| !pids.contains(&o.pid) && !table.holds_owner(o),
                snap.taken_ns,
            );
        }
        st
    }
}

async fn next_query(rx: &mut Option<mpsc::Receiver<Query>>) -> Option<Query> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the user asks to stop (Ctrl-C, SIGTERM) or the duration runs out.
async fn stop_signal(duration: Option<Duration>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let sleep = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = sleep => {}
    }
    Ok(())
}
