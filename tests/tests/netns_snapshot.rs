//! The kernel socket table of every network namespace, against real processes running inside
//! namespaces made with `ip netns add`, with `ss` run in each namespace as the referee.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tcptrace::owner::fdscan::scan_socket_owners;
use tcptrace::source::netns::{NetnsRef, dump_all_namespaces, dump_in, list_netns};
use tcptrace::source::snapshot::KernelSocket;
use tcptrace_common::TcpState;
use tcptrace_tests::netns::{TestNetns, as_ss, link_inode};
use tcptrace_tests::{Proc, free_port};

const T: Duration = Duration::from_secs(10);

fn in_ns<'a>(rows: &'a [KernelSocket], ns: &NetnsRef) -> Vec<&'a KernelSocket> {
    rows.iter().filter(|s| s.netns == ns.inode).collect()
}

/// `connected LOCAL PEER` -> LOCAL.
fn local_of(line: &str) -> SocketAddr {
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// The same port listening in two namespaces; in A the server leaks the accepted socket after
/// the client closes (CLOSE_WAIT), in B it closes it (the client ends in TIME_WAIT).
#[test]
fn close_wait_leak_is_reported_in_its_own_namespace_only() {
    let (a, b) = (TestNetns::add(), TestNetns::add());
    let (na, nb) = (a.netns_ref(), b.netns_ref());
    assert_ne!(na.inode, nb.inode);
    let port = free_port("127.0.0.1".parse().unwrap());
    let bind = format!("127.0.0.1:{port}");
    // --conns 2: the server keeps listening after the one connection the test makes.
    let mut server_a = a.scenario(&[
        "server", "--bind", &bind, "--conns", "2", "--on-eof", "leak",
    ]);
    let mut server_b = b.scenario(&[
        "server", "--bind", &bind, "--conns", "2", "--on-eof", "close",
    ]);
    for s in [&mut server_a, &mut server_b] {
        assert_eq!(s.expect("listening", T), port.to_string());
    }
    let mut client_a = a.scenario(&["client", "--connect", &bind, "--hold-ms", "10"]);
    let mut client_b = b.scenario(&["client", "--connect", &bind, "--hold-ms", "10"]);
    let from_a = local_of(&client_a.expect("connected", T));
    let from_b = local_of(&client_b.expect("connected", T));
    client_a.wait_done(T);
    client_b.wait_done(T);
    let listen: SocketAddr = bind.parse().unwrap();

    // Wait until both closes have run their course, on both ends: in A the server's socket in
    // CLOSE_WAIT and the client's in FIN_WAIT2; in B the client's in TIME_WAIT and the server's
    // gone (LAST_ACK -> CLOSE).
    let mut want_a = vec![
        (TcpState::FinWait2, from_a),
        (TcpState::CloseWait, listen),
        (TcpState::Listen, listen),
    ];
    let mut want_b = vec![(TcpState::TimeWait, from_b), (TcpState::Listen, listen)];
    want_a.sort();
    want_b.sort();
    let deadline = Instant::now() + T;
    let snap = loop {
        let snap = dump_all_namespaces().unwrap();
        let table = |ns: &NetnsRef| {
            let mut v: Vec<_> = in_ns(&snap.sockets, ns)
                .iter()
                .map(|s| (s.state, s.local))
                .collect();
            v.sort();
            v
        };
        if table(&na) == want_a && table(&nb) == want_b {
            break snap;
        }
        assert!(
            Instant::now() < deadline,
            "never settled: A {:?}, B {:?}\n{}\n{}",
            in_ns(&snap.sockets, &na),
            in_ns(&snap.sockets, &nb),
            a.tcp_state(),
            b.tcp_state()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let (ra, rb) = (in_ns(&snap.sockets, &na), in_ns(&snap.sockets, &nb));

    // The leak, in A only, with the client A's server accepted.
    let cw: Vec<_> = ra
        .iter()
        .filter(|s| s.state == TcpState::CloseWait)
        .collect();
    assert_eq!(cw.len(), 1, "{ra:?}");
    assert_eq!((cw[0].local, cw[0].remote), (listen, from_a));
    assert_ne!(cw[0].inode, 0, "a leaked socket still has its file");
    assert!(rb.iter().all(|s| s.state != TcpState::CloseWait), "{rb:?}");

    // Both listeners: identical 4-tuples, two rows, two sockets.
    let listeners: Vec<_> = snap
        .sockets
        .iter()
        .filter(|s| s.state == TcpState::Listen && s.local == listen)
        .collect();
    assert_eq!(
        listeners.iter().map(|s| s.netns).collect::<HashSet<_>>(),
        HashSet::from([na.inode, nb.inode]),
        "{listeners:?}"
    );
    assert_eq!(listeners.len(), 2);
    assert_eq!(listeners[0].remote, listeners[1].remote);
    assert_ne!(listeners[0].inode, listeners[1].inode);
    assert_ne!(listeners[0].cookie, listeners[1].cookie);

    // Every row of each namespace, as `ss` run inside it shows them. Nothing else runs in these
    // namespaces, and TIME_WAIT / orphaned FIN_WAIT2 last 60 s, so the tables hold still.
    for (ns, rows) in [(&a, &ra), (&b, &rb)] {
        assert_eq!(
            as_ss(rows.iter().copied()),
            ns.ss(),
            "namespace {}",
            ns.name
        );
    }
    // A dump of one namespace reads the same table.
    let only_a = dump_in(&na).unwrap();
    assert_eq!(as_ss(&only_a), as_ss(ra.iter().copied()));

    // The fd scan finds the leaking process, inside A, by the socket's inode alone.
    let owners = scan_socket_owners(Some(&HashSet::from([cw[0].inode])));
    let found = owners
        .get(&cw[0].inode)
        .unwrap_or_else(|| panic!("no owner: {owners:?}"));
    assert_eq!(
        found
            .iter()
            .map(|p| (p.pid, p.comm.as_str()))
            .collect::<Vec<_>>(),
        vec![(server_a.pid(), "tcpscenario")]
    );
    // And each listener's owner is the server of its own namespace.
    let owners = scan_socket_owners(Some(&listeners.iter().map(|s| s.inode).collect()));
    for l in &listeners {
        let want = if l.netns == na.inode {
            server_a.pid()
        } else {
            server_b.pid()
        };
        let pids: Vec<u32> = owners[&l.inode].iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![want], "listener in {}", l.netns);
    }

    // The clients wait for their stdin to close; the servers still wait for a second
    // connection, so dropping them kills them.
    client_a.finish();
    client_b.finish();
    drop((server_a, server_b));
}

/// Namespaces from processes and from `/run/netns` both show up, each once.
#[test]
fn namespaces_of_processes_and_names_are_listed_once() {
    let named = TestNetns::add();
    let mut in_named = named.scenario(&["server", "--bind", "127.0.0.1:0"]);
    in_named.expect("listening", T);
    // A namespace that only a process holds, with no name.
    let unnamed = Proc::spawn(Command::new("unshare").args(["-n", "sleep", "30"]));
    let path = format!("/proc/{}/ns/net", unnamed.pid());
    let deadline = Instant::now() + T;
    let ours = list_netns()[0].inode;
    let unnamed_ino = loop {
        let ino = link_inode(Path::new(&path));
        if ino != ours {
            break ino;
        }
        assert!(
            Instant::now() < deadline,
            "unshare never entered a namespace"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let all = list_netns();
    let inodes: Vec<u32> = all.iter().map(|n| n.inode).collect();
    assert_eq!(
        inodes.iter().collect::<HashSet<_>>().len(),
        inodes.len(),
        "{all:?}"
    );
    let named_ref = named.netns_ref();
    assert_eq!(named_ref.path, named.path());
    let unnamed_ref = all
        .iter()
        .find(|n| n.inode == unnamed_ino)
        .expect("unnamed listed");
    assert_eq!(unnamed_ref.name, None);
    // Entered through the lowest pid in it: the sleep (ip netns exec children are elsewhere).
    assert_eq!(unnamed_ref.path, std::path::PathBuf::from(&path));
    assert_eq!(dump_in(unnamed_ref).unwrap(), vec![]);
    // Dropping kills both: the server still waits for its connection.
    drop((unnamed, in_named));
}
