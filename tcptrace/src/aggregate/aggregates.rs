//! Accumulating lifecycle changes into global and per-group distributions and counters.

use std::net::IpAddr;

use tcptrace_common::TcpState;

use super::connects::ConnectFailures;
use super::dwell::{Dwell, GLOBAL_SIGFIG};
use super::group::{GroupStats, GroupTable};
use crate::lifecycle::{Applied, Change, Owner, SockChange, SockInfo};

/// A remote peer. `port` is None for inbound (accepted) connections, whose peer port is
/// ephemeral and would make every connection its own group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

impl Peer {
    pub(super) fn of(local_passive: bool, remote: &std::net::SocketAddr) -> Option<Peer> {
        // A remote port of 0 means the 4-tuple is not known yet (connect() in SYN_SENT).
        (remote.port() != 0).then(|| Peer {
            addr: remote.ip(),
            port: (!local_passive).then_some(remote.port()),
        })
    }
}

/// Bounds of the group-by tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AggLimits {
    /// Most keys per group-by table. Each key costs about 100 bytes plus a few KB once it has
    /// dwell samples.
    pub max_groups: usize,
}

impl Default for AggLimits {
    fn default() -> AggLimits {
        AggLimits { max_groups: 4096 }
    }
}

/// How long the groups of a process that holds no socket wait before they are folded into its
/// command's ended-process group: longer than TIME_WAIT, whose expiry is the last thing many
/// short-lived clients are seen doing.
pub const IDLE_BEFORE_FOLD_NS: u64 = 60_000_000_000;

/// Everything accumulated from the change stream since `start_ns`.
pub struct Aggregates {
    pub(super) start_ns: u64,
    /// Completed dwell per state (index: `TcpState as usize`), allocated on first sample.
    pub(super) dwell: Vec<Option<Dwell>>,
    /// Connection lifetimes, SYN to CLOSE.
    pub(super) lifetime: Dwell,
    pub(super) by_pid: GroupTable<Owner>,
    /// Inbound connections by the local (service) port.
    pub(super) by_local_port: GroupTable<u16>,
    pub(super) by_peer_addr: GroupTable<IpAddr>,
    pub(super) by_peer: GroupTable<Peer>,
    pub(super) by_pid_peer: GroupTable<(Owner, IpAddr)>,
    /// Connects that failed, by process, destination and errno.
    pub connect_failures: ConnectFailures,
}

impl Aggregates {
    /// `start_ns`: CLOCK_MONOTONIC when observation began (rates are per second since then).
    pub fn new(start_ns: u64, limits: AggLimits) -> Aggregates {
        let m = limits.max_groups;
        Aggregates {
            start_ns,
            dwell: (0..13).map(|_| None).collect(),
            lifetime: Dwell::new(GLOBAL_SIGFIG),
            by_pid: GroupTable::new(m),
            by_local_port: GroupTable::new(m),
            by_peer_addr: GroupTable::new(m),
            by_peer: GroupTable::new(m),
            by_pid_peer: GroupTable::new(m),
            connect_failures: ConnectFailures::new(m),
        }
    }

    /// Takes in what one event did (`ts_ns`: the event's timestamp).
    pub fn observe_applied(&mut self, a: &Applied, ts_ns: u64) {
        for (sock, change) in a.socket_changes() {
            self.observe(sock, change, ts_ns);
        }
    }

    /// Takes in changes found by `SocketTable::expire(now_ns)`.
    pub fn observe_expired(&mut self, changes: &[SockChange], now_ns: u64) {
        for c in changes {
            self.observe(&c.sock, &c.change, now_ns);
        }
    }

