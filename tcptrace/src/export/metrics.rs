//! The `/metrics` document: built from the socket table (the present), the aggregates (dwell
//! history), the loss counters and the stream counters, at every scrape.
//!
//! Conventions: base units (seconds, bytes), `_total` on counters, `_seconds` on durations,
//! `_sockets` on socket counts. Per-process, per-port and per-peer series are cut to the top N
//! with the rest in one `other` series, so the sum over a family always equals the total.

use tcptrace_common::TcpState;

use super::current::{Cardinality, Counts, CurrentSockets, Folded};
use super::exposition::{Exposition, Kind};
use super::process::ProcessStats;
use crate::aggregate::{Aggregates, Dwell, TransitionCounts, port_pressure};
use crate::lifecycle::{CauseCounts, LeakCause, SocketTable, StateCounts};
use crate::owner::cgroup::Container;
use crate::probe::LossReport;

/// Upper bounds of the dwell-time buckets, seconds: from loopback handshakes (sub-ms) through
/// TIME_WAIT's 60 s to long-lived connections.
pub const DWELL_BUCKETS_S: [f64; 15] = [
    0.0001, 0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Everything one scrape reads.
pub struct Scrape<'a> {
    pub table: &'a SocketTable,
    pub agg: &'a Aggregates,
    pub loss: LossReport,
    pub counters: &'a TransitionCounts,
    /// Events taken from the ring since start.
    pub events: u64,
    pub hook: &'a str,
    pub timewait_method: &'a str,
    /// `net.ipv4.ip_local_port_range`.
    pub port_range: (u16, u16),
    pub limits: Cardinality,
    pub process: Option<ProcessStats>,
    /// The overload guard's state (None until it acts).
    pub overload: Option<crate::probe::Overload>,
}

/// Label value for the folded rest of a family.
pub const OTHER: &str = "other";
/// Label value for sockets whose owner is not known.
pub const UNKNOWN: &str = "unknown";

/// Renders the document. `container_of(pid, cgroup_id)` names the container of each process
/// that gets its own series (it is asked about the top processes only).
pub fn render(
    s: &Scrape<'_>,
    container_of: &mut dyn FnMut(u32, u64) -> Option<Container>,
) -> String {
    let mut e = Exposition::new();
    info(&mut e, s);
    let totals = s.table.counts();
    totals_family(&mut e, &totals);
    let cur = CurrentSockets::scan(s.table, &s.limits);
    by_process(&mut e, &cur, container_of);
    by_local_port(&mut e, &cur.by_local_port);
    by_peer(&mut e, &cur.by_peer);
    folded(&mut e, &cur);
    ports(&mut e, s);
    close_wait_causes(&mut e, s.table);
    connect_failures(&mut e, s);
    transitions(&mut e, s.counters);
    dwell(&mut e, s.agg);
    health(&mut e, s);
    if let Some(p) = &s.process {
        process(&mut e, p);
    }
    e.finish()
}

fn info(e: &mut Exposition, s: &Scrape<'_>) {
    e.family(
        "tcptrace_build_info",
        Kind::Gauge,
        "Always 1: the tcptrace version, the kernel hook in use and how TIME_WAIT is known.",
    );
    e.sample(
        "tcptrace_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("hook", s.hook),
            ("timewait_method", s.timewait_method),
        ],
        1,
    );
}

fn totals_family(e: &mut Exposition, totals: &StateCounts) {
    e.family(
        "tcptrace_sockets",
        Kind::Gauge,
        "TCP sockets tracked now, by state, as ss counts them.",
    );
    for (st, n) in totals.iter() {
        e.sample("tcptrace_sockets", &[("state", st.name())], n);
    }
}

const CW: (TcpState, &str, &str) = (
    TcpState::CloseWait,
    "tcptrace_close_wait_sockets",
    "Sockets in CLOSE_WAIT now (the peer closed; the process has not), by owning process. \
     pid=\"other\" sums the processes past --top-pids; pid=\"unknown\" has no known owner.",
);
const TW: (TcpState, &str, &str) = (
    TcpState::TimeWait,
    "tcptrace_time_wait_sockets",
    "Sockets in TIME_WAIT now, by the process that owned the connection. pid=\"other\" sums \
     the processes past --top-pids; pid=\"unknown\" has no known owner.",
);

