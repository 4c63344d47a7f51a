//! Faults: the tracer killed outright, a socket table churning while it starts, and processes
//! that exit while holding CLOSE_WAIT sockets. (Ring overflow is in loss.rs.)

use std::{
    collections::BTreeSet,
    fs,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tcptrace_tests::{Tracer, client, free_port, server, ss_rows, storm_bin};

const T: Duration = Duration::from_secs(20);

/// Ids of the BPF programs a process holds (`prog_id:` in /proc/PID/fdinfo). Other tracers on
/// the host load programs with the same names; the fds tell ours apart.
fn prog_ids_of(pid: u32) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    for ent in fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("fdinfo")
        .flatten()
    {
        let text = fs::read_to_string(ent.path()).unwrap_or_default();
        for l in text.lines() {
            if let Some(v) = l.strip_prefix("prog_id:") {
                ids.extend(v.trim().parse::<u64>().ok());
            }
        }
    }
    ids
}

/// Ids of every loaded program, from `bpftool prog show --json`.
fn loaded_prog_ids() -> BTreeSet<u64> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("run bpftool");
    assert!(out.status.success(), "bpftool prog show failed");
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v.as_array()
        .expect("array")
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// Every path under /sys/fs/bpf.
fn pinned() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for ent in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = ent.path();
            out.insert(p.display().to_string());
            if p.is_dir() {
                walk(&p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(Path::new("/sys/fs/bpf"), &mut out);
    out
}

#[test]
fn sigkill_leaves_nothing_attached_and_a_new_run_starts_cleanly() {
    let _alone = STORM.lock().unwrap_or_else(|e| e.into_inner());
    let pins_before = pinned();
    let tracer = Tracer::start(&["trace", "--json"]);
    let ours = prog_ids_of(tracer.pid());
    assert!(ours.len() >= 2, "the tracer holds its programs: {ours:?}");
    assert!(ours.is_subset(&loaded_prog_ids()));
    let out = tracer.stop_with(libc::SIGKILL);
    assert_eq!(out.code, None, "killed by a signal");

    // The kernel frees programs and links when the last fd closes; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left: BTreeSet<u64> = ours.clone();
    while Instant::now() < deadline {
        left = ours.intersection(&loaded_prog_ids()).copied().collect();
        if left.is_empty() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        left.is_empty(),
        "programs still loaded after SIGKILL: {left:?}"
    );
    let new_pins: Vec<String> = pinned().difference(&pins_before).cloned().collect();
    assert!(
        new_pins.is_empty(),
        "pinned objects left behind: {new_pins:?}"
    );

    // A new run attaches and sees traffic.
    let ip = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let tracer = Tracer::start(&["trace", "--json", "--port", &port.to_string()]);
    let (mut srv, _) = server(SocketAddr::new(ip, port), &["--conns", "1"]);
    let mut cli = client(SocketAddr::new(ip, port), &["--conns", "1"]);
    cli.wait_done(T);
    srv.wait_done(T);
    thread::sleep(Duration::from_millis(300));
    let out = tracer.stop();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines = out.json_lines();
    assert!(
        lines.iter().any(|l| l["new"] == "ESTABLISHED"),
        "the second run traced the connection: {lines:?}"
    );
    cli.finish();
    srv.finish();
}

/// `ss` rows on `port` counted per state, named as tcptrace names them.
fn ss_counts(port: u16) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for (state, _, _) in ss_rows(port) {
        let name = match state.as_str() {
            "ESTAB" => "ESTABLISHED".to_string(),
            "FIN-WAIT-1" => "FIN_WAIT1".to_string(),
            "FIN-WAIT-2" => "FIN_WAIT2".to_string(),
            s => s.replace('-', "_"),
        };
        *m.entry(name).or_insert(0) += 1;
    }
    m
}

/// The non-zero state counts of a report's `totals`.
fn totals(doc: &Value) -> std::collections::BTreeMap<String, u64> {
    doc["totals"]
        .as_object()
        .expect("totals")
        .iter()
        .filter_map(|(k, v)| v.as_u64().filter(|n| *n > 0).map(|n| (k.clone(), n)))
        .collect()
}

