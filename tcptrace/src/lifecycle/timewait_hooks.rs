//! The exact start and end of timewait sockets, from the fentry hooks on `tcp_time_wait` and
//! `inet_twsk_free` where the kernel allows them, or the exact end alone from the
//! `timer:timer_expire_entry` tracepoint (`TimeWaitEnd` events either way). Without these events the table infers both
//! (see [`super::apply`] and [`super::timewait`]); with them it uses what the kernel did.

use tcptrace_common::TcpState;

use super::addr;
use super::change::{Applied, Change, LeaveReason, Outcome, Subject};
use super::entry::flag;
use super::table::{IdKind, SocketTable};
use crate::event::Event;

/// How long past the inferred deadline a timewait socket with an exact end waits for it before
/// the timer inference retires it anyway (a lost event). The kernel's timer wheel rounds a
/// timer up to the granularity of the level its timeout falls in: for 60 s that is 8^3 or 8^4
/// jiffies, 2.048 s at HZ=250, 4.096 s at HZ=1000 and 5.12 s at HZ=100
/// (<https://github.com/torvalds/linux/blob/v6.1/kernel/time/timer.c#L64>), and the timer
/// softirq may run later still on a busy CPU; then the event travels through the ring.
pub(super) const EXACT_END_GRACE_NS: u64 = 10_000_000_000;

impl SocketTable {
    /// `tcp_time_wait(sk, substate)`: the full socket's next ->CLOSE hands it to a timewait
    /// socket in `substate`. Remembered on the entry; [`Self::close`] acts on it.
    pub(super) fn apply_timewait_enter(&mut self, ev: &Event, substate: TcpState, a: &mut Applied) {
        let Some(slot) = self.find_timewait_subject(ev, false) else {
            self.stats.ignored += 1;
            a.outcome = Outcome::Ignored;
            return;
        };
        let e = &mut self.slab[slot as usize];
        e.flags |= flag::TW_HOOKED;
        if substate == TcpState::FinWait2 {
            e.flags |= flag::TW_FIN_WAIT2;
        } else {
            e.flags &= !flag::TW_FIN_WAIT2;
        }
        a.state = Some(e.state());
        a.sock = Some(self.info(slot));
    }

    /// `inet_twsk_free(tw)`: the timewait socket is gone (its timer ran out, or a new
    /// connection or a RST killed it); or `timer_expire_entry` for its `tw_timer`: its timer ran
    /// out.
    pub(super) fn apply_timewait_end(&mut self, ev: &Event, a: &mut Applied) {
        let Some(slot) = self.find_timewait_subject(ev, true) else {
            // Already retired: reused by a new connection on its 4-tuple, reset, or evicted.
            self.stats.ignored += 1;
            a.outcome = Outcome::Ignored;
            return;
        };
        let ts = ev.ts_ns;
        let e = &self.slab[slot as usize];
        a.sock = Some(self.info(slot));
        a.push(
            Subject::This,
            Change::Left {
                state: e.state(),
                dwell_ns: e.dwell_until(ts),
                reason: LeaveReason::Expired,
            },
        );
        self.stats.timewait_expired += 1;
        self.stats.timewait_end_exact += 1;
        self.retire(slot, ts);
    }

    /// The entry of a hook event: by cookie (a timewait socket keeps its full socket's cookie,
    /// `inet_twsk_alloc` copies it), else by 4-tuple for a socket known only from the kernel
    /// table. `mini`: the event is about a timewait socket, not a full one.
    fn find_timewait_subject(&mut self, ev: &Event, mini: bool) -> Option<u32> {
        let by_id = (ev.sock.cookie != 0)
            .then(|| self.find_id(ev.netns, IdKind::Cookie, ev.sock.cookie))
            .flatten();
        let slot = by_id.or_else(|| {
            let t = addr::lookup(&self.v6, &ev.local, &ev.remote)?;
            self.tuple_slots(ev.netns, &t).find(|&s| {
                let e = &self.slab[s as usize];
                !e.is_listener() && (e.is_mini() == mini) && (mini || e.has(flag::UNBOUND))
            })
        })?;
        let e = &self.slab[slot as usize];
        if e.is_listener() || e.is_mini() != mini {
            return None;
        }
        if !mini && e.has(flag::UNBOUND) {
            self.bind(slot, ev);
        }
        Some(slot)
    }
}
