//! Instant root cause on real sockets: a CLOSE_WAIT leak that began before the tracer did is
//! dated from the kernel's clocks (its rate, start and EMFILE projection from a one-second
//! look), the three ways of leaking are told apart by their receive queues, and failed connects
//! are counted by process, destination and errno: EADDRNOTAVAIL from a namespace with four
//! ephemeral ports, ECONNREFUSED from a closed port.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tcptrace_tests::{netns::TestNetns, *};

const T: Duration = Duration::from_secs(60);

fn pid_row(doc: &Value, pid: u32) -> &Value {
    doc["by_pid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pid"] == pid)
        .unwrap_or_else(|| panic!("no by_pid row for {pid}: {:#}", doc["by_pid"]))
}

/// CLOCK_MONOTONIC and the wall clock read together, ns and s.
fn clocks() -> (u64, f64) {
    // SAFETY: clock_gettime writes one timespec we own.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    (mono, unix)
}

fn within(got: f64, want: f64, share: f64) -> bool {
    (got - want).abs() <= share * want.abs()
}

/// A server that reads each connection to EOF and never closes it, fed 4 connections a second
/// for 8 s before the tracer starts; `diagnose --duration 1s` must tell the rate, the start and
/// the time to EMFILE within 25 % of what the client measured, and the cause.
#[test]
fn a_leak_older_than_tracing_gets_its_rate_start_and_emfile_projection_in_one_second() {
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let addr = SocketAddr::new(ip, port);
    let (srv, _) = server(
        addr,
        &["--conns", "1000", "--on-eof", "leak", "--nofile", "600"],
    );
    let mut cl = client(addr, &["--conns", "1000", "--interval-ms", "250"]);
    let first: Vec<u64> = cl
        .expect("client-times", T)
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let first_connect_ns = first[1];
    std::thread::sleep(Duration::from_secs(8));
    let tracer = Tracer::start(&[
        "diagnose",
        "--json",
        "--duration",
        "1s",
        "--port",
        &port.to_string(),
    ]);
    let out = tracer.wait();
    let (end_mono, end_unix) = clocks();
    // Stop the leak, then read what the client printed up to now.
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(cl.pid() as i32, libc::SIGKILL) };
    cl.drain(Duration::from_secs(5));
    // What the client measured: its connects, paced on a loaded host as they really were.
    let connects: Vec<u64> = cl
        .seen_with("client-times")
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .filter(|&t: &u64| t <= end_mono)
        .collect();
    let n = connects.len() as f64;
    let last = *connects.last().unwrap();
    let rate = (n - 1.0) / ((last - first_connect_ns) as f64 / 1e9);
    let start_unix = end_unix - (end_mono - first_connect_ns) as f64 / 1e9;
    let span_s = end_unix - start_unix;
    cl.finish();
    srv.finish();

    let doc = out.json();
    let f = findings(&doc, "close_wait_leak");
    assert_eq!(f.len(), 1, "{:#}\n{}", doc["findings"], out.stderr);
    let f = f[0];
    eprintln!("{}", serde_json::to_string_pretty(f).unwrap());
    eprintln!("measured: {n} connects, {rate:.2}/s since {start_unix:.1} ({span_s:.1} s ago)");
    assert!(f["title"].as_str().unwrap().contains("growing"), "{f:#}");
    let got_rate = f["growth_per_s"].as_f64().unwrap();
    assert!(within(got_rate, rate, 0.25), "rate {got_rate} vs {rate}");
    let since = f["since_unix"].as_f64().unwrap();
    assert!(
        (since - start_unix).abs() <= 0.25 * span_s,
        "since {since} vs {start_unix} ({span_s} s ago)"
    );
    assert_eq!(f["since_estimated"], true, "{f:#}");
    assert!(f["numbers"]["close_wait_age_estimated"].as_f64().unwrap() >= 20.0);
    // The projection from the numbers the finding shows and the rate the client had.
    let p = &f["who"]["processes"][0];
    assert_eq!(p["nofile_limit"], 600);
    let fds = p["open_fds"].as_f64().unwrap();
    let want_eta = (600.0 - fds) / rate;
    let eta = f["eta_s"].as_f64().unwrap();
    assert!(within(eta, want_eta, 0.25), "eta {eta} vs {want_eta}");
    assert_eq!(f["cause"], "read_eof_not_closed", "{f:#}");
}

