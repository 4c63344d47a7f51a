//! Applying one kernel event to the socket table.

use tcptrace_common::TcpState;
use tcptrace_common::TcpState::*;

use super::addr;
use super::change::{Applied, Change, LeaveReason, Outcome, Subject};
use super::entry::flag;
use super::owner::{Attribution, Owner};
use super::table::{IdKind, SocketTable};
use crate::event::{Event, What};

/// How many recent tombstones a close of an unknown socket is compared with, to recognise a
/// duplicate (the backup program's copy arrives right after the original).
const DUPLICATE_WINDOW: usize = 256;

fn event_id(ev: &Event) -> (IdKind, u64) {
    if ev.sock.cookie != 0 {
        (IdKind::Cookie, ev.sock.cookie)
    } else {
        (IdKind::Skaddr, ev.sock.skaddr)
    }
}

/// Transitions that start a new socket: connect(), listen(), and an accepted child, which the
/// kernel clones from the listener with the listener's state, then sets to SYN_RECV
/// (`inet_csk_clone_lock`, <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/inet_connection_sock.c>).
fn is_birth(old: TcpState, new: TcpState) -> bool {
    old == Close || (old == Listen && new == SynRecv)
}

impl SocketTable {
    /// Applies one event and reports what it did.
    pub fn apply(&mut self, ev: &Event) -> Applied {
        let mut a = Applied::default();
        self.apply_into(ev, &mut a);
        a
    }

    /// [`Self::apply`] into a caller's `Applied`, for the per-event path: `Applied` is 440
    /// bytes, written field by field, and returning it by value copied it right after those
    /// writes (a store-forwarding stall on top of the copy) at every event.
    pub fn apply_into(&mut self, ev: &Event, a: &mut Applied) {
        // Filled by reference all the way down (advance, enter, close) for the same reason.
        a.reset(Outcome::Applied);
        match ev.what {
            What::Transition { old, new } => self.apply_transition(ev, old, new, a),
            What::ResetReceived | What::ResetSent => self.apply_reset(ev, a),
            What::TimeWaitEnter { substate } => self.apply_timewait_enter(ev, substate, a),
            What::TimeWaitEnd => self.apply_timewait_end(ev, a),
            What::Summary { old, new, stays } => self.apply_summary(ev, old, new, &stays, a),
        }
    }

    fn apply_transition(&mut self, ev: &Event, old: TcpState, new: TcpState, a: &mut Applied) {
        let mut found = self.find_event_socket(ev, old, new);
        if let Some(s) = found {
            let e = &self.slab[s as usize];
            let repeated = e.last_old == old as u8 && e.last_new == new as u8;
            // A birth repeated under an address is a new socket at a freed socket's address
            // whose close was lost (e.g. to a full ring: two listeners' CLOSE->LISTEN in a row),
            // unless the backup program sent it: only its copies repeat an event.
            let reborn = repeated && event_id(ev).0 == IdKind::Skaddr && !ev.from_backup;
            if is_birth(old, new) && (!repeated || reborn) {
                // The identity was reused (skaddr where events carry no cookie): the socket we
                // held under it closed without us seeing it.
                self.stats.superseded += 1;
                self.free(s);
                found = None;
            }
        }
        match found {
            Some(s) => self.advance(s, ev, old, new, false, a),
            None => self.first_sight(ev, old, new, a),
        }
    }

    /// The entry an event is about: by identity, or a socket known only from the kernel table
    /// whose 4-tuple matches (it then takes the event's identity).
    pub(super) fn find_event_socket(
        &mut self,
        ev: &Event,
        old: TcpState,
        new: TcpState,
    ) -> Option<u32> {
        let (kind, key) = event_id(ev);
        if let Some(s) = self.find_id(ev.netns, kind, key) {
            return Some(s);
        }
        // The accepted child's LISTEN->SYN_RECV came without a cookie (the kernel sets it just
        // after that event): its next event names it by cookie for the first time.
        if kind == IdKind::Cookie
            && old == SynRecv
            && let Some(s) = self.find_id(ev.netns, IdKind::Skaddr, ev.sock.skaddr)
            && self.slab[s as usize].cookie == 0
        {
            self.bind(s, ev);
            return Some(s);
        }
        if is_birth(old, new) || ev.local.port() == 0 {
            return None;
        }
        let listener_event = old == Listen;
        if ev.remote.port() == 0 && !listener_event {
            return None;
        }
        let t = addr::lookup(&self.v6, &ev.local, &ev.remote)?;
        let slot = self.tuple_slots(ev.netns, &t).find(|&s| {
            let e = &self.slab[s as usize];
            e.has(flag::UNBOUND)
                && e.is_listener() == listener_event
                && (kind == IdKind::Skaddr || e.cookie == 0 || e.cookie == key)
                // A timewait socket gets no events, but a FIN_WAIT2 orphan without an inode in the
                // dump may still be a full socket (linger2 beyond 60 s).
                && (!e.is_mini() || (e.state() == FinWait2 && old == FinWait2))
        })?;
        self.bind(slot, ev);
        Some(slot)
    }

