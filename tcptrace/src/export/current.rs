//! Current TIME_WAIT / CLOSE_WAIT sockets grouped by process, local port and peer, cut to the
//! top N groups with the rest folded into one `other` group, so that label cardinality stays
//! bounded however many processes and peers the host has.

use std::hash::Hash;

use hashbrown::HashMap;
use tcptrace_common::TcpState;

use crate::aggregate::{Current, CurrentGroups, Peer};
use crate::lifecycle::{Comm, SocketTable};

/// How many groups of each kind get their own series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cardinality {
    pub top_pids: usize,
    pub top_peers: usize,
    pub top_ports: usize,
}

impl Default for Cardinality {
    fn default() -> Cardinality {
        Cardinality {
            top_pids: 20,
            top_peers: 20,
            top_ports: 20,
        }
    }
}

/// Sockets of one group now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub time_wait: u64,
    pub close_wait: u64,
}

impl Counts {
    fn of(c: &Current) -> Counts {
        Counts {
            time_wait: c.time_wait,
            close_wait: c.close_wait,
        }
    }

    fn plus(&mut self, o: &Counts) {
        self.time_wait += o.time_wait;
        self.close_wait += o.close_wait;
    }

    pub fn get(&self, s: TcpState) -> u64 {
        match s {
            TcpState::TimeWait => self.time_wait,
            TcpState::CloseWait => self.close_wait,
            _ => 0,
        }
    }
}

/// A process as the metrics label it. The cgroup id is not part of the key: the socket table
/// learns it later for some sockets (the fd scan does not read it), and one process must stay one
/// series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Process {
    pub pid: u32,
    pub comm: Comm,
}

/// The top groups and what was folded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Folded<K> {
    /// Most TIME_WAIT + CLOSE_WAIT first (ties by key), at most the limit.
    pub top: Vec<(K, Counts)>,
    /// Everything else, summed.
    pub other: Counts,
    /// How many groups were folded into `other`.
    pub other_groups: usize,
}

/// What `/metrics` shows of the present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentSockets {
    /// With the cgroup id the table knows for each process (0 when none does).
    pub by_process: Folded<(Process, u64)>,
    /// Sockets whose owner is not known.
    pub unattributed: Counts,
    /// Inbound (accepted) connections only, by the service's port.
    pub by_local_port: Folded<u16>,
    /// By remote address and, for outbound connections, remote port.
    pub by_peer: Folded<Peer>,
}

impl CurrentSockets {
    /// The table's grouping ([`CurrentGroups`]), with each process one series whatever cgroup
    /// id its sockets carry, cut to the top groups.
    pub fn scan(table: &SocketTable, limits: &Cardinality) -> CurrentSockets {
        let g = CurrentGroups::scan(table);
        let mut procs: HashMap<Process, (Counts, u64)> = HashMap::new();
        for (o, c) in &g.by_pid {
            let e = procs
                .entry(Process {
                    pid: o.pid,
                    comm: o.comm,
                })
                .or_default();
            e.0.plus(&Counts::of(c));
            e.1 = e.1.max(o.cgroup_id);
        }
        let procs: HashMap<(Process, u64), Counts> =
            procs.into_iter().map(|(p, (c, cg))| ((p, cg), c)).collect();
        CurrentSockets {
            by_process: fold(procs, limits.top_pids),
            unattributed: Counts::of(&g.unattributed),
            by_local_port: fold(counts(&g.by_local_port), limits.top_ports),
            by_peer: fold(counts(&g.by_peer), limits.top_peers),
        }
    }
}

fn counts<K: Copy + Hash + Eq>(m: &HashMap<K, Current>) -> HashMap<K, Counts> {
    m.iter().map(|(k, c)| (*k, Counts::of(c))).collect()
}

fn fold<K: Hash + Eq + Ord>(groups: HashMap<K, Counts>, top: usize) -> Folded<K> {
    let mut rows: Vec<(K, Counts)> = groups.into_iter().collect();
    rows.sort_by(|a, b| {
        let n = |c: &Counts| c.time_wait + c.close_wait;
        n(&b.1).cmp(&n(&a.1)).then_with(|| a.0.cmp(&b.0))
    });
    let mut other = Counts::default();
    let mut other_groups = 0;
    for (_, c) in rows.iter().skip(top) {
        other.plus(c);
        other_groups += 1;
    }
    rows.truncate(top);
    Folded {
        top: rows,
        other,
        other_groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(tw: u64, cw: u64) -> Counts {
        Counts {
            time_wait: tw,
            close_wait: cw,
        }
    }

    #[test]
    fn folding_keeps_the_busiest_and_sums_the_rest() {
        let groups: HashMap<u16, Counts> = [
            (80, c(1, 0)),
            (443, c(5, 5)),
            (8080, c(0, 3)),
            (22, c(0, 1)),
            (25, c(1, 0)),
        ]
        .into_iter()
        .collect();
        let f = fold(groups, 2);
        assert_eq!(f.top, vec![(443, c(5, 5)), (8080, c(0, 3))]);
        assert_eq!(f.other, c(2, 1));
        assert_eq!(f.other_groups, 3);
    }

    #[test]
    fn folding_nothing_or_everything() {
        let groups: HashMap<u16, Counts> = [(1, c(1, 0)), (2, c(0, 1))].into_iter().collect();
        let all = fold(groups.clone(), 10);
        assert_eq!(all.top.len(), 2);
        assert_eq!((all.other, all.other_groups), (Counts::default(), 0));
        let none = fold(groups, 0);
        assert!(none.top.is_empty());
        assert_eq!((none.other, none.other_groups), (c(1, 1), 2));
    }
}
