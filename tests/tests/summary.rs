//! Summary mode (every command but `trace`): the kernel follows each socket in socket-local
//! storage and sends one record per CLOSE_WAIT entry and per close. It must report what a tracer
//! sent every transition reports, and its books must balance: transitions seen plus those counted
//! lost equal what a storm of exactly N connections generated.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tcptrace_tests::*;

/// The storm floods loopback; these tests run one at a time.
static STORM: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `tcpstorm` to completion against 127.0.77.1.. on `port` with `targets` listeners; its
/// result line.
fn storm(port: u16, conns: u64, threads: u32, targets: u32) -> Value {
    let out = Command::new(storm_bin())
        .args(["--conns", &conns.to_string(), "--seconds", "600"])
        .args(["--threads", &threads.to_string()])
        .args(["--targets", &targets.to_string()])
        .args(["--addr", &format!("127.0.77.1:{port}")])
        .stderr(Stdio::null())
        .output()
        .expect("run tcpstorm");
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("tcpstorm's result");
    assert_eq!(v["conns"].as_u64(), Some(conns), "{v}");
    assert_eq!(v["addr_not_avail"], 0, "{v}");
    assert_eq!(v["other_errors"], 0, "{v}");
    v
}

fn dwell_counts(doc: &Value) -> BTreeMap<String, u64> {
    doc["dwell_ms"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["count"].as_u64().unwrap()))
        .collect()
}

/// The same storm watched by a tracer in summary mode and one sent every transition: the same
/// totals, the same dwell distributions (counts exact, quantiles within a tenth of a ms: the
/// two read the kernel's clock at the same transition, but each in its own program; see below), the same
/// rows per process, and what the summary tracer says it saw adds up.
#[test]
fn summaries_report_what_every_transition_reports() {
    let _alone = STORM.lock().unwrap_or_else(|e| e.into_inner());
    let port = free_port("127.0.77.1".parse().unwrap());
    let p = port.to_string();
    let summary = Tracer::start(&["report", "--json", "--port", &p, "--summaries"]);
    let every = Tracer::start(&["report", "--json", "--port", &p]);
    // Before 5.11 (5.12 for the cookie) tracing programs have no socket storage: the summary
    // tracer says so and follows every transition too, and must still agree.
    if !summary
        .started
        .contains("a summary per CLOSE_WAIT entry and close")
    {
        assert!(
            summary
                .started
                .contains("socket-local storage from tp_btf unavailable")
                && summary.started.contains("every transition"),
            "{}",
            summary.started
        );
        assert!(
            tcptrace_tests::kernel::charges_memlock(),
            "only before 5.11"
        );
    }
    assert!(every.started.contains("every transition"));
    let conns = 2000;
    storm(port, conns, 2, 4);
    std::thread::sleep(Duration::from_millis(500));
    let (s, e) = (summary.stop(), every.stop());
    assert_eq!(s.code, Some(0), "{}", s.stderr);
    assert_eq!(e.code, Some(0), "{}", e.stderr);
    let (s, e) = (s.json(), e.json());
    assert_eq!(s["lost_events"], 0);
    assert_eq!(e["lost_events"], 0);
    assert_eq!(s["totals"], e["totals"]);
    // TIME_WAIT and orphaned FIN_WAIT2 stays end on the kernel's timers and by port reuse
    // while the two tracers are stopped one after the other: one of the sockets still in those
    // states at the stop may have ended in one tracer's window and not the other's (seen under
    // TCG: FIN_WAIT2 2000 vs 1999, TIME_WAIT max 12.5 vs 10.9 ms). Their counts may differ by
    // at most that many, and their max is not compared; everything else is exact.
    let open_ended = ["TIME_WAIT", "FIN_WAIT2"];
    let still =
        e["totals"]["TIME_WAIT"].as_u64().unwrap() + e["totals"]["FIN_WAIT2"].as_u64().unwrap();
    let (cs, ce) = (dwell_counts(&s), dwell_counts(&e));
    assert_eq!(cs.keys().collect::<Vec<_>>(), ce.keys().collect::<Vec<_>>());
    for (state, n) in &ce {
        let m = cs[state];
        if open_ended.contains(&state.as_str()) {
            assert!(
                n.abs_diff(m) <= still,
                "{state}: {m} vs {n}, {still} still open"
            );
        } else {
            assert_eq!(m, *n, "{state} stays");
        }
    }
    // Quantiles: the two tracers read the clock in their own programs at the same
    // transition, microseconds apart on the host. When a CPU is taken away between the two
    // programs (a vCPU descheduled by the hypervisor, or a TCG guest sharing the host's CPUs
    // with two others), those samples differ by the pause. The max is one sample, so one pause
    // moves it: seen on the host (LAST_ACK max 0.058 vs 0.373 ms) and in CI's 6.1 guest
    // (SYN_RECV max 7.695 vs 8.309 ms); it is not compared. Under TCG the pauses are frequent
    // enough to move the tail by tens of percent (6.1 guest: TIME_WAIT p90 5.77 vs 6.242 ms;
    // 6.12: LAST_ACK p99 5.446 vs 5.842, LAST_ACK p90 0.8 vs 1.136). So: the median within
    // 0.1 ms + 5% (0.1 ms + 25% for the open-ended states, which end on timers and port reuse
    // that the two tracers learn in different ways: 6.12 guest TIME_WAIT p50 2.745 vs 3.079 ms),
    // and, for the closed states, the p90 within 0.1 ms + 25% or, where TCG's pauses stretched
    // a tail beyond that, each tracer's p90 inside the other's p50..p99 band (0.1 ms either
    // side): a check of the tail's shape rather than its scale (a band of a few samples, as
    // LISTEN's four, is too narrow for the pauses: 3039.4 ms against 3034.1..3038.2 in the 6.1
    // guest, which the 25% covers). A summary that measured from the wrong transition is off
    // by a whole stay in most samples and fails the median; one that mismeasured a tenth of
    // them moves its p90 out of both.
    let q = |d: &Value, state: &str, q: &str| d["dwell_ms"][state][q].as_f64().unwrap();
    for state in e["dwell_ms"].as_object().unwrap().keys() {
        let open = open_ended.contains(&state.as_str());
        let (a, b) = (q(&e, state, "p50"), q(&s, state, "p50"));
        let share = if open { 0.25 } else { 0.05 };
        assert!(
            (a - b).abs() <= 0.1 + a * share,
            "{state} p50: every transition {a} ms, summaries {b} ms"
        );
        if open {
            continue;
        }
        let (a, b) = (q(&e, state, "p90"), q(&s, state, "p90"));
        if (a - b).abs() <= 0.1 + a * 0.25 {
            continue;
        }
        for (x, y, name) in [(&e, &s, "every transition"), (&s, &e, "summaries")] {
            let (p90, lo, hi) = (q(x, state, "p90"), q(y, state, "p50"), q(y, state, "p99"));
            assert!(
                lo - 0.1 <= p90 && p90 <= hi + 0.1,
                "{state}: p90 {a} vs {b} ms, and {name}'s outside the other's p50..p99 \
                 ({lo}..{hi} ms) by more than 0.1 ms"
            );
        }
    }
    assert_eq!(s["lifetime_ms"]["count"], e["lifetime_ms"]["count"]);
    let rows = |d: &Value| -> Vec<(u64, u64, u64, u64)> {
        let mut v: Vec<_> = d["by_pid"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let n = |k: &str| r[k].as_u64().unwrap();
                (
                    n("pid"),
                    n("time_wait"),
                    n("time_wait_entries"),
                    n("close_wait_entries"),
                )
            })
            .collect();
        v.sort();
        v
    };
    let (rs, re) = (rows(&s), rows(&e));
    assert_eq!(rs.len(), re.len(), "{rs:?} vs {re:?}");
    for (a, b) in rs.iter().zip(&re) {
        // Owners, current TIME_WAIT and CLOSE_WAIT entries exact. TIME_WAIT entries within the
        // sockets still open, as above: once in the 6.1 guest every transition counted 1999 of
        // 2000 (a socket held as an orphan FIN_WAIT2 becomes TIME_WAIT when its peer's FIN is
        // applied, which a summary reports with the peer's close); not explained further.
        assert_eq!((a.0, a.1, a.3), (b.0, b.1, b.3), "{rs:?} vs {re:?}");
        assert!(
            a.2.abs_diff(b.2) <= still,
            "{rs:?} vs {re:?}, {still} still open"
        );
    }
    // 10 transitions per connection, 2 per listener: the summary tracer followed them in the
    // kernel, the other received them one by one. Both saw the same; a child the kernel
    // created and dropped at once is two more (see `dropped_children`), which neither report
    // can tell apart, so only a few such pairs are allowed beyond the storm's count.
    let generated = 10 * conns + 2 * 4;
    assert_eq!(s["transitions_seen"], e["transitions_seen"], "{s:#}");
    let seen = e["transitions_seen"].as_u64().unwrap();
    assert!(
        seen >= generated && (seen - generated) % 2 == 0 && seen - generated <= 10,
        "every transition: {seen} seen, {generated} generated by the storm"
    );
}

