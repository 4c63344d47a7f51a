//! The kernel's TCP socket table through NETLINK_SOCK_DIAG (inet_diag): what `ss -tan` reads.
//!
//! One `SOCK_DIAG_BY_FAMILY` dump per address family, every state, no extensions; then one of
//! CLOSE_WAIT sockets only with `INET_DIAG_INFO` (`struct tcp_info`), whose receive clocks date
//! sockets older than tracing. Asking for `tcp_info` on every socket would make the kernel lock
//! each one (`tcp_get_info` takes the socket lock) and quadruple the dump. The request and
//! the reply are parsed by hand: the `netlink-packet-sock-diag` crate drops `idiag_expires` for
//! timewait sockets (the one timer we need) and allocates per socket, so only the socket itself
//! comes from `netlink-sys`.
//!
//! Layouts: <https://github.com/torvalds/linux/blob/v6.1/include/uapi/linux/inet_diag.h>,
//! filled in <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/inet_diag.c>.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};
use tcptrace_common::TcpState;

use crate::source::snapshot::{KernelSocket, Snapshot};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 0x1;
/// NLM_F_ROOT | NLM_F_MATCH.
const NLM_F_DUMP: u16 = 0x300;
const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then `struct inet_diag_sockid`.
const INET_DIAG_REQ_V2_LEN: usize = 56;
/// `struct inet_diag_msg`: family, state, timer, retrans, sockid (48 bytes), expires, rqueue,
/// wqueue, uid, inode.
const INET_DIAG_MSG_LEN: usize = 72;
/// Reply attribute carrying the socket's cgroup v2 id (u64), added in 5.7 and sent unasked.
const INET_DIAG_CGROUP_ID: u16 = 21;
/// Reply attribute carrying `struct tcp_info`, sent when `idiag_ext` has bit `INET_DIAG_INFO - 1`.
const INET_DIAG_INFO: u16 = 2;
/// Where `tcp_info`'s receive clocks are (ms since the last data / ACK from the peer).
const TCPI_LAST_DATA_RECV: usize = std::mem::offset_of!(libc::tcp_info, tcpi_last_data_recv);
const TCPI_LAST_ACK_RECV: usize = std::mem::offset_of!(libc::tcp_info, tcpi_last_ack_recv);
/// The CLOSE_WAIT bit of `idiag_states`.
const CLOSE_WAIT_ONLY: u32 = 1 << TcpState::CloseWait as u32;
/// Every state bit: inet_diag matches `idiag_states & (1 << state)`; asking for SYN_RECV also
/// returns request sockets (NEW_SYN_RECV), which it reports as SYN_RECV.
const ALL_STATES: u32 = u32::MAX;

