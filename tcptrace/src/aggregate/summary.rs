//! The `report --json` document.

use std::collections::BTreeMap;
use std::hash::Hash;

use hashbrown::HashMap;
use tcptrace_common::TcpState;

use super::aggregates::Aggregates;
use super::current::{Ages, Current, CurrentGroups, SelectedAges};
use super::dwell::{DwellMs, ms};
use super::group::{GroupStats, GroupTable};
use super::history::{LeakHistory, history};
use super::pressure::{PortPressure, port_pressure};
use crate::lifecycle::{CauseCounts, Comm, ReconcileStats, SocketTable, StateCounts, TableStats};

/// What the caller knows that the engine does not.
#[derive(Clone, Copy, Debug)]
pub struct SummaryInput<'a> {
    /// CLOCK_MONOTONIC now, ns.
    pub now_ns: u64,
    /// Events the kernel side lost (recursion misses not recovered + failed reservations).
    pub lost_events: u64,
    /// Transitions missed without being counted, found in the events' gaps and by the
    /// kernel-table check (`LossReport::uncounted`).
    pub lost_uncounted: u64,
    /// `LossReport::timewait_hook_missed`.
    pub timewait_hook_missed: u64,
    /// `LossReport::port_filter_forgot`.
    pub port_filter_forgot: u64,
    /// Transitions seen: followed by the kernel programs (summary mode) plus those that
    /// reached userspace as events.
    pub transitions_seen: u64,
    /// Transitions that never reached either (`LossReport::lost_transitions`).
    pub transitions_lost: u64,
    /// How TIME_WAIT is known: "inferred", or the exact hook in use (e.g. "fentry:tcp_time_wait").
    pub timewait_method: &'a str,
    /// `net.ipv4.ip_local_port_range`.
    pub port_range: (u16, u16),
    /// Rows kept per group-by list.
    pub top: usize,
}

/// The report document (`tcptrace report --json`). Durations are milliseconds; rates are per
/// second over the observation window. Group lists are sorted by current TIME_WAIT + CLOSE_WAIT,
/// then by entries into them, and cut to the `top` rows.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    /// Seconds observed (since the aggregates started).
    pub window_s: f64,
    /// Events the kernel side lost; counts below may be short by about this many transitions.
    pub lost_events: u64,
    /// Transitions the kernel skipped without counting them, found where a socket's event left
    /// a state it was never seen entering, or by comparing the socket table with the kernel's:
    /// at least this many beyond `lost_events`.
    pub lost_uncounted: u64,
    /// Exact timewait records that never arrived (ring full, or a skipped run of a timewait
    /// hook): those TIME_WAIT sockets' entry or end was inferred instead. Not in `lost_events`.
    pub timewait_hook_missed: u64,
    /// Sockets the in-kernel port filter admitted but could not remember: later transitions
    /// of each may be missing without being in `lost_events`. Never seen so far.
    pub port_filter_forgot: u64,
    /// TCP state transitions seen (on the sockets the filters select): followed by the kernel
    /// programs, which in summary mode send a record per CLOSE_WAIT entry and per close only,
    /// or received one by one. With `transitions_lost`, every transition that happened.
    pub transitions_seen: u64,
    /// Transitions that were neither (part of `lost_events`).
    pub transitions_lost: u64,
    /// How TIME_WAIT is known: "inferred" (from FIN_WAIT2/CLOSING -> CLOSE) or the exact
    /// kernel hook used.
    pub timewait_method: String,
    /// Sockets tracked now.
    pub sockets: u64,
    /// Sockets now per state, as `ss` would count them (timewait sockets as TIME_WAIT, or
    /// FIN_WAIT2 while they wait for a local peer's FIN).
    pub totals: StateCounts,
    /// TIME_WAIT / CLOSE_WAIT sockets whose owner is not known. They appear in no `by_pid` row.
    pub unattributed: Unattributed,
    /// Per process (pid, comm, cgroup). Only sockets with a known owner.
    pub by_pid: Vec<PidRow>,
    /// Inbound (accepted) connections by local port: the service's port.
    pub by_local_port: Vec<PortRow>,
    /// By remote address.
    pub by_peer_addr: Vec<PeerAddrRow>,
    /// By remote address and port; `port` is null for inbound connections, whose remote port is
    /// the client's ephemeral one.
    pub by_peer: Vec<PeerRow>,
    /// Per process and remote address.
    pub by_pid_peer: Vec<PidPeerRow>,
    /// Completed stays per state, every trackable state present (count 0 when none): how long
    /// sockets spent in the state before leaving it. TIME_WAIT stays end at expiry (60 s),
    /// reuse or reset.
    pub dwell_ms: BTreeMap<&'static str, DwellMs>,
    /// Connection lifetimes, from SYN_SENT / SYN_RECV to CLOSE.
    pub lifetime_ms: DwellMs,
    /// Corrections reconciliation with the kernel table made (sum over the run).
    pub corrections: ReconcileStats,
    /// Entries dropped to stay within memory bounds.
    pub evictions: Evictions,
    /// Duplicate events dropped (the backup kernel program's copies).
    pub duplicates: u64,
    /// Events whose old state did not match the tracked one (lost or reordered events).
    pub state_mismatches: u64,
    /// Destinations whose timewait sockets use up ephemeral ports, most first.
    pub port_pressure: Vec<PortPressure>,
    /// Per network namespace (its inode, as in `/proc/PID/ns/net`): the same 4-tuple in two
    /// namespaces is two sockets, and a leak belongs to one of them.
    pub by_netns: Vec<NetnsRow>,
    /// Connects that failed, by process, destination and errno (`connect()`'s result: EADDRNOTAVAIL
    /// when no local port was left, ECONNREFUSED, ETIMEDOUT, ...), most first. The total is
    /// `table.connect_failures`.
    pub connect_failures: Vec<super::ConnectFailureRow>,
    /// Every socket-table counter.
    pub table: TableStats,
}

