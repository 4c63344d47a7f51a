//! The probe: the only code that talks to aya. It loads the kernel programs, picks the hook for
//! this kernel, attaches, drains the ring buffer into decoded events, and reads loss counters.

pub mod btf;
pub mod counting;
pub mod kallsyms;
pub mod kernel;
pub mod loss;
pub mod memlock;
mod merge;
pub mod privilege;
pub mod reader;
mod ring;
pub mod stats;
pub mod tracefs;

use std::fmt;

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{ArrayOfMaps, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{BtfTracePoint, FEntry, TracePoint},
};
use tcptrace_common::{
    config::{
        MAX_CPUS, MAX_FILTER_PORTS, MODE_COUNTING, MODE_RING_FILLED, PORT_FILTER_ON, ProbeConfig,
        TwTimerConfig,
    },
    counter::{Counter, TRANSITION_SLOTS, slot_transition},
    names::{self, map, program},
};

pub use counting::Overload;
pub use loss::LossReport;
pub use reader::EventReader;
use stats::ProgStats;

/// The kernel object built by `build.rs` from `tcptrace-ebpf`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace.bpf.o"));

/// Which kernel hook delivers the transitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPath {
    /// BTF-typed tracepoint: typed `struct sock *`, socket cookies, cheaper dispatch, and a
    /// backup program that recovers nested transitions.
    TpBtf,
    /// Classic tracepoint with the record layout from tracefs: works without BTF; no cookie.
    Tracepoint,
}

impl fmt::Display for HookPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HookPath::TpBtf => "tp_btf",
            HookPath::Tracepoint => "tracepoint",
        })
    }
}

/// How the kernel programs name a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKey {
    /// The socket cookie (`bpf_get_socket_cookie`), unique for the kernel's life.
    Cookie,
    /// The socket's kernel address: the classic tracepoint, and tp_btf on kernels whose
    /// tracing programs may not ask for cookies (before 5.12). The allocator reuses addresses,
    /// so the socket table retires such a socket at its CLOSE.
    Address,
}

impl SocketKey {
    pub fn as_str(self) -> &'static str {
        match self {
            SocketKey::Cookie => "cookie",
            SocketKey::Address => "address",
        }
    }
}

/// How to load the probe.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Ring buffer size in bytes: a power of two and a multiple of the page size.
    pub ring_bytes: u32,
    /// Only AF_INET (2) or AF_INET6 (10); None for both.
    pub family: Option<u16>,
    /// Ports with `PORT_MATCH_LOCAL` / `PORT_MATCH_REMOTE` bits. Empty: no port filter.
    pub ports: Vec<(u16, u8)>,
    /// Force a hook path instead of picking the best this kernel offers.
    pub force_path: Option<HookPath>,
    /// Load the backup program on the tp_btf path (on by default; off only to measure it).
    pub backup: bool,
    /// Which exact TIME_WAIT hooks to try on the tp_btf path: by default the fentry hooks on
    /// `tcp_time_wait` / `inet_twsk_free`, then, where the kernel refuses fentry, the end from
    /// `timer:timer_expire_entry`. Without them TIME_WAIT is inferred.
    pub timewait_hooks: TimewaitHooks,
    /// Summary mode (tp_btf path only): sockets followed in socket-local storage, one record per
    /// CLOSE_WAIT entry and per close instead of an event per transition. For every view but
    /// `trace`, which prints every transition.
    pub summary: bool,
}

/// Which exact TIME_WAIT hooks to try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimewaitHooks {
    /// fentry, else the timer tracepoint, else inference.
    Auto,
    /// The timer tracepoint even where fentry would load (to test it on such kernels).
    Timer,
    /// Inference only.
    Off,
}

/// How TIME_WAIT is learned with the attached programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimewaitMethod {
    /// fentry on `tcp_time_wait` and `inet_twsk_free`: start and end exact.
    Fentry,
    /// Start inferred from FIN_WAIT2/CLOSING -> CLOSE, end exact from `timer:timer_expire_entry`
    /// when the timer runs out (reuse and RST ends inferred).
    Timer,
    /// Both inferred; the end is the start + 60 s (or tcp_fin_timeout).
    Inferred,
}

impl TimewaitMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            TimewaitMethod::Fentry => TIMEWAIT_HOOKED,
            TimewaitMethod::Timer => TIMEWAIT_TIMER,
            TimewaitMethod::Inferred => TIMEWAIT_INFERRED,
        }
    }

    /// Whether timewait sockets whose timer runs out are ended by an event, so the inferred
    /// expiry must wait for it.
    pub fn exact_end(self) -> bool {
        self != TimewaitMethod::Inferred
    }
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            ring_bytes: DEFAULT_RING_BYTES,
            family: None,
            ports: Vec::new(),
            force_path: None,
            backup: true,
            timewait_hooks: TimewaitHooks::Auto,
            summary: false,
        }
    }
}

