//! User filters: parsed from the command line and split into what the kernel applies (family,
//! ports: unwanted events never cross to userspace) and what userspace must apply.
//!
//! The pid and comm filters are userspace-only on purpose: in softirq transitions the kernel's
//! current task is not the socket's owner, so a kernel-side pid filter would drop exactly the
//! transitions (ESTABLISHED->CLOSE_WAIT, FIN_WAIT2->CLOSE, ...) an SRE is looking for. Userspace
//! matches them against the socket's owner as the lifecycle table knows it.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use tcptrace_common::{
    TcpState,
    config::{PORT_MATCH_LOCAL, PORT_MATCH_REMOTE},
    event::{AF_INET, AF_INET6},
};

/// `ADDR[/PREFIX][:PORT]`; IPv6 with a port in brackets: `[ADDR[/PREFIX]]:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub addr: IpAddr,
    pub prefix: u8,
    pub port: Option<u16>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error(
        "'{input}': {problem}. Expected ADDR[/PREFIX][:PORT], e.g. 10.0.0.5, 10.0.0.0/8:443, [::1]:8080 or fd00::/8"
    )]
    Peer { input: String, problem: String },
    #[error("'{0}' is not a TCP state. Use one of: {states}", states = state_names())]
    State(String),
    #[error("'{0}' is not a port: use a number from 1 to 65535")]
    Port(String),
}

fn state_names() -> String {
    TcpState::ALL
        .iter()
        .filter(|s| **s != TcpState::NewSynRecv)
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for PeerSpec {
    type Err = FilterError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |problem: &str| FilterError::Peer {
            input: input.to_string(),
            problem: problem.into(),
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty peer"));
        }
        let (addr_part, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest
                .split_once(']')
                .ok_or_else(|| err("'[' without a closing ']'"))?;
            let port = match after {
                "" => None,
                p => Some(
                    parse_port(
                        p.strip_prefix(':')
                            .ok_or_else(|| err("expected ':PORT' after ']'"))?,
                    )
                    .map_err(|_| err("bad port after ']'"))?,
                ),
            };
            (inner, port)
        } else if s.matches(':').count() == 1 {
            // One colon: IPv4 (or IPv4 prefix) with a port.
            let (a, p) = s.split_once(':').unwrap_or((s, ""));
            (
                a,
                Some(parse_port(p).map_err(|_| err(&format!("'{p}' is not a port (1-65535)")))?),
            )
        } else {
            (s, None)
        };
        let (addr_s, prefix_s) = match addr_part.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (addr_part, None),
        };
        let addr: IpAddr = addr_s.parse().map_err(|_| {
            if addr_s.contains(':')
                && port.is_none()
                && !s.starts_with('[')
                && addr_s.parse::<std::net::Ipv6Addr>().is_err()
            {
                err(&format!(
                    "'{addr_s}' is not an IP address (IPv6 with a port needs brackets: [ADDR]:PORT)"
                ))
            } else {
                err(&format!("'{addr_s}' is not an IP address"))
            }
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_s {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(err(&format!(
                        "prefix '/{p}' must be a number from 0 to {max}"
                    )));
                }
            },
        };
        Ok(PeerSpec { addr, prefix, port })
    }
}

impl fmt::Display for PeerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        let a = if self.prefix == max {
            self.addr.to_string()
        } else {
            format!("{}/{}", self.addr, self.prefix)
        };
        match (self.port, self.addr.is_ipv6()) {
            (Some(p), true) => write!(f, "[{a}]:{p}"),
            (Some(p), false) => write!(f, "{a}:{p}"),
            (None, _) => f.write_str(&a),
        }
    }
}

impl PeerSpec {
    pub fn matches(&self, remote: &SocketAddr) -> bool {
        if let Some(p) = self.port
            && remote.port() != p
        {
            return false;
        }
        prefix_match(self.addr, self.prefix, remote.ip())
    }
}

fn prefix_match(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    // An IPv4 peer seen on a dual-stack socket arrives as ::ffff:a.b.c.d.
    let ip = match (net, ip) {
        (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        _ => ip,
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix as u32)
            };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix as u32)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

pub fn parse_port(s: &str) -> Result<u16, FilterError> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(FilterError::Port(s.to_string())),
    }
}

