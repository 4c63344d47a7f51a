//! Attribution: kernel context only, listener inheritance, fd scan, closer for TIME_WAIT.

use std::collections::HashMap;

use tcptrace_common::TcpState::*;

use super::super::FdHolders;
use super::super::fixtures::*;
use super::super::owner::Attribution;
use super::super::table::{Limits, SocketTable};
use super::{find, holder};

#[test]
fn softirq_task_is_never_the_owner() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    // A socket first seen in softirq, with the PEER's pid current on this CPU.
    let sk = fx.sock("127.0.0.1:8080", "127.0.0.1:40100");
    let peer = Ctx::Softirq(200, "curl");
    t.apply(&fx.tr(&sk, SynRecv, Established, &peer));
    t.apply(&fx.step(MS).tr(&sk, Established, CloseWait, &peer));
    let v = find(&t, &sk).unwrap();
    assert_eq!(v.owner, None, "pid 200 is the peer, not the owner");
    assert_eq!(v.attribution, None);
    // Swapper in "owner context" is still not an owner.
    let a = t.apply(
        &fx.step(MS)
            .tr(&sk, CloseWait, LastAck, &Ctx::Owner(0, "swapper/0")),
    );
    assert_eq!(a.sock.unwrap().owner, None);
}

#[test]
fn loopback_softirq_events_carry_the_peer_and_are_ignored() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let lb = Loopback::new(&mut fx, 40101);
    lb.listen(&mut fx, &mut t);
    lb.connect(&mut fx, &mut t);
    // The child's events all ran in the client's (pid 200) softirq context.
    let s = find(&t, &lb.server).unwrap();
    assert_eq!(s.owner.unwrap().pid, 100);
    assert_eq!(s.attribution, Some(Attribution::Listener));
    lb.client_closes(&mut fx, &mut t);
    let s = find(&t, &lb.server).unwrap();
    assert_eq!(
        s.owner.unwrap().pid,
        100,
        "ESTABLISHED -> CLOSE_WAIT ran as pid 200"
    );
    let c = find(&t, &lb.client).unwrap();
    assert_eq!(c.owner.unwrap().pid, 200);
    assert_eq!(c.owner.unwrap().comm.as_str(), "curl");
    assert_eq!(c.owner.unwrap().cgroup_id, 300);
}

#[test]
fn accepted_sockets_inherit_the_listener_owner() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let wild = fx.sock("0.0.0.0:80", "0.0.0.0:0");
    let exact = fx.sock("127.0.0.2:80", "0.0.0.0:0");
    t.apply(&fx.tr(&wild, Close, Listen, &Ctx::Owner(1, "nginx")));
    t.apply(&fx.tr(&exact, Close, Listen, &Ctx::Owner(2, "haproxy")));
    for (local_first, local, want) in [
        ("0.0.0.0:80", "10.0.0.1:80", 1),
        ("127.0.0.2:80", "127.0.0.2:80", 2),
    ] {
        let child = fx.sock(local_first, "0.0.0.0:0");
        t.apply(&fx.step(MS).tr(&child, Listen, SynRecv, &SWAPPER));
        let full = super::super::fixtures::Sk {
            local: addr(local),
            remote: addr("10.9.9.9:5000"),
            ..child.clone()
        };
        t.apply(
            &fx.step(1)
                .tr(&full, SynRecv, Established, &Ctx::Softirq(999, "other")),
        );
        let v = find(&t, &full).unwrap();
        assert_eq!(v.owner.unwrap().pid, want);
        assert_eq!(v.attribution, Some(Attribution::Listener));
        // close() by the accepting process: now exact.
        t.apply(&fx.step(1).tr(
            &full,
            Established,
            FinWait1,
            &Ctx::Owner(want + 10, "worker"),
        ));
        let v = find(&t, &full).unwrap();
        assert_eq!(v.owner.unwrap().pid, want + 10);
        assert_eq!(v.attribution, Some(Attribution::KernelContext));
    }
}

