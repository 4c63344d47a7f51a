//! A session: events from the kernel (or from a recording), the socket table fed, losses
//! watched. Every command that observes sockets (trace, top, report) runs one of these.
//!
//! A live session can also record itself: events, kernel table dumps, timer ticks and loss
//! counters go to the file in the order the session applied them, so a replay with `--from`
//! rebuilds exactly the same tables.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;

use super::replay::{FileSource, Step};
use crate::{
    aggregate::{AggLimits, Aggregates, Summary, SummaryInput, summary},
    cli::{ProbeArgs, TimewaitHooksArg},
    clock::{WallClock, monotonic_ns},
    event::Event,
    filter::Filters,
    lifecycle::{Applied, FdOwners, Limits, ReconcileStats, SocketTable},
    owner::{fdscan, process::ProcessRef},
    probe::{
        EventReader, LossReport, Probe, ProbeOptions, TimewaitHooks, TimewaitMethod,
        kernel::kernel_release,
    },
    source::{
        netns,
        record::{Header, RecordWriter},
        snapshot::Snapshot,
    },
};

/// Where the events come from.
pub enum Source {
    Kernel {
        probe: Box<Probe>,
        reader: Box<EventReader>,
    },
    File(Box<FileSource>),
}

pub struct Live {
    pub source: Source,
    pub table: SocketTable,
    pub agg: Aggregates,
    /// What the user asked to see; the kernel table dump is cut to it like the event stream.
    pub filters: Filters,
    pub clock: WallClock,
    pub started: Instant,
    pub started_ns: u64,
    /// Events applied (after duplicate removal).
    pub events: u64,
    /// What the last event did: one buffer that [`SocketTable::apply_into`] fills, rather than
    /// a 440-byte result copied out per event.
    applied: Applied,
    recorder: Option<RecordWriter<std::io::BufWriter<std::fs::File>>>,
    /// Why a replay stopped early (a truncated or corrupt recording).
    replay_error: Option<anyhow::Error>,
    lost_reported: u64,
    last_loss_check: Instant,
    last_loss_poll: Instant,
    last_reconcile: Instant,
    last_expire: Instant,
    last_loss_recorded: LossReport,
    overload: Overload,
    /// Start of the current rate window: when, and events + counted events then.
    rate_window: (Instant, u64),
    calm_since: Option<Instant>,
    /// A kernel table dump taken at the last tick and applied at the next one, after the
    /// events that happened before and during it (see [`Live::reconcile`]).
    pending_dump: Option<Dump>,
    /// Reconcile at the next tick whatever the interval (after an overload ends).
    reconcile_due: bool,
}

/// A dump of the kernel's socket table (every namespace) and the `/proc/*/fd` scan taken
/// with it.
struct Dump {
    snap: Snapshot,
    scan_ns: u64,
    procs: HashMap<u64, Vec<ProcessRef>>,
}

/// How often timewait sockets are expired (and a Mark is recorded, so a replay expires them at
/// the same moments).
const EXPIRE_EVERY: Duration = Duration::from_millis(250);

/// How often the table is checked against the kernel's (and owners re-read from /proc).
pub const RECONCILE_EVERY: Duration = Duration::from_secs(10);
/// The same while the overload guard has the kernel counting instead of sending events: the
/// kernel table is then what keeps the counts exact.
pub const RECONCILE_EVERY_COUNTING: Duration = Duration::from_secs(2);
/// How long the rate must stay under half the budget before events flow again.
const CALM_FOR: Duration = Duration::from_secs(10);

/// The overload guard's state, shown in every view once it has acted.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Overload {
    /// `--max-event-rate`: events per second above which the kernel counts instead of sends.
    pub budget_per_s: u64,
    /// The kernel is counting now.
    pub counting: bool,
    /// Times the guard switched to counting.
    pub switches: u64,
    /// Events counted in the kernel instead of sent (not lost: counted).
    pub counted_events: u64,
    /// Counted events by transition, "OLD->NEW" ("RESET" for resets).
    pub counted: std::collections::BTreeMap<String, u64>,
}

/// How tcptrace learns that a socket entered TIME_WAIT with this probe.
pub fn timewait_method(probe: &Probe) -> &'static str {
    probe.timewait_method().as_str()
}

