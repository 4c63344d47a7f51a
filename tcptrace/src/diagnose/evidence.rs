//! The measurements findings are computed from: the report summary, plus what only the socket
//! table can say (CLOSE_WAIT ports and peers per process, TIME_WAIT per destination and per
//! listening port with their owners), plus growth from the timeline.
//!
//! Plain data, so tests build it by hand.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use tcptrace_common::TcpState;

use super::thresholds::{CLOSE_WAIT_OLD_MS, CLOSE_WAIT_STUCK_MS};
use super::timeline::Timeline;
use crate::aggregate::{ConnectFailureRow, DwellMs, LeakHistory, Summary};
use crate::lifecycle::{CauseCounts, SocketTable};

/// A process, as findings name it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ProcId {
    pub pid: u32,
    pub comm: String,
}

/// One process's CLOSE_WAIT and TIME_WAIT.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcEvidence {
    pub proc: ProcId,
    pub close_wait: u64,
    /// Sockets that entered CLOSE_WAIT during the window.
    pub close_wait_entries: u64,
    /// Net change of its CLOSE_WAIT count over the window, per second (from the timeline;
    /// `None` with fewer than two samples).
    pub close_wait_growth_per_s: Option<f64>,
    /// CLOSE_WAIT count at the first sample.
    pub close_wait_at_start: Option<u64>,
    /// Ages of the current CLOSE_WAIT sockets whose entry was seen or estimated.
    pub close_wait_age_ms: Option<DwellMs>,
    /// Current CLOSE_WAIT sockets older than tracing dated by the kernel's receive clocks.
    pub close_wait_age_estimated: u64,
    /// Current CLOSE_WAIT sockets older than tracing that could not be dated (at least the
    /// window).
    pub close_wait_age_unknown: u64,
    /// Current CLOSE_WAIT sockets older than [`CLOSE_WAIT_OLD_MS`] (known or estimated ages).
    pub close_wait_old: u64,
    /// Current CLOSE_WAIT sockets seen entering it during the window: the most the count can
    /// have grown by (sockets older than tracing are never growth).
    pub close_wait_new_held: u64,
    /// The leak's past from the ages of the sockets held.
    pub close_wait_history: Option<LeakHistory>,
    /// Current CLOSE_WAIT sockets by why they are stuck.
    pub close_wait_causes: CauseCounts,
    /// Current CLOSE_WAIT sockets that entered it during the window and are still open
    /// [`CLOSE_WAIT_STUCK_MS`] later: new leaks, whatever the count was at the start.
    pub close_wait_stuck_new: u64,
    /// Local ports and peers of its CLOSE_WAIT sockets, most first.
    pub close_wait_local_ports: Vec<(u16, u64)>,
    pub close_wait_peers: Vec<(String, u64)>,
    pub time_wait: u64,
    pub time_wait_per_s: f64,
    /// Its closes during the window that found the kernel's TIME_WAIT table full.
    pub time_wait_refused: u64,
}

/// TIME_WAIT of accepted connections on one local (listening) port: the server closed first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListenPortEvidence {
    pub port: u16,
    pub time_wait: u64,
    pub time_wait_per_s: f64,
    pub owners: Vec<ProcId>,
}

/// TIME_WAIT on ephemeral local ports towards one destination: this host connected and closed
/// first. Ports are unique per (local address, peer address, peer port).
#[derive(Clone, Debug, PartialEq)]
pub struct DestEvidence {
    pub local_addr: IpAddr,
    pub peer: SocketAddr,
    pub time_wait: u64,
    /// Entries into TIME_WAIT per second towards the peer, apportioned to this local address by
    /// its share of the current TIME_WAIT sockets.
    pub time_wait_per_s: f64,
    pub owners: Vec<ProcId>,
}

/// Lifetimes of outgoing connections to one peer (address and port) that closed.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerLifetimes {
    pub peer: SocketAddr,
    pub lifetime_ms: DwellMs,
    /// Closed connections per second.
    pub per_s: f64,
    pub owners: Vec<ProcId>,
}

