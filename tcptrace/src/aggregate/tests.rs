//! Aggregates and the report document, from synthetic event streams.

use std::collections::HashMap;

use tcptrace_common::TcpState::*;

use super::*;
use crate::event::Event;
use crate::lifecycle::fixtures::*;
use crate::lifecycle::{Applied, Comm, Limits, Owner, SocketTable, TIMEWAIT_LEN_NS};

/// The table and the aggregates, fed together as the live pipeline does.
struct Rig {
    t: SocketTable,
    agg: Aggregates,
}

impl Sink for Rig {
    fn apply(&mut self, ev: &Event) -> Applied {
        let a = self.t.apply(ev);
        self.agg.observe_applied(&a, ev.ts_ns);
        a
    }
}

impl Rig {
    fn new(fx: &Fx) -> Rig {
        Rig {
            t: SocketTable::new(Limits::default()),
            agg: Aggregates::new(fx.ts, AggLimits::default()),
        }
    }

    fn expire(&mut self, now: u64) {
        let out = self.t.expire(now);
        self.agg.observe_expired(&out, now);
    }

    fn summary(&self, now: u64) -> Summary {
        summary(
            &self.t,
            &self.agg,
            &SummaryInput {
                now_ns: now,
                lost_events: 7,
                lost_uncounted: 0,
                timewait_hook_missed: 0,
                port_filter_forgot: 0,
                transitions_seen: 0,
                transitions_lost: 0,
                timewait_method: "inferred",
                port_range: (32768, 60999),
                top: 50,
            },
        )
    }
}

/// `leaks` connections the server never closes, `clean` connections closed on both sides.
fn workload(fx: &mut Fx, rig: &mut Rig, leaks: u16, clean: u16) {
    let lb = Loopback::new(fx, 40000);
    lb.listen(fx, rig);
    for i in 0..leaks + clean {
        let mut c = Loopback::new(fx, 40000 + i);
        c.listener = lb.listener.clone();
        c.connect(fx, rig);
        c.client_closes(fx, rig);
        if i >= leaks {
            c.server_closes(fx, rig);
        }
    }
}

fn row_for_pid(s: &Summary, pid: u32) -> &PidRow {
    s.by_pid
        .iter()
        .find(|r| r.pid == pid)
        .unwrap_or_else(|| panic!("pid {pid} in {:?}", s.by_pid))
}

#[test]
fn report_names_the_close_wait_leaker_and_the_time_wait_owner() {
    let mut fx = Fx::new();
    let mut rig = Rig::new(&fx);
    workload(&mut fx, &mut rig, 3, 5);
    fx.step(10 * SEC);
    let s = rig.summary(fx.ts);
    assert_eq!(s.totals.get(CloseWait), 3);
    assert_eq!(s.totals.get(TimeWait), 5);
    assert_eq!(
        s.totals.get(FinWait2),
        3,
        "clients of the leaked connections wait for a FIN"
    );
    let server = row_for_pid(&s, 100);
    assert_eq!((server.counts.close_wait, server.counts.time_wait), (3, 0));
    assert_eq!(server.counts.close_wait_entries, 8);
    assert_eq!(server.counts.close_wait_age_ms.unwrap().count, 3);
    assert!(server.counts.close_wait_oldest_ms.unwrap() >= 10_000.0);
    assert_eq!(
        server.attribution.listener, 3,
        "accepted sockets inherit the listener's owner"
    );
    let client = row_for_pid(&s, 200);
    assert_eq!((client.counts.time_wait, client.counts.close_wait), (5, 0));
    assert_eq!(client.counts.time_wait_entries, 5);
    assert_eq!(client.attribution.kernel_context, 5);
    // Most TIME_WAIT + CLOSE_WAIT first: 5 for the client, 3 for the server.
    assert_eq!(
        s.by_pid.iter().map(|r| r.pid).collect::<Vec<_>>(),
        vec![200, 100]
    );
    // Inbound connections: grouped by the service port and by client address (no port).
    assert_eq!(s.by_local_port.len(), 1);
    assert_eq!(
        (
            s.by_local_port[0].port,
            s.by_local_port[0].counts.close_wait
        ),
        (8080, 3)
    );
    let to_server = s.by_peer.iter().find(|r| r.port == Some(8080)).unwrap();
    assert_eq!(to_server.counts.time_wait, 5);
    assert_eq!(
        to_server.lifetime_ms.unwrap().count,
        8,
        "client sockets that closed"
    );
    let from_clients = s.by_peer.iter().find(|r| r.port.is_none()).unwrap();
    assert_eq!(from_clients.counts.close_wait, 3);
    assert_eq!(s.lost_events, 7);
}