/// Sockets without a known owner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Unattributed {
    pub time_wait: u64,
    pub close_wait: u64,
}

/// Entries dropped at the bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Evictions {
    /// Sockets dropped from the socket table (`max_sockets`).
    pub sockets: u64,
    /// Groups dropped from the group-by tables (`max_groups`); their history is lost, their
    /// current counts are not (those come from the socket table).
    pub groups: u64,
}

/// The counts every group row carries.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct GroupCounts {
    /// Sockets now in TIME_WAIT.
    pub time_wait: u64,
    /// Sockets now in CLOSE_WAIT: the peer closed, the application has not.
    pub close_wait: u64,
    /// Sockets that entered TIME_WAIT during the window.
    pub time_wait_entries: u64,
    /// Closes during the window that asked for TIME_WAIT and got none: the kernel's TIME_WAIT
    /// table was full (`tcp_max_tw_buckets`). Left out when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub time_wait_refused: u64,
    /// Sockets that entered CLOSE_WAIT during the window.
    pub close_wait_entries: u64,
    /// `time_wait_entries` per second.
    pub time_wait_per_s: f64,
    /// `close_wait_entries` per second.
    pub close_wait_per_s: f64,
    /// Age of the oldest current CLOSE_WAIT socket with a known or estimated entry time, ms.
    pub close_wait_oldest_ms: Option<f64>,
    /// Ages of the current CLOSE_WAIT sockets with a known or estimated entry time (exact
    /// quantiles of those ages).
    pub close_wait_age_ms: Option<DwellMs>,
    /// Of the current CLOSE_WAIT sockets, those older than tracing whose age is estimated from
    /// the kernel's receive clocks (`tcp_info`: time since the peer's last segment, a lower
    /// bound). Included in `close_wait_age_ms` and `close_wait_oldest_ms`.
    pub close_wait_age_estimated: u64,
    /// Current CLOSE_WAIT sockets that entered it before tracing began and could not be dated.
    pub close_wait_age_unknown: u64,
    /// Current CLOSE_WAIT sockets by why they are stuck, from their receive queues (present
    /// when `close_wait` > 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_wait_causes: Option<CauseCounts>,
    /// The leak's past, from the ages of the CLOSE_WAIT sockets still held (at least two):
    /// `per_s` is sockets leaked and still held per second over `span_s`, the age of the
    /// oldest, which may be much longer than `window_s`. Unlike `close_wait_per_s` (entries
    /// during the window), it counts sockets older than tracing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_wait_history: Option<LeakHistory>,
    /// Completed TIME_WAIT and CLOSE_WAIT stays ("TIME_WAIT", "CLOSE_WAIT"; only those with
    /// samples). Per-group histograms are coarse: quantiles within about 3 %, max exact.
    pub dwell_ms: BTreeMap<&'static str, DwellMs>,
}