pub const DEFAULT_RING_BYTES: u32 = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    MissingCapabilities(privilege::Missing),
    #[error(
        "this kernel has no sock:inet_sock_set_state tracepoint (added in Linux 4.16); \
         tcptrace cannot trace TCP state changes here"
    )]
    NoTracepoint,
    #[error(
        "this kernel ({0}) has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux 5.8), which \
         tcptrace needs to deliver events; it runs on Linux 5.8 and newer (see the kernel table \
         in the README)"
    )]
    NoRingBuffer(String),
    #[error("{0}")]
    Memlock(String),
    #[error("ring size {0} is invalid: use a power of two of at least {1} bytes, e.g. 8M")]
    RingSize(u32, u32),
    #[error("at most {MAX_FILTER_PORTS} ports can be filtered, {0} given")]
    TooManyPorts(usize),
    #[error("{what}: {source}")]
    Aya { what: String, source: anyhow::Error },
}

fn aya_err<E: Into<anyhow::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> ProbeError {
    let what = what.into();
    move |e| ProbeError::Aya {
        what,
        source: e.into(),
    }
}

/// The loaded and attached programs. Dropping it detaches everything; nothing is pinned, so a
/// killed tcptrace leaves nothing behind either (the kernel drops the programs with the fds).
pub struct Probe {
    ebpf: Ebpf,
    path: HookPath,
    /// Names of the attached programs, and whether each counts towards lost events.
    programs: Vec<(&'static str, ProgRole)>,
    counters: PerCpuArray<MapData, u64>,
    /// Why the preferred path was not taken, if it was not.
    pub fallback_reason: Option<String>,
    /// How sockets are named in the events.
    socket_key: SocketKey,
    /// Why the tp_btf programs name sockets by address, when they do.
    pub socket_key_fallback: Option<String>,
    /// How TIME_WAIT is learned.
    timewait: TimewaitMethod,
    /// What start-up did about `RLIMIT_MEMLOCK` (kernels before 5.11 charge BPF memory to it).
    pub memlock: memlock::Memlock,
    /// Why the fentry timewait hooks are not attached, when they were tried.
    pub timewait_fallback: Option<String>,
    /// Why the `timer:timer_expire_entry` hook is not attached either, when it was tried.
    pub timewait_timer_fallback: Option<String>,
    /// Why closes that made no timewait socket (the `tcp_max_tw_buckets` cap) cannot be told
    /// apart, when they cannot (see [`set_tw_lookup`]).
    pub timewait_lookup_fallback: Option<String>,
    pub ring_bytes: u32,
    /// The rings: one per possible CPU, and their size.
    pub rings: RingLayout,
    /// The rings themselves, installed before any program was attached, until the reader
    /// takes them.
    ring_maps: Vec<MapData>,
    /// Summary mode is on (see [`ProbeOptions::summary`]).
    pub summary: bool,
    /// Why summary mode was asked for but could not load (the kernel refused socket-local
    /// storage from tp_btf, before 5.11).
    pub summary_fallback: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProgRole {
    Primary,
    Backup,
    Reset,
    TimeWait,
}

/// Raw counters from the kernel side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub ring_full: u64,
    pub backup_ring_full: u64,
    pub backup_discarded: u64,
    pub reset_ring_full: u64,
    pub backup_emitted: u64,
    pub filtered: u64,
    pub primary_skipped: u64,
    pub reset_skipped: u64,
    /// Timewait hook records (fentry, or the timer tracepoint's ends) that did not fit in the
    /// ring, and runs of those programs the kernel skipped. Not lost transitions: those
    /// timewait sockets fall back to the inferred expiry (`EXACT_END_GRACE_NS` late).
    pub timewait_ring_full: u64,
    pub timewait_skipped: u64,
    /// Sockets the port filter admitted but could not remember: their close will be filtered.
    pub admit_failed: u64,
    /// Summary mode: transitions followed (primary or backup), the backup's share of them,
    /// gaps repaired, storage that could not be created (its transition lost), and summaries
    /// the full ring refused.
    pub followed: u64,
    pub backup_handled: u64,
    pub repaired: u64,
    pub storage_failed: u64,
    pub summary_ring_full: u64,
}

impl Probe {
    /// Loads and attaches, preferring tp_btf and falling back to the classic tracepoint.
    pub fn load(opts: &ProbeOptions) -> Result<(Probe, EventReader), ProbeError> {
        check_privileges()?;
        let page = page_size();
        if !opts.ring_bytes.is_power_of_two() || opts.ring_bytes < page {
            return Err(ProbeError::RingSize(opts.ring_bytes, page));
        }
        if opts.ports.len() > MAX_FILTER_PORTS as usize {
            return Err(ProbeError::TooManyPorts(opts.ports.len()));
        }
        // Before anything is loaded: the object's outer map and the wakeup threshold use it.
        let rings = RingLayout::of(opts.ring_bytes)?;
        // Before anything is created: kernels before 5.11 count it against this limit.
        let memlock = memlock::Memlock::raise_if_charged(&kernel::kernel_release());
        require_ring_buffer()?;
        // Classic tracepoints need tracefs; it is also how we tell "no such tracepoint".
        let tracefs = tracefs::tracefs_root().ok();
        if let Some(root) = &tracefs
            && !root.join("events/sock/inet_sock_set_state").exists()
        {
            return Err(ProbeError::NoTracepoint);
        }
        let (path, fallback_reason) = match opts.force_path {
            Some(p) => (p, None),
            None => match btf::sock_offsets() {
                Ok(_) => (HookPath::TpBtf, None),
                Err(e) => (HookPath::Tracepoint, Some(e.to_string())),
            },
        };
        let mut summary_fallback = None;
        let loaded = match path {
            HookPath::TpBtf if opts.summary => match load_tp_btf(opts, rings) {
                Ok(p) => Ok(p),
                Err(e) => {
                    // Socket-local storage from tp_btf needs Linux 5.11; follow every transition
                    // in userspace instead.
                    summary_fallback = Some(short_reason(&e.to_string()));
                    load_tp_btf(
                        &ProbeOptions {
                            summary: false,
                            ..opts.clone()
                        },
                        rings,
                    )
                }
            },
            HookPath::TpBtf => load_tp_btf(opts, rings),
            HookPath::Tracepoint => load_tracepoint(opts, rings),
        };
        let mut probe = loaded.map_err(|e| match (&e, memlock.explain_refusal()) {
            (ProbeError::Aya { source, .. }, Some(why)) if memlock::is_eperm(source) => {
                ProbeError::Memlock(why)
            }
            _ => e,
        })?;
        probe.summary_fallback = summary_fallback;
        probe.fallback_reason = fallback_reason;
        probe.memlock = memlock;
        let reader = probe.make_reader()?;
        Ok((probe, reader))
    }

