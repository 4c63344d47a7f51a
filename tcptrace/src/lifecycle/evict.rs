//! Staying within `Limits::max_sockets`.

use super::table::SocketTable;

impl SocketTable {
    /// Frees a batch of entries (1/256 of the bound, at least one) so the next one fits: the
    /// timewait sockets closest to expiry first, then the sockets with the oldest last event,
    /// listeners last (accepted sockets inherit their owner). Batching keeps the linear scan
    /// amortised to a few steps per insert.
    pub(super) fn evict_for_room(&mut self) {
        let want = (self.limits.max_sockets / 256).max(1);
        let mut minis: Vec<(u64, u32)> = Vec::new();
        for (i, e) in self.slab.iter().enumerate() {
            if !e.is_free() && e.is_mini() {
                minis.push((self.mini_deadline(i as u32), i as u32));
            }
        }
        let mut victims = take_oldest(minis, want);
        if victims.len() < want {
            let others: Vec<(u64, u32)> = self
                .slab
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.is_free() && !e.is_mini())
                .map(|(i, e)| (if e.is_listener() { u64::MAX } else { e.last_ns }, i as u32))
                .collect();
            victims.extend(take_oldest(others, want - victims.len()));
        }
        for s in victims {
            self.stats.evictions += 1;
            self.free(s);
        }
    }
}

/// The `n` smallest keys' slots.
fn take_oldest(mut v: Vec<(u64, u32)>, n: usize) -> Vec<u32> {
    if v.len() > n && n > 0 {
        v.select_nth_unstable(n - 1);
        v.truncate(n);
    }
    v.truncate(n);
    v.into_iter().map(|(_, s)| s).collect()
}
