//! TIME_WAIT inference: the held FIN_WAIT2, expiry, reuse, reset.

use tcptrace_common::TcpState::{self, *};

use super::super::change::{Change, LeaveReason, Outcome, Subject};
use super::super::fixtures::*;
use super::super::table::{Limits, SocketTable, TIMEWAIT_LEN_NS};
use super::{check_counts, find, state_of};
use crate::event::What;

fn connected(fx: &mut Fx, t: &mut SocketTable, cport: u16) -> Loopback {
    let lb = Loopback::new(fx, cport);
    lb.listen(fx, t);
    lb.connect(fx, t);
    lb
}

#[test]
fn close_wait_leak_holds_the_client_in_fin_wait2_until_the_server_closes() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits {
        fin_timeout_ns: 3600 * SEC,
        ..Limits::default()
    });
    let lb = connected(&mut fx, &mut t, 40010);
    lb.client_closes(&mut fx, &mut t);
    let fw2_since = find(&t, &lb.client).unwrap().since_ns.unwrap();
    // The server leaks the socket for 10 minutes.
    fx.step(600 * SEC);
    assert!(t.expire(fx.ts).is_empty());
    assert_eq!(state_of(&t, &lb.client), Some(FinWait2));
    assert_eq!(state_of(&t, &lb.server), Some(CloseWait));
    assert_eq!(
        (t.counts().get(FinWait2), t.counts().get(CloseWait)),
        (1, 1)
    );
    assert_eq!(t.counts().get(TimeWait), 0);

    let out = lb.server_closes(&mut fx, &mut t);
    let fin_ts = fx.ts - 10_000;
    assert!(out[0].changes().contains(&(
        Subject::Other,
        Change::Left {
            state: FinWait2,
            dwell_ns: Some(fin_ts - fw2_since),
            reason: LeaveReason::Transition
        }
    )));
    // The server's CLOSE_WAIT dwell is the leak's length.
    assert!(out[0].dwell_ns.unwrap() >= 600 * SEC);
    let c = find(&t, &lb.client).unwrap();
    assert_eq!((c.state, c.since_ns), (TimeWait, Some(fin_ts)));
    check_counts(&t);
}

#[test]
fn time_wait_expires_after_exactly_60_seconds() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let lb = connected(&mut fx, &mut t, 40011);
    lb.client_closes(&mut fx, &mut t);
    lb.server_closes(&mut fx, &mut t);
    let since = find(&t, &lb.client).unwrap().since_ns.unwrap();
    assert!(t.expire(since + TIMEWAIT_LEN_NS - 1).is_empty());
    assert_eq!(state_of(&t, &lb.client), Some(TimeWait));
    let out = t.expire(since + TIMEWAIT_LEN_NS + 5 * SEC);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].sock.local, lb.client.local);
    assert_eq!(out[0].sock.owner.unwrap().pid, 200);
    assert_eq!(
        out[0].change,
        Change::Left {
            state: TimeWait,
            dwell_ns: Some(TIMEWAIT_LEN_NS),
            reason: LeaveReason::Expired
        }
    );
    assert_eq!(state_of(&t, &lb.client), None);
    assert_eq!(t.stats().timewait_expired, 1);
    check_counts(&t);
}

#[test]
fn held_fin_wait2_expires_after_fin_timeout() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits {
        fin_timeout_ns: 30 * SEC,
        ..Limits::default()
    });
    let lb = connected(&mut fx, &mut t, 40012);
    lb.client_closes(&mut fx, &mut t);
    let born = fx.ts; // FIN_WAIT2 -> CLOSE was the last event
    assert!(t.expire(born + 30 * SEC - 1).is_empty());
    let out = t.expire(born + 30 * SEC);
    assert_eq!(out.len(), 1);
    assert!(matches!(
        out[0].change,
        Change::Left {
            state: FinWait2,
            reason: LeaveReason::Expired,
            ..
        }
    ));
    assert_eq!(state_of(&t, &lb.client), None);
    // The server, still in CLOSE_WAIT, closes later: nothing to turn into TIME_WAIT.
    let out = lb.server_closes(&mut fx, &mut t);
    assert!(out[0].other.is_none());
    assert_eq!(t.counts().get(TimeWait), 0);
    assert!(t.expiries.is_empty(), "{} deadlines left", t.expiries.len());
    check_counts(&t);
}

