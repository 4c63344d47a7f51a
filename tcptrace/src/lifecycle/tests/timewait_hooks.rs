//! TIME_WAIT from the fentry hooks: the exact substate at the close, and the exact end.

use tcptrace_common::TcpState::{self, *};

use super::super::change::{Applied, Change, LeaveReason, Outcome, Subject};
use super::super::fixtures::*;
use super::super::table::{Limits, SocketTable, TIMEWAIT_LEN_NS};
use super::{check_counts, find, state_of};
use crate::event::What;

/// An outbound connection to a remote peer (no local peer to infer from) that the client
/// closes: ESTABLISHED -> FIN_WAIT1 -> FIN_WAIT2, then, with `hook`, the `tcp_time_wait` event
/// just before FIN_WAIT2 -> CLOSE, as the kernel orders them.
fn close_remote(fx: &mut Fx, t: &mut impl Sink, hook: Option<TcpState>) -> (Sk, Applied) {
    let sk = fx.sock("10.0.0.2:40000", "10.0.0.9:443");
    let me = Ctx::Owner(300, "client");
    fx.step(MS);
    t.apply(&fx.tr(&sk, Established, FinWait1, &me));
    fx.step(MS);
    t.apply(&fx.tr(&sk, FinWait1, FinWait2, &SWAPPER));
    fx.step(MS);
    if let Some(substate) = hook {
        // Applied by a table; folded into the close record by the kernel in summary mode.
        let a = t.apply(&fx.ev(&sk, What::TimeWaitEnter { substate }, &SWAPPER));
        assert!(a.changes().is_empty(), "the hook alone changes no state");
    }
    let a = t.apply(&fx.tr(&sk, FinWait2, Close, &SWAPPER));
    (sk, a)
}

#[test]
fn hooked_substate_overrides_the_inference_at_close() {
    // Without the hook: FIN_WAIT2 -> CLOSE and no local peer holding it is inferred TIME_WAIT.
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let (sk, _) = close_remote(&mut fx, &mut t, None);
    assert_eq!(state_of(&t, &sk), Some(TimeWait));
    assert_eq!(
        (t.stats().timewait_inferred, t.stats().timewait_exact),
        (1, 0)
    );

    // With it, the kernel said FIN_WAIT2 (an orphan whose peer has not closed yet): held.
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let (sk, a) = close_remote(&mut fx, &mut t, Some(FinWait2));
    let v = find(&t, &sk).unwrap();
    assert_eq!(v.state, FinWait2);
    assert!(v.timewait_socket);
    assert!(
        a.changes()
            .iter()
            .any(|(_, c)| matches!(c, Change::HeldInFinWait2 { .. }))
    );
    assert_eq!(
        (t.stats().timewait_inferred, t.stats().timewait_exact),
        (0, 1)
    );

    // And TIME_WAIT, counted as exact.
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let (sk, a) = close_remote(&mut fx, &mut t, Some(TimeWait));
    assert_eq!(state_of(&t, &sk), Some(TimeWait));
    assert!(a.changes().contains(&(
        Subject::This,
        Change::Entered {
            state: TimeWait,
            at_ns: fx.ts
        }
    )));
    assert_eq!(
        (t.stats().timewait_inferred, t.stats().timewait_exact),
        (0, 1)
    );
    check_counts(&t);
}

/// Summary mode: the hook marks the socket's storage instead of sending an event, and the close
/// record carries the substate; the table acts on it as on the event.
#[test]
fn summary_close_records_carry_the_hooked_substate() {
    for (hook, state, exact) in [
        (None, TimeWait, 0),
        (Some(FinWait2), FinWait2, 1),
        (Some(TimeWait), TimeWait, 1),
    ] {
        let mut fx = Fx::new();
        let mut t = SocketTable::new(Limits::default());
        t.set_summary_mode(true);
        let mut kernel = KernelModel::new(t);
        let (sk, _) = close_remote(&mut fx, &mut kernel, hook);
        let t = &kernel.inner;
        let v = find(t, &sk).unwrap();
        assert_eq!((v.state, v.timewait_socket), (state, true), "{hook:?}");
        assert_eq!(
            (t.stats().timewait_inferred, t.stats().timewait_exact),
            (1 - exact, exact),
            "{hook:?}"
        );
        check_counts(t);
    }
}

