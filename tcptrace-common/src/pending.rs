//! How the backup program knows whether the primary handled a transition: a per-CPU stack of
//! the transitions the primary started on and whose backup run has not found them yet.
//!
//! Both programs are attached to `sock:inet_sock_set_state`; the kernel runs them one after the
//! other for every transition and skips a nested run of a program that is already running on
//! the CPU (a softirq that interrupts it), counting a recursion miss. The backup's job is to send
//! exactly the transitions whose primary run was skipped.
//!
//! The primary pushes its transition first thing, the socket named by its address (both runs of
//! one transition see the same one); the backup notes the top before anything else, looks for its
//! transition a few entries down from there and pops it with whatever lies above it. Found: the
//! primary ran, nothing to send. Not found: the kernel skipped the primary (it was running, an
//! outer transition's, when this one nested), so the backup sends it.
//!
//! Why a stack and not the last transition alone: a softirq also runs *between* an outer
//! transition's primary and backup runs, or inside the backup's run, and its transitions' primary
//! runs are not skipped (ours is done). With one slot they overwrote the outer key, and the
//! outer backup sent a second copy: 0-3 duplicates per storm of 200,000 connections, dropped
//! in event mode but counted twice by counting mode. Here each nested backup pops its own entry,
//! so the outer entry is on top again; primaries nested inside a backup's run, whose own backups
//! the kernel skips, push above the top that backup noted, and it pops them with its own.
//!
//! Kept in a ring, so that entries whose backup never pops them (a primary nested inside a backup
//! that had already popped) are overwritten in time. The opposite error to a duplicate, a stale
//! entry equal to a later skipped transition (an address-keyed socket at a reused address making
//! the same transition as an entry left there), makes a skipped run look handled: the kernel
//! counted the skip and nothing recovered it, so the books report it lost rather than hiding it.
//!
//! Why the backup looks all the way down: a softirq that lands in the backup's dispatch, after
//! the kernel marked it running and before its first instruction, pushes its transitions above
//! the entry (their primaries run; their backups are skipped, ours being active), and a softirq
//! carries as many transitions as the packets it processes. A look 8 entries down sent a second
//! copy whenever more landed there: 0-6 per 8 s saturating storm on the host (2026-12-07), the
//! entry then found 9 to 129 deep (a debug build that searched 200 deep for every backup run).
//! The look is one comparison when the entry is on top, which it almost always is; only a
//! transition whose primary was skipped, or a buried one, pays for the loop.
//!
//! Each entry is tagged with the position it was pushed at, and the backup accepts an entry only
//! at the position it reads it from: popped entries stay in their slots, and in a ring the look
//! down eventually reads slots written on a later lap, so without the tag the deep look would
//! match transitions long gone (the same socket address, reused by the allocator, making the
//! same transition again).

/// Deeper than the transitions one softirq can push above an entry (the network softirq handles
/// at most `netdev_budget`, 300 packets by default, per run), and a power of two. 8 KiB per CPU.
pub const PENDING: usize = 512;

const _: () = assert!(PENDING.is_power_of_two());

/// One CPU's stack: the socket's address, and `position << 16 | old << 8 | new` beside it.
/// (Not folded into one word: the verifier refuses arithmetic on the socket pointer.)
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    ids: [u64; PENDING],
    tags: [u64; PENDING],
    /// Entries pushed and not popped: the next entry's position. Slot `position % PENDING`.
    top: u64,
}

/// An entry's tag: where it was pushed, and its transition.
#[inline(always)]
const fn tag(position: u64, states: u64) -> u64 {
    (position << 16) | states
}

impl Pending {
    /// The primary's first action: this CPU is handling transition `states` of socket `id`.
    ///
    /// The slot is taken before it is filled: before 6.1 the kernel runs a nested tp_btf program
    /// instead of skipping it (16 of 76,912 transitions in a 5.10 storm), and a nested primary
    /// then pushes above ours instead of over it.
    #[inline(always)]
    pub fn push(&mut self, id: u64, states: u64) {
        let top = self.top;
        self.top = top.wrapping_add(1);
        let i = top as usize % PENDING;
        self.ids[i] = id;
        self.tags[i] = tag(top, states);
    }

    /// The backup's first action: the top as its run found it.
    #[inline(always)]
    pub fn top(&self) -> u64 {
        self.top
    }

    /// Whether the entry at `position` is transition `states` of socket `id`, pushed there.
    #[inline(always)]
    fn holds(&self, position: u64, id: u64, states: u64) -> bool {
        let i = position as usize % PENDING;
        self.ids[i] == id && self.tags[i] == tag(position, states)
    }

    /// The backup's test: whether the primary started on transition `states` of socket `id`,
    /// looking down from `top` (noted by [`Self::top`] when the backup started). If so, the entry
    /// and what was pushed above it are popped.
    #[inline(always)]
    pub fn handled(&mut self, top: u64, id: u64, states: u64) -> bool {
        let mut position = top.wrapping_sub(1);
        // On top: every transition whose backup run found the stack as its primary left it.
        if self.holds(position, id, states) {
            self.top = position;
            return true;
        }
        // A loop, not unrolled: reached only by a skipped primary's transition (sent) or a
        // buried entry, a few per thousand transitions.
        let mut depth = 1;
        while depth < PENDING {
            position = position.wrapping_sub(1);
            if self.holds(position, id, states) {
                self.top = position;
                return true;
            }
            depth += 1;
        }
        false
    }
}

