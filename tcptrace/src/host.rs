//! What the running host says about itself: the TCP sysctls that shape TIME_WAIT, FIN_WAIT2 and
//! ephemeral ports, and its name. The one place that reads them, for the session (recorded in
//! a recording's header) and for diagnose.
//!
//! Network sysctls are per network namespace: these readers see the namespace tcptrace itself
//! runs in (run it with `nsenter --net=...` to look at another one).

use std::path::Path;

/// Where the IPv4 TCP sysctls live (they also govern IPv6 sockets).
pub const IPV4_SYSCTLS: &str = "/proc/sys/net/ipv4";

/// The kernel's default `ip_local_port_range` (`inet_init_net`), used when the file cannot be
/// read (and by recordings made before the header carried it).
/// <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/af_inet.c#L1810>
pub const DEFAULT_PORT_RANGE: (u16, u16) = (32768, 60999);

/// The kernel's default `tcp_fin_timeout`, seconds (`TCP_FIN_TIMEOUT`).
pub const DEFAULT_FIN_TIMEOUT_S: u64 = 60;

/// The TCP sysctls that decide how TIME_WAIT, FIN_WAIT2 and ephemeral ports behave.
/// `None`: not readable (or, for `tcp_tw_recycle`, absent as on every kernel since 4.12).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Sysctls {
    /// `net.ipv4.tcp_tw_reuse`: 0 off, 1 on, 2 loopback only (the default since 4.20).
    pub tcp_tw_reuse: Option<u8>,
    /// `net.ipv4.tcp_timestamps`: tcp_tw_reuse needs it (it proves the new connection newer).
    pub tcp_timestamps: Option<u8>,
    /// `net.ipv4.ip_local_port_range` (low, high).
    pub ip_local_port_range: (u16, u16),
    /// `net.ipv4.tcp_max_tw_buckets`: most timewait sockets; beyond it sockets close without
    /// TIME_WAIT.
    pub tcp_max_tw_buckets: Option<u64>,
    /// `net.ipv4.tcp_fin_timeout`, seconds: lifetime of an orphaned FIN_WAIT2 socket.
    pub tcp_fin_timeout: Option<u64>,
    /// `net.ipv4.tcp_tw_recycle`: removed in Linux 4.12; present only on older kernels.
    pub tcp_tw_recycle: Option<u8>,
}

impl Sysctls {
    /// The sysctls of the namespace tcptrace runs in, now.
    pub fn read() -> Sysctls {
        read_sysctls(Path::new(IPV4_SYSCTLS))
    }

    /// Ports in `ip_local_port_range`.
    pub fn port_range_size(&self) -> u32 {
        let (a, b) = self.ip_local_port_range;
        u32::from(a.max(b)) - u32::from(a.min(b)) + 1
    }

    /// `tcp_fin_timeout` in nanoseconds, the kernel's default when unreadable.
    pub fn fin_timeout_ns(&self) -> u64 {
        self.tcp_fin_timeout.unwrap_or(DEFAULT_FIN_TIMEOUT_S) * 1_000_000_000
    }
}

fn read_u64(dir: &Path, name: &str) -> Option<u64> {
    std::fs::read_to_string(dir.join(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads the sysctls from a `/proc/sys/net/ipv4`-like directory.
pub fn read_sysctls(dir: &Path) -> Sysctls {
    let small = |n: &str| read_u64(dir, n).and_then(|v| u8::try_from(v).ok());
    let range = std::fs::read_to_string(dir.join("ip_local_port_range"))
        .ok()
        .and_then(|s| parse_port_range(&s))
        .unwrap_or(DEFAULT_PORT_RANGE);
    Sysctls {
        tcp_tw_reuse: small("tcp_tw_reuse"),
        tcp_timestamps: small("tcp_timestamps"),
        ip_local_port_range: range,
        tcp_max_tw_buckets: read_u64(dir, "tcp_max_tw_buckets"),
        tcp_fin_timeout: read_u64(dir, "tcp_fin_timeout"),
        tcp_tw_recycle: small("tcp_tw_recycle"),
    }
}

/// `ip_local_port_range`'s two numbers.
pub fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    Some((it.next()?.ok()?, it.next()?.ok()?))
}

/// The host's name (`/proc/sys/kernel/hostname`, the UTS namespace tcptrace runs in).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_parses_and_sizes() {
        assert_eq!(parse_port_range("40000\t40099\n"), Some((40000, 40099)));
        assert_eq!(parse_port_range("40000"), None);
        let s = Sysctls {
            ip_local_port_range: (40000, 40099),
            ..Sysctls::default()
        };
        assert_eq!(s.port_range_size(), 100);
    }

    #[test]
    fn sysctls_of_this_host_match_proc() {
        let s = Sysctls::read();
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        assert_eq!(Some(s.ip_local_port_range), parse_port_range(&text));
        let fin: u64 = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fin_timeout")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(s.fin_timeout_ns(), fin * 1_000_000_000);
    }
}