fn by_process(
    e: &mut Exposition,
    cur: &CurrentSockets,
    container_of: &mut dyn FnMut(u32, u64) -> Option<Container>,
) {
    struct Row {
        pid: String,
        comm: String,
        container: String,
        pod_uid: String,
        counts: Counts,
    }
    let mut rows: Vec<Row> = cur
        .by_process
        .top
        .iter()
        .map(|((p, cgroup_id), c)| {
            let ct = container_of(p.pid, *cgroup_id);
            Row {
                pid: p.pid.to_string(),
                comm: p.comm.as_str().to_string(),
                container: ct.as_ref().map(|c| c.id.clone()).unwrap_or_default(),
                pod_uid: ct.and_then(|c| c.pod_uid).unwrap_or_default(),
                counts: *c,
            }
        })
        .collect();
    for (name, counts) in [(OTHER, cur.by_process.other), (UNKNOWN, cur.unattributed)] {
        rows.push(Row {
            pid: name.into(),
            comm: name.into(),
            container: String::new(),
            pod_uid: String::new(),
            counts,
        });
    }
    for (state, name, help) in [CW, TW] {
        e.family(name, Kind::Gauge, help);
        for r in &rows {
            e.sample(
                name,
                &[
                    ("pid", &r.pid),
                    ("comm", &r.comm),
                    ("container", &r.container),
                    ("pod_uid", &r.pod_uid),
                ],
                r.counts.get(state),
            );
        }
    }
}

fn by_local_port(e: &mut Exposition, f: &Folded<u16>) {
    let name = "tcptrace_local_port_sockets";
    e.family(
        name,
        Kind::Gauge,
        "Inbound (accepted) connections in TIME_WAIT or CLOSE_WAIT now, by the local (service) \
         port. port=\"other\" sums the ports past --top-ports.",
    );
    for st in [TcpState::CloseWait, TcpState::TimeWait] {
        for (port, c) in &f.top {
            e.sample(
                name,
                &[("state", st.name()), ("port", &port.to_string())],
                c.get(st),
            );
        }
        e.sample(
            name,
            &[("state", st.name()), ("port", OTHER)],
            f.other.get(st),
        );
    }
}

fn by_peer(e: &mut Exposition, f: &Folded<crate::aggregate::Peer>) {
    let name = "tcptrace_peer_sockets";
    e.family(
        name,
        Kind::Gauge,
        "Connections in TIME_WAIT or CLOSE_WAIT now, by remote address and, for outbound \
         connections, remote port (peer_port is empty for inbound ones). peer=\"other\" sums \
         the peers past --top-peers.",
    );
    for st in [TcpState::CloseWait, TcpState::TimeWait] {
        for (p, c) in &f.top {
            let port = p.port.map(|p| p.to_string()).unwrap_or_default();
            e.sample(
                name,
                &[
                    ("state", st.name()),
                    ("peer", &p.addr.to_string()),
                    ("peer_port", &port),
                ],
                c.get(st),
            );
        }
        e.sample(
            name,
            &[("state", st.name()), ("peer", OTHER), ("peer_port", "")],
            f.other.get(st),
        );
    }
}

fn folded(e: &mut Exposition, cur: &CurrentSockets) {
    let name = "tcptrace_folded_groups";
    e.family(
        name,
        Kind::Gauge,
        "Groups summed into the \"other\" series because they were past the top-N limit.",
    );
    for (dim, n) in [
        ("process", cur.by_process.other_groups),
        ("local_port", cur.by_local_port.other_groups),
        ("peer", cur.by_peer.other_groups),
    ] {
        e.sample(name, &[("dimension", dim)], n as u64);
    }
}

