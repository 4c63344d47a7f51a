//! Decode: kernel records become typed events.
//!
//! This is the only place that knows the byte layout of [`RawEvent`]; everything downstream
//! (lifecycle, aggregates, views) works on [`Event`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use compact_str::CompactString;
use tcptrace_common::event::{
    AF_INET, AF_INET6, FLAG_FROM_BACKUP, FLAG_HAS_COOKIE, FLAG_OWNER_CONTEXT, RAW_EVENT_SIZE,
};
use tcptrace_common::{EventKind, RawEvent, TcpState};

/// How userspace names one socket for its whole life.
///
/// The socket cookie is unique for the life of the kernel; the tp_btf path has it. The classic
/// tracepoint path has only `skaddr`, which the allocator reuses after the socket is freed, so the
/// lifecycle table retires an entry on CLOSE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct SockId {
    pub cookie: u64,
    pub skaddr: u64,
}

impl SockId {
    /// The key the lifecycle table uses: the cookie when there is one, else the address.
    pub fn key(&self) -> u64 {
        if self.cookie != 0 {
            self.cookie
        } else {
            self.skaddr
        }
    }
}

/// The task that was current in the kernel when the event fired.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Task {
    /// Thread group id: the pid users see in `ps`.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// At most 16 bytes from the kernel, so stored inline (no allocation per event).
    pub comm: CompactString,
    pub cgroup_id: u64,
}

/// What happened to the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    /// A state transition from `sock:inet_sock_set_state`.
    Transition { old: TcpState, new: TcpState },
    /// A RST arrived on the socket (`tcp:tcp_receive_reset`).
    ResetReceived,
    /// The socket sent a RST (`tcp:tcp_send_reset`).
    ResetSent,
    /// fentry `tcp_time_wait`: the full socket hands over to a timewait socket in `substate`
    /// (TIME_WAIT, or FIN_WAIT2 for an orphan whose peer has not closed). Its ->CLOSE follows.
    TimeWaitEnter { substate: TcpState },
    /// fentry `inet_twsk_free`: the timewait socket (named by its full socket's cookie) is gone.
    TimeWaitEnd,
}

/// One decoded kernel event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (the kernel's `bpf_ktime_get_ns`).
    pub ts_ns: u64,
    pub sock: SockId,
    /// Inode of the socket's network namespace, 0 when the probe could not read it.
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub what: What,
    /// The current task, always recorded; see `owner_context` before treating it as the owner.
    pub task: Task,
    /// The current task is the socket's own process for this event (a syscall-driven
    /// transition). When false, the task is `swapper` or an unrelated process and must never be
    /// reported as the owner.
    pub owner_context: bool,
    /// Recovered by the backup program after the primary one was skipped by the kernel.
    pub from_backup: bool,
}

impl Event {
    /// The current task, if it is the socket's owner for this event.
    pub fn owner_task(&self) -> Option<&Task> {
        (self.owner_context && self.task.pid != 0).then_some(&self.task)
    }

    pub fn transition(&self) -> Option<(TcpState, TcpState)> {
        match self.what {
            What::Transition { old, new } => Some((old, new)),
            _ => None,
        }
    }

    pub fn is_ipv6(&self) -> bool {
        self.local.is_ipv6()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event record is {0} bytes, expected {RAW_EVENT_SIZE}")]
    Size(usize),
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("unknown TCP state {0}")]
    State(u8),
    #[error("unknown address family {0}")]
    Family(u16),
}

/// Copies the record out of the ring buffer (which gives no alignment guarantee) and decodes it.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() < RAW_EVENT_SIZE {
        return Err(DecodeError::Size(bytes.len()));
    }
    // SAFETY: RawEvent is repr(C), Copy, made of integers and byte arrays, so any bit pattern is
    // a valid value; read_unaligned copies without assuming alignment.
    let raw: RawEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    decode_raw(&raw)
}

