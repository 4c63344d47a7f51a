//! The kernel's TIME_WAIT table full (`net.ipv4.tcp_max_tw_buckets`): a close then makes no
//! timewait socket, and the kernel counts it as `TcpExt: TCPTimeWaitOverflow` instead. tcptrace
//! must tell those closes apart as they happen (see `tcptrace-ebpf/src/timewait_made.rs`), not
//! keep a TIME_WAIT socket for each until its next check against the kernel's table: at the
//! cap most closes are such, and TIME_WAIT read far above `ss` (212,015 against 131,076 at
//! 40k connections/s).
//!
//! Each test runs in a namespace of its own with a cap of [`CAP`], so that the host's cap and
//! the other tests' sockets play no part. Every tracer mode that keeps the table is checked: the
//! records of every transition and the summaries.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tcptrace::diagnose::host::parse_netstat;
use tcptrace_tests::netns::{TestNetns, ss_count_in};
use tcptrace_tests::*;

/// The namespace's `tcp_max_tw_buckets`.
const CAP: u64 = 16;
/// Connections closed by the client first: each asks for a timewait socket.
const CONNS: u64 = 64;

/// `TcpExt: TCPTimeWaitOverflow` of the namespace, from its `/proc/net/netstat`.
fn overflows(ns: &TestNetns) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "cat", "/proc/net/netstat"])
        .output()
        .expect("read /proc/net/netstat");
    let text = String::from_utf8_lossy(&out.stdout);
    parse_netstat(&text, "TcpExt", "TCPTimeWaitOverflow")
        .unwrap_or_else(|| panic!("no TcpExt TCPTimeWaitOverflow in /proc/net/netstat:\n{text}"))
}

/// `CONNS` connections inside the namespace, each closed by its client first and then by the
/// server once it read the client's FIN: the client's side asks for TIME_WAIT.
fn client_first_closes(ns: &TestNetns, ip: &str, port: u16) {
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    ns.run(|| {
        let listener = TcpListener::bind(addr).expect("listen in the namespace");
        for _ in 0..CONNS {
            let client = TcpStream::connect(addr).expect("connect");
            let (mut server, _) = listener.accept().expect("accept");
            drop(client);
            let mut buf = [0u8; 16];
            assert_eq!(server.read(&mut buf).expect("read the client's FIN"), 0);
            drop(server);
        }
    });
}

/// The report's row for the test's namespace.
fn in_netns<'a>(doc: &'a Value, ns: &TestNetns) -> &'a Value {
    doc["by_netns"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["netns"] == ns.inode()))
        .unwrap_or_else(|| panic!("no by_netns row for {}: {doc:#}", ns.name))
}

/// Held by each test for its whole run: no other test of this process forks while this one
/// closes its clients. A child forked from this process holds a copy of every descriptor open at
/// the fork until its `exec` closes them, so a client closed in between has its last reference,
/// and with it the kernel's close and the TIME_WAIT, in that child (seen: one TIME_WAIT of 16
/// owned by `ip`, the other test's `ip netns exec`). tcptrace names that child rightly: it
/// made the close.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn at_the_cap(ip: &str, port_offset: u16) {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let ns = TestNetns::add();
    let set = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sysctl", "-qw"])
        .arg(format!("net.ipv4.tcp_max_tw_buckets={CAP}"))
        .status()
        .expect("sysctl");
    assert!(set.success(), "setting the namespace's tcp_max_tw_buckets");
    // One port per test (they run at once), below the ephemeral range (32768 and up by
    // default): the TIME_WAIT sockets earlier tests left on the host have ephemeral ports, and
    // one on this port would pass the tracers' filter (seen in every guest with a port of 41xxx).
    let port = 20000 + (std::process::id() % 1000) as u16 * 2 + port_offset;
    let p = port.to_string();
    let tracers = [
        (
            "every transition",
            Tracer::start(&["report", "--json", "--port", &p]),
        ),
        (
            "summaries",
            Tracer::start(&["report", "--json", "--port", &p, "--summaries"]),
        ),
    ];
    let trace = Tracer::start(&["trace", "--json", "--port", &p]);
    let before = overflows(&ns);
    client_first_closes(&ns, ip, port);
    // The last server's close reaches its client's side within a round trip.
    std::thread::sleep(Duration::from_millis(300));
    let refused = overflows(&ns) - before;
    let time_wait = ss_count_in(&ns.name, "time-wait", "");
    assert_eq!(
        (time_wait, refused),
        (CAP, CONNS - CAP),
        "the kernel made {CAP} timewait sockets and refused the rest"
    );
    // The trace says which closes made one and which did not. A timewait socket is made in
    // substate FIN_WAIT2 (`fin_wait2_orphan`) when the ACK of the client's FIN comes before the
    // server's FIN (the server's delayed ACK ran out first: seen in the TCG guests), else in
    // TIME_WAIT; the server's FIN turns the first kind into TIME_WAIT later, without an event.
    let out = trace.stop();
    let notes = |note: &str| {
        out.json_lines()
            .iter()
            .filter(|l| l["note"] == note)
            .count() as u64
    };
    assert_eq!(
        (
            notes("time_wait") + notes("fin_wait2_orphan"),
            notes("no_time_wait")
        ),
        (CAP, refused),
        "trace's notes\n{}",
        out.stderr
    );
    for (mode, tracer) in tracers {
        let out = tracer.stop();
        assert_eq!(out.code, Some(0), "{mode}: {}", out.stderr);
        let doc: Value = out.json();
        // Told apart at each close: nothing for the final check against the kernel's table
        // to remove (without it, one TIME_WAIT socket per refused close).
        assert_eq!(
            (
                &doc["table"]["timewait_skipped"],
                &doc["corrections"]["removed"],
                &in_netns(&doc, &ns)["time_wait"],
                &doc["lost_events"],
            ),
            (
                &Value::from(refused),
                &Value::from(0),
                &Value::from(CAP),
                &Value::from(0)
            ),
            "{mode}: closes without a timewait socket, removed by the final check, TIME_WAIT, \
             lost\n{}",
            out.stderr
        );
        // This process closed every client first: the refused closes are counted against it,
        // beside the TIME_WAIT it holds.
        let me = doc["by_pid"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["pid"] == std::process::id()))
            .unwrap_or_else(|| {
                panic!(
                    "{mode}: no by_pid row for this test: {}",
                    report_digest(&doc)
                )
            });
        assert_eq!(
            (&me["time_wait"], &me["time_wait_refused"]),
            (&Value::from(CAP), &Value::from(refused)),
            "{mode}: this process's TIME_WAIT and refused closes\n{}\n{}",
            report_digest(&doc),
            out.stderr
        );
    }
}

#[test]
fn closes_at_the_time_wait_cap_make_no_time_wait_ipv4() {
    at_the_cap("127.0.0.1", 0);
}

#[test]
fn closes_at_the_time_wait_cap_make_no_time_wait_ipv6() {
    at_the_cap("[::1]", 1);
}
