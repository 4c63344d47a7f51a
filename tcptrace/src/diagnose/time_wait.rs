//! TIME_WAIT from an active closer (server closing per request, client making short
//! connections), and short-lived connections to one peer.

use std::collections::BTreeMap;

use super::fixes::client_fixes;
use super::ports::at_risk;
use super::thresholds::{
    SHORT_LIVED_MIN_CONNS, SHORT_LIVED_MIN_PER_S, SHORT_LIVED_MS, TIME_WAIT_PILE_MIN, TIME_WAIT_S,
};
use super::{Evidence, Finding, HostFacts, Kind, Severity, Who, steady_state, who_proc};

/// TIME_WAIT now, or in steady state at the current entry rate, is a pile.
fn piles(now: u64, per_s: f64, host: &HostFacts) -> bool {
    now.max(steady_state(per_s, host) as u64) >= TIME_WAIT_PILE_MIN
}

/// TIME_WAIT on a listening port: the server closes accepted connections before its clients.
pub fn server_close(ev: &Evidence, host: &HostFacts) -> Vec<Finding> {
    ev.listen_ports
        .iter()
        .filter(|l| piles(l.time_wait, l.time_wait_per_s, host))
        .map(|l| {
            let mut numbers = BTreeMap::new();
            numbers.insert("time_wait", l.time_wait as f64);
            numbers.insert("time_wait_per_s", l.time_wait_per_s);
            let owners: Vec<String> = l
                .owners
                .iter()
                .map(|o| format!("{} (pid {})", o.comm, o.pid))
                .collect();
            Finding {
                kind: Kind::TimeWaitServerClose,
                severity: Severity::Low,
                title: format!(
                    "Server on port {} closes connections first{}",
                    l.port,
                    if owners.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", owners.join(", "))
                    }
                ),
                what: format!(
                    "{} accepted connections on local port {} are in TIME_WAIT ({:.1} new per \
                     second; about {:.0} at steady state, since each stays {:.0} s).",
                    l.time_wait,
                    l.port,
                    l.time_wait_per_s,
                    steady_state(l.time_wait_per_s, host),
                    TIME_WAIT_S
                ),
                who: Who {
                    processes: l.owners.iter().map(|o| who_proc(o, host)).collect(),
                    local_ports: vec![l.port],
                    peers: Vec::new(),
                },
                since_unix: None,
                since_estimated: false,
                growth_per_s: Some(l.time_wait_per_s),
                eta_s: None,
                why: "The side that closes first keeps TIME_WAIT for 60 s. Here the server closes \
                      each accepted connection itself (per request), typically because of \
                      `Connection: close` or keep-alive being off."
                    .into(),
                fix: vec![
                    "Enable HTTP keep-alive on the server and do not send `Connection: close`, \
                     so clients reuse connections and close them themselves."
                        .into(),
                    "Where the protocol allows, let the client close first (the server waits for \
                     EOF, then closes): TIME_WAIT then lands on the client."
                        .into(),
                    "This costs no ephemeral ports (the local port is the listening port), only \
                     a small timewait socket each; tcp_tw_reuse would not help (it applies to \
                     outgoing connect() only)."
                        .into(),
                ],
                knobs: Vec::new(),
                numbers,
                causes: None,
                cause: None,
            }
        })
        .collect()
}

/// TIME_WAIT on ephemeral ports towards one destination: a client that opens a connection per
/// request and closes it. Destinations at risk of port exhaustion get that finding instead.
pub fn client_close(ev: &Evidence, host: &HostFacts) -> Vec<Finding> {
    ev.destinations
        .iter()
        .filter(|d| piles(d.time_wait, d.time_wait_per_s, host) && !at_risk(d, host))
        .map(|d| {
            let mut numbers = BTreeMap::new();
            numbers.insert("time_wait", d.time_wait as f64);
            numbers.insert("time_wait_per_s", d.time_wait_per_s);
            let range = host.sysctls.port_range_size();
            numbers.insert("port_range_size", range as f64);
            Finding {
                kind: Kind::TimeWaitClientClose,
                severity: Severity::Low,
                title: format!(
                    "Short connections from {} to {}{}",
                    d.local_addr,
                    d.peer,
                    names(&d.owners)
                ),
                what: format!(
                    "{} sockets from {} to {} are in TIME_WAIT on ephemeral ports ({:.1} new per \
                     second), {:.1}% of the {} ports in ip_local_port_range.",
                    d.time_wait,
                    d.local_addr,
                    d.peer,
                    d.time_wait_per_s,
                    d.time_wait as f64 * 100.0 / range as f64,
                    range
                ),
                who: Who {
                    processes: d.owners.iter().map(|o| who_proc(o, host)).collect(),
                    local_ports: Vec::new(),
                    peers: vec![d.peer.to_string()],
                },
                since_unix: None,
                since_estimated: false,
                growth_per_s: Some(d.time_wait_per_s),
                eta_s: None,
                why: "This host opens a connection to the peer, uses it briefly and closes it \
                      first, so every connection leaves a TIME_WAIT socket holding its local port \
                      for 60 s."
                    .into(),
                fix: client_fixes(),
                knobs: Vec::new(),
                numbers,
                causes: None,
                cause: None,
            }
        })
        .collect()
}

fn names(owners: &[super::ProcId]) -> String {
    if owners.is_empty() {
        return String::new();
    }
    let v: Vec<String> = owners
        .iter()
        .map(|o| format!("{} (pid {})", o.comm, o.pid))
        .collect();
    format!(" by {}", v.join(", "))
}

/// Many short outgoing connections to one peer.
pub fn short_lived(ev: &Evidence, host: &HostFacts) -> Vec<Finding> {
    ev.peers
        .iter()
        .filter(|p| {
            p.lifetime_ms.count >= SHORT_LIVED_MIN_CONNS
                && p.per_s >= SHORT_LIVED_MIN_PER_S
                && p.lifetime_ms.p50 < SHORT_LIVED_MS
        })
        .map(|p| {
            let lt = &p.lifetime_ms;
            let share = if lt.p90 < SHORT_LIVED_MS {
                "at least 90%"
            } else {
                "at least half"
            };
            let mut numbers = BTreeMap::new();
            numbers.insert("connections", lt.count as f64);
            numbers.insert("per_s", p.per_s);
            numbers.insert("lifetime_p50_ms", lt.p50);
            numbers.insert("lifetime_p90_ms", lt.p90);
            numbers.insert("lifetime_max_ms", lt.max);
            Finding {
                kind: Kind::ShortLived,
                severity: Severity::Low,
                title: format!(
                    "{} short connections to {}{}: pooling opportunity",
                    lt.count,
                    p.peer,
                    names(&p.owners)
                ),
                what: format!(
                    "{} connections to {} opened and closed during the window ({:.1}/s); {share} \
                     lived under {SHORT_LIVED_MS:.0} ms (median {:.1} ms, p90 {:.1} ms, longest \
                     {:.1} ms).",
                    lt.count, p.peer, p.per_s, lt.p50, lt.p90, lt.max
                ),
                who: Who {
                    processes: p.owners.iter().map(|o| who_proc(o, host)).collect(),
                    local_ports: Vec::new(),
                    peers: vec![p.peer.to_string()],
                },
                since_unix: None,
                since_estimated: false,
                growth_per_s: None,
                eta_s: None,
                why: "Each connection pays a handshake (and TLS, if any) and leaves a TIME_WAIT \
                      socket on the side that closes first, for a few milliseconds of use."
                    .into(),
                fix: client_fixes(),
                knobs: Vec::new(),
                numbers,
                causes: None,
                cause: None,
            }
        })
        .collect()
}