    pub fn observe(&mut self, sock: &SockInfo, change: &Change, ts_ns: u64) {
        if sock.listener {
            if let Change::Left {
                state,
                dwell_ns: Some(d),
                ..
            } = change
            {
                self.global(*state).record(*d);
            }
            return;
        }
        match *change {
            Change::Entered {
                state: state @ (TcpState::TimeWait | TcpState::CloseWait),
                ..
            } => {
                self.each_group(sock, ts_ns, |g| g.entered(state));
            }
            Change::Left {
                state,
                dwell_ns: Some(d),
                ..
            } => {
                self.global(state).record(d);
                if matches!(state, TcpState::TimeWait | TcpState::CloseWait) {
                    self.each_group(sock, ts_ns, |g| g.left(state, d));
                }
            }
            Change::ConnectFailed { errno } => {
                self.connect_failures.record(sock.owner, sock.remote, errno);
            }
            Change::TimeWaitRefused => {
                self.each_group(sock, ts_ns, |g| g.time_wait_refused += 1);
            }
            Change::Closed {
                lifetime_ns: Some(l),
                ..
            } => {
                self.lifetime.record(l);
                if let Some(p) = Peer::of(sock.passive, &sock.remote) {
                    self.by_peer.get(&p, ts_ns).closed(l);
                }
            }
            _ => {}
        }
    }

    fn global(&mut self, s: TcpState) -> &mut Dwell {
        self.dwell[s as usize].get_or_insert_with(|| Dwell::new(GLOBAL_SIGFIG))
    }

    fn each_group(&mut self, sock: &SockInfo, ts: u64, f: impl Fn(&mut super::group::GroupStats)) {
        if let Some(o) = &sock.owner {
            f(self.by_pid.get(o, ts));
        }
        if sock.passive {
            f(self.by_local_port.get(&sock.local.port(), ts));
        }
        if let Some(p) = Peer::of(sock.passive, &sock.remote) {
            f(self.by_peer_addr.get(&p.addr, ts));
            f(self.by_peer.get(&p, ts));
            if let Some(o) = &sock.owner {
                f(self.by_pid_peer.get(&(*o, p.addr), ts));
            }
        }
    }

    /// Folds the history of processes that have ended into one group per command (and
    /// cgroup) with pid 0, so per-process memory lasts as long as the process does: a host
    /// that runs a new `curl` every second would otherwise gain a group per pid until the
    /// table is full, and its `curl` history is more useful summed anyway.
    ///
    /// `ended(owner)` says the process holds no socket now; its groups are folded once they
    /// have also been idle for `IDLE_BEFORE_FOLD_NS`, so a process between two connections
    /// keeps its row. Returns the groups folded.
    pub fn fold_ended(&mut self, ended: impl Fn(&Owner) -> bool, now_ns: u64) -> usize {
        let idle = |g: &GroupStats| g.last_ns().saturating_add(IDLE_BEFORE_FOLD_NS) <= now_ns;
        let by_pid = self
            .by_pid
            .fold(|o, g| (!o.is_ended() && idle(g) && ended(o)).then(|| o.ended()));
        let by_pid_peer = self.by_pid_peer.fold(|(o, addr), g| {
            (!o.is_ended() && idle(g) && ended(o)).then(|| (o.ended(), *addr))
        });
        by_pid + by_pid_peer
    }

    /// Global dwell distribution of a state, if it has samples.
    pub fn dwell(&self, s: TcpState) -> Option<&Dwell> {
        self.dwell[s as usize].as_ref()
    }

    pub fn lifetime(&self) -> &Dwell {
        &self.lifetime
    }

    /// Groups dropped to stay within `max_groups`, all tables together.
    pub fn group_evictions(&self) -> u64 {
        self.by_pid.evictions()
            + self.by_local_port.evictions()
            + self.by_peer_addr.evictions()
            + self.by_peer.evictions()
            + self.by_pid_peer.evictions()
            + self.connect_failures.dropped
    }

    pub fn heap_bytes(&self) -> usize {
        self.by_pid.heap_bytes()
            + self.by_local_port.heap_bytes()
            + self.by_peer_addr.heap_bytes()
            + self.by_peer.heap_bytes()
            + self.by_pid_peer.heap_bytes()
            + self
                .dwell
                .iter()
                .flatten()
                .map(Dwell::heap_bytes)
                .sum::<usize>()
            + self.lifetime.heap_bytes()
            + self.connect_failures.heap_bytes()
    }
}
