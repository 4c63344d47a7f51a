//! `tcptrace serve` works with exactly the capabilities the systemd unit grants (read from
//! deploy/tcptrace.service), as an unprivileged user that cannot gain more: it attaches, names
//! the owner of leaked CLOSE_WAIT sockets, and serves them as metrics; with the TLS drop-in's
//! command line (deploy/tcptrace-tls.conf), over TLS to authenticated clients only.

use std::{net::SocketAddr, process::Command};

use tcptrace_tests::{deploy, exporter, kernel, tls, *};

/// `tcptrace ARGS` as uid 65534 with exactly the unit's capabilities, no-new-privs and a
/// matching bounding set, as systemd starts it.
fn as_the_unit(args: &[String]) -> Tracer {
    let caps = deploy::unit_capabilities();
    assert!(!caps.is_empty());
    let set = deploy::setpriv_caps(&caps);
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
        .args(args);
    // systemd sets the unit's limits before it drops privileges; before Linux 5.11 the BPF maps
    // are charged to LimitMEMLOCK, which the capabilities alone could not raise.
    if kernel::charges_memlock() {
        kernel::with_memlock(&mut setpriv, None);
    }
    Tracer::start_command(&mut setpriv)
}

#[test]
fn serve_runs_as_nobody_with_only_the_units_capabilities() {
    let caps = deploy::unit_capabilities();
    assert_eq!(
        deploy::unit_values("LimitMEMLOCK"),
        ["infinity"],
        "the unit lifts the locked-memory limit"
    );
    let ip = "127.0.0.1".parse().unwrap();
    let listen = SocketAddr::new(ip, free_port(ip));
    let tracer = as_the_unit(&["serve".into(), "--listen".into(), listen.to_string()]);
    let want: u64 = caps.iter().map(|c| deploy::cap_bit(c)).sum();
    assert_eq!(
        deploy::process_caps(tracer.pid(), "CapEff"),
        want,
        "exactly the unit's set"
    );
    let uid = std::fs::read_to_string(format!("/proc/{}/status", tracer.pid())).unwrap();
    assert!(uid.lines().any(|l| l.starts_with("Uid:\t65534")), "{uid}");

    let (srv, _) = exporter::leaker(4);

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

#[test]
fn the_tls_dropin_serves_authenticated_clients_over_tls_as_nobody() {
    // What LoadCredential= makes: the three files in a folder the service's user owns.
    let files = tls::Files::new("dropin");
    let ca = tls::Ca::new("dropin CA");
    tls::write_server(&files, &ca.server());
    let web = deploy::WEB_YML.replace(
        "REPLACE-WITH-A-BCRYPT-HASH",
        &format!("'{}'", tls::bcrypt_hash("s3cret")),
    );
    files.write("web.yml", &web);
    for f in ["web.yml", "tls.crt", "tls.key", ""] {
        let p = files.dir.join(f);
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    }
    let ip = "127.0.0.1".parse().unwrap();
    let listen = SocketAddr::new(ip, free_port(ip));
    // The drop-in's ExecStart=, with %d and $TCPTRACE_ARGS as systemd fills them in.
    let mut args = Vec::new();
    for a in deploy::dropin_exec_start().into_iter().skip(1) {
        match a.as_str() {
            "$TCPTRACE_ARGS" => args.extend(["--listen".to_string(), listen.to_string()]),
            _ => args.push(a.replace("%d", files.dir.to_str().unwrap())),
        }
    }
    let tracer = as_the_unit(&args);

    let (srv, _) = exporter::leaker(4);

    let trust = tls::client_config(&ca.pem(), None);
    let denied = tls::https_get(listen, "/metrics", trust.clone(), None).unwrap();
    assert_eq!(denied.status, 401);
    let r = tls::https_get(listen, "/metrics", trust, Some(("prometheus", "s3cret"))).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        exporter::sample(
            &r.body,
            "tcptrace_close_wait_sockets",
            &[("pid", &srv.pid().to_string()), ("comm", "tcpscenario")]
        ),
        Some(4.0),
        "{}",
        r.body
    );
    let out = tracer.stop();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("serving https://"), "{}", out.stderr);
}