/// Timewait sockets ended by their exact end event leave their deadlines behind, and their
/// slots go to new connections: the stale deadlines are dropped as they come due, not carried
/// over to the slot's next socket (which rescheduling them would do), so the heap holds at
/// most the deadlines set in the last minute and grace.
#[test]
fn deadlines_of_timewait_sockets_ended_by_their_event_do_not_pile_up() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    t.set_exact_timewait_end(true);
    let mut clients = Vec::new();
    for i in 0..600u16 {
        let lb = connected(&mut fx, &mut t, 20000 + i);
        lb.client_closes(&mut fx, &mut t);
        lb.server_closes(&mut fx, &mut t);
        clients.push(lb.client.clone());
        // The kernel's timer ends it 60 s later; in between, a connection a second.
        if i >= 60 {
            let end = fx.ev(&clients[usize::from(i) - 60], What::TimeWaitEnd, &SWAPPER);
            assert_eq!(t.apply(&end).outcome, Outcome::Applied);
        }
        fx.step(SEC);
        t.expire(fx.ts);
        // Two per socket: the orphan's FIN_WAIT2 deadline, then its TIME_WAIT one.
        assert!(
            t.expiries.len() <= 2 * (60 + 11),
            "{} deadlines held for {} timewait sockets",
            t.expiries.len(),
            t.counts().get(TimeWait)
        );
    }
    check_counts(&t);
}

#[test]
fn reuse_of_the_four_tuple_ends_time_wait() {
    for classic in [false, true] {
        let mut fx = if classic { Fx::classic() } else { Fx::new() };
        let mut t = SocketTable::new(Limits::default());
        let lb = connected(&mut fx, &mut t, 40013);
        lb.client_closes(&mut fx, &mut t);
        lb.server_closes(&mut fx, &mut t);
        let since = find(&t, &lb.client).unwrap().since_ns.unwrap();
        // tcp_tw_reuse: a new connect() from the same port to the same server.
        fx.step(2 * SEC);
        let again = fx.renew(&lb.client);
        let mut syn = again.clone();
        syn.local.set_port(0);
        t.apply(&fx.tr(&syn, Close, SynSent, &lb.client_ctx));
        assert_eq!(
            state_of(&t, &lb.client),
            Some(TimeWait),
            "port not known yet"
        );
        let a = t.apply(&fx.step(1).tr(&again, SynSent, Established, &SWAPPER));
        assert_eq!(a.other.unwrap().local, lb.client.local);
        assert!(a.changes().contains(&(
            Subject::Other,
            Change::Left {
                state: TimeWait,
                dwell_ns: Some(fx.ts - since),
                reason: LeaveReason::Reused
            }
        )));
        assert_eq!(
            state_of(&t, &lb.client),
            Some(Established),
            "classic={classic}"
        );
        assert_eq!(t.counts().get(TimeWait), 0);
        assert_eq!(t.stats().timewait_reused, 1);
        check_counts(&t);
    }
}

#[test]
fn server_side_time_wait_is_reused_by_a_new_accepted_socket() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let lb = connected(&mut fx, &mut t, 40014);
    let soft = SWAPPER;
    t.apply(
        &fx.step(MS)
            .tr(&lb.server, Established, FinWait1, &lb.server_ctx),
    );
    t.apply(&fx.step(1).tr(&lb.client, Established, CloseWait, &soft));
    t.apply(&fx.step(1).tr(&lb.server, FinWait1, FinWait2, &soft));
    t.apply(&fx.step(1).tr(&lb.server, FinWait2, Close, &soft));
    t.apply(
        &fx.step(1)
            .tr(&lb.client, CloseWait, LastAck, &lb.client_ctx),
    );
    t.apply(&fx.step(1).tr(&lb.client, LastAck, Close, &soft));
    assert_eq!(state_of(&t, &lb.server), Some(TimeWait));
    // The client reconnects from the same port: the SYN kills the server's timewait socket.
    let lb2 = Loopback {
        client: fx.renew(&lb.client),
        server: fx.renew(&lb.server),
        ..lb
    };
    lb2.connect(&mut fx, &mut t);
    assert_eq!(state_of(&t, &lb2.server), Some(Established));
    assert_eq!(t.counts().get(TimeWait), 0);
    assert_eq!(t.stats().timewait_reused, 1);
    check_counts(&t);
}