impl Live {
    /// Starts a session: replays `--from FILE`, or loads and attaches the kernel programs and
    /// says so on stderr (tests wait for the word "attached"). With `--record FILE` the
    /// session is written to FILE as it runs.
    pub fn start(args: &ProbeArgs, filters: &Filters) -> anyhow::Result<Live> {
        if let Some(path) = &args.from {
            return Live::replay(path, args.speed.0, filters);
        }
        let opts = ProbeOptions {
            ring_bytes: args.ring_size,
            family: filters.kernel_family(),
            ports: filters.kernel_ports(),
            force_path: args.hook.forced(),
            backup: true,
            timewait_hooks: match args.timewait_hooks {
                TimewaitHooksArg::Auto => TimewaitHooks::Auto,
                TimewaitHooksArg::Timer => TimewaitHooks::Timer,
                TimewaitHooksArg::Off => TimewaitHooks::Off,
            },
        };
        let (probe, reader) = Probe::load(&opts)?;
        if let Some(notice) = probe.memlock.notice() {
            eprintln!("tcptrace: {notice}");
        }
        if let Some(why) = &probe.fallback_reason {
            eprintln!("tcptrace: kernel BTF unavailable ({why}); using the classic tracepoint");
        }
        if let Some(why) = &probe.socket_key_fallback {
            eprintln!("tcptrace: no socket cookies ({why}); sockets are keyed by address");
        }
        let exact_end = probe.timewait_method().exact_end();
        if let Some(why) = &probe.timewait_fallback {
            let then = if exact_end {
                "inferring TIME_WAIT entry, its end exact from timer:timer_expire_entry"
            } else {
                "inferring TIME_WAIT"
            };
            eprintln!("tcptrace: fentry timewait hooks unavailable ({why}); {then}");
        }
        if let Some(why) = &probe.timewait_timer_fallback {
            eprintln!(
                "tcptrace: timer:timer_expire_entry timewait hook unavailable ({why}); inferring \
                 TIME_WAIT's end as its start + 60 s"
            );
        }
        let started_ns = monotonic_ns();
        let clock = WallClock::now();
        let mut live = Live::new(
            Source::Kernel {
                probe: Box::new(probe),
                reader: Box::new(reader),
            },
            filters,
            clock,
            started_ns,
            fin_timeout_ns(),
        );
        live.overload.budget_per_s = args.max_event_rate;
        live.table.set_exact_timewait_end(exact_end);
        if let Some(path) = &args.record {
            live.record_to(path)?;
        }
        // The programs are attached first, so no transition falls between the kernel table
        // dump and the event stream. The dump is applied at the first tick, after the events
        // that reached the ring meanwhile: views see those events, and the table drops what
        // the dump already covers.
        let dump = live
            .dump()
            .context("loading the existing sockets (NETLINK_SOCK_DIAG)")?;
        let found = dump.snap.sockets.len();
        live.pending_dump = Some(dump);
        // Said once the existing sockets are read: from here on, every change is seen live
        // (tests wait for the word "attached" before they make traffic).
        if let Source::Kernel { probe, .. } = &live.source {
            eprintln!(
                "tcptrace: attached via {} to sock:inet_sock_set_state, tcp:tcp_receive_reset, \
                 tcp:tcp_send_reset (ring {} KiB; TIME_WAIT {}); {} existing sockets loaded",
                probe.hook_description(),
                probe.ring_bytes / 1024,
                timewait_method(probe),
                found,
            );
        }
        Ok(live)
    }