#[test]
fn inet_twsk_free_ends_the_timewait_socket_exactly() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let (sk, _) = close_remote(&mut fx, &mut t, Some(TimeWait));
    let entered = fx.ts;
    // Freed early (a RST or a reuse the table did not see), 30 s in: exactly then.
    fx.step(30 * SEC);
    let a = t.apply(&fx.ev(&sk, What::TimeWaitEnd, &SWAPPER));
    assert_eq!(a.outcome, Outcome::Applied);
    assert_eq!(
        a.changes(),
        &[(
            Subject::This,
            Change::Left {
                state: TimeWait,
                dwell_ns: Some(30 * SEC),
                reason: LeaveReason::Expired
            }
        )]
    );
    assert_eq!(fx.ts - entered, 30 * SEC);
    assert_eq!(state_of(&t, &sk), None);
    assert_eq!(t.stats().timewait_expired, 1);
    check_counts(&t);
    // A second free of the same cookie (or one of a socket we never held) changes nothing.
    let a = t.apply(&fx.ev(&sk, What::TimeWaitEnd, &SWAPPER));
    assert_eq!(a.outcome, Outcome::Ignored);
}

#[test]
fn hooked_timewait_waits_for_its_event_past_the_timer_then_falls_back() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let (sk, _) = close_remote(&mut fx, &mut t, Some(TimeWait));
    let entered = fx.ts;
    // At the inferred deadline the exact event is still on its way: keep the socket.
    assert!(t.expire(entered + TIMEWAIT_LEN_NS + SEC).is_empty());
    assert_eq!(state_of(&t, &sk), Some(TimeWait));
    // A lost event: the timer inference retires it after the grace.
    let gone = t.expire(entered + TIMEWAIT_LEN_NS + 10 * SEC);
    assert_eq!(gone.len(), 1);
    assert_eq!(state_of(&t, &sk), None);

    // Without the hook the timer alone decides, at 60 s.
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let (sk, _) = close_remote(&mut fx, &mut t, None);
    assert_eq!(t.expire(fx.ts + TIMEWAIT_LEN_NS + SEC).len(), 1);
    assert_eq!(state_of(&t, &sk), None);
}

#[test]
fn timewait_events_of_unknown_sockets_are_ignored() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let sk = fx.sock("10.0.0.2:40001", "10.0.0.9:443");
    let enter = What::TimeWaitEnter { substate: TimeWait };
    assert_eq!(
        t.apply(&fx.ev(&sk, enter, &SWAPPER)).outcome,
        Outcome::Ignored
    );
    assert_eq!(
        t.apply(&fx.ev(&sk, What::TimeWaitEnd, &SWAPPER)).outcome,
        Outcome::Ignored
    );
    assert_eq!(t.len(), 0);
}

/// The timer tracepoint's method: TIME_WAIT inferred at FIN_WAIT2 -> CLOSE (no enter event), its
/// end exact from `timer_expire_entry`. The inferred 60 s must not end it first (the kernel's
/// timer wheel runs it late), and a socket whose end event was lost still goes, after the grace.
#[test]
fn exact_end_without_enter_hook_outlasts_the_inferred_deadline() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    t.set_exact_timewait_end(true);
    let (a, _) = close_remote(&mut fx, &mut t, None);
    let entered = fx.ts;
    let b = fx.sock("10.0.0.2:40002", "10.0.0.9:443");
    let me = Ctx::Owner(300, "client");
    t.apply(&fx.tr(&b, Established, FinWait1, &me));
    t.apply(&fx.tr(&b, FinWait1, FinWait2, &SWAPPER));
    t.apply(&fx.tr(&b, FinWait2, Close, &SWAPPER));
    let b_entered = fx.ts;
    assert_eq!(state_of(&t, &a), Some(TimeWait));
    assert_eq!(t.stats().timewait_inferred, 2);

    // 60 s and 1.5 s of timer-wheel lateness: both still held.
    assert!(t.expire(entered + TIMEWAIT_LEN_NS + 1_500 * MS).is_empty());
    fx.ts = entered + TIMEWAIT_LEN_NS + 1_700 * MS;
    // The end as the timer hook sends it: the timewait socket's own address, and here no cookie
    // (one the kernel never generated), so the 4-tuple finds it.
    let mut end = fx.ev(&a, What::TimeWaitEnd, &SWAPPER);
    end.sock.cookie = 0;
    end.sock.skaddr ^= 0xfff0;
    let applied = t.apply(&end);
    assert_eq!(
        applied.changes(),
        &[(
            Subject::This,
            Change::Left {
                state: TimeWait,
                dwell_ns: Some(TIMEWAIT_LEN_NS + 1_700 * MS),
                reason: LeaveReason::Expired
            }
        )]
    );
    assert_eq!(state_of(&t, &a), None);
    assert_eq!(state_of(&t, &b), Some(TimeWait));
    assert_eq!(t.stats().timewait_end_exact, 1);

    // `b`'s end was lost: the inference retires it once the grace has passed.
    assert!(t.expire(b_entered + TIMEWAIT_LEN_NS + 9 * SEC).is_empty());
    assert_eq!(t.expire(b_entered + TIMEWAIT_LEN_NS + 10 * SEC).len(), 1);
    assert_eq!(state_of(&t, &b), None);
    assert_eq!(
        (t.stats().timewait_expired, t.stats().timewait_end_exact),
        (2, 1)
    );
    check_counts(&t);
}
