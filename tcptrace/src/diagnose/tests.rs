//! Every finding from made-up evidence: when it must fire, and when it must not.

use std::net::SocketAddr;

use super::*;
use crate::aggregate::DwellMs;

fn proc_id(pid: u32) -> ProcId {
    ProcId {
        pid,
        comm: format!("app{pid}"),
    }
}

fn host() -> HostFacts {
    HostFacts {
        sysctls: Sysctls {
            tcp_tw_reuse: Some(0),
            tcp_timestamps: Some(1),
            ip_local_port_range: (32768, 60999),
            tcp_max_tw_buckets: Some(262_144),
            tcp_fin_timeout: Some(60),
            tcp_tw_recycle: None,
        },
        time_wait_now: Some(10),
        tw_overflow_start: Some(5),
        tw_overflow_end: Some(5),
        processes: Default::default(),
    }
}

fn evidence() -> Evidence {
    Evidence {
        window_s: 30.0,
        now_unix: 1_800_000_000.0,
        ..Evidence::default()
    }
}

fn leaker(cw: u64, at_start: u64) -> ProcEvidence {
    ProcEvidence {
        proc: proc_id(42),
        close_wait: cw,
        close_wait_entries: cw - at_start,
        close_wait_growth_per_s: Some((cw - at_start) as f64 / 30.0),
        close_wait_at_start: Some(at_start),
        close_wait_age_ms: Some(DwellMs {
            count: cw,
            p50: 10_000.0,
            p90: 20_000.0,
            p99: 25_000.0,
            max: 29_000.0,
        }),
        close_wait_local_ports: vec![(8080, cw)],
        close_wait_peers: vec![("10.0.0.9:5432".into(), cw)],
        ..ProcEvidence::default()
    }
}

fn kinds(f: &[Finding]) -> Vec<Kind> {
    f.iter().map(|f| f.kind).collect()
}

fn dest(tw: u64, per_s: f64, peer: &str) -> DestEvidence {
    let peer: SocketAddr = peer.parse().unwrap();
    DestEvidence {
        local_addr: if peer.ip().is_loopback() {
            "127.0.0.1".parse().unwrap()
        } else {
            "10.0.0.1".parse().unwrap()
        },
        peer,
        time_wait: tw,
        time_wait_per_s: per_s,
        owners: vec![proc_id(7)],
    }
}

#[test]
fn quiet_host_has_no_findings() {
    assert!(diagnose(&evidence(), &host()).is_empty());
}

#[test]
fn growing_close_wait_is_a_leak_with_fd_projection() {
    let mut ev = evidence();
    ev.processes.push(leaker(130, 10)); // +120 in 30 s: 4/s
    let mut h = host();
    h.processes.insert(
        42,
        ProcFacts {
            open_fds: Some(200),
            nofile_limit: Some(1024),
            container: Some("docker:0123456789ab".into()),
        },
    );
    let f = diagnose(&ev, &h);
    assert_eq!(kinds(&f), vec![Kind::CloseWaitLeak]);
    let f = &f[0];
    // (1024 - 200) / 4 per s = 206 s: under an hour, so critical.
    assert_eq!(f.severity, Severity::Critical);
    assert!((f.eta_s.unwrap() - 206.0).abs() < 1.0, "{:?}", f.eta_s);
    assert!(f.what.contains("Too many open files"), "{}", f.what);
    assert_eq!(f.who.local_ports, vec![8080]);
    assert_eq!(f.who.peers, vec!["10.0.0.9:5432".to_string()]);
    assert_eq!(
        f.who.processes[0].container.as_deref(),
        Some("docker:0123456789ab")
    );
    assert!(f.knobs.is_empty(), "no sysctl cures a leak");
    assert!(f.fix.iter().any(|x| x.contains("No sysctl cures")));
    // Since: the oldest socket's entry, 29 s before now.
    assert_eq!(f.since_unix, Some(1_800_000_000.0 - 29.0));
}

