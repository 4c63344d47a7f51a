//! One bounded group-by table: history (entries, dwell) per key.

use std::hash::Hash;

use hashbrown::HashMap;
use tcptrace_common::TcpState;

use super::dwell::{Dwell, GROUP_SIGFIG};

/// What happened to one group's sockets since tracing began.
#[derive(Clone, Debug, Default)]
pub struct GroupStats {
    /// Sockets that entered TIME_WAIT.
    pub time_wait_entries: u64,
    /// Closes that asked for TIME_WAIT and got none: the kernel's TIME_WAIT table was full.
    pub time_wait_refused: u64,
    /// Sockets that entered CLOSE_WAIT.
    pub close_wait_entries: u64,
    /// Completed TIME_WAIT stays (allocated on first use).
    pub time_wait_dwell: Option<Box<Dwell>>,
    /// Completed CLOSE_WAIT stays: how long the application took to close after the peer did.
    pub close_wait_dwell: Option<Box<Dwell>>,
    /// Connection lifetimes, SYN to CLOSE (peer tables only).
    pub lifetime: Option<Box<Dwell>>,
    /// Last update, CLOCK_MONOTONIC ns: older groups are evicted first among equals.
    last_ns: u64,
    /// Groups folded into this one (ended processes summed by command), 0 for a group of its own.
    pub folded: u32,
}

impl GroupStats {
    /// Activity used to pick eviction victims: the least eventful go first.
    fn weight(&self) -> u64 {
        self.time_wait_entries
            + self.time_wait_refused
            + self.close_wait_entries
            + self.lifetime.as_ref().map_or(0, |d| d.count())
    }

    pub fn entered(&mut self, state: TcpState) {
        match state {
            TcpState::TimeWait => self.time_wait_entries += 1,
            TcpState::CloseWait => self.close_wait_entries += 1,
            _ => {}
        }
    }

    pub fn left(&mut self, state: TcpState, dwell_ns: u64) {
        let slot = match state {
            TcpState::TimeWait => &mut self.time_wait_dwell,
            TcpState::CloseWait => &mut self.close_wait_dwell,
            _ => return,
        };
        slot.get_or_insert_with(|| Box::new(Dwell::new(GROUP_SIGFIG)))
            .record(dwell_ns);
    }

    pub fn closed(&mut self, lifetime_ns: u64) {
        self.lifetime
            .get_or_insert_with(|| Box::new(Dwell::new(GROUP_SIGFIG)))
            .record(lifetime_ns);
    }

    /// Adds another group's history to this one.
    fn merge(&mut self, o: GroupStats) {
        self.time_wait_entries += o.time_wait_entries;
        self.time_wait_refused += o.time_wait_refused;
        self.close_wait_entries += o.close_wait_entries;
        for (mine, theirs) in [
            (&mut self.time_wait_dwell, o.time_wait_dwell),
            (&mut self.close_wait_dwell, o.close_wait_dwell),
            (&mut self.lifetime, o.lifetime),
        ] {
            match (mine.as_mut(), theirs) {
                (Some(m), Some(t)) => m.merge(&t),
                (None, t) => *mine = t,
                (Some(_), None) => {}
            }
        }
        self.last_ns = self.last_ns.max(o.last_ns);
        self.folded += o.folded.max(1);
    }

    /// Last update, CLOCK_MONOTONIC ns.
    pub fn last_ns(&self) -> u64 {
        self.last_ns
    }

    pub fn dwell(&self, state: TcpState) -> Option<&Dwell> {
        match state {
            TcpState::TimeWait => self.time_wait_dwell.as_deref(),
            TcpState::CloseWait => self.close_wait_dwell.as_deref(),
            _ => None,
        }
    }

    fn heap_bytes(&self) -> usize {
        [
            &self.time_wait_dwell,
            &self.close_wait_dwell,
            &self.lifetime,
        ]
        .iter()
        .filter_map(|d| d.as_deref())
        .map(|d| d.heap_bytes() + std::mem::size_of::<Dwell>())
        .sum()
    }
}

/// Group-by table with at most `max` keys.
#[derive(Clone, Debug)]
pub struct GroupTable<K> {
    map: HashMap<K, GroupStats>,
    max: usize,
    evictions: u64,
}

impl<K: Hash + Eq + Clone> GroupTable<K> {
    pub fn new(max: usize) -> GroupTable<K> {
        GroupTable {
            map: HashMap::new(),
            max: max.max(1),
            evictions: 0,
        }
    }

    /// The group for `key`, created if needed. When the table is full, the least eventful
    /// eighth of it (oldest first among equals) is evicted in one pass, so a stream of new keys
    /// costs O(1) amortised.
    ///
    /// Inlined: up to five lookups per lifecycle change, and the call itself was a fair part
    /// of each.
    #[inline]
    pub fn get(&mut self, key: &K, now_ns: u64) -> &mut GroupStats {
        // The length test first: a table below its bound (the usual case) hashes the key once.
        if self.map.len() >= self.max && !self.map.contains_key(key) {
            self.evict((self.max / 8).max(1));
        }
        let g = self.map.entry(key.clone()).or_default();
        g.last_ns = g.last_ns.max(now_ns);
        g
    }

    fn evict(&mut self, n: usize) {
        let mut v: Vec<(u64, u64, K)> = self
            .map
            .iter()
            .map(|(k, g)| (g.weight(), g.last_ns, k.clone()))
            .collect();
        if v.len() > n {
            v.select_nth_unstable_by(n - 1, |a, b| (a.0, a.1).cmp(&(b.0, b.1)));
            v.truncate(n);
        }
        for (_, _, k) in v {
            self.map.remove(&k);
            self.evictions += 1;
        }
    }

    /// Moves every group for which `into` names another key into that key's group, summing
    /// their history. Returns how many groups were folded.
    pub fn fold(&mut self, mut into: impl FnMut(&K, &GroupStats) -> Option<K>) -> usize {
        let moves: Vec<(K, K)> = self
            .map
            .iter()
            .filter_map(|(k, g)| into(k, g).filter(|t| t != k).map(|t| (k.clone(), t)))
            .collect();
        for (from, to) in &moves {
            let Some(g) = self.map.remove(from) else {
                continue;
            };
            // Each move removes one key and adds at most one: the table never grows.
            self.map.entry(to.clone()).or_default().merge(g);
        }
        moves.len()
    }

    pub fn lookup(&self, key: &K) -> Option<&GroupStats> {
        self.map.get(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.map.keys()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn heap_bytes(&self) -> usize {
        self.map.capacity() * (std::mem::size_of::<(K, GroupStats)>() + 1)
            + self.map.values().map(GroupStats::heap_bytes).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_table_evicts_the_least_eventful_groups() {
        let mut t: GroupTable<u32> = GroupTable::new(8);
        for k in 0..8u32 {
            let g = t.get(&k, k as u64);
            for _ in 0..k {
                g.entered(TcpState::TimeWait);
            }
        }
        assert_eq!(t.len(), 8);
        t.get(&100, 100).entered(TcpState::CloseWait);
        assert_eq!(t.len(), 8, "one evicted (8 / 8), one added");
        assert_eq!(t.evictions(), 1);
        assert!(t.lookup(&0).is_none(), "key 0 had no entries");
        assert_eq!(t.lookup(&7).unwrap().time_wait_entries, 7);
        assert_eq!(t.lookup(&100).unwrap().close_wait_entries, 1);
    }
}