#[test]
fn time_wait_is_attributed_to_the_closer() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let lb = Loopback::new(&mut fx, 40102);
    lb.listen(&mut fx, &mut t);
    lb.connect(&mut fx, &mut t);
    // The fd was passed to another process (pid 300), which closes it.
    fx.step(MS);
    t.apply(&fx.tr(
        &lb.server,
        Established,
        FinWait1,
        &Ctx::Owner(300, "worker"),
    ));
    let soft = SWAPPER;
    t.apply(&fx.step(1).tr(&lb.client, Established, CloseWait, &soft));
    t.apply(&fx.step(1).tr(&lb.server, FinWait1, FinWait2, &soft));
    t.apply(&fx.step(1).tr(&lb.server, FinWait2, Close, &soft));
    t.apply(
        &fx.step(1)
            .tr(&lb.client, CloseWait, LastAck, &lb.client_ctx),
    );
    let v = find(&t, &lb.server).unwrap();
    assert_eq!(v.state, TimeWait);
    assert_eq!(v.owner.unwrap().pid, 300);
    assert_eq!(v.closer.unwrap().pid, 300);
    assert_eq!(v.attribution, Some(Attribution::KernelContext));
}

#[test]
fn fd_scan_confirms_and_corrects_owners_by_inode() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let lb = Loopback::new(&mut fx, 40103);
    lb.listen(&mut fx, &mut t);
    lb.connect(&mut fx, &mut t);
    lb.client_closes(&mut fx, &mut t);
    // A dump teaches the inodes.
    fx.step(MS);
    let snap = snapshot(
        fx.ts,
        vec![
            ks(Listen, "0.0.0.0:8080", "0.0.0.0:0", 1001, 5000),
            ks(FinWait2, "127.0.0.1:40103", "127.0.0.1:8080", 1002, 0),
            ks(CloseWait, "127.0.0.1:8080", "127.0.0.1:40103", 1003, 5001),
        ],
    );
    let st = t.reconcile(&snap, None);
    assert_eq!((st.added, st.removed, st.state_fixed), (0, 0, 0));
    assert_eq!(st.inode_learned, 2);
    // The accepted socket was handed to a child process (pid 101); the listener is still 100's.
    let fd: FdHolders = HashMap::from([
        (5000, vec![holder(100, "server")]),
        (
            5001,
            vec![holder(101, "server-worker"), holder(100, "server")],
        ),
    ]);
    let st = t.apply_fd_scan(&fd);
    assert_eq!(
        (st.confirmed, st.assigned),
        (2, 0),
        "pid 100 still holds both"
    );
    let fd: FdHolders = HashMap::from([(5001, vec![holder(101, "server-worker")])]);
    let st = t.apply_fd_scan(&fd);
    assert_eq!((st.confirmed, st.assigned), (0, 1));
    let v = find(&t, &lb.server).unwrap();
    assert_eq!(v.owner.unwrap().pid, 101);
    assert_eq!(v.owner.unwrap().comm.as_str(), "server-worker");
    assert_eq!(v.attribution, Some(Attribution::FdScan));
}

/// Up to at least 6.1 the child's LISTEN->SYN_RECV fires before the kernel gives it its cookie,
/// so the probe sends that event keyed by address only; the next event, with the cookie, must
/// land on the same socket, which keeps its listener owner and its SYN_RECV dwell.
#[test]
fn accepted_child_first_seen_without_cookie_keeps_its_identity() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits::default());
    let lb = Loopback::new(&mut fx, 40102);
    lb.listen(&mut fx, &mut t);
    let soft = Loopback::peer_softirq(&lb.client_ctx);
    let mut child = lb.server.clone();
    child.local = lb.listener.local;
    child.remote = addr("0.0.0.0:0");
    child.id.cookie = 0;
    fx.step(MS);
    t.apply(&fx.tr(&child, Listen, SynRecv, &soft));
    fx.step(2_000);
    let a = t.apply(&fx.tr(&lb.server, SynRecv, Established, &soft));
    assert_eq!(
        a.dwell_ns,
        Some(2_000),
        "same socket: its SYN_RECV stay is known"
    );
    assert_eq!(a.sock.unwrap().owner.unwrap().pid, 100);
    assert_eq!(t.len(), 2, "listener and one child, not two children");
}