#[test]
fn current_counts_equal_the_table_exactly() {
    let mut fx = Fx::new();
    let mut rig = Rig::new(&fx);
    workload(&mut fx, &mut rig, 4, 6);
    // Sockets with no known owner: first seen mid-life.
    for i in 0..3u16 {
        let sk = fx.sock(&format!("10.0.0.1:{}", 9000 + i), "10.0.0.7:5000");
        rig.apply(&fx.step(MS).tr(&sk, Established, CloseWait, &SWAPPER));
    }
    let s = rig.summary(fx.ts);
    let sum = |f: fn(&GroupCounts) -> u64| s.by_pid.iter().map(|r| f(&r.counts)).sum::<u64>();
    assert_eq!(
        sum(|c| c.time_wait) + s.unattributed.time_wait,
        s.totals.get(TimeWait)
    );
    assert_eq!(
        sum(|c| c.close_wait) + s.unattributed.close_wait,
        s.totals.get(CloseWait)
    );
    assert_eq!(s.unattributed.close_wait, 3);
    assert!(s.by_pid.iter().all(|r| r.pid != 0), "never pid 0");
    let peer_sum: u64 = s
        .by_peer_addr
        .iter()
        .map(|r| r.counts.time_wait + r.counts.close_wait)
        .sum();
    assert_eq!(peer_sum, s.totals.get(TimeWait) + s.totals.get(CloseWait));
    assert_eq!(s.sockets as usize, rig.t.len());
}

#[test]
fn dwell_distributions_and_rates() {
    let mut fx = Fx::new();
    let mut rig = Rig::new(&fx);
    workload(&mut fx, &mut rig, 0, 4);
    // The server took ~1 ms (fixture) to close after the client: CLOSE_WAIT dwell.
    let tw_since: Vec<u64> = rig
        .t
        .iter()
        .filter_map(|v| v.since_ns.filter(|_| v.state == TimeWait))
        .collect();
    assert_eq!(tw_since.len(), 4);
    let end = tw_since.iter().max().unwrap() + TIMEWAIT_LEN_NS;
    rig.expire(end);
    assert_eq!(rig.t.counts().get(TimeWait), 0);
    let s = rig.summary(fx.ts + 20 * SEC);
    let tw = s.dwell_ms["TIME_WAIT"];
    assert_eq!(tw.count, 4);
    assert_eq!((tw.p50, tw.max), (60_000.0, 60_000.0));
    let cw = s.dwell_ms["CLOSE_WAIT"];
    assert_eq!(cw.count, 4);
    assert!((cw.p50 - 1.01).abs() < 0.01, "{cw:?}"); // 1 ms + 10 us in the fixture
    assert_eq!(s.dwell_ms["LISTEN"].count, 0);
    assert_eq!(s.dwell_ms.len(), 10, "every trackable state is present");
    let client = row_for_pid(&s, 200);
    assert_eq!(client.counts.time_wait_entries, 4);
    let per_s = client.counts.time_wait_per_s;
    assert!((per_s - 4.0 / s.window_s).abs() < 1e-9);
    assert!(s.window_s > 20.0);
    let d = client.counts.dwell_ms["TIME_WAIT"];
    assert_eq!((d.count, d.max), (4, 60_000.0));
    assert!((d.p99 - 60_000.0).abs() / 60_000.0 < 0.04);
    assert_eq!(s.lifetime_ms.count, 8, "4 clients and 4 servers closed");
}

#[test]
fn port_pressure_counts_time_wait_on_ephemeral_ports_per_destination() {
    let mut fx = Fx::new();
    let mut rig = Rig::new(&fx);
    let me = Ctx::Owner(7, "client");
    for i in 0..100u16 {
        let sk = fx.sock(&format!("10.0.0.1:{}", 40000 + i), "10.0.0.2:443");
        rig.apply(&fx.step(MS).tr(&sk, Close, SynSent, &me));
        rig.apply(&fx.step(MS).tr(&sk, SynSent, Established, &SWAPPER));
        rig.apply(&fx.step(MS).tr(&sk, Established, FinWait1, &me));
        rig.apply(&fx.step(MS).tr(&sk, FinWait1, FinWait2, &SWAPPER));
        rig.apply(&fx.step(MS).tr(&sk, FinWait2, Close, &SWAPPER));
    }
    // Outside the ephemeral range: not counted.
    let low = fx.sock("10.0.0.1:1000", "10.0.0.2:443");
    rig.apply(&fx.step(MS).tr(&low, FinWait2, Close, &SWAPPER));
    let s = rig.summary(fx.ts);
    assert_eq!(s.port_pressure.len(), 1);
    let p = &s.port_pressure[0];
    assert_eq!(
        (p.local_addr.as_str(), p.peer_addr.as_str(), p.peer_port),
        ("10.0.0.1", "10.0.0.2", 443)
    );
    assert_eq!((p.time_wait, p.range_size), (100, 28232));
    assert!((p.ratio - 100.0 / 28232.0).abs() < 1e-12);
}

