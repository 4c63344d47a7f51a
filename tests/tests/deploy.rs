//! `tcptrace serve` works with exactly the capabilities the systemd unit grants (read from
//! deploy/tcptrace.service), as an unprivileged user that cannot gain more: it attaches, names
//! the owner of leaked CLOSE_WAIT sockets, and serves them as metrics.

use std::{net::SocketAddr, process::Command, time::Duration};

use tcptrace_tests::{deploy, exporter, kernel, *};

const T: Duration = Duration::from_secs(30);

/// The capability bits of the effective set in /proc/PID/status.
fn effective_caps(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// Bit numbers from include/uapi/linux/capability.h.
fn cap_bit(name: &str) -> u64 {
    1 << match name {
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("unknown capability {other}"),
    }
}

#[test]
fn serve_runs_as_nobody_with_only_the_units_capabilities() {
    let caps = deploy::unit_capabilities();
    assert!(!caps.is_empty());
    let set = deploy::setpriv_caps(&caps);
    let ip = "127.0.0.1".parse().unwrap();
    let listen = SocketAddr::new(ip, free_port(ip));
    // systemd sets the unit's limits before it drops privileges; before Linux 5.11 the BPF maps
    // are charged to LimitMEMLOCK, which the capabilities alone could not raise.
    let memlock = deploy::unit_values("LimitMEMLOCK");
    assert_eq!(
        memlock,
        ["infinity"],
        "the unit lifts the locked-memory limit"
    );
    let mut setpriv = Command::new("setpriv");
    setpriv
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--no-new-privs",
        ])
        .arg(format!("--inh-caps=-all,{set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set=-all,{set}"))
        .arg(tcptrace_bin())
        .args(["serve", "--listen", &listen.to_string()]);
    if kernel::charges_memlock() {
        kernel::with_memlock(&mut setpriv, None);
    }
    let tracer = Tracer::start_command(&mut setpriv);
    let want: u64 = caps.iter().map(|c| cap_bit(c)).sum();
    assert_eq!(effective_caps(tracer.pid()), want, "exactly the unit's set");
    let uid = std::fs::read_to_string(format!("/proc/{}/status", tracer.pid())).unwrap();
    assert!(uid.lines().any(|l| l.starts_with("Uid:\t65534")), "{uid}");

    let port = free_port(ip);
    let addr = SocketAddr::new(ip, port);
    let (mut srv, _) = server(addr, &["--conns", "4", "--on-eof", "leak"]);
    let mut cli = client(addr, &["--conns", "4"]);
    cli.wait_done(T);
    srv.wait_done(T);
    cli.finish();

    let body = exporter::get(listen, "/metrics").body;
    assert_eq!(
        exporter::sample(
            &body,
            "tcptrace_close_wait_sockets",
            &[("pid", &srv.pid().to_string()), ("comm", "tcpscenario")]
        ),
        Some(4.0),
        "{body}"
    );
    assert_eq!(
        exporter::sample(
            &body,
            "tcptrace_lost_events_total",
            &[("cause", "ring_full")]
        ),
        Some(0.0)
    );
    let out = tracer.stop();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // (The fentry fallback notice quotes the kernel's "os error 1"; that is not a failure.)
    assert!(!out.stderr.contains("tcptrace: error"), "{}", out.stderr);
}