/// Everything findings look at besides [`super::HostFacts`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evidence {
    pub window_s: f64,
    pub lost_events: u64,
    /// Wall-clock now, seconds since the epoch ("since when" is computed from it).
    pub now_unix: f64,
    pub processes: Vec<ProcEvidence>,
    pub listen_ports: Vec<ListenPortEvidence>,
    pub destinations: Vec<DestEvidence>,
    pub peers: Vec<PeerLifetimes>,
    /// Orphaned FIN_WAIT2 timewait sockets (closed locally, peer has not sent its FIN), by peer.
    pub fin_wait2_orphans: u64,
    pub fin_wait2_peers: Vec<(String, u64)>,
    /// Connects that failed, by process, destination and errno, most first.
    pub connect_failures: Vec<ConnectFailureRow>,
}

fn top_counts<K: Ord + Clone>(m: BTreeMap<K, u64>, n: usize) -> Vec<(K, u64)> {
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// Peers and ports listed per finding.
const LIST: usize = 5;

fn peer_string(a: &SocketAddr) -> String {
    a.to_string()
}

#[derive(Default)]
struct ProcScan {
    old: u64,
    stuck_new: u64,
    new_held: u64,
    ports: BTreeMap<u16, u64>,
    peers: BTreeMap<String, u64>,
}

impl Evidence {
    /// Joins the summary, one pass over the table, and the timeline.
    pub fn collect(
        summary: &Summary,
        table: &SocketTable,
        timeline: &Timeline,
        now_ns: u64,
        now_unix: f64,
        port_range: (u16, u16),
    ) -> Evidence {
        let (lo, hi) = (
            port_range.0.min(port_range.1),
            port_range.0.max(port_range.1),
        );
        let start_ns = now_ns.saturating_sub((summary.window_s * 1e9) as u64);
        let mut procs: BTreeMap<u32, ProcScan> = BTreeMap::new();
        let mut listen: BTreeMap<u16, (u64, BTreeMap<ProcId, u64>)> = BTreeMap::new();
        let mut dests: BTreeMap<(IpAddr, SocketAddr), (u64, BTreeMap<ProcId, u64>)> =
            BTreeMap::new();
        let mut orphans = 0;
        let mut orphan_peers: BTreeMap<String, u64> = BTreeMap::new();
        let mut out_owners: BTreeMap<SocketAddr, BTreeMap<ProcId, u64>> = BTreeMap::new();
        for v in table.iter() {
            let owner = v.owner.map(|o| ProcId {
                pid: o.pid,
                comm: o.comm.as_str().to_string(),
            });
            if !v.passive
                && !v.listener
                && v.remote.port() != 0
                && let Some(o) = &owner
            {
                *out_owners
                    .entry(v.remote)
                    .or_default()
                    .entry(o.clone())
                    .or_default() += 1;
            }
            match v.state {
                TcpState::CloseWait => {
                    if let Some(o) = &owner {
                        let p = procs.entry(o.pid).or_default();
                        let age = v.since_ns.map(|s| now_ns.saturating_sub(s));
                        let any_age = v
                            .since_ns
                            .or(v.estimated_since_ns)
                            .map(|s| now_ns.saturating_sub(s));
                        if any_age.is_some_and(|a| a >= CLOSE_WAIT_OLD_MS * 1_000_000) {
                            p.old += 1;
                        }
                        if v.since_ns.is_some_and(|s| s >= start_ns) {
                            p.new_held += 1;
                        }
                        if v.since_ns.is_some_and(|s| s >= start_ns)
                            && age.is_some_and(|a| a >= CLOSE_WAIT_STUCK_MS * 1_000_000)
                        {
                            p.stuck_new += 1;
                        }
                        *p.ports.entry(v.local.port()).or_default() += 1;
                        *p.peers.entry(peer_string(&v.remote)).or_default() += 1;
                    }
                }
                TcpState::TimeWait => {
                    if v.passive {
                        let e = listen.entry(v.local.port()).or_default();
                        e.0 += 1;
                        if let Some(o) = owner {
                            *e.1.entry(o).or_default() += 1;
                        }
                    } else if (lo..=hi).contains(&v.local.port()) && v.remote.port() != 0 {
                        let e = dests.entry((v.local.ip(), v.remote)).or_default();
                        e.0 += 1;
                        if let Some(o) = owner {
                            *e.1.entry(o).or_default() += 1;
                        }
                    }
                }
                TcpState::FinWait2 if v.timewait_socket => {
                    orphans += 1;
                    *orphan_peers.entry(peer_string(&v.remote)).or_default() += 1;
                }
                _ => {}
            }
        }
        let owners_of = |m: BTreeMap<ProcId, u64>| -> Vec<ProcId> {
            let mut v: Vec<ProcId> = top_counts(m, usize::MAX)
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            // One row per process (a thread's comm may differ from its process's).
            let mut seen = std::collections::BTreeSet::new();
            v.retain(|p| seen.insert(p.pid));
            v.truncate(LIST);
            v
        };

        let processes = summary
            .by_pid
            .iter()
            .map(|r| {
                let scan = procs.remove(&r.pid).unwrap_or_default();
                let change = timeline.close_wait_change(r.pid);
                ProcEvidence {
                    proc: ProcId {
                        pid: r.pid,
                        comm: r.comm.as_str().to_string(),
                    },
                    close_wait: r.counts.close_wait,
                    close_wait_entries: r.counts.close_wait_entries,
                    close_wait_growth_per_s: change.map(|(a, b, dt)| (b as f64 - a as f64) / dt),
                    close_wait_at_start: change.map(|c| c.0),
                    close_wait_age_ms: r.counts.close_wait_age_ms,
                    close_wait_age_estimated: r.counts.close_wait_age_estimated,
                    close_wait_age_unknown: r.counts.close_wait_age_unknown,
                    close_wait_old: scan.old,
                    close_wait_new_held: scan.new_held,
                    close_wait_history: r.counts.close_wait_history,
                    close_wait_causes: r.counts.close_wait_causes.unwrap_or_default(),
                    close_wait_stuck_new: scan.stuck_new,
                    close_wait_local_ports: top_counts(scan.ports, LIST),
                    close_wait_peers: top_counts(scan.peers, LIST),
                    time_wait: r.counts.time_wait,
                    time_wait_per_s: r.counts.time_wait_per_s,
                    time_wait_refused: r.counts.time_wait_refused,
                }
            })
            .collect();

        let listen_ports = listen
            .into_iter()
            .map(|(port, (n, owners))| ListenPortEvidence {
                port,
                time_wait: n,
                time_wait_per_s: summary
                    .by_local_port
                    .iter()
                    .find(|r| r.port == port)
                    .map_or(0.0, |r| r.counts.time_wait_per_s),
                owners: owners_of(owners),
            })
            .collect();

        // TIME_WAIT entry rate per peer (address, port), shared out by local address.
        let peer_rate = |peer: &SocketAddr| {
            summary
                .by_peer
                .iter()
                .find(|r| r.port == Some(peer.port()) && r.addr == peer.ip().to_string())
                .map_or(0.0, |r| r.counts.time_wait_per_s)
        };
        let mut per_peer_total: BTreeMap<SocketAddr, u64> = BTreeMap::new();
        for ((_, peer), (n, _)) in &dests {
            *per_peer_total.entry(*peer).or_default() += n;
        }
        let destinations = dests
            .into_iter()
            .map(|((local_addr, peer), (n, owners))| {
                let share = n as f64 / per_peer_total[&peer].max(1) as f64;
                DestEvidence {
                    local_addr,
                    peer,
                    time_wait: n,
                    time_wait_per_s: peer_rate(&peer) * share,
                    owners: owners_of(owners),
                }
            })
            .collect();

        let peers = summary
            .by_peer
            .iter()
            .filter_map(|r| {
                let port = r.port?;
                let lt = r.lifetime_ms?;
                let addr: IpAddr = r.addr.parse().ok()?;
                let peer = SocketAddr::new(addr, port);
                Some(PeerLifetimes {
                    peer,
                    lifetime_ms: lt,
                    per_s: if summary.window_s > 0.0 {
                        lt.count as f64 / summary.window_s
                    } else {
                        0.0
                    },
                    owners: owners_of(out_owners.remove(&peer).unwrap_or_default()),
                })
            })
            .collect();

        Evidence {
            window_s: summary.window_s,
            lost_events: summary.lost_events + summary.lost_uncounted,
            now_unix,
            processes,
            listen_ports,
            destinations,
            peers,
            fin_wait2_orphans: orphans,
            fin_wait2_peers: top_counts(orphan_peers, LIST),
            connect_failures: summary.connect_failures.clone(),
        }
    }
}
