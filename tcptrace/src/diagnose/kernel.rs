//! Findings about kernel limits and settings: the TIME_WAIT bucket limit, orphaned FIN_WAIT2
//! sockets (`tcp_fin_timeout`), and `tcp_tw_recycle` on old kernels.

use std::collections::BTreeMap;

use super::thresholds::{FIN_WAIT2_ORPHANS_MIN, TW_BUCKETS_RATIO};
use super::{Evidence, Finding, HostFacts, Kind, Knob, Severity, Who, who_proc};

/// Host TIME_WAIT against `tcp_max_tw_buckets`, and `TCPTimeWaitOverflow` growth.
///
/// Past the limit `inet_twsk_alloc()` refuses and `tcp_time_wait()` closes the socket at once,
/// counting `TCPTimeWaitOverflow`
/// (<https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_minisocks.c>).
pub fn tw_buckets(ev: &Evidence, host: &HostFacts) -> Option<Finding> {
    let max = host.sysctls.tcp_max_tw_buckets?;
    let now = host.time_wait_now.unwrap_or(0);
    let overflow = host.tw_overflow_growth().unwrap_or(0);
    let ratio = now as f64 / max.max(1) as f64;
    if overflow == 0 && ratio < TW_BUCKETS_RATIO {
        return None;
    }
    let mut numbers = BTreeMap::new();
    numbers.insert("time_wait", now as f64);
    numbers.insert("tcp_max_tw_buckets", max as f64);
    numbers.insert("ratio", ratio);
    numbers.insert("tw_overflow", overflow as f64);
    let mut what = format!(
        "{now} TIME_WAIT sockets in this network namespace against tcp_max_tw_buckets = {max} \
         ({:.0}%).",
        ratio * 100.0
    );
    if overflow > 0 {
        what.push_str(&format!(
            " The kernel failed to create {overflow} timewait sockets during the {:.0} s window \
             (TCPTimeWaitOverflow): those connections closed without TIME_WAIT.",
            ev.window_s
        ));
    }
    // The biggest TIME_WAIT holders, as far as the tracked sockets show, with the closes that
    // found the table full: at the limit those are the demand the held count no longer shows.
    let mut procs: Vec<_> = ev
        .processes
        .iter()
        .filter(|p| p.time_wait + p.time_wait_refused > 0)
        .collect();
    procs.sort_by_key(|x| std::cmp::Reverse(x.time_wait + x.time_wait_refused));
    let refusers: Vec<String> = procs
        .iter()
        .filter(|p| p.time_wait_refused > 0)
        .take(5)
        .map(|p| {
            format!(
                "{} (pid {}) {}",
                p.proc.comm, p.proc.pid, p.time_wait_refused
            )
        })
        .collect();
    if !refusers.is_empty() {
        what.push_str(&format!(
            " Closes that found the table full, by closer: {}.",
            refusers.join(", ")
        ));
    }
    let mut ports: Vec<_> = ev.listen_ports.iter().filter(|l| l.time_wait > 0).collect();
    ports.sort_by_key(|x| std::cmp::Reverse(x.time_wait));
    let mut dests: Vec<_> = ev.destinations.iter().collect();
    dests.sort_by_key(|x| std::cmp::Reverse(x.time_wait));
    Some(Finding {
        kind: Kind::TimeWaitBuckets,
        severity: if overflow > 0 {
            Severity::Critical
        } else {
            Severity::High
        },
        title: if overflow > 0 {
            format!("TIME_WAIT bucket limit hit: {overflow} timewait sockets dropped")
        } else {
            format!(
                "TIME_WAIT near the bucket limit ({:.0}% of tcp_max_tw_buckets)",
                ratio * 100.0
            )
        },
        what,
        who: Who {
            processes: procs
                .iter()
                .take(5)
                .map(|p| who_proc(&p.proc, host))
                .collect(),
            local_ports: ports.iter().take(5).map(|l| l.port).collect(),
            peers: dests.iter().take(5).map(|d| d.peer.to_string()).collect(),
        },
        since_unix: None,
        since_estimated: false,
        growth_per_s: None,
        eta_s: None,
        why: "Beyond tcp_max_tw_buckets the kernel skips TIME_WAIT and frees the connection at \
              once, so delayed segments of an old connection can be taken for a new one on the \
              same ports (and the kernel logs \"time wait bucket table overflow\")."
            .into(),
        fix: vec![
            "Reduce TIME_WAIT at its source: the active closers listed in the other findings \
             (keep-alive on servers, connection reuse on clients)."
                .into(),
        ],
        knobs: vec![Knob {
            sysctl: "net.ipv4.tcp_max_tw_buckets",
            current: Some(max.to_string()),
            advice: "Raise it if memory allows: a timewait socket is a small structure (a few \
                     hundred bytes), far cheaper than losing TIME_WAIT's protection. It is a \
                     per-network-namespace setting."
                .into(),
        }],
        numbers,
        causes: None,
        cause: None,
    })
}