/// The storm floods loopback with connections; the other tests here run beside it otherwise.
static STORM: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn table_churning_during_the_startup_snapshot_is_not_double_counted() {
    let _alone = STORM.lock().unwrap_or_else(|e| e.into_inner());
    let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let mut storm = Command::new(storm_bin())
        .args(["--seconds", "3", "--threads", "2", "--conns", "60000"])
        .args(["--addr", &format!("{ip}:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tcpstorm");
    // The storm is under way when the tracer dumps the kernel table.
    thread::sleep(Duration::from_millis(300));
    let tracer = Tracer::start(&["report", "--json", "--port", &port.to_string()]);
    let status = storm.wait().expect("tcpstorm");
    assert!(status.success());
    let out = tracer.stop_after(Duration::from_secs(5));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let ss = ss_counts(port);
    let doc = out.json();
    assert!(
        ss.get("TIME_WAIT").copied().unwrap_or(0) > 1000,
        "the storm left TIME_WAIT sockets: {ss:?}"
    );
    assert_eq!(totals(&doc), ss, "report totals equal ss\n{}", out.stderr);
    assert_eq!(
        doc["sockets"].as_u64(),
        Some(ss.values().sum()),
        "one entry per socket"
    );
    // A dump applied ahead of the transitions still in the ring would move sockets past
    // events that then arrive "stale" (older than what the table knows), and would "fix" their
    // states. Dumps are applied only after the ring is drained: no stale event, ever.
    let table = &doc["table"];
    assert_eq!(
        table["stale"].as_u64(),
        Some(0),
        "events arrived behind a dump: {table:#}"
    );
    // Every other state fix needs transitions the event stream never got (at least
    // `transitions_missed` in all, one or more per fixed socket). The kernel counts most of
    // those (`lost_events`); the rest it skipped without counting, and the report must say so
    // rather than claim nothing was lost. (Seen in this VM: a client's last two transitions
    // ran neither program while perf's probe on the same tracepoint counted them.)
    let fixed = doc["corrections"]["state_fixed"].as_u64().unwrap();
    let missed = doc["corrections"]["transitions_missed"].as_u64().unwrap();
    assert!(
        missed >= fixed,
        "a fixed socket missed one transition at least: {:#}",
        doc["corrections"]
    );
    // And gaps in a socket's own events (an event leaving a state it was never seen entering).
    let missed = missed + table["transitions_missed"].as_u64().unwrap();
    let lost = doc["lost_events"].as_u64().unwrap();
    let uncounted = doc["lost_uncounted"].as_u64().unwrap();
    assert_eq!(
        uncounted,
        missed.saturating_sub(lost),
        "every missed transition is a lost event, counted or not: {:#}",
        doc["corrections"]
    );
    if uncounted > 0 {
        assert!(
            out.stderr
                .contains("skipped by the kernel without being counted"),
            "uncounted losses are shown: {}",
            out.stderr
        );
    }
    eprintln!(
        "state fixes {fixed} ({missed} transitions), substate fixes {}, lost {lost}, uncounted \
         {uncounted}",
        doc["corrections"]["substate_fixed"]
    );
}

#[test]
fn exiting_process_releases_its_close_wait_sockets() {
    let _alone = STORM.lock().unwrap_or_else(|e| e.into_inner());
    let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let addr = SocketAddr::new(ip, port);
    let tracer = Tracer::start(&["report", "--json", "--port", &port.to_string()]);
    let (mut srv, _) = server(addr, &["--conns", "5", "--on-eof", "leak"]);
    let mut cli = client(addr, &["--conns", "5"]);
    cli.wait_done(T);
    srv.wait_done(T);
    let spid = srv.pid();
    let cw = || {
        ss_rows(port)
            .iter()
            .filter(|(s, l, _)| s == "CLOSE-WAIT" && l.ends_with(&format!(":{port}")))
            .count()
    };
    assert_eq!(cw(), 5, "the server leaks 5 CLOSE_WAIT sockets");
    // The leaker dies holding them; the kernel closes them on its way out.
    let mut srv_child = srv;
    srv_child.child.kill().expect("kill the leaker");
    srv_child.child.wait().expect("reap the leaker");
    assert_eq!(cw(), 0);
    let out = tracer.stop_after(Duration::from_secs(5));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let doc = out.json();
    assert_eq!(doc["totals"]["CLOSE_WAIT"], 0, "{:#}", doc["totals"]);
    let leaker_cw: u64 = doc["by_pid"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["pid"].as_u64() == Some(spid as u64))
        .map(|r| r["close_wait"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        leaker_cw, 0,
        "no CLOSE_WAIT left for pid {spid}: {:#}",
        doc["by_pid"]
    );
    // Released by their events (CLOSE_WAIT -> LAST_ACK -> CLOSE as the kernel closed them at
    // exit), not by the final check against the kernel table.
    for state in ["CLOSE_WAIT", "LAST_ACK"] {
        let n = doc["dwell_ms"][state]["count"].as_u64().unwrap();
        assert!(n >= 5, "{state} stays completed by events: {n}");
    }
    assert_eq!(doc["lost_events"], 0, "{}", out.stderr);
    cli.finish();
}
