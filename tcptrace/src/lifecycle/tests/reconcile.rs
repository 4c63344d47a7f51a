//! Reconciliation with the kernel's socket table.

use std::collections::HashMap;

use tcptrace_common::TcpState::*;

use super::super::FdHolders;
use super::super::fixtures::*;
use super::super::owner::Attribution;
use super::super::table::{Limits, SocketTable, TIMEWAIT_LEN_NS};
use super::{check_counts, established, find, holder, state_of, time_wait};

#[test]
fn startup_snapshot_counts_and_attributes_preexisting_close_wait_leaks() {
    let mut t = SocketTable::new(Limits::default());
    let taken = 5_000 * SEC;
    let mut tw = ks(TimeWait, "10.0.0.1:40000", "10.0.0.2:443", 11, 0);
    tw.timer_ms = Some(15_000);
    let snap = snapshot(
        taken,
        vec![
            ks(CloseWait, "10.0.0.1:8080", "10.0.0.3:5000", 12, 7001),
            ks(CloseWait, "10.0.0.1:8080", "10.0.0.4:5000", 13, 7002),
            ks(Listen, "0.0.0.0:8080", "0.0.0.0:0", 10, 7000),
            tw,
            ks(SynRecv, "10.0.0.1:8080", "10.0.0.5:5000", 14, 0),
        ],
    );
    let fd: FdHolders = HashMap::from([
        (7000, vec![holder(55, "java")]),
        (7001, vec![holder(55, "java")]),
    ]);
    let st = t.reconcile(&snap, Some(&fd));
    assert_eq!(st.added, 4);
    assert_eq!(st.skipped_transient, 1);
    assert_eq!(t.counts().get(CloseWait), 2);
    assert_eq!(t.counts().get(TimeWait), 1);
    let views: Vec<_> = t.iter().filter(|v| v.state == CloseWait).collect();
    for v in &views {
        assert_eq!(v.owner.unwrap().pid, 55);
        assert_eq!(v.since_ns, None, "entered CLOSE_WAIT before we started");
        assert_eq!(v.created_ns, None);
    }
    let by_fd = views.iter().find(|v| v.inode == 7001).unwrap();
    assert_eq!(by_fd.attribution, Some(Attribution::Snapshot));
    let inherited = views.iter().find(|v| v.inode == 7002).unwrap();
    assert_eq!(inherited.attribution, Some(Attribution::Listener));
    // TIME_WAIT entered 60 s - 15 s before the dump.
    let tw = t.iter().find(|v| v.state == TimeWait).unwrap();
    assert!(tw.timewait_socket);
    assert_eq!(tw.since_ns, Some(taken - 45 * SEC));
    assert_eq!(t.expire(taken + 15 * SEC - 1).len(), 0);
    assert_eq!(t.expire(taken + 15 * SEC).len(), 1);
    check_counts(&t);
}

#[test]
fn reconcile_adds_removes_fixes_and_spares_sockets_born_during_the_dump() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let lost_close = fx.sock("10.0.0.1:40001", "10.0.0.2:443");
    let wrong_state = fx.sock("10.0.0.1:40002", "10.0.0.2:443");
    let fine = fx.sock("10.0.0.1:40003", "10.0.0.2:443");
    established(&mut fx, &mut t, &lost_close);
    established(&mut fx, &mut t, &wrong_state);
    established(&mut fx, &mut t, &fine);
    fx.step(SEC);
    let taken = fx.ts;
    // During the dump: one socket is born, one known socket changes state.
    fx.step(MS);
    let young = fx.sock("10.0.0.1:40004", "10.0.0.2:443");
    established(&mut fx, &mut t, &young);
    let changed = fine.clone();
    t.apply(
        &fx.step(MS)
            .tr(&changed, Established, FinWait1, &Ctx::Owner(7, "app")),
    );

    let snap = snapshot(
        taken,
        vec![
            ks(
                CloseWait,
                "10.0.0.1:40002",
                "10.0.0.2:443",
                wrong_state.id.cookie,
                1,
            ),
            ks(
                Established,
                "10.0.0.1:40003",
                "10.0.0.2:443",
                fine.id.cookie,
                2,
            ),
            ks(Established, "10.0.0.1:40005", "10.0.0.9:22", 777, 3),
        ],
    );
    let st = t.reconcile(&snap, None);
    assert_eq!(st.added, 1);
    assert_eq!(st.removed, 1, "the socket whose close we lost");
    assert_eq!(st.state_fixed, 1);
    assert_eq!(
        st.kept_newer, 2,
        "born during the dump / changed during the dump"
    );
    assert_eq!(state_of(&t, &lost_close), None);
    assert_eq!(state_of(&t, &wrong_state), Some(CloseWait));
    assert_eq!(find(&t, &wrong_state).unwrap().since_ns, None);
    assert_eq!(state_of(&t, &fine), Some(FinWait1));
    assert_eq!(state_of(&t, &young), Some(Established));
    assert_eq!(t.stats().corrections.removed, 1);
    check_counts(&t);

    // A second identical dump changes nothing more.
    let again = t.reconcile(&snapshot(taken, snap.sockets.clone()), None);
    assert_eq!((again.added, again.removed, again.state_fixed), (0, 0, 0));
}

