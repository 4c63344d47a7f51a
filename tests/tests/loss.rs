//! Lost events are counted exactly: a tiny ring and a stopped reader force the ring to overflow,
//! and the count the tracer reports equals the number of transitions missing from its output.
//! What was generated is measured, not assumed: a second tracer with a roomy ring watches the same
//! connections.

use std::{net::SocketAddr, time::Duration};

use tcptrace_tests::*;

const T: Duration = Duration::from_secs(30);

/// The summary's lost transitions: "... lost N events (T transitions, R resets; ...". Reset
/// events (e.g. RSTs a TIME_WAIT socket sends to late segments) print no line.
fn lost_transitions(stderr: &str) -> u64 {
    closing_count(stderr, " events (")
}

/// The kernel's count of RSTs sent (`Tcp: OutRsts` in /proc/net/snmp).
fn out_rsts() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").expect("/proc/net/snmp");
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "OutRsts")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Each socket's transitions, for a failure message.
fn by_socket(lines: &[serde_json::Value]) -> String {
    socket_lives(lines)
        .iter()
        .map(|s| {
            let l = &s.lines[0];
            format!("{}:{} {:?}\n", l["lport"], l["rport"], s.transitions())
        })
        .collect()
}

/// `trace --json` with its debug log on stderr (kernel counters at exit, lines dropped in
/// userspace), so that a failure explains itself.
fn traced(args: &[&str]) -> Tracer {
    Tracer::start_command(
        std::process::Command::new(tcptrace_bin())
            .args(["trace", "--json"])
            .args(args)
            .env("RUST_LOG", "tcptrace=debug"),
    )
}

#[test]
fn ring_overflow_is_counted_exactly_and_the_tracer_recovers() {
    let ip = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let addr = SocketAddr::new(ip, port);
    let conns = 60;
    let port_arg = port.to_string();
    let tracer = traced(&["--port", &port_arg, "--ring-size", "4K"]);
    let reference = traced(&["--port", &port_arg]);
    let rsts = out_rsts();
    // Stall the reader: the kernel keeps writing until the 4 KiB ring is full.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGSTOP) };
    let (mut srv, _) = server(addr, &["--conns", &conns.to_string(), "--on-eof", "close"]);
    let mut cli = client(addr, &["--conns", &conns.to_string()]);
    cli.wait_done(T);
    srv.wait_done(T);
    cli.finish();
    srv.finish();
    // SAFETY: as above.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(300));
    // The tracer recovers: a connection after the overflow is seen whole.
    let port2_round = {
        let (mut srv, _) = server(addr, &["--on-eof", "close"]);
        let mut cli = client(addr, &[]);
        let local = cli.expect("connected", T);
        cli.wait_done(T);
        srv.wait_done(T);
        cli.finish();
        srv.finish();
        local
    };
    std::thread::sleep(Duration::from_millis(300));
    let out = tracer.stop();
    let reference = reference.stop();
    let rsts = out_rsts() - rsts;
    let lines = out.json_lines();
    let seen = reference.json_lines();
    let after = socket_with(&lines, &port2_round);
    assert_eq!(after.transitions().len(), 5, "{:?}", after.transitions());

    // The reference saw everything: no loss, and each connection's ten transitions (five per
    // side) plus each listener's two, unless a RST cut a connection short.
    assert_eq!(
        lost_transitions(&reference.stderr),
        0,
        "{}",
        reference.stderr
    );
    // A child the kernel created and dropped at once (`LISTEN -> SYN_RECV -> CLOSE`: two CPUs
    // completed the same handshake and the loser's child is closed, seen in the 6.1 guest) is
    // two more transitions that happened; the reference sees them like any other.
    let dropped_children = socket_lives(&seen)
        .iter()
        .filter(|s| s.transitions() == ["LISTEN->SYN_RECV", "SYN_RECV->CLOSE"])
        .count();
    let expected = conns * 10 + 2 + 12 + 2 * dropped_children;
    assert!(
        seen.len() == expected || rsts > 0,
        "reference saw {} transitions, expected {expected}, no RST sent:\n{}",
        seen.len(),
        by_socket(&seen)
    );

    let lost = lost_transitions(&out.stderr);
    assert!(
        lost > 0,
        "a 4 KiB ring cannot hold {} events: {}",
        seen.len(),
        out.stderr
    );
    assert_eq!(
        lines.len() as u64 + lost,
        seen.len() as u64,
        "received + lost = generated ({rsts} RSTs sent)\n{}\nreceived:\n{}\nreference:\n{}\nreference's log:\n{}",
        out.stderr,
        by_socket(&lines),
        by_socket(&seen),
        reference.stderr,
    );
    assert!(
        out.stderr.contains("tcptrace: lost "),
        "reported as it happened too: {}",
        out.stderr
    );
}

/// A tracer attached while connections run loses none of their transitions: every CPU's ring is
/// installed before the first program is attached. (They were installed after it: a transition
/// in between found no ring and was counted as refused by a full ring, which a DaemonSet test
/// caught in 9 of 36 runs; 4,610-7,100 events at 20k conn/s.)
///
/// A slow storm (200 conn/s), running from before the tracer starts until after it attached whatever that
/// takes (seconds in the emulated guests): the guests' `tcp_max_tw_buckets` is 8192, and the
/// storm's TIME_WAIT sockets would leave the tests after this one at that cap.
#[test]
fn a_tracer_started_during_a_storm_loses_nothing() {
    let ip = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let mut storm = std::process::Command::new(storm_bin())
        .args(["--threads", "1", "--rate", "200", "--seconds", "120"])
        .args(["--conns", "1000000", "--addr", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let p = port.to_string();
    let tracer = Tracer::start(&["report", "--json", "--duration", "60s", "--port", &p]);
    std::thread::sleep(Duration::from_millis(1000));
    let _ = storm.kill();
    let _ = storm.wait();
    std::thread::sleep(Duration::from_millis(300));
    let out = tracer.stop();
    // Leave no TIME_WAIT behind for the next tests (where the kernel can destroy them).
    let _ = std::process::Command::new("ss")
        .args(["-K", "state", "time-wait"])
        .arg(format!("( dport = :{port} )"))
        .output();
    let doc = out.json();
    assert!(
        doc["transitions_seen"].as_u64().unwrap() > 500,
        "the storm ran while tracing: {}",
        out.stderr
    );
    // What this test guards: no record refused for want of a ring at attach. A nested run the
    // backup program could not recover is another matter, counted as such: once in CI's 6.1
    // guest (4 skipped, 3 recovered, 1 duplicate dropped: a stale entry of its stack matched).
    assert_eq!(closing_count(&out.stderr, "ring full"), 0, "{}", out.stderr);
    let nested = closing_count(&out.stderr, "nested runs skipped").saturating_sub(closing_count(
        &out.stderr,
        "recovered by the backup program",
    ));
    assert_eq!(
        doc["lost_events"].as_u64(),
        Some(nested),
        "lost only what nested runs lost: {}",
        out.stderr
    );
}
