//! Every `trace` filter against traffic it must keep and traffic it must drop.

use std::{net::SocketAddr, os::unix::fs::symlink, time::Duration};

use tcptrace_tests::*;

const T: Duration = Duration::from_secs(20);

/// One client -> server round: client closes first. Returns (client local, accepted local).
fn round(addr: SocketAddr, client_args: &[&str]) -> (String, String, u32, u32) {
    let (mut srv, _) = server(addr, &["--on-eof", "close"]);
    let mut args = vec!["--hold-ms", "10"];
    args.extend_from_slice(client_args);
    let mut cli = client(addr, &args);
    let local = cli.expect("connected", T);
    let acc = srv.expect("accepted", T);
    cli.wait_done(T);
    srv.wait_done(T);
    let pids = (cli.pid(), srv.pid());
    cli.finish();
    srv.finish();
    (local, acc, pids.0, pids.1)
}

fn trace(args: &[&str], traffic: impl FnOnce()) -> Vec<serde_json::Value> {
    let mut a = vec!["trace", "--json"];
    a.extend_from_slice(args);
    let tracer = Tracer::start(&a);
    traffic();
    std::thread::sleep(Duration::from_millis(300));
    tracer.stop().json_lines()
}

fn ports_of(lines: &[serde_json::Value]) -> Vec<(u64, u64)> {
    lines
        .iter()
        .map(|l| (l["lport"].as_u64().unwrap(), l["rport"].as_u64().unwrap()))
        .collect()
}

fn v4() -> std::net::IpAddr {
    "127.0.0.1".parse().unwrap()
}

#[test]
fn port_keeps_its_port_and_drops_others() {
    let (p, q) = (free_port(v4()), free_port(v4()));
    let lines = trace(&["--port", &p.to_string()], || {
        round(SocketAddr::new(v4(), p), &[]);
        round(SocketAddr::new(v4(), q), &[]);
    });
    assert_eq!(
        lines.len(),
        12,
        "10 transitions + listener's 2 on port {p}: {lines:?}"
    );
    for (l, r) in ports_of(&lines) {
        assert!(l == p as u64 || r == p as u64, "only port {p}: {l}->{r}");
    }
}

#[test]
fn lport_keeps_server_side_and_rport_keeps_client_side() {
    let p = free_port(v4());
    let addr = SocketAddr::new(v4(), p);
    let lines = trace(&["--lport", &p.to_string()], || {
        round(addr, &[]);
    });
    assert_eq!(lines.len(), 7, "listener 2 + accepted 5: {lines:?}");
    assert!(lines.iter().all(|l| l["lport"] == p), "{lines:?}");

    let p = free_port(v4());
    let addr = SocketAddr::new(v4(), p);
    let lines = trace(&["--rport", &p.to_string()], || {
        round(addr, &[]);
    });
    assert_eq!(lines.len(), 5, "client socket only: {lines:?}");
    assert!(lines.iter().all(|l| l["rport"] == p), "{lines:?}");
}

#[test]
fn pid_keeps_only_that_processs_sockets() {
    let p = free_port(v4());
    let addr = SocketAddr::new(v4(), p);
    let (mut srv, _) = server(addr, &["--conns", "2", "--on-eof", "close"]);
    // Both clients keep their socket open until `finish`, so it closes only once the tracer
    // is attached, however long that takes (seconds under emulation).
    let mut a = client(addr, &["--leak"]);
    let mut b = client(addr, &["--leak"]);
    let a_local = a.expect("connected", T);
    b.expect("connected", T);
    a.wait_done(T);
    b.wait_done(T);
    // Start tracing before either client closes, filtered on client A.
    let tracer = Tracer::start(&[
        "trace",
        "--json",
        "--port",
        &p.to_string(),
        "--pid",
        &a.pid().to_string(),
    ]);
    let a_pid = a.pid() as u64;
    a.finish();
    b.finish();
    srv.wait_done(T);
    srv.finish();
    std::thread::sleep(Duration::from_millis(300));
    let lines = tracer.stop().json_lines();
    assert!(!lines.is_empty());
    assert!(lines.iter().all(|l| l["pid"] == a_pid), "{lines:?}");
    let want: SocketAddr = a_local.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        lines.iter().all(|l| l["lport"] == want.port()),
        "only A's socket: {lines:?}"
    );
    // The sockets predate the tracer: the owner comes from the start-up snapshot or from A's
    // close() in kernel context; either way all of A's remaining transitions are there.
    let t = transitions(&lines);
    assert_eq!(
        t,
        [
            "ESTABLISHED->FIN_WAIT1",
            "FIN_WAIT1->FIN_WAIT2",
            "FIN_WAIT2->CLOSE"
        ]
    );
}