#[test]
fn socket_closed_after_the_dump_was_taken_is_not_brought_back() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let sk = fx.sock("10.0.0.1:40001", "10.0.0.2:443");
    established(&mut fx, &mut t, &sk);
    let taken = fx.step(MS).ts;
    t.apply(&fx.step(MS).tr(&sk, Established, Close, &SWAPPER));
    assert!(t.is_empty());
    let st = t.reconcile(
        &snapshot(
            taken,
            vec![ks(
                Established,
                "10.0.0.1:40001",
                "10.0.0.2:443",
                sk.id.cookie,
                9,
            )],
        ),
        None,
    );
    assert_eq!((st.added, st.skipped_closed), (0, 1));
    assert!(t.is_empty());
}

#[test]
fn classic_path_matches_by_tuple_and_events_adopt_dumped_sockets() {
    let mut fx = Fx::classic();
    let mut t = SocketTable::new(Limits::default());
    let sk = fx.sock("10.0.0.1:8080", "10.0.0.3:5000");
    let taken = fx.ts;
    t.reconcile(
        &snapshot(
            taken,
            vec![ks(CloseWait, "10.0.0.1:8080", "10.0.0.3:5000", 42, 9)],
        ),
        None,
    );
    assert_eq!(t.len(), 1);
    // The first event carries only the skaddr: the 4-tuple ties it to the dumped socket.
    fx.step(SEC);
    let a = t.apply(&fx.tr(&sk, CloseWait, LastAck, &Ctx::Owner(9, "leaker")));
    assert!(!a.mismatch);
    assert_eq!(t.len(), 1);
    let v = find(&t, &sk).unwrap();
    assert_eq!((v.state, v.cookie, v.owner.unwrap().pid), (LastAck, 42, 9));
    assert_eq!(a.dwell_ns, None, "CLOSE_WAIT began before we started");
    t.apply(&fx.step(1).tr(&sk, LastAck, Close, &SWAPPER));
    assert!(t.is_empty());
}

#[test]
fn classic_path_learns_a_connects_local_port_from_the_dump() {
    let mut fx = Fx::classic();
    let mut t = SocketTable::new(Limits::default());
    // connect() to a black hole: SYN_SENT shows local port 0 and nothing else ever comes.
    let sk = fx.sock("10.0.0.1:0", "10.0.0.99:443");
    t.apply(&fx.tr(&sk, Close, SynSent, &Ctx::Owner(7, "app")));
    let st = t.reconcile(
        &snapshot(
            fx.step(SEC).ts,
            vec![ks(SynSent, "10.0.0.1:41234", "10.0.0.99:443", 5, 8)],
        ),
        None,
    );
    assert_eq!((st.added, st.removed, st.tuple_fixed), (0, 0, 1));
    let v = t.iter().next().unwrap();
    assert_eq!(v.local.port(), 41234);
    assert_eq!(v.owner.unwrap().pid, 7, "the connect()'s owner is kept");
}

