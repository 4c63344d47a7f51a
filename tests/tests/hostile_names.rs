//! A process that names itself with terminal control sequences (`prctl(PR_SET_NAME)`, which any
//! unprivileged process may call) cannot reach the operator's terminal through any view: the
//! text views show `?` for each control character, the JSON views escape them and give the
//! name back exactly, and `/metrics` label values carry no control bytes.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tcptrace_tests::{exporter, *};

const T: Duration = Duration::from_secs(30);
/// Clears the screen and rings the bell when printed raw.
const HOSTILE: &str = "\x1b[2Jevil\x07";
/// What the text views show instead.
const SHOWN: &str = "?[2Jevil?";
const LEAKS: usize = 20;

fn assert_inert(view: &str, text: &str) {
    assert!(
        !text.contains('\x1b') && !text.contains('\x07'),
        "{view}: raw control characters reach the terminal:\n{text:?}"
    );
}

/// Every JSON string value that equals `want`, anywhere in `v`.
fn strings_equal(v: &Value, want: &str) -> usize {
    match v {
        Value::String(s) => usize::from(s == want),
        Value::Array(a) => a.iter().map(|x| strings_equal(x, want)).sum(),
        Value::Object(o) => o.values().map(|x| strings_equal(x, want)).sum(),
        _ => 0,
    }
}

#[test]
fn a_process_named_with_escape_sequences_is_inert_in_every_view() {
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let addr = SocketAddr::new(ip, port);
    let p = port.to_string();
    // Each runs until stopped (SIGINT), however long the others took to attach (seconds each
    // under QEMU's TCG), and then prints what it saw.
    let start = |cmd: &str, extra: &[&str]| {
        let mut a = vec![cmd, "--port", &p];
        if cmd != "trace" {
            a.extend_from_slice(&["--duration", "10m"]);
        }
        a.extend_from_slice(extra);
        Tracer::start(&a)
    };
    let trace_text = start("trace", &[]);
    let trace_json = start("trace", &["--json"]);
    let report_text = start("report", &[]);
    let report_json = start("report", &["--json"]);
    // stdout is a pipe: top prints plain snapshots.
    let top = start("top", &["--interval", "1s"]);
    let diagnose_text = start("diagnose", &[]);
    let diagnose_md = start("diagnose", &["--markdown"]);
    let diagnose_json = start("diagnose", &["--json"]);
    let (serve, metrics_addr) = exporter::serve(&["--port", &p]);

    // Started after the tracers, so its listen() and accepts are seen as they happen.
    let mut srv = Proc::spawn(Command::new(scenario_bin()).args([
        "server",
        "--comm",
        HOSTILE,
        "--bind",
        &addr.to_string(),
        "--conns",
        &LEAKS.to_string(),
        "--on-eof",
        "leak",
    ]));
    srv.expect("listening", T);
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", srv.pid())).unwrap();
    assert_eq!(comm.trim_end_matches('\n'), HOSTILE, "prctl renamed it");

    let mut cli = client(addr, &["--conns", &LEAKS.to_string()]);
    cli.wait_done(T);
    srv.wait_done(T);
    cli.finish();
    // top's next snapshot, after the leaks.
    std::thread::sleep(Duration::from_secs(2));

    let metrics = exporter::get(metrics_addr, "/metrics");
    assert_eq!(metrics.status, 200);
    assert_inert("/metrics", &metrics.body);
    assert_eq!(
        exporter::sample(
            &metrics.body,
            "tcptrace_close_wait_sockets",
            &[("pid", &srv.pid().to_string()), ("comm", SHOWN)]
        ),
        Some(LEAKS as f64),
        "{}",
        metrics.body
    );
    let report_json_served = exporter::get(metrics_addr, "/report.json");
    assert_inert("/report.json", &report_json_served.body);

    // Text views: every control character shown as `?`, on stdout and stderr.
    let trace_text = trace_text.stop();
    let outputs = [
        ("trace", trace_text),
        ("report", report_text.stop()),
        ("top", top.stop()),
        ("diagnose", diagnose_text.stop()),
    ];
    for (view, out) in &outputs {
        assert_inert(view, &out.stdout);
        assert_inert(view, &out.stderr);
        assert!(out.stdout.contains(SHOWN), "{view}:\n{}", out.stdout);
    }
    assert!(
        outputs[3]
            .1
            .stdout
            .contains(&format!("{SHOWN} (pid {}) leaks CLOSE_WAIT", srv.pid())),
        "{}",
        outputs[3].1.stdout
    );
    let md = diagnose_md.stop();
    assert_inert("diagnose --markdown", &md.stdout);
    assert!(md.stdout.contains("?\\[2Jevil?"), "{}", md.stdout);

    // JSON views: escaped on the wire, the exact name once parsed.
    let trace_json = trace_json.stop();
    assert_inert("trace --json", &trace_json.stdout);
    let lines = trace_json.json_lines();
    let named: Vec<&Value> = lines.iter().filter(|l| l["comm"] == HOSTILE).collect();
    assert!(named.len() >= LEAKS, "{}", trace_json.stdout);
    assert!(trace_json.stdout.contains("\\u001b[2Jevil\\u0007"));
    for (view, out) in [
        ("report --json", report_json.stop()),
        ("diagnose --json", diagnose_json.stop()),
    ] {
        assert_inert(view, &out.stdout);
        assert_inert(view, &out.stderr);
        assert!(
            strings_equal(&out.json(), HOSTILE) >= 1,
            "{view}: {}",
            out.stdout
        );
    }
    let served: Value = serde_json::from_str(&report_json_served.body).unwrap();
    assert!(strings_equal(&served, HOSTILE) >= 1);
    let serve = serve.stop();
    assert_inert("serve", &serve.stderr);
    srv.finish();
}