#[test]
fn json_document_has_the_documented_shape() {
    let mut fx = Fx::new();
    let mut rig = Rig::new(&fx);
    workload(&mut fx, &mut rig, 2, 2);
    let s = rig.summary(fx.ts + SEC);
    let j = serde_json::to_value(&s).unwrap();
    assert_eq!(j["lost_events"], 7);
    assert_eq!(j["timewait_method"], "inferred");
    let pid = &j["by_pid"][0];
    for k in [
        "pid",
        "comm",
        "cgroup_id",
        "time_wait",
        "close_wait",
        "attribution",
        "dwell_ms",
    ] {
        assert!(pid.get(k).is_some(), "by_pid[].{k} in {pid}");
    }
    assert_eq!(pid["comm"], "server");
    assert!(j["by_local_port"][0]["port"].is_u64());
    let peer = &j["by_peer"][0];
    assert!(
        peer["addr"]
            .as_str()
            .unwrap()
            .parse::<std::net::IpAddr>()
            .is_ok()
    );
    assert!(peer.get("port").is_some());
    let cw = &j["dwell_ms"]["CLOSE_WAIT"];
    for k in ["count", "p50", "p90", "p99", "max"] {
        assert!(cw[k].is_number(), "dwell_ms.CLOSE_WAIT.{k}");
    }
    assert_eq!(j["totals"]["CLOSE_WAIT"], 2);
    for k in [
        "corrections",
        "evictions",
        "duplicates",
        "state_mismatches",
        "port_pressure",
        "unattributed",
    ] {
        assert!(j.get(k).is_some(), "{k}");
    }
}

#[test]
fn fd_scan_moves_counts_to_the_real_holder() {
    let mut fx = Fx::new();
    let mut rig = Rig::new(&fx);
    let t = &mut rig.t;
    let st = t.reconcile(
        &snapshot(
            fx.ts,
            vec![ks(CloseWait, "10.0.0.1:8080", "10.0.0.3:5000", 9, 4242)],
        ),
        Some(&HashMap::from([(
            4242u64,
            vec![crate::owner::process::ProcessRef {
                pid: 31,
                comm: "leaky".to_string(),
            }],
        )])),
    );
    assert_eq!(st.added, 1);
    let s = rig.summary(fx.step(SEC).ts);
    let r = row_for_pid(&s, 31);
    assert_eq!(
        (r.counts.close_wait, r.counts.close_wait_age_unknown),
        (1, 1)
    );
    assert_eq!(r.attribution.snapshot, 1);
    assert_eq!(r.counts.close_wait_age_ms, None);
}

/// Cost of the aggregates on top of `apply`, and of building the report.
/// `cargo test -p tcptrace --release --lib aggregate::tests::perf -- --ignored --nocapture`
#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn perf_observe_and_summary() {
    // 30 client addresses (few groups), then 300k distinct ones (group tables churn).
    perf_run(false);
    perf_run(true);
}

