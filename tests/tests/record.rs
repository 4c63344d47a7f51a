//! Record and replay: a session recorded live gives the same report, and the same trace, when
//! replayed with `--from`; a recording cut short replays up to its last record with a warning;
//! corrupt ones fail with the byte offset, never a panic.

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

/// The fixture cut at `at` bytes, with `tail` appended (what a crash can leave).
fn cut_fixture(name: &str, at: usize, tail: &[u8]) -> std::path::PathBuf {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/leak.rec");
    let bytes = std::fs::read(&fixture).expect("fixture");
    let cut = tmp(name);
    let mut b = bytes[..at.min(bytes.len())].to_vec();
    b.extend_from_slice(tail);
    std::fs::write(&cut, b).unwrap();
    cut
}

/// Offsets and type tags of the fixture's records (the format: docs/record-format.md).
fn fixture_records() -> Vec<(usize, u8)> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/leak.rec");
    let bytes = std::fs::read(p).unwrap();
    // The header: 24 bytes, then the metadata, whose length is at offset 20.
    let mut at = 24 + u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    while at < bytes.len() {
        out.push((at, bytes[at]));
        at += 5 + u32::from_le_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
    }
    out
}

/// Offset of the fixture's `n`th event record.
fn event_record(n: usize) -> usize {
    fixture_records()
        .into_iter()
        .filter(|(_, tag)| *tag == 1)
        .nth(n)
        .expect("enough events")
        .0
}

/// A recording cut short (its writer killed, the host crashed) is what an incident leaves: it
/// replays up to its last complete record, says where it was cut, and marks the JSON. Zero
/// bytes after the cut (what a filesystem can leave after a crash) are the same cut.
#[test]
fn a_recording_cut_short_replays_up_to_its_last_record() {
    let whole = run_tcptrace(&[
        "trace",
        "--json",
        "--from",
        cut_fixture("whole.rec", usize::MAX, b"").to_str().unwrap(),
    ]);
    assert_eq!(whole.code, Some(0), "{}", whole.stderr);
    let whole_lines = whole.json_lines();
    // Torn inside the 30th event record, and cut cleanly before it with zeros after.
    for (name, at, tail) in [
        ("torn.rec", event_record(30) + 20, &[][..]),
        ("zeros.rec", event_record(30), &[0u8; 5000][..]),
    ] {
        let cut = cut_fixture(name, at, tail);
        let f = cut.to_str().unwrap();
        let out = run_tcptrace(&["report", "--json", "--from", f]);
        assert_eq!(out.code, Some(0), "{name}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("warning: the recording was cut short at byte")
                && out
                    .stderr
                    .contains("loss counters after its last Loss record are unknown"),
            "{name}: {}",
            out.stderr
        );
        let doc = out.json();
        assert_eq!(doc["recording_truncated"], true, "{doc:#}");
        // What was replayed is the file's beginning: the same lines as the whole file's, in
        // the same order (the last ones may lack a note only later events would have added).
        let trace = run_tcptrace(&["trace", "--json", "--from", f]);
        assert_eq!(trace.code, Some(0), "{}", trace.stderr);
        let lines = trace.json_lines();
        assert!(
            !lines.is_empty() && lines.len() < whole_lines.len(),
            "{name}: {} of {} lines",
            lines.len(),
            whole_lines.len()
        );
        let sure = lines.len().saturating_sub(5);
        assert_eq!(lines[..sure], whole_lines[..sure], "{name}");
        std::fs::remove_file(&cut).ok();
    }
    // A complete recording is not marked.
    let out = run_tcptrace(&[
        "report",
        "--json",
        "--from",
        cut_fixture("whole.rec", usize::MAX, b"").to_str().unwrap(),
    ]);
    assert!(out.json().get("recording_truncated").is_none());
    assert!(!out.stderr.contains("cut short"), "{}", out.stderr);
    std::fs::remove_file(tmp("whole.rec")).ok();
}

