//! Lost events are counted exactly: a tiny ring and a stopped reader force the ring to overflow,
//! and the count the tracer reports equals the number of transitions missing from its output.

use std::{net::SocketAddr, time::Duration};

use tcptrace_tests::*;

const T: Duration = Duration::from_secs(30);

fn lost_from_summary(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("; lost "))
        .unwrap_or_else(|| panic!("no summary: {stderr}"));
    // "... lost N events (T transitions, R resets; ...": the transitions are what the lines miss
    // (reset events, e.g. RSTs a TIME_WAIT socket sends to late segments, print no line).
    let after = line.split(" events (").nth(1).unwrap();
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn ring_overflow_is_counted_exactly_and_the_tracer_recovers() {
    let ip = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let addr = SocketAddr::new(ip, port);
    let conns = 60;
    let tracer = Tracer::start(&[
        "trace",
        "--json",
        "--port",
        &port.to_string(),
        "--ring-size",
        "4K",
    ]);
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
    let lines = out.json_lines();
    let after = socket_with(&lines, &port2_round);
    assert_eq!(after.transitions().len(), 5, "{:?}", after.transitions());
    let expected = conns * 10 + 2 + 12;
    let lost = lost_from_summary(&out.stderr);
    assert!(
        lost > 0,
        "a 4 KiB ring cannot hold {expected} events: {}",
        out.stderr
    );
    let mut kinds = std::collections::BTreeMap::new();
    for l in &lines {
        *kinds
            .entry(format!("{}->{} {}", l["old"], l["new"], l["note"]))
            .or_insert(0) += 1;
    }
    assert_eq!(
        lines.len() as u64 + lost,
        expected as u64,
        "{kinds:#?}\n{}",
        out.stderr,
    );
    assert_eq!(
        lines.len() as u64 + lost,
        expected as u64,
        "received + lost = generated\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("tcptrace: lost "),
        "reported as it happened too: {}",
        out.stderr
    );
}