#[test]
fn reconcile_corrects_time_wait_we_missed_and_removes_one_killed_early() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let a = fx.sock("10.0.0.1:40001", "10.0.0.2:443");
    let b = fx.sock("10.0.0.1:40002", "10.0.0.2:443");
    established(&mut fx, &mut t, &a);
    established(&mut fx, &mut t, &b);
    for sk in [&a, &b] {
        t.apply(
            &fx.step(MS)
                .tr(sk, Established, FinWait1, &Ctx::Owner(7, "app")),
        );
        t.apply(&fx.step(MS).tr(sk, FinWait1, FinWait2, &SWAPPER));
    }
    // a's FIN_WAIT2 -> CLOSE was lost; b's timewait socket was killed (tcp_max_tw_buckets).
    t.apply(&fx.step(MS).tr(&b, FinWait2, Close, &SWAPPER));
    let taken = fx.step(10 * SEC).ts;
    let mut tw = ks(TimeWait, "10.0.0.1:40001", "10.0.0.2:443", a.id.cookie, 0);
    tw.timer_ms = Some(50_000);
    let st = t.reconcile(&snapshot(taken, vec![tw]), None);
    assert_eq!((st.state_fixed, st.removed), (1, 1));
    assert_eq!(
        st.transitions_missed, 1,
        "FIN_WAIT2 -> CLOSE, the hand-over"
    );
    let v = find(&t, &a).unwrap();
    assert_eq!((v.state, v.timewait_socket), (TimeWait, true));
    assert_eq!(v.since_ns, Some(taken - (TIMEWAIT_LEN_NS - 50 * SEC)));
    assert_eq!(state_of(&t, &b), None);
    check_counts(&t);
}

#[test]
fn classic_path_reset_on_a_dumped_socket_marks_its_close() {
    let mut fx = Fx::classic();
    let mut t = SocketTable::new(Limits::default());
    let sk = fx.sock("10.0.0.1:40000", "10.0.0.2:443");
    let taken = fx.ts;
    t.reconcile(
        &snapshot(
            taken,
            vec![ks(FinWait2, "10.0.0.1:40000", "10.0.0.2:443", 42, 9)],
        ),
        None,
    );
    assert!(
        !find(&t, &sk).unwrap().timewait_socket,
        "it has an inode: a full socket"
    );
    fx.step(SEC);
    t.apply(&fx.ev(&sk, crate::event::What::ResetReceived, &SWAPPER));
    let a = t.apply(&fx.step(1).tr(&sk, FinWait2, Close, &SWAPPER));
    assert_eq!(a.state, None, "a reset close, not TIME_WAIT");
    assert!(t.is_empty());
    assert_eq!(t.stats().reset_closes, 1);
}

#[test]
fn a_timewait_substate_we_inferred_wrong_is_a_substate_fix_not_a_lost_event() {
    // The client closed first while its local peer was not known yet (it predates us and the
    // start-up dump was not applied), so its timewait socket was inferred TIME_WAIT; the kernel
    // shows it still waiting in FIN_WAIT2 for the peer's FIN, which no event would have told us.
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let c = fx.sock("127.0.0.1:40001", "127.0.0.1:8080");
    time_wait(&mut fx, &mut t, &c);
    assert_eq!(state_of(&t, &c), Some(TimeWait));
    let taken = fx.step(SEC).ts;
    let held = ks(
        FinWait2,
        "127.0.0.1:40001",
        "127.0.0.1:8080",
        c.id.cookie,
        0,
    );
    let peer = ks(CloseWait, "127.0.0.1:8080", "127.0.0.1:40001", 999, 42);
    let st = t.reconcile(&snapshot(taken, vec![held, peer]), None);
    assert_eq!((st.substate_fixed, st.state_fixed, st.added), (1, 0, 1));
    assert_eq!(state_of(&t, &c), Some(FinWait2));
    check_counts(&t);
}