    pub fn path(&self) -> HookPath {
        self.path
    }

    /// The reader of the rings the loader installed.
    fn make_reader(&mut self) -> Result<EventReader, ProbeError> {
        EventReader::new(std::mem::take(&mut self.ring_maps), self.rings.per_cpu)
            .map_err(aya_err("ring buffer reader"))
    }

    /// How the events name sockets.
    pub fn socket_key(&self) -> SocketKey {
        self.socket_key
    }

    /// The hook path with what this kernel made it give up, for the start-up line: `tp_btf`,
    /// or `tp_btf (sockets keyed by address)`.
    pub fn hook_description(&self) -> String {
        match (self.path, self.socket_key) {
            (HookPath::TpBtf, SocketKey::Address) => {
                format!("{} (sockets keyed by address)", self.path)
            }
            _ => self.path.to_string(),
        }
    }

    /// How TIME_WAIT is learned: exactly from the fentry hooks, inferred from
    /// FIN_WAIT2/CLOSING -> CLOSE with the exact end from the timer tracepoint, or inferred.
    pub fn timewait_method(&self) -> TimewaitMethod {
        self.timewait
    }

    /// Kernel statistics of every attached program, by name.
    pub fn program_stats(&self) -> Vec<(&'static str, ProgStats)> {
        self.programs
            .iter()
            .filter_map(|(name, _)| {
                let prog = self.ebpf.program(name)?;
                let fd = prog.fd().ok()?;
                Some((*name, stats::prog_stats(fd).ok()?))
            })
            .collect()
    }

    /// Reads the kernel-side counters: ring reservation failures (summed over CPUs) and the
    /// runs the kernel skipped, per program role.
    pub fn kernel_counters(&self) -> KernelCounters {
        let sum = |c: Counter| self.counter(c);
        let mut c = KernelCounters {
            ring_full: sum(Counter::ReserveFailed),
            backup_ring_full: sum(Counter::BackupReserveFailed),
            backup_discarded: sum(Counter::BackupDiscarded),
            reset_ring_full: sum(Counter::ResetReserveFailed),
            backup_emitted: sum(Counter::BackupEmitted),
            filtered: sum(Counter::Filtered),
            timewait_ring_full: sum(Counter::TimewaitReserveFailed),
            admit_failed: sum(Counter::AdmitFailed),
            followed: sum(Counter::Handled),
            backup_handled: sum(Counter::BackupHandled),
            repaired: sum(Counter::Repaired),
            storage_failed: sum(Counter::StorageFailed),
            summary_ring_full: sum(Counter::SummaryReserveFailed),
            ..Default::default()
        };
        for (name, st) in self.program_stats() {
            let role = self
                .programs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, r)| *r);
            match role {
                Some(ProgRole::Primary) => c.primary_skipped += st.recursion_misses,
                Some(ProgRole::Reset) => c.reset_skipped += st.recursion_misses,
                Some(ProgRole::TimeWait) => c.timewait_skipped += st.recursion_misses,
                // A skipped backup run is not a loss: the primary handled that event (the two
                // can only be nested in opposite orders).
                Some(ProgRole::Backup) | None => {}
            }
        }
        c
    }

    /// Counting mode: the kernel counts transitions instead of sending them (the overload
    /// guard). Off by default.
    pub fn set_counting(&mut self, on: bool) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut(map::MODE)
            .ok_or_else(|| aya_err("MODE map")(anyhow::anyhow!("missing from the object")))?;
        let mut mode: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(map).map_err(aya_err("MODE map"))?;
        mode.set(0, if on { MODE_COUNTING } else { 0 }, 0)
            .map_err(aya_err("setting the probe mode"))
    }

    /// Whether the kernel switched itself to counting because a ring filled
    /// ([`MODE_RING_FILLED`]); false when `MODE` cannot be read.
    pub fn ring_filled(&self) -> bool {
        let Some(map) = self.ebpf.map(map::MODE) else {
            return false;
        };
        aya::maps::Array::<_, u32>::try_from(map)
            .and_then(|m| m.get(&0, 0))
            .is_ok_and(|v| v == MODE_RING_FILLED)
    }

    /// One kernel counter, summed over CPUs (0 when it cannot be read).
    fn counter(&self, c: Counter) -> u64 {
        self.counters
            .get(&c.slot(), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Events the kernel counted instead of sending, since load.
    pub fn counted(&self) -> u64 {
        self.counter(Counter::Counted)
    }

    /// Records the ring refused because it was full, since load: generated, never delivered.
    pub fn refused(&self) -> u64 {
        self.counter(Counter::ReserveFailed) + self.counter(Counter::TimewaitReserveFailed)
    }

    /// Transitions counted in the kernel, by (old, new) state numbers (resets under
    /// [`RESET_TRANSITION`](tcptrace_common::counter::RESET_TRANSITION)).
    pub fn counted_transitions(&self) -> Vec<((u8, u8), u64)> {
        let Some(map) = self.ebpf.map(map::TRANSITIONS) else {
            return Vec::new();
        };
        let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
            return Vec::new();
        };
        (0..TRANSITION_SLOTS)
            .filter_map(|i| {
                let n: u64 = arr.get(&i, 0).ok()?.iter().sum();
                (n > 0).then_some((slot_transition(i), n))
            })
            .collect()
    }

    /// The full loss picture: kernel counters `k` plus what the reader has taken from the ring.
    /// Read `k` first and drain the ring after it: then every copy the backup program sent for
    /// a skipped run counted in `k` has been seen, and the report never claims as lost what is
    /// only still waiting in the ring.
    pub fn loss_with(&self, k: &KernelCounters, reader: &EventReader) -> LossReport {
        // The backup program recovers a skipped run by handling it in summary mode (counted in
        // the kernel), by sending its event otherwise (counted when read).
        let recovered = if self.summary {
            k.backup_handled
        } else {
            reader.dedup.recovered
        };
        LossReport {
            ring_full: k.ring_full,
            backup_ring_full: k.backup_ring_full,
            reset_ring_full: k.reset_ring_full,
            // Skipped runs whose events were unwanted anyway are not losses.
            primary_skipped: k.primary_skipped.saturating_sub(k.backup_discarded),
            recovered,
            reset_skipped: k.reset_skipped,
            duplicates: reader.dedup.duplicates,
            undecodable: reader.undecodable,
            timewait_hook_missed: k.timewait_ring_full + k.timewait_skipped,
            port_filter_forgot: k.admit_failed,
            followed: k.followed,
            repaired: k.repaired,
            storage_failed: k.storage_failed,
            summary_ring_full: k.summary_ring_full,
        }
    }
}