/// How the owners of a process's current TIME_WAIT / CLOSE_WAIT sockets were learned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Attributions {
    /// From the process's own connect/listen/close (exact).
    pub kernel_context: u64,
    /// From a `/proc/*/fd` scan (exact at scan time).
    pub fd_scan: u64,
    /// From the kernel table dump and its fd scan (sockets older than tracing).
    pub snapshot: u64,
    /// Inherited from the listener it was accepted from (a guess).
    pub listener: u64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PidRow {
    /// 0 for the summed history of ended processes (see `ended_processes`).
    pub pid: u32,
    pub comm: Comm,
    /// Processes with this command (and cgroup) that ended or stopped holding sockets, whose
    /// history this row sums; 0 for a row of one live process.
    pub ended_processes: u32,
    /// cgroup v2 id, 0 when unknown.
    pub cgroup_id: u64,
    /// The container the process runs in (null outside containers). The engine leaves it
    /// empty; the commands fill it (`app::containers`), since naming reads the host.
    pub container: Option<crate::owner::cgroup::Container>,
    #[serde(flatten)]
    pub counts: GroupCounts,
    pub attribution: Attributions,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PortRow {
    pub port: u16,
    #[serde(flatten)]
    pub counts: GroupCounts,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PeerAddrRow {
    /// IP address.
    pub addr: String,
    #[serde(flatten)]
    pub counts: GroupCounts,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PeerRow {
    /// IP address.
    pub addr: String,
    /// Remote port; null for inbound connections.
    pub port: Option<u16>,
    #[serde(flatten)]
    pub counts: GroupCounts,
    /// Lifetimes of the connections to this peer that closed (short ones are candidates for
    /// connection reuse / keep-alive).
    pub lifetime_ms: Option<DwellMs>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PidPeerRow {
    /// 0 for the summed history of ended processes (see `ended_processes`).
    pub pid: u32,
    pub comm: Comm,
    /// As in [`PidRow`].
    pub ended_processes: u32,
    pub cgroup_id: u64,
    /// Remote IP address.
    pub addr: String,
    #[serde(flatten)]
    pub counts: GroupCounts,
}

/// Builds the report from the socket table (current state) and the aggregates (history).
pub fn summary(table: &SocketTable, agg: &Aggregates, input: &SummaryInput) -> Summary {
    let now = input.now_ns;
    let window_s = now.saturating_sub(agg.start_ns) as f64 / 1e9;
    let top = input.top;
    let cur = CurrentGroups::scan(table);
    let pid_keys = rank(&cur.by_pid, &agg.by_pid, top);
    let port_keys = rank(&cur.by_local_port, &agg.by_local_port, top);
    let peer_addr_keys = rank(&cur.by_peer_addr, &agg.by_peer_addr, top);
    let peer_keys = rank(&cur.by_peer, &agg.by_peer, top);
    let pid_peer_keys = rank(&cur.by_pid_peer, &agg.by_pid_peer, top);
    let mut ages = SelectedAges {
        by_pid: Ages::for_keys(pid_keys.iter()),
        by_local_port: Ages::for_keys(port_keys.iter()),
        by_peer_addr: Ages::for_keys(peer_addr_keys.iter()),
        by_peer: Ages::for_keys(peer_keys.iter()),
        by_pid_peer: Ages::for_keys(pid_peer_keys.iter()),
    };
    ages.collect(table, now);

    let by_pid = pid_keys
        .iter()
        .map(|o| {
            let c = cur.by_pid.get(o);
            PidRow {
                pid: o.pid,
                comm: o.comm,
                ended_processes: agg.by_pid.lookup(o).map_or(0, |g| g.folded),
                cgroup_id: o.cgroup_id,
                container: None,
                counts: counts(c, agg.by_pid.lookup(o), ages.by_pid.take(o), window_s),
                attribution: c.map(attributions).unwrap_or_default(),
            }
        })
        .collect();
    let by_local_port = port_keys
        .iter()
        .map(|p| PortRow {
            port: *p,
            counts: counts(
                cur.by_local_port.get(p),
                agg.by_local_port.lookup(p),
                ages.by_local_port.take(p),
                window_s,
            ),
        })
        .collect();
    let by_peer_addr = peer_addr_keys
        .iter()
        .map(|a| PeerAddrRow {
            addr: a.to_string(),
            counts: counts(
                cur.by_peer_addr.get(a),
                agg.by_peer_addr.lookup(a),
                ages.by_peer_addr.take(a),
                window_s,
            ),
        })
        .collect();
    let by_peer = peer_keys
        .iter()
        .map(|p| {
            let g = agg.by_peer.lookup(p);
            PeerRow {
                addr: p.addr.to_string(),
                port: p.port,
                counts: counts(cur.by_peer.get(p), g, ages.by_peer.take(p), window_s),
                lifetime_ms: g.and_then(|g| g.lifetime.as_ref()).map(|d| d.summary()),
            }
        })
        .collect();
    let by_pid_peer = pid_peer_keys
        .iter()
        .map(|k @ (o, a)| PidPeerRow {
            pid: o.pid,
            comm: o.comm,
            ended_processes: agg.by_pid_peer.lookup(k).map_or(0, |g| g.folded),
            cgroup_id: o.cgroup_id,
            addr: a.to_string(),
            counts: counts(
                cur.by_pid_peer.get(k),
                agg.by_pid_peer.lookup(k),
                ages.by_pid_peer.take(k),
                window_s,
            ),
        })
        .collect();

    let dwell_ms = StateCounts::STATES
        .iter()
        .map(|&s| {
            (
                s.name(),
                agg.dwell(s).map(|d| d.summary()).unwrap_or_default(),
            )
        })
        .collect();
    let st = table.stats();
    Summary {
        window_s,
        lost_events: input.lost_events,
        lost_uncounted: input.lost_uncounted,
        timewait_hook_missed: input.timewait_hook_missed,
        port_filter_forgot: input.port_filter_forgot,
        transitions_seen: input.transitions_seen,
        transitions_lost: input.transitions_lost,
        timewait_method: input.timewait_method.to_string(),
        sockets: table.len() as u64,
        totals: table.counts(),
        unattributed: Unattributed {
            time_wait: cur.unattributed.time_wait,
            close_wait: cur.unattributed.close_wait,
        },
        by_pid,
        by_local_port,
        by_peer_addr,
        by_peer,
        by_pid_peer,
        dwell_ms,
        lifetime_ms: agg.lifetime().summary(),
        corrections: st.corrections,
        evictions: Evictions {
            sockets: st.evictions,
            groups: agg.group_evictions(),
        },
        duplicates: st.duplicates,
        state_mismatches: st.state_mismatches,
        port_pressure: port_pressure(table, input.port_range, top),
        by_netns: by_netns(table),
        connect_failures: agg.connect_failures.rows(top),
        table: *st,
    }
}

/// Sockets now in one network namespace.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NetnsRow {
    /// Namespace inode; 0 when the probe could not read it (classic tracepoint without BTF).
    pub netns: u32,
    pub sockets: u64,
    pub time_wait: u64,
    pub close_wait: u64,
}

/// Namespaces by TIME_WAIT + CLOSE_WAIT, then by sockets.
fn by_netns(table: &SocketTable) -> Vec<NetnsRow> {
    let mut m: std::collections::HashMap<u32, NetnsRow> = std::collections::HashMap::new();
    for v in table.iter() {
        let r = m.entry(v.netns).or_insert(NetnsRow {
            netns: v.netns,
            sockets: 0,
            time_wait: 0,
            close_wait: 0,
        });
        r.sockets += 1;
        match v.state {
            TcpState::TimeWait => r.time_wait += 1,
            TcpState::CloseWait => r.close_wait += 1,
            _ => {}
        }
    }
    let mut rows: Vec<NetnsRow> = m.into_values().collect();
    rows.sort_by_key(|r| {
        (
            std::cmp::Reverse(r.time_wait + r.close_wait),
            std::cmp::Reverse(r.sockets),
            r.netns,
        )
    });
    rows
}

fn attributions(c: &Current) -> Attributions {
    let a = &c.attribution;
    Attributions {
        kernel_context: a[0],
        fd_scan: a[1],
        snapshot: a[2],
        listener: a[3],
    }
}

/// The `top` keys with the most current TIME_WAIT + CLOSE_WAIT, then the most entries into them.
fn rank<K: Hash + Eq + Ord + Clone>(
    current: &HashMap<K, Current>,
    history: &GroupTable<K>,
    top: usize,
) -> Vec<K> {
    let score = |k: &K| {
        let now = current.get(k).map_or(0, |c| c.time_wait + c.close_wait);
        let entries = history.lookup(k).map_or(0, |g| {
            g.time_wait_entries + g.time_wait_refused + g.close_wait_entries
        });
        (now, entries)
    };
    let mut ranked: Vec<(u64, u64, &K)> = current
        .keys()
        .chain(history.keys().filter(|k| !current.contains_key(*k)))
        .map(|k| {
            let (n, e) = score(k);
            (n, e, k)
        })
        .collect();
    let order = |a: &(u64, u64, &K), b: &(u64, u64, &K)| {
        b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(b.2))
    };
    if ranked.len() > top && top > 0 {
        ranked.select_nth_unstable_by(top - 1, order);
    }
    ranked.truncate(top);
    ranked.sort_by(order);
    ranked.into_iter().map(|(_, _, k)| k.clone()).collect()
}

/// One row's counts: `ages` are the sorted ages of its current CLOSE_WAIT sockets.
fn counts(
    c: Option<&Current>,
    g: Option<&GroupStats>,
    ages: Vec<(u64, bool)>,
    window_s: f64,
) -> GroupCounts {
    let rate = |n: u64| {
        if window_s > 0.0 {
            n as f64 / window_s
        } else {
            0.0
        }
    };
    let mut out = GroupCounts::default();
    if let Some(c) = c {
        out.time_wait = c.time_wait;
        out.close_wait = c.close_wait;
        out.close_wait_age_unknown = c.close_wait_age_unknown;
        out.close_wait_age_estimated = c.close_wait_age_estimated;
        out.close_wait_causes = (c.close_wait > 0).then_some(c.close_wait_causes);
    }
    if !ages.is_empty() {
        out.close_wait_oldest_ms = ages.last().map(|&a| ms(a.0));
        let plain: Vec<u64> = ages.iter().map(|a| a.0).collect();
        out.close_wait_age_ms = Some(exact(&plain));
        out.close_wait_history = history(&ages);
    }
    if let Some(g) = g {
        out.time_wait_entries = g.time_wait_entries;
        out.time_wait_refused = g.time_wait_refused;
        out.close_wait_entries = g.close_wait_entries;
        out.time_wait_per_s = rate(g.time_wait_entries);
        out.close_wait_per_s = rate(g.close_wait_entries);
        for s in [TcpState::TimeWait, TcpState::CloseWait] {
            if let Some(d) = g.dwell(s) {
                out.dwell_ms.insert(s.name(), d.summary());
            }
        }
    }
    out
}

/// Nearest-rank quantiles of sorted values (ns).
fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn exact(sorted: &[u64]) -> DwellMs {
    let q = |q: f64| {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        ms(sorted[rank - 1])
    };
    DwellMs {
        count: sorted.len() as u64,
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        max: ms(*sorted.last().unwrap_or(&0)),
    }
}