    /// Ties a socket known only from the kernel table to the identity its events use.
    pub(super) fn bind(&mut self, slot: u32, ev: &Event) {
        let (kind, _) = event_id(ev);
        self.id_remove(slot);
        let e = &mut self.slab[slot as usize];
        e.flags &= !flag::UNBOUND;
        if ev.sock.cookie != 0 {
            e.cookie = ev.sock.cookie;
        }
        if ev.sock.skaddr != 0 {
            e.skaddr = ev.sock.skaddr;
        }
        self.id_insert(slot, kind);
    }

    fn first_sight(&mut self, ev: &Event, old: TcpState, new: TcpState, a: &mut Applied) {
        let (_, key) = event_id(ev);
        if new == Close {
            // Only the backup program's copies repeat an event. A primary event that looks
            // like a recent close is a new socket at a reused address whose earlier events
            // were lost: dropping it as a duplicate took it out of the books (21 transitions
            // short across a switch to counting, 5.10 guest).
            if ev.from_backup && self.is_duplicate_close(ev, old, key) {
                self.stats.duplicates += 1;
                a.outcome = Outcome::Duplicate;
                return;
            }
            // A socket we never saw closing: only a timewait socket would remain.
            if !matches!(old, FinWait2 | Closing) {
                self.stats.ignored += 1;
                a.outcome = Outcome::Ignored;
                return;
            }
        }
        let slot = self.create(ev, old, new);
        self.advance(slot, ev, old, new, true, a)
    }

    /// A new entry for an event's socket, in state `old`: accepted from a listener when its
    /// local address is a listener's (it then inherits the listener's owner).
    pub(super) fn create(&mut self, ev: &Event, old: TcpState, new: TcpState) -> u32 {
        let (kind, key) = event_id(ev);
        let mut e = Self::blank(ev.netns, old, ev.ts_ns);
        if is_birth(old, new) {
            e.created_ns = ev.ts_ns;
        }
        e.cookie = ev.sock.cookie;
        e.skaddr = ev.sock.skaddr;
        // An accepted child's first event still carries the listener's local address; a socket
        // first seen mid-life on a listening port was accepted from that listener too.
        let listener = |t: &Self| {
            if old == Close {
                None
            } else {
                t.listener_for(ev.netns, &ev.local)
            }
        };
        let passive =
            (old == Listen && new == SynRecv) || old == SynRecv || listener(self).is_some();
        if passive {
            e.flags |= flag::PASSIVE;
        }
        let slot = self.alloc(e, &ev.local, &ev.remote);
        if key != 0 {
            self.id_insert(slot, kind);
        }
        // Looked up again: making room may have evicted it.
        if let Some(l) = listener(self) {
            self.copy_owner(slot, l, Attribution::Listener);
        }
        slot
    }

    fn is_duplicate_close(&self, ev: &Event, old: TcpState, key: u64) -> bool {
        self.tombstones
            .iter()
            .rev()
            .take(DUPLICATE_WINDOW)
            .any(|t| {
                t.netns == ev.netns && t.key == key && t.old == old as u8 && t.new == Close as u8
            })
    }

