//! Resets, duplicates, lost and reordered events.

use tcptrace_common::TcpState::*;

use super::super::change::{Change, LeaveReason, Outcome, Subject};
use super::super::fixtures::*;
use super::super::table::{Limits, SocketTable};
use super::{check_counts, established, find, state_of, time_wait};
use crate::event::What;

#[test]
fn reset_close_is_not_time_wait() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let sk = fx.sock("10.0.0.1:50000", "10.0.0.2:443");
    established(&mut fx, &mut t, &sk);
    t.apply(
        &fx.step(MS)
            .tr(&sk, Established, FinWait1, &Ctx::Owner(7, "app")),
    );
    t.apply(&fx.step(MS).tr(&sk, FinWait1, FinWait2, &SWAPPER));
    // The peer answers with a RST: reset event first, then FIN_WAIT2 -> CLOSE.
    t.apply(&fx.step(MS).ev(&sk, What::ResetReceived, &SWAPPER));
    let a = t.apply(&fx.step(1).tr(&sk, FinWait2, Close, &SWAPPER));
    assert_eq!(a.state, None);
    assert!(
        a.changes()
            .iter()
            .any(|(_, c)| matches!(c, Change::Closed { reset: true, .. }))
    );
    assert!(
        !a.changes()
            .iter()
            .any(|(_, c)| matches!(c, Change::Entered { .. }))
    );
    assert!(t.is_empty());
    assert_eq!(t.stats().reset_closes, 1);
    assert_eq!(t.stats().timewait_inferred, 0);
}

#[test]
fn reset_before_a_later_transition_does_not_mark_the_close() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let sk = fx.sock("10.0.0.1:50000", "10.0.0.2:443");
    established(&mut fx, &mut t, &sk);
    t.apply(&fx.step(MS).ev(&sk, What::ResetSent, &SWAPPER));
    t.apply(
        &fx.step(MS)
            .tr(&sk, Established, FinWait1, &Ctx::Owner(7, "app")),
    );
    t.apply(&fx.step(MS).tr(&sk, FinWait1, FinWait2, &SWAPPER));
    let a = t.apply(&fx.step(MS).tr(&sk, FinWait2, Close, &SWAPPER));
    assert_eq!(a.state, Some(TimeWait));
}

#[test]
fn refused_connect_closes_by_reset_with_a_lifetime() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let sk = fx.sock("127.0.0.1:0", "127.0.0.1:9");
    t.apply(&fx.tr(&sk, Close, SynSent, &Ctx::Owner(7, "app")));
    let mut full = sk.clone();
    full.local.set_port(41000);
    t.apply(
        &fx.step(20_000)
            .ev(&full, What::ResetReceived, &Ctx::Softirq(7, "app")),
    );
    let a = t.apply(
        &fx.step(1_000)
            .tr(&full, SynSent, Close, &Ctx::Softirq(7, "app")),
    );
    assert!(a.changes().contains(&(
        Subject::This,
        Change::Closed {
            lifetime_ns: Some(21_000),
            reset: true
        }
    )));
    assert!(a.changes().contains(&(
        Subject::This,
        Change::Left {
            state: SynSent,
            dwell_ns: Some(21_000),
            reason: LeaveReason::Transition
        }
    )));
    assert!(t.is_empty());
    assert_eq!(t.stats().reset_closes, 1);
}

#[test]
fn duplicates_are_dropped_and_counted() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let sk = fx.sock("10.0.0.1:50000", "10.0.0.2:443");
    let syn = fx.tr(&sk, Close, SynSent, &Ctx::Owner(7, "app"));
    t.apply(&syn);
    let mut dup = syn.clone();
    dup.from_backup = true;
    assert_eq!(t.apply(&dup).outcome, Outcome::Duplicate);
    let est = fx.step(MS).tr(&sk, SynSent, Established, &SWAPPER);
    t.apply(&est);
    let mut dup = est.clone();
    dup.from_backup = true;
    assert_eq!(t.apply(&dup).outcome, Outcome::Duplicate);
    assert_eq!(t.len(), 1);
    assert_eq!(state_of(&t, &sk), Some(Established));
    assert_eq!(find(&t, &sk).unwrap().since_ns, Some(fx.ts));
    // A duplicate close of a socket already gone.
    let close = fx.step(MS).tr(&sk, Established, Close, &SWAPPER);
    t.apply(&close);
    assert!(t.is_empty());
    let mut dup = close.clone();
    dup.from_backup = true;
    assert_eq!(t.apply(&dup).outcome, Outcome::Duplicate);
    assert!(t.is_empty());
    assert_eq!(t.stats().duplicates, 3);
    assert_eq!(t.stats().state_mismatches, 0);
    assert_eq!(t.stats().ignored, 0);
}