/// Bytes no tcptrace writes, before the file's end, are corruption: an error with the offset,
/// never a panic and never a partial result passed off as whole.
#[test]
fn broken_recordings_fail_clearly_with_the_offset() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/leak.rec");
    let bytes = std::fs::read(&fixture).expect("fixture");
    let cut = tmp("broken.rec");
    // An event record in the middle gets a record type that does not exist.
    let at = event_record(20);
    let mut bad = bytes.clone();
    bad[at] = 0x7f;
    std::fs::write(&cut, &bad).unwrap();
    let out = run_tcptrace(&["report", "--json", "--from", cut.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("byte offset {at}")) && out.stderr.contains("corrupt"),
        "offset {at}: {}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "no partial report: {}", out.stdout);
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

/// `tcptrace record` killed with SIGKILL mid-incident: the file replays with the warning and
/// exit status 0, and holds the leak that was under way.
#[test]
fn a_killed_recording_replays_with_a_warning() {
    let ip = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let addr = SocketAddr::new(ip, port);
    let file = tmp("killed.rec");
    let f = file.to_str().unwrap();
    let p = port.to_string();
    let tracer = Tracer::start(&["record", "-o", f, "--port", &p]);
    let (mut leaker, _) = server(addr, &["--conns", "3", "--on-eof", "leak"]);
    let mut cli = client(addr, &["--conns", "3"]);
    cli.wait_done(T);
    leaker.wait_done(T);
    assert_eq!(ss_count("close-wait", &format!("sport = :{port}")), 3);
    // Past the recorder's flush (four times a second), then no chance to finish the file.
    std::thread::sleep(Duration::from_millis(600));
    let killed = tracer.stop_with(libc::SIGKILL);
    assert_eq!(killed.code, None, "killed by a signal");
    let out = run_tcptrace(&["report", "--json", "--from", f, "--port", &p]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("cut short"), "{}", out.stderr);
    let doc = out.json();
    assert_eq!(doc["recording_truncated"], true);
    assert_eq!(doc["totals"]["CLOSE_WAIT"], 3, "{doc:#}");
    cli.finish();
    leaker.finish();
    std::fs::remove_file(&file).ok();
}

/// Every command that takes `--record` writes a file `report --from` reads whole (it used to
/// be only `report` and `trace`: `diagnose` and `serve` wrote files without their End record).
#[test]
fn every_command_that_records_finishes_its_file() {
    let ip = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let p = port.to_string();
    let addr = SocketAddr::new(ip, port);
    let commands: [&[&str]; 5] = [
        &["trace", "--json"],
        &["report", "--json", "--duration", "60s"],
        &["top", "--iterations", "1000"],
        &["diagnose", "--json", "--duration", "60s"],
        &["serve", "--listen", "127.0.0.1:0"],
    ];
    let files: Vec<_> = (0..commands.len())
        .map(|i| tmp(&format!("cmd{i}.rec")))
        .collect();
    let tracers: Vec<Tracer> = commands
        .iter()
        .zip(&files)
        .map(|(args, f)| {
            let mut a = args.to_vec();
            a.extend(["--port", &p, "--record", f.to_str().unwrap()]);
            Tracer::start(&a)
        })
        .collect();
    let (mut srv, _) = server(addr, &["--conns", "2", "--on-eof", "leak"]);
    let mut cli = client(addr, &["--conns", "2"]);
    cli.wait_done(T);
    srv.wait_done(T);
    std::thread::sleep(Duration::from_millis(300));
    let mut said = Vec::new();
    for (t, args) in tracers.into_iter().zip(commands) {
        let out = t.stop();
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        said.push(out.stderr);
    }
    for ((f, args), said) in files.iter().zip(commands).zip(&said) {
        let out = run_tcptrace(&["report", "--json", "--from", f.to_str().unwrap()]);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        assert!(
            !out.stderr.contains("cut short"),
            "{args:?}: {}",
            out.stderr
        );
        assert_eq!(
            out.json()["totals"]["CLOSE_WAIT"],
            2,
            "{args:?}\nrecording: {said}\nreplay: {}",
            out.stderr
        );
        std::fs::remove_file(f).ok();
    }
    cli.finish();
    srv.finish();
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