/// Orphaned FIN_WAIT2 sockets (this side closed, the peer never sends its FIN): the one case
/// where `tcp_fin_timeout` is the knob.
pub fn fin_wait2_orphans(ev: &Evidence, host: &HostFacts) -> Option<Finding> {
    if ev.fin_wait2_orphans < FIN_WAIT2_ORPHANS_MIN {
        return None;
    }
    let fin = host.sysctls.tcp_fin_timeout;
    let mut numbers = BTreeMap::new();
    numbers.insert("fin_wait2_orphans", ev.fin_wait2_orphans as f64);
    // Local peers leaking CLOSE_WAIT are the usual cause on one host.
    let leakers: Vec<_> = ev.processes.iter().filter(|p| p.close_wait > 0).collect();
    let mut fix = vec![
        "Find out why the peers do not close: a peer in CLOSE_WAIT on its side is leaking \
         sockets (run tcptrace diagnose on the peer)."
            .into(),
    ];
    if !leakers.is_empty() {
        fix.push(format!(
            "On this host, {} hold CLOSE_WAIT sockets: see the CLOSE_WAIT finding.",
            leakers
                .iter()
                .map(|p| format!("{} (pid {})", p.proc.comm, p.proc.pid))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Some(Finding {
        kind: Kind::FinWait2Orphans,
        severity: Severity::Low,
        title: format!(
            "{} orphaned FIN_WAIT2 sockets: peers that do not close",
            ev.fin_wait2_orphans
        ),
        what: format!(
            "{} sockets closed by this host wait in FIN_WAIT2 for the peer's FIN; the kernel \
             drops each after tcp_fin_timeout ({}).",
            ev.fin_wait2_orphans,
            fin.map_or("unknown".to_string(), |s| format!("{s} s"))
        ),
        who: Who {
            processes: leakers
                .iter()
                .take(5)
                .map(|p| who_proc(&p.proc, host))
                .collect(),
            local_ports: Vec::new(),
            peers: ev.fin_wait2_peers.iter().map(|p| p.0.clone()).collect(),
        },
        since_unix: None,
        since_estimated: false,
        growth_per_s: None,
        eta_s: None,
        why: "After close() with the peer's FIN still missing, the socket is orphaned in \
              FIN_WAIT2 until the FIN arrives or tcp_fin_timeout expires."
            .into(),
        fix,
        knobs: vec![Knob {
            sysctl: "net.ipv4.tcp_fin_timeout",
            current: fin.map(|s| s.to_string()),
            advice: "Lowering it frees orphaned FIN_WAIT2 sockets sooner. It does not change \
                     TIME_WAIT, which is fixed at 60 s."
                .into(),
        }],
        numbers,
        causes: None,
        cause: None,
    })
}

/// `tcp_tw_recycle` enabled on a pre-4.12 kernel.
pub fn tw_recycle(host: &HostFacts) -> Option<Finding> {
    (host.sysctls.tcp_tw_recycle? != 0).then(|| Finding {
        kind: Kind::TwRecycle,
        severity: Severity::High,
        title: "tcp_tw_recycle is enabled: clients behind NAT are refused".into(),
        what: "net.ipv4.tcp_tw_recycle = 1.".into(),
        who: Who::default(),
        since_unix: None,
        since_estimated: false,
        growth_per_s: None,
        eta_s: None,
        why: "It drops SYNs whose timestamps are older than the last seen from the same address, \
              so clients sharing a NAT address (with unrelated timestamp clocks) fail to \
              connect. It was removed in Linux 4.12 for that reason."
            .into(),
        fix: vec!["Set net.ipv4.tcp_tw_recycle=0 and never enable it.".into()],
        knobs: vec![Knob {
            sysctl: "net.ipv4.tcp_tw_recycle",
            current: Some("1".into()),
            advice: "Disable it. For outgoing-connection TIME_WAIT pressure, tcp_tw_reuse is \
                     the safe knob."
                .into(),
        }],
        numbers: BTreeMap::new(),
        causes: None,
        cause: None,
    })
}