fn ports(e: &mut Exposition, s: &Scrape<'_>) {
    let (lo, hi) = (
        s.port_range.0.min(s.port_range.1),
        s.port_range.0.max(s.port_range.1),
    );
    e.family(
        "tcptrace_ephemeral_port_range_ports",
        Kind::Gauge,
        "Ports in net.ipv4.ip_local_port_range: how many connections one source address can \
         have open to one destination.",
    );
    e.sample(
        "tcptrace_ephemeral_port_range_ports",
        &[],
        u64::from(hi - lo) + 1,
    );
    let rows = port_pressure(s.table, s.port_range, s.limits.top_peers);
    for (name, help) in [
        (
            "tcptrace_ephemeral_ports_time_wait_sockets",
            "Ephemeral local ports held by timewait sockets, per (source address, destination); \
             the busiest --top-peers destinations.",
        ),
        (
            "tcptrace_ephemeral_ports_usage_ratio",
            "Ephemeral local ports held by timewait sockets as a fraction of the port range, per \
             (source address, destination). At 1, connect() to that destination fails with \
             EADDRNOTAVAIL.",
        ),
    ] {
        e.family(name, Kind::Gauge, help);
        for p in &rows {
            let port = p.peer_port.to_string();
            let labels = [
                ("local", p.local_addr.as_str()),
                ("peer", p.peer_addr.as_str()),
                ("peer_port", port.as_str()),
            ];
            if name.ends_with("ratio") {
                e.sample_f64(name, &labels, p.ratio);
            } else {
                e.sample(name, &labels, p.time_wait);
            }
        }
    }
}

fn close_wait_causes(e: &mut Exposition, table: &SocketTable) {
    let name = "tcptrace_close_wait_cause_sockets";
    e.family(
        name,
        Kind::Gauge,
        "Sockets in CLOSE_WAIT now by why they are stuck, from their receive queue at the last \
         kernel table dump: never_read_eof (Recv-Q 1: only the peer's FIN, nobody reads), \
         read_eof_not_closed (Recv-Q 0: EOF read, close() missing), stopped_reading (data unread \
         before the FIN), unknown (not in a dump yet).",
    );
    let mut c = CauseCounts::default();
    for v in table.iter_where(|st| st == TcpState::CloseWait) {
        c.add(v.leak_cause);
    }
    for k in LeakCause::ALL {
        e.sample(name, &[("cause", k.name())], c.get(k));
    }
    e.sample(name, &[("cause", UNKNOWN)], c.unknown);
}

/// Failed connects: the busiest --top-peers (process, destination, errno) series, and the rest
/// summed per errno under pid, comm, peer and peer_port "other" (errno names are few).
fn connect_failures(e: &mut Exposition, s: &Scrape<'_>) {
    let name = "tcptrace_connect_failures_total";
    e.family(
        name,
        Kind::Counter,
        "Connects that failed since start, by process, destination and errno (what connect() \
         returned: EADDRNOTAVAIL when no local port was free, ECONNREFUSED, ETIMEDOUT, ...). The \
         busiest --top-peers series have their own labels; the rest are summed per errno with \
         pid, comm, peer and peer_port \"other\" (that series can drop when a key gets its own).",
    );
    let rows = s.agg.connect_failures.rows(0);
    let mut other: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        if i < s.limits.top_peers {
            let pid = if r.pid == 0 {
                UNKNOWN.to_string()
            } else {
                r.pid.to_string()
            };
            let comm = r.comm.as_ref().map_or(UNKNOWN, |c| c.as_str());
            let port = r.port.to_string();
            e.sample(
                name,
                &[
                    ("pid", &pid),
                    ("comm", comm),
                    ("peer", &r.addr),
                    ("peer_port", &port),
                    ("errno", &r.errno),
                ],
                r.count,
            );
        } else {
            *other.entry(r.errno.as_str()).or_default() += r.count;
        }
    }
    if s.agg.connect_failures.dropped > 0 {
        // Keys past the table's bound: counted, errno unknown.
        *other.entry(UNKNOWN).or_default() += s.agg.connect_failures.dropped;
    }
    for (errno, n) in other {
        e.sample(
            name,
            &[
                ("pid", OTHER),
                ("comm", OTHER),
                ("peer", OTHER),
                ("peer_port", OTHER),
                ("errno", errno),
            ],
            n,
        );
    }
}