    fn new(
        source: Source,
        filters: &Filters,
        clock: WallClock,
        start_ns: u64,
        fin_ns: u64,
    ) -> Live {
        Live {
            source,
            table: SocketTable::new(Limits {
                fin_timeout_ns: fin_ns,
                ..Limits::default()
            }),
            agg: Aggregates::new(start_ns, AggLimits::default()),
            filters: filters.clone(),
            clock,
            started: Instant::now(),
            started_ns: start_ns,
            events: 0,
            applied: Applied::default(),
            recorder: None,
            replay_error: None,
            lost_reported: 0,
            // Due at once: the first loss is reported at the first tick, then at most once a
            // second.
            last_loss_check: Instant::now()
                .checked_sub(Duration::from_secs(2))
                .unwrap_or_else(Instant::now),
            last_loss_poll: Instant::now()
                .checked_sub(Duration::from_secs(2))
                .unwrap_or_else(Instant::now),
            last_reconcile: Instant::now(),
            last_expire: Instant::now(),
            overload: Overload::default(),
            rate_window: (Instant::now(), 0),
            calm_since: None,
            last_loss_recorded: LossReport::default(),
            pending_dump: None,
            reconcile_due: false,
        }
    }

    /// A session read from a recording. `speed`: None as fast as possible, Some(1.0) real time.
    pub fn replay(path: &Path, speed: Option<f64>, filters: &Filters) -> anyhow::Result<Live> {
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
        let (clock, start, fin) = (
            h.wall_clock(),
            h.start_mono_ns,
            u64::from(h.tcp_fin_timeout_s.unwrap_or(60)) * 1_000_000_000,
        );
        // A recording made with an exact end has those end events: replayed, they must not
        // be pre-empted by the inferred expiry either.
        let exact_end =
            h.timewait_method != TimewaitMethod::Inferred.as_str() && !h.timewait_method.is_empty();
        let mut live = Live::new(Source::File(Box::new(file)), filters, clock, start, fin);
        live.table.set_exact_timewait_end(exact_end);
        Ok(live)
    }

    /// Starts writing the session to `path`.
    pub fn record_to(&mut self, path: &Path) -> anyhow::Result<()> {
        let Source::Kernel { probe, .. } = &self.source else {
            anyhow::bail!("--record needs a live session, not --from");
        };
        let (lo, hi) = port_range();
        let header = Header {
            kernel_release: kernel_release(),
            hostname: hostname(),
            start_wall_ns: (self.started_ns as i128 + self.clock.offset_ns()).max(0) as u64,
            start_mono_ns: self.started_ns,
            hook: probe.path().to_string(),
            timewait_method: timewait_method(probe).to_string(),
            socket_key: Some(probe.socket_key().as_str().to_string()),
            ip_local_port_range: Some([lo, hi]),
            tcp_fin_timeout_s: Some((fin_timeout_ns() / 1_000_000_000) as u32),
            command_line: std::env::args().collect(),
            ..Header::default()
        };
        let w = RecordWriter::create(path, &header)
            .with_context(|| format!("creating the recording {}", path.display()))?;
        self.recorder = Some(w);
        Ok(())
    }

