//! The overload guard: above `--max-event-rate` the kernel counts transitions instead of
//! sending them, says so, and the counts stay exact through the kernel socket table.

use std::{net::SocketAddr, process::Command, time::Duration};

use serde_json::Value;
use tcptrace_tests::*;

const T: Duration = Duration::from_secs(30);

/// Two bursts of 300 connections (3000 transitions each) to a fresh port under `report --json
/// --max-event-rate 300` plus `filters` (`{port}` is replaced by the port): the first pushes
/// the rate over the budget at the guard's next once-a-second check, the second arrives while
/// the kernel is counting (under emulation one burst can end before the first check). Returns
/// the port, the report and its stderr, and `ss`'s TIME_WAIT count towards the port.
///
/// The report ends when the traffic has ended (SIGINT); the duration only bounds a hung run. A
/// fixed window could close before the second burst is over when emulation is slow, and `ss`
/// would then rightly count sockets the report never saw.
fn two_bursts_over_budget(filters: &[&str]) -> (u16, Value, String, u64) {
    let ip = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let addr = SocketAddr::new(ip, port);
    let p = port.to_string();
    let mut args = vec!["report", "--json", "--duration", "120s"];
    args.extend(filters.iter().map(|f| if *f == "{port}" { &p } else { *f }));
    args.extend(["--max-event-rate", "300"]);
    let tracer = Tracer::start(&args);
    let (mut srv, _) = server(addr, &["--conns", "600", "--on-eof", "close"]);
    let mut first = client(addr, &["--conns", "300"]);
    first.wait_done(T);
    // Past the guard's once-a-second check, so the second burst is counted.
    std::thread::sleep(Duration::from_millis(2500));
    let mut cli = client(addr, &["--conns", "300"]);
    cli.wait_done(T);
    srv.wait_done(T);
    // See `settle`: seen in the 5.10 guest as 598 vs 599 when this test ran beside the
    // ring-overflow one.
    settle(port);
    let out = tracer.stop();
    assert!(
        out.stderr.contains("exceeds --max-event-rate 300"),
        "the switch is logged: {}",
        out.stderr
    );
    let ss_tw = ss_time_wait(port);
    assert!(ss_tw > 450, "ss: {ss_tw}{}", tw_cap_note());
    first.finish();
    cli.finish();
    srv.finish();
    (port, out.json(), out.stderr, ss_tw)
}

#[test]
fn over_budget_the_kernel_counts_and_counts_stay_exact() {
    let (_, doc, stderr, ss_tw) = two_bursts_over_budget(&["--port", "{port}"]);
    let o = &doc["overload"];
    assert!(o["switches"].as_u64().unwrap() >= 1, "{o:#}");
    assert!(o["counted_events"].as_u64().unwrap() > 0, "{o:#}");
    // Counted events are not lost events, including nested runs the backup program counted.
    assert_eq!(doc["lost_events"], 0, "counted, not lost: {stderr}");
    assert_eq!(
        doc["totals"]["TIME_WAIT"], ss_tw,
        "exact through the kernel table"
    );
}

/// Without a family or port filter the kernel counts a transition before reading anything of
/// the socket (`emit::counts_without_fields`). That path must count as the filtered one does:
/// every transition of the second burst, nothing lost, and the peer's TIME_WAIT exact through
/// the kernel table.
#[test]
fn over_budget_without_filters_the_kernel_counts_before_reading_the_socket() {
    let (port, doc, stderr, ss_tw) = two_bursts_over_budget(&[]);
    // 300 connections of 10 transitions each (client and server side), all while counting;
    // other sockets of the host may add some.
    let o = &doc["overload"];
    assert!(
        o["counted_events"].as_u64().unwrap() >= 3000,
        "{o:#}\n{stderr}"
    );
    assert_eq!(doc["lost_events"], 0, "counted, not lost: {stderr}");
    let peer = doc["by_peer"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["addr"] == "127.0.0.1" && r["port"] == port)
        .unwrap_or_else(|| panic!("no peer row for :{port}: {doc:#}"));
    assert_eq!(peer["time_wait"], ss_tw, "exact through the kernel table");
}