fn transitions(e: &mut Exposition, c: &TransitionCounts) {
    let name = "tcptrace_transitions_total";
    e.family(
        name,
        Kind::Counter,
        "TCP state transitions the kernel reported (sock:inet_sock_set_state), by old and new \
         state. TIME_WAIT never appears as a new state there: see tcptrace_state_dwell_seconds.",
    );
    for (old, new, n) in c.transitions() {
        e.sample(
            name,
            &[("old_state", old.name()), ("new_state", new.name())],
            n,
        );
    }
    let name = "tcptrace_resets_total";
    e.family(
        name,
        Kind::Counter,
        "RSTs received and sent on tracked sockets.",
    );
    e.sample(name, &[("direction", "received")], c.resets_received);
    e.sample(name, &[("direction", "sent")], c.resets_sent);
}

fn dwell(e: &mut Exposition, agg: &Aggregates) {
    let bounds_ns: Vec<u64> = DWELL_BUCKETS_S
        .iter()
        .map(|s| (s * 1e9).round() as u64)
        .collect();
    let hist = |e: &mut Exposition, name: &str, labels: &[(&str, &str)], d: Option<&Dwell>| {
        let (counts, sum_ns, n) = match d {
            Some(d) => {
                let (c, s) = d.cumulative(&bounds_ns);
                (c, s, d.count())
            }
            None => (vec![0; bounds_ns.len()], 0.0, 0),
        };
        e.histogram(name, labels, &DWELL_BUCKETS_S, &counts, sum_ns / 1e9, n);
    };
    let name = "tcptrace_state_dwell_seconds";
    e.family(
        name,
        Kind::Histogram,
        "Completed stays in each TCP state: time from entering the state to leaving it. \
         TIME_WAIT stays end at expiry (60 s), reuse of the 4-tuple, or a reset.",
    );
    for st in StateCounts::STATES {
        hist(e, name, &[("state", st.name())], agg.dwell(st));
    }
    let name = "tcptrace_connection_lifetime_seconds";
    e.family(
        name,
        Kind::Histogram,
        "Connection lifetimes, from SYN_SENT or SYN_RECV to CLOSE.",
    );
    hist(e, name, &[], Some(agg.lifetime()));
}

