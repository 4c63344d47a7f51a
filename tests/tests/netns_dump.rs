//! The TCP table of network namespaces this test makes with `ip netns add`, with sockets its
//! own threads open inside them: `list_netns`, `dump_in`, `scan_namespaces` and
//! `dump_all_namespaces`, with `ss` run in each namespace as the referee. Root only.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tcptrace::owner::fdscan::scan_socket_owners;
use tcptrace::source::netns::{
    DEFAULT_SCAN_BUDGET, NetnsRef, NetnsScan, current_netns, dump_all_namespaces, dump_in,
    list_netns, scan_namespaces,
};
use tcptrace::source::snapshot::KernelSocket;
use tcptrace::source::sock_diag::{self, SockDiagError};
use tcptrace_common::TcpState;
use tcptrace_tests::netns::{RUN_NETNS, TestNetns, as_ss, inode_of, link_inode};

#[test]
fn a_named_namespace_without_processes_is_listed_by_name() {
    let ns = TestNetns::add();
    let all = list_netns();
    let found = all
        .iter()
        .find(|n| n.inode == ns.inode())
        .unwrap_or_else(|| panic!("{} not in {all:?}", ns.name));
    assert_eq!(found, &ns.expected_ref());
    // Nothing listens in a fresh namespace; `lo` being up creates no socket.
    assert_eq!(dump_in(found).unwrap(), vec![]);
}

#[test]
fn a_leftover_file_in_run_netns_is_not_a_namespace() {
    // What a failed `ip netns add` leaves behind: the file without the bind mount on it.
    struct Leftover(PathBuf);
    impl Drop for Leftover {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    std::fs::create_dir_all(RUN_NETNS).unwrap();
    let name = format!("tcptrace-test-{}-leftover", std::process::id());
    let file = Leftover(Path::new(RUN_NETNS).join(&name));
    File::create(&file.0).unwrap();
    let ino = std::fs::metadata(&file.0).unwrap().ino();
    let all = list_netns();
    assert!(
        all.iter()
            .all(|n| n.name.as_deref() != Some(name.as_str()) && u64::from(n.inode) != ino),
        "{all:?}"
    );
}

#[test]
fn dump_in_reads_the_namespace_it_enters_and_leaves_the_caller_alone() {
    let ns = TestNetns::add();
    let listener = ns.run(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let addr = listener.local_addr().unwrap();
    let rows = dump_in(&ns.expected_ref()).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].netns, ns.inode());
    assert_eq!(rows[0].local, addr);
    assert_eq!(rows[0].inode, inode_of(&listener));
    assert_eq!(as_ss(&rows), ns.ss());
    // The socket is not in our namespace, and this thread never moved.
    let ours = sock_diag::dump_tcp(current_netns()).unwrap();
    assert!(ours.iter().all(|s| s.cookie != rows[0].cookie));
    assert_eq!(
        current_netns(),
        std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32
    );
}