/// Under the budget, a reader that cannot keep up also makes the kernel count: a ring of 4 KiB
/// (36 records) overflows within one poll under a burst of 2000 connections, so the first
/// burst is refused by the full ring (lost, and counted as lost), the guard switches at its
/// next check, and a second burst is counted in the kernel: every one of its transitions, and
/// TIME_WAIT still equal to `ss` through the kernel table. The books balance across the switch:
/// seen + lost + counted equals what a second tracer, with a roomy ring and no budget, saw.
#[test]
fn a_ring_the_reader_cannot_keep_up_with_makes_the_kernel_count() {
    let port = free_port("127.0.0.1".parse().unwrap());
    let tracer = report_on(port, &["--ring-size", "4K"]);
    let reference = report_on(port, &["--max-event-rate", "100000000"]);
    let first = burst(port, 2000);
    // Past the guard's once-a-second check.
    std::thread::sleep(Duration::from_millis(2500));
    let connects = first.zip(burst(port, 2000)).map(|(a, b)| a + b);
    // The storm's close() returns before the FIN exchange ends: a socket still in FIN_WAIT at
    // the tracer's last table check, and in TIME_WAIT when `ss` looks, would be counted by `ss`
    // alone (seen once in the 6.12 guest: 3770 vs 3771).
    settle(port);
    let out = tracer.stop();
    let reference = reference.stop();
    assert!(
        // Either guard may act first: the kernel's at three quarters (when its look every 64
        // records falls before the 4 KiB ring is full), or userspace's on the refusals.
        (out.stderr.contains("the ring refused")
            || out.stderr.contains("ring was three quarters full"))
            && out.stderr.contains("the kernel now counts transitions"),
        "the switch and its cause are logged: {}",
        out.stderr
    );
    let doc = out.json();
    let o = &doc["overload"];
    // Once, where the test runs in a few seconds. In an emulated guest it can take 15: the
    // rate stays under half the budget for the guard's 10 s calm after the first burst, events
    // flow again, and the second burst switches again (CI's 6.1 guest: 2 switches, "2436
    // events/s: back to tracing every transition" between them). The books below hold either
    // way.
    let switches = o["switches"].as_u64().unwrap();
    let back = out
        .stderr
        .matches("back to tracing every transition")
        .count() as u64;
    assert!(
        switches == 1 || switches == back + 1,
        "{switches} switches, {back} back: {o:#}\n{}",
        out.stderr
    );
    // Lost before the switch, and said so: unless the kernel's guard acted before the ring
    // refused anything (its look every 64 records fell before the 4 KiB ring, 39 records, was
    // full: seen in CI's 6.1 guest, "the ring refused 0 records before that", 0 lost), in
    // which case nothing may be lost. (The userspace guard's 1000 are refused records,
    // timewait records included, which the lost events do not count: 965 lost after 1084
    // refused in the 6.1 guest.)
    let lost = doc["lost_events"].as_u64().unwrap();
    let refused_none = out
        .stderr
        .contains("the ring refused 0 records before that");
    assert!(
        if refused_none { lost == 0 } else { lost > 0 },
        "{lost} lost\n{}",
        out.stderr
    );
    // The second burst, all counted: 10 transitions per connection (its listener's and resets
    // may add a few; the first burst's stragglers too).
    assert!(
        o["counted"]["CLOSE->SYN_SENT"].as_u64().unwrap() >= 2000,
        "{o:#}"
    );
    assert!(
        o["counted"]["LAST_ACK->CLOSE"].as_u64().unwrap() >= 2000,
        "{o:#}"
    );
    assert!(
        out.stderr
            .contains("transitions counted in the kernel instead of sent (overload guard)"),
        "the closing line names what was counted: {}",
        out.stderr
    );
    time_wait_is_exact(&doc, port);
    // The books, against what the reference saw (two bursts of 2000 connections of ten
    // transitions, and the listeners'; a RST would change that, the reference sees it too).
    let (seen, lost, counted, generated) = books(&doc, &reference, 40_000, connects);
    assert_eq!(
        seen + lost + counted,
        generated,
        "seen {seen} + lost {lost} + counted {counted} = generated (the reference)\n{o:#}\n{}\n{}\nreference: {}",
        kinds_off(&doc, &reference),
        out.stderr,
        reference.stderr
    );
}