    /// Applies a transition to a known (or just created, `fresh`) entry.
    fn advance(
        &mut self,
        slot: u32,
        ev: &Event,
        old: TcpState,
        new: TcpState,
        fresh: bool,
        a: &mut Applied,
    ) {
        let ts = ev.ts_ns;
        let e = &self.slab[slot as usize];
        if !fresh && ev.from_backup && e.last_old == old as u8 && e.last_new == new as u8 {
            // A socket never repeats its last transition: this is the backup program's copy.
            self.stats.duplicates += 1;
            a.outcome = Outcome::Duplicate;
            a.state = Some(e.state());
            a.sock = Some(self.info(slot));
            return;
        }
        let tracked = e.state();
        if !fresh && tracked != old {
            if ts < e.last_ns {
                // Reordered across CPUs: we already know something newer. The backup program's
                // late copy of a transition we applied lands here too.
                if ev.from_backup {
                    self.stats.duplicates += 1;
                    a.outcome = Outcome::Duplicate;
                } else {
                    self.stats.state_mismatches += 1;
                    self.stats.stale += 1;
                    // It came after all: the gap the newer event counted held it.
                    self.stats.transitions_missed = self.stats.transitions_missed.saturating_sub(1);
                    a.outcome = Outcome::Stale;
                }
                a.state = Some(tracked);
                a.sock = Some(self.info(slot));
                return;
            }
            // A lost event: adopt what the kernel says now.
            self.stats.state_mismatches += 1;
            self.stats.transitions_missed += super::gap::fewest_transitions(tracked, old);
            a.mismatch = true;
            a.push(
                Subject::This,
                Change::Left {
                    state: tracked,
                    dwell_ns: None,
                    reason: LeaveReason::Mismatch,
                },
            );
        } else if !fresh {
            a.dwell_ns = e.dwell_until(ts);
        }
        self.proceed(slot, ev, old, new, fresh, a);
    }

    /// The rest of a transition, once what the socket left is settled: its tuple and owner,
    /// then the state it enters (or its close).
    pub(super) fn proceed(
        &mut self,
        slot: u32,
        ev: &Event,
        old: TcpState,
        new: TcpState,
        fresh: bool,
        a: &mut Applied,
    ) {
        if new == Listen {
            self.slab[slot as usize].flags |= flag::LISTENER;
        }
        self.learn_tuple(slot, ev, a);
        if new == Listen {
            self.listener_insert(slot);
        }

        let owner = ev.owner_task().map(Owner::from);
        if let Some(o) = &owner {
            self.set_owner(slot, o, Attribution::KernelContext);
        }
        let summary_closer = matches!(ev.what, What::Summary { stays, .. } if stays.closer);
        if new == FinWait1 || (old == CloseWait && new == LastAck) || summary_closer {
            // close()/shutdown(): in process context the task, just set as the owner above, is
            // exactly who closed.
            self.set_closer(slot, owner.is_some());
        }

        if new == Close {
            self.close(slot, ev, old, fresh, a)
        } else {
            self.enter(slot, ev, old, new, fresh, a)
        }
    }

    /// Stores the event's 4-tuple once it is complete (the local port of a connect, the peer of
    /// an accepted child, come after their first transition), and takes it over from any
    /// timewait socket on it.
    fn learn_tuple(&mut self, slot: u32, ev: &Event, a: &mut Applied) {
        let listener = self.slab[slot as usize].is_listener();
        let complete = ev.local.port() != 0 && (ev.remote.port() != 0 || listener);
        if complete {
            let same = addr::lookup(&self.v6, &ev.local, &ev.remote)
                .is_some_and(|t| t == self.slab[slot as usize].tuple);
            if !same {
                self.set_tuple(slot, &ev.local, &ev.remote);
            }
        }
        if self.tuple_index_if_complete(slot) && !listener {
            self.displace(slot, ev.ts_ns, a);
        }
    }

    /// A socket just took its 4-tuple: a timewait socket on it was killed by the reuse
    /// (`tcp_twsk_unique` on connect, `TCP_TW_SYN` on accept), and a full socket on it must have
    /// closed unseen, because the kernel never has two on one 4-tuple.
    pub(super) fn displace(&mut self, slot: u32, ts: u64, a: &mut Applied) {
        let (netns, t) = {
            let e = &self.slab[slot as usize];
            (e.netns, e.tuple)
        };
        loop {
            let next = self
                .tuple_slots(netns, &t)
                .find(|&s| s != slot && !self.slab[s as usize].is_listener());
            let Some(c) = next else { break };
            let p = &self.slab[c as usize];
            if p.is_mini() {
                self.stats.timewait_reused += 1;
                if a.other.is_none() {
                    let left = Change::Left {
                        state: p.state(),
                        dwell_ns: p.dwell_until(ts),
                        reason: LeaveReason::Reused,
                    };
                    a.other = Some(self.info(c));
                    a.push(Subject::Other, left);
                }
                self.retire(c, ts);
            } else {
                self.stats.superseded += 1;
                self.free(c);
            }
        }
    }