fn health(e: &mut Exposition, s: &Scrape<'_>) {
    let l = &s.loss;
    let counter = |e: &mut Exposition, name: &str, help: &str, v: u64| {
        e.family(name, Kind::Counter, help);
        e.sample(name, &[], v);
    };
    counter(
        e,
        "tcptrace_events_total",
        "Events taken from the kernel ring buffer (after duplicates were dropped).",
        s.events,
    );
    let name = "tcptrace_lost_events_total";
    e.family(
        name,
        Kind::Counter,
        "Events the kernel side could not deliver, by cause: ring_full (the reader fell \
         behind), nested (runs the kernel skipped because the program was already running on \
         that CPU, less those the backup program delivered), reset_nested (the same for the \
         reset programs), undecodable, uncounted (skipped by the kernel without being \
         counted, found afterwards in a socket's next event or by the kernel-table check: a lower \
         bound).",
    );
    for (cause, n) in [
        ("ring_full", l.lost_ring_full()),
        ("nested", l.lost_nested()),
        ("reset_nested", l.reset_skipped),
        ("undecodable", l.undecodable),
        (
            "uncounted",
            l.uncounted(
                s.table.transitions_missed(),
                s.overload.as_ref().map_or(0, |o| o.counted_events),
            ),
        ),
    ] {
        e.sample(name, &[("cause", cause)], n);
    }
    let (counting, counted) = s
        .overload
        .as_ref()
        .map(|o| (u64::from(o.counting), o.counted_events))
        .unwrap_or((0, 0));
    e.family(
        "tcptrace_overload_counting",
        Kind::Gauge,
        "1 while the overload guard has the kernel count transitions instead of sending them \
         (the event rate exceeded --max-event-rate).",
    );
    e.sample("tcptrace_overload_counting", &[], counting);
    counter(
        e,
        "tcptrace_kernel_counted_events_total",
        "Events the kernel counted instead of sending, under the overload guard (not lost).",
        counted,
    );
    counter(
        e,
        "tcptrace_recovered_events_total",
        "Transitions the backup program delivered after the kernel skipped the primary one.",
        l.recovered,
    );
    counter(
        e,
        "tcptrace_timewait_hook_missed_total",
        "Exact timewait records (timewait hooks) the ring refused or the kernel skipped: not \
         lost transitions, but those sockets' TIME_WAIT entry or end was inferred instead.",
        l.timewait_hook_missed,
    );
    counter(
        e,
        "tcptrace_port_filter_forgotten_sockets_total",
        "Sockets the in-kernel port filter admitted but could not remember (a map update \
         failed): later transitions of each may be missing, uncounted in lost_events.",
        l.port_filter_forgot,
    );
    counter(
        e,
        "tcptrace_duplicate_events_total",
        "Copies of a transition the backup program sent that the primary had also sent; dropped.",
        l.duplicates,
    );
    let st = s.table.stats();
    let name = "tcptrace_reconcile_corrections_total";
    e.family(
        name,
        Kind::Counter,
        "Corrections made by comparing the socket table with the kernel's (every 10 s): sockets \
         added (predating tcptrace or their events lost), removed (a close was lost), with a \
         state or 4-tuple fixed, or a timewait socket's substate (FIN_WAIT2/TIME_WAIT, which \
         changes without an event) fixed.",
    );
    let c = &st.corrections;
    for (kind, n) in [
        ("added", c.added),
        ("removed", c.removed),
        ("state_fixed", c.state_fixed),
        ("substate_fixed", c.substate_fixed),
        ("tuple_fixed", c.tuple_fixed),
    ] {
        e.sample(name, &[("kind", kind)], n);
    }
    let name = "tcptrace_evictions_total";
    e.family(
        name,
        Kind::Counter,
        "Entries dropped to stay within memory bounds: sockets from the socket table, groups \
         from the per-process/port/peer history tables.",
    );
    e.sample(name, &[("table", "sockets")], st.evictions);
    e.sample(name, &[("table", "groups")], s.agg.group_evictions());
    counter(
        e,
        "tcptrace_state_mismatches_total",
        "Events whose old state differed from the tracked one (lost or reordered events).",
        st.state_mismatches,
    );
}

fn process(e: &mut Exposition, p: &ProcessStats) {
    let gauge = |e: &mut Exposition, name: &str, help: &str, v: f64| {
        e.family(name, Kind::Gauge, help);
        e.sample_f64(name, &[], v);
    };
    e.family(
        "process_cpu_seconds_total",
        Kind::Counter,
        "Total user and system CPU time spent by tcptrace, seconds.",
    );
    e.sample_f64("process_cpu_seconds_total", &[], p.cpu_seconds);
    gauge(
        e,
        "process_resident_memory_bytes",
        "Resident memory size of tcptrace, bytes.",
        p.resident_bytes as f64,
    );
    gauge(
        e,
        "process_virtual_memory_bytes",
        "Virtual memory size of tcptrace, bytes.",
        p.virtual_bytes as f64,
    );
    gauge(
        e,
        "process_start_time_seconds",
        "Start time of tcptrace since the Unix epoch, seconds.",
        p.start_time_seconds,
    );
    gauge(
        e,
        "process_open_fds",
        "Open file descriptors of tcptrace.",
        p.open_fds as f64,
    );
    gauge(
        e,
        "process_max_fds",
        "Maximum open file descriptors of tcptrace (soft RLIMIT_NOFILE).",
        p.max_fds as f64,
    );
}