/// A load error without its verifier log: the first line, and the log's verdict (the line
/// before its statistics).
fn short_reason(e: &str) -> String {
    let mut lines = e.lines();
    let first = lines.next().unwrap_or_default();
    let verdict = e
        .lines()
        .take_while(|l| !l.starts_with("verification time"))
        .filter(|l| !l.trim().is_empty())
        .last()
        .unwrap_or_default();
    let first = first.split(" Verifier output:").next().unwrap_or(first);
    if verdict.is_empty() || first.contains(verdict) {
        first.to_string()
    } else {
        format!("{first} ... {}", verdict.trim())
    }
}

fn base_loader<'a>(cfg: &'a ProbeConfig, rings: RingLayout) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    loader
        .override_global(names::CONFIG, cfg, true)
        .map_max_entries(map::RINGS, rings.cpus);
    loader
}

/// How `--ring-size` is spread over the CPUs: one ring each, of the size's share rounded down
/// to a power of two (what a ring buffer's size must be), and at least a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    /// Rings: the possible CPUs.
    pub cpus: u32,
    /// Bytes per ring.
    pub per_cpu: u32,
}

impl RingLayout {
    pub fn of(total: u32) -> Result<RingLayout, ProbeError> {
        let cpus = RingLayout::cpus();
        if cpus as usize > MAX_CPUS {
            return Err(aya_err("per-CPU ring buffers")(anyhow::anyhow!(
                "this host has {cpus} possible CPUs; tcptrace provides for at most {MAX_CPUS}"
            )));
        }
        Ok(RingLayout::split(total, cpus, page_size()))
    }

    fn split(total: u32, cpus: u32, page: u32) -> RingLayout {
        let share = (total / cpus.max(1)).max(page);
        RingLayout {
            cpus,
            per_cpu: 1 << share.ilog2(),
        }
    }

    /// The possible CPUs (`/sys/devices/system/cpu/possible`), as the kernel numbers them.
    fn cpus() -> u32 {
        aya::util::nr_cpus().map_or(1, |n| n as u32)
    }
}

/// [`btf::timewait_lookup`] into `cfg`; the reason it is off, when it is. Without it every
/// FIN_WAIT2 / CLOSING -> CLOSE is taken to have made a timewait socket until the next check
/// against the kernel's table.
fn set_tw_lookup(cfg: &mut ProbeConfig) -> Option<String> {
    match btf::timewait_lookup() {
        Ok(t) => {
            cfg.tw_lookup = t;
            None
        }
        Err(e) => Some(format!("locating the established hash in BTF: {e}")),
    }
}

