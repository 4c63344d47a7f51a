//! The records read from the per-CPU rings and not handed out yet, released in time order once
//! the watermark has passed them (see `reader.rs` for why that order is exact).
//!
//! Raw records (104-232 bytes) are kept and sorted by reference, then decoded once, in order:
//! sorting decoded events (288 bytes each) moved several times as many bytes.

/// Pending records: their bytes back to back, and per record its time and where its bytes are,
/// sorted before release; `next` is the first not released yet.
#[derive(Default)]
pub struct Pending {
    bytes: Vec<u8>,
    /// Where [`Pending::compact`] copies to.
    spare: Vec<u8>,
    keys: Vec<(u64, u32, u32)>,
    next: usize,
    sorted: bool,
}

impl Pending {
    /// Keeps one record; its first 8 bytes are its time (every record kind starts with it).
    pub fn push(&mut self, record: &[u8]) {
        // Only once the released records are at least as many as those waiting, so that a
        // record is moved about once however long it waits: compacting at every read of the
        // rings moved the whole backlog each time, which a batch limit keeps large (13% of
        // `report`'s CPU at 40k conn/s, all of it in this copy, with `perf --call-graph dwarf`).
        if self.next > 0 && self.next >= self.keys.len() - self.next {
            self.compact();
        }
        let ts = record
            .get(..8)
            .map_or(0, |b| u64::from_ne_bytes(b.try_into().expect("8 bytes")));
        self.keys
            .push((ts, self.bytes.len() as u32, record.len() as u32));
        self.bytes.extend_from_slice(record);
        self.sorted = false;
    }

    /// Records not released yet.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.len() - self.next
    }

    /// Whether a record stamped before `before` waits.
    pub fn has_ready(&mut self, before: u64) -> bool {
        self.sort();
        self.keys.get(self.next).is_some_and(|k| k.0 < before)
    }

    /// The time of the oldest record not released yet, as of the last sort (a release sorts:
    /// records pushed since are not looked at).
    pub fn next_ts(&self) -> Option<u64> {
        self.keys.get(self.next).map(|k| k.0)
    }

    /// Hands at most `max` of the records stamped before `before` to `each`, oldest first (in
    /// the order they were pushed among equal times), and keeps the rest. Returns how many it
    /// handed over.
    pub fn release(&mut self, before: u64, max: usize, mut each: impl FnMut(&[u8])) -> usize {
        self.sort();
        let mut n = 0;
        while n < max
            && let Some(&(ts, at, len)) = self.keys.get(self.next)
            && ts < before
        {
            each(&self.bytes[at as usize..(at + len) as usize]);
            self.next += 1;
            n += 1;
        }
        if self.next == self.keys.len() {
            self.keys.clear();
            self.bytes.clear();
            self.next = 0;
        }
        n
    }

    fn sort(&mut self) {
        if !self.sorted {
            // Stable, and each ring's records are nearly sorted already: a few runs to merge.
            self.keys[self.next..].sort_by_key(|k| k.0);
            self.sorted = true;
        }
    }

    /// Moves the records not released yet to the front (called when they are no more than
    /// those released: see [`Pending::push`]).
    ///
    /// Into the spare buffer, then swapped: both keep their capacity, so a read of the rings
    /// allocates nothing once they have grown (a fresh buffer per read was a fresh mapping of
    /// a few hundred KB, and its page faults, every 5 ms).
    fn compact(&mut self) {
        self.spare.clear();
        for k in &mut self.keys[self.next..] {
            let (at, len) = (k.1 as usize, k.2 as usize);
            k.1 = self.spare.len() as u32;
            self.spare.extend_from_slice(&self.bytes[at..at + len]);
        }
        self.keys.drain(..self.next);
        std::mem::swap(&mut self.bytes, &mut self.spare);
        self.next = 0;
    }
}

