//! Decode: kernel records become typed events.
//!
//! This is the only place that knows the byte layout of [`RawEvent`]; everything downstream
//! (lifecycle, aggregates, views) works on [`Event`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use compact_str::CompactString;
use tcptrace_common::event::{
    AF_INET, AF_INET6, FLAG_FROM_BACKUP, FLAG_HAS_COOKIE, FLAG_NO_LOCAL_PORT, FLAG_NO_TIMEWAIT,
    FLAG_OWNER_CONTEXT, FLAG_TW_FIN_WAIT2, FLAG_TW_SUBSTATE, RAW_EVENT_SIZE, STATE_SLOTS,
    SUMMARY_BORN_UNSEEN, SUMMARY_CLOSER, SUMMARY_HAS_COOKIE, SUMMARY_NO_LOCAL_PORT,
    SUMMARY_NO_TIMEWAIT, SUMMARY_OWNER, SUMMARY_OWNER_CONTEXT, SUMMARY_PASSIVE, SUMMARY_REPAIRED,
    SUMMARY_RESET, SUMMARY_SIZE, SUMMARY_TW_FIN_WAIT2, SUMMARY_TW_HOOKED, SUMMARY_TW_SUBSTATE,
    SockSummary,
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
    /// A record's identity: its cookie only when the record says it has one.
    fn of(cookie: u64, has_cookie: bool, skaddr: u64) -> SockId {
        SockId {
            cookie: if has_cookie { cookie } else { 0 },
            skaddr,
        }
    }

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
    /// Summary mode: the socket made `old -> new` (into CLOSE_WAIT, or CLOSE), and these are its
    /// stays since its last record. The event's task is the socket's owner, seen at its last
    /// syscall-driven transition (`owner_context` says whether there was one).
    Summary {
        old: TcpState,
        new: TcpState,
        stays: Stays,
    },
}

/// What a socket did between two summary records: how long it stayed in each state it left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stays {
    /// Nanoseconds per state (index: state number).
    pub dwell_ns: [u64; STATE_SLOTS],
    /// Bit per state left since the last record.
    pub visited: u16,
    /// Of those, the ones whose time is exact.
    pub known: u16,
    /// When the socket was born (connect, or accepted), when it was seen.
    pub born_ns: Option<u64>,
    /// The owner closed the socket in a syscall: TIME_WAIT, if any, is its.
    pub closer: bool,
    /// A RST arrived before the close.
    pub reset: bool,
    /// A skipped transition was repaired: some stays have no exact time.
    pub repaired: bool,
    /// Accepted from a listener (inbound).
    pub passive: bool,
    /// `sk_err` at the close (why a connect failed), 0 when none.
    pub err: u16,
    /// The substate of the timewait socket `tcp_time_wait` made at this close (TIME_WAIT or
    /// FIN_WAIT2), where its fentry hook runs; `None` leaves userspace to infer it.
    pub timewait: Option<TcpState>,
}

impl Stays {
    /// The states left, in state-number order, with their time when it is exact.
    pub fn left(&self) -> impl Iterator<Item = (TcpState, Option<u64>)> + '_ {
        TcpState::ALL.iter().filter_map(move |&s| {
            let bit = 1u16 << (s as u16 & 0xf);
            (self.visited & bit != 0).then(|| {
                let exact = self.known & bit != 0;
                (s, exact.then(|| self.dwell_ns[s as usize % STATE_SLOTS]))
            })
        })
    }

    pub fn visited(&self, s: TcpState) -> bool {
        self.visited & (1u16 << (s as u16 & 0xf)) != 0
    }

    /// The exact time spent in `s`, if it was left since the last record and timed.
    pub fn dwell(&self, s: TcpState) -> Option<u64> {
        let bit = 1u16 << (s as u16 & 0xf);
        (self.known & bit != 0).then(|| self.dwell_ns[s as usize % STATE_SLOTS])
    }
}

