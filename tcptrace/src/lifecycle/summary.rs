//! Summary mode: a record per CLOSE_WAIT entry and per close instead of an event per transition.
//! A record carries the stays the socket made since its last one, so the aggregates get every
//! dwell time they would have got from the events, and the table follows the states that views
//! count live (CLOSE_WAIT, TIME_WAIT, LISTEN, whose events still come one by one); the others
//! are taken from the kernel's table at each reconciliation, without counting as corrections.

use tcptrace_common::TcpState;

use super::change::{Applied, Change, LeaveReason, Subject};
use super::entry::flag;
use super::table::SocketTable;
use crate::event::{Event, Stays};

/// The states the table follows live in summary mode. A timewait socket (TIME_WAIT, or an
/// orphan's FIN_WAIT2) is followed too: it comes from a close record.
pub fn followed(s: TcpState) -> bool {
    matches!(
        s,
        TcpState::CloseWait | TcpState::Listen | TcpState::TimeWait
    )
}

impl SocketTable {
    pub(super) fn apply_summary(
        &mut self,
        ev: &Event,
        old: TcpState,
        new: TcpState,
        stays: &Stays,
        a: &mut Applied,
    ) {
        let found = self.find_event_socket(ev, old, new);
        let slot = match found {
            Some(s) => s,
            None => {
                let s = self.create(ev, old, new);
                let e = &mut self.slab[s as usize];
                if let Some(born) = stays.born_ns {
                    e.created_ns = born;
                }
                if stays.passive {
                    // Its listener may be closed by now: the kernel remembered.
                    e.flags |= flag::PASSIVE;
                }
                s
            }
        };
        let tracked = self.slab[slot as usize].state();
        // The stays before `old`: transitions the kernel followed without telling us.
        for (state, dwell_ns) in stays.left() {
            if state != old {
                let reason = LeaveReason::Transition;
                a.push(
                    Subject::This,
                    Change::Left {
                        state,
                        dwell_ns,
                        reason,
                    },
                );
            }
        }
        if found.is_some() && tracked != old && !stays.visited(tracked) {
            // What the table held is not among the stays: a record in between never came.
            self.stats.state_mismatches += 1;
            a.push(
                Subject::This,
                Change::Left {
                    state: tracked,
                    dwell_ns: None,
                    reason: LeaveReason::Mismatch,
                },
            );
        }
        if stays.repaired {
            self.stats.repaired += 1;
        }
        if stays.reset {
            self.slab[slot as usize].flags |= flag::RESET;
        }
        if let Some(substate) = stays.timewait {
            // What the `tcp_time_wait` hook would have said in an event of its own.
            let e = &mut self.slab[slot as usize];
            e.flags |= flag::TW_HOOKED;
            if substate == TcpState::FinWait2 {
                e.flags |= flag::TW_FIN_WAIT2;
            } else {
                e.flags &= !flag::TW_FIN_WAIT2;
            }
        }
        a.dwell_ns = stays.dwell(old);
        if let Some(d) = a.dwell_ns {
            // When `old` began: a stay that goes on past this record (an orphan's FIN_WAIT2
            // held by its peer) is timed from there.
            self.slab[slot as usize].since_ns = ev.ts_ns.saturating_sub(d);
        }
        self.proceed(slot, ev, old, new, false, a);
    }
}