/// The kernel never builds a dump datagram larger than 32 KiB (`netlink_recvmsg` caps
/// `max_recvmsg_len`), and offering that much lets it fill each one fully
/// (<https://github.com/torvalds/linux/blob/v6.1/net/netlink/af_netlink.c>).
const RECV_BUF_LEN: usize = 64 * 1024;
/// The kernel answers every dump with NLMSG_DONE; this only bounds a wait that should not happen.
const RECV_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    #[error("cannot open a NETLINK_SOCK_DIAG socket: {0}")]
    Open(#[source] io::Error),
    #[error("cannot send the inet_diag dump request: {0}")]
    Send(#[source] io::Error),
    #[error("cannot receive the inet_diag dump: {0}")]
    Recv(#[source] io::Error),
    /// The kernel answered the dump with an error (NLMSG_ERROR, or a negative NLMSG_DONE).
    #[error("the kernel refused the inet_diag dump: {0}")]
    Kernel(#[source] io::Error),
    #[error("malformed inet_diag reply: {0}")]
    Malformed(&'static str),
    #[error("cannot read the network namespace inode: {0}")]
    Netns(#[source] io::Error),
    /// The namespace went away before it could be entered (its last process exited, or
    /// `ip netns del` removed it), or its `/proc/PID/ns/net` path now leads to another namespace
    /// because the pid was reused.
    #[error("network namespace {inode} is gone")]
    NetnsGone { inode: u32 },
    #[error("cannot enter network namespace {inode}: {source}")]
    Setns {
        inode: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the thread that enters network namespaces: {0}")]
    NetnsWorker(#[source] io::Error),
}

/// Dumps every TCP socket (IPv4 then IPv6, every state) of the caller's network namespace,
/// stamping each row with `netns_inode`. Blocking: from async code, call it on a blocking thread.
///
/// IPv4-mapped IPv6 sockets (a dual-stack listener's accepted IPv4 peers) come back as IPv6
/// addresses `::ffff:a.b.c.d`, as `ss` shows them and as the tracepoint reports them.
pub fn dump_tcp(netns_inode: u32) -> Result<Vec<KernelSocket>, SockDiagError> {
    let mut d = Dumper::new()?;
    let mut out = d.table(netns_inode)?;
    // CLOSE_WAIT sockets again, with tcp_info, matched by cookie. A socket that entered
    // CLOSE_WAIT between the two dumps is not in the first as such and keeps no clock; one that
    // left it keeps the first dump's row.
    let infos = d.close_wait_clocks(netns_inode)?;
    merge_receive_clocks(&mut out, &infos);
    Ok(out)
}

/// A NETLINK_SOCK_DIAG socket and its receive buffer, for the dumps of one namespace.
pub struct Dumper {
    socket: Socket,
    buf: Vec<u8>,
}

impl Dumper {
    pub fn new() -> Result<Dumper, SockDiagError> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(SockDiagError::Open)?;
        socket.bind_auto().map_err(SockDiagError::Open)?;
        set_recv_timeout(&socket, RECV_TIMEOUT).map_err(SockDiagError::Open)?;
        Ok(Dumper {
            socket,
            buf: vec![0u8; RECV_BUF_LEN],
        })
    }

    /// Every TCP socket, both families, every state, no extensions.
    pub fn table(&mut self, netns: u32) -> Result<Vec<KernelSocket>, SockDiagError> {
        let mut out = Vec::new();
        for (seq, family) in [(1, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
            let req = dump_request(family, seq, ALL_STATES, 0);
            dump_family(&self.socket, &req, seq, netns, &mut self.buf, &mut out)?;
        }
        Ok(out)
    }

    /// CLOSE_WAIT sockets only, with `tcp_info`: their receive clocks (`last_recv_ms`).
    pub fn close_wait_clocks(&mut self, netns: u32) -> Result<Vec<KernelSocket>, SockDiagError> {
        let mut out = Vec::new();
        for (seq, family) in [(3, libc::AF_INET as u8), (4, libc::AF_INET6 as u8)] {
            let req = dump_request(family, seq, CLOSE_WAIT_ONLY, 1 << (INET_DIAG_INFO - 1));
            dump_family(&self.socket, &req, seq, netns, &mut self.buf, &mut out)?;
        }
        Ok(out)
    }
}

/// Copies the receive clocks (and the fresher receive queue) of `infos` into the CLOSE_WAIT rows
/// of `out` with the same cookie.
fn merge_receive_clocks(out: &mut [KernelSocket], infos: &[KernelSocket]) {
    if infos.is_empty() {
        return;
    }
    let by_cookie: std::collections::HashMap<u64, &KernelSocket> = infos
        .iter()
        .filter(|k| k.cookie != 0 && k.last_recv_ms.is_some())
        .map(|k| (k.cookie, k))
        .collect();
    for s in out.iter_mut().filter(|s| s.state == TcpState::CloseWait) {
        if let Some(k) = by_cookie.get(&s.cookie) {
            s.last_recv_ms = k.last_recv_ms;
            s.rqueue = k.rqueue;
        }
    }
}

/// A dump of the caller's network namespace, timed by CLOCK_MONOTONIC before it starts.
pub fn snapshot() -> Result<Snapshot, SockDiagError> {
    let netns = std::fs::metadata("/proc/self/ns/net")
        .map_err(SockDiagError::Netns)?
        .ino();
    let taken_ns = crate::clock::monotonic_ns();
    // Namespace inodes come from the proc inode allocator, which hands out u32 values.
    let sockets = dump_tcp(netns as u32)?;
    Ok(Snapshot { taken_ns, sockets })
}

fn dump_family(
    socket: &Socket,
    request: &[u8],
    seq: u32,
    netns: u32,
    buf: &mut [u8],
    out: &mut Vec<KernelSocket>,
) -> Result<(), SockDiagError> {
    loop {
        match socket.send(request, 0) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SockDiagError::Send(e)),
        }
    }
    loop {
        let len = match socket.recv(&mut &mut buf[..], libc::MSG_TRUNC) {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SockDiagError::Recv(e)),
        };
        if len > buf.len() {
            return Err(SockDiagError::Malformed(
                "datagram larger than the receive buffer",
            ));
        }
        if len == 0 {
            return Err(SockDiagError::Malformed("empty datagram before NLMSG_DONE"));
        }
        if parse_datagram(&buf[..len], seq, netns, out)? == Flow::Done {
            return Ok(());
        }
    }
}

fn set_recv_timeout(socket: &Socket, timeout: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    // SAFETY: setsockopt reads `size_of::<timeval>()` bytes from `tv`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A netlink header plus `inet_diag_req_v2` asking for the TCP sockets of `family` in `states`
/// (a bit per state), with the extensions `ext` (a bit per `INET_DIAG_*` attribute, minus one).
fn dump_request(
    family: u8,
    seq: u32,
    states: u32,
    ext: u8,
) -> [u8; NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN] {
    let mut req = [0u8; NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel fills in our port id.
    let body = &mut req[NLMSG_HDRLEN..];
    body[0] = family;
    body[1] = libc::IPPROTO_TCP as u8;
    body[2] = ext;
    // body[3] pad.
    body[4..8].copy_from_slice(&states.to_ne_bytes());
    // The sockid stays zero: a dump ignores it.
    req
}

/// Whether a dump goes on after a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    More,
    Done,
}

/// Parses one datagram of a dump reply, appending its sockets to `out`.
///
/// Messages with another sequence number (a stale reply) are skipped. A header whose length does
/// not fit the datagram stops parsing with an error: nothing after it can be located.
pub fn parse_datagram(
    mut data: &[u8],
    seq: u32,
    netns: u32,
    out: &mut Vec<KernelSocket>,
) -> Result<Flow, SockDiagError> {
    while data.len() >= NLMSG_HDRLEN {
        let msg_len = ne_u32(data, 0) as usize;
        let msg_type = ne_u16(data, 4);
        let msg_seq = ne_u32(data, 8);
        if msg_len < NLMSG_HDRLEN || msg_len > data.len() {
            return Err(SockDiagError::Malformed(
                "netlink message length out of bounds",
            ));
        }
        let payload = &data[NLMSG_HDRLEN..msg_len];
        // NLMSG_ALIGN: messages start on 4-byte boundaries; the last one may omit its padding.
        data = &data[align4(msg_len).min(data.len())..];
        if msg_seq != seq {
            continue;
        }
        match msg_type {
            SOCK_DIAG_BY_FAMILY => {
                if let Some(sock) = parse_inet_diag_msg(payload, netns)? {
                    out.push(sock);
                }
            }
            NLMSG_DONE => {
                // The payload is the dump's final status, negative errno on failure.
                if payload.len() >= 4 {
                    let status = ne_u32(payload, 0) as i32;
                    if status < 0 {
                        // Saturating: a status of i32::MIN (no errno, but a reply could say
                        // it) has no positive counterpart. Found by the sock_diag_datagram
                        // fuzz target.
                        return Err(SockDiagError::Kernel(io::Error::from_raw_os_error(
                            status.saturating_neg(),
                        )));
                    }
                }
                return Ok(Flow::Done);
            }
            NLMSG_ERROR => {
                // `struct nlmsgerr`: errno (negative), then the offending request's header.
                if payload.len() < 4 {
                    return Err(SockDiagError::Malformed(
                        "NLMSG_ERROR shorter than its errno",
                    ));
                }
                let errno = ne_u32(payload, 0) as i32;
                if errno == 0 {
                    // An acknowledgement; a dump does not ask for one, but it ends nothing.
                    continue;
                }
                return Err(SockDiagError::Kernel(io::Error::from_raw_os_error(
                    errno.saturating_neg(),
                )));
            }
            NLMSG_OVERRUN => return Err(SockDiagError::Malformed("NLMSG_OVERRUN")),
            NLMSG_NOOP => {}
            _ => {}
        }
    }
    Ok(Flow::More)
}

/// Decodes one `struct inet_diag_msg` and its attributes. `None` for a row this module cannot
/// represent (unknown family or state), which is skipped rather than failing the whole dump.
fn parse_inet_diag_msg(p: &[u8], netns: u32) -> Result<Option<KernelSocket>, SockDiagError> {
    if p.len() < INET_DIAG_MSG_LEN {
        return Err(SockDiagError::Malformed(
            "inet_diag_msg shorter than 72 bytes",
        ));
    }
    let family = p[0];
    let Some(state) = TcpState::from_u8(p[1]) else {
        return Ok(None);
    };
    let timer = p[2];
    // `struct inet_diag_sockid` at offset 4: sport, dport (network order), src[16], dst[16],
    // if, cookie[2].
    let sport = u16::from_be_bytes([p[4], p[5]]);
    let dport = u16::from_be_bytes([p[6], p[7]]);
    let src = &p[8..24];
    let dst = &p[24..40];
    let (local, remote) = match i32::from(family) {
        libc::AF_INET => (
            SocketAddr::V4(SocketAddrV4::new(ipv4(src), sport)),
            SocketAddr::V4(SocketAddrV4::new(ipv4(dst), dport)),
        ),
        libc::AF_INET6 => (
            SocketAddr::V6(SocketAddrV6::new(ipv6(src), sport, 0, 0)),
            SocketAddr::V6(SocketAddrV6::new(ipv6(dst), dport, 0, 0)),
        ),
        _ => return Ok(None),
    };
    // `sock_diag_save_cookie` stores the low half in cookie[0] and the high half in cookie[1],
    // each in host order (https://github.com/torvalds/linux/blob/v6.1/net/core/sock_diag.c).
    let cookie = u64::from(ne_u32(p, 44)) | (u64::from(ne_u32(p, 48)) << 32);
    let expires = ne_u32(p, 52);
    let rqueue = ne_u32(p, 56);
    let wqueue = ne_u32(p, 60);
    let uid = ne_u32(p, 64);
    let inode = u64::from(ne_u32(p, 68));
    let attrs = Attrs::find(&p[INET_DIAG_MSG_LEN..]);
    Ok(Some(KernelSocket {
        netns,
        state,
        local,
        remote,
        cookie,
        inode,
        uid,
        cgroup_id: attrs.cgroup_id,
        // idiag_timer 0 means no timer; 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window
        // probe. The kernel clamps an overdue timer's expires to 0.
        timer_ms: (timer != 0).then_some(expires),
        rqueue,
        wqueue,
        // Only a CLOSE_WAIT socket's clocks date it (its last segment from the peer was the FIN).
        last_recv_ms: attrs.last_recv_ms.filter(|_| state == TcpState::CloseWait),
    }))
}

/// What the reply attributes tell.
#[derive(Debug, Default, PartialEq, Eq)]
struct Attrs {
    cgroup_id: u64,
    last_recv_ms: Option<u32>,
}

impl Attrs {
    /// Walks the reply attributes (`struct nlattr`, 4-byte aligned) for INET_DIAG_CGROUP_ID and
    /// INET_DIAG_INFO. A `tcp_info` too short for its receive clocks (kernels cut it to what
    /// they know; these fields are older than 2.6) is ignored.
    fn find(mut attrs: &[u8]) -> Attrs {
        let mut out = Attrs::default();
        while attrs.len() >= 4 {
            let len = usize::from(ne_u16(attrs, 0));
            // The top two bits of nla_type are the nested / byte-order flags.
            let kind = ne_u16(attrs, 2) & 0x3fff;
            if len < 4 || len > attrs.len() {
                break;
            }
            let body = &attrs[4..len];
            if kind == INET_DIAG_CGROUP_ID && body.len() >= 8 {
                out.cgroup_id = u64::from_ne_bytes(body[..8].try_into().unwrap_or_default());
            } else if kind == INET_DIAG_INFO && body.len() >= TCPI_LAST_ACK_RECV + 4 {
                let data = ne_u32(body, TCPI_LAST_DATA_RECV);
                let ack = ne_u32(body, TCPI_LAST_ACK_RECV);
                out.last_recv_ms = Some(data.min(ack));
            }
            attrs = &attrs[align4(len).min(attrs.len())..];
        }
        out
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Callers guarantee `at + 2 <= b.len()`.
fn ne_u16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

/// Callers guarantee `at + 4 <= b.len()`.
fn ne_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn ipv4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn ipv6(b: &[u8]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&b[..16]);
    Ipv6Addr::from(octets)
}

#[cfg(test)]
mod tests;