/// Children the kernel created and closed at once (`LISTEN -> SYN_RECV -> CLOSE`: two CPUs
/// completed the same handshake and the loser's child is dropped; `loss.rs`'s reference tracer
/// saw one in the 6.1 guest): two transitions each that happened beyond the storm's ten per
/// connection. Counted from a tracer of every transition.
fn dropped_children(lines: &[Value]) -> u64 {
    socket_lives(lines)
        .iter()
        .filter(|s| s.transitions() == ["LISTEN->SYN_RECV", "SYN_RECV->CLOSE"])
        .count() as u64
}

/// Delivered (followed in the kernel, or received) plus counted lost equals generated, under
/// `report` (summary mode) and `trace` (every transition), for a storm of exactly N
/// connections. Storms run on every kernel of the matrix.
#[test]
fn the_books_balance_for_a_storm_of_exactly_n_connections() {
    let _alone = STORM.lock().unwrap_or_else(|e| e.into_inner());
    let port = free_port("127.0.77.1".parse().unwrap());
    let p = port.to_string();
    let report = Tracer::start(&["report", "--json", "--port", &p, "--summaries"]);
    let trace = Tracer::start(&["trace", "--json", "--port", &p]);
    let (conns, targets) = (5000u64, 4u64);
    storm(port, conns, 2, targets as u32);
    std::thread::sleep(Duration::from_millis(500));
    let (r, t) = (report.stop(), trace.stop());
    let lines = t.json_lines();
    let generated = 10 * conns + 2 * targets + 2 * dropped_children(&lines);
    let doc = r.json();
    let (seen, lost) = (
        doc["transitions_seen"].as_u64().unwrap(),
        doc["transitions_lost"].as_u64().unwrap(),
    );
    assert_eq!(
        seen + lost,
        generated,
        "report: seen {seen} + lost {lost}; trace: {} lines, {} dropped children\n{}",
        lines.len(),
        dropped_children(&lines),
        r.stderr
    );
    let lines = lines.len() as u64;
    let lost = closing_count(&t.stderr, " events (");
    assert_eq!(
        lines + lost,
        generated,
        "trace: {lines} lines + lost {lost}\n{}",
        t.stderr
    );
}