/// The watermark: every record stamped before it has been read, given when the latest drain of
/// each ring that read it to its end began (`slack` for the two clocks, see `reader.rs`).
pub fn watermark(read_to_end_at: impl Iterator<Item = u64>, slack: u64) -> u64 {
    read_to_end_at.min().unwrap_or(0).saturating_sub(slack)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ts: u64, tag: u8) -> Vec<u8> {
        let mut r = ts.to_ne_bytes().to_vec();
        r.extend_from_slice(&[tag; 8]);
        r
    }

    fn released(p: &mut Pending, before: u64) -> Vec<(u64, u8)> {
        released_at_most(p, before, usize::MAX)
    }

    fn released_at_most(p: &mut Pending, before: u64, max: usize) -> Vec<(u64, u8)> {
        let mut got = Vec::new();
        p.release(before, max, |b| {
            got.push((u64::from_ne_bytes(b[..8].try_into().unwrap()), b[8]));
        });
        got
    }

    #[test]
    fn two_rings_come_out_in_time_order_and_younger_records_wait() {
        let mut p = Pending::default();
        // Ring 0, then ring 1, as a drain reads them; ring 0 holds a record nested in another
        // (stamped earlier, reserved later).
        for (ts, tag) in [(10, 1), (30, 2), (25, 3), (50, 4)] {
            p.push(&rec(ts, tag));
        }
        for (ts, tag) in [(20, 5), (40, 6), (60, 7)] {
            p.push(&rec(ts, tag));
        }
        assert_eq!(
            released(&mut p, 45),
            vec![(10, 1), (20, 5), (25, 3), (30, 2), (40, 6)]
        );
        assert_eq!(p.len(), 2);
        // The next drain brings an older record than the ones waiting, younger than the mark.
        p.push(&rec(48, 8));
        assert_eq!(released(&mut p, 55), vec![(48, 8), (50, 4)]);
        assert_eq!(released(&mut p, u64::MAX), vec![(60, 7)]);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn a_batch_limit_releases_in_order_across_calls_and_new_records_join_the_rest() {
        let mut p = Pending::default();
        for (ts, tag) in [(30, 1), (10, 2), (20, 3), (40, 4), (90, 5)] {
            p.push(&rec(ts, tag));
        }
        assert!(p.has_ready(50));
        assert_eq!(released_at_most(&mut p, 50, 2), vec![(10, 2), (20, 3)]);
        assert_eq!(released_at_most(&mut p, 50, 2), vec![(30, 1), (40, 4)]);
        assert!(!p.has_ready(50), "only the one past the mark waits");
        assert_eq!(p.len(), 1);
        // The next read of the rings: older than the one waiting.
        p.push(&rec(70, 6));
        p.push(&rec(60, 7));
        assert_eq!(released(&mut p, 100), vec![(60, 7), (70, 6), (90, 5)]);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn the_next_time_is_the_oldest_record_a_batch_limit_left_behind() {
        let mut p = Pending::default();
        assert_eq!(p.next_ts(), None);
        for (ts, tag) in [(30, 1), (10, 2), (20, 3)] {
            p.push(&rec(ts, tag));
        }
        assert_eq!(released_at_most(&mut p, 100, 1), vec![(10, 2)]);
        // Ready records wait: whatever the watermark says, nothing from 20 on was handed out.
        assert_eq!(p.next_ts(), Some(20));
        released(&mut p, 100);
        assert_eq!(p.next_ts(), None);
    }

    #[test]
    fn a_backlog_released_a_batch_at_a_time_is_moved_rarely_and_kept_in_order() {
        let mut p = Pending::default();
        let mut ts = 0;
        let mut got = Vec::new();
        for _ in 0..50 {
            // A read of the rings brings 10 records; a batch limit releases 8.
            for _ in 0..10 {
                ts += 1;
                p.push(&rec(ts, 0));
            }
            got.extend(released_at_most(&mut p, u64::MAX, 8));
            // Dead bytes (released, not compacted yet) never outgrow the live ones by more
            // than one read's worth.
            let live = p.len() * 16;
            assert!(
                p.bytes.len() <= 2 * live + 10 * 16,
                "{} {live}",
                p.bytes.len()
            );
        }
        got.extend(released(&mut p, u64::MAX));
        assert_eq!(got.len(), 500);
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "in order");
    }

    #[test]
    fn equal_times_keep_the_order_they_were_read_in() {
        let mut p = Pending::default();
        for tag in 1..=4 {
            p.push(&rec(7, tag));
        }
        assert_eq!(released(&mut p, 8), vec![(7, 1), (7, 2), (7, 3), (7, 4)]);
    }

    #[test]
    fn nothing_is_released_before_the_watermark_reaches_it() {
        let mut p = Pending::default();
        p.push(&rec(100, 1));
        assert!(!p.has_ready(100));
        assert_eq!(released(&mut p, 100), vec![]);
        assert_eq!(released(&mut p, 101), vec![(100, 1)]);
    }

    #[test]
    fn the_watermark_is_the_ring_read_longest_ago_less_the_slack() {
        assert_eq!(watermark([5_000, 3_000, 9_000].into_iter(), 1_000), 2_000);
        assert_eq!(watermark([500].into_iter(), 1_000), 0);
        assert_eq!(watermark(std::iter::empty(), 1_000), 0);
    }
}
