//! TIME_WAIT from the fentry hooks on `tcp_time_wait` / `inet_twsk_free` where the kernel allows
//! them, inferred otherwise: both give the TIME_WAIT counts `ss` sees. Which one is in use is
//! decided by trying (the host here refuses fentry with EPERM; the QEMU guests, Debian 6.1 and
//! 6.12, allow it), and reported on the "attached" line and in the report.

use std::{net::SocketAddr, process::Command, time::Duration};

use serde_json::Value;
use tcptrace_tests::*;

const T: Duration = Duration::from_secs(30);
const HOOKED: &str = "fentry:tcp_time_wait+inet_twsk_free";

/// The TIME_WAIT method from the tracer's "attached ... (...; TIME_WAIT METHOD)" line.
fn method_of(started: &str) -> String {
    let line = started
        .lines()
        .find(|l| l.contains("attached"))
        .expect("attached line");
    let rest = &line[line
        .find("TIME_WAIT ")
        .expect("TIME_WAIT on the attached line")
        + 10..];
    rest[..rest.find(')').expect("closing parenthesis")].to_owned()
}

fn ss_time_wait(filter: &str) -> usize {
    let out = Command::new("ss")
        .args(["-tanH", "state", "time-wait", filter])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// The QEMU guests' init sets this; their kernels (Debian 6.1 and 6.12) allow fentry.
fn in_test_vm() -> bool {
    std::env::var_os("TCPTRACE_TEST_SLOW_CPU").is_some()
}

/// `conns` client-first connections to a fresh server that closes `server_delay_ms` after the
/// client's FIN; returns the report, the tracer's method, and `ss`'s TIME_WAIT count.
fn client_first_closes(extra: &[&str], conns: u32, server_delay_ms: u32) -> (Value, String, usize) {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let port = free_port(addr.ip());
    let addr = SocketAddr::new(addr.ip(), port);
    let (conns_s, delay_s, port_s) = (
        conns.to_string(),
        server_delay_ms.to_string(),
        port.to_string(),
    );
    let mut args = vec!["report", "--json", "--duration", "4s", "--port", &port_s];
    args.extend_from_slice(extra);
    let tracer = Tracer::start(&args);
    let method = method_of(&tracer.started);
    let mut srv_args = vec!["--conns", &conns_s, "--on-eof", "close"];
    if server_delay_ms > 0 {
        srv_args.extend_from_slice(&["--close-delay-ms", &delay_s]);
    }
    let (mut srv, _) = server(addr, &srv_args);
    let mut cli = client(addr, &["--conns", &conns_s]);
    cli.wait_done(T);
    srv.wait_done(T);
    let doc = tracer.wait().json();
    let ss = ss_time_wait(&format!("dport = :{port}"));
    cli.finish();
    srv.finish();
    (doc, method, ss)
}

#[test]
fn timewait_method_is_reported_and_counts_equal_ss_either_way() {
    let (doc, method, ss) = client_first_closes(&[], 10, 100);
    assert!(
        method == HOOKED || method == "inferred",
        "unknown method {method:?}"
    );
    assert_eq!(doc["timewait_method"], method.as_str());
    if in_test_vm() {
        assert_eq!(method, HOOKED, "the QEMU guests' kernels allow fentry");
    }
    eprintln!(
        "method {method}: ss {ss} TIME_WAIT, report {}, table {}",
        doc["totals"]["TIME_WAIT"], doc["table"]
    );
    // tw_reuse may end a loopback TIME_WAIT early; ss is the referee, and most must be there.
    assert!(ss >= 7, "ss: {ss} TIME_WAIT ({method})");
    assert_eq!(
        doc["totals"]["TIME_WAIT"], ss,
        "TIME_WAIT ({method}): report vs ss; table {:#}",
        doc["table"]
    );

    let (doc, method, ss) = client_first_closes(&["--timewait-hooks", "off"], 10, 100);
    assert_eq!(method, "inferred");
    assert_eq!(doc["timewait_method"], "inferred");
    assert_eq!(doc["table"]["timewait_exact"], 0);
    assert_eq!(
        doc["totals"]["TIME_WAIT"], ss,
        "TIME_WAIT (inferred): report vs ss"
    );
}

/// With the hooks, every client's timewait socket is known from `tcp_time_wait` itself (on
/// loopback the orphan's FIN is acked before the server's FIN comes, so it starts in the
/// FIN_WAIT2 substate), not inferred from its ->CLOSE.
#[test]
fn timewait_hooks_make_time_wait_exact_where_the_kernel_allows_fentry() {
    let (doc, method, ss) = client_first_closes(&[], 10, 0);
    let table = &doc["table"];
    assert_eq!(
        doc["totals"]["TIME_WAIT"], ss,
        "TIME_WAIT ({method}): report vs ss; table {table:#}"
    );
    eprintln!(
        "method {method}: ss {ss} TIME_WAIT, report {}, table {}",
        doc["totals"]["TIME_WAIT"], table
    );
    if method == HOOKED {
        let exact = table["timewait_exact"].as_u64().unwrap();
        assert!(exact >= ss as u64, "{exact} exact of {ss} ({table:#})");
    } else {
        assert!(!in_test_vm(), "the QEMU guests' kernels allow fentry");
        assert_eq!(table["timewait_exact"], 0);
    }
}