fn probe_config(opts: &ProbeOptions, rings: RingLayout) -> ProbeConfig {
    ProbeConfig {
        summary: u8::from(opts.summary),
        family: opts.family.unwrap_or(0),
        port_filter: port_filter_bits(&opts.ports),
        no_wakeup: 1,
        // Wake the reader only when a CPU's ring is half full; it polls on a timer otherwise.
        wakeup_bytes: rings.per_cpu / 2,
        // Three quarters full: the reader is behind, and the kernel counts before it must
        // refuse (a quarter of the ring is left for what the CPU sends until then, at most
        // 64 records, see `emit::wakeup_flags`).
        guard_bytes: rings.per_cpu / 4 * 3,
        ..Default::default()
    }
}

/// Creates a ring buffer for every possible CPU and installs it in `RINGS`, where that CPU's
/// programs find theirs (see `tcptrace-ebpf/src/rings.rs`). Before any program is attached: a
/// transition that finds no ring for its CPU is counted as refused, a loss (a DaemonSet test
/// saw one in 9 of 36 runs, with other tests' connections at the exporter's start, while the
/// rings were installed after attaching).
fn install_rings(ebpf: &mut Ebpf, layout: RingLayout) -> Result<Vec<MapData>, ProbeError> {
    // Borrowed, not taken: the programs are loaded at their attach, after this, and must find
    // the outer map's fd open.
    let outer = ebpf
        .map_mut(map::RINGS)
        .ok_or_else(|| aya_err("RINGS map")(anyhow::anyhow!("missing from the object")))?;
    let mut outer: ArrayOfMaps<&mut MapData, MapData> =
        ArrayOfMaps::try_from(outer).map_err(aya_err("RINGS map"))?;
    let mut rings = Vec::with_capacity(layout.cpus as usize);
    for cpu in 0..layout.cpus {
        let def = aya_obj::Map::new_from_params(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
            0,
            0,
            layout.per_cpu,
            0,
        );
        let ring = MapData::create(def, "cpu_ring", None)
            .map_err(aya_err(format!("ring buffer of CPU {cpu}")))?;
        outer
            .set(cpu, &ring, 0)
            .map_err(aya_err(format!("installing the ring buffer of CPU {cpu}")))?;
        rings.push(ring);
    }
    // The outer map is only read by the programs from here on; the rings go to the reader.
    Ok(rings)
}

fn port_filter_bits(ports: &[(u16, u8)]) -> u8 {
    if ports.is_empty() { 0 } else { PORT_FILTER_ON }
}

fn load_tp_btf(opts: &ProbeOptions, rings: RingLayout) -> Result<Probe, ProbeError> {
    let offsets = btf::sock_offsets().map_err(aya_err("reading struct sock offsets from BTF"))?;
    let mut cfg = probe_config(opts, rings);
    cfg.offsets = offsets;
    let timewait_lookup_fallback = set_tw_lookup(&mut cfg);
    // Resolved before the load, as the configuration is fixed then; the program is attached
    // only if fentry fails.
    let timer = match opts.timewait_hooks {
        TimewaitHooks::Off => None,
        TimewaitHooks::Auto | TimewaitHooks::Timer => Some(tw_timer_config()),
    };
    if let Some(Ok(t)) = &timer {
        cfg.tw_timer = *t;
    }
    let btf = Btf::from_sys_fs().map_err(aya_err("loading kernel BTF"))?;
    let mut ebpf = base_loader(&cfg, rings)
        .load(BPF_OBJECT)
        .map_err(aya_err("loading the kernel object"))?;
    fill_ports(&mut ebpf, opts)?;
    let ring_maps = install_rings(&mut ebpf, rings)?;
    let (set, socket_key_fallback) = load_primary(&mut ebpf, &btf)?;
    if opts.summary && set.key == SocketKey::Address {
        // The address-keyed programs leave out the storage path: a kernel that may not ask
        // for cookies from tracing programs (before 5.12) has no socket storage for them
        // either (5.11), so this load is tried again without summaries.
        return Err(aya_err("summary mode")(anyhow::anyhow!(
            "socket storage from tracing programs needs Linux 5.11 and the socket cookie 5.12"
        )));
    }
    let mut programs = vec![(set.primary, ProgRole::Primary)];
    if opts.backup {
        programs.push((set.backup, ProgRole::Backup));
    }
    programs.push((set.reset_rx, ProgRole::Reset));
    programs.push((set.reset_tx, ProgRole::Reset));
    // All loaded (verified) first, then attached back to back: until the backup is attached,
    // the primary's skipped runs are lost, and verifying the backup between the two attaches
    // lost 4 of a storm's transitions in the 6.1 guest (`loss.rs`, a tracer started during a
    // storm). Attach order matters: the primary must run first for each event so the backup
    // can tell whether it ran, and programs on one hook run in attach order.
    for (name, _) in &programs[1..] {
        load_btf(&mut ebpf, &btf, name, set.hook_of(name))?;
    }
    for (name, _) in &programs {
        attach_loaded(&mut ebpf, name, set.hook_of(name))?;
    }
    let (mut timewait, timewait_fallback) = match opts.timewait_hooks {
        // The fentry programs ask for the cookie too, and the verifier would refuse them for
        // the same reason; their events name timewait sockets by cookie.
        TimewaitHooks::Auto if set.key == SocketKey::Address => (
            TimewaitMethod::Inferred,
            Some(format!(
                "they need bpf_get_socket_cookie, {NO_COOKIE_HELPER}"
            )),
        ),
        TimewaitHooks::Auto => match attach_timewait_hooks(&mut ebpf, &btf) {
            Ok(()) => {
                programs.extend(TIMEWAIT_HOOKS.iter().map(|(n, _)| (*n, ProgRole::TimeWait)));
                (TimewaitMethod::Fentry, None)
            }
            Err(e) => (TimewaitMethod::Inferred, Some(format!("{e:#}"))),
        },
        TimewaitHooks::Timer | TimewaitHooks::Off => (TimewaitMethod::Inferred, None),
    };
    let mut timewait_timer_fallback = None;
    if timewait == TimewaitMethod::Inferred
        && let Some(timer) = timer
    {
        match timer.and_then(|_| attach_timewait_timer(&mut ebpf)) {
            Ok(()) => {
                programs.push((TIMEWAIT_TIMER_PROG, ProgRole::TimeWait));
                timewait = TimewaitMethod::Timer;
            }
            Err(e) => timewait_timer_fallback = Some(format!("{e:#}")),
        }
    }
    let counters = take_counters(&mut ebpf)?;
    Ok(Probe {
        ebpf,
        path: HookPath::TpBtf,
        programs,
        counters,
        fallback_reason: None,
        memlock: memlock::Memlock::NotCharged,
        socket_key: set.key,
        socket_key_fallback,
        timewait,
        timewait_fallback,
        timewait_timer_fallback,
        timewait_lookup_fallback,
        ring_bytes: opts.ring_bytes,
        rings,
        ring_maps,
        summary: opts.summary,
        summary_fallback: None,
    })
}