#[test]
fn growing_leak_far_from_the_fd_limit_is_high_not_critical() {
    let mut ev = evidence();
    ev.processes.push(leaker(20, 10));
    let mut h = host();
    h.processes.insert(
        42,
        ProcFacts {
            open_fds: Some(100),
            nofile_limit: Some(1_048_576),
            container: None,
        },
    );
    let f = diagnose(&ev, &h);
    assert_eq!(f[0].severity, Severity::High);
}

#[test]
fn steady_young_close_wait_is_not_a_leak() {
    let mut ev = evidence();
    // A busy server: 4 sockets in CLOSE_WAIT at start and end, all milliseconds old.
    let mut p = leaker(4, 4);
    p.close_wait_entries = 9000;
    p.close_wait_age_ms = Some(DwellMs {
        count: 4,
        p50: 1.0,
        p90: 2.0,
        p99: 2.0,
        max: 2.0,
    });
    ev.processes.push(p);
    assert!(diagnose(&ev, &host()).is_empty());
}

#[test]
fn old_close_wait_without_growth_is_a_medium_leak() {
    let mut ev = evidence();
    let mut p = leaker(2, 2);
    p.close_wait_old = 2;
    ev.processes.push(p);
    let f = diagnose(&ev, &host());
    assert_eq!(kinds(&f), vec![Kind::CloseWaitLeak]);
    assert_eq!(f[0].severity, Severity::Medium);
    assert_eq!(f[0].eta_s, None, "no growth, no projection");
}

#[test]
fn server_closing_first_never_suggests_tw_reuse() {
    let mut ev = evidence();
    ev.listen_ports.push(ListenPortEvidence {
        port: 8080,
        time_wait: 5000,
        time_wait_per_s: 80.0,
        owners: vec![proc_id(9)],
    });
    let f = diagnose(&ev, &host());
    assert_eq!(kinds(&f), vec![Kind::TimeWaitServerClose]);
    assert!(
        f[0].knobs.iter().all(|k| !k.sysctl.contains("tw_reuse")),
        "{:?}",
        f[0].knobs
    );
    assert!(f[0].fix[0].contains("keep-alive"));
}

#[test]
fn a_few_time_wait_sockets_are_routine() {
    let mut ev = evidence();
    ev.listen_ports.push(ListenPortEvidence {
        port: 8080,
        time_wait: 30,
        time_wait_per_s: 0.5,
        owners: vec![],
    });
    ev.destinations.push(dest(40, 0.5, "10.0.0.9:443"));
    assert!(diagnose(&ev, &host()).is_empty());
}

#[test]
fn client_short_connections_are_found_by_rate_too() {
    let mut ev = evidence();
    // 20 now but 5/s: 300 at steady state.
    ev.destinations.push(dest(20, 5.0, "10.0.0.9:443"));
    let f = diagnose(&ev, &host());
    assert_eq!(kinds(&f), vec![Kind::TimeWaitClientClose]);
    assert!(f[0].knobs.is_empty(), "far from exhaustion: no knob");
}

#[test]
fn port_exhaustion_projects_and_recommends_tw_reuse_with_timestamps() {
    let mut ev = evidence();
    // 20000 of 28232 held, 500/s: steady state 30000 > range; (28232-20000)/500 = 16 s.
    ev.destinations.push(dest(20_000, 500.0, "10.0.0.9:443"));
    let f = diagnose(&ev, &host());
    assert_eq!(
        kinds(&f),
        vec![Kind::PortExhaustion],
        "replaces the plain finding"
    );
    let f = &f[0];
    assert_eq!(f.severity, Severity::Critical);
    assert!((f.eta_s.unwrap() - 16.5).abs() < 0.5, "{:?}", f.eta_s);
    let reuse = f
        .knobs
        .iter()
        .find(|k| k.sysctl == "net.ipv4.tcp_tw_reuse")
        .unwrap();
    assert!(
        reuse.advice.contains("tcp_timestamps=1"),
        "{}",
        reuse.advice
    );
    assert!(reuse.advice.contains("outgoing"), "{}", reuse.advice);
}

