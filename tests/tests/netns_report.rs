//! tcptrace on the host sees every network namespace: the same port in two namespaces, a
//! CLOSE_WAIT leak in one of them only, attributed to the right namespace and process, with
//! counts equal to `ss` run inside each namespace; and `--netns` keeps one namespace.

use std::{os::unix::fs::MetadataExt, process::Command, time::Duration};

use serde_json::Value;
use tcptrace_tests::*;

const T: Duration = Duration::from_secs(30);

/// A named network namespace with loopback up, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("tcptrace-t{}-{tag}", std::process::id());
        let ok = |args: &[&str]| {
            assert!(
                Command::new("ip").args(args).status().unwrap().success(),
                "ip {args:?}"
            )
        };
        ok(&["netns", "add", &name]);
        ok(&["-n", &name, "link", "set", "lo", "up"]);
        Ns(name)
    }

    fn inode(&self) -> u64 {
        std::fs::metadata(format!("/run/netns/{}", self.0))
            .unwrap()
            .ino()
    }

    /// Runs tcpscenario inside the namespace.
    fn scenario(&self, args: &[&str]) -> Proc {
        Proc::spawn(
            Command::new("ip")
                .args(["netns", "exec", &self.0])
                .arg(scenario_bin())
                .args(args),
        )
    }

    fn ss_count(&self, state: &str, port: u16) -> u64 {
        netns::ss_count_in(
            &self.0,
            state,
            &format!("( sport = :{port} or dport = :{port} )"),
        )
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn netns_row(doc: &Value, inode: u64) -> Value {
    doc["by_netns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["netns"] == inode)
        .cloned()
        .unwrap_or_else(|| panic!("no by_netns row {inode}: {:#}", doc["by_netns"]))
}

#[test]
fn same_port_in_two_namespaces_leak_in_one() {
    let (a, b) = (Ns::new("a"), Ns::new("b"));
    let port = free_port("127.0.0.1".parse().unwrap());
    let addr = format!("127.0.0.1:{port}");
    let tracer = Tracer::start(&["report", "--json", "--port", &port.to_string()]);
    let mut leaker = a.scenario(&[
        "server", "--bind", &addr, "--conns", "3", "--on-eof", "leak",
    ]);
    let mut closer = b.scenario(&[
        "server", "--bind", &addr, "--conns", "3", "--on-eof", "close",
    ]);
    leaker.expect("listening", T);
    closer.expect("listening", T);
    let mut ca = a.scenario(&["client", "--connect", &addr, "--conns", "3"]);
    let mut cb = b.scenario(&["client", "--connect", &addr, "--conns", "3"]);
    for p in [&mut ca, &mut cb, &mut leaker, &mut closer] {
        p.wait_done(T);
    }
    let doc = tracer.stop_after(Duration::from_secs(4)).json();
    let (ra, rb) = (netns_row(&doc, a.inode()), netns_row(&doc, b.inode()));
    assert_eq!(a.ss_count("close-wait", port), 3);
    assert_eq!(ra["close_wait"], a.ss_count("close-wait", port), "{ra}");
    assert_eq!(rb["close_wait"], b.ss_count("close-wait", port), "{rb}");
    assert_eq!(rb["close_wait"], 0);
    assert_eq!(
        rb["time_wait"],
        b.ss_count("time-wait", port),
        "the closing clients' side"
    );
    assert_eq!(ra["time_wait"], a.ss_count("time-wait", port));
    // `ip netns exec` runs the program itself: the leaking process is the leaker's pid.
    let leak = doc["by_pid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["close_wait"] == 3)
        .cloned();
    let leak = leak.unwrap_or_else(|| panic!("no process with 3 CLOSE_WAIT: {:#}", doc["by_pid"]));
    assert_eq!(leak["pid"], leaker.pid());

    // --netns keeps one namespace: replay the same moment through a second, filtered report.
    let only_b = Tracer::start(&[
        "report",
        "--json",
        "--duration",
        "1s",
        "--port",
        &port.to_string(),
        "--netns",
        &b.inode().to_string(),
    ])
    .wait()
    .json();
    assert_eq!(
        only_b["totals"]["CLOSE_WAIT"], 0,
        "{:#}",
        only_b["by_netns"]
    );
    assert!(
        only_b["by_netns"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["netns"] == b.inode())
    );
    for p in [ca, cb, leaker, closer] {
        p.finish();
    }
}