/// The tp_btf programs of one socket-key variant, and the hooks they attach to.
struct TpBtfSet {
    key: SocketKey,
    primary: &'static str,
    backup: &'static str,
    reset_rx: &'static str,
    reset_tx: &'static str,
}

impl TpBtfSet {
    fn hook_of(&self, name: &str) -> &'static str {
        if name == self.reset_rx {
            "tcp_receive_reset"
        } else if name == self.reset_tx {
            "tcp_send_reset"
        } else {
            "inet_sock_set_state"
        }
    }
}

const WITH_COOKIE: TpBtfSet = TpBtfSet {
    key: SocketKey::Cookie,
    primary: program::SET_STATE_BTF,
    backup: program::SET_STATE_BTF_BACKUP,
    reset_rx: program::RESET_RX_BTF,
    reset_tx: program::RESET_TX_BTF,
};

const BY_ADDRESS: TpBtfSet = TpBtfSet {
    key: SocketKey::Address,
    primary: program::SET_STATE_BTF_ADDR,
    backup: program::SET_STATE_BTF_ADDR_BACKUP,
    reset_rx: program::RESET_RX_BTF_ADDR,
    reset_tx: program::RESET_TX_BTF_ADDR,
};

/// Why tracing programs cannot name sockets by cookie on such a kernel.
const NO_COOKIE_HELPER: &str = "which tracing programs cannot call before Linux 5.12";

/// Loads the primary state-change program, with socket cookies where the kernel lets tracing
/// programs ask for them, else the variant keyed by address. The two differ only in that
/// helper call, so when the second loads where the first did not, the helper is why; then the
/// reason is returned with the variant. When neither loads, the first one's error.
fn load_primary(ebpf: &mut Ebpf, btf: &Btf) -> Result<(TpBtfSet, Option<String>), ProbeError> {
    let hook = "inet_sock_set_state";
    let refused = match load_btf(ebpf, btf, WITH_COOKIE.primary, hook) {
        Ok(()) => return Ok((WITH_COOKIE, None)),
        Err(e) => e,
    };
    if load_btf(ebpf, btf, BY_ADDRESS.primary, hook).is_err() {
        return Err(refused);
    }
    log::debug!("{refused}");
    Ok((
        BY_ADDRESS,
        Some(format!(
            "the socket cookie needs bpf_get_socket_cookie, {NO_COOKIE_HELPER}"
        )),
    ))
}

/// The tp_btf program `name`.
fn btf_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut BtfTracePoint, ProbeError> {
    ebpf.program_mut(name)
        .ok_or_else(|| aya_err(name)(anyhow::anyhow!("missing from the object")))?
        .try_into()
        .map_err(aya_err(name))
}

/// Loads (the verifier checks) the tp_btf program `name` for `hook`.
fn load_btf(ebpf: &mut Ebpf, btf: &Btf, name: &'static str, hook: &str) -> Result<(), ProbeError> {
    btf_program(ebpf, name)?
        .load(hook, btf)
        .map_err(aya_err(format!("loading {name} on {hook}")))
}

/// Attaches the loaded tp_btf program `name` to its `hook`.
fn attach_loaded(ebpf: &mut Ebpf, name: &'static str, hook: &str) -> Result<(), ProbeError> {
    btf_program(ebpf, name)?
        .attach()
        .map(|_| ())
        .map_err(aya_err(format!("attaching {name} to {hook}")))
}

pub const TIMEWAIT_HOOKED: &str = "fentry:tcp_time_wait+inet_twsk_free";
/// No parentheses: tests and scripts read the method up to the ")" of the "attached" line.
pub const TIMEWAIT_TIMER: &str = "inferred entry, exact end from timer:timer_expire_entry";
pub const TIMEWAIT_INFERRED: &str = "inferred";