    /// Fails if the recording being replayed turned out truncated or corrupt: results from
    /// part of a file must not pass for the whole.
    pub fn check_replay(&mut self) -> anyhow::Result<()> {
        match self.replay_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// True once a replayed recording has been read to its end.
    pub fn is_done(&self) -> bool {
        matches!(&self.source, Source::File(f) if f.finished())
    }

    /// The session's clock: monotonic now when live, the latest recorded time when replaying.
    pub fn now_ns(&self) -> u64 {
        match &self.source {
            Source::Kernel { .. } => monotonic_ns(),
            Source::File(f) => f.now_ns,
        }
    }

    /// "tp_btf" or "tracepoint": how the events were (or are being) delivered.
    pub fn hook(&self) -> String {
        match &self.source {
            Source::Kernel { probe, .. } => probe.path().to_string(),
            Source::File(f) => f.header.hook.clone(),
        }
    }

    /// How the kernel programs named sockets ("cookie", or "address" where tp_btf programs
    /// cannot ask for cookies); unknown for a recording older than format 1.2.
    pub fn socket_key(&self) -> Option<String> {
        match &self.source {
            Source::Kernel { probe, .. } => Some(probe.socket_key().as_str().to_string()),
            Source::File(f) => f.header.socket_key.clone(),
        }
    }

    pub fn kernel(&self) -> String {
        match &self.source {
            Source::Kernel { .. } => kernel_release(),
            Source::File(f) => f.header.kernel_release.clone(),
        }
    }

    pub fn host(&self) -> String {
        match &self.source {
            Source::Kernel { .. } => hostname(),
            Source::File(f) => f.header.hostname.clone(),
        }
    }

    pub fn probe(&self) -> Option<&Probe> {
        match &self.source {
            Source::Kernel { probe, .. } => Some(probe),
            Source::File(_) => None,
        }
    }

    /// Waits for the next events and returns how many were appended. When replaying, the
    /// recorded kernel table dumps and timer ticks are applied here, in file order.
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> usize {
        let step = match &mut self.source {
            Source::File(f) => f.take_step(),
            Source::Kernel { .. } => None,
        };
        if let Some(step) = step {
            self.step(step);
            return 0;
        }
        let n = match &mut self.source {
            Source::Kernel { reader, .. } => reader.next_batch(out).await,
            Source::File(f) => match f.next_batch(out).await {
                Ok(n) => n,
                Err(e) => {
                    f.stop();
                    self.replay_error = Some(e);
                    0
                }
            },
        };
        let n = self.keep_namespaces(out, n);
        self.record_events(&out[out.len() - n..]);
        self.events += n as u64;
        n
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

    /// Drains what is left without waiting (at shutdown).
    pub fn drain(&mut self, out: &mut Vec<Event>) -> usize {
        let n = match &mut self.source {
            Source::Kernel { reader, .. } => reader.drain_into(out),
            Source::File(_) => 0,
        };
        let n = self.keep_namespaces(out, n);
        self.record_events(&out[out.len() - n..]);
        self.events += n as u64;
        n
    }

    fn record_events(&mut self, evs: &[Event]) {
        if let Some(w) = &mut self.recorder {
            for ev in evs {
                if let Err(e) = w.write_event(ev) {
                    eprintln!("tcptrace: recording stopped: {e}");
                    self.recorder = None;
                    return;
                }
            }
        }
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Reconcile(snap, owners) => {
                self.apply_snapshot(snap, owners);
            }
            Step::Tick(ts) => self.expire(ts),
            Step::End(ts) => self.expire(ts),
        }
    }

    /// Feeds one event to the socket table and the aggregates, and says what it did.
    pub fn apply(&mut self, ev: &Event) -> &Applied {
        self.table.apply_into(ev, &mut self.applied);
        self.agg.observe_applied(&self.applied, ev.ts_ns);
        &self.applied
    }

    fn expire(&mut self, now: u64) {
        let expired = self.table.expire(now);
        self.agg.observe_expired(&expired, now);
    }

    /// Timer work: expire timewait sockets, reconcile with the kernel table every
    /// `RECONCILE_EVERY`, report new losses. Replayed sessions run the recorded ticks instead.
    pub fn tick(&mut self) {
        if !matches!(self.source, Source::Kernel { .. }) {
            return;
        }
        self.settle();
        // The expiry scan walks the table: a few times a second is plenty for 60 s timers.
        if self.last_expire.elapsed() < EXPIRE_EVERY {
            self.report_new_losses();
            return;
        }
        self.last_expire = Instant::now();
        let now = monotonic_ns();
        self.expire(now);
        let poll_loss =
            self.recorder.is_some() && self.last_loss_poll.elapsed() >= Duration::from_millis(100);
        let loss = if poll_loss {
            self.loss()
        } else {
            self.last_loss_recorded
        };
        if let Some(w) = &mut self.recorder {
            let mut ok = w.write_mark(now);
            if loss != self.last_loss_recorded {
                ok = ok.and_then(|_| w.write_loss(&loss, now));
                self.last_loss_recorded = loss;
            }
            if let Err(e) = ok {
                eprintln!("tcptrace: recording stopped: {e}");
                self.recorder = None;
            }
        }
        self.guard_overload();
        let every = if self.overload.counting {
            RECONCILE_EVERY_COUNTING
        } else {
            RECONCILE_EVERY
        };
        if self.reconcile_due || self.last_reconcile.elapsed() >= every {
            // Applied at the next tick: the loop drains the ring first, so every transition
            // the dump may already show is in the table by then.
            match self.dump() {
                Ok(d) => self.pending_dump = Some(d),
                Err(e) => {
                    log::warn!("reconciliation with the kernel socket table failed: {e:#}")
                }
            }
        }
        self.report_new_losses();
    }

    /// The overload guard: once a second, compares the event rate with the budget. Above it,
    /// the kernel counts transitions instead of sending them, which protects the host and drops
    /// nothing silently; once the rate has stayed under half the budget for `CALM_FOR`, events
    /// flow again and the table is reconciled at once.
    fn guard_overload(&mut self) {
        let Source::Kernel { probe, .. } = &mut self.source else {
            return;
        };
        let elapsed = self.rate_window.0.elapsed();
        if elapsed < Duration::from_secs(1) {
            return;
        }
        let total = self.events + probe.counted();
        let rate = (total.saturating_sub(self.rate_window.1)) as f64 / elapsed.as_secs_f64();
        self.rate_window = (Instant::now(), total);
        let budget = self.overload.budget_per_s as f64;
        if !self.overload.counting && rate > budget {
            if let Err(e) = probe.set_counting(true) {
                log::warn!("cannot switch the probe to counting: {e}");
                return;
            }
            self.overload.counting = true;
            self.overload.switches += 1;
            self.calm_since = None;
            eprintln!(
                "tcptrace: {rate:.0} events/s exceeds --max-event-rate {}: the kernel now counts \
                 transitions instead of sending them; per-connection detail pauses, counts stay \
                 exact through the kernel socket table (checked every {}s)",
                self.overload.budget_per_s,
                RECONCILE_EVERY_COUNTING.as_secs()
            );
        } else if self.overload.counting {
            if rate >= budget / 2.0 {
                self.calm_since = None;
                return;
            }
            let calm = *self.calm_since.get_or_insert_with(Instant::now);
            if calm.elapsed() >= CALM_FOR {
                if let Err(e) = probe.set_counting(false) {
                    log::warn!("cannot switch the probe back to events: {e}");
                    return;
                }
                self.overload.counting = false;
                self.calm_since = None;
                eprintln!("tcptrace: {rate:.0} events/s: back to tracing every transition");
                self.reconcile_due = true;
            }
        }
    }

    /// What the overload guard did, once it has acted (None before, and for replays).
    pub fn overload(&self) -> Option<Overload> {
        let Source::Kernel { probe, .. } = &self.source else {
            return None;
        };
        if self.overload.switches == 0 {
            return None;
        }
        let mut o = self.overload.clone();
        o.counted_events = probe.counted();
        for ((old, new), n) in probe.counted_transitions() {
            let name = |v: u8| {
                tcptrace_common::TcpState::from_u8(v)
                    .map(|s| s.name())
                    .unwrap_or("?")
            };
            let key = if (old, new) == (0, 0) {
                "RESET".to_string()
            } else {
                format!("{}->{}", name(old), name(new))
            };
            o.counted.insert(key, n);
        }
        Some(o)
    }

    /// Compares the table with the kernel's socket table (every network namespace) and names
    /// the holders of sockets by scanning /proc/*/fd, as `ss -p` does. Counts what it fixed.
    /// A replayed session has its dumps in the file and does nothing here.
    ///
    /// The dump shows each socket as it was when the kernel reached it, which can be after
    /// transitions still waiting in the ring. Those are applied first, so that only real
    /// differences count as corrections (and a socket opened or closed just before the dump is
    /// not added or removed by mistake). Views that print events use the periodic path in
    /// [`Live::tick`] instead, which hands those events to the view before applying the dump.
    pub fn reconcile(&mut self) -> anyhow::Result<ReconcileStats> {
        if !matches!(self.source, Source::Kernel { .. }) {
            return Ok(ReconcileStats::default());
        }
        self.pending_dump = None;
        let dump = self.dump()?;
        let mut batch = Vec::new();
        self.drain(&mut batch);
        for ev in &batch {
            self.apply(ev);
        }
        Ok(self.apply_dump(dump))
    }

    /// Applies the kernel table dump taken at the last tick (or at start), if any. Call it only
    /// after draining the ring, so the dump never looks newer than the table.
    pub fn settle(&mut self) {
        if let Some(dump) = self.pending_dump.take() {
            self.apply_dump(dump);
        }
    }

    /// Reads the kernel's socket table and the fd holders of sockets.
    fn dump(&mut self) -> anyhow::Result<Dump> {
        self.last_reconcile = Instant::now();
        self.reconcile_due = false;
        let mut snap = netns::dump_all_namespaces()?;
        self.keep_wanted(&mut snap);
        let scan_ns = monotonic_ns();
        let procs = fdscan::scan_socket_owners(None);
        Ok(Dump {
            snap,
            scan_ns,
            procs,
        })
    }

    /// Records a dump (at the point in the event stream where it is applied, so a replay
    /// applies it at the same point) and corrects the table from it.
    fn apply_dump(
        &mut self,
        Dump {
            snap,
            scan_ns,
            procs,
        }: Dump,
    ) -> ReconcileStats {
        if let Some(w) = &mut self.recorder {
            let ok = w
                .write_snapshot(&snap)
                .and_then(|_| w.write_fd_owners(scan_ns, &procs));
            if let Err(e) = ok {
                eprintln!("tcptrace: recording stopped: {e}");
                self.recorder = None;
            }
        }
        let owners: FdOwners = procs
            .into_iter()
            .map(|(inode, procs)| (inode, procs.into_iter().map(|p| (p.pid, p.comm)).collect()))
            .collect();
        self.apply_snapshot(snap, Some(owners))
    }

    /// Cuts a dump to the same endpoint and namespace filters as the kernel applies to events,
    /// so the table holds the same sockets from both sources.
    fn keep_wanted(&self, snap: &mut Snapshot) {
        snap.sockets.retain(|k| {
            self.filters.matches_endpoints(&k.local, &k.remote)
                && self.filters.matches_netns(k.netns)
        });
    }

    fn apply_snapshot(&mut self, mut snap: Snapshot, owners: Option<FdOwners>) -> ReconcileStats {
        // A recording may have been made with wider filters than this replay's.
        self.keep_wanted(&mut snap);
        let st = self.table.reconcile(&snap, owners.as_ref());
        log::debug!(
            "reconciled with a dump of {} sockets taken {} ms ago: {st:?}",
            snap.sockets.len(),
            monotonic_ns().saturating_sub(snap.taken_ns) / 1_000_000
        );
        if let Some(fd) = &owners {
            // Decided from the recorded dump and scan alone, so a replay folds the same groups
            // at the same moment.
            let holders: HashSet<u32> = fd.values().flatten().map(|(pid, _)| *pid).collect();
            let table = &self.table;
            self.agg.fold_ended(
                |o| !holders.contains(&o.pid) && !table.holds_owner(o),
                snap.taken_ns,
            );
        }
        st
    }

    /// Ends the session at `now_ns`: the last timer work (a replay runs it from the End
    /// record), and the recording's End record with the final counters.
    pub fn finish(&mut self, now_ns: u64) -> anyhow::Result<()> {
        if let Source::Kernel { probe, .. } = &self.source {
            log::debug!("kernel counters at the end: {:?}", probe.kernel_counters());
            self.expire(now_ns);
        }
        if let Some(w) = self.recorder.take() {
            let loss = self.loss();
            w.finish(&loss, now_ns).context("finishing the recording")?;
        }
        Ok(())
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
                timewait_method: match &self.source {
                    Source::Kernel { probe, .. } => timewait_method(probe),
                    Source::File(f) => &f.header.timewait_method,
                },
                port_range: self.port_range(),
                top,
            },
        )
    }

    /// The ephemeral port range of the observed host.
    pub fn port_range(&self) -> (u16, u16) {
        match &self.source {
            Source::File(f) => f
                .header
                .ip_local_port_range
                .map(|[a, b]| (a, b))
                .unwrap_or((32768, 60999)),
            Source::Kernel { .. } => port_range(),
        }
    }

    pub fn loss(&self) -> LossReport {
        match &self.source {
            Source::Kernel { probe, reader } => probe.loss(reader),
            Source::File(f) => f.loss,
        }
    }

    /// Prints a line on stderr when events were lost since the last check (at most once a
    /// second): losses are never silent.
    pub fn report_new_losses(&mut self) {
        // Reading the counters costs a few syscalls: at most ten times a second.
        if self.last_loss_poll.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last_loss_poll = Instant::now();
        if self.last_loss_check.elapsed() < Duration::from_secs(1) {
            return;
        }
        let loss = self.loss();
        let lost = loss.lost();
        if lost > self.lost_reported {
            self.last_loss_check = Instant::now();
            eprintln!(
                "tcptrace: lost {} events (total {lost}: ring full {}, nested runs skipped {} of \
                 which {} recovered, resets skipped {})",
                lost - self.lost_reported,
                loss.ring_full,
                loss.primary_skipped,
                loss.recovered,
                loss.reset_skipped
            );
            self.lost_reported = lost;
        }
    }

    /// Transitions the kernel skipped without counting them, found by reconciliation.
    pub fn lost_uncounted(&self, loss: &LossReport) -> u64 {
        loss.uncounted(self.table.stats().corrections.state_fixed)
    }

    /// The closing line every command prints on stderr.
    pub fn summary_line(&self) -> String {
        let loss = self.loss();
        let uncounted = self.lost_uncounted(&loss);
        format!(
            "tcptrace: {} events in {:.1}s; lost {} events ({} transitions, {} resets; ring full {}, \
             nested runs skipped {}, recovered by the backup program {}, duplicates dropped {}){}",
            self.events,
            self.started.elapsed().as_secs_f64(),
            loss.lost(),
            loss.lost_transitions(),
            loss.lost_resets(),
            loss.ring_full,
            loss.primary_skipped,
            loss.recovered,
            loss.duplicates,
            uncounted_note(uncounted)
        ) + &port_filter_note(loss.port_filter_forgot)
            + &timewait_hook_note(loss.timewait_hook_missed)
    }
}