#[test]
fn port_exhaustion_without_timestamps_says_reuse_cannot_work() {
    let mut ev = evidence();
    ev.destinations.push(dest(20_000, 0.0, "10.0.0.9:443"));
    let mut h = host();
    h.sysctls.tcp_timestamps = Some(0);
    let f = diagnose(&ev, &h);
    let reuse = &f[0].knobs[0];
    assert!(reuse.advice.contains("no effect"), "{}", reuse.advice);
    assert_eq!(f[0].eta_s, None, "no growth: no exhaustion time");
    assert!(f[0].what.contains("levels off"), "{}", f[0].what);
}

#[test]
fn small_port_range_makes_few_sockets_a_risk() {
    let mut ev = evidence();
    ev.destinations.push(dest(80, 2.0, "127.0.0.1:20000"));
    let mut h = host();
    h.sysctls.ip_local_port_range = (40000, 40099);
    h.sysctls.tcp_tw_reuse = Some(2);
    let f = diagnose(&ev, &h);
    assert_eq!(kinds(&f), vec![Kind::PortExhaustion]);
    // 80 % now, 120 at steady state: exhausted in (100 - 80) / 2 = 10 s.
    assert!((f[0].eta_s.unwrap() - 10.0).abs() < 0.01);
    assert!(f[0].knobs[0].advice.contains("loopback"));
}

#[test]
fn tw_bucket_overflow_is_critical_and_names_the_knob() {
    let mut ev = evidence();
    ev.processes.push(ProcEvidence {
        proc: proc_id(5),
        time_wait: 20,
        ..ProcEvidence::default()
    });
    let mut h = host();
    h.sysctls.tcp_max_tw_buckets = Some(20);
    h.time_wait_now = Some(20);
    h.tw_overflow_end = Some(185);
    let f = diagnose(&ev, &h);
    assert_eq!(kinds(&f), vec![Kind::TimeWaitBuckets]);
    assert_eq!(f[0].severity, Severity::Critical);
    assert_eq!(f[0].numbers["tw_overflow"], 180.0);
    assert_eq!(f[0].knobs[0].sysctl, "net.ipv4.tcp_max_tw_buckets");
    assert_eq!(f[0].who.processes[0].pid, 5);
}

#[test]
fn tw_buckets_near_the_limit_without_overflow_is_high() {
    let mut h = host();
    h.sysctls.tcp_max_tw_buckets = Some(1000);
    h.time_wait_now = Some(850);
    let f = diagnose(&evidence(), &h);
    assert_eq!(kinds(&f), vec![Kind::TimeWaitBuckets]);
    assert_eq!(f[0].severity, Severity::High);
    h.time_wait_now = Some(700);
    assert!(diagnose(&evidence(), &h).is_empty());
}

fn lifetimes(count: u64, p50: f64, p90: f64) -> PeerLifetimes {
    PeerLifetimes {
        peer: "10.0.0.9:6379".parse().unwrap(),
        lifetime_ms: DwellMs {
            count,
            p50,
            p90,
            p99: p90,
            max: p90 * 2.0,
        },
        per_s: count as f64 / 30.0,
        owners: vec![proc_id(3)],
    }
}

#[test]
fn many_short_connections_to_one_peer_are_a_pooling_opportunity() {
    let mut ev = evidence();
    ev.peers.push(lifetimes(600, 2.0, 5.0));
    let f = diagnose(&ev, &host());
    assert_eq!(kinds(&f), vec![Kind::ShortLived]);
    assert!(f[0].what.contains("at least 90%"), "{}", f[0].what);
    assert!(f[0].knobs.is_empty());
}

#[test]
fn long_or_rare_connections_are_not_short_lived() {
    let mut ev = evidence();
    ev.peers.push(lifetimes(600, 250.0, 900.0)); // long
    ev.peers.push(lifetimes(20, 2.0, 5.0)); // rare
    assert!(diagnose(&ev, &host()).is_empty());
}