#[test]
fn reset_kills_a_time_wait_socket() {
    for classic in [false, true] {
        let mut fx = if classic { Fx::classic() } else { Fx::new() };
        let mut t = SocketTable::new(Limits::default());
        let lb = connected(&mut fx, &mut t, 40015);
        lb.client_closes(&mut fx, &mut t);
        lb.server_closes(&mut fx, &mut t);
        // The timewait socket has its own address on the classic path.
        let tw = if classic {
            fx.renew(&lb.client)
        } else {
            lb.client.clone()
        };
        let a = t.apply(&fx.step(SEC).ev(&tw, What::ResetSent, &SWAPPER));
        assert!(matches!(
            a.changes()[0].1,
            Change::Left {
                state: TimeWait,
                reason: LeaveReason::Reset,
                dwell_ns: Some(_)
            }
        ));
        assert_eq!(state_of(&t, &lb.client), None, "classic={classic}");
        check_counts(&t);
    }
}

#[test]
fn peer_abort_from_close_wait_kills_the_held_fin_wait2() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let lb = connected(&mut fx, &mut t, 40016);
    lb.client_closes(&mut fx, &mut t);
    assert_eq!(state_of(&t, &lb.client), Some(FinWait2));
    // The server closes with unread data: CLOSE_WAIT -> CLOSE and a RST to the client.
    let a = t.apply(&fx.step(MS).tr(&lb.server, CloseWait, Close, &lb.server_ctx));
    assert!(a.changes().iter().any(|(who, c)| *who == Subject::Other
        && matches!(
            c,
            Change::Left {
                state: FinWait2,
                reason: LeaveReason::Reset,
                ..
            }
        )));
    assert!(state_of(&t, &lb.client).is_none());
    assert_eq!(t.counts().get(TimeWait), 0);
}

/// A connect to a remote peer, closed by its app first, up to `last` (FIN_WAIT2, or CLOSING
/// in a simultaneous close).
fn active_close(fx: &mut Fx, t: &mut SocketTable, last: TcpState) -> Sk {
    let sk = fx.sock("10.0.0.1:50000", "10.0.0.2:443");
    t.apply(&fx.tr(&sk, Close, SynSent, &Ctx::Owner(7, "app")));
    t.apply(&fx.step(MS).tr(&sk, SynSent, Established, &SWAPPER));
    t.apply(
        &fx.step(MS)
            .tr(&sk, Established, FinWait1, &Ctx::Owner(7, "app")),
    );
    t.apply(&fx.step(MS).tr(&sk, FinWait1, last, &SWAPPER));
    sk
}

#[test]
fn remote_peer_fin_wait2_close_is_time_wait_at_once() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let sk = active_close(&mut fx, &mut t, FinWait2);
    let a = t.apply(&fx.step(MS).tr(&sk, FinWait2, Close, &SWAPPER));
    assert!(a.changes().contains(&(
        Subject::This,
        Change::Entered {
            state: TimeWait,
            at_ns: fx.ts
        }
    )));
    assert_eq!(find(&t, &sk).unwrap().since_ns, Some(fx.ts));
}