fn perf_run(distinct_peers: bool) {
    use std::time::Instant;
    let mut fx = Fx::new();
    let mut rig = Rig::new(&fx);
    let lb = Loopback::new(&mut fx, 1);
    lb.listen(&mut fx, &mut rig);
    // Record the storm's events, then replay them timed: 300k connections from 30 clients,
    // every other one leaked by the server (CLOSE_WAIT + held FIN_WAIT2), the rest TIME_WAIT.
    struct Rec(Vec<Event>);
    impl Sink for Rec {
        fn apply(&mut self, ev: &Event) -> Applied {
            self.0.push(ev.clone());
            Applied::new_for_tests()
        }
    }
    let mut rec = Rec(Vec::new());
    for i in 0..300_000u32 {
        let mut c = Loopback::new(&mut fx, 0);
        c.client.local = if distinct_peers {
            format!("127.{}.{}.{}:40000", 1 + (i >> 16), (i >> 8) & 255, i & 255)
        } else {
            format!("127.0.0.{}:{}", 1 + i % 30, 10_000 + i / 30)
        }
        .parse()
        .unwrap();
        c.server.remote = c.client.local;
        c.client_ctx = Ctx::Owner(1000 + i % 30, "client");
        c.listener = lb.listener.clone();
        c.connect(&mut fx, &mut rec);
        c.client_closes(&mut fx, &mut rec);
        if i % 2 == 0 {
            c.server_closes(&mut fx, &mut rec);
        }
    }
    let start = Instant::now();
    for ev in &rec.0 {
        let a = rig.t.apply(ev);
        rig.agg.observe_applied(&a, ev.ts_ns);
    }
    let dt = start.elapsed();
    let start = Instant::now();
    let s = rig.summary(fx.ts);
    let report = start.elapsed();
    assert_eq!(s.totals.get(CloseWait), 150_000);
    let a = &rig.agg;
    println!(
        "groups: pid {} ({} B), port {} ({} B), peer_addr {} ({} B), peer {} ({} B), pid_peer {} ({} B)",
        a.by_pid.len(),
        a.by_pid.heap_bytes(),
        a.by_local_port.len(),
        a.by_local_port.heap_bytes(),
        a.by_peer_addr.len(),
        a.by_peer_addr.heap_bytes(),
        a.by_peer.len(),
        a.by_peer.heap_bytes(),
        a.by_pid_peer.len(),
        a.by_pid_peer.heap_bytes()
    );
    println!(
        "distinct peers {distinct_peers}: apply+observe: {} events in {:?} ({:.0} ns/event); summary over {} sockets: {:?}; \
         aggregates {} KB, table {} KB",
        rec.0.len(),
        dt,
        dt.as_nanos() as f64 / rec.0.len() as f64,
        rig.t.len(),
        report,
        rig.agg.heap_bytes() / 1024,
        rig.t.heap_bytes() / 1024,
    );
}

#[test]
fn ended_processes_fold_into_one_row_per_command_once_idle() {
    let mut fx = Fx::new();
    // One service's cgroup, as for the jobs a cron or a CI runner starts.
    fx.cgroup = Some(7);
    let mut rig = Rig::new(&fx);
    let lb = Loopback::new(&mut fx, 40000);
    lb.listen(&mut fx, &mut rig);
    // 40 short-lived clients, one connection each, closing first (TIME_WAIT is theirs).
    let client = |fx: &mut Fx, rig: &mut Rig, i: u16, pid: u32| {
        let mut c = Loopback::new(fx, 41000 + i);
        c.listener = lb.listener.clone();
        c.client_ctx = Ctx::Owner(pid, "curl");
        c.connect(fx, rig);
        c.client_closes(fx, rig);
        c.server_closes(fx, rig);
    };
    for i in 0..40u16 {
        client(&mut fx, &mut rig, i, 5000 + i as u32);
    }
    assert_eq!(rig.agg.by_pid.len(), 41, "40 clients and the server");

    // Their TIME_WAIT sockets still name them: nothing folds.
    let n = rig
        .agg
        .fold_ended(|o| !rig.t.holds_owner(o), fx.ts + 2 * TIMEWAIT_LEN_NS);
    assert_eq!(n, 0, "TIME_WAIT sockets keep their closer's row");

    fx.step(TIMEWAIT_LEN_NS + SEC);
    let expired_at = fx.ts;
    rig.expire(expired_at);
    // Idle for less than a minute: kept, so a process between two connections keeps its row.
    let n = rig.agg.fold_ended(
        |o| !rig.t.holds_owner(o),
        expired_at + IDLE_BEFORE_FOLD_NS - 1,
    );
    assert_eq!(n, 0);
    let before = rig.agg.by_pid.heap_bytes();
    let now = expired_at + IDLE_BEFORE_FOLD_NS;
    let n = rig.agg.fold_ended(|o| !rig.t.holds_owner(o), now);
    assert_eq!(n, 80, "40 pid groups and 40 pid x peer groups");
    assert_eq!(
        rig.agg.by_pid.len(),
        2,
        "the server and one row for every curl"
    );
    assert!(rig.agg.by_pid.heap_bytes() < before / 4);

    let s = rig.summary(now);
    let curl = row_for_pid(&s, 0);
    assert_eq!(curl.comm.as_str(), "curl");
    assert_eq!(curl.ended_processes, 40);
    assert_eq!(curl.counts.time_wait_entries, 40, "history is summed");
    assert_eq!(curl.counts.dwell_ms["TIME_WAIT"].count, 40);
    assert_eq!(curl.counts.time_wait, 0);
    let server = row_for_pid(&s, 100);
    assert_eq!(
        server.ended_processes, 0,
        "the listener holds the server's row"
    );
    let pp: Vec<_> = s.by_pid_peer.iter().filter(|r| r.pid == 0).collect();
    assert_eq!(pp.len(), 1);
    assert_eq!(pp[0].ended_processes, 40);

    // A later curl that ends joins the same row; a fold with nothing new changes nothing.
    fx.ts = now;
    client(&mut fx, &mut rig, 99, 9999);
    fx.step(TIMEWAIT_LEN_NS + SEC);
    rig.expire(fx.ts);
    let later = fx.ts + IDLE_BEFORE_FOLD_NS;
    assert_eq!(rig.agg.fold_ended(|o| !rig.t.holds_owner(o), later), 2);
    assert_eq!(rig.agg.fold_ended(|o| !rig.t.holds_owner(o), later), 0);
    let s = rig.summary(later);
    assert_eq!(row_for_pid(&s, 0).ended_processes, 41);
    assert_eq!(row_for_pid(&s, 0).counts.time_wait_entries, 41);
}