/// A reader that stops (here SIGSTOP; in production a long drain gap, a descheduled tracer)
/// while a burst runs: each CPU's ring fills, and at three quarters the kernel switches itself
/// to counting, before the ring refuses a single record. Nothing is lost, the switch and its
/// cause are said once the tracer runs again, and the books balance against a second tracer:
/// seen + counted = what it saw.
#[test]
fn a_reader_that_stops_makes_the_kernel_count_before_the_ring_refuses() {
    let port = free_port("127.0.0.1".parse().unwrap());
    // 128 KiB per CPU on up to 2 CPUs (each ring a power of two of at least a page; more CPUs
    // get smaller rings): 600 connections make 6,000 records of 112 bytes, 330 KiB per CPU on
    // two, so every ring that carries the storm crosses three quarters (96 KiB). The
    // reference's rings hold the whole storm. (Few connections: the guests' tcp_max_tw_buckets
    // is 8192, and this binary's other tests need theirs.)
    let tracer = report_on(port, &["--ring-size", "256K"]);
    let reference = report_on(port, &["--max-event-rate", "100000000"]);
    // SAFETY: signals to our own child.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGSTOP) };
    let connects = burst(port, 600);
    // SAFETY: as above.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGCONT) };
    settle(port);
    // The guard's next check (every 250 ms) finds the kernel's switch.
    std::thread::sleep(Duration::from_secs(1));
    let out = tracer.stop();
    let reference = reference.stop();
    assert!(
        out.stderr.contains("ring was three quarters full")
            && out
                .stderr
                .contains("the ring refused 0 records before that")
            && out.stderr.contains("the kernel now counts transitions"),
        "the kernel's switch and its cause are logged: {}",
        out.stderr
    );
    let doc = out.json();
    let o = &doc["overload"];
    assert_eq!(o["switches"], 1, "{o:#}\n{}", out.stderr);
    assert_eq!(doc["lost_events"], 0, "{}", out.stderr);
    time_wait_is_exact(&doc, port);
    let (seen, lost, counted, generated) = books(&doc, &reference, 6_000, connects);
    assert_eq!(lost, 0, "{}", out.stderr);
    assert!(counted > 0, "{o:#}");
    assert_eq!(
        seen + counted,
        generated,
        "seen {seen} + counted {counted} = generated (the reference)\n{o:#}\n{}\n{}\nreference: {}",
        kinds_off(&doc, &reference),
        out.stderr,
        reference.stderr
    );
    assert!(
        !out.stderr.contains("without being counted"),
        "transitions the kernel counted are not called uncounted: {}",
        out.stderr
    );
}

/// `report --json --duration 120s --port PORT` plus `extra`, attached.
fn report_on(port: u16, extra: &[&str]) -> Tracer {
    let p = port.to_string();
    let mut args = vec!["report", "--json", "--duration", "120s", "--port", &p];
    args.extend_from_slice(extra);
    Tracer::start(&args)
}

/// A storm of exactly `conns` connections to `port` (two client threads), every one completed.
/// Returns the connects it made (each one `CLOSE->SYN_SENT`) when it knows them exactly: when
/// no attempt failed (a failed one may or may not have reached SYN_SENT).
fn burst(port: u16, conns: u32) -> Option<u64> {
    let out = Command::new(storm_bin())
        .args([
            "--threads",
            "2",
            "--conns",
            &conns.to_string(),
            "--seconds",
            "60",
        ])
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["conns"], conns, "{r}");
    // Every server end closed by the storm, none reset by its exit (see `settle`).
    assert_eq!(r["server_closed"], conns, "{r}");
    eprintln!("storm: {r}");
    (r["other_errors"] == 0 && r["addr_not_avail"] == 0).then_some(conns as u64)
}

