//! Ephemeral port exhaustion: TIME_WAIT towards one (local address, peer address, peer port)
//! against `ip_local_port_range`.
//!
//! connect() needs a local port not in use towards that exact destination; TIME_WAIT sockets hold
//! theirs for 60 s. Once they cover the range, connect() fails with EADDRNOTAVAIL, unless
//! `tcp_tw_reuse` lets it take over a TIME_WAIT port (`tcp_twsk_unique()` in
//! <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_ipv4.c>).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::fixes::client_fixes;
use super::thresholds::{PORT_CRITICAL_RATIO, PORT_EXHAUSTION_CRITICAL_S, PORT_RISK_RATIO};
use super::{
    DestEvidence, Evidence, Finding, HostFacts, Kind, Knob, Severity, Who, human_s, steady_state,
    who_proc,
};
use crate::aggregate::ConnectFailureRow;

/// TIME_WAIT towards `d` now, or at steady state at its current rate.
fn projected(d: &DestEvidence, host: &HostFacts) -> f64 {
    (d.time_wait as f64).max(steady_state(d.time_wait_per_s, host))
}

/// The destination holds (or will hold at the current rate) enough of the range to be a risk.
pub fn at_risk(d: &DestEvidence, host: &HostFacts) -> bool {
    projected(d, host) / host.sysctls.port_range_size() as f64 >= PORT_RISK_RATIO
}

/// The connects to `peer` that failed for want of a local port (EADDRNOTAVAIL).
fn addr_not_avail<'a>(
    ev: &'a Evidence,
    peer: &'a SocketAddr,
) -> impl Iterator<Item = &'a ConnectFailureRow> + 'a {
    ev.connect_failures.iter().filter(move |r| {
        r.errno == "EADDRNOTAVAIL"
            && r.port == peer.port()
            && r.addr.parse().ok() == Some(peer.ip())
    })
}

/// Destinations connect() already failed to for want of a port, with no TIME_WAIT evidence of
/// their own (the ports are held by connections in other states, or the TIME_WAIT sockets
/// already expired).
fn failed_only(ev: &Evidence) -> Vec<DestEvidence> {
    let mut out: Vec<DestEvidence> = Vec::new();
    for r in ev
        .connect_failures
        .iter()
        .filter(|r| r.errno == "EADDRNOTAVAIL")
    {
        let Ok(ip) = r.addr.parse() else { continue };
        let peer = SocketAddr::new(ip, r.port);
        if ev.destinations.iter().any(|d| d.peer == peer) || out.iter().any(|d| d.peer == peer) {
            continue;
        }
        let unspecified = if peer.is_ipv6() {
            std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        } else {
            std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        };
        out.push(DestEvidence {
            local_addr: unspecified,
            peer,
            time_wait: 0,
            time_wait_per_s: 0.0,
            owners: Vec::new(),
        });
    }
    out
}