const TIMEWAIT_TIMER_PROG: &str = program::TIMEWAIT_TIMER;

/// Everything the `timer:timer_expire_entry` program needs to recognise a timewait socket's
/// timer, from this kernel: the handler's address (kallsyms), where `tw_timer` and the cookie
/// sit in `struct inet_timewait_sock` (BTF), and the record layout (tracefs). Any missing piece
/// is the reason the hook is not used.
fn tw_timer_config() -> anyhow::Result<TwTimerConfig> {
    use anyhow::Context;
    if !btf::timewait_shares_sock_common()? {
        anyhow::bail!("inet_timewait_sock does not start with sock_common");
    }
    let (tw_timer, skc_cookie) =
        btf::timewait_timer_offsets().context("locating inet_timewait_sock.tw_timer in BTF")?;
    let root = tracefs::tracefs_root()?;
    let format = tracefs::event_format(&root, "timer", "timer_expire_entry")?;
    let (tp_timer, tp_function) = tracefs::timer_expire_layout(&format)?;
    let handler = kallsyms::kernel_symbol("tw_timer_handler")?;
    Ok(TwTimerConfig {
        handler,
        tw_timer,
        skc_cookie,
        tp_timer,
        tp_function,
        validated: 1,
        _pad: 0,
    })
}

/// Loads and attaches the `timer:timer_expire_entry` program (classic tracepoints load where
/// fentry does not, e.g. under this project's host lockdown). On failure it is unloaded.
fn attach_timewait_timer(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    use anyhow::Context;
    let prog: &mut TracePoint = ebpf
        .program_mut(TIMEWAIT_TIMER_PROG)
        .context("missing from the object")?
        .try_into()?;
    let r = prog
        .load()
        .context("loading the timer:timer_expire_entry program")
        .and_then(|()| {
            prog.attach("timer", "timer_expire_entry")
                .map(drop)
                .context("attaching to timer:timer_expire_entry")
        });
    if r.is_err() {
        let _ = prog.unload();
    }
    r
}

const TIMEWAIT_HOOKS: [(&str, &str); 2] = [
    (program::TIMEWAIT_ENTER, "tcp_time_wait"),
    (program::TIMEWAIT_END, "inet_twsk_free"),
];

/// Loads and attaches both timewait hooks, or neither: a kernel may refuse fentry (lockdown,
/// no trampoline support on the architecture, a security module's EPERM) or lack one of the
/// functions (inlined, renamed). On any failure the ones already loaded are unloaded, which
/// detaches them, so the inference alone decides TIME_WAIT.
fn attach_timewait_hooks(ebpf: &mut Ebpf, btf: &Btf) -> anyhow::Result<()> {
    use anyhow::Context;
    if !btf::timewait_shares_sock_common()? {
        anyhow::bail!("inet_timewait_sock does not start with sock_common");
    }
    let mut result = Ok(());
    for (name, func) in TIMEWAIT_HOOKS {
        let r = (|| -> anyhow::Result<()> {
            let prog: &mut FEntry = ebpf
                .program_mut(name)
                .context("missing from the object")?
                .try_into()?;
            prog.load(func, btf)
                .with_context(|| format!("loading fentry on {func}"))?;
            prog.attach()
                .with_context(|| format!("attaching fentry to {func}"))?;
            Ok(())
        })();
        if r.is_err() {
            result = r;
            break;
        }
    }
    if result.is_err() {
        for (name, _) in TIMEWAIT_HOOKS {
            if let Some(p) = ebpf.program_mut(name)
                && let Ok(p) = <&mut FEntry>::try_from(p)
            {
                // Unloading an attached program detaches it first; not loaded is fine too.
                let _ = p.unload();
            }
        }
    }
    result
}