#[test]
fn a_dump_applied_ahead_of_the_ring_shows_as_stale_events() {
    // What the integration tests watch for: a dump applied before the transitions still in the
    // ring moves the socket past them, and they then arrive older than what the table knows.
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let c = fx.sock("10.0.0.1:40001", "10.0.0.2:443");
    established(&mut fx, &mut t, &c);
    t.apply(
        &fx.step(MS)
            .tr(&c, Established, FinWait1, &Ctx::Owner(7, "app")),
    );
    let in_ring = [
        fx.step(MS).tr(&c, FinWait1, FinWait2, &SWAPPER),
        fx.step(MS).tr(&c, FinWait2, Close, &SWAPPER),
    ];
    let taken = fx.step(MS).ts;
    let mut tw = ks(TimeWait, "10.0.0.1:40001", "10.0.0.2:443", c.id.cookie, 0);
    tw.timer_ms = Some(59_000);
    let st = t.reconcile(&snapshot(taken, vec![tw]), None);
    assert_eq!(st.state_fixed, 1);
    assert_eq!(
        st.transitions_missed, 2,
        "FIN_WAIT1 -> FIN_WAIT2 -> CLOSE: both events still in the ring"
    );
    for ev in &in_ring {
        t.apply(ev);
    }
    assert!(t.stats().stale >= 1, "{:?}", t.stats());
    check_counts(&t);
}

#[test]
fn a_large_dump_lets_the_rings_be_read_while_it_is_applied_and_gives_the_same_table() {
    use super::super::reconcile::KEEP_UP_EVERY;
    // 3.5 x KEEP_UP_EVERY TIME_WAIT sockets, as at the cap: applied in one call, the rings
    // would wait for all of it.
    let n = KEEP_UP_EVERY * 7 / 2;
    let sockets: Vec<_> = (0..n)
        .map(|i| {
            let local = format!("10.0.{}.{}:40000", i / 250, i % 250 + 1);
            ks(TimeWait, &local, "10.0.0.2:443", 1 + u64::from(i), 0)
        })
        .collect();
    let snap = snapshot(5_000 * SEC, sockets);
    let mut paced = SocketTable::new(Limits::default());
    let mut calls = 0;
    let st = paced.reconcile_keeping_up(&snap, None, &mut || calls += 1);
    // Once per KEEP_UP_EVERY sockets of the dump and of the table's passes (the table grows
    // to n during the first): at least the dump's share.
    assert!(calls >= 3, "{calls} calls for {n} sockets");
    let mut whole = SocketTable::new(Limits::default());
    assert_eq!(whole.reconcile(&snap, None), st);
    assert_eq!(st.added, u64::from(n));
    assert_eq!(paced.counts().get(TimeWait), whole.counts().get(TimeWait));
    check_counts(&paced);
}

#[test]
fn closes_during_a_slow_dump_are_remembered_past_the_tombstone_bound() {
    use super::super::stats::ReconcileStats;
    // 1,000 sockets close over 3 s while a dump that shows them is taken; the table remembers
    // 64 closes, and beyond that those younger than twice the last dump's delay (1 s at least).
    let run = |after_a_slow_dump: bool| -> ReconcileStats {
        let mut fx = Fx::new();
        let mut t = SocketTable::new(Limits {
            max_tombstones: 64,
            ..Limits::default()
        });
        let socks: Vec<Sk> = (0..1000)
            .map(|i| {
                let local = format!("10.0.{}.{}:40000", i / 250, i % 250 + 1);
                fx.sock(&local, "10.0.0.2:443")
            })
            .collect();
        for s in &socks {
            established(&mut fx, &mut t, s);
        }
        if after_a_slow_dump {
            // A dump applied 2 s after it began: the newest close then is 2 s younger.
            let one = fx.sock("10.9.0.1:1000", "10.0.0.2:443");
            established(&mut fx, &mut t, &one);
            let taken = fx.ts;
            t.apply(&fx.step(2 * SEC).tr(&one, Established, Close, &SWAPPER));
            t.reconcile(&snapshot(taken, vec![]), None);
        }
        let taken = fx.ts;
        let shown = socks
            .iter()
            .map(|s| {
                let (l, r) = (s.local.to_string(), s.remote.to_string());
                ks(Established, &l, &r, s.id.cookie, 0)
            })
            .collect();
        for s in &socks {
            t.apply(&fx.step(3 * MS).tr(s, Established, Close, &SWAPPER));
        }
        let st = t.reconcile(&snapshot(taken, shown), None);
        check_counts(&t);
        st
    };
    let forgot = run(false);
    assert!(
        forgot.added > 0,
        "the 1 s floor alone forgets the oldest closes: {forgot:?}"
    );
    let st = run(true);
    assert_eq!((st.added, st.skipped_closed), (0, 1000), "{st:?}");
    assert_eq!(st.removed, 0);
}