pub fn exhaustion(ev: &Evidence, host: &HostFacts) -> Vec<Finding> {
    let range = host.sysctls.port_range_size() as f64;
    let (lo, hi) = host.sysctls.ip_local_port_range;
    let extra = failed_only(ev);
    ev.destinations
        .iter()
        .chain(extra.iter())
        .filter(|d| at_risk(d, host) || addr_not_avail(ev, &d.peer).next().is_some())
        .map(|d| {
            let failed: Vec<&ConnectFailureRow> = addr_not_avail(ev, &d.peer).collect();
            let failures: u64 = failed.iter().map(|r| r.count).sum();
            let ratio = d.time_wait as f64 / range;
            let steady = steady_state(d.time_wait_per_s, host);
            // The range runs out only if the steady state exceeds it.
            let eta_s = (steady >= range && d.time_wait_per_s > 0.0)
                .then(|| (range - d.time_wait as f64).max(0.0) / d.time_wait_per_s);
            // connect() failing already is the harm itself.
            let severity = if failures > 0
                || ratio >= PORT_CRITICAL_RATIO
                || eta_s.is_some_and(|e| e < PORT_EXHAUSTION_CRITICAL_S)
            {
                Severity::Critical
            } else {
                Severity::High
            };
            let mut numbers = BTreeMap::new();
            numbers.insert("time_wait", d.time_wait as f64);
            numbers.insert("time_wait_per_s", d.time_wait_per_s);
            numbers.insert("port_range_size", range);
            numbers.insert("ratio", ratio);
            numbers.insert("steady_state", steady);
            let mut what = if d.time_wait == 0 {
                format!(
                    "No TIME_WAIT socket towards {} holds one of the {} ephemeral ports \
                     ({lo}-{hi}) now: the ports are held by connections in other states, or \
                     their TIME_WAIT sockets expired since.",
                    d.peer, range
                )
            } else {
                format!(
                    "{} of the {} ephemeral ports ({lo}-{hi}) are held by TIME_WAIT sockets \
                     from {} to {} ({:.0}%), {:.1} new per second.",
                    d.time_wait,
                    range,
                    d.local_addr,
                    d.peer,
                    ratio * 100.0,
                    d.time_wait_per_s
                )
            };
            match eta_s {
                // Failing already: the failures below say more than a projection.
                _ if d.time_wait == 0 || failures > 0 => {}
                Some(e) => {
                    numbers.insert("eta_s", e);
                    what.push_str(&format!(
                        " At this rate the range is used up in about {} and connect() to this \
                         destination fails with EADDRNOTAVAIL.",
                        human_s(e)
                    ));
                }
                None => what.push_str(&format!(
                    " At this rate it levels off at about {steady:.0} ({:.0}% of the range).",
                    steady * 100.0 / range
                )),
            }
            if failures > 0 {
                numbers.insert("connect_eaddrnotavail", failures as f64);
                let by: Vec<String> = failed
                    .iter()
                    .map(|r| match &r.comm {
                        Some(c) => format!("{} (pid {}) {}", c, r.pid, r.count),
                        None => format!("unknown process {}", r.count),
                    })
                    .collect();
                what.push_str(&format!(
                    " connect() to {} already failed {failures} times with EADDRNOTAVAIL \
                     (\"Cannot assign requested address\"): {}.",
                    d.peer,
                    by.join(", ")
                ));
            }
            Finding {
                kind: Kind::PortExhaustion,
                severity,
                title: if failures > 0 {
                    format!(
                        "Ephemeral ports to {} ran out: {failures} connects failed with \
                         EADDRNOTAVAIL ({:.0}% of the range in TIME_WAIT)",
                        d.peer,
                        ratio * 100.0
                    )
                } else {
                    format!(
                        "Ephemeral ports to {} running out ({:.0}% in TIME_WAIT)",
                        d.peer,
                        ratio * 100.0
                    )
                },
                what,
                who: Who {
                    processes: failing_first(&failed, d, host),
                    local_ports: Vec::new(),
                    peers: vec![d.peer.to_string()],
                },
                since_unix: None,
                since_estimated: false,
                growth_per_s: Some(d.time_wait_per_s),
                eta_s,
                why: "Each outgoing connection this host closes first keeps its local port in \
                      TIME_WAIT for 60 s, and a port can serve only one connection per \
                      destination; when TIME_WAIT covers the range there is no port left."
                    .into(),
                fix: client_fixes(),
                knobs: knobs(d, host),
                numbers,
                causes: None,
                cause: None,
            }
        })
        .collect()
}

/// The processes whose connects failed, then the owners of the TIME_WAIT sockets.
fn failing_first(
    failed: &[&ConnectFailureRow],
    d: &DestEvidence,
    host: &HostFacts,
) -> Vec<super::WhoProc> {
    let mut procs: Vec<super::ProcId> = failed
        .iter()
        .filter(|r| r.pid != 0)
        .map(|r| super::ProcId {
            pid: r.pid,
            comm: r.comm.map(|c| c.as_str().to_string()).unwrap_or_default(),
        })
        .collect();
    for o in &d.owners {
        if !procs.iter().any(|p| p.pid == o.pid) {
            procs.push(o.clone());
        }
    }
    procs.iter().map(|o| who_proc(o, host)).collect()
}

/// `tcp_tw_reuse` (this is outgoing-connection pressure, the one case it is for) and the range.
fn knobs(d: &DestEvidence, host: &HostFacts) -> Vec<Knob> {
    let s = &host.sysctls;
    let loopback = d.peer.ip().is_loopback() && d.local_addr.is_loopback();
    let ts_off = s.tcp_timestamps == Some(0);
    let reuse = match s.tcp_tw_reuse {
        _ if ts_off => "tcp_tw_reuse has no effect while tcp_timestamps is 0: it needs \
                        timestamps to tell a new connection's segments from the old one's. \
                        Enable net.ipv4.tcp_timestamps=1 first."
            .to_string(),
        Some(1) => "Already on: connect() reuses a TIME_WAIT port once it is 1 s old. If the \
                    range still runs out, the rate itself is the problem: reuse connections."
            .to_string(),
        Some(2) if loopback => "2 (loopback only) already lets connect() reuse these loopback \
                                TIME_WAIT ports; it does not apply to other destinations."
            .to_string(),
        _ => "Set net.ipv4.tcp_tw_reuse=1: connect() may then reuse a local port whose TIME_WAIT \
              socket is over 1 s old, when timestamps prove the new connection newer. It helps \
              outgoing connections only, and needs net.ipv4.tcp_timestamps=1."
            .to_string(),
    };
    let (lo, hi) = s.ip_local_port_range;
    vec![
        Knob {
            sysctl: "net.ipv4.tcp_tw_reuse",
            current: s.tcp_tw_reuse.map(|v| v.to_string()),
            advice: reuse,
        },
        Knob {
            sysctl: "net.ipv4.ip_local_port_range",
            current: Some(format!("{lo} {hi}")),
            advice: "A wider range (e.g. 10000 65000) buys time, not a fix. Reserve ports that \
                     services listen on with net.ipv4.ip_local_reserved_ports so connect() never \
                     takes them. Several destination or source addresses multiply the ports \
                     available."
                .into(),
        },
    ]
}