impl Live {
    /// Applies events until the user stops, `duration` passes, or a replay ends; `each` runs
    /// after every poll (for views that sample as they go). The loop of every command that
    /// only accumulates (report, record, diagnose).
    pub async fn observe(
        &mut self,
        duration: Option<Duration>,
        mut each: impl FnMut(&Live),
    ) -> anyhow::Result<()> {
        let stop = stop_signal(duration);
        tokio::pin!(stop);
        let mut batch = Vec::new();
        loop {
            let done = tokio::select! {
                r = &mut stop => { r?; true }
                _ = self.next_batch(&mut batch) => false,
            };
            if done {
                self.drain(&mut batch);
            }
            for ev in batch.drain(..) {
                self.apply(&ev);
            }
            self.tick();
            each(self);
            if done || self.is_done() {
                return Ok(());
            }
        }
    }
}

/// `net.ipv4.tcp_fin_timeout`: how long an orphaned FIN_WAIT2 socket lives.
pub fn fin_timeout_ns() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fin_timeout")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(60)
        * 1_000_000_000
}

/// `net.ipv4.ip_local_port_range`: the ephemeral ports connect() picks from.
pub fn port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().filter_map(|v| v.parse::<u16>().ok());
            Some((it.next()?, it.next()?))
        })
        .unwrap_or((32768, 60999))
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Resolves when the user asks to stop (Ctrl-C, SIGTERM) or the duration runs out.
pub async fn stop_signal(duration: Option<Duration>) -> anyhow::Result<()> {
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

/// Sockets the kernel's port filter admitted but could not remember (a map update failed):
/// each one's close will be filtered out, so it may be a lost event. Never seen so far; shown
/// if it happens rather than hidden.
fn port_filter_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("; the port filter could not remember {n} sockets: their closes may be missing too")
    }
}

/// Exact timewait records that never arrived: not lost transitions, but those sockets' TIME_WAIT
/// times are inferred, so say so.
fn timewait_hook_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(
            "; {n} exact TIME_WAIT records missed (ring full or skipped): those sockets' TIME_WAIT \
             entry or end was inferred instead"
        )
    }
}

/// The closing line's words for transitions the kernel skipped without counting them (the text
/// views use the short [`crate::view::loss_suffix`]); empty when there are none.
fn uncounted_note(uncounted: u64) -> String {
    if uncounted == 0 {
        String::new()
    } else {
        format!(
            "; at least {uncounted} more skipped by the kernel without being counted (found by \
             the kernel-table check, which corrected those sockets)"
        )
    }
}
