//! The session: the one event loop every command runs.
//!
//! It owns the source (the kernel, or a recording), the clock, the socket table and the
//! aggregates, the timer work (timewait expiry, reconciliation with the kernel's socket table,
//! the overload guard, loss watching) and the recording, and hands what it applied to the sink
//! a command attached ([`Sink`]). Shutdown happens here, once, whatever the command: drain the
//! ring, check the kernel's table a last time, finish the recording with its End record.
//!
//! ```text
//! Source ──events──▶ apply (lifecycle ─▶ aggregate) ──▶ Sink::event
//!   │                      ▲
//!   └─ kernel table dump ──┘ (reconcile, off the loop)        Sink::batch / Sink::finish
//! ```

mod losses;
mod overload;
mod reconcile;
mod recorder;
mod sink;

use std::{
    collections::HashSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::sync::mpsc;

pub use sink::{Flow, NoSink, Query, Sink};

use crate::{
    aggregate::{AggLimits, Aggregates, Summary, SummaryInput, TransitionCounts, summary},
    clock::{WallClock, monotonic_ns},
    event::Event,
    filter::Filters,
    host::{DEFAULT_FIN_TIMEOUT_S, DEFAULT_PORT_RANGE, Sysctls, hostname},
    lifecycle::{Applied, Limits, ReconcileStats, SocketTable},
    owner::container::ContainerNames,
    probe::{
        HookPath, LossReport, Overload, Probe, ProbeOptions, TimewaitHooks, TimewaitMethod,
        kernel::kernel_release,
    },
    source::{
        Source,
        file::{FileSource, Speed, Step, Truncation},
        kernel::{self, Dump, KernelSource},
        record::Header,
        snapshot::Snapshot,
    },
    view::{
        loss::closing_line,
        report::{ReportDoc, SCHEMA as REPORT_SCHEMA},
    },
};

use losses::LossWatch;
use overload::{Guard, Switch};
use reconcile::Reconciler;
use recorder::Recorder;

/// How often timewait sockets are expired (and a Mark is recorded, so a replay expires them at
/// the same moments).
const EXPIRE_EVERY: Duration = Duration::from_millis(250);

/// What a session reads and how (the probe's part of the command line).
#[derive(Clone, Debug)]
pub struct Options {
    /// Replay this recording instead of reading the kernel.
    pub from: Option<PathBuf>,
    pub speed: Speed,
    /// Also write the session to this file as it runs.
    pub record: Option<PathBuf>,
    pub ring_bytes: u32,
    /// Force a hook path instead of the best this kernel offers.
    pub hook: Option<HookPath>,
    pub timewait_hooks: TimewaitHooks,
    /// The overload guard's budget, events per second.
    pub max_event_rate: u64,
}

/// Where the events come from, as the views name it: the live host, or the recorded one.
#[derive(Clone, Debug)]
pub struct Origin {
    pub host: String,
    pub kernel: String,
    /// "tp_btf" or "tracepoint": how the events were (or are being) delivered.
    pub hook: String,
    /// How TIME_WAIT is known (see `TimewaitMethod::as_str`).
    pub timewait_method: String,
    /// `net.ipv4.ip_local_port_range` of the observed host.
    pub port_range: (u16, u16),
    /// `net.ipv4.tcp_fin_timeout` of the observed host, ns.
    pub fin_timeout_ns: u64,
}

pub struct Session {
    source: Source,
    pub origin: Origin,
    pub table: SocketTable,
    pub agg: Aggregates,
    /// Transitions and resets applied, by kind, since the start.
    pub transitions: TransitionCounts,
    /// What the user asked to see; the kernel table dump is cut to it like the event stream.
    pub filters: Filters,
    pub clock: WallClock,
    pub started: Instant,
    pub started_ns: u64,
    /// Events applied (after duplicate removal in the reader).
    pub events: u64,
    /// Container names of this host's processes, cached for every view that names them.
    pub containers: ContainerNames,
    /// What the last event did: one buffer that [`SocketTable::apply_into`] fills, rather than
    /// a 440-byte result copied out per event.
    applied: Applied,
    recorder: Option<Recorder>,
    /// Why a replay stopped early (a corrupt recording).
    replay_error: Option<anyhow::Error>,
    losses: LossWatch,
    guard: Guard,
    reconcile: Reconciler,
    last_expire: Instant,
    /// Questions from outside the loop (the metrics server), answered on it.
    queries: Option<mpsc::Receiver<Query>>,
    /// The start-up dump of the kernel table has not been applied yet.
    starting: bool,
}

/// What woke the loop.
enum Wake {
    Stop,
    Events(anyhow::Result<usize>),
    Query(Query),
    Dump(anyhow::Result<Dump>),
}

impl Session {
    /// Starts a session: replays `--from FILE`, or loads and attaches the kernel programs, loads
    /// the sockets that exist already, and says so on stderr (tests wait for the word
    /// "attached"). With `--record FILE` the session is written to FILE as it runs.
    pub fn start(opts: &Options, filters: &Filters) -> anyhow::Result<Session> {
        if let Some(path) = &opts.from {
            if !filters.containers.is_empty() {
                anyhow::bail!(
                    "--container cannot filter a replay: a recording holds cgroup ids, not the \
                     container names of the host it was made on; filter by --pid or --comm, or \
                     use --container on the live host"
                );
            }
            return Session::replay(path, opts.speed, filters);
        }
        let k = KernelSource::open(&ProbeOptions {
            ring_bytes: opts.ring_bytes,
            family: filters.kernel_family(),
            ports: filters.kernel_ports(),
            force_path: opts.hook,
            backup: true,
            timewait_hooks: opts.timewait_hooks,
        })?;
        let sysctls = Sysctls::read();
        let method = k.timewait_method();
        let origin = Origin {
            host: hostname(),
            kernel: kernel_release(),
            hook: k.probe.path().to_string(),
            timewait_method: method.as_str().to_string(),
            port_range: sysctls.ip_local_port_range,
            fin_timeout_ns: sysctls.fin_timeout_ns(),
        };
        let started_ns = monotonic_ns();
        let mut s = Session::new(
            Source::Kernel(Box::new(k)),
            origin,
            filters,
            WallClock::now(),
            started_ns,
        );
        s.guard = Guard::new(opts.max_event_rate);
        s.table.set_exact_timewait_end(method.exact_end());
        if let Some(path) = &opts.record {
            s.recorder = Some(Recorder::create(path, &s.header())?);
        }
        // The programs are attached first, so no transition falls between the kernel table
        // dump and the event stream. The dump is read off the event loop (with many processes
        // the fd scan takes seconds, and the ring must be drained meanwhile) and applied after
        // the events that reached the ring while it was taken: views see those events, and the
        // table drops what the dump already covers. "attached" is said once it is applied.
        s.reconcile.start(&s.filters);
        s.starting = true;
        Ok(s)
    }

    fn new(
        source: Source,
        origin: Origin,
        filters: &Filters,
        clock: WallClock,
        started_ns: u64,
    ) -> Session {
        Session {
            source,
            table: SocketTable::new(Limits {
                fin_timeout_ns: origin.fin_timeout_ns,
                ..Limits::default()
            }),
            origin,
            agg: Aggregates::new(started_ns, AggLimits::default()),
            transitions: TransitionCounts::default(),
            filters: filters.clone(),
            clock,
            started: Instant::now(),
            started_ns,
            events: 0,
            containers: ContainerNames::new(),
            applied: Applied::default(),
            recorder: None,
            replay_error: None,
            losses: LossWatch::default(),
            guard: Guard::new(0),
            reconcile: Reconciler::new(),
            last_expire: Instant::now(),
            queries: None,
            starting: false,
        }
    }

    /// A session read from a recording.
    fn replay(path: &std::path::Path, speed: Speed, filters: &Filters) -> anyhow::Result<Session> {
        let file = FileSource::open(path, speed)?;
        let h = &file.header;
        eprintln!(
            "tcptrace: replaying {} recorded on {} (kernel {}, hook {}) by tcptrace {}",
            path.display(),
            h.hostname,
            h.kernel_release,
            h.hook,
            h.tcptrace_version
        );
        let origin = Origin {
            host: h.hostname.clone(),
            kernel: h.kernel_release.clone(),
            hook: h.hook.clone(),
            timewait_method: h.timewait_method.clone(),
            port_range: h
                .ip_local_port_range
                .map(|[a, b]| (a, b))
                .unwrap_or(DEFAULT_PORT_RANGE),
            fin_timeout_ns: u64::from(h.tcp_fin_timeout_s.unwrap_or(DEFAULT_FIN_TIMEOUT_S as u32))
                * 1_000_000_000,
        };
        // A recording made with an exact end has those end events: replayed, they must not
        // be pre-empted by the inferred expiry either.
        let exact_end =
            h.timewait_method != TimewaitMethod::Inferred.as_str() && !h.timewait_method.is_empty();
        let (clock, start) = (h.wall_clock(), h.start_mono_ns);
        let mut s = Session::new(Source::File(Box::new(file)), origin, filters, clock, start);
        s.table.set_exact_timewait_end(exact_end);
        Ok(s)
    }

    /// The recording's header for this live session.
    fn header(&self) -> Header {
        let o = &self.origin;
        Header {
            kernel_release: o.kernel.clone(),
            hostname: o.host.clone(),
            start_wall_ns: (self.started_ns as i128 + self.clock.offset_ns()).max(0) as u64,
            start_mono_ns: self.started_ns,
            hook: o.hook.clone(),
            timewait_method: o.timewait_method.clone(),
            ip_local_port_range: Some([o.port_range.0, o.port_range.1]),
            tcp_fin_timeout_s: Some((o.fin_timeout_ns / 1_000_000_000) as u32),
            command_line: std::env::args().collect(),
            ..Header::default()
        }
    }

    /// Questions from outside the loop (`serve`'s HTTP server) are answered on it, each with
    /// everything the kernel delivered up to that moment applied.
    pub fn answer_queries(&mut self, rx: mpsc::Receiver<Query>) {
        self.queries = Some(rx);
    }

    pub fn is_live(&self) -> bool {
        self.source.is_live()
    }

    /// True once a replayed recording has been read to its end.
    pub fn is_done(&self) -> bool {
        self.source.is_done()
    }

    /// The session's clock: monotonic now when live, the latest recorded time when replaying.
    pub fn now_ns(&self) -> u64 {
        self.source.now_ns()
    }

    /// Seconds of the session's own time since it started (recorded time when replaying).
    pub fn elapsed_s(&self) -> f64 {
        self.now_ns().saturating_sub(self.started_ns) as f64 / 1e9
    }

    pub fn probe(&self) -> Option<&Probe> {
        self.source.kernel().map(|k| &k.probe)
    }

    /// Where a replayed recording was cut short (it had no End record), if it was.
    pub fn truncation(&self) -> Option<&Truncation> {
        self.source.file().and_then(|f| f.truncated.as_ref())
    }

    /// Feeds one event to the socket table and the aggregates, and says what it did.
    pub fn apply(&mut self, ev: &Event) -> &Applied {
        self.table.apply_into(ev, &mut self.applied);
        if !self.applied.is_duplicate() {
            self.transitions.observe(ev);
        }
        self.agg.observe_applied(&self.applied, ev.ts_ns);
        &self.applied
    }

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
                        // Answer with everything the kernel has delivered up to now.
                        self.drain(&mut batch);
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
                                if self.starting {
                                    loaded = Some(d.snap.sockets.len());
                                }
                                self.reconcile.arrived(d);
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
            self.drain(batch);
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
                "ring high-water {:?} of {} bytes, longest gap between drains {:.1} ms",
                k.reader.high_water,
                k.probe.ring_bytes,
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
        for ev in batch.drain(..) {
            self.apply(&ev);
            sink.event(&ev, &self.applied);
        }
    }

    /// Appends what the ring holds now, without waiting.
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
        // The expiry scan walks the table: a few times a second is plenty for 60 s timers.
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
            Some(Switch::ToCounting(rate)) => eprintln!(
                "tcptrace: {rate:.0} events/s exceeds --max-event-rate {}: the kernel now counts \
                 transitions instead of sending them; per-connection detail pauses, counts stay \
                 exact through the kernel socket table (checked every {}s)",
                self.guard.budget(),
                reconcile::EVERY_COUNTING.as_secs()
            ),
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

    /// Applies the kernel table dump that arrived, if any. Only after the ring was drained, so
    /// the dump never looks newer than the table.
    pub fn settle(&mut self) {
        if let Some(d) = self.reconcile.take_arrived() {
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
        let st = self.table.reconcile(&snap, holders);
        log::debug!(
            "reconciled with a dump of {} sockets taken {} ms ago: {st:?}",
            snap.sockets.len(),
            monotonic_ns().saturating_sub(snap.taken_ns) / 1_000_000
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

    /// The loss picture: while live, the newest one the ring has been drained past (so it never
    /// claims what is still waiting in the ring); a replay's latest recorded counters.
    pub fn loss(&self) -> LossReport {
        match &self.source {
            Source::Kernel(_) => self.losses.settled(),
            Source::File(f) => f.loss,
        }
    }

    /// Transitions the kernel skipped without counting them, found by reconciliation.
    pub fn lost_uncounted(&self, loss: &LossReport) -> u64 {
        loss.uncounted(self.table.stats().corrections.state_fixed)
    }

    /// The report document's core, as of now.
    pub fn summary(&self, top: usize) -> Summary {
        self.summary_at(top, self.now_ns())
    }

    pub fn summary_at(&self, top: usize, now_ns: u64) -> Summary {
        let loss = self.loss();
        summary(
            &self.table,
            &self.agg,
            &SummaryInput {
                now_ns,
                lost_events: loss.lost(),
                lost_uncounted: self.lost_uncounted(&loss),
                timewait_hook_missed: loss.timewait_hook_missed,
                port_filter_forgot: loss.port_filter_forgot,
                timewait_method: &self.origin.timewait_method,
                port_range: self.origin.port_range,
                top,
            },
        )
    }

    /// The summary with each process row's container named (from this host's cgroups, so
    /// only when live) and cut to `--container`.
    pub fn summary_named(&mut self, top: usize, now_ns: u64) -> Summary {
        let mut s = self.summary_at(top, now_ns);
        if self.is_live() {
            for r in &mut s.by_pid {
                r.container = self.containers.of(r.pid, r.cgroup_id);
            }
            let filters = &self.filters;
            s.by_pid
                .retain(|r| filters.matches_container(r.container.as_ref()));
        }
        s
    }

    /// The `report --json` document for `summary`, taken now.
    pub fn report_doc<'a>(&self, summary: &'a Summary) -> ReportDoc<'a> {
        ReportDoc {
            schema: REPORT_SCHEMA,
            generated_at: WallClock::now().unix_secs(monotonic_ns()),
            host: self.origin.host.clone(),
            kernel: self.origin.kernel.clone(),
            hook: self.origin.hook.clone(),
            overload: self.overload(),
            recording_truncated: self.truncation().is_some(),
            summary,
        }
    }

    /// The closing line every command prints on stderr.
    pub fn closing_line(&self) -> String {
        let loss = self.loss();
        closing_line(
            self.events,
            self.started.elapsed().as_secs_f64(),
            &loss,
            self.lost_uncounted(&loss),
        )
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