#[test]
fn ended_processes_of_one_command_in_two_cgroups_stay_apart() {
    let a = Owner {
        pid: 0,
        comm: Comm::new("nginx"),
        cgroup_id: 1,
    };
    let b = Owner { cgroup_id: 2, ..a };
    assert_ne!(a, b);
    let (p, q) = (Owner { pid: 7, ..a }, Owner { pid: 7, ..b });
    assert_eq!(
        p, q,
        "a live process is (pid, comm): its cgroup id may be learned later"
    );
    assert_eq!(p.ended(), a);
}

/// Summary mode gives the report every transition gives: the same sockets now, groups, dwell
/// distributions and lifetimes, from two or three records per connection instead of ten.
#[test]
fn summaries_give_the_report_that_every_transition_gives() {
    let mut fx_a = Fx::new();
    let mut fx_b = Fx::new();
    let mut every = Rig::new(&fx_a);
    let mut rig = Rig::new(&fx_b);
    rig.t.set_summary_mode(true);
    let mut summaries = KernelModel::new(rig);
    // Clean connections, CLOSE_WAIT leaks, and servers that close first.
    let scenario = |fx: &mut Fx, t: &mut dyn FnMut(&Event) -> Applied| {
        struct F<'a>(&'a mut dyn FnMut(&Event) -> Applied);
        impl Sink for F<'_> {
            fn apply(&mut self, ev: &Event) -> Applied {
                (self.0)(ev)
            }
        }
        let mut s = F(t);
        let lb = Loopback::new(fx, 40000);
        lb.listen(fx, &mut s);
        for i in 0..30u16 {
            let mut c = Loopback::new(fx, 40000 + i);
            c.listener = lb.listener.clone();
            c.connect(fx, &mut s);
            fx.step(3 * MS * u64::from(i % 7));
            if i % 3 == 2 {
                // The server closes first: TIME_WAIT on the server's side.
                let (c2, s2) = (c.client_ctx.clone(), c.server_ctx.clone());
                c.client_ctx = s2;
                c.server_ctx = c2;
                std::mem::swap(&mut c.client, &mut c.server);
                c.client_closes(fx, &mut s);
                c.server_closes(fx, &mut s);
            } else {
                c.client_closes(fx, &mut s);
                if i % 3 == 0 {
                    fx.step(20 * MS);
                    c.server_closes(fx, &mut s);
                }
            }
        }
    };
    scenario(&mut fx_a, &mut |ev| every.apply(ev));
    scenario(&mut fx_b, &mut |ev| summaries.apply(ev));
    let rig = &mut summaries.inner;
    for now in [fx_a.ts + SEC, fx_a.ts + TIMEWAIT_LEN_NS + 2 * SEC] {
        every.expire(now);
        rig.expire(now);
        let (a, b) = (every.summary(now), rig.summary(now));
        let json = |s: &Summary| serde_json::to_value(s).unwrap();
        let (a, b) = (json(&a), json(&b));
        for k in [
            "sockets",
            "totals",
            "unattributed",
            "by_pid",
            "by_local_port",
            "by_peer_addr",
            "by_peer",
            "by_pid_peer",
            "dwell_ms",
            "lifetime_ms",
            "port_pressure",
        ] {
            assert_eq!(
                a[k], b[k],
                "{k} differs at {now}:\nevery transition {:#}\nsummaries {:#}",
                a[k], b[k]
            );
        }
    }
}
