//! Record and replay: a session recorded live gives the same report, and the same trace, when
//! replayed with `--from`; broken recordings fail with the byte offset, never a panic.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tcptrace_tests::*;

const T: Duration = Duration::from_secs(30);

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tcptrace-{}-{name}", std::process::id()))
}

/// The report without the fields that say when and where it was made.
fn timeless(mut v: Value) -> Value {
    let o = v.as_object_mut().unwrap();
    o.remove("generated_at");
    v
}

#[test]
fn replayed_report_equals_the_live_one() {
    let ip = "127.0.0.1".parse().unwrap();
    let (p1, p2) = (free_port(ip), free_port(ip));
    let (a1, a2) = (SocketAddr::new(ip, p1), SocketAddr::new(ip, p2));
    let file = tmp("report.rec");
    // A leak that predates the recording, one that grows during it, and short connections.
    let (mut leaker, _) = server(a1, &["--conns", "6", "--on-eof", "leak"]);
    let mut early = client(a1, &["--conns", "2"]);
    early.wait_done(T);
    let f = file.to_str().unwrap();
    let tracer = Tracer::start(&[
        "report",
        "--json",
        "--duration",
        "4s",
        "--port",
        &p1.to_string(),
        "--port",
        &p2.to_string(),
        "--record",
        f,
    ]);
    let mut late = client(a1, &["--conns", "4", "--hold-ms", "20"]);
    let (mut srv, _) = server(
        a2,
        &[
            "--conns",
            "25",
            "--on-eof",
            "close",
            "--close-delay-ms",
            "5",
        ],
    );
    let mut short = client(a2, &["--conns", "25"]);
    for p in [&mut late, &mut srv, &mut short, &mut leaker] {
        p.wait_done(T);
    }
    let live = tracer.wait();
    let replay = run_tcptrace(&["report", "--json", "--from", f]);
    assert_eq!(replay.code, Some(0), "{}", replay.stderr);
    let (l, r) = (timeless(live.json()), timeless(replay.json()));
    assert_eq!(l["totals"]["CLOSE_WAIT"], 6, "{l:#}");
    assert!(
        l == r,
        "live and replayed reports differ:\nlive {l}\nreplay {r}"
    );
    std::fs::remove_file(&file).ok();
    for p in [early, late, srv, short, leaker] {
        p.finish();
    }
}

#[test]
fn replayed_trace_equals_the_live_one() {
    let ip = "::1".parse().unwrap();
    let port = free_port(ip);
    let addr = SocketAddr::new(ip, port);
    let file = tmp("trace.rec");
    let f = file.to_str().unwrap();
    let tracer = Tracer::start(&[
        "trace",
        "--json",
        "--port",
        &port.to_string(),
        "--record",
        f,
    ]);
    let (mut srv, _) = server(addr, &["--conns", "3", "--on-eof", "close"]);
    let mut cli = client(addr, &["--conns", "3", "--hold-ms", "30"]);
    cli.wait_done(T);
    srv.wait_done(T);
    cli.finish();
    srv.finish();
    std::thread::sleep(Duration::from_millis(300));
    let live = tracer.stop();
    // Stopped by a signal, the recorder still ends the file cleanly.
    // The same filters at replay: the kernel lets some events through loosely (a closing
    // socket has already released its port) and userspace decides, live and replayed alike.
    let replay = run_tcptrace(&["trace", "--json", "--port", &port.to_string(), "--from", f]);
    assert_eq!(replay.code, Some(0), "{}", replay.stderr);
    assert_eq!(live.json_lines().len(), 3 * 10 + 2);
    assert!(
        live.stdout == replay.stdout,
        "live and replayed traces differ"
    );
    std::fs::remove_file(&file).ok();
}

#[test]
fn broken_recordings_fail_clearly_with_the_offset() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/leak.rec");
    let bytes = std::fs::read(&fixture).expect("fixture");
    let cut = tmp("cut.rec");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let out = run_tcptrace(&["report", "--json", "--from", cut.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("byte offset") && out.stderr.contains("cut short"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"));

    let mut newer = bytes.clone();
    newer[12] = 9;
    std::fs::write(&cut, &newer).unwrap();
    let out = run_tcptrace(&["report", "--from", cut.to_str().unwrap()]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("newer tcptrace (format version 9"),
        "{}",
        out.stderr
    );

    std::fs::write(&cut, b"GET / HTTP/1.1\r\n").unwrap();
    let out = run_tcptrace(&["trace", "--from", cut.to_str().unwrap()]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("not a tcptrace recording"),
        "{}",
        out.stderr
    );
    std::fs::remove_file(&cut).ok();
}

/// A recording checked into the repository (a CLOSE_WAIT leak on port 47141, recorded on the
/// host kernel) replays to the report checked in beside it: kernel-free and deterministic.
#[test]
fn fixture_replays_to_its_recorded_report() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let out = run_tcptrace(&[
        "report",
        "--json",
        "--from",
        dir.join("leak.rec").to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("leak.report.json")).unwrap())
            .unwrap();
    assert_eq!(timeless(out.json()), timeless(want));
}