pub fn decode_raw(raw: &RawEvent) -> Result<Event, DecodeError> {
    let kind = EventKind::from_u8(raw.kind).ok_or(DecodeError::Kind(raw.kind))?;
    let what = match kind {
        EventKind::StateChange => What::Transition {
            old: TcpState::from_u8(raw.oldstate).ok_or(DecodeError::State(raw.oldstate))?,
            new: TcpState::from_u8(raw.newstate).ok_or(DecodeError::State(raw.newstate))?,
        },
        EventKind::ResetReceived => What::ResetReceived,
        EventKind::ResetSent => What::ResetSent,
        EventKind::TimeWaitEnter => match TcpState::from_u8(raw.newstate) {
            Some(substate @ (TcpState::TimeWait | TcpState::FinWait2)) => {
                What::TimeWaitEnter { substate }
            }
            _ => return Err(DecodeError::State(raw.newstate)),
        },
        EventKind::TimeWaitEnd => What::TimeWaitEnd,
    };
    let (lip, rip) = match raw.family {
        AF_INET => (
            IpAddr::V4(Ipv4Addr::new(
                raw.saddr[0],
                raw.saddr[1],
                raw.saddr[2],
                raw.saddr[3],
            )),
            IpAddr::V4(Ipv4Addr::new(
                raw.daddr[0],
                raw.daddr[1],
                raw.daddr[2],
                raw.daddr[3],
            )),
        ),
        AF_INET6 => (
            IpAddr::V6(Ipv6Addr::from(raw.saddr)),
            IpAddr::V6(Ipv6Addr::from(raw.daddr)),
        ),
        f => return Err(DecodeError::Family(f)),
    };
    let comm_len = raw
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(raw.comm.len());
    Ok(Event {
        ts_ns: raw.ts_ns,
        sock: SockId {
            cookie: if raw.flags & FLAG_HAS_COOKIE != 0 {
                raw.cookie
            } else {
                0
            },
            skaddr: raw.skaddr,
        },
        netns: raw.netns,
        local: SocketAddr::new(lip, raw.sport),
        remote: SocketAddr::new(rip, raw.dport),
        what,
        task: Task {
            pid: raw.pid,
            tid: raw.tid,
            comm: CompactString::from_utf8_lossy(&raw.comm[..comm_len]),
            cgroup_id: raw.cgroup_id,
        },
        owner_context: raw.flags & FLAG_OWNER_CONTEXT != 0,
        from_backup: raw.flags & FLAG_FROM_BACKUP != 0,
    })
}

