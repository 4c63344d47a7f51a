//! Timewait sockets leaving on their own: the kernel's timers, which no tracepoint shows.

use std::cmp::Reverse;

use tcptrace_common::TcpState;

use super::change::{Change, LeaveReason, SockChange};
use super::entry::flag;
use super::table::SocketTable;
use super::timewait_hooks::EXACT_END_GRACE_NS;

impl SocketTable {
    /// When the timewait socket in `slot` is destroyed by its timer: 60 s after entering
    /// TIME_WAIT (`TCP_TIMEWAIT_LEN`), or tcp_fin_timeout after an orphan's FIN_WAIT2 became a
    /// timewait socket (`tcp_time_wait(sk, TCP_FIN_WAIT2, tmo)`). `last_ns` of a timewait entry
    /// is when the kernel created it.
    pub(super) fn mini_deadline(&self, slot: u32) -> u64 {
        let e = &self.slab[slot as usize];
        if e.has(flag::TW_HOOKED) || self.exact_timewait_end {
            // Its exact end comes as an event; the timer only catches a lost one.
            return self
                .inferred_deadline(slot)
                .saturating_add(EXACT_END_GRACE_NS);
        }
        self.inferred_deadline(slot)
    }

    fn inferred_deadline(&self, slot: u32) -> u64 {
        let e = &self.slab[slot as usize];
        match e.state() {
            TcpState::FinWait2 => e.last_ns.saturating_add(self.limits.fin_timeout_ns),
            _ => e
                .since()
                .unwrap_or(e.last_ns)
                .saturating_add(self.limits.timewait_len_ns),
        }
    }

    /// Removes timewait sockets whose timer has run out by `now_ns` (CLOCK_MONOTONIC) and
    /// reports them, earliest deadline first. Only what is due is looked at (see `expiries`).
    pub fn expire(&mut self, now_ns: u64) -> Vec<SockChange> {
        let mut out = Vec::new();
        while let Some(&Reverse((due, slot))) = self.expiries.peek() {
            if now_ns < due {
                break;
            }
            self.expiries.pop();
            let e = &self.slab[slot as usize];
            if e.is_free() || !e.is_mini() {
                // Retired since (by its end event, a reuse, a reset, the kernel's table).
                continue;
            }
            let deadline = self.mini_deadline(slot);
            if deadline != due {
                // Its deadline changed, which scheduled it again, or the slot holds a newer
                // timewait socket, scheduled on its own.
                continue;
            }
            let change = Change::Left {
                state: e.state(),
                dwell_ns: e.since().map(|s| deadline.saturating_sub(s)),
                reason: LeaveReason::Expired,
            };
            out.push(SockChange {
                sock: self.info(slot),
                change,
            });
            self.stats.timewait_expired += 1;
            self.retire(slot, deadline);
        }
        out
    }
}