fn load_tracepoint(opts: &ProbeOptions, rings: RingLayout) -> Result<Probe, ProbeError> {
    let root = tracefs::tracefs_root().map_err(aya_err("finding tracefs"))?;
    let set_state = tracefs::event_format(&root, "sock", "inet_sock_set_state")
        .map_err(|_| ProbeError::NoTracepoint)?;
    let mut cfg = probe_config(opts, rings);
    cfg.summary = 0;
    cfg.tp_set_state =
        tracefs::set_state_layout(&set_state).map_err(aya_err("tracepoint layout"))?;
    // Offsets are optional here: with BTF (a forced fallback) the namespace is still read.
    let timewait_lookup_fallback = match btf::sock_offsets() {
        Ok(offsets) => {
            cfg.offsets = offsets;
            set_tw_lookup(&mut cfg)
        }
        // The check reads the socket's namespace, which needs the offsets.
        Err(e) => Some(format!("{e}")),
    };
    let mut programs = vec![(
        program::SET_STATE_TP,
        ProgRole::Primary,
        "sock",
        "inet_sock_set_state",
    )];
    // The reset tracepoints exist since 4.15/4.16 (tcp_send_reset, tcp_receive_reset); without
    // them a RST close cannot be told from a TIME_WAIT close, which the startup notice says.
    for (name, event, slot) in [
        (
            program::RESET_RX_TP,
            "tcp_receive_reset",
            &mut cfg.tp_reset_rx,
        ),
        (program::RESET_TX_TP, "tcp_send_reset", &mut cfg.tp_reset_tx),
    ] {
        if let Ok(l) =
            tracefs::event_format(&root, "tcp", event).and_then(|f| tracefs::reset_layout(&f))
        {
            *slot = l;
            programs.push((name, ProgRole::Reset, "tcp", event));
        }
    }
    let mut ebpf = base_loader(&cfg, rings)
        .load(BPF_OBJECT)
        .map_err(aya_err("loading the kernel object"))?;
    fill_ports(&mut ebpf, opts)?;
    let ring_maps = install_rings(&mut ebpf, rings)?;
    for (name, _, category, event) in &programs {
        let prog: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| aya_err(*name)(anyhow::anyhow!("missing from the object")))?
            .try_into()
            .map_err(aya_err(*name))?;
        prog.load().map_err(aya_err(format!("loading {name}")))?;
        prog.attach(category, event)
            .map_err(aya_err(format!("attaching {name} to {category}:{event}")))?;
    }
    let counters = take_counters(&mut ebpf)?;
    Ok(Probe {
        ebpf,
        path: HookPath::Tracepoint,
        programs: programs.into_iter().map(|(n, r, _, _)| (n, r)).collect(),
        counters,
        fallback_reason: None,
        memlock: memlock::Memlock::NotCharged,
        socket_key: SocketKey::Address,
        socket_key_fallback: None,
        timewait: TimewaitMethod::Inferred,
        timewait_fallback: None,
        timewait_timer_fallback: None,
        timewait_lookup_fallback,
        ring_bytes: opts.ring_bytes,
        rings,
        ring_maps,
        // The classic tracepoint has no typed socket for socket-local storage.
        summary: false,
        summary_fallback: None,
    })
}

fn fill_ports(ebpf: &mut Ebpf, opts: &ProbeOptions) -> Result<(), ProbeError> {
    if opts.ports.is_empty() {
        return Ok(());
    }
    let mut map: BpfHashMap<_, u16, u8> = ebpf
        .map_mut(map::PORTS)
        .ok_or_else(|| aya_err("PORTS map")(anyhow::anyhow!("missing from the object")))?
        .try_into()
        .map_err(aya_err("PORTS map"))?;
    for &(port, bits) in &opts.ports {
        let cur = map.get(&port, 0).unwrap_or(0);
        map.insert(port, cur | bits, 0)
            .map_err(aya_err("filling PORTS"))?;
    }
    Ok(())
}

fn take_counters(ebpf: &mut Ebpf) -> Result<PerCpuArray<MapData, u64>, ProbeError> {
    let map = ebpf
        .take_map(map::COUNTERS)
        .ok_or_else(|| aya_err("COUNTERS map")(anyhow::anyhow!("missing from the object")))?;
    PerCpuArray::try_from(map).map_err(aya_err("COUNTERS map"))
}

/// Both hook paths deliver events through a BPF ring buffer (Linux 5.8); older kernels are
/// refused up front, by a probe map, rather than with a map-creation error.
fn require_ring_buffer() -> Result<(), ProbeError> {
    use aya::{maps::MapType, sys::is_map_supported};
    match is_map_supported(MapType::RingBuf) {
        Ok(false) => Err(ProbeError::NoRingBuffer(kernel::kernel_release())),
        // A probe that fails for another reason (privileges) leaves the load to say why.
        Ok(true) | Err(_) => Ok(()),
    }
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no side effects.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u32 }
}

/// CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN) in the effective set, whatever the uid; warns
/// about the capabilities that naming owners needs.
fn check_privileges() -> Result<(), ProbeError> {
    let Some(p) = privilege::Privileges::current() else {
        return Ok(());
    };
    p.check()?;
    for (cap, without) in p.recommended_missing() {
        log::warn!("without {cap} in the effective set, {without}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_size_is_shared_out_among_the_cpus_in_powers_of_two() {
        let l = |total, cpus| RingLayout::split(total, cpus, 4096);
        assert_eq!(
            l(8 << 20, 2),
            RingLayout {
                cpus: 2,
                per_cpu: 4 << 20
            }
        );
        // 12 CPUs: 699,050 bytes each, rounded down to 512 KiB.
        assert_eq!(l(8 << 20, 12).per_cpu, 512 << 10);
        // Never under a page, whatever the CPUs.
        assert_eq!(l(4096, 2).per_cpu, 4096);
        assert_eq!(l(64 << 10, 256).per_cpu, 4096);
        assert_eq!(l(8 << 20, 1).per_cpu, 8 << 20);
    }

    /// The kernel side names its maps and programs by their identifiers; userspace finds them by
    /// the names in `tcptrace_common::names`. A rename on one side only fails here, not at load.
    #[test]
    fn the_object_has_every_name_of_the_contract() {
        let obj = aya_obj::Object::parse(BPF_OBJECT).expect("the kernel object parses");
        for name in map::ALL {
            assert!(obj.maps.contains_key(name), "map {name} is missing");
        }
        for name in program::ALL {
            assert!(obj.programs.contains_key(name), "program {name} is missing");
        }
        let unknown: Vec<_> = obj
            .programs
            .keys()
            .filter(|p| !program::ALL.contains(&p.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "programs the contract does not name: {unknown:?}"
        );
    }
}