/// The report's TIME_WAIT towards `port` equals `ss`'s: exact through the kernel table while
/// the kernel counts.
fn time_wait_is_exact(doc: &Value, port: u16) {
    let ss_tw = ss_time_wait(port);
    assert!(ss_tw > 0, "ss: {ss_tw}{}", tw_cap_note());
    assert_eq!(
        doc["totals"]["TIME_WAIT"], ss_tw,
        "exact through the kernel table"
    );
}

/// What a tracer's books say against a reference that saw everything (a roomy ring, no rate
/// budget): (seen, lost, counted by the guard, generated = what the reference saw, at least
/// `at_least`).
///
/// The reference is checked in turn against the storm's own count of its connects
/// (`connects`, when the storm knows it): one `CLOSE->SYN_SENT` each. Where the reference saw
/// fewer, the kernel skipped its program without counting the skip (BENCHMARKS.md, the
/// uncounted skips), and `generated` takes the storm's count for that kind. A tracer that
/// counts a transition twice still fails: it would exceed the storm. (It does, about once in
/// 30 runs on the host: `CLOSE->SYN_SENT` seen 90 + counted 511 against the storm's and the
/// reference's 600; issue 13's note has the likely cause, not mended yet.)
fn books(
    doc: &Value,
    reference: &TracerOutput,
    at_least: u64,
    connects: Option<u64>,
) -> (u64, u64, u64, u64) {
    let rdoc = reference.json();
    // What the reference saw and what it counted lost: in a guest its backup program can fail
    // to recover a nested run now and then, and says so (CI's 6.12 guest: 20 skipped, 18
    // recovered, 2 lost); no record may have been refused, and nothing else lost.
    assert_eq!(
        closing_count(&reference.stderr, "ring full"),
        0,
        "the reference's rings hold the storm: {}",
        reference.stderr
    );
    let mut generated = rdoc["transitions_seen"].as_u64().unwrap()
        + rdoc["transitions_lost"].as_u64().unwrap()
        + rdoc["lost_uncounted"].as_u64().unwrap();
    let ref_connects = rdoc["transitions"]["CLOSE->SYN_SENT"].as_u64().unwrap_or(0);
    // (Only when the reference lost nothing it knows of: a loss it counted may be this one.)
    if let Some(n) = connects
        && ref_connects < n
        && generated == rdoc["transitions_seen"].as_u64().unwrap()
    {
        eprintln!(
            "the reference saw {ref_connects} of the storm's {n} connects; the books take the \
             storm's count: {}",
            reference.stderr
        );
        generated += n - ref_connects;
    }
    // (The guard's record appears once it has acted.)
    assert!(rdoc["overload"].is_null(), "{}", reference.stderr);
    assert!(generated >= at_least, "reference saw {generated}");
    let counted: u64 = doc["overload"]["counted"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "RESET")
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    (
        doc["transitions_seen"].as_u64().unwrap(),
        doc["transitions_lost"].as_u64().unwrap(),
        counted,
        generated,
    )
}

