//! The table as it is now, grouped: current TIME_WAIT / CLOSE_WAIT counts and CLOSE_WAIT ages.
//! Computed from the socket table at report time, so the counts equal the table exactly.

use std::hash::Hash;
use std::net::IpAddr;

use hashbrown::HashMap;
use tcptrace_common::TcpState;

use super::aggregates::Peer;
use crate::lifecycle::{Attribution, CauseCounts, Owner, SocketTable, SocketView};

fn is_tw_or_cw(s: TcpState) -> bool {
    matches!(s, TcpState::TimeWait | TcpState::CloseWait)
}

/// One group's sockets now.
#[derive(Clone, Debug, Default)]
pub struct Current {
    pub time_wait: u64,
    pub close_wait: u64,
    /// Earliest CLOSE_WAIT entry time among its sockets (seen or estimated).
    pub close_wait_oldest_since: Option<u64>,
    /// CLOSE_WAIT sockets older than tracing dated by the kernel's receive clocks.
    pub close_wait_age_estimated: u64,
    /// CLOSE_WAIT sockets with no entry time at all.
    pub close_wait_age_unknown: u64,
    /// CLOSE_WAIT sockets by why they are stuck.
    pub close_wait_causes: CauseCounts,
    /// Current TIME_WAIT + CLOSE_WAIT sockets by how their owner was learned.
    pub attribution: [u64; 4],
}

impl Current {
    fn add(&mut self, v: &SocketView) {
        match v.state {
            TcpState::TimeWait => self.time_wait += 1,
            TcpState::CloseWait => {
                self.close_wait += 1;
                self.close_wait_causes.add(v.leak_cause);
                if v.since_ns.is_none() && v.estimated_since_ns.is_some() {
                    self.close_wait_age_estimated += 1;
                }
                match v.since_ns.or(v.estimated_since_ns) {
                    Some(s) => {
                        let o = self.close_wait_oldest_since.get_or_insert(s);
                        *o = (*o).min(s);
                    }
                    None => self.close_wait_age_unknown += 1,
                }
            }
            _ => return,
        }
        if let Some(a) = v.attribution {
            self.attribution[attribution_index(a)] += 1;
        }
    }
}

fn attribution_index(a: Attribution) -> usize {
    match a {
        Attribution::KernelContext => 0,
        Attribution::FdScan => 1,
        Attribution::Snapshot => 2,
        Attribution::Listener => 3,
    }
}

/// The group keys of one socket, in each group-by dimension.
pub(super) struct Keys {
    pub pid: Option<Owner>,
    pub local_port: Option<u16>,
    pub peer: Option<Peer>,
}

impl Keys {
    pub fn of(v: &SocketView) -> Keys {
        Keys {
            pid: v.owner,
            local_port: v.passive.then(|| v.local.port()),
            peer: Peer::of(v.passive, &v.remote),
        }
    }

    pub fn pid_peer(&self) -> Option<(Owner, IpAddr)> {
        Some((self.pid?, self.peer?.addr))
    }
}

/// Current TIME_WAIT / CLOSE_WAIT sockets grouped every way the report and the metrics need:
/// the one place the present is grouped.
#[derive(Default)]
pub struct CurrentGroups {
    pub by_pid: HashMap<Owner, Current>,
    pub by_local_port: HashMap<u16, Current>,
    pub by_peer_addr: HashMap<IpAddr, Current>,
    pub by_peer: HashMap<Peer, Current>,
    pub by_pid_peer: HashMap<(Owner, IpAddr), Current>,
    /// TIME_WAIT / CLOSE_WAIT sockets with no known owner.
    pub unattributed: Current,
}

fn add<K: Hash + Eq>(m: &mut HashMap<K, Current>, k: Option<K>, v: &SocketView) {
    if let Some(k) = k {
        m.entry(k).or_default().add(v);
    }
}

impl CurrentGroups {
    /// Groups the table's TIME_WAIT and CLOSE_WAIT sockets now.
    pub fn scan(table: &SocketTable) -> CurrentGroups {
        let mut g = CurrentGroups::default();
        for v in table.iter_where(is_tw_or_cw) {
            let k = Keys::of(&v);
            if k.pid.is_none() {
                g.unattributed.add(&v);
            }
            add(&mut g.by_pid, k.pid, &v);
            add(&mut g.by_local_port, k.local_port, &v);
            add(&mut g.by_peer_addr, k.peer.map(|p| p.addr), &v);
            add(&mut g.by_peer, k.peer, &v);
            add(&mut g.by_pid_peer, k.pid_peer(), &v);
        }
        g
    }
}

/// Ages of current CLOSE_WAIT sockets, each with whether it is an estimate, gathered only for
/// the groups that made the report.
pub(super) struct Ages<K> {
    ages: HashMap<K, Vec<(u64, bool)>>,
}

impl<K: Hash + Eq + Clone> Ages<K> {
    pub fn for_keys<'a>(keys: impl Iterator<Item = &'a K>) -> Ages<K>
    where
        K: 'a,
    {
        Ages {
            ages: keys.map(|k| (k.clone(), Vec::new())).collect(),
        }
    }

    fn offer(&mut self, k: Option<K>, age: (u64, bool)) {
        if let Some(v) = k.and_then(|k| self.ages.get_mut(&k)) {
            v.push(age);
        }
    }

    /// Sorted ages of one group.
    pub fn take(&mut self, k: &K) -> Vec<(u64, bool)> {
        let mut v = self.ages.remove(k).unwrap_or_default();
        v.sort_unstable();
        v
    }
}

/// The selected groups of every dimension, filled in one pass over CLOSE_WAIT sockets.
pub(super) struct SelectedAges {
    pub by_pid: Ages<Owner>,
    pub by_local_port: Ages<u16>,
    pub by_peer_addr: Ages<IpAddr>,
    pub by_peer: Ages<Peer>,
    pub by_pid_peer: Ages<(Owner, IpAddr)>,
}

impl SelectedAges {
    pub fn collect(&mut self, table: &SocketTable, now_ns: u64) {
        for v in table.iter_where(|s| s == TcpState::CloseWait) {
            let (since, estimated) = match (v.since_ns, v.estimated_since_ns) {
                (Some(s), _) => (s, false),
                (None, Some(s)) => (s, true),
                (None, None) => continue,
            };
            let age = (now_ns.saturating_sub(since), estimated);
            let k = Keys::of(&v);
            self.by_pid.offer(k.pid, age);
            self.by_local_port.offer(k.local_port, age);
            self.by_peer_addr.offer(k.peer.map(|p| p.addr), age);
            self.by_peer.offer(k.peer, age);
            self.by_pid_peer.offer(k.pid_peer(), age);
        }
    }
}
