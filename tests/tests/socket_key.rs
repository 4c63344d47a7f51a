//! How the kernel programs name sockets is said on the start-up line and in `report --json`:
//! by socket cookie where tracing programs may ask for it (Linux 5.12+), else by the socket's
//! address (5.10's tp_btf, and the classic tracepoint on every kernel). Both are checked on the
//! kernel itself: 5.10's verifier refuses the cookie helper, so tcptrace must fall back there
//! and must not elsewhere.

use tcptrace_tests::{kernel, *};

#[test]
fn the_start_up_line_and_the_report_say_how_sockets_are_keyed() {
    let cookies = kernel::version() >= (5, 12);
    let out = run_tcptrace(&["report", "--json", "--duration", "1s"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let doc = out.json();
    assert_eq!(doc["hook"], "tp_btf", "{}", out.stderr);
    let want = if cookies { "cookie" } else { "address" };
    assert_eq!(doc["socket_key"], want, "{}", out.stderr);
    assert_eq!(
        out.stderr
            .contains("attached via tp_btf (sockets keyed by address)"),
        !cookies,
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stderr.contains(
            "no socket cookies (the socket cookie needs bpf_get_socket_cookie, which tracing \
             programs cannot call before Linux 5.12); sockets are keyed by address"
        ),
        !cookies,
        "{}",
        out.stderr
    );

    let out = run_tcptrace(&[
        "report",
        "--json",
        "--duration",
        "1s",
        "--hook",
        "tracepoint",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let doc = out.json();
    assert_eq!(doc["hook"], "tracepoint");
    assert_eq!(doc["socket_key"], "address");
}