#[test]
fn fin_wait2_orphans_point_at_fin_timeout_not_time_wait() {
    let mut ev = evidence();
    ev.fin_wait2_orphans = 500;
    ev.fin_wait2_peers = vec![("10.0.0.9:80".into(), 500)];
    let f = diagnose(&ev, &host());
    assert_eq!(kinds(&f), vec![Kind::FinWait2Orphans]);
    let k = &f[0].knobs[0];
    assert_eq!(k.sysctl, "net.ipv4.tcp_fin_timeout");
    assert!(
        k.advice.contains("does not change TIME_WAIT"),
        "{}",
        k.advice
    );
}

#[test]
fn time_wait_findings_never_suggest_fin_timeout_or_tw_recycle() {
    let mut ev = evidence();
    ev.listen_ports.push(ListenPortEvidence {
        port: 80,
        time_wait: 5000,
        time_wait_per_s: 100.0,
        owners: vec![],
    });
    ev.destinations.push(dest(20_000, 500.0, "10.0.0.9:443"));
    let mut h = host();
    h.sysctls.tcp_max_tw_buckets = Some(25_000);
    h.time_wait_now = Some(25_000);
    for f in diagnose(&ev, &h) {
        for k in &f.knobs {
            assert_ne!(k.sysctl, "net.ipv4.tcp_fin_timeout", "{f:?}");
            assert_ne!(k.sysctl, "net.ipv4.tcp_tw_recycle", "{f:?}");
        }
    }
}

#[test]
fn tw_recycle_on_an_old_kernel_is_reported_and_never_recommended() {
    let mut h = host();
    h.sysctls.tcp_tw_recycle = Some(1);
    let f = diagnose(&evidence(), &h);
    assert_eq!(kinds(&f), vec![Kind::TwRecycle]);
    assert!(f[0].why.contains("4.12"));
    h.sysctls.tcp_tw_recycle = Some(0);
    assert!(diagnose(&evidence(), &h).is_empty());
}

#[test]
fn findings_are_ranked_by_severity() {
    let mut ev = evidence();
    ev.peers.push(lifetimes(600, 2.0, 5.0)); // low
    ev.processes.push(leaker(20, 10)); // high
    let f = diagnose(&ev, &host());
    assert_eq!(kinds(&f), vec![Kind::CloseWaitLeak, Kind::ShortLived]);
}

#[test]
fn new_sockets_stuck_in_close_wait_are_growth_even_if_the_first_sample_had_them() {
    let mut ev = evidence();
    let mut p = leaker(20, 20);
    p.close_wait_stuck_new = 20;
    ev.processes.push(p);
    let f = diagnose(&ev, &host());
    assert_eq!(kinds(&f), vec![Kind::CloseWaitLeak]);
    assert_eq!(f[0].numbers["close_wait_growth"], 20.0);
}

#[test]
fn many_young_close_wait_sockets_are_not_stuck() {
    let mut ev = evidence();
    // A busy server with 50 sockets between EOF and close() at any moment, none stuck.
    let mut p = leaker(50, 50);
    p.close_wait_entries = 100_000;
    p.close_wait_stuck_new = 0;
    ev.processes.push(p);
    assert!(diagnose(&ev, &host()).is_empty());
}

#[test]
fn the_bucket_limit_caps_the_port_exhaustion_projection() {
    let mut ev = evidence();
    // 22/s would be 1320 at steady state, but the namespace keeps at most 10 timewait sockets.
    ev.destinations.push(dest(10, 22.0, "127.0.0.1:20300"));
    let mut h = host();
    h.sysctls.ip_local_port_range = (40000, 40099);
    h.sysctls.tcp_max_tw_buckets = Some(10);
    h.time_wait_now = Some(10);
    assert_eq!(kinds(&diagnose(&ev, &h)), vec![Kind::TimeWaitBuckets]);
}