/// For a failure message: the kinds whose seen + counted differ from the reference's seen, with
/// the difference (which transition was doubled or lacked, and on which side of the switch).
fn kinds_off(doc: &Value, reference: &TracerOutput) -> String {
    let mut off = std::collections::BTreeMap::<String, (i64, i64, i64)>::new();
    let kinds = |v: &Value| -> Vec<(String, i64)> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, n)| (k.clone(), n.as_i64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    for (k, n) in kinds(&doc["transitions"]) {
        off.entry(k).or_default().0 += n;
    }
    for (k, n) in kinds(&doc["overload"]["counted"]) {
        off.entry(k).or_default().1 += n;
    }
    for (k, n) in kinds(&reference.json()["transitions"]) {
        off.entry(k).or_default().2 += n;
    }
    let lines: Vec<String> = off
        .iter()
        .filter(|(k, (s, c, r))| *k != "RESET" && s + c != *r)
        .map(|(k, (s, c, r))| format!("{k}: seen {s} + counted {c}, the reference {r}"))
        .collect();
    format!("kinds off: {}", lines.join("; "))
}

/// Waits until no socket towards `port` is between its close and TIME_WAIT (or its end), so
/// that the tracer's last table check and `ss` afterwards see the same TIME_WAIT sockets: a
/// client's close() returns before its FIN exchange ends.
///
/// Up to 30 s. Not longer: the TIME_WAIT sockets compared with `ss` afterwards last 60 s (a
/// 70 s wait let them expire in CI's 5.10 guest, ss 0).
///
/// A FIN_WAIT2 socket whose peer socket is gone is not waited for: no FIN or RST can come, and
/// it stays FIN_WAIT2 until `tcp_fin_timeout` (60 s), then ends without TIME_WAIT, so it
/// changes neither side of the comparison. Seen in CI's 5.10 guest, one client in two of the
/// last runs ("FIN-WAIT-2 127.0.0.1:46062 127.0.0.1:30398", no server socket on the port): its
/// server end was most likely reset, not closed, and the RST, which TCP does not resend,
/// dropped on the loaded emulated loopback. `burst` now waits for the server to close every
/// connection, which removes the reset it saw; this keeps a dropped segment of any other kind
/// from failing a test about the tracer.
fn settle(port: u16) {
    let deadline = std::time::Instant::now() + T;
    loop {
        // (state, local, peer) of every socket on the port.
        let sockets = ss_rows(port);
        let has_peer =
            |local: &str, peer: &str| sockets.iter().any(|(_, l, p)| l == peer && p == local);
        let row =
            |(state, local, peer): &(String, String, String)| format!("{state} {local} {peer}");
        let closing: Vec<String> = sockets
            .iter()
            .filter(|(state, local, peer)| match state.as_str() {
                "FIN-WAIT-1" | "CLOSING" | "LAST-ACK" | "CLOSE-WAIT" => true,
                "FIN-WAIT-2" => has_peer(local, peer),
                _ => false,
            })
            .map(row)
            .collect();
        if closing.is_empty() {
            let orphans = sockets.iter().filter(|s| s.0 == "FIN-WAIT-2").count();
            if orphans > 0 {
                eprintln!("settle: {orphans} FIN_WAIT2 sockets of :{port} without a peer socket");
            }
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} sockets of :{port} still closing:\n{}\nall sockets of the port but TIME_WAIT:\n{}",
            closing.len(),
            closing.join("\n"),
            sockets
                .iter()
                .filter(|s| s.0 != "TIME-WAIT")
                .map(row)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Why `ss` may show no TIME_WAIT socket at all: at `net.ipv4.tcp_max_tw_buckets` the kernel
/// closes instead of making one (a host left full by an earlier storm).
fn tw_cap_note() -> String {
    let cap = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_max_tw_buckets").unwrap_or_default();
    let ss = Command::new("ss").arg("-s").output().unwrap();
    let summary = String::from_utf8_lossy(&ss.stdout);
    let tcp = summary
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .unwrap_or("");
    format!(
        " (the host: {tcp}; tcp_max_tw_buckets {}: at the cap no TIME_WAIT socket is made)",
        cap.trim()
    )
}

/// `ss`'s count of TIME_WAIT sockets towards `port`.
fn ss_time_wait(port: u16) -> u64 {
    let ss = Command::new("ss")
        .args(["-tanH", "state", "time-wait", &format!("dport = :{port}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&ss.stdout).lines().count() as u64
}