/// `ss -tanH state close-wait` Recv-Q of each socket on `port`: the referee for the causes.
fn recv_queues(port: u16) -> Vec<u64> {
    let out = Command::new("ss")
        .args(["-tanH", "state", "close-wait", &format!("sport = :{port}")])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Three servers, each leaking five sockets its own way: one reads EOF and keeps the socket
/// (Recv-Q 0), one never reads (Recv-Q 1: the FIN), one reads 10 of 60 bytes and stops
/// (Recv-Q 51). `report` and `diagnose` tell each by its cause, as `ss` shows it (read from
/// the last kernel table dump, at the end).
#[test]
fn each_way_of_leaking_close_wait_is_told_by_its_receive_queue() {
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let cases: [(&[&str], &[&str], &str, u64); 3] = [
        (&["--on-eof", "leak"], &[], "read_eof_not_closed", 0),
        (&["--stop-after", "0"], &[], "never_read_eof", 1),
        (
            &["--stop-after", "10"],
            &["--send", "60"],
            "stopped_reading",
            51,
        ),
    ];
    let ports: Vec<u16> = cases.iter().map(|_| free_port(ip)).collect();
    let ports_s: Vec<String> = ports.iter().map(u16::to_string).collect();
    let filter: Vec<&str> = ports_s
        .iter()
        .flat_map(|p| ["--port", p.as_str()])
        .collect();
    let tracer = Tracer::start(&[&["report", "--json"][..], &filter].concat());
    let diag = Tracer::start(&[&["diagnose", "--json"][..], &filter].concat());
    let mut procs = Vec::new();
    for ((srv_args, cl_args, cause, rq), port) in cases.iter().zip(&ports) {
        let addr = SocketAddr::new(ip, *port);
        let mut a = vec!["--conns", "5"];
        a.extend_from_slice(srv_args);
        let (srv, _) = server(addr, &a);
        let mut a = vec!["--conns", "5"];
        a.extend_from_slice(cl_args);
        let mut cl = client(addr, &a);
        cl.wait_done(T);
        procs.push((srv, cl, *cause, *rq, *port));
    }
    // Every server socket in CLOSE_WAIT with the receive queue its way of leaking leaves.
    for (_, _, cause, rq, port) in &procs {
        let deadline = std::time::Instant::now() + T;
        while recv_queues(*port) != vec![*rq; 5] {
            assert!(
                std::time::Instant::now() < deadline,
                "{cause}: {:?}",
                recv_queues(*port)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let doc = tracer.stop().json();
    let diag = diag.stop().json();
    for (srv, cl, cause, _, _) in procs {
        let row = pid_row(&doc, srv.pid());
        eprintln!("{cause}: {}", row["close_wait_causes"]);
        assert_eq!(row["close_wait"], 5);
        assert_eq!(row["close_wait_causes"][cause], 5, "{row:#}");
        assert_eq!(row["close_wait_causes"]["unknown"], 0, "{row:#}");
        let f: Vec<&Value> = findings(&diag, "close_wait_leak")
            .into_iter()
            .filter(|f| f["who"]["processes"][0]["pid"] == srv.pid())
            .collect();
        assert_eq!(f.len(), 1, "{:#}", diag["findings"]);
        eprintln!(
            "{}\n  why: {}\n  fix: {}",
            f[0]["title"], f[0]["why"], f[0]["fix"][0]
        );
        assert_eq!(f[0]["cause"], cause, "{:#}", f[0]);
        assert_eq!(f[0]["causes"][cause], 5, "{:#}", f[0]);
        cl.finish();
        srv.finish();
    }
}

fn failures<'a>(doc: &'a Value, errno: &str) -> Vec<&'a Value> {
    doc["connect_failures"]
        .as_array()
        .expect("connect_failures")
        .iter()
        .filter(|r| r["errno"] == errno)
        .collect()
}

/// Four ephemeral ports, `tcp_tw_reuse` off, a client that closes first: four connections
/// leave their ports in TIME_WAIT, and every later connect() fails with EADDRNOTAVAIL. The
/// tracer counts each failure the client saw, names it, and diagnose says ports ran out.
#[test]
fn no_port_left_is_counted_as_eaddrnotavail_per_process_and_destination() {
    let ns = TestNetns::add();
    for s in [
        "net.ipv4.ip_local_port_range=40000 40003",
        "net.ipv4.tcp_tw_reuse=0",
    ] {
        netns::ip(&["netns", "exec", &ns.name, "sysctl", "-q", "-w", s]);
    }
    let port = "20400";
    let mut srv = ns.scenario(&["server", "--bind", "127.0.0.1:20400", "--conns", "4"]);
    srv.expect("listening", T);
    let in_ns = |cmd: &str| {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", ns.path().display()))
            .arg(tcptrace_bin())
            .arg(cmd);
        c
    };
    let report = Tracer::start_command(in_ns("report").args(["--json", "--port", port]));
    let diag = Tracer::start_command(in_ns("diagnose").args(["--json", "--port", port]));
    let mut cl = ns.scenario(&["client", "--connect", "127.0.0.1:20400", "--conns", "10"]);
    cl.wait_done(T);
    srv.wait_done(T);
    let refused = cl.seen_with("refused");
    let connected = cl.seen_with("connected").len();
    let doc = report.stop_after(Duration::from_secs(2)).json();
    let diag = diag.stop().json();
    eprintln!("client: {connected} connected, refused {refused:?}");
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&doc["connect_failures"]).unwrap()
    );
    assert_eq!(connected, 4, "{:?}", cl.seen);
    assert!(
        refused.iter().all(|r| r == "AddrNotAvailable"),
        "{refused:?}"
    );
    let rows = failures(&doc, "EADDRNOTAVAIL");
    assert_eq!(rows.len(), 1, "{:#}", doc["connect_failures"]);
    let r = rows[0];
    assert_eq!(r["count"], refused.len() as u64);
    assert_eq!(r["pid"], cl.pid());
    assert_eq!(r["comm"], "tcpscenario");
    assert_eq!(
        (r["addr"].as_str(), r["port"].as_u64()),
        (Some("127.0.0.1"), Some(20400))
    );
    assert_eq!(doc["table"]["connect_failures"], refused.len() as u64);

    let f = findings(&diag, "port_exhaustion");
    assert_eq!(f.len(), 1, "{:#}", diag["findings"]);
    eprintln!("{}", serde_json::to_string_pretty(f[0]).unwrap());
    assert_eq!(
        f[0]["numbers"]["connect_eaddrnotavail"],
        refused.len() as f64
    );
    assert_eq!(f[0]["who"]["processes"][0]["pid"], cl.pid());
    assert_eq!(f[0]["severity"], "critical");
    cl.finish();
    srv.finish();
}

