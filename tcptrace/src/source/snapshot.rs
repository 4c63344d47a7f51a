//! What the kernel's socket table (NETLINK_SOCK_DIAG, the source `ss` reads) says about one socket.

use std::net::SocketAddr;

use tcptrace_common::TcpState;

/// One row of the kernel's socket table, as `ss -tan` would show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSocket {
    /// Network namespace inode the socket was read in.
    pub netns: u32,
    /// For TIME_WAIT mini-sockets this is the timewait socket's `tw_substate` reported by
    /// inet_diag: TIME_WAIT or FIN_WAIT2 (an orphaned FIN_WAIT2 lives as a timewait socket).
    pub state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The socket cookie (`idiag_cookie`): the same value `bpf_get_socket_cookie` returns.
    pub cookie: u64,
    /// Inode of the socket file; 0 for timewait sockets and orphans (no fd holds them).
    pub inode: u64,
    pub uid: u32,
    /// cgroup v2 id of the process that created the socket (`INET_DIAG_CGROUP_ID`, the value
    /// `bpf_get_current_cgroup_id` returned in that process); accepted sockets inherit the
    /// listener's. 0 when the kernel did not report it (timewait sockets, kernels before 5.7).
    pub cgroup_id: u64,
    /// Milliseconds left on the socket's timer (for TIME_WAIT: until it is destroyed), if armed.
    pub timer_ms: Option<u32>,
    /// Bytes queued to receive / to send (for LISTEN: accept queue length / backlog). For
    /// CLOSE_WAIT, `rcv_nxt - copied_seq`, where the peer's FIN counts as one byte: 1 = the FIN
    /// was never read, 0 = EOF was read, more = data left unread before the FIN.
    pub rqueue: u32,
    pub wqueue: u32,
    /// CLOSE_WAIT only: milliseconds since the last segment from the peer (the smaller of
    /// `tcp_info`'s `tcpi_last_ack_recv` and `tcpi_last_data_recv`, what `ss -ti` shows as
    /// `lastack` / `lastrcv`). The peer's FIN started CLOSE_WAIT, so this is a lower bound on the
    /// time spent in it. None when not asked for or not reported.
    pub last_recv_ms: Option<u32>,
}

/// A whole dump: every TCP socket in one or more namespaces at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// CLOCK_MONOTONIC nanoseconds when the dump started.
    pub taken_ns: u64,
    pub sockets: Vec<KernelSocket>,
}
