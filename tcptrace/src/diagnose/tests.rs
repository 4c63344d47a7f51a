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
        close_wait_new_held: cw - at_start,
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
    // A closer whose every close found the table full holds no TIME_WAIT at all: it is named
    // first, by the closes refused.
    ev.processes.push(ProcEvidence {
        proc: proc_id(6),
        time_wait_refused: 180,
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
    let pids: Vec<u32> = f[0].who.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, [6, 5]);
    assert!(
        f[0].what
            .contains("found the table full, by closer: app6 (pid 6) 180."),
        "{}",
        f[0].what
    );
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
    p.close_wait_new_held = 20;
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

/// A process that has leaked 2 sockets a second for five minutes, looked at for one second.
fn old_leak() -> ProcEvidence {
    let ages: Vec<(u64, bool)> = (0..600u64)
        .map(|i| ((i * 500 + 250) * 1_000_000, i >= 2))
        .collect();
    let history = crate::aggregate::history(&ages);
    ProcEvidence {
        proc: proc_id(42),
        close_wait: 600,
        close_wait_entries: 2,
        close_wait_at_start: Some(598),
        close_wait_new_held: 2,
        close_wait_age_estimated: 598,
        close_wait_age_ms: Some(DwellMs {
            count: 600,
            p50: 150_000.0,
            p90: 270_000.0,
            p99: 297_000.0,
            max: 299_750.0,
        }),
        close_wait_history: history,
        ..ProcEvidence::default()
    }
}

#[test]
fn a_one_second_look_at_an_old_leak_gets_its_rate_start_and_fd_projection() {
    let mut ev = evidence();
    ev.window_s = 1.0;
    ev.processes.push(old_leak());
    let mut h = host();
    h.processes.insert(
        42,
        ProcFacts {
            open_fds: Some(700),
            nofile_limit: Some(1024),
            container: None,
        },
    );
    let f = diagnose(&ev, &h);
    assert_eq!(kinds(&f), vec![Kind::CloseWaitLeak]);
    let f = &f[0];
    assert!(f.title.contains("growing"), "{}", f.title);
    let rate = f.growth_per_s.unwrap();
    assert!((rate - 2.0).abs() < 0.1, "{rate}");
    // (1024 - 700) / 2 per s.
    assert!((f.eta_s.unwrap() - 162.0).abs() < 10.0, "{:?}", f.eta_s);
    let since = f.since_unix.unwrap();
    assert!((since - (1_800_000_000.0 - 300.0)).abs() < 1.0, "{since}");
    assert!(f.since_estimated);
    assert!(f.what.contains("598 older than tracing"), "{}", f.what);
}

#[test]
fn sockets_older_than_tracing_never_count_as_growth() {
    // The first sample saw none of them as the process's (their owner was found later): 77
    // at the end, 0 at the start, but only 31 entered CLOSE_WAIT during the window.
    let mut ev = evidence();
    ev.window_s = 15.0;
    let mut p = leaker(77, 0);
    p.close_wait_new_held = 31;
    p.close_wait_age_unknown = 46;
    ev.processes.push(p);
    let f = diagnose(&ev, &host());
    assert_eq!(f[0].numbers["close_wait_growth"], 31.0);
    assert!((f[0].growth_per_s.unwrap() - 31.0 / 15.0).abs() < 1e-9);
}

#[test]
fn a_long_window_without_growth_overrides_the_history() {
    // Sockets that churn: ages spread over a minute, but the count did not grow in 2 minutes.
    let mut ev = evidence();
    ev.window_s = 120.0;
    let mut p = old_leak();
    p.close_wait_at_start = Some(600);
    p.close_wait_new_held = 0;
    p.close_wait_age_ms = Some(DwellMs {
        count: 600,
        p50: 20_000.0,
        p90: 40_000.0,
        p99: 50_000.0,
        max: 59_000.0,
    });
    ev.processes.push(p);
    let f = diagnose(&ev, &host());
    assert!(f.is_empty() || !f[0].title.contains("growing"), "{:?}", f);
}

fn with_causes(never: u64, read_eof: u64, stopped: u64) -> Evidence {
    let mut ev = evidence();
    let mut p = leaker(130, 10);
    p.close_wait_causes = crate::lifecycle::CauseCounts {
        never_read_eof: never,
        read_eof_not_closed: read_eof,
        stopped_reading: stopped,
        unknown: 130 - never - read_eof - stopped,
    };
    ev.processes.push(p);
    ev
}

#[test]
fn each_cause_gets_its_own_why_and_fix() {
    use crate::lifecycle::LeakCause;
    let f = diagnose(&with_causes(120, 0, 0), &host());
    assert_eq!(f[0].cause, Some(LeakCause::NeverReadEof));
    assert!(f[0].why.contains("Recv-Q 1"), "{}", f[0].why);
    assert!(f[0].fix[0].contains("pool"), "{:?}", f[0].fix);
    assert_eq!(f[0].numbers["never_read_eof"], 120.0);

    let f = diagnose(&with_causes(0, 100, 0), &host());
    assert_eq!(f[0].cause, Some(LeakCause::ReadEofNotClosed));
    assert!(f[0].why.contains("read() returned 0"), "{}", f[0].why);
    assert!(f[0].fix[0].contains("every error"), "{:?}", f[0].fix);

    let f = diagnose(&with_causes(10, 0, 100), &host());
    assert_eq!(f[0].cause, Some(LeakCause::StoppedReading));
    assert!(f[0].fix[0].contains("thread dump"), "{:?}", f[0].fix);
    assert_eq!(f[0].causes.unwrap().stopped_reading, 100);
    // A second cause with a fifth or more of the known ones gets its fix too; 10 of 110 not.
    assert!(
        !f[0].fix.iter().any(|x| x.starts_with("Also")),
        "{:?}",
        f[0].fix
    );
    let f = diagnose(&with_causes(40, 0, 80), &host());
    assert!(
        f[0].fix.iter().any(|x| x.starts_with("Also 40")),
        "{:?}",
        f[0].fix
    );
    // No sysctl advice stays last.
    assert!(f[0].fix.last().unwrap().contains("No sysctl"));
}

fn failure(errno: &str, count: u64, peer: &str) -> crate::aggregate::ConnectFailureRow {
    let peer: SocketAddr = peer.parse().unwrap();
    crate::aggregate::ConnectFailureRow {
        pid: 7,
        comm: Some(crate::lifecycle::Comm::new("client")),
        addr: peer.ip().to_string(),
        port: peer.port(),
        errno: errno.into(),
        count,
    }
}

#[test]
fn failed_connects_with_no_port_left_make_the_exhaustion_finding_under_its_threshold() {
    let mut ev = evidence();
    // 3 TIME_WAIT of 28232 ports: far under the risk ratio, yet connect() failed.
    ev.destinations.push(dest(3, 0.1, "10.0.0.2:443"));
    ev.connect_failures
        .push(failure("EADDRNOTAVAIL", 12, "10.0.0.2:443"));
    ev.connect_failures
        .push(failure("ECONNREFUSED", 5, "10.0.0.2:443"));
    let f = diagnose(&ev, &host());
    assert_eq!(kinds(&f), vec![Kind::PortExhaustion]);
    assert_eq!(f[0].severity, Severity::Critical);
    assert_eq!(f[0].numbers["connect_eaddrnotavail"], 12.0);
    assert!(f[0].what.contains("client (pid 7) 12"), "{}", f[0].what);
    assert_eq!(f[0].who.processes[0].pid, 7);

    // Failures towards a destination with no TIME_WAIT at all still make one.
    let mut ev = evidence();
    ev.connect_failures
        .push(failure("EADDRNOTAVAIL", 4, "10.0.0.3:80"));
    let f = diagnose(&ev, &host());
    assert_eq!(kinds(&f), vec![Kind::PortExhaustion]);
    assert!(
        f[0].what.starts_with("No TIME_WAIT socket"),
        "{}",
        f[0].what
    );
    // Refused connects alone are not port exhaustion.
    let mut ev = evidence();
    ev.connect_failures
        .push(failure("ECONNREFUSED", 50, "10.0.0.3:80"));
    assert!(diagnose(&ev, &host()).is_empty());
}