    fn enter(
        &mut self,
        slot: u32,
        ev: &Event,
        old: TcpState,
        new: TcpState,
        fresh: bool,
        a: &mut Applied,
    ) {
        let ts = ev.ts_ns;
        if !fresh && !a.mismatch {
            let left = Change::Left {
                state: old,
                dwell_ns: a.dwell_ns,
                reason: LeaveReason::Transition,
            };
            a.push(Subject::This, left);
        }
        self.set_state(slot, new);
        let e = &mut self.slab[slot as usize];
        e.since_ns = ts;
        e.last_ns = ts;
        e.last_old = old as u8;
        e.last_new = new as u8;
        // A RST that did not close the socket was not about its close.
        e.flags &=
            !(flag::MINI | flag::UNBOUND | flag::RESET | flag::TW_HOOKED | flag::TW_FIN_WAIT2);
        a.push(
            Subject::This,
            Change::Entered {
                state: new,
                at_ns: ts,
            },
        );
        if old == CloseWait && new == LastAck {
            self.peer_sent_fin(slot, ts, a);
        }
        a.sock = Some(self.info(slot));
        a.state = Some(new);
    }

    /// X -> CLOSE. TIME_WAIT never shows on the tracepoint: FIN_WAIT2 -> CLOSE and
    /// CLOSING -> CLOSE without a RST hand the connection to a timewait socket
    /// (`tcp_time_wait`, <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_minisocks.c>).
    /// When the fentry hook on `tcp_time_wait` reported it (just before this ->CLOSE), its
    /// substate is used instead of the inference. When the kernel read that no timewait socket
    /// was made (its TIME_WAIT table full: `Event::timewait_read` is CLOSE), none is kept: at
    /// the `tcp_max_tw_buckets` cap most closes are such, and keeping them would count
    /// TIME_WAIT far above `ss` until the next check against the kernel's table.
    fn close(&mut self, slot: u32, ev: &Event, old: TcpState, fresh: bool, a: &mut Applied) {
        let ts = ev.ts_ns;
        let e = &self.slab[slot as usize];
        let reset = e.has(flag::RESET);
        let hooked = e.has(flag::TW_HOOKED);
        let hooked_fw2 = e.has(flag::TW_FIN_WAIT2);
        let lifetime = e.created().map(|c| ts.saturating_sub(c));
        if e.is_listener() {
            self.listener_remove(slot);
            self.slab[slot as usize].flags &= !flag::LISTENER;
        }
        // An orphan's FIN_WAIT2 becomes a timewait socket in substate FIN_WAIT2 as soon as its
        // FIN is acked (tcp_rcv_state_process, case TCP_FIN_WAIT1,
        // <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_input.c>); it turns
        // TIME_WAIT only when the peer's FIN arrives. A local peer still in CLOSE_WAIT has
        // not sent it.
        // Else the substate the kernel read (`SOCK_DONE` in `sk_flags`), where it could: exact,
        // and needed for summaries, which report the local peer's CLOSE_WAIT -> LAST_ACK only
        // at its close, so that the peer still looks held here when it is not.
        // The kernel made no timewait socket at all (its TIME_WAIT table was full): whatever
        // the hook on `tcp_time_wait`, which runs before it tries, or the state said.
        let skipped = !reset && ev.timewait_read == Some(Close);
        let held = if skipped {
            false
        } else if hooked {
            !reset && hooked_fw2
        } else if let Some(substate) = ev.timewait_read {
            !reset && substate == FinWait2
        } else {
            !reset && old == FinWait2 && self.peer_holds(slot)
        };
        if !fresh && !a.mismatch && !held {
            let left = Change::Left {
                state: old,
                dwell_ns: a.dwell_ns,
                reason: LeaveReason::Transition,
            };
            a.push(Subject::This, left);
        }
        a.push(
            Subject::This,
            Change::Closed {
                lifetime_ns: lifetime,
                reset,
            },
        );
        if old == SynSent
            && let Some(errno) = self.connect_error(slot, ev, reset)
        {
            self.stats.connect_failures += 1;
            a.push(Subject::This, Change::ConnectFailed { errno });
        }
        let e = &mut self.slab[slot as usize];
        e.last_old = old as u8;
        e.last_new = Close as u8;
        e.last_ns = ts;

        if !reset && hooked && !skipped {
            self.stats.timewait_exact += 1;
        }
        if !reset && held {
            let since = self.slab[slot as usize].since_ns;
            self.become_mini(slot, FinWait2, since, ts);
            a.push(Subject::This, Change::HeldInFinWait2 { at_ns: ts });
            a.state = Some(FinWait2);
        } else if !reset && !skipped && (hooked || matches!(old, FinWait2 | Closing)) {
            self.become_mini(slot, TimeWait, ts, ts);
            if !hooked {
                self.stats.timewait_inferred += 1;
            }
            a.push(
                Subject::This,
                Change::Entered {
                    state: TimeWait,
                    at_ns: ts,
                },
            );
            a.state = Some(TimeWait);
        } else {
            if reset {
                self.stats.reset_closes += 1;
            }
            if skipped {
                self.stats.timewait_skipped += 1;
                self.closer_owns(slot);
                a.push(Subject::This, Change::TimeWaitRefused);
            }
            match old {
                // The app closed with unread data or aborted: its RST kills our side's
                // timewait socket.
                CloseWait => self.peer_aborted(slot, ts, a),
                // Our FIN reached the peer even if its CLOSE_WAIT -> LAST_ACK event was lost (or,
                // in summary mode, not sent): it left when LAST_ACK began, if that is known.
                LastAck => {
                    let fin_at = ts.saturating_sub(a.dwell_ns.unwrap_or(0));
                    self.peer_sent_fin(slot, fin_at, a)
                }
                _ => {}
            }
            a.sock = Some(self.info(slot));
            a.state = None;
            self.retire(slot, ts);
            return;
        }
        a.sock = Some(self.info(slot));
    }