pub fn parse_state(s: &str) -> Result<TcpState, FilterError> {
    TcpState::parse(s).ok_or_else(|| FilterError::State(s.to_string()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Everything the user asked to see. Empty lists mean "no filter".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    /// Local or remote.
    pub ports: Vec<u16>,
    pub lports: Vec<u16>,
    pub rports: Vec<u16>,
    pub peers: Vec<PeerSpec>,
    /// Either side of a transition.
    pub states: Vec<TcpState>,
    pub family: Option<Family>,
    /// Network namespace inodes (as in `/proc/PID/ns/net`).
    pub netns: Vec<u32>,
    /// Container ids (or prefixes, as `docker ps` shows them) or Kubernetes pod uids.
    pub containers: Vec<String>,
}

/// What the socket's owner is, as far as filtering is concerned.
pub struct OwnerView<'a> {
    pub pid: u32,
    pub comm: &'a str,
}

impl Filters {
    /// The kernel-side family filter (AF_INET / AF_INET6), if any.
    pub fn kernel_family(&self) -> Option<u16> {
        self.family.map(|f| match f {
            Family::V4 => AF_INET,
            Family::V6 => AF_INET6,
        })
    }

    /// The kernel-side port filter: each port with whether it may match locally, remotely, or
    /// both. Empty when no port filter is set.
    pub fn kernel_ports(&self) -> Vec<(u16, u8)> {
        let mut out: Vec<(u16, u8)> = Vec::new();
        let mut add = |p: u16, bits: u8| match out.iter_mut().find(|(q, _)| *q == p) {
            Some((_, b)) => *b |= bits,
            None => out.push((p, bits)),
        };
        for &p in &self.ports {
            add(p, PORT_MATCH_LOCAL | PORT_MATCH_REMOTE);
        }
        for &p in &self.lports {
            add(p, PORT_MATCH_LOCAL);
        }
        for &p in &self.rports {
            add(p, PORT_MATCH_REMOTE);
        }
        out
    }

    /// Whether the socket's endpoints pass (ports, peers, family).
    pub fn matches_endpoints(&self, local: &SocketAddr, remote: &SocketAddr) -> bool {
        self.matches_addresses(local, remote) && self.matches_ports(local, remote)
    }

    /// Family and `--peer`: what is still known of a socket whose local port is gone.
    pub fn matches_addresses(&self, local: &SocketAddr, remote: &SocketAddr) -> bool {
        if let Some(f) = self.family
            && (f == Family::V6) != local.is_ipv6()
        {
            return false;
        }
        self.peers.is_empty() || self.peers.iter().any(|p| p.matches(remote))
    }

    fn matches_ports(&self, local: &SocketAddr, remote: &SocketAddr) -> bool {
        let any_port = !self.ports.is_empty() || !self.lports.is_empty() || !self.rports.is_empty();
        if any_port {
            let l = local.port();
            let r = remote.port();
            let ok = self.ports.contains(&l)
                || self.ports.contains(&r)
                || self.lports.contains(&l)
                || self.rports.contains(&r);
            if !ok {
                return false;
            }
        }
        true
    }

    /// Whether a socket's network namespace passes.
    pub fn matches_netns(&self, netns: u32) -> bool {
        self.netns.is_empty() || self.netns.contains(&netns)
    }

    /// Whether a process's container passes `--container`. Processes outside any known
    /// container never pass a container filter.
    pub fn matches_container(&self, c: Option<&crate::owner::cgroup::Container>) -> bool {
        if self.containers.is_empty() {
            return true;
        }
        let Some(c) = c else { return false };
        self.containers.iter().any(|want| {
            !want.is_empty()
                && (c.id.starts_with(want.as_str())
                    || c.pod_uid
                        .as_deref()
                        .is_some_and(|p| p.starts_with(want.as_str())))
        })
    }

    /// Whether a transition passes the state filter.
    pub fn matches_states(&self, old: TcpState, new: TcpState) -> bool {
        self.states.is_empty() || self.states.contains(&old) || self.states.contains(&new)
    }

    /// Whether the owner passes. Sockets with no known owner never pass a pid/comm filter.
    pub fn matches_owner(&self, owner: Option<OwnerView<'_>>) -> bool {
        if self.pids.is_empty() && self.comms.is_empty() {
            return true;
        }
        let Some(o) = owner else { return false };
        (self.pids.is_empty() || self.pids.contains(&o.pid))
            && (self.comms.is_empty() || self.comms.iter().any(|c| c == o.comm))
    }

    pub fn is_empty(&self) -> bool {
        *self == Filters::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn peer_spec_forms() {
        let p: PeerSpec = "10.0.0.5".parse().unwrap();
        assert_eq!((p.prefix, p.port), (32, None));
        let p: PeerSpec = "10.0.0.0/8:443".parse().unwrap();
        assert_eq!((p.prefix, p.port), (8, Some(443)));
        let p: PeerSpec = "[::1]:8080".parse().unwrap();
        assert_eq!(
            (p.addr, p.prefix, p.port),
            ("::1".parse().unwrap(), 128, Some(8080))
        );
        let p: PeerSpec = "fd00::/8".parse().unwrap();
        assert_eq!((p.prefix, p.port), (8, None));
        let p: PeerSpec = "[fd00::/8]:53".parse().unwrap();
        assert_eq!((p.prefix, p.port), (8, Some(53)));
        assert_eq!(p.to_string(), "[fd00::/8]:53");
    }

    #[test]
    fn peer_spec_errors_name_the_bad_part() {
        for (input, needle) in [
            ("10.0.0.300", "'10.0.0.300' is not an IP address"),
            ("10.0.0.0/33", "prefix '/33'"),
            ("10.0.0.1:http", "'http' is not a port"),
            ("10.0.0.1:0", "'0' is not a port"),
            ("[::1", "closing ']'"),
            ("[::1]8080", "expected ':PORT'"),
            ("", "empty peer"),
            ("fe80::1/129", "prefix '/129'"),
        ] {
            let e = input.parse::<PeerSpec>().unwrap_err().to_string();
            assert!(e.contains(needle), "{input}: {e}");
        }
    }

    #[test]
    fn peer_matching_by_prefix_and_port() {
        let p: PeerSpec = "127.0.0.0/8:80".parse().unwrap();
        assert!(p.matches(&sa("127.0.0.2:80")));
        assert!(!p.matches(&sa("127.0.0.2:81")));
        assert!(!p.matches(&sa("10.0.0.2:80")));
        assert!(
            p.matches(&sa("[::ffff:127.0.0.9]:80")),
            "v4-mapped peer on a v6 socket"
        );
        let p: PeerSpec = "::1".parse().unwrap();
        assert!(p.matches(&sa("[::1]:5")));
        assert!(!p.matches(&sa("127.0.0.1:5")));
        let p: PeerSpec = "0.0.0.0/0".parse().unwrap();
        assert!(p.matches(&sa("1.2.3.4:5")));
    }

    #[test]
    fn kernel_ports_merge_directions() {
        let f = Filters {
            ports: vec![80],
            lports: vec![80, 22],
            rports: vec![443],
            ..Default::default()
        };
        let mut k = f.kernel_ports();
        k.sort();
        assert_eq!(
            k,
            vec![
                (22, PORT_MATCH_LOCAL),
                (80, PORT_MATCH_LOCAL | PORT_MATCH_REMOTE),
                (443, PORT_MATCH_REMOTE)
            ]
        );
    }

    #[test]
    fn endpoint_filters_keep_and_drop() {
        let f = Filters {
            lports: vec![8080],
            ..Default::default()
        };
        assert!(f.matches_endpoints(&sa("127.0.0.1:8080"), &sa("127.0.0.1:5000")));
        assert!(!f.matches_endpoints(&sa("127.0.0.1:5000"), &sa("127.0.0.1:8080")));
        let f = Filters {
            family: Some(Family::V6),
            ..Default::default()
        };
        assert!(f.matches_endpoints(&sa("[::1]:1"), &sa("[::1]:2")));
        assert!(!f.matches_endpoints(&sa("127.0.0.1:1"), &sa("127.0.0.1:2")));
    }

    #[test]
    fn owner_filter_never_matches_unknown_owner() {
        let f = Filters {
            pids: vec![42],
            ..Default::default()
        };
        assert!(f.matches_owner(Some(OwnerView { pid: 42, comm: "x" })));
        assert!(!f.matches_owner(Some(OwnerView { pid: 43, comm: "x" })));
        assert!(!f.matches_owner(None));
        assert!(Filters::default().matches_owner(None));
    }

    #[test]
    fn state_parsing_accepts_common_spellings() {
        for s in ["TIME_WAIT", "time-wait", "timewait", "TCP_TIME_WAIT"] {
            assert_eq!(parse_state(s), Ok(TcpState::TimeWait), "{s}");
        }
        assert!(
            parse_state("WAITING")
                .unwrap_err()
                .to_string()
                .contains("CLOSE_WAIT")
        );
    }
}