#[test]
fn comm_keeps_only_that_command() {
    let dir = std::env::temp_dir().join(format!("tcptrace-comm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let other = dir.join("othercomm");
    let _ = std::fs::remove_file(&other);
    symlink(scenario_bin(), &other).unwrap();
    let p = free_port(v4());
    let addr = SocketAddr::new(v4(), p);
    let lines = trace(&["--port", &p.to_string(), "--comm", "othercomm"], || {
        let (mut srv, _) = server(addr, &["--conns", "2", "--on-eof", "close"]);
        let mut a = client(addr, &["--hold-ms", "10"]);
        a.wait_done(T);
        let mut b = Proc::spawn(std::process::Command::new(&other).args([
            "client",
            "--connect",
            &addr.to_string(),
            "--hold-ms",
            "10",
        ]));
        b.wait_done(T);
        srv.wait_done(T);
        a.finish();
        b.finish();
        srv.finish();
    });
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        lines.len(),
        5,
        "only the othercomm client's 5 transitions: {lines:?}"
    );
    assert!(lines.iter().all(|l| l["comm"] == "othercomm"));
}

#[test]
fn peer_keeps_matching_remote_addresses() {
    let p = free_port(v4());
    let addr = SocketAddr::new(v4(), p);
    let lines = trace(&["--port", &p.to_string(), "--peer", "127.0.0.2"], || {
        round(addr, &["--bind-ip", "127.0.0.2"]);
        round(addr, &["--bind-ip", "127.0.0.3"]);
    });
    assert_eq!(
        lines.len(),
        5,
        "the accepted socket whose peer is 127.0.0.2: {lines:?}"
    );
    assert!(lines.iter().all(|l| l["raddr"] == "127.0.0.2"));

    let lines = trace(
        &[
            "--port",
            &p.to_string(),
            "--peer",
            &format!("127.0.0.0/8:{p}"),
        ],
        || {
            round(addr, &["--bind-ip", "127.0.0.2"]);
        },
    );
    assert_eq!(
        lines.len(),
        5,
        "client side: remote is 127.0.0.1:{p}: {lines:?}"
    );
}

#[test]
fn state_keeps_transitions_touching_it() {
    let p = free_port(v4());
    let lines = trace(&["--port", &p.to_string(), "--state", "close-wait"], || {
        round(SocketAddr::new(v4(), p), &[]);
    });
    let t = transitions(&lines);
    assert_eq!(t, ["ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK"]);
}

#[test]
fn family_flags_keep_one_family() {
    let p4 = free_port(v4());
    let v6: std::net::IpAddr = "::1".parse().unwrap();
    let p6 = free_port(v6);
    let traffic = || {
        round(SocketAddr::new(v4(), p4), &[]);
        round(SocketAddr::new(v6, p6), &[]);
    };
    let ports = format!("{p4}");
    let ports6 = format!("{p6}");
    let lines = trace(&["-6", "--port", &ports, "--port", &ports6], traffic);
    assert_eq!(lines.len(), 12, "{lines:?}");
    assert!(lines.iter().all(|l| l["family"] == "ipv6"));
    let lines = trace(&["-4", "--port", &ports, "--port", &ports6], || {
        round(SocketAddr::new(v4(), p4), &[]);
        round(SocketAddr::new(v6, p6), &[]);
    });
    assert_eq!(lines.len(), 12, "{lines:?}");
    assert!(lines.iter().all(|l| l["family"] == "ipv4"));
}
