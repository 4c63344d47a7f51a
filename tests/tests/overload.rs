//! The overload guard: above `--max-event-rate` the kernel counts transitions instead of
//! sending them, says so, and the counts stay exact through the kernel socket table.

use std::{net::SocketAddr, process::Command, time::Duration};

use tcptrace_tests::*;

const T: Duration = Duration::from_secs(30);

#[test]
fn over_budget_the_kernel_counts_and_counts_stay_exact() {
    let ip = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let addr = SocketAddr::new(ip, port);
    // The report ends when the traffic has ended (SIGINT below); the duration only bounds a
    // hung run. A fixed window could close before the second burst is over when emulation is
    // slow, and `ss` would then rightly count sockets the report never saw.
    let tracer = Tracer::start(&[
        "report",
        "--json",
        "--duration",
        "120s",
        "--port",
        &port.to_string(),
        "--max-event-rate",
        "300",
    ]);
    // Two bursts of 300 connections (3000 transitions each): the first pushes the rate over
    // the budget at the guard's next once-a-second check, the second arrives while the kernel
    // is counting (under emulation one burst can end before the first check).
    let (mut srv, _) = server(addr, &["--conns", "600", "--on-eof", "close"]);
    let mut first = client(addr, &["--conns", "300"]);
    first.wait_done(T);
    std::thread::sleep(Duration::from_millis(1500));
    let mut cli = client(addr, &["--conns", "300"]);
    cli.wait_done(T);
    srv.wait_done(T);
    let out = tracer.stop();
    assert!(
        out.stderr.contains("exceeds --max-event-rate 300"),
        "the switch is logged: {}",
        out.stderr
    );
    let doc = out.json();
    let o = &doc["overload"];
    assert!(o["switches"].as_u64().unwrap() >= 1, "{o:#}");
    assert!(o["counted_events"].as_u64().unwrap() > 0, "{o:#}");
    // Counted events are not lost events, including nested runs the backup program counted.
    assert_eq!(doc["lost_events"], 0, "counted, not lost: {}", out.stderr);
    let ss = Command::new("ss")
        .args(["-tanH", "state", "time-wait", &format!("dport = :{port}")])
        .output()
        .unwrap();
    let ss_tw = String::from_utf8_lossy(&ss.stdout).lines().count();
    assert!(ss_tw > 450, "ss: {ss_tw}");
    assert_eq!(
        doc["totals"]["TIME_WAIT"], ss_tw,
        "exact through the kernel table"
    );
    first.finish();
    cli.finish();
    srv.finish();
}