/// The key's second half: `old << 8 | new`.
#[inline(always)]
pub const fn states_of(old: u8, new: u8) -> u64 {
    ((old as u64) << 8) | new as u64
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::boxed::Box;

    use super::*;

    /// One CPU: the primary and backup runs of transitions, in the order the kernel runs them.
    struct Cpu {
        p: Box<Pending>,
        sent_by_backup: std::vec::Vec<u64>,
    }

    impl Cpu {
        fn new() -> Cpu {
            Cpu {
                // As the kernel creates a per-CPU array's values: zeroed.
                p: Box::new(Pending {
                    ids: [0; PENDING],
                    tags: [0; PENDING],
                    top: 0,
                }),
                sent_by_backup: std::vec::Vec::new(),
            }
        }
        fn primary(&mut self, t: u64) {
            self.p.push(t, 1);
        }
        fn backup_starts(&self) -> u64 {
            self.p.top()
        }
        fn backup_decides(&mut self, top: u64, t: u64) {
            if !self.p.handled(top, t, 1) {
                self.sent_by_backup.push(t);
            }
        }
        /// Both runs, nothing nested.
        fn transition(&mut self, t: u64) {
            self.primary(t);
            let top = self.backup_starts();
            self.backup_decides(top, t);
        }
    }

    #[test]
    fn a_transition_nested_in_the_primary_is_sent_by_the_backup_only() {
        let mut c = Cpu::new();
        c.primary(1);
        // Softirq: the kernel skips the nested primary of 2; its backup runs.
        let top = c.backup_starts();
        c.backup_decides(top, 2);
        let top = c.backup_starts();
        c.backup_decides(top, 1);
        assert_eq!(c.sent_by_backup, [2]);
        assert_eq!(c.p.top(), 0, "popped");
    }

    #[test]
    fn a_softirq_between_primary_and_backup_makes_no_duplicate() {
        let mut c = Cpu::new();
        c.primary(1);
        // A long softirq between the two runs: every nested transition runs both programs.
        for t in 2..400 {
            c.transition(t);
        }
        let top = c.backup_starts();
        c.backup_decides(top, 1);
        assert!(c.sent_by_backup.is_empty(), "{:?}", c.sent_by_backup);
    }

    #[test]
    fn a_softirq_inside_the_backup_makes_no_duplicate() {
        let mut c = Cpu::new();
        c.primary(1);
        let top = c.backup_starts();
        // Nested in the backup: primaries run, their backups are skipped.
        for t in 2..200 {
            c.primary(t);
        }
        c.backup_decides(top, 1);
        assert!(c.sent_by_backup.is_empty());
        assert_eq!(c.p.top(), 0, "the nested entries went with ours");
    }

    #[test]
    fn a_softirq_in_the_backups_dispatch_makes_no_duplicate() {
        // As the host showed: a softirq between the kernel's marking the backup active and the
        // backup's first instruction pushes up to 129 entries whose backups are skipped.
        for nested in [1, 8, 9, 129, 300, PENDING as u64 - 1] {
            let mut c = Cpu::new();
            // An orphan below (a primary nested in an earlier backup after its look): kept.
            c.primary(7);
            c.primary(1);
            for t in 2..2 + nested {
                c.primary(t);
            }
            let top = c.backup_starts();
            c.backup_decides(top, 1);
            assert!(
                c.sent_by_backup.is_empty(),
                "{nested} nested: {:?}",
                c.sent_by_backup
            );
            assert_eq!(c.p.top(), 1, "{nested} nested: popped with ours");
        }
    }

    #[test]
    fn a_popped_entry_never_matches_again() {
        // A deep pop leaves socket 5's transition in the slots above the top.
        let mut c = Cpu::new();
        c.primary(1);
        for _ in 0..4 {
            c.primary(5);
        }
        let top = c.backup_starts();
        c.backup_decides(top, 1);
        assert_eq!(c.p.top(), 0);
        // Later, a socket at the same address makes the same transition nested in another's
        // primary, which the kernel skips: the look down wraps to those slots, finds them
        // written at other positions, and the backup sends it.
        c.primary(6);
        let top = c.backup_starts();
        c.backup_decides(top, 5);
        assert_eq!(c.sent_by_backup, [5]);
    }

    #[test]
    fn a_nested_primary_that_is_not_skipped_pushes_above_ours() {
        // A kernel that runs the nested primary: it lands between our taking the slot and
        // filling it, and its backup runs too.
        let mut c = Cpu::new();
        let top = c.p.top;
        c.p.top = top + 1;
        c.transition(2);
        let i = top as usize % PENDING;
        c.p.ids[i] = 1;
        c.p.tags[i] = tag(top, 1);
        let top = c.backup_starts();
        c.backup_decides(top, 1);
        assert!(c.sent_by_backup.is_empty());
    }

    #[test]
    fn the_ring_wraps_and_an_orphan_is_overwritten() {
        let mut c = Cpu::new();
        for t in 1..10_000 {
            c.transition(t);
            if t % 7 == 0 {
                // An orphan: a primary nested in a backup that had already popped.
                c.primary(1_000_000 + t);
            }
        }
        assert!(c.sent_by_backup.is_empty());
        c.primary(5);
        // A skipped transition: not found, even though the stack wrapped many times.
        let top = c.backup_starts();
        c.backup_decides(top, 424_242);
        assert_eq!(c.sent_by_backup, [424_242]);
    }
}
