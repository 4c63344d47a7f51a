//! Ephemeral-port pressure: timewait sockets holding local ports per destination.
//!
//! Each (local address, peer address, peer port) can have at most one connection per local port,
//! so once its timewait sockets approach the size of `net.ipv4.ip_local_port_range`, connect()
//! to that destination starts failing with EADDRNOTAVAIL (unless tcp_tw_reuse frees them).

use std::net::IpAddr;

use hashbrown::HashMap;
use tcptrace_common::TcpState;

use crate::lifecycle::SocketTable;

/// One destination's use of the ephemeral port range.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PortPressure {
    /// Local address the connections come from.
    pub local_addr: String,
    /// Destination address.
    pub peer_addr: String,
    /// Destination port.
    pub peer_port: u16,
    /// Timewait sockets (TIME_WAIT, and orphaned FIN_WAIT2) holding an ephemeral local port
    /// towards this destination.
    pub time_wait: u64,
    /// Ports in `net.ipv4.ip_local_port_range`.
    pub range_size: u32,
    /// `time_wait / range_size`: 1.0 means the range is exhausted for this destination.
    pub ratio: f64,
}

/// Destinations by timewait sockets on ephemeral ports, most first, at most `top`.
pub fn port_pressure(table: &SocketTable, range: (u16, u16), top: usize) -> Vec<PortPressure> {
    let (lo, hi) = (range.0.min(range.1), range.0.max(range.1));
    let range_size = (hi - lo) as u32 + 1;
    let mut by_dest: HashMap<(IpAddr, IpAddr, u16), u64> = HashMap::new();
    for v in table.iter_where(|s| matches!(s, TcpState::TimeWait | TcpState::FinWait2)) {
        let port = v.local.port();
        if v.timewait_socket && !v.passive && v.remote.port() != 0 && (lo..=hi).contains(&port) {
            *by_dest
                .entry((v.local.ip(), v.remote.ip(), v.remote.port()))
                .or_default() += 1;
        }
    }
    let mut rows: Vec<_> = by_dest.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    rows.truncate(top);
    rows.into_iter()
        .map(|((l, p, pp), n)| PortPressure {
            local_addr: l.to_string(),
            peer_addr: p.to_string(),
            peer_port: pp,
            time_wait: n,
            range_size,
            ratio: n as f64 / range_size as f64,
        })
        .collect()
}