#[test]
fn duplicate_fin_wait2_close_does_not_touch_time_wait_on_either_path() {
    for classic in [false, true] {
        let mut fx = if classic { Fx::classic() } else { Fx::new() };
        let mut t = SocketTable::new(Limits::default());
        let sk = fx.sock("10.0.0.1:50000", "10.0.0.2:443");
        established(&mut fx, &mut t, &sk);
        t.apply(
            &fx.step(MS)
                .tr(&sk, Established, FinWait1, &Ctx::Owner(7, "app")),
        );
        t.apply(&fx.step(MS).tr(&sk, FinWait1, FinWait2, &SWAPPER));
        let close = fx.step(MS).tr(&sk, FinWait2, Close, &SWAPPER);
        t.apply(&close);
        let since = find(&t, &sk).unwrap().since_ns;
        fx.step(1);
        let mut dup = close.clone();
        dup.ts_ns = fx.ts;
        dup.from_backup = true;
        assert_eq!(
            t.apply(&dup).outcome,
            Outcome::Duplicate,
            "classic={classic}"
        );
        let v = find(&t, &sk).unwrap();
        assert_eq!((v.state, v.since_ns), (TimeWait, since));
        assert_eq!(t.stats().duplicates, 1);
        check_counts(&t);
    }
}

#[test]
fn lost_event_is_adopted_and_counted() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let sk = fx.sock("10.0.0.1:50000", "10.0.0.2:443");
    established(&mut fx, &mut t, &sk);
    // ESTABLISHED -> FIN_WAIT1 and FIN_WAIT1 -> FIN_WAIT2 were lost.
    let a = t.apply(&fx.step(MS).tr(&sk, FinWait2, Close, &SWAPPER));
    assert!(a.mismatch);
    assert_eq!(a.dwell_ns, None);
    assert!(a.changes().contains(&(
        Subject::This,
        Change::Left {
            state: Established,
            dwell_ns: None,
            reason: LeaveReason::Mismatch
        }
    )));
    assert_eq!(
        a.state,
        Some(TimeWait),
        "the kernel's old state decides what CLOSE means"
    );
    assert_eq!(t.stats().state_mismatches, 1);
    assert_eq!(
        t.stats().transitions_missed,
        2,
        "ESTABLISHED->FIN_WAIT1 and FIN_WAIT1->FIN_WAIT2, never delivered"
    );
    assert_eq!(t.transitions_missed(), 2);
    check_counts(&t);
}

#[test]
fn reordered_older_event_does_not_corrupt_the_table() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let sk = fx.sock("10.0.0.1:50000", "10.0.0.2:443");
    established(&mut fx, &mut t, &sk);
    t.apply(
        &fx.step(MS)
            .tr(&sk, Established, FinWait1, &Ctx::Owner(7, "app")),
    );
    let fw2 = fx.step(MS).tr(&sk, FinWait1, FinWait2, &SWAPPER);
    let close = fx.step(MS).tr(&sk, FinWait2, Close, &SWAPPER);
    // Delivered out of order from two CPUs.
    let a = t.apply(&close);
    assert!(a.mismatch);
    assert_eq!(a.state, Some(TimeWait));
    let b = t.apply(&fw2);
    assert_eq!(b.outcome, Outcome::Stale);
    assert_eq!(state_of(&t, &sk), Some(TimeWait));
    assert_eq!(t.stats().state_mismatches, 2);
    assert_eq!(t.stats().stale, 1);
    // The close counted FIN_WAIT1->FIN_WAIT2 missing; it came late, so nothing is missed.
    assert_eq!(t.stats().transitions_missed, 0);
    check_counts(&t);
}

