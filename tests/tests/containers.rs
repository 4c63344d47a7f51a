//! Container attribution: a leaking server started inside cgroups named the way Docker and
//! Kubernetes (containerd, systemd driver) name them shows its container id (and pod uid) in
//! `report --json`, the report text, `top`, and the exporter's labels.
//!
//! The cgroups are made under this host's cgroup v2 mount, wherever it is: `/sys/fs/cgroup`
//! (unified hosts, and the VM tests) or `/sys/fs/cgroup/unified` (hybrid hosts).

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tcptrace::owner::cgroup::Cgroup2Mount;
use tcptrace_tests::cgroups::{self, Cgroups, hex};
use tcptrace_tests::{exporter, *};

const T: Duration = Duration::from_secs(30);

/// A server that joins `cgroup` before it creates any socket (the shell writes its own pid to
/// cgroup.procs, then becomes the server), and `n` connections it leaks in CLOSE_WAIT.
fn leaker_in(cgroup: &std::path::Path, n: usize, port: u16) -> Proc {
    let ip = "127.0.0.1".parse().unwrap();
    let addr = SocketAddr::new(ip, port);
    let conns = n.to_string();
    let mut srv = cgroups::server_in(cgroup, addr, &["--conns", &conns, "--on-eof", "leak"], None);
    let mut cli = client(addr, &["--conns", &conns]);
    cli.wait_done(T);
    srv.wait_done(T);
    cli.finish();
    srv
}

fn free() -> u16 {
    free_port("127.0.0.1".parse().unwrap())
}

fn by_pid_row(doc: &Value, pid: u32) -> &Value {
    doc["by_pid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pid"] == pid)
        .unwrap_or_else(|| panic!("no by_pid row for {pid}: {}\n{doc:#}", report_digest(doc)))
}

#[test]
fn a_docker_container_shows_in_every_view() {
    let mount = Cgroup2Mount::find().expect("a cgroup2 mount");
    let id = hex(32);
    let (cg, dir) = Cgroups::make(&mount, &format!("docker-{id}.scope"));
    let port = free();
    let srv = leaker_in(&dir, 3, port);
    let p = port.to_string();

    let doc = Tracer::start(&["report", "--json", "--duration", "2s", "--port", &p])
        .wait()
        .json();
    let row = by_pid_row(&doc, srv.pid());
    assert_eq!(row["close_wait"], 3, "{row:#}");
    assert_eq!(row["container"]["id"], id.as_str(), "{row:#}");
    assert_eq!(row["container"]["runtime"], "docker");
    assert_eq!(row["container"]["pod_uid"], Value::Null);

    // --container keeps that container's processes, by id prefix, and only them.
    let only = Tracer::start(&[
        "report",
        "--json",
        "--duration",
        "1s",
        "--port",
        &p,
        "--container",
        &id[..12],
    ])
    .wait()
    .json();
    assert_eq!(by_pid_row(&only, srv.pid())["close_wait"], 3);
    assert!(
        only["by_pid"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["container"]["id"] == id.as_str()),
        "{only:#}"
    );
    let other = Tracer::start(&[
        "report",
        "--json",
        "--duration",
        "1s",
        "--port",
        &p,
        "--container",
        "f00dfeed",
    ])
    .wait()
    .json();
    assert!(
        other["by_pid"].as_array().unwrap().is_empty(),
        "{:#}",
        other["by_pid"]
    );

    let text = Tracer::start(&["report", "--duration", "1s", "--port", &p])
        .wait()
        .stdout;
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&srv.pid().to_string()))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(text.contains("CONTAINER"), "{text}");
    assert!(line.contains(&id[..12]), "{line}");

    let top = Tracer::start(&["top", "--iterations", "1", "--port", &p])
        .wait()
        .stdout;
    assert!(top.contains("CONTAINER"), "{top}");
    assert!(top.contains(&id[..12]), "{top}");

    let (tracer, addr) = exporter::serve(&["--port", &p]);
    let body = exporter::get(addr, "/metrics").body;
    let cw = exporter::sample(
        &body,
        "tcptrace_close_wait_sockets",
        &[("pid", &srv.pid().to_string()), ("container", &id)],
    );
    assert_eq!(cw, Some(3.0), "{body}");
    let _ = tracer.stop();
    drop(srv);
    drop(cg);
}

