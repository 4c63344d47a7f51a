//! Whole connections, both ends in the table.

use tcptrace_common::TcpState::*;

use super::super::change::{Change, LeaveReason, Outcome, Subject};
use super::super::fixtures::*;
use super::super::owner::Attribution;
use super::super::table::{Limits, SocketTable};
use super::{check_counts, find, state_of};

#[test]
fn loopback_connection_client_first_ends_with_client_time_wait() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let lb = Loopback::new(&mut fx, 40000);
    lb.listen(&mut fx, &mut t);
    lb.connect(&mut fx, &mut t);
    assert_eq!(t.counts().get(Established), 2);
    assert_eq!(t.counts().get(Listen), 1);
    check_counts(&t);

    let closes = lb.client_closes(&mut fx, &mut t);
    assert!(closes.iter().all(|a| a.outcome == Outcome::Applied));
    // The server has not closed: the client's timewait socket waits in FIN_WAIT2.
    let c = find(&t, &lb.client).unwrap();
    assert_eq!(c.state, FinWait2);
    assert!(c.timewait_socket);
    assert_eq!(state_of(&t, &lb.server), Some(CloseWait));
    assert_eq!(t.counts().get(TimeWait), 0);
    let fw2_since = c.since_ns.unwrap();
    assert!(
        closes[3]
            .changes()
            .iter()
            .any(|(_, ch)| matches!(ch, Change::HeldInFinWait2 { .. }))
    );

    let server = lb.server_closes(&mut fx, &mut t);
    // CLOSE_WAIT -> LAST_ACK sends the server's FIN: the client turns TIME_WAIT at that moment.
    let fin_ts = fx.ts - 10_000;
    let other: Vec<_> = server[0]
        .changes()
        .iter()
        .filter(|(who, _)| *who == Subject::Other)
        .map(|(_, c)| *c)
        .collect();
    assert_eq!(
        other,
        vec![
            Change::Left {
                state: FinWait2,
                dwell_ns: Some(fin_ts - fw2_since),
                reason: LeaveReason::Transition
            },
            Change::Entered {
                state: TimeWait,
                at_ns: fin_ts
            },
        ]
    );
    assert_eq!(server[0].other.unwrap().local, lb.client.local);
    let c = find(&t, &lb.client).unwrap();
    assert_eq!((c.state, c.since_ns), (TimeWait, Some(fin_ts)));
    assert_eq!(
        state_of(&t, &lb.server),
        None,
        "LAST_ACK -> CLOSE leaves no socket"
    );
    assert_eq!(t.counts().get(TimeWait), 1);
    assert_eq!(t.len(), 2, "listener and the client's TIME_WAIT");
    assert_eq!(t.stats().timewait_inferred, 1);
    assert_eq!(t.stats().state_mismatches, 0);
    check_counts(&t);

    fx.step(SEC);
    t.apply(&fx.tr(&lb.listener, Listen, Close, &lb.server_ctx));
    assert_eq!(t.len(), 1);
}

#[test]
fn server_first_close_puts_time_wait_on_the_server() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let lb = Loopback::new(&mut fx, 40001);
    lb.listen(&mut fx, &mut t);
    lb.connect(&mut fx, &mut t);
    let soft = Loopback::peer_softirq(&lb.server_ctx);
    fx.step(MS);
    t.apply(&fx.tr(&lb.server, Established, FinWait1, &lb.server_ctx));
    t.apply(&fx.step(1).tr(&lb.client, Established, CloseWait, &soft));
    t.apply(&fx.step(1).tr(&lb.server, FinWait1, FinWait2, &soft));
    t.apply(&fx.step(1).tr(&lb.server, FinWait2, Close, &soft));
    assert_eq!(state_of(&t, &lb.server), Some(FinWait2));
    assert_eq!(state_of(&t, &lb.client), Some(CloseWait));
    fx.step(5 * MS);
    t.apply(&fx.tr(&lb.client, CloseWait, LastAck, &lb.client_ctx));
    let fin_ts = fx.ts;
    t.apply(&fx.step(1).tr(
        &lb.client,
        LastAck,
        Close,
        &Loopback::peer_softirq(&lb.client_ctx),
    ));
    let s = find(&t, &lb.server).unwrap();
    assert_eq!((s.state, s.since_ns), (TimeWait, Some(fin_ts)));
    // TIME_WAIT belongs to the server process, which closed first.
    assert_eq!(s.owner.unwrap().pid, 100);
    assert_eq!(s.attribution, Some(Attribution::KernelContext));
    assert_eq!(state_of(&t, &lb.client), None);
    check_counts(&t);
}