/// The kernel's TIME_WAIT table was full (`tcp_max_tw_buckets`): the program found no timewait
/// socket in the established hash at FIN_WAIT2 / CLOSING -> CLOSE. The connection is gone, not
/// in TIME_WAIT, whatever the state it closed from suggests.
#[test]
fn a_close_that_made_no_timewait_socket_leaves_no_time_wait() {
    for last in [FinWait2, Closing] {
        let mut fx = Fx::new();
        let mut t = SocketTable::new(Limits::default());
        let sk = active_close(&mut fx, &mut t, last);
        let mut ev = fx.step(MS).tr(&sk, last, Close, &SWAPPER);
        ev.timewait_read = Some(Close);
        let a = t.apply(&ev);
        assert!(
            a.changes()
                .iter()
                .any(|c| matches!(c.1, Change::Closed { .. })),
            "{last:?}: {:?}",
            a.changes()
        );
        assert!(
            !a.changes().iter().any(|c| matches!(
                c.1,
                Change::Entered {
                    state: TimeWait,
                    ..
                }
            )),
            "{last:?}"
        );
        assert!(
            a.changes()
                .contains(&(Subject::This, Change::TimeWaitRefused)),
            "{last:?}"
        );
        assert_eq!(find(&t, &sk), None, "{last:?}");
        assert_eq!(t.counts().get(TimeWait), 0);
        assert_eq!(
            (t.stats().timewait_skipped, t.stats().timewait_inferred),
            (1, 0)
        );
        check_counts(&t);
    }
}

/// The deadline heap against the rule it replaces (every timewait socket whose deadline has
/// passed, each once): staggered closes, expiry checks between them, freed slots reused by
/// later connections, held FIN_WAIT2 sockets that turn into TIME_WAIT (their deadline moves).
#[test]
fn expiry_returns_each_timewait_socket_once_at_its_deadline_in_deadline_order() {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits {
        fin_timeout_ns: 3600 * SEC,
        ..Limits::default()
    });
    // TIME_WAIT entry time per client, and when each expired.
    let mut made: HashMap<SocketAddr, u64> = HashMap::new();
    let mut expired: HashMap<SocketAddr, u64> = HashMap::new();
    let check =
        |t: &mut SocketTable, now: u64, made: &HashMap<_, u64>, expired: &mut HashMap<_, _>| {
            let mut last = 0;
            for c in t.expire(now) {
                assert_eq!(
                    c.change,
                    Change::Left {
                        state: TimeWait,
                        dwell_ns: Some(TIMEWAIT_LEN_NS),
                        reason: LeaveReason::Expired,
                    }
                );
                let local = c.sock.local;
                assert!(
                    expired.insert(local, now).is_none(),
                    "{local} expired twice"
                );
                // Earliest deadline first within one call.
                assert!(made[&local] >= last, "{local} out of deadline order");
                last = made[&local];
            }
        };
    let mut held = Vec::new();
    for i in 0..120u16 {
        let lb = connected(&mut fx, &mut t, 41000 + i);
        lb.client_closes(&mut fx, &mut t);
        if i % 5 == 0 {
            // The server leaks it a while: the client waits in FIN_WAIT2 (deadline an hour).
            held.push(lb);
        } else {
            lb.server_closes(&mut fx, &mut t);
            made.insert(
                lb.client.local,
                find(&t, &lb.client).unwrap().since_ns.unwrap(),
            );
        }
        fx.step(SEC);
        if i % 7 == 0 {
            check(&mut t, fx.ts, &made, &mut expired);
        }
        if i % 20 == 19 {
            // The held ones close now: their TIME_WAIT starts here, later than that of the
            // ones closed since, and their deadline moves from an hour to 60 s from now.
            for lb in held.drain(..) {
                lb.server_closes(&mut fx, &mut t);
                made.insert(
                    lb.client.local,
                    find(&t, &lb.client).unwrap().since_ns.unwrap(),
                );
            }
        }
    }
    let end = fx.ts + TIMEWAIT_LEN_NS + SEC;
    let mut now = fx.ts;
    while now < end {
        now += 3 * SEC;
        check(&mut t, now, &made, &mut expired);
    }
    assert_eq!(expired.len(), made.len(), "every TIME_WAIT socket expired");
    for (local, since) in made {
        let (at, deadline) = (expired[&local], since + TIMEWAIT_LEN_NS);
        assert!(
            at >= deadline,
            "{local} expired at {at}, before its deadline {deadline}"
        );
        assert!(
            at < deadline + 8 * SEC,
            "{local} expired late: {at}, deadline {deadline}"
        );
    }
    assert_eq!(t.counts().get(TimeWait), 0);
    check_counts(&t);
}
