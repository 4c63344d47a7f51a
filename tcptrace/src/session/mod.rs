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
mod results;
mod run;
mod sink;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

pub use sink::{Flow, NoSink, Query, Sink};

use crate::{
    aggregate::{AggLimits, Aggregates, TransitionCounts},
    clock::{WallClock, monotonic_ns},
    event::Event,
    filter::Filters,
    host::{DEFAULT_FIN_TIMEOUT_S, DEFAULT_PORT_RANGE, Sysctls, hostname},
    lifecycle::{Applied, Limits, SocketTable},
    owner::container::ContainerNames,
    probe::{HookPath, Probe, ProbeOptions, TimewaitHooks, TimewaitMethod, kernel::kernel_release},
    source::{
        Source,
        file::{FileSource, Speed, Truncation},
        kernel::KernelSource,
        record::Header,
    },
};

use losses::LossWatch;
use overload::Guard;
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
    /// Summary records instead of every transition (every view but `trace`; see
    /// `ProbeOptions::summary`).
    pub summary: bool,
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
    /// How the kernel programs named sockets: "cookie", or "address" where tp_btf programs
    /// cannot ask for cookies (before 5.12) and on the classic tracepoint. Unknown for a
    /// recording older than format 1.3.
    pub socket_key: Option<String>,
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
            summary: opts.summary,
        })?;
        let sysctls = Sysctls::read();
        let method = k.timewait_method();
        let origin = Origin {
            host: hostname(),
            kernel: kernel_release(),
            hook: k.probe.path().to_string(),
            timewait_method: method.as_str().to_string(),
            socket_key: Some(k.probe.socket_key().as_str().to_string()),
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
        s.table
            .set_summary_mode(s.probe().is_some_and(|p| p.summary));
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
        use crate::view::sanitize::printable;
        let file = FileSource::open(path, speed)?;
        let h = &file.header;
        eprintln!(
            "tcptrace: replaying {} recorded on {} (kernel {}, hook {}) by tcptrace {}",
            path.display(),
            // What the file says, which may be anything.
            printable(&h.hostname),
            printable(&h.kernel_release),
            printable(&h.hook),
            printable(&h.tcptrace_version)
        );
        let origin = Origin {
            host: h.hostname.clone(),
            kernel: h.kernel_release.clone(),
            hook: h.hook.clone(),
            timewait_method: h.timewait_method.clone(),
            socket_key: h.socket_key.clone(),
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
            socket_key: o.socket_key.clone(),
            ip_local_port_range: Some([o.port_range.0, o.port_range.1]),
            tcp_fin_timeout_s: Some((o.fin_timeout_ns / 1_000_000_000) as u32),
            command_line: std::env::args().collect(),
            summaries: self.probe().is_some_and(|p| p.summary),
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
}
