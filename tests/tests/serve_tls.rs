//! `tcptrace serve --web.config.file`: the exporter behind TLS, client certificates and basic
//! authentication, as Prometheus exporters take them. A real Prometheus scrapes it over TLS
//! with a client certificate and a password; Prometheus jobs and clients without the password,
//! without a certificate or trusting another CA are refused; a bad file stops `serve` with the
//! field named; a changed file is read again.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tcptrace::export::{WebConfig, WebConfigSource};
use tcptrace_tests::{
    exporter::{self, Prometheus},
    tls::{Ca, Files, Leaf, bcrypt_hash, client_config, https_get, path_str, write_server},
    *,
};

const T: Duration = Duration::from_secs(30);
const USER: &str = "prometheus";
const PASSWORD: &str = "correct horse battery staple";

/// An exporter that takes only clients with a certificate from `client_ca` and the password.
struct Secured {
    files: Files,
    server_ca: Ca,
    client: Leaf,
    tracer: Tracer,
    addr: SocketAddr,
}

fn secured(tag: &str, extra: &[&str]) -> Secured {
    let files = Files::new(tag);
    let server_ca = Ca::new("tcptrace test server CA");
    write_server(&files, &server_ca.server());
    let client_ca = Ca::new("tcptrace test client CA");
    files.write("client-ca.crt", &client_ca.pem());
    // Relative file names: relative to the web config file's folder.
    let web = files.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\n  \
             min_version: TLS12\nbasic_auth_users:\n  {USER}: '{}'\n",
            bcrypt_hash(PASSWORD)
        ),
    );
    let mut args = vec!["--web.config.file", path_str(&web)];
    args.extend_from_slice(extra);
    let (tracer, addr) = exporter::serve(&args);
    Secured {
        files,
        server_ca,
        client: client_ca.client("prometheus"),
        tracer,
        addr,
    }
}

#[test]
fn prometheus_scrapes_over_tls_with_a_client_certificate_and_basic_auth() {
    let s = secured("prom", &[]);
    let f = &s.files;
    let ca = f.write("server-ca.crt", &s.server_ca.pem());
    let (cert, key) = (
        f.write("prom.crt", &s.client.cert_pem),
        f.write("prom.key", &s.client.key_pem),
    );
    let other_ca = f.write("other-ca.crt", &Ca::new("someone else").pem());
    let job = |name: &str, ca: &PathBuf, client_cert: bool, password: Option<&str>| {
        // A TLS handshake and a bcrypt check take seconds under the VM tests' TCG: more than the
        // 1 s the plain exporter test's Prometheus allows.
        let mut j = format!(
            "  - job_name: {name}\n    scrape_interval: 5s\n    scrape_timeout: 5s\n    \
             scheme: https\n    tls_config:\n      ca_file: {}\n",
            ca.display()
        );
        if client_cert {
            j += &format!(
                "      cert_file: {}\n      key_file: {}\n",
                cert.display(),
                key.display()
            );
        }
        if let Some(p) = password {
            j += &format!("    basic_auth:\n      username: {USER}\n      password: '{p}'\n");
        }
        j + &format!("    static_configs:\n      - targets: ['{}']\n", s.addr)
    };
    let prom = Prometheus::start_jobs(
        &[
            job("tcptrace", &ca, true, Some(PASSWORD)),
            job("no_password", &ca, true, None),
            job("wrong_password", &ca, true, Some("hunter2")),
            job("no_client_cert", &ca, false, Some(PASSWORD)),
            job("untrusted_server", &other_ca, true, Some(PASSWORD)),
        ]
        .concat(),
    );
    let (srv, _) = exporter::leaker(5);
    let q = format!(
        "tcptrace_close_wait_sockets{{job=\"tcptrace\",pid=\"{}\"}}",
        srv.pid()
    );
    let r = prom.wait_for(&q, 5.0, 2 * T);
    println!("{q} -> {r:?}");
    assert_eq!(r.len(), 1, "{q} -> {r:?}\n{:?}", prom.targets());
    assert_eq!(r[0].1, 5.0);
    assert_eq!(r[0].0["comm"], "tcpscenario");

    // Every other job is refused, each for its own reason.
    let mut targets = prom.targets();
    let deadline = std::time::Instant::now() + 2 * T;
    while targets.iter().any(|t| t.1 == "unknown") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        targets = prom.targets();
    }
    targets.sort();
    for t in &targets {
        println!("target {}: {} {}", t.0, t.1, t.2);
    }
    let health = |job: &str| {
        targets
            .iter()
            .find(|t| t.0 == job)
            .unwrap_or_else(|| panic!("no target {job}: {targets:?}"))
            .clone()
    };
    assert_eq!(health("tcptrace").1, "up");
    for (job, reason) in [
        ("no_password", "401"),
        ("wrong_password", "401"),
        ("no_client_cert", "certificate"),
        ("untrusted_server", "x509"),
    ] {
        let (_, h, err) = health(job);
        assert_eq!(h, "down", "{job}: {err}");
        assert!(err.contains(reason), "{job}: {err}");
    }
    let out = s.tracer.stop();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "serving https://{}/metrics, /report.json and /healthz",
            s.addr
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("TLS with verified client certificates, basic authentication"),
        "{}",
        out.stderr
    );
    srv.finish();
}