    /// Why a connect that went SYN_SENT -> CLOSE failed, as `connect()` returned it; None for a
    /// connect the application gave up on itself (closed while SYN_SENT), which is no failure.
    /// - a RST answered the SYN (`tcp_reset` sets ECONNREFUSED in SYN_SENT);
    /// - `sk_err` set by the kernel before `tcp_done` (ETIMEDOUT, EHOSTUNREACH, ...);
    /// - no local port was ever picked, in the caller's `connect()`: `inet_hash_connect` found
    ///   none free and `tcp_v4_connect` went back to CLOSE with EADDRNOTAVAIL, setting no
    ///   `sk_err` (<https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_ipv4.c#L295>).
    fn connect_error(&self, slot: u32, ev: &Event, reset: bool) -> Option<u16> {
        let c = ev.connect_end?;
        if reset || c.err == libc::ECONNREFUSED as u16 {
            return Some(libc::ECONNREFUSED as u16);
        }
        if c.err != 0 {
            return Some(c.err);
        }
        // Events do not say whether they ran in the caller: their task is compared with the
        // owner its connect() named.
        let in_caller = c.in_caller.unwrap_or_else(|| {
            let owner = self.owners.get(self.slab[slot as usize].owner);
            owner.is_none_or(|o| o.pid == ev.task.pid)
        });
        (c.no_local_port && in_caller).then_some(libc::EADDRNOTAVAIL as u16)
    }

    fn apply_reset(&mut self, ev: &Event, a: &mut Applied) {
        let ts = ev.ts_ns;
        let (kind, key) = event_id(ev);
        let slot = self.find_id(ev.netns, kind, key).or_else(|| {
            // On the classic path a timewait socket has its own address, and a socket known
            // only from the kernel table has none yet: find them by 4-tuple.
            let t = addr::lookup(&self.v6, &ev.local, &ev.remote)?;
            self.tuple_slots(ev.netns, &t).find(|&s| {
                let e = &self.slab[s as usize];
                e.is_mini() || (e.has(flag::UNBOUND) && !e.is_listener())
            })
        });
        if let Some(s) = slot
            && self.slab[s as usize].has(flag::UNBOUND)
            && !self.slab[s as usize].is_mini()
        {
            self.bind(s, ev);
        }
        let Some(slot) = slot.filter(|&s| !self.slab[s as usize].is_listener()) else {
            self.stats.ignored += 1;
            a.outcome = Outcome::Ignored;
            return;
        };
        a.sock = Some(self.info(slot));
        let e = &mut self.slab[slot as usize];
        if e.is_mini() {
            // A timewait socket that answers with or receives a RST is destroyed
            // (tcp_v4_rcv TCP_TW_RST; tcp_timewait_state_process with tcp_rfc1337 off,
            // <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_minisocks.c>).
            let left = Change::Left {
                state: e.state(),
                dwell_ns: e.dwell_until(ts),
                reason: LeaveReason::Reset,
            };
            a.push(Subject::This, left);
            self.retire(slot, ts);
            return;
        }
        e.flags |= flag::RESET;
        e.last_ns = e.last_ns.max(ts);
        a.state = Some(e.state());
    }