/// Connects to a port nobody listens on are refused (a RST answers the SYN): counted as
/// ECONNREFUSED by process and destination in summary mode (`report`) and noted on the trace
/// line of the failed connect (`trace`, every transition, `sk_err` in the event).
#[test]
fn refused_connects_are_counted_and_noted_on_the_trace() {
    for ip in loopbacks() {
        let port = free_port(ip);
        let addr = SocketAddr::new(ip, port);
        let report = Tracer::start(&["report", "--json", "--port", &port.to_string()]);
        let trace = Tracer::start(&["trace", "--json", "--port", &port.to_string()]);
        let mut cl = client(addr, &["--conns", "3"]);
        let pid = cl.pid();
        cl.wait_done(T);
        let refused = cl.seen_with("refused");
        assert_eq!(refused, vec!["ConnectionRefused"; 3], "{:?}", cl.seen);
        let doc = report.stop_after(Duration::from_secs(1)).json();
        let lines = trace.stop_after(Duration::from_secs(1)).json_lines();
        cl.finish();
        let rows = failures(&doc, "ECONNREFUSED");
        assert_eq!(rows.len(), 1, "{:#}", doc["connect_failures"]);
        assert_eq!(rows[0]["count"], 3);
        assert_eq!(rows[0]["pid"], pid);
        assert_eq!(rows[0]["addr"], ip.to_string());
        assert_eq!(rows[0]["port"], port);
        let noted: Vec<&Value> = lines
            .iter()
            .filter(|l| l["note"] == "connect_failed:ECONNREFUSED")
            .collect();
        assert_eq!(noted.len(), 3, "{lines:#?}");
        for l in noted {
            assert_eq!(
                (l["old"].as_str(), l["new"].as_str()),
                (Some("SYN_SENT"), Some("CLOSE"))
            );
        }
    }
}