/// How a connect ended that went SYN_SENT -> CLOSE, as the kernel saw it at that transition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectEnd {
    /// `sk_err` (ECONNREFUSED after a RST to the SYN, ETIMEDOUT, EHOSTUNREACH, ...), 0 when none
    /// or not read.
    pub err: u16,
    /// The socket never had a local port: `connect()` could not pick one (EADDRNOTAVAIL).
    /// False also where the kernel offsets do not name `inet_sport`.
    pub no_local_port: bool,
    /// The transition ran in the connecting process's own `connect()` (summary records say so;
    /// for events, the event's task is compared with the socket's owner).
    pub in_caller: Option<bool>,
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
    /// SYN_SENT -> CLOSE only: why the connect ended.
    pub connect_end: Option<ConnectEnd>,
    /// FIN_WAIT2 / CLOSING -> CLOSE only: what the kernel left behind, read at the close.
    /// `Some(Close)`: no timewait socket (none in the socket's chain of the established hash:
    /// the kernel's TIME_WAIT table was full, or the connection was aborted). Else, from
    /// FIN_WAIT2, the substate of the timewait socket it made, from `SOCK_DONE` in `sk_flags`
    /// (the peer's FIN had arrived: TIME_WAIT; else FIN_WAIT2). `None` when not read. Unlike a
    /// summary's `Stays::timewait` (the fentry hook), it promises no exact end.
    pub timewait_read: Option<TcpState>,
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

    /// The transition an event reports, a summary's included.
    pub fn states(&self) -> Option<(TcpState, TcpState)> {
        match self.what {
            What::Transition { old, new } | What::Summary { old, new, .. } => Some((old, new)),
            _ => None,
        }
    }

    pub fn is_ipv6(&self) -> bool {
        self.local.is_ipv6()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error(
        "event record is {0} bytes, expected {RAW_EVENT_SIZE} (an event) or {SUMMARY_SIZE} (a summary)"
    )]
    Size(usize),
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("unknown TCP state {0}")]
    State(u8),
    #[error("unknown address family {0}")]
    Family(u16),
}

/// Copies the record out of the ring buffer (which gives no alignment guarantee) and decodes it;
/// its length says which record it is.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    match bytes.len() {
        RAW_EVENT_SIZE => {
            // SAFETY: RawEvent is repr(C), Copy, made of integers and byte arrays, so any bit
            // pattern is a valid value; read_unaligned copies without assuming alignment.
            let raw: RawEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            decode_raw(&raw)
        }
        SUMMARY_SIZE => {
            // SAFETY: as above; SockSummary is repr(C) integers and byte arrays.
            let raw: SockSummary = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            decode_summary(&raw)
        }
        n => Err(DecodeError::Size(n)),
    }
}

fn addresses(
    family: u16,
    saddr: &[u8; 16],
    daddr: &[u8; 16],
) -> Result<(IpAddr, IpAddr), DecodeError> {
    let v4 = |a: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
    match family {
        AF_INET => Ok((v4(saddr), v4(daddr))),
        AF_INET6 => Ok((
            IpAddr::V6(Ipv6Addr::from(*saddr)),
            IpAddr::V6(Ipv6Addr::from(*daddr)),
        )),
        f => Err(DecodeError::Family(f)),
    }
}

/// The kernel fills the command only for transitions in the owner's context (3 of a
/// connection's 10), so most records carry none: that case costs no UTF-8 check. A valid name
/// (the usual case) is checked once, not once more by the lossy conversion.
fn comm_of(comm: &[u8; 16]) -> CompactString {
    if comm[0] == 0 {
        return CompactString::const_new("");
    }
    let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    match std::str::from_utf8(&comm[..len]) {
        Ok(s) => CompactString::new(s),
        Err(_) => CompactString::from_utf8_lossy(&comm[..len]),
    }
}

pub fn decode_summary(raw: &SockSummary) -> Result<Event, DecodeError> {
    let state = |v: u8| TcpState::from_u8(v).ok_or(DecodeError::State(v));
    let (old, new) = (state(raw.oldstate)?, state(raw.newstate)?);
    let (lip, rip) = addresses(raw.family, &raw.saddr, &raw.daddr)?;
    let f = raw.flags;
    // The timewait substate, where the hook or `SOCK_DONE` in `sk_flags` told it.
    let substate = if f & SUMMARY_TW_FIN_WAIT2 != 0 {
        TcpState::FinWait2
    } else {
        TcpState::TimeWait
    };
    Ok(Event {
        ts_ns: raw.ts_ns,
        sock: SockId::of(raw.cookie, f & SUMMARY_HAS_COOKIE != 0, raw.skaddr),
        netns: raw.netns,
        local: SocketAddr::new(lip, raw.sport),
        remote: SocketAddr::new(rip, raw.dport),
        what: What::Summary {
            old,
            new,
            stays: Stays {
                dwell_ns: raw.dwell_ns,
                visited: raw.visited,
                known: raw.known,
                born_ns: (f & SUMMARY_BORN_UNSEEN == 0 && raw.born_ns != 0).then_some(raw.born_ns),
                closer: f & SUMMARY_CLOSER != 0,
                reset: f & SUMMARY_RESET != 0,
                repaired: f & SUMMARY_REPAIRED != 0,
                passive: f & SUMMARY_PASSIVE != 0,
                err: raw.err,
                timewait: (f & SUMMARY_TW_HOOKED != 0).then_some(substate),
            },
        },
        task: Task {
            pid: raw.pid,
            tid: raw.pid,
            comm: comm_of(&raw.comm),
            cgroup_id: raw.cgroup_id,
        },
        owner_context: f & SUMMARY_OWNER != 0,
        from_backup: false,
        connect_end: (old == TcpState::SynSent && new == TcpState::Close).then_some(ConnectEnd {
            err: raw.err,
            no_local_port: f & SUMMARY_NO_LOCAL_PORT != 0,
            in_caller: Some(f & SUMMARY_OWNER_CONTEXT != 0),
        }),
        timewait_read: if f & SUMMARY_NO_TIMEWAIT != 0 {
            Some(TcpState::Close)
        } else {
            (f & SUMMARY_TW_SUBSTATE != 0).then_some(substate)
        },
    })
}