#[test]
fn clients_without_credentials_or_with_a_bad_certificate_are_refused() {
    let s = secured("clients", &[]);
    let trust = s.server_ca.pem();
    let good = client_config(&trust, Some(&s.client));

    let r = https_get(s.addr, "/metrics", good.clone(), Some((USER, PASSWORD))).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("tcptrace_build_info"), "{}", r.body);

    for auth in [None, Some((USER, "wrong")), Some(("nobody", PASSWORD))] {
        let r = https_get(s.addr, "/metrics", good.clone(), auth).unwrap();
        assert_eq!(r.status, 401, "{auth:?}: {}", r.body);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"tcptrace\"")
        );
        assert!(!r.body.contains("tcptrace_"), "{}", r.body);
    }
    let r = https_get(s.addr, "/report.json", good.clone(), None).unwrap();
    assert_eq!(r.status, 401);
    // Liveness probes need no password.
    let r = https_get(s.addr, "/healthz", good.clone(), None).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

    // A client certificate from another CA, or none: the handshake fails.
    let stranger = Ca::new("someone else").client("intruder");
    for (what, cfg) in [
        (
            "another CA's client certificate",
            client_config(&trust, Some(&stranger)),
        ),
        ("no client certificate", client_config(&trust, None)),
    ] {
        let e = https_get(s.addr, "/metrics", cfg, Some((USER, PASSWORD))).expect_err(what);
        println!("{what}: {e}");
    }
    // A client that does not trust the server's certificate refuses it.
    let e = https_get(
        s.addr,
        "/metrics",
        client_config(&Ca::new("someone else").pem(), Some(&s.client)),
        Some((USER, PASSWORD)),
    )
    .expect_err("untrusted server certificate");
    assert!(e.contains("invalid peer certificate"), "{e}");
    // Plain HTTP gets no HTTP answer from a TLS port.
    let plain = exporter::raw(
        s.addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(plain.as_ref().is_none_or(|r| r.status != 200), "{plain:?}");

    let out = s.tracer.stop();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn a_bad_web_config_stops_serve_with_the_field_named() {
    let files = Files::new("bad");
    let ca = Ca::new("tcptrace test CA");
    write_server(&files, &ca.server());
    for (yaml, needles) in [
        (
            "basic_auth_users:\n  prometheus: secret\n".to_string(),
            &[
                "basic_auth_users.prometheus",
                "not a bcrypt hash",
                "htpasswd",
            ][..],
        ),
        (
            "tls_server_config:\n  cert_file: tls.crt\n".into(),
            &["tls_server_config.key_file", "missing"],
        ),
        (
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  min_version: TLS10\n"
                .into(),
            &["tls_server_config.min_version", "use TLS12 or TLS13"],
        ),
        (
            "tls_server_config:\n  cert_file: nowhere.crt\n  key_file: tls.key\n".into(),
            &["tls_server_config.cert_file", "nowhere.crt"],
        ),
        (
            "tls_config:\n  cert_file: tls.crt\n".into(),
            &["unknown field `tls_config`", "tls_server_config"],
        ),
    ] {
        let web = files.write("web.yml", &yaml);
        let out = run_tcptrace(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--web.config.file",
            path_str(&web),
        ]);
        assert_eq!(out.code, Some(1), "{yaml}: {}", out.stderr);
        for n in needles {
            assert!(out.stderr.contains(n), "{yaml}: {n}: {}", out.stderr);
        }
        // Refused before the kernel programs load.
        assert!(!out.stderr.contains("attached"), "{}", out.stderr);
    }
}

/// Checks of the file that need certificates; no kernel involved.
#[test]
fn web_config_checks_certificates_and_is_read_again_when_it_changes() {
    let files = Files::new("reload");
    let ca = Ca::new("tcptrace test CA");
    write_server(&files, &ca.server());
    files.write("other.key", &ca.server().key_pem);
    let hash = bcrypt_hash(PASSWORD);
    let web = files.write(
        "web.yml",
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: other.key\n",
    );
    let e = WebConfig::load(&web).unwrap_err().to_string();
    assert!(
        e.contains("tls_server_config.key_file") && e.contains("does not go with"),
        "{e}"
    );

    let yaml = |user: &str| {
        format!(
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n\
             basic_auth_users:\n  {user}: '{hash}'\n"
        )
    };
    files.write("web.yml", &yaml("alice"));
    let (source, first) = WebConfigSource::load(&web).unwrap();
    assert!(first.tls.is_some());
    assert_eq!(first.users.keys().collect::<Vec<_>>(), ["alice"]);
    // A user removed from the file is gone at the next connection.
    files.write("web.yml", &yaml("bob-the-second"));
    let now = source.current().unwrap();
    assert_eq!(now.users.keys().collect::<Vec<_>>(), ["bob-the-second"]);
    // A file that turned bad refuses connections instead of serving with the old users.
    files.write("web.yml", "basic_auth_users:\n  alice: plain\n");
    let e = source.current().unwrap_err();
    assert!(e.contains("not a bcrypt hash"), "{e}");
    // A rotated certificate is picked up too.
    files.write("web.yml", &yaml("alice"));
    let before = source.current().unwrap();
    write_server(&files, &Ca::new("rotated CA").server());
    let after = source.current().unwrap();
    assert!(!std::sync::Arc::ptr_eq(&before, &after), "read again");
}