#[test]
fn a_kubernetes_pod_container_shows_its_id_and_pod_uid() {
    let mount = Cgroup2Mount::find().expect("a cgroup2 mount");
    let id = hex(32);
    let u = hex(16);
    let uid = format!(
        "{}-{}-{}-{}-{}",
        &u[..8],
        &u[8..12],
        &u[12..16],
        &u[16..20],
        &u[20..]
    );
    let pod = format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"));
    let (cg, dir) = Cgroups::make(
        &mount,
        &format!("kubepods.slice/kubepods-besteffort.slice/{pod}/cri-containerd-{id}.scope"),
    );
    // The exporter runs first, so it sees the server listen from inside its cgroup: the kernel
    // reports the cgroup id, and the resolver maps it to the container.
    let port = free();
    let p = port.to_string();
    let (tracer, addr) = exporter::serve(&["--port", &p]);
    let srv = leaker_in(&dir, 2, port);

    let doc: Value = serde_json::from_str(&exporter::get(addr, "/report.json").body).unwrap();
    let row = by_pid_row(&doc, srv.pid());
    assert_eq!(row["close_wait"], 2, "{row:#}");
    assert_eq!(row["container"]["id"], id.as_str(), "{row:#}");
    assert_eq!(row["container"]["runtime"], "containerd");
    assert_eq!(row["container"]["pod_uid"], uid.as_str());
    let cgroup_id = std::fs::metadata(&dir).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    assert_eq!(
        row["cgroup_id"],
        cgroup_id.unwrap(),
        "the kernel reported the cgroup: {row:#}"
    );

    let body = exporter::get(addr, "/metrics").body;
    let cw = exporter::sample(
        &body,
        "tcptrace_close_wait_sockets",
        &[
            ("pid", &srv.pid().to_string()),
            ("container", &id),
            ("pod_uid", &uid),
        ],
    );
    assert_eq!(cw, Some(2.0), "{body}");
    let _ = tracer.stop();
    drop(srv);
    drop(cg);
}

/// `trace --container` keeps the lines of the container's processes and no others, including
/// the lines printed after the process has exited (the listener's close at exit).
#[test]
fn trace_keeps_a_containers_lines_even_after_its_process_exits() {
    let mount = Cgroup2Mount::find().expect("a cgroup2 mount");
    let id = hex(32);
    let (cg, dir) = Cgroups::make(&mount, &format!("docker-{id}.scope"));
    let port = free();
    let p = port.to_string();
    let tracer = Tracer::start(&["trace", "--json", "--port", &p, "--container", &id[..12]]);
    let addr = SocketAddr::new("127.0.0.1".parse().unwrap(), port);
    let mut srv = cgroups::server_in(&dir, addr, &["--conns", "3", "--on-eof", "close"], None);
    // The client runs outside the container: its lines must not show.
    let mut cli = client(addr, &["--conns", "3"]);
    cli.wait_done(T);
    srv.wait_done(T);
    let spid = srv.pid() as u64;
    cli.finish();
    srv.finish();
    std::thread::sleep(Duration::from_millis(300));
    let out = tracer.stop();
    let lines = out.json_lines();
    let moves = transitions(&lines);
    assert!(
        lines.iter().all(|l| l["pid"] == spid),
        "only the server's lines: {lines:?}\n{}",
        out.stderr
    );
    let n = |m: &str| moves.iter().filter(|x| *x == m).count();
    assert_eq!(n("CLOSE_WAIT->LAST_ACK"), 3, "{moves:?}");
    assert_eq!(n("LAST_ACK->CLOSE"), 3, "{moves:?}");
    assert_eq!(
        n("LISTEN->CLOSE"),
        1,
        "the listener closed at exit: {moves:?}"
    );
    drop(cg);
}