/// Encodes a summary event back into its kernel layout (tests, recordings).
pub fn encode_summary(ev: &Event) -> Option<SockSummary> {
    let What::Summary { old, new, stays } = ev.what else {
        return None;
    };
    let mut r = SockSummary {
        ts_ns: ev.ts_ns,
        born_ns: stays.born_ns.unwrap_or(0),
        cookie: ev.sock.cookie,
        skaddr: ev.sock.skaddr,
        cgroup_id: ev.task.cgroup_id,
        dwell_ns: stays.dwell_ns,
        comm: [0; 16],
        saddr: [0; 16],
        daddr: [0; 16],
        netns: ev.netns,
        pid: ev.task.pid,
        sport: ev.local.port(),
        dport: ev.remote.port(),
        family: if ev.local.is_ipv6() {
            AF_INET6
        } else {
            AF_INET
        },
        visited: stays.visited,
        known: stays.known,
        flags: 0,
        err: stays.err,
        oldstate: old as u8,
        newstate: new as u8,
        _pad: [0; 8],
    };
    put_ip(&mut r.saddr, ev.local.ip());
    put_ip(&mut r.daddr, ev.remote.ip());
    let comm = ev.task.comm.as_bytes();
    let n = comm.len().min(15);
    r.comm[..n].copy_from_slice(&comm[..n]);
    let bit = |on: bool, b: u16| if on { b } else { 0 };
    r.flags = bit(ev.owner_context, SUMMARY_OWNER)
        | bit(stays.closer, SUMMARY_CLOSER)
        | bit(stays.reset, SUMMARY_RESET)
        | bit(stays.repaired, SUMMARY_REPAIRED)
        | bit(stays.passive, SUMMARY_PASSIVE)
        | bit(stays.timewait.is_some(), SUMMARY_TW_HOOKED)
        | bit(
            ev.timewait_read.is_some() && ev.timewait_read != Some(TcpState::Close),
            SUMMARY_TW_SUBSTATE,
        )
        | bit(
            ev.timewait_read == Some(TcpState::Close),
            SUMMARY_NO_TIMEWAIT,
        )
        | bit(
            stays.timewait.or(ev.timewait_read) == Some(TcpState::FinWait2),
            SUMMARY_TW_FIN_WAIT2,
        )
        | bit(stays.born_ns.is_none(), SUMMARY_BORN_UNSEEN)
        | bit(ev.sock.cookie != 0, SUMMARY_HAS_COOKIE)
        | bit(
            tcptrace_common::state::runs_in_owner_context(old as u8, new as u8),
            SUMMARY_OWNER_CONTEXT,
        )
        | bit(
            ev.local.port() != 0 && ev.remote.port() != 0,
            tcptrace_common::event::SUMMARY_TUPLE,
        )
        | bit(
            ev.connect_end.is_some_and(|c| c.no_local_port),
            SUMMARY_NO_LOCAL_PORT,
        );
    if let Some(c) = ev.connect_end {
        r.err = c.err;
        if c.in_caller == Some(true) {
            r.flags |= SUMMARY_OWNER_CONTEXT;
        }
    }
    Some(r)
}

fn put_ip(dst: &mut [u8; 16], ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => dst[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => *dst = a.octets(),
    }
}