/// The same listening 4-tuple in two namespaces, a CLOSE_WAIT in one of them only.
#[test]
fn identical_tuples_in_two_namespaces_stay_apart() {
    let (a, b) = (TestNetns::add(), TestNetns::add());
    let la = a.run(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let port = la.local_addr().unwrap().port();
    let lb = b.run(|| TcpListener::bind(("127.0.0.1", port)).unwrap());
    // A: the client closes, the accepted side keeps its socket open: CLOSE_WAIT.
    let client = a.run(|| TcpStream::connect(("127.0.0.1", port)).unwrap());
    let (leak, _) = la.accept().unwrap();
    let client_port = client.local_addr().unwrap().port();
    drop(client);
    let mut eof = [0u8; 1];
    assert_eq!((&leak).read(&mut eof).unwrap(), 0);

    // Reading EOF can come before the client has processed the ACK of its FIN: wait for
    // it to leave FIN_WAIT1, so the table holds still for `ss`.
    let deadline = Instant::now() + Duration::from_secs(5);
    let snap = loop {
        let snap = dump_all_namespaces().unwrap();
        let fin_wait2 = snap.sockets.iter().any(|s| {
            s.netns == a.inode() && s.state == TcpState::FinWait2 && s.local.port() == client_port
        });
        if fin_wait2 {
            break snap;
        }
        assert!(
            Instant::now() < deadline,
            "no FIN_WAIT2: {:?}",
            snap.sockets
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let rows = |ns: &TestNetns| -> Vec<KernelSocket> {
        let ino = ns.inode();
        snap.sockets
            .iter()
            .filter(|s| s.netns == ino)
            .cloned()
            .collect()
    };
    let (ra, rb) = (rows(&a), rows(&b));
    let listen = |rows: &[KernelSocket]| {
        rows.iter()
            .filter(|s| s.state == TcpState::Listen && s.local.port() == port)
            .map(|s| s.inode)
            .collect::<Vec<_>>()
    };
    assert_eq!(listen(&ra), vec![inode_of(&la)]);
    assert_eq!(listen(&rb), vec![inode_of(&lb)]);
    let cw: Vec<_> = ra
        .iter()
        .filter(|s| s.state == TcpState::CloseWait)
        .collect();
    assert_eq!(cw.len(), 1, "{ra:?}");
    assert_eq!(
        (cw[0].local.port(), cw[0].remote.port()),
        (port, client_port)
    );
    assert_eq!(cw[0].inode, inode_of(&leak));
    assert!(rb.iter().all(|s| s.state != TcpState::CloseWait), "{rb:?}");
    for ns in [&a, &b] {
        assert_eq!(as_ss(&rows(ns)), ns.ss(), "namespace {}", ns.name);
    }
    // The fd scan finds the leaking socket by inode whatever namespace it lives in.
    let owners = scan_socket_owners(Some(&HashSet::from([cw[0].inode])));
    assert!(
        owners[&cw[0].inode]
            .iter()
            .any(|p| p.pid == std::process::id()),
        "{owners:?}"
    );
}

#[test]
fn vanished_namespaces_are_counted_not_fatal() {
    let kept = TestNetns::add();
    let deleted = TestNetns::add();
    let deleted_ref = deleted.expected_ref();
    drop(deleted);
    assert!(matches!(
        dump_in(&deleted_ref),
        Err(SockDiagError::NetnsGone { .. })
    ));
    // A path that now leads to another namespace, as a reused pid would.
    let moved = NetnsRef {
        inode: kept.inode(),
        path: "/proc/self/ns/net".into(),
        name: None,
    };
    assert!(matches!(
        dump_in(&moved),
        Err(SockDiagError::NetnsGone { .. })
    ));
    let scan = scan_namespaces(
        &[deleted_ref, kept.expected_ref(), moved],
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(scan.vanished, 2);
    assert!(scan.failed.is_empty(), "{:?}", scan.failed);
    assert_eq!(
        scan.dumped.iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![kept.inode()]
    );
}

#[test]
fn an_exited_process_namespace_is_gone() {
    // A namespace only a short-lived process holds: gone once the process is.
    let mut child = Command::new("unshare")
        .args(["-n", "sleep", "0.2"])
        .spawn()
        .unwrap();
    let path = PathBuf::from(format!("/proc/{}/ns/net", child.id()));
    let deadline = Instant::now() + Duration::from_secs(3);
    // unshare execs sleep after entering the new namespace.
    let ns = loop {
        let inode = link_inode(&path);
        if inode != current_netns() {
            break NetnsRef {
                inode,
                path: path.clone(),
                name: None,
            };
        }
        assert!(
            Instant::now() < deadline,
            "unshare never entered a namespace"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(dump_in(&ns).unwrap(), vec![]);
    child.wait().unwrap();
    assert!(matches!(dump_in(&ns), Err(SockDiagError::NetnsGone { .. })));
}

#[test]
fn an_exhausted_budget_leaves_the_rest_unread_and_counted() {
    let ns: Vec<TestNetns> = (0..3).map(|_| TestNetns::add()).collect();
    let refs: Vec<NetnsRef> = ns.iter().map(TestNetns::expected_ref).collect();
    let scan = scan_namespaces(&refs, Duration::ZERO).unwrap();
    assert_eq!((scan.dumped.len(), scan.not_reached), (0, 3));
    let scan = scan_namespaces(&refs, Duration::from_secs(5)).unwrap();
    assert_eq!((scan.dumped.len(), scan.not_reached), (3, 0));
}

#[test]
fn snapshot_is_stamped_before_every_namespace_dump() {
    let ns = TestNetns::add();
    let _l = ns.run(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let before = tcptrace::clock::monotonic_ns();
    let scan = scan_namespaces(&list_netns(), DEFAULT_SCAN_BUDGET).unwrap();
    let after = tcptrace::clock::monotonic_ns();
    assert!(before <= scan.snapshot.taken_ns);
    let mut last = scan.snapshot.taken_ns;
    for &(_, started) in &scan.dumped {
        assert!(last <= started && started <= after);
        last = started;
    }
    assert!(scan.dumped.iter().any(|d| d.0 == ns.inode()));
    assert!(
        scan.snapshot
            .sockets
            .iter()
            .any(|s| s.netns == ns.inode() && s.state == TcpState::Listen)
    );
}

/// `cargo test -p tcptrace-tests --release --test netns_dump -- --ignored --nocapture dump_time_of_many`.
#[test]
#[ignore]
fn dump_time_of_many_namespaces() {
    for n in [50usize, 500] {
        let t = Instant::now();
        let ns: Vec<TestNetns> = (0..n).map(|_| TestNetns::add()).collect();
        eprintln!("created {n} namespaces in {:?}", t.elapsed());
        // One listener in each, so every dump has a row to parse.
        let _listeners: Vec<TcpListener> = ns
            .iter()
            .map(|ns| ns.run(|| TcpListener::bind("127.0.0.1:0").unwrap()))
            .collect();
        let t = Instant::now();
        let all = list_netns();
        let listed = t.elapsed();
        let mut times = Vec::new();
        let mut scan = NetnsScan::default();
        for _ in 0..5 {
            let t = Instant::now();
            scan = scan_namespaces(&all, Duration::from_secs(60)).unwrap();
            times.push(t.elapsed());
        }
        times.sort();
        eprintln!(
            "{n} test namespaces, {} listed in {listed:?}; scan of {} namespaces, {} sockets: \
             min {:?} median {:?} ({:?} per namespace)",
            all.len(),
            scan.dumped.len(),
            scan.snapshot.sockets.len(),
            times[0],
            times[2],
            times[2] / scan.dumped.len() as u32
        );
        for ns in &ns {
            assert_eq!(
                scan.snapshot
                    .sockets
                    .iter()
                    .filter(|s| s.netns == ns.inode())
                    .count(),
                1
            );
        }
        assert!(scan.failed.is_empty() && scan.vanished == 0);
    }
}
