//! The kernel's TCP socket table through NETLINK_SOCK_DIAG (inet_diag): what `ss -tan` reads.
//!
//! One `SOCK_DIAG_BY_FAMILY` dump per address family, every state, no extensions. The request and
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
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(SockDiagError::Open)?;
    socket.bind_auto().map_err(SockDiagError::Open)?;
    set_recv_timeout(&socket, RECV_TIMEOUT).map_err(SockDiagError::Open)?;
    let mut buf = vec![0u8; RECV_BUF_LEN];
    let mut out = Vec::new();
    for (seq, family) in [(1, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        dump_family(&socket, family, seq, netns_inode, &mut buf, &mut out)?;
    }
    Ok(out)
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
    family: u8,
    seq: u32,
    netns: u32,
    buf: &mut [u8],
    out: &mut Vec<KernelSocket>,
) -> Result<(), SockDiagError> {
    let request = dump_request(family, seq);
    loop {
        match socket.send(&request, 0) {
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

/// A netlink header plus `inet_diag_req_v2` asking for every TCP socket of `family`.
fn dump_request(family: u8, seq: u32) -> [u8; NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN] {
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
    // body[2] idiag_ext = 0: no extensions; body[3] pad.
    body[4..8].copy_from_slice(&ALL_STATES.to_ne_bytes());
    // The sockid stays zero: a dump ignores it.
    req
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    More,
    Done,
}

/// Parses one datagram of a dump reply, appending its sockets to `out`.
///
/// Messages with another sequence number (a stale reply) are skipped. A header whose length does
/// not fit the datagram stops parsing with an error: nothing after it can be located.
fn parse_datagram(
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
                        return Err(SockDiagError::Kernel(io::Error::from_raw_os_error(-status)));
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
    Ok(Some(KernelSocket {
        netns,
        state,
        local,
        remote,
        cookie,
        inode,
        uid,
        cgroup_id: find_cgroup_id(&p[INET_DIAG_MSG_LEN..]),
        // idiag_timer 0 means no timer; 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window
        // probe. The kernel clamps an overdue timer's expires to 0.
        timer_ms: (timer != 0).then_some(expires),
        rqueue,
        wqueue,
    }))
}

/// Walks the reply attributes (`struct nlattr`, 4-byte aligned) for INET_DIAG_CGROUP_ID.
fn find_cgroup_id(mut attrs: &[u8]) -> u64 {
    while attrs.len() >= 4 {
        let len = usize::from(ne_u16(attrs, 0));
        // The top two bits of nla_type are the nested / byte-order flags.
        let kind = ne_u16(attrs, 2) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return 0;
        }
        if kind == INET_DIAG_CGROUP_ID && len >= 12 {
            return u64::from_ne_bytes(attrs[4..12].try_into().unwrap_or_default());
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    0
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
mod tests {
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::net::{IpAddr, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    use super::*;

    // ---- parsing, no kernel ----

    struct Row {
        family: u8,
        state: u8,
        timer: u8,
        cookie: [u32; 2],
        expires: u32,
        inode: u32,
        attrs: Vec<u8>,
    }

    impl Row {
        fn v4(state: TcpState) -> Row {
            Row {
                family: 2,
                state: state as u8,
                timer: 0,
                cookie: [7, 0],
                expires: 0,
                inode: 99,
                attrs: vec![],
            }
        }

        fn bytes(&self) -> Vec<u8> {
            let mut p = vec![0u8; INET_DIAG_MSG_LEN];
            p[0] = self.family;
            p[1] = self.state;
            p[2] = self.timer;
            p[4..6].copy_from_slice(&8080u16.to_be_bytes());
            p[6..8].copy_from_slice(&40000u16.to_be_bytes());
            p[8..12].copy_from_slice(&[127, 0, 0, 1]);
            p[24..28].copy_from_slice(&[10, 1, 2, 3]);
            p[44..48].copy_from_slice(&self.cookie[0].to_ne_bytes());
            p[48..52].copy_from_slice(&self.cookie[1].to_ne_bytes());
            p[52..56].copy_from_slice(&self.expires.to_ne_bytes());
            p[56..60].copy_from_slice(&3u32.to_ne_bytes());
            p[60..64].copy_from_slice(&4u32.to_ne_bytes());
            p[64..68].copy_from_slice(&1000u32.to_ne_bytes());
            p[68..72].copy_from_slice(&self.inode.to_ne_bytes());
            p.extend_from_slice(&self.attrs);
            p
        }
    }

    fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn nlattr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn parse(data: &[u8]) -> (Result<Flow, SockDiagError>, Vec<KernelSocket>) {
        let mut out = Vec::new();
        let flow = parse_datagram(data, 1, 42, &mut out);
        (flow, out)
    }

    #[test]
    fn cookie_joins_low_half_first() {
        let mut row = Row::v4(TcpState::Established);
        row.cookie = [0x1122_3344, 0x5566_7788];
        let (flow, out) = parse(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &row.bytes()));
        assert_eq!(flow.unwrap(), Flow::More);
        assert_eq!(out[0].cookie, 0x5566_7788_1122_3344);
    }

    #[test]
    fn row_fields_decode_with_network_order_ports() {
        let mut row = Row::v4(TcpState::CloseWait);
        row.timer = 2;
        row.expires = 7200;
        row.attrs = [
            nlattr(8, &[0]),
            nlattr(INET_DIAG_CGROUP_ID, &0xabcdu64.to_ne_bytes()),
        ]
        .concat();
        let (_, out) = parse(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &row.bytes()));
        let s = &out[0];
        assert_eq!(s.netns, 42);
        assert_eq!(s.state, TcpState::CloseWait);
        assert_eq!(s.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.remote, "10.1.2.3:40000".parse().unwrap());
        assert_eq!((s.rqueue, s.wqueue, s.uid, s.inode), (3, 4, 1000, 99));
        assert_eq!(s.timer_ms, Some(7200));
        assert_eq!(s.cgroup_id, 0xabcd);
    }

    #[test]
    fn timewait_row_keeps_its_expiry_and_unarmed_timer_is_none() {
        let mut tw = Row::v4(TcpState::TimeWait);
        tw.timer = 3;
        tw.expires = 59_000;
        tw.inode = 0;
        let idle = Row::v4(TcpState::Established);
        let data = [
            nlmsg(SOCK_DIAG_BY_FAMILY, 1, &tw.bytes()),
            nlmsg(SOCK_DIAG_BY_FAMILY, 1, &idle.bytes()),
        ]
        .concat();
        let (_, out) = parse(&data);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].state, out[0].timer_ms, out[0].inode),
            (TcpState::TimeWait, Some(59_000), 0)
        );
        assert_eq!(out[1].timer_ms, None);
    }

    #[test]
    fn done_ends_the_dump_and_other_sequences_are_skipped() {
        let data = [
            nlmsg(SOCK_DIAG_BY_FAMILY, 9, &Row::v4(TcpState::Listen).bytes()),
            nlmsg(SOCK_DIAG_BY_FAMILY, 1, &Row::v4(TcpState::Listen).bytes()),
            nlmsg(NLMSG_DONE, 1, &0i32.to_ne_bytes()),
            nlmsg(SOCK_DIAG_BY_FAMILY, 1, &Row::v4(TcpState::Listen).bytes()),
        ]
        .concat();
        let (flow, out) = parse(&data);
        assert_eq!(flow.unwrap(), Flow::Done);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn kernel_errors_surface_with_their_errno() {
        let mut err = (-libc::EPERM).to_ne_bytes().to_vec();
        err.extend_from_slice(&[0u8; 16]);
        let (flow, _) = parse(&nlmsg(NLMSG_ERROR, 1, &err));
        match flow {
            Err(SockDiagError::Kernel(e)) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
            other => panic!("expected a kernel error, got {other:?}"),
        }
        let (flow, _) = parse(&nlmsg(NLMSG_DONE, 1, &(-libc::EINTR).to_ne_bytes()));
        match flow {
            Err(SockDiagError::Kernel(e)) => assert_eq!(e.raw_os_error(), Some(libc::EINTR)),
            other => panic!("expected a kernel error, got {other:?}"),
        }
    }

    #[test]
    fn unknown_family_or_state_is_skipped_not_fatal() {
        let mut bad_family = Row::v4(TcpState::Listen);
        bad_family.family = 1;
        let mut bad_state = Row::v4(TcpState::Listen);
        bad_state.state = 13;
        let data = [
            nlmsg(SOCK_DIAG_BY_FAMILY, 1, &bad_family.bytes()),
            nlmsg(SOCK_DIAG_BY_FAMILY, 1, &bad_state.bytes()),
            nlmsg(SOCK_DIAG_BY_FAMILY, 1, &Row::v4(TcpState::Listen).bytes()),
        ]
        .concat();
        let (flow, out) = parse(&data);
        assert!(flow.is_ok());
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn lengths_that_overrun_the_datagram_are_errors() {
        let mut data = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &Row::v4(TcpState::Listen).bytes());
        data[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(parse(&data).0, Err(SockDiagError::Malformed(_))));
        data[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(parse(&data).0, Err(SockDiagError::Malformed(_))));
        // A row cut short inside a well-formed message.
        let short = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            1,
            &Row::v4(TcpState::Listen).bytes()[..40],
        );
        assert!(matches!(parse(&short).0, Err(SockDiagError::Malformed(_))));
    }

    #[test]
    fn malformed_replies_never_panic() {
        let mut row = Row::v4(TcpState::Established);
        row.attrs = nlattr(INET_DIAG_CGROUP_ID, &5u64.to_ne_bytes());
        let good = [
            nlmsg(SOCK_DIAG_BY_FAMILY, 1, &row.bytes()),
            nlmsg(NLMSG_DONE, 1, &0i32.to_ne_bytes()),
        ]
        .concat();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..20_000 {
            let mut data = good.clone();
            let cut = (next() as usize) % (data.len() + 1);
            data.truncate(cut);
            for _ in 0..(next() % 4) {
                if data.is_empty() {
                    break;
                }
                let at = (next() as usize) % data.len();
                data[at] = next() as u8;
            }
            let _ = parse(&data);
        }
    }

    // ---- the live kernel ----

    fn netns() -> u32 {
        std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32
    }

    fn inode_of(fd: &impl AsRawFd) -> u64 {
        // SAFETY: fstat writes into the zeroed struct we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
        st.st_ino
    }

    fn so_cookie(fd: &impl AsRawFd) -> u64 {
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "SO_COOKIE: {}", io::Error::last_os_error());
        cookie
    }

    fn connected(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    /// Rows whose local or remote address is `addr`.
    fn rows_touching(addr: SocketAddr) -> Vec<KernelSocket> {
        dump_tcp(netns())
            .unwrap()
            .into_iter()
            .filter(|s| s.local == addr || s.remote == addr)
            .collect()
    }

    fn find(rows: &[KernelSocket], local: SocketAddr, remote: SocketAddr) -> Option<&KernelSocket> {
        rows.iter().find(|s| s.local == local && s.remote == remote)
    }

    /// Polls the dump until `local -> remote` is in `state`: loopback FIN processing runs in
    /// softirq right after the write, but give it time on a loaded machine.
    fn wait_for(local: SocketAddr, remote: SocketAddr, state: TcpState) -> KernelSocket {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let rows = rows_touching(local);
            if let Some(s) = find(&rows, local, remote).filter(|s| s.state == state) {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{local} -> {remote} never reached {state:?}: {rows:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn ss_state_name(state: TcpState) -> &'static str {
        match state {
            TcpState::Established => "established",
            TcpState::SynSent => "syn-sent",
            TcpState::SynRecv | TcpState::NewSynRecv => "syn-recv",
            TcpState::FinWait1 => "fin-wait-1",
            TcpState::FinWait2 => "fin-wait-2",
            TcpState::TimeWait => "time-wait",
            TcpState::Close => "closed",
            TcpState::CloseWait => "close-wait",
            TcpState::LastAck => "last-ack",
            TcpState::Listen => "listening",
            TcpState::Closing => "closing",
        }
    }

    fn ss_count(state: TcpState, port: u16) -> usize {
        let out = std::process::Command::new("ss")
            .args([
                "-tanH",
                "state",
                ss_state_name(state),
                "sport",
                "=",
                &format!(":{port}"),
            ])
            .output()
            .expect("ss runs");
        assert!(
            out.status.success(),
            "ss failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }

    /// Our per-state counts for local port `port` equal `ss`'s. Other tests on this machine may
    /// open sockets on the same ephemeral ports between the two reads, so retry a few times.
    fn assert_counts_match_ss(port: u16) {
        let mut last = String::new();
        for _ in 0..5 {
            let mut ours: HashMap<TcpState, usize> = HashMap::new();
            for s in dump_tcp(netns())
                .unwrap()
                .iter()
                .filter(|s| s.local.port() == port)
            {
                *ours.entry(s.state).or_default() += 1;
            }
            let mismatch: Vec<_> = TcpState::ALL
                .into_iter()
                .filter(|&st| st != TcpState::NewSynRecv && st != TcpState::SynRecv)
                .map(|st| (st, ours.get(&st).copied().unwrap_or(0), ss_count(st, port)))
                .filter(|(_, a, b)| a != b)
                .collect();
            if mismatch.is_empty() {
                return;
            }
            last = format!("{mismatch:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("port {port}: (state, ours, ss) differ: {last}");
    }

    fn every_state_is_seen(ip: IpAddr) {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
        let lport = listener.local_addr().unwrap();
        let unspecified: SocketAddr = match ip {
            IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
            IpAddr::V6(_) => "[::]:0".parse().unwrap(),
        };

        // ESTABLISHED, both ends.
        let (est_client, est_server) = connected(&listener);
        let ec = est_client.local_addr().unwrap();

        // CLOSE_WAIT: the peer (server side) closed, we (client) did not. The orphaned closer
        // sits in FIN_WAIT2 as a timewait socket.
        let (cw_client, cw_server) = connected(&listener);
        let cw = cw_client.local_addr().unwrap();
        let cw_server_cookie = so_cookie(&cw_server);
        drop(cw_server);

        // TIME_WAIT: the active closer (client) closes first, then the peer.
        let (tw_client, mut tw_server) = connected(&listener);
        let tw = tw_client.local_addr().unwrap();
        let tw_cookie = so_cookie(&tw_client);
        drop(tw_client);
        let mut sink = [0u8; 1];
        assert_eq!(
            tw_server.read(&mut sink).unwrap(),
            0,
            "server sees the client's FIN"
        );
        drop(tw_server);

        let listen_row = wait_for(lport, unspecified, TcpState::Listen);
        assert_eq!(listen_row.inode, inode_of(&listener));
        assert_eq!(listen_row.cookie, so_cookie(&listener));
        assert_eq!(listen_row.uid, unsafe { libc::geteuid() });
        assert_eq!(listen_row.netns, netns());
        // The socket's cgroup is the one its creator (this process) runs in.
        assert_eq!(
            Some(listen_row.cgroup_id),
            crate::owner::cgroup::cgroup_id_of_pid(std::process::id())
        );

        let row = wait_for(ec, lport, TcpState::Established);
        assert_eq!(row.inode, inode_of(&est_client));
        assert_eq!(row.cookie, so_cookie(&est_client));
        let row = wait_for(lport, ec, TcpState::Established);
        assert_eq!(row.inode, inode_of(&est_server));
        assert_eq!(row.cookie, so_cookie(&est_server));

        let row = wait_for(cw, lport, TcpState::CloseWait);
        assert_eq!(row.cookie, so_cookie(&cw_client));
        let row = wait_for(lport, cw, TcpState::FinWait2);
        assert_eq!(row.inode, 0, "an orphaned FIN_WAIT2 has no file");
        assert_eq!(row.cookie, cw_server_cookie);

        let row = wait_for(tw, lport, TcpState::TimeWait);
        assert_eq!((row.inode, row.uid), (0, 0));
        let left = row.timer_ms.expect("TIME_WAIT has its timer armed");
        assert!(
            (50_000..=60_000).contains(&left),
            "TIME_WAIT timer {left} ms"
        );
        // The timewait socket carries the full socket's cookie (`inet_twsk_alloc`), so it joins
        // the events the probe saw for that socket.
        assert_eq!(row.cookie, tw_cookie);

        // Data queued and unread shows up in the receive queue.
        let mut est_client = est_client;
        est_client.write_all(b"hello").unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while find(&rows_touching(ec), lport, ec).map(|s| s.rqueue) != Some(5) {
            assert!(Instant::now() < deadline, "rqueue never reached 5");
            std::thread::sleep(Duration::from_millis(10));
        }

        assert_counts_match_ss(lport.port());
        for client in [ec, cw, tw] {
            assert_counts_match_ss(client.port());
        }
        drop((listener, est_server, cw_client));
    }

    #[test]
    fn dump_shows_loopback_sockets_in_every_state_ipv4() {
        every_state_is_seen("127.0.0.1".parse().unwrap());
    }

    #[test]
    fn dump_shows_loopback_sockets_in_every_state_ipv6() {
        every_state_is_seen("::1".parse().unwrap());
    }

    #[test]
    fn snapshot_is_stamped_before_the_dump() {
        let before = crate::clock::monotonic_ns();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let snap = snapshot().unwrap();
        let after = crate::clock::monotonic_ns();
        assert!(before <= snap.taken_ns && snap.taken_ns <= after);
        let port = listener.local_addr().unwrap().port();
        assert!(
            snap.sockets
                .iter()
                .any(|s| s.local.port() == port && s.state == TcpState::Listen)
        );
        assert!(snap.sockets.iter().all(|s| s.netns == netns()));
    }

    /// Leaves ~20k TIME_WAIT sockets on the host for a minute, so it runs only when asked:
    /// `cargo test -p tcptrace --release -- --ignored --nocapture dump_of_20k`.
    #[test]
    #[ignore]
    fn dump_of_20k_timewait_sockets_is_fast_and_complete() {
        // The server closes first so the TIME_WAIT sockets hold the listeners' ports, not 20k
        // ephemeral ports other tests on this machine need. Connect picks client ports with
        // random strides per destination and wraps after a few thousand; a SYN from a reused
        // port kills the server's TIME_WAIT socket for that 4-tuple (`TCP_TW_SYN` in
        // https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_minisocks.c), so spread the
        // connections over several listeners.
        const LISTENERS: usize = 10;
        const PER_LISTENER: usize = 2_000;
        let listeners: Vec<TcpListener> = (0..LISTENERS)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let start = Instant::now();
        for listener in &listeners {
            for _ in 0..PER_LISTENER {
                let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                let (server, _) = listener.accept().unwrap();
                drop(server);
                drop(client);
            }
        }
        let n = LISTENERS * PER_LISTENER;
        eprintln!("{n} connections in {:?}", start.elapsed());

        let mut times = Vec::new();
        let mut rows = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            rows = dump_tcp(netns()).unwrap();
            times.push(t.elapsed());
        }
        times.sort();
        let tw = |port: u16| {
            rows.iter()
                .filter(|s| s.local.port() == port && s.state == TcpState::TimeWait)
                .count()
        };
        let total: usize = ports.iter().map(|&p| tw(p)).sum();
        eprintln!(
            "dump of {} sockets ({total} TIME_WAIT on our listeners): min {:?} median {:?}",
            rows.len(),
            times[0],
            times[2]
        );
        assert!(
            total >= n * 99 / 100,
            "only {total} of {n} TIME_WAIT sockets in the dump"
        );
        for &port in &ports[..3] {
            assert_eq!(tw(port), ss_count(TcpState::TimeWait, port), "port {port}");
        }
        assert!(
            times[0] < Duration::from_millis(500),
            "dump took {:?}",
            times[0]
        );
    }
}
