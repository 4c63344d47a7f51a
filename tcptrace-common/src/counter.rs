//! The kernel programs' counters, as userspace reads them: slots of the per-CPU `COUNTERS`
//! array, and the slot encoding of the `TRANSITIONS` array (counting mode).

/// One slot of the `COUNTERS` per-CPU array. Every way an event can fail to reach userspace has
/// one, so that losses are counted where they happen.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `bpf_ringbuf_reserve` failed: the ring was full. Each one is a lost event.
    ReserveFailed = 0,
    /// Events the backup program emitted (recoveries plus the rare duplicate).
    BackupEmitted = 1,
    /// Events dropped by the in-kernel filters (not lost: unwanted).
    Filtered = 2,
    /// The part of `ReserveFailed` that the backup program failed to deliver. Those events are
    /// also among the primary's recursion misses; userspace must not count them twice.
    BackupReserveFailed = 3,
    /// Runs the primary missed whose event the backup then dropped as unwanted (not TCP, or
    /// outside the filters) or counted (counting mode): skipped, but not lost.
    BackupDiscarded = 4,
    /// The part of `ReserveFailed` that were reset events, not transitions.
    ResetReserveFailed = 5,
    /// Wanted events counted in the kernel instead of sent, while in counting mode (`MODE`).
    Counted = 6,
    /// A timewait hook's record (fentry, or the `timer_expire_entry` end) did not fit: not a
    /// lost transition (that socket's TIME_WAIT is inferred instead), so kept apart from
    /// `ReserveFailed`.
    TimewaitReserveFailed = 7,
    /// A socket that passed the port filter could not be entered in `ADMITTED` (the map update
    /// failed, e.g. `-EBUSY` when a nested program finds the bucket locked on this CPU), so its
    /// close, which no longer carries the local port, will be filtered out: a possible lost
    /// event.
    AdmitFailed = 8,
    /// Summary mode: transitions the programs followed (primary or backup). With the primary's
    /// skipped runs not recovered, they add up to every transition the kernel made.
    Handled = 9,
    /// Summary mode: the backup program handled a transition whose primary run was skipped.
    BackupHandled = 10,
    /// Summary mode: a socket's next transition found a skipped one (its stored state was not
    /// the transition's old state) and carried on from the kernel's: the state is right again,
    /// the stays around the gap have no exact time. One per gap, however many transitions it
    /// spanned.
    Repaired = 11,
    /// Summary mode: socket-local storage could not be created (memory): that transition was
    /// sent as an event instead.
    StorageFailed = 12,
    /// Summary mode: the part of `ReserveFailed` that were summaries (each one a CLOSE_WAIT
    /// entry or a close that did not reach userspace).
    SummaryReserveFailed = 13,
}

/// Slots in `COUNTERS`.
pub const COUNTER_SLOTS: u32 = 14;

impl Counter {
    pub const fn slot(self) -> u32 {
        self as u32
    }
}

/// Slots in `TRANSITIONS`: one per (old, new) pair of 4-bit state numbers.
pub const TRANSITION_SLOTS: u32 = 256;

/// The (old, new) pair under which counting mode counts resets: reset events carry no states.
pub const RESET_TRANSITION: (u8, u8) = (0, 0);

/// The `TRANSITIONS` slot of a transition; [`RESET_TRANSITION`] is a reset.
pub const fn transition_slot(old: u8, new: u8) -> u32 {
    ((old as u32 & 0xf) << 4) | (new as u32 & 0xf)
}

/// The (old, new) states of a `TRANSITIONS` slot.
pub const fn slot_transition(slot: u32) -> (u8, u8) {
    (((slot >> 4) & 0xf) as u8, (slot & 0xf) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_slots_round_trip() {
        for old in 0..13u8 {
            for new in 0..13u8 {
                let slot = transition_slot(old, new);
                assert!(slot < TRANSITION_SLOTS);
                assert_eq!(slot_transition(slot), (old, new));
            }
        }
        assert_eq!(Counter::SummaryReserveFailed.slot() + 1, COUNTER_SLOTS);
    }
}