#[test]
fn simultaneous_close_leaves_both_sides_in_time_wait() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let lb = Loopback::new(&mut fx, 40002);
    lb.listen(&mut fx, &mut t);
    lb.connect(&mut fx, &mut t);
    let soft = SWAPPER;
    t.apply(
        &fx.step(MS)
            .tr(&lb.client, Established, FinWait1, &lb.client_ctx),
    );
    t.apply(
        &fx.step(1)
            .tr(&lb.server, Established, FinWait1, &lb.server_ctx),
    );
    t.apply(&fx.step(1).tr(&lb.client, FinWait1, Closing, &soft));
    t.apply(&fx.step(1).tr(&lb.server, FinWait1, Closing, &soft));
    assert_eq!(t.counts().get(Closing), 2);
    let a = t.apply(&fx.step(1).tr(&lb.client, Closing, Close, &soft));
    assert_eq!(a.state, Some(TimeWait));
    let b = t.apply(&fx.step(1).tr(&lb.server, Closing, Close, &soft));
    assert_eq!(b.state, Some(TimeWait));
    assert_eq!(t.counts().get(TimeWait), 2);
    assert_eq!(find(&t, &lb.client).unwrap().owner.unwrap().pid, 200);
    assert_eq!(find(&t, &lb.server).unwrap().owner.unwrap().pid, 100);
    check_counts(&t);
}

#[test]
fn dwell_is_exact_from_timestamps() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let sk = fx.sock("10.0.0.1:50000", "10.0.0.2:443");
    let me = Ctx::Owner(7, "app");
    let t0 = fx.ts;
    let a = t.apply(&fx.tr(&sk, Close, SynSent, &me));
    assert_eq!(a.dwell_ns, None, "nothing before SYN_SENT");
    fx.step(1_234_567);
    let a = t.apply(&fx.tr(&sk, SynSent, Established, &SWAPPER));
    assert_eq!(a.dwell_ns, Some(1_234_567));
    assert!(a.changes().contains(&(
        Subject::This,
        Change::Left {
            state: SynSent,
            dwell_ns: Some(1_234_567),
            reason: LeaveReason::Transition
        }
    )));
    fx.step(42 * SEC + 7);
    let a = t.apply(&fx.tr(&sk, Established, FinWait1, &me));
    assert_eq!(a.dwell_ns, Some(42 * SEC + 7));
    fx.step(3);
    let a = t.apply(&fx.tr(&sk, FinWait1, FinWait2, &SWAPPER));
    assert_eq!(a.dwell_ns, Some(3));
    fx.step(11);
    let a = t.apply(&fx.tr(&sk, FinWait2, Close, &SWAPPER));
    assert_eq!(a.dwell_ns, Some(11));
    let lifetime = fx.ts - t0;
    assert!(a.changes().contains(&(
        Subject::This,
        Change::Closed {
            lifetime_ns: Some(lifetime),
            reset: false
        }
    )));
    // Remote peer: nothing holds it, TIME_WAIT starts at the close.
    assert_eq!(a.state, Some(TimeWait));
    assert_eq!(find(&t, &sk).unwrap().since_ns, Some(fx.ts));
}

#[test]
fn first_seen_mid_life_has_unknown_entry_time() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let sk = fx.sock("10.0.0.1:80", "10.0.0.9:5555");
    let a = t.apply(&fx.tr(&sk, Established, CloseWait, &SWAPPER));
    assert_eq!(a.outcome, Outcome::Applied);
    assert_eq!(a.dwell_ns, None);
    assert!(
        !a.changes()
            .iter()
            .any(|(_, c)| matches!(c, Change::Left { .. }))
    );
    let v = find(&t, &sk).unwrap();
    assert_eq!(
        (v.state, v.created_ns, v.since_ns),
        (CloseWait, None, Some(fx.ts))
    );
    // It closes: the lifetime is unknown.
    fx.step(SEC);
    t.apply(&fx.tr(&sk, CloseWait, LastAck, &Ctx::Owner(3, "app")));
    let a = t.apply(&fx.step(1).tr(&sk, LastAck, Close, &SWAPPER));
    assert!(a.changes().contains(&(
        Subject::This,
        Change::Closed {
            lifetime_ns: None,
            reset: false
        }
    )));
    assert!(t.is_empty());
}

#[test]
fn unknown_socket_closing_is_ignored() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let sk = fx.sock("10.0.0.1:80", "10.0.0.9:5555");
    let a = t.apply(&fx.tr(&sk, LastAck, Close, &SWAPPER));
    assert_eq!(a.outcome, Outcome::Ignored);
    assert!(t.is_empty());
    assert_eq!(t.stats().ignored, 1);
    // An unknown FIN_WAIT2 closing still leaves a timewait socket behind.
    let sk2 = fx.renew(&sk);
    let a = t.apply(&fx.tr(&sk2, FinWait2, Close, &SWAPPER));
    assert_eq!(a.state, Some(TimeWait));
    assert_eq!(t.counts().get(TimeWait), 1);
}

#[test]
fn ipv6_connection_tracks_and_frees_interned_addresses() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let sk = fx.sock("[::1]:50000", "[2001:db8::1]:443");
    let me = Ctx::Owner(7, "app");
    t.apply(&fx.tr(&sk, Close, SynSent, &me));
    t.apply(&fx.step(1).tr(&sk, SynSent, Established, &SWAPPER));
    let v = find(&t, &sk).unwrap();
    assert_eq!((v.local, v.remote), (sk.local, sk.remote));
    assert_eq!(t.interned().1, 2);
    fx.step(1);
    t.apply(&fx.tr(&sk, Established, Close, &me));
    assert!(t.is_empty());
    assert_eq!(
        t.interned(),
        (0, 0),
        "owners and addresses are released with the socket"
    );
}