/// Encodes an event back into its kernel layout: used by tests, fixtures and benchmarks.
pub fn encode(ev: &Event) -> RawEvent {
    let mut raw = RawEvent::zeroed();
    raw.ts_ns = ev.ts_ns;
    raw.cookie = ev.sock.cookie;
    raw.skaddr = ev.sock.skaddr;
    raw.cgroup_id = ev.task.cgroup_id;
    let put = |dst: &mut [u8; 16], ip: IpAddr| match ip {
        IpAddr::V4(a) => dst[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => *dst = a.octets(),
    };
    put(&mut raw.saddr, ev.local.ip());
    put(&mut raw.daddr, ev.remote.ip());
    let comm = ev.task.comm.as_bytes();
    let n = comm.len().min(15);
    raw.comm[..n].copy_from_slice(&comm[..n]);
    raw.pid = ev.task.pid;
    raw.tid = ev.task.tid;
    raw.netns = ev.netns;
    raw.sport = ev.local.port();
    raw.dport = ev.remote.port();
    raw.family = if ev.local.is_ipv6() {
        AF_INET6
    } else {
        AF_INET
    };
    match ev.what {
        What::Transition { old, new } => {
            raw.kind = EventKind::StateChange as u8;
            raw.oldstate = old as u8;
            raw.newstate = new as u8;
        }
        What::ResetReceived => raw.kind = EventKind::ResetReceived as u8,
        What::ResetSent => raw.kind = EventKind::ResetSent as u8,
        What::TimeWaitEnter { substate } => {
            raw.kind = EventKind::TimeWaitEnter as u8;
            raw.newstate = substate as u8;
        }
        What::TimeWaitEnd => raw.kind = EventKind::TimeWaitEnd as u8,
    }
    raw.flags = if ev.owner_context {
        FLAG_OWNER_CONTEXT
    } else {
        0
    } | if ev.from_backup { FLAG_FROM_BACKUP } else { 0 }
        | if ev.sock.cookie != 0 {
            FLAG_HAS_COOKIE
        } else {
            0
        };
    raw
}

/// The bytes of a raw record, as the ring buffer carries them.
pub fn raw_bytes(raw: &RawEvent) -> &[u8] {
    // SAFETY: RawEvent is repr(C) with no implicit padding (asserted in tcptrace-common).
    unsafe { std::slice::from_raw_parts((raw as *const RawEvent).cast(), RAW_EVENT_SIZE) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(v6: bool) -> Event {
        let (l, r): (IpAddr, IpAddr) = if v6 {
            ("::1".parse().unwrap(), "fe80::1".parse().unwrap())
        } else {
            ("127.0.0.1".parse().unwrap(), "10.1.2.3".parse().unwrap())
        };
        Event {
            ts_ns: 123_456_789,
            sock: SockId {
                cookie: 42,
                skaddr: 0xffff_8880_1234_5678,
            },
            netns: 4026531840,
            local: SocketAddr::new(l, 40000),
            remote: SocketAddr::new(r, 8080),
            what: What::Transition {
                old: TcpState::Established,
                new: TcpState::FinWait1,
            },
            task: Task {
                pid: 100,
                tid: 101,
                comm: "curl".into(),
                cgroup_id: 7,
            },
            owner_context: true,
            from_backup: false,
        }
    }

    #[test]
    fn decode_round_trips_ipv4_and_ipv6() {
        for v6 in [false, true] {
            let ev = sample(v6);
            let raw = encode(&ev);
            assert_eq!(decode(raw_bytes(&raw)).unwrap(), ev);
        }
    }

    #[test]
    fn decode_rejects_short_and_unknown_records() {
        let raw = encode(&sample(false));
        assert_eq!(decode(&raw_bytes(&raw)[..50]), Err(DecodeError::Size(50)));
        let mut bad = raw;
        bad.kind = 9;
        assert_eq!(decode(raw_bytes(&bad)), Err(DecodeError::Kind(9)));
        let mut bad = raw;
        bad.newstate = 13;
        assert_eq!(decode(raw_bytes(&bad)), Err(DecodeError::State(13)));
        let mut bad = raw;
        bad.family = 1;
        assert_eq!(decode(raw_bytes(&bad)), Err(DecodeError::Family(1)));
    }

    #[test]
    fn timewait_hook_events_round_trip_and_check_the_substate() {
        for what in [
            What::TimeWaitEnter {
                substate: TcpState::TimeWait,
            },
            What::TimeWaitEnter {
                substate: TcpState::FinWait2,
            },
            What::TimeWaitEnd,
        ] {
            let mut ev = sample(false);
            ev.what = what;
            ev.owner_context = false;
            let raw = encode(&ev);
            assert_eq!(raw.kind, if what == What::TimeWaitEnd { 5 } else { 4 });
            assert_eq!(decode(raw_bytes(&raw)).unwrap(), ev);
        }
        // The kernel's `state` argument is only ever TIME_WAIT or FIN_WAIT2.
        let mut raw = encode(&sample(false));
        raw.kind = EventKind::TimeWaitEnter as u8;
        raw.newstate = TcpState::Established as u8;
        assert_eq!(decode(raw_bytes(&raw)), Err(DecodeError::State(1)));
    }

    #[test]
    fn cookie_is_ignored_without_its_flag() {
        let mut raw = encode(&sample(false));
        raw.flags &= !FLAG_HAS_COOKIE;
        let ev = decode(raw_bytes(&raw)).unwrap();
        assert_eq!(ev.sock.cookie, 0);
        assert_eq!(ev.sock.key(), 0xffff_8880_1234_5678);
    }

    #[test]
    fn swapper_is_never_an_owner() {
        let mut ev = sample(false);
        ev.task.pid = 0;
        assert!(ev.owner_task().is_none());
        ev.task.pid = 5;
        ev.owner_context = false;
        assert!(ev.owner_task().is_none());
    }
}