/// The bytes of a summary record, as the ring buffer carries them.
pub fn summary_bytes(raw: &SockSummary) -> &[u8] {
    // SAFETY: SockSummary is repr(C) with explicit padding (asserted in tcptrace-common).
    unsafe { std::slice::from_raw_parts((raw as *const SockSummary).cast(), SUMMARY_SIZE) }
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
    let (lip, rip) = addresses(raw.family, &raw.saddr, &raw.daddr)?;
    Ok(Event {
        ts_ns: raw.ts_ns,
        sock: SockId::of(raw.cookie, raw.flags & FLAG_HAS_COOKIE != 0, raw.skaddr),
        netns: raw.netns,
        local: SocketAddr::new(lip, raw.sport),
        remote: SocketAddr::new(rip, raw.dport),
        what,
        task: Task {
            pid: raw.pid,
            tid: raw.tid,
            comm: comm_of(&raw.comm),
            cgroup_id: raw.cgroup_id,
        },
        owner_context: raw.flags & FLAG_OWNER_CONTEXT != 0,
        from_backup: raw.flags & FLAG_FROM_BACKUP != 0,
        connect_end: matches!(
            what,
            What::Transition {
                old: TcpState::SynSent,
                new: TcpState::Close,
            }
        )
        .then_some(ConnectEnd {
            err: raw.err,
            no_local_port: raw.flags & FLAG_NO_LOCAL_PORT != 0,
            in_caller: None,
        }),
        timewait_read: if raw.flags & FLAG_NO_TIMEWAIT != 0 {
            Some(TcpState::Close)
        } else {
            (raw.flags & FLAG_TW_SUBSTATE != 0).then_some(if raw.flags & FLAG_TW_FIN_WAIT2 != 0 {
                TcpState::FinWait2
            } else {
                TcpState::TimeWait
            })
        },
    })
}

/// Encodes an event back into its kernel layout: used by tests, fixtures and benchmarks.
pub fn encode(ev: &Event) -> RawEvent {
    let mut raw = RawEvent::zeroed();
    raw.ts_ns = ev.ts_ns;
    raw.cookie = ev.sock.cookie;
    raw.skaddr = ev.sock.skaddr;
    raw.cgroup_id = ev.task.cgroup_id;
    put_ip(&mut raw.saddr, ev.local.ip());
    put_ip(&mut raw.daddr, ev.remote.ip());
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
        // Summaries have their own record (`encode_summary`); as an event they are the
        // transition they end with.
        What::Summary { old, new, .. } => {
            raw.kind = EventKind::StateChange as u8;
            raw.oldstate = old as u8;
            raw.newstate = new as u8;
        }
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
    if let Some(c) = ev.connect_end {
        raw.err = c.err;
        if c.no_local_port {
            raw.flags |= FLAG_NO_LOCAL_PORT;
        }
    }
    match ev.timewait_read {
        Some(TcpState::Close) => raw.flags |= FLAG_NO_TIMEWAIT,
        Some(substate) => {
            raw.flags |= FLAG_TW_SUBSTATE;
            if substate == TcpState::FinWait2 {
                raw.flags |= FLAG_TW_FIN_WAIT2;
            }
        }
        None => {}
    }
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
            connect_end: None,
            timewait_read: None,
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
    fn summaries_round_trip_and_say_what_they_know() {
        let mut ev = sample(true);
        let mut dwell_ns = [0; STATE_SLOTS];
        dwell_ns[TcpState::SynSent as usize] = 50_000;
        dwell_ns[TcpState::Established as usize] = 2_000_000_000;
        ev.what = What::Summary {
            old: TcpState::FinWait2,
            new: TcpState::Close,
            stays: Stays {
                dwell_ns,
                visited: (1 << 2) | (1 << 1) | (1 << 4) | (1 << 5),
                known: (1 << 2) | (1 << 1),
                born_ns: Some(100),
                closer: true,
                reset: false,
                repaired: true,
                passive: false,
                err: 0,
                timewait: Some(TcpState::FinWait2),
            },
        };
        let raw = encode_summary(&ev).unwrap();
        let back = decode(summary_bytes(&raw)).unwrap();
        assert_eq!(
            back,
            Event {
                task: Task {
                    tid: 100,
                    ..ev.task.clone()
                },
                ..ev.clone()
            }
        );
        let What::Summary { stays, .. } = back.what else {
            unreachable!()
        };
        let left: Vec<_> = stays.left().collect();
        assert_eq!(
            left,
            [
                (TcpState::Established, Some(2_000_000_000)),
                (TcpState::SynSent, Some(50_000)),
                (TcpState::FinWait1, None),
                (TcpState::FinWait2, None),
            ]
        );
        assert!(encode_summary(&sample(false)).is_none());
        // The substate the kernel read without the hook round-trips apart from the hooked one,
        // and so does "no timewait socket" (CLOSE).
        for read in [TcpState::FinWait2, TcpState::TimeWait, TcpState::Close] {
            let mut ev = ev.clone();
            if let What::Summary { stays, .. } = &mut ev.what {
                stays.timewait = None;
            }
            ev.timewait_read = Some(read);
            let back = decode(summary_bytes(&encode_summary(&ev).unwrap())).unwrap();
            assert_eq!((back.what, back.timewait_read), (ev.what, Some(read)));
            // And in an event record, as the stream carries it.
            let back = decode(raw_bytes(&encode(&ev))).unwrap();
            assert_eq!(back.timewait_read, Some(read));
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
