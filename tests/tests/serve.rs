//! `tcptrace serve`: a real Prometheus scrapes it and answers PromQL with the CLOSE_WAIT count of
//! a leaking process; label cardinality is bounded; hostile HTTP gets errors, never a crash; the
//! default bind is loopback; /report.json is the `report --json` document.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use tcptrace_tests::{exporter::*, *};

const T: Duration = Duration::from_secs(30);

fn ss_close_wait(port: u16) -> usize {
    let out = Command::new("ss")
        .args(["-tanH", "state", "close-wait", &format!("sport = :{port}")])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn prometheus_scrapes_the_close_wait_count_of_a_leaking_process() {
    let (tracer, addr) = serve(&[]);
    let prom = Prometheus::start(addr);
    let (srv, port) = leaker(5);
    assert_eq!(ss_close_wait(port), 5);
    let pid = srv.pid();

    let q = format!("tcptrace_close_wait_sockets{{job=\"tcptrace\",pid=\"{pid}\"}}");
    let r = prom.wait_for(&q, 5.0, T);
    assert_eq!(
        r.len(),
        1,
        "{q} -> {r:?}\nup {:?}, scrape_duration_seconds {:?}\n{}",
        prom.query("up"),
        prom.query("scrape_duration_seconds"),
        prom.log()
    );
    assert_eq!(r[0].1, 5.0, "{q} -> {r:?}");
    assert_eq!(r[0].0["comm"], "tcpscenario");
    // Per local port too, and Prometheus sees the target up.
    let q = format!("tcptrace_local_port_sockets{{state=\"CLOSE_WAIT\",port=\"{port}\"}}");
    assert_eq!(prom.wait_for(&q, 5.0, T)[0].1, 5.0, "{q}");
    assert_eq!(prom.query("up{job=\"tcptrace\"}")[0].1, 1.0);

    // The application finally closes: the series drops to zero or vanishes with the process.
    srv.finish();
    let q = format!("sum(tcptrace_close_wait_sockets{{pid=\"{pid}\"}}) or vector(0)");
    assert_eq!(prom.wait_for(&q, 0.0, T)[0].1, 0.0, "{q}");
    // Each leaked socket's CLOSE_WAIT stay ended and was measured.
    let q = "tcptrace_state_dwell_seconds_count{state=\"CLOSE_WAIT\"} >= 5";
    let deadline = Instant::now() + T;
    while prom.query(q).is_empty() {
        assert!(Instant::now() < deadline, "{q} stayed empty");
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = tracer.stop();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn metrics_are_well_formed_and_sum_to_the_totals() {
    let (_srv, port) = leaker(3);
    let (tracer, addr) = serve(&["--port", &port.to_string()]);
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    // promtool (from the prometheus package) parses and lints the exposition.
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(r.body.as_bytes())
        .unwrap();
    let res = check.wait_with_output().unwrap();
    assert!(
        res.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );

    let total = sample(&r.body, "tcptrace_sockets", &[("state", "CLOSE_WAIT")]).unwrap();
    assert_eq!(total, 3.0, "{}", r.body);
    let by_pid: f64 = samples(&r.body, "tcptrace_close_wait_sockets")
        .iter()
        .map(|s| s.1)
        .sum();
    assert_eq!(by_pid, total, "per-process series sum to the total");
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "tcptrace_events_total",
        "tcptrace_evictions_total",
        "tcptrace_reconcile_corrections_total",
        "tcptrace_timewait_hook_missed_total",
        "tcptrace_port_filter_forgotten_sockets_total",
    ] {
        assert!(!samples(&r.body, family).is_empty(), "{family} missing");
    }
    assert!(sample(&r.body, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    for cause in ["ring_full", "nested", "reset_nested", "undecodable"] {
        assert!(sample(&r.body, "tcptrace_lost_events_total", &[("cause", cause)]).is_some());
    }
    // The three leaked sockets predate tcptrace: reconciliation added them.
    assert!(
        sample(
            &r.body,
            "tcptrace_reconcile_corrections_total",
            &[("kind", "added")]
        )
        .unwrap()
            >= 3.0
    );
    // Histograms: cumulative buckets end in +Inf = count.
    let count = sample(
        &r.body,
        "tcptrace_state_dwell_seconds_count",
        &[("state", "ESTABLISHED")],
    )
    .unwrap();
    let inf = sample(
        &r.body,
        "tcptrace_state_dwell_seconds_bucket",
        &[("state", "ESTABLISHED"), ("le", "+Inf")],
    )
    .unwrap();
    assert_eq!(count, inf);
    let _ = tracer.stop();
}

#[test]
fn processes_past_the_limit_fold_into_other() {
    let (big, big_port) = leaker(3);
    let (small, small_port) = leaker(2);
    let ports = format!("{big_port}");
    let (tracer, addr) = serve(&[
        "--top-pids",
        "1",
        "--port",
        &ports,
        "--port",
        &small_port.to_string(),
    ]);
    let body = get(addr, "/metrics").body;
    let cw = samples(&body, "tcptrace_close_wait_sockets");
    // The busiest process, `other`, and `unknown`: three series, whatever the host runs.
    assert_eq!(cw.len(), 3, "{cw:?}");
    let pid = |p: u32| p.to_string();
    assert_eq!(
        sample(
            &body,
            "tcptrace_close_wait_sockets",
            &[("pid", &pid(big.pid()))]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &body,
            "tcptrace_close_wait_sockets",
            &[("pid", &pid(small.pid()))]
        ),
        None
    );
    assert_eq!(
        sample(&body, "tcptrace_close_wait_sockets", &[("pid", "other")]),
        Some(2.0)
    );
    assert_eq!(
        sample(&body, "tcptrace_folded_groups", &[("dimension", "process")]),
        Some(1.0)
    );
    let _ = tracer.stop();
}

#[test]
fn hostile_requests_get_errors_and_the_exporter_keeps_serving() {
    let dir = std::env::temp_dir().join(format!("tcptrace-serve-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("serve.toml");
    std::fs::write(&cfg, "max_connections = 4\ntop_pids = 5\n").unwrap();
    let (tracer, addr) = serve(&["--config", cfg.to_str().unwrap()]);

    let status = |req: &[u8]| raw(addr, req).map(|r| r.status);
    assert_eq!(status(b"GARBAGE\r\n\r\n"), Some(400));
    assert_eq!(
        status(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        Some(400)
    );
    let mut huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend_from_slice(b"\r\n\r\n");
    assert_eq!(status(&huge), Some(431));
    let mut many = b"GET /metrics HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..500 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(status(&many), Some(431));
    assert_eq!(get(addr, "/nope").status, 404);
    assert_eq!(get(addr, "/metrics/../etc/passwd").status, 404);
    let post = raw(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let head = raw(
        addr,
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!((head.status, head.body.as_str()), (200, ""));

    // Idle connections take the 4 slots; a fifth is closed at once, unanswered.
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    assert!(raw(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").is_none());
    // A client that sends nothing is dropped after the 5 s head timeout, freeing its slot.
    let t = Instant::now();
    let mut buf = [0u8; 16];
    let mut first = &idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert_eq!(std::io::Read::read(&mut first, &mut buf).unwrap_or(0), 0);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    drop(idle);
    std::thread::sleep(Duration::from_millis(200));

    let h = get(addr, "/healthz");
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    assert_eq!(get(addr, "/metrics").status, 200);
    let out = tracer.stop();
    assert_eq!(out.code, Some(0), "exited cleanly: {}", out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn default_bind_is_loopback() {
    let tracer = Tracer::start(&["serve"]);
    assert!(
        tracer
            .started
            .contains("serving http://127.0.0.1:9977/metrics"),
        "{}",
        tracer.started
    );
    let out = Command::new("ss")
        .args(["-tlnpH", "sport = :9977"])
        .output()
        .unwrap();
    let listeners = String::from_utf8_lossy(&out.stdout).into_owned();
    let ours: Vec<&str> = listeners
        .lines()
        .filter(|l| l.contains(&format!("pid={},", tracer.pid())))
        .collect();
    assert_eq!(ours.len(), 1, "{listeners}");
    assert!(ours[0].contains("127.0.0.1:9977"), "{listeners}");
    assert_eq!(
        get("127.0.0.1:9977".parse().unwrap(), "/healthz").status,
        200
    );
    let _ = tracer.stop();
}

#[test]
fn report_json_is_the_report_document() {
    let (srv, port) = leaker(2);
    let (tracer, addr) = serve(&["--port", &port.to_string()]);
    let r = get(addr, "/report.json");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let doc: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(doc["schema"], 1);
    assert!(doc["lost_events"].is_u64());
    assert_eq!(doc["hook"], "tp_btf");
    let row = doc["by_pid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pid"] == srv.pid())
        .unwrap_or_else(|| panic!("{doc:#}"));
    assert_eq!(row["close_wait"], 2);
    assert_eq!(doc["totals"]["CLOSE_WAIT"], 2);
    let _ = tracer.stop();
}

#[test]
fn a_bad_config_or_a_taken_port_is_an_error() {
    let ip = "127.0.0.1".parse().unwrap();
    let taken = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    let out = run_tcptrace(&[
        "serve",
        "--listen",
        &taken.local_addr().unwrap().to_string(),
    ]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("cannot listen on"), "{}", out.stderr);
    let bad = std::env::temp_dir().join(format!("tcptrace-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, "listen = 9977\n").unwrap();
    let out = run_tcptrace(&["serve", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("invalid type"), "{}", out.stderr);
    let _ = std::fs::remove_file(bad);
}

/// An answer includes every transition made before the request: a listener opened just before
/// each of these requests is in it, and gone from the next once closed. (Answering with what
/// had passed the reader's watermark missed the listener in 29 of 30 such requests: the
/// watermark trails by the clock slack, and stays put while a ring's record is being written.)
#[test]
fn an_answer_includes_what_happened_just_before_the_request() {
    let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let p = port.to_string();
    let (tracer, addr) = serve(&["--port", &p]);
    let listening = |doc: &serde_json::Value| doc["totals"]["LISTEN"].as_u64();
    for round in 0..20 {
        let l = std::net::TcpListener::bind(SocketAddr::new(ip, port)).expect("bind");
        let doc: serde_json::Value = serde_json::from_str(&get(addr, "/report.json").body).unwrap();
        assert_eq!(
            listening(&doc),
            Some(1),
            "round {round}: {}",
            report_digest(&doc)
        );
        drop(l);
        let doc: serde_json::Value = serde_json::from_str(&get(addr, "/report.json").body).unwrap();
        assert_eq!(
            listening(&doc),
            Some(0),
            "round {round}: {}",
            report_digest(&doc)
        );
    }
    let _ = tracer.stop();
}