    /// The local peer of this socket (its reverse 4-tuple) has not sent its FIN yet.
    fn peer_holds(&self, slot: u32) -> bool {
        let e = &self.slab[slot as usize];
        if !e.tuple.is_complete(false) {
            return false;
        }
        let rev = e.tuple.reversed();
        self.tuple_slots(e.netns, &rev).any(|s| {
            let p = &self.slab[s as usize];
            // ESTABLISHED: the peer's ESTABLISHED -> CLOSE_WAIT event is late or lost; our FIN
            // was acked, so it has received it.
            s != slot && !p.is_mini() && matches!(p.state(), CloseWait | Established)
        })
    }

    /// The local peer's timewait socket waiting in FIN_WAIT2 for our FIN.
    fn held_peer(&self, slot: u32) -> Option<u32> {
        let e = &self.slab[slot as usize];
        if !e.tuple.is_complete(false) {
            return None;
        }
        let rev = e.tuple.reversed();
        self.tuple_slots(e.netns, &rev).find(|&s| {
            let p = &self.slab[s as usize];
            s != slot && p.is_mini() && p.state() == FinWait2
        })
    }

    /// This socket sent its FIN (CLOSE_WAIT -> LAST_ACK): a held peer turns TIME_WAIT now.
    fn peer_sent_fin(&mut self, slot: u32, ts: u64, a: &mut Applied) {
        let Some(c) = self.held_peer(slot) else {
            return;
        };
        let p = &self.slab[c as usize];
        let left = Change::Left {
            state: FinWait2,
            dwell_ns: p.dwell_until(ts),
            reason: LeaveReason::Transition,
        };
        self.set_state(c, TimeWait);
        let p = &mut self.slab[c as usize];
        p.since_ns = ts;
        p.last_ns = ts;
        let deadline = self.mini_deadline(c);
        self.schedule_expiry(c, deadline);
        self.stats.timewait_inferred += 1;
        a.other = Some(self.info(c));
        a.push(Subject::Other, left);
        a.push(
            Subject::Other,
            Change::Entered {
                state: TimeWait,
                at_ns: ts,
            },
        );
    }

    /// This socket closed from CLOSE_WAIT without a FIN (abort): the peer's held timewait
    /// socket gets the RST and dies.
    fn peer_aborted(&mut self, slot: u32, ts: u64, a: &mut Applied) {
        let Some(c) = self.held_peer(slot) else {
            return;
        };
        let p = &self.slab[c as usize];
        let left = Change::Left {
            state: FinWait2,
            dwell_ns: p.dwell_until(ts),
            reason: LeaveReason::Reset,
        };
        a.other = Some(self.info(c));
        a.push(Subject::Other, left);
        self.retire(c, ts);
    }

    /// TIME_WAIT belongs to whoever closed the connection first: the socket's owner becomes its
    /// closer, when that is someone else.
    fn closer_owns(&mut self, slot: u32) {
        let e = &self.slab[slot as usize];
        if e.closer == 0 || e.closer == e.owner {
            return;
        }
        let how = if e.has(flag::CLOSER_EXACT) {
            Attribution::KernelContext.to_u8()
        } else {
            e.attribution
        };
        let (closer, old) = (e.closer, e.owner);
        let r = self.owners.retain(closer);
        let e = &mut self.slab[slot as usize];
        e.owner = r;
        e.attribution = how;
        self.owners.release(old);
    }

    /// The full socket is gone and a timewait socket holds the connection.
    pub(super) fn become_mini(&mut self, slot: u32, state: TcpState, since_ns: u64, ts: u64) {
        self.bury(slot, ts);
        if self.slab[slot as usize].has(flag::ID_SKADDR) {
            // The allocator reuses the full socket's address; the timewait socket has its own.
            self.id_remove(slot);
        }
        self.set_state(slot, state);
        let e = &mut self.slab[slot as usize];
        e.flags |= flag::MINI;
        // TW_HOOKED stays: the timewait socket's end comes from `inet_twsk_free`.
        e.flags &= !(flag::RESET | flag::UNBOUND | flag::LISTENER | flag::TW_FIN_WAIT2);
        e.since_ns = since_ns;
        e.last_ns = ts;
        e.inode = 0;
        self.closer_owns(slot);
        let deadline = self.mini_deadline(slot);
        self.schedule_expiry(slot, deadline);
    }
}
