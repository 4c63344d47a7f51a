//! `tcptrace trace` against real loopback connections on the running kernel: the exact
//! transitions of every socket, their owners, their endpoints and their dwell times.

use std::{net::SocketAddr, time::Duration};

use tcptrace_tests::*;

const T: Duration = Duration::from_secs(20);

fn trace_args(port: u16, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["trace", "--json", "--port"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.push(port.to_string());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn start(port: u16, extra: &[&str]) -> Tracer {
    let args = trace_args(port, extra);
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    Tracer::start(&a)
}

/// Lets the tracer's poll loop drain what the kernel wrote.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

fn assert_seq(s: &SocketTrace, want: &[&str]) {
    assert_eq!(
        s.transitions(),
        want,
        "transitions of socket {}: {:#?}",
        s.cookie,
        s.lines
    );
}

fn dwell_ms(s: &SocketTrace, old: &str, new: &str) -> f64 {
    s.line(old, new)["dwell_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("no dwell on {old}->{new}"))
}

/// Asserts the note on the active closer's `FIN_WAIT2 -> CLOSE`. Its socket becomes a timewait
/// socket when the peer acks its FIN: in substate FIN_WAIT2 ("fin_wait2_orphan") while the peer
/// still sits in CLOSE_WAIT, in TIME_WAIT when that ack comes with the peer's own FIN. The tests'
/// peers wait 60-80 ms before they close, so it is normally the former; but a delayed ACK that
/// outlasts the wait rides on the peer's FIN (seen once in the 6.12 guest, whose timers run late
/// under TCG). So: before the peer's close() (`CLOSE_WAIT -> LAST_ACK`) it must be
/// "fin_wait2_orphan"; after it, "time_wait" is expected, and "fin_wait2_orphan" stays possible
/// (an ack sent just before the close, read just after it).
fn assert_active_close_note(closer: &SocketTrace, peer: &SocketTrace) {
    let line = closer.line("FIN_WAIT2", "CLOSE");
    let peer_closed = peer.line("CLOSE_WAIT", "LAST_ACK")["ts_ns"].as_u64();
    let note = line["note"].as_str();
    if peer_closed < line["ts_ns"].as_u64() {
        assert!(
            matches!(note, Some("time_wait" | "fin_wait2_orphan")),
            "{line}"
        );
    } else {
        assert_eq!(note, Some("fin_wait2_orphan"), "{line}");
    }
}

const CLIENT_FIRST: [&str; 5] = [
    "CLOSE->SYN_SENT",
    "SYN_SENT->ESTABLISHED",
    "ESTABLISHED->FIN_WAIT1",
    "FIN_WAIT1->FIN_WAIT2",
    "FIN_WAIT2->CLOSE",
];
const PASSIVE_CLOSE_ACCEPTED: [&str; 5] = [
    "LISTEN->SYN_RECV",
    "SYN_RECV->ESTABLISHED",
    "ESTABLISHED->CLOSE_WAIT",
    "CLOSE_WAIT->LAST_ACK",
    "LAST_ACK->CLOSE",
];

fn client_first_close(ip: &str) {
    let ip = ip.parse().unwrap();
    let port = free_port(ip);
    let tracer = start(port, &[]);
    let addr = SocketAddr::new(ip, port);
    let (mut srv, _) = server(addr, &["--on-eof", "close", "--close-delay-ms", "80"]);
    let mut cli = client(addr, &["--hold-ms", "120"]);
    let local = cli.expect("connected", T);
    let accepted_local = srv.expect("accepted", T);
    cli.wait_done(T);
    srv.wait_done(T);
    let (cpid, spid) = (cli.pid() as u64, srv.pid() as u64);
    cli.finish();
    srv.finish();
    settle();
    let out = tracer.stop();
    let lines = out.json_lines();

    let c = socket_with(&lines, &local);
    assert_seq(&c, &CLIENT_FIRST);
    assert_eq!(
        c.pids(),
        vec![cpid],
        "client socket owned by the client only"
    );
    assert!(dwell_ms(&c, "ESTABLISHED", "FIN_WAIT1") >= 120.0);
    // The CLOSE event carries the tuple the socket had, not the released port 0.
    assert_eq!(
        c.line("FIN_WAIT2", "CLOSE")["rport"].as_u64(),
        Some(port as u64)
    );

    let a = socket_with(&lines, &accepted_local);
    // The accepted socket shares the local port with the listener; take the one with a peer.
    assert_seq(&a, &PASSIVE_CLOSE_ACCEPTED);
    // The server normally still sits in CLOSE_WAIT when the client's socket closes: the kernel
    // keeps the connection as an orphaned FIN_WAIT2 timewait socket until the server's FIN.
    assert_active_close_note(&c, &a);
    assert_eq!(
        a.pids(),
        vec![spid],
        "accepted socket owned by the server, never the peer"
    );
    assert!(dwell_ms(&a, "CLOSE_WAIT", "LAST_ACK") >= 80.0);

    let listeners: Vec<_> = sockets_on_port(&lines, port, true)
        .into_iter()
        .filter(|s| s.transitions().first().map(String::as_str) == Some("CLOSE->LISTEN"))
        .collect();
    assert_eq!(listeners.len(), 1);
    assert_seq(&listeners[0], &["CLOSE->LISTEN", "LISTEN->CLOSE"]);
    assert_eq!(listeners[0].pids(), vec![spid]);
    assert!(
        !out.stdout.contains("\"comm\":\"swapper"),
        "swapper is never an owner"
    );
}

#[test]
fn client_first_close_ipv4() {
    client_first_close("127.0.0.1");
}

#[test]
fn client_first_close_ipv6() {
    client_first_close("::1");
}

fn server_first_close(ip: &str) {
    let ip = ip.parse().unwrap();
    let port = free_port(ip);
    let tracer = start(port, &[]);
    let addr = SocketAddr::new(ip, port);
    let (mut srv, _) = server(addr, &["--close-first-ms", "100"]);
    let mut cli = client(addr, &["--wait-eof", "--close-delay-ms", "60"]);
    let local = cli.expect("connected", T);
    let accepted_local = srv.expect("accepted", T);
    cli.wait_done(T);
    srv.wait_done(T);
    let (cpid, spid) = (cli.pid() as u64, srv.pid() as u64);
    cli.finish();
    srv.finish();
    settle();
    let lines = tracer.stop().json_lines();

    let a = socket_with(&lines, &accepted_local);
    assert_seq(
        &a,
        &[
            "LISTEN->SYN_RECV",
            "SYN_RECV->ESTABLISHED",
            "ESTABLISHED->FIN_WAIT1",
            "FIN_WAIT1->FIN_WAIT2",
            "FIN_WAIT2->CLOSE",
        ],
    );
    assert_eq!(a.pids(), vec![spid]);
    assert!(dwell_ms(&a, "ESTABLISHED", "FIN_WAIT1") >= 100.0);
    let c = socket_with(&lines, &local);
    assert_seq(
        &c,
        &[
            "CLOSE->SYN_SENT",
            "SYN_SENT->ESTABLISHED",
            "ESTABLISHED->CLOSE_WAIT",
            "CLOSE_WAIT->LAST_ACK",
            "LAST_ACK->CLOSE",
        ],
    );
    assert_eq!(c.pids(), vec![cpid]);
    assert!(dwell_ms(&c, "CLOSE_WAIT", "LAST_ACK") >= 60.0);
    // The client normally still sits in CLOSE_WAIT (it waits 60 ms): orphaned FIN_WAIT2.
    assert_active_close_note(&a, &c);
}

#[test]
fn server_first_close_ipv4() {
    server_first_close("127.0.0.1");
}

#[test]
fn server_first_close_ipv6() {
    server_first_close("::1");
}

/// Asserts the tracer runs on the path `extra` forces, if it forces one.
fn assert_path(tracer: &Tracer, extra: &[&str]) {
    if extra == ["--hook", "tracepoint"] {
        assert!(
            tracer.started.contains("attached via tracepoint"),
            "{}",
            tracer.started
        );
    }
}

fn rst_close(ip: &str, extra: &[&str]) {
    let ip = ip.parse().unwrap();
    let port = free_port(ip);
    let tracer = start(port, extra);
    assert_path(&tracer, extra);
    let addr = SocketAddr::new(ip, port);
    let (mut srv, _) = server(addr, &["--on-eof", "close"]);
    let mut cli = client(addr, &["--hold-ms", "50", "--linger0"]);
    let local = cli.expect("connected", T);
    let accepted_local = srv.expect("accepted", T);
    cli.wait_done(T);
    srv.wait_done(T);
    cli.finish();
    srv.finish();
    settle();
    let lines = tracer.stop().json_lines();
    let c = socket_with(&lines, &local);
    assert_seq(
        &c,
        &[
            "CLOSE->SYN_SENT",
            "SYN_SENT->ESTABLISHED",
            "ESTABLISHED->CLOSE",
        ],
    );
    assert_eq!(c.line("ESTABLISHED", "CLOSE")["note"], "reset");
    let a = socket_with(&lines, &accepted_local);
    assert_seq(
        &a,
        &[
            "LISTEN->SYN_RECV",
            "SYN_RECV->ESTABLISHED",
            "ESTABLISHED->CLOSE",
        ],
    );
    assert_eq!(a.line("ESTABLISHED", "CLOSE")["note"], "reset");
}

#[test]
fn rst_close_by_so_linger_zero_ipv4() {
    rst_close("127.0.0.1", &[]);
}

#[test]
fn rst_close_by_so_linger_zero_ipv6() {
    rst_close("::1", &[]);
}

/// The classic `tcp:tcp_send_reset` / `tcp:tcp_receive_reset` records, whose layout differs
/// across kernels (`tcp_send_reset` stores socket-address images since 6.10), mark the same
/// closes as resets.
#[test]
fn rst_close_on_the_classic_tracepoint_path_ipv4() {
    rst_close("127.0.0.1", &["--hook", "tracepoint"]);
}

#[test]
fn rst_close_on_the_classic_tracepoint_path_ipv6() {
    rst_close("::1", &["--hook", "tracepoint"]);
}

fn refused(ip: &str, extra: &[&str]) {
    let ip = ip.parse().unwrap();
    let port = free_port(ip);
    let tracer = start(port, extra);
    assert_path(&tracer, extra);
    let mut cli = client(SocketAddr::new(ip, port), &[]);
    assert_eq!(cli.expect("refused", T), "ConnectionRefused");
    cli.wait_done(T);
    let pid = cli.pid() as u64;
    cli.finish();
    settle();
    let lines = tracer.stop().json_lines();
    let s = sockets_on_port(&lines, port, false);
    assert_eq!(s.len(), 1, "{lines:?}");
    assert_seq(&s[0], &["CLOSE->SYN_SENT", "SYN_SENT->CLOSE"]);
    assert_eq!(s[0].pids(), vec![pid]);
    // The RST to the SYN: a refused connect, noted as the failure connect() returned.
    assert_eq!(
        s[0].line("SYN_SENT", "CLOSE")["note"],
        "connect_failed:ECONNREFUSED"
    );
}

#[test]
fn connection_refused_ipv4() {
    refused("127.0.0.1", &[]);
}

#[test]
fn connection_refused_ipv6() {
    refused("::1", &[]);
}

#[test]
fn connection_refused_on_the_classic_tracepoint_path_ipv6() {
    refused("::1", &["--hook", "tracepoint"]);
}

#[test]
fn text_output_has_aligned_columns_and_no_swapper() {
    let ip = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let tracer = Tracer::start(&["trace", "--port", &port.to_string()]);
    let addr = SocketAddr::new(ip, port);
    let (mut srv, _) = server(addr, &["--on-eof", "close"]);
    let mut cli = client(addr, &["--hold-ms", "20"]);
    cli.wait_done(T);
    srv.wait_done(T);
    cli.finish();
    srv.finish();
    settle();
    let out = tracer.stop();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("TIME"), "header first: {}", out.stdout);
    assert_eq!(
        lines.len(),
        1 + 12,
        "header + 10 transitions + listener's 2:\n{}",
        out.stdout
    );
    let arrow = lines[1].find("->").unwrap();
    for l in &lines[1..] {
        assert_eq!(l.find(" -> "), Some(arrow - 1), "aligned: {l}");
    }
    assert!(!out.stdout.contains("swapper"));
    assert!(
        out.stderr.contains("lost 0 events"),
        "final summary: {}",
        out.stderr
    );
}

/// Runs `tcpscenario simclose` inside a fresh network namespace (it takes that namespace's `lo`
/// down for a moment).
fn simultaneous_close(ip: &str) {
    // Deleted on drop, also when an assertion below fails (a namespace left behind makes every
    // later tracer's kernel-table check walk the socket hash once more per family).
    let ns = netns::TestNetns::add();
    let ipa: std::net::IpAddr = ip.parse().unwrap();
    let port = free_port(ipa);
    let tracer = start(port, &[]);
    let mut p = ns.scenario(&[
        "simclose",
        "--bind",
        &SocketAddr::new(ipa, port).to_string(),
    ]);
    let local = p.expect("connected", T);
    let accepted = p.expect("accepted", T);
    p.wait_done(T);
    p.finish();
    settle();
    let lines = tracer.stop().json_lines();
    // Both FINs left before either arrived. When the retransmissions cross, each side goes
    // FIN_WAIT1 -> CLOSING; when one side's FIN lands first (the retransmission timers fire
    // apart, e.g. under emulation), its peer ACKs it before its own FIN is retransmitted, and
    // that side goes FIN_WAIT1 -> FIN_WAIT2. At least one side must have been CLOSING, and both
    // end in TIME_WAIT.
    let mut closing = 0;
    for (who, first) in [(&local, "CLOSE->SYN_SENT"), (&accepted, "LISTEN->SYN_RECV")] {
        let s = socket_with(&lines, who);
        let mid = if first == "CLOSE->SYN_SENT" {
            "SYN_SENT->ESTABLISHED"
        } else {
            "SYN_RECV->ESTABLISHED"
        };
        let t = s.transitions();
        let via = if t.contains(&"FIN_WAIT1->CLOSING".to_string()) {
            "CLOSING"
        } else {
            "FIN_WAIT2"
        };
        closing += usize::from(via == "CLOSING");
        let tail = if via == "CLOSING" {
            ["FIN_WAIT1->CLOSING", "CLOSING->CLOSE"]
        } else {
            ["FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->CLOSE"]
        };
        assert_seq(
            &s,
            &[first, mid, "ESTABLISHED->FIN_WAIT1", tail[0], tail[1]],
        );
        assert_eq!(
            s.line(via, "CLOSE")["note"],
            "time_wait",
            "both sides end in TIME_WAIT"
        );
        assert_ne!(s.line(via, "CLOSE")["netns"], 0);
    }
    assert!(
        closing >= 1,
        "a simultaneous close: at least one side went through CLOSING"
    );
}

#[test]
fn simultaneous_close_ipv4() {
    simultaneous_close("127.0.0.1");
}

#[test]
fn simultaneous_close_ipv6() {
    simultaneous_close("::1");
}

/// The classic tracepoint path, forced (what kernels without BTF get): the same transitions,
/// owners and TIME_WAIT inference; sockets are named by kernel address instead of cookie.
#[test]
fn client_first_close_on_the_classic_tracepoint_path() {
    let ip = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let tracer = start(port, &["--hook", "tracepoint"]);
    assert!(
        tracer.started.contains("attached via tracepoint"),
        "{}",
        tracer.started
    );
    let addr = SocketAddr::new(ip, port);
    let (mut srv, _) = server(addr, &["--on-eof", "close", "--close-delay-ms", "30"]);
    let mut cli = client(addr, &["--hold-ms", "50"]);
    let local = cli.expect("connected", T);
    let accepted = srv.expect("accepted", T);
    cli.wait_done(T);
    srv.wait_done(T);
    let (cpid, spid) = (cli.pid() as u64, srv.pid() as u64);
    cli.finish();
    srv.finish();
    settle();
    let lines = tracer.stop().json_lines();
    assert!(
        lines.iter().all(|l| l["cookie"] == 0),
        "no cookies on this path"
    );
    let c = socket_with(&lines, &local);
    assert_seq(&c, &CLIENT_FIRST);
    assert_eq!(c.pids(), vec![cpid]);
    assert!(dwell_ms(&c, "ESTABLISHED", "FIN_WAIT1") >= 50.0);
    let a = socket_with(&lines, &accepted);
    assert_seq(&a, &PASSIVE_CLOSE_ACCEPTED);
    assert_eq!(a.pids(), vec![spid]);
}