#[test]
fn classic_path_skaddr_reuse_does_not_collide_with_time_wait() {
    let mut fx = Fx::classic();
    let mut t = SocketTable::new(Limits::default());
    let a = fx.sock("10.0.0.1:50000", "10.0.0.2:443");
    time_wait(&mut fx, &mut t, &a);
    assert_eq!(state_of(&t, &a), Some(TimeWait));
    // The allocator hands the same address to a new socket to another peer.
    let b = fx.same_skaddr(&a, "10.0.0.1:50001", "10.0.0.3:443");
    established(&mut fx, &mut t, &b);
    assert_eq!(state_of(&t, &a), Some(TimeWait));
    assert_eq!(state_of(&t, &b), Some(Established));
    t.apply(&fx.step(MS).tr(&b, Established, Close, &SWAPPER));
    assert_eq!(
        state_of(&t, &a),
        Some(TimeWait),
        "closing the new socket leaves TIME_WAIT be"
    );
    assert_eq!(state_of(&t, &b), None);
    assert_eq!(t.stats().superseded, 0);
    check_counts(&t);
}

#[test]
fn classic_path_missed_close_is_superseded_by_reuse_of_the_address() {
    let mut fx = Fx::classic();
    let mut t = SocketTable::new(Limits::default());
    let a = fx.sock("10.0.0.1:50000", "10.0.0.2:443");
    established(&mut fx, &mut t, &a);
    // Its close was lost; the address comes back for a new connect().
    let b = fx.same_skaddr(&a, "10.0.0.1:50001", "10.0.0.3:443");
    established(&mut fx, &mut t, &b);
    assert_eq!(t.len(), 1);
    assert_eq!(state_of(&t, &b), Some(Established));
    let v = find(&t, &b).unwrap();
    assert_eq!(
        v.created_ns,
        Some(fx.ts - MS),
        "a fresh socket, not the old entry adopted"
    );
    assert_eq!(t.stats().superseded, 1);
}

#[test]
fn address_keyed_repeated_birth_is_a_new_socket_unless_the_backup_sent_it() {
    let mut fx = Fx::classic();
    let mut t = SocketTable::new(Limits::default());
    let a = fx.sock("127.0.0.1:8080", "0.0.0.0:0");
    t.apply(
        &fx.step(MS)
            .tr(&a, Close, Listen, &Ctx::Owner(100, "server")),
    );
    // Its LISTEN->CLOSE was lost; a new listener gets the same address and does the same.
    let b = fx.same_skaddr(&a, "127.0.0.1:8080", "0.0.0.0:0");
    let second = fx
        .step(MS)
        .tr(&b, Close, Listen, &Ctx::Owner(101, "server"));
    assert!(!t.apply(&second).is_duplicate(), "a new listener");
    assert_eq!(t.stats().superseded, 1);
    assert_eq!(t.len(), 1);
    // A copy from the backup program is still a duplicate.
    let mut copy = second.clone();
    copy.from_backup = true;
    assert!(t.apply(&copy).is_duplicate());
    assert_eq!(t.stats().superseded, 1);
}

#[test]
fn a_primary_event_repeating_a_recent_close_is_a_new_socket_not_a_duplicate() {
    // Keyed by address: a socket freed after its close, and a new one at the same address whose
    // earlier events the full ring refused. Only the backup program repeats an event, so the
    // primary's close is applied (and counted as seen), not dropped as a duplicate.
    let mut fx = Fx::classic();
    let mut t = SocketTable::new(Limits::default());
    let sk = fx.sock("10.0.0.1:50000", "10.0.0.2:443");
    established(&mut fx, &mut t, &sk);
    let close = fx.step(MS).tr(&sk, Established, Close, &SWAPPER);
    t.apply(&close);
    assert!(t.is_empty());
    let again = fx.step(MS).tr(&sk, Established, Close, &SWAPPER);
    assert_ne!(t.apply(&again).outcome, Outcome::Duplicate);
    assert_eq!(t.stats().duplicates, 0);
}
