//! `tcp:tcp_receive_reset` and `tcp:tcp_send_reset`. A RST close also shows as `X -> CLOSE` in
//! `inet_sock_set_state`; these events, which fire before that transition, let userspace tell it
//! apart from a close that leaves a TIME_WAIT socket.
//! <https://github.com/torvalds/linux/blob/v6.1/include/trace/events/tcp.h>

use core::ffi::c_void;

use aya_ebpf::programs::{BtfTracePointContext, TracePointContext};
use tcptrace_common::{
    EventKind,
    config::{RESET_TP_HAS_FAMILY, RESET_TP_SOCKADDR},
    event::{AF_INET, AF_INET6, FLAG_HAS_COOKIE},
};

use crate::{
    config::config,
    emit, record,
    sock::{self, Addr, Typed},
    state_change::SockKey,
    summary,
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Received,
    Sent,
}

impl Direction {
    fn kind(self) -> EventKind {
        match self {
            Direction::Received => EventKind::ResetReceived,
            Direction::Sent => EventKind::ResetSent,
        }
    }
}

#[inline(always)]
pub fn on_btf(ctx: &BtfTracePointContext, dir: Direction, key: SockKey) -> i32 {
    let sk_btf: *const c_void = ctx.arg(0);
    if sk_btf.is_null() {
        // A RST for a segment that matched no socket: nothing of ours changes state.
        return 0;
    }
    let sk = sk_btf as u64;
    let cfg = config();
    if sock::protocol(Typed(sk_btf), &cfg.offsets) != sock::IPPROTO_TCP {
        return 0;
    }
    // The address-keyed variant is for kernels without socket storage in tracing programs
    // (before 5.11): it must not name the helper at all, or the verifier refuses it.
    if key == SockKey::Cookie && cfg.summary != 0 && dir == Direction::Received {
        // The socket's close record will say it was a RST (`tcp_reset` calls `tcp_done` next).
        summary::reset_received(sk_btf);
    }
    let mut slot = core::mem::MaybeUninit::uninit();
    let ev = emit::blank(&mut slot);
    sock::fill_endpoints(Typed(sk_btf), &cfg.offsets, ev);
    emit::fill_task(ev, false);
    // tcp_send_reset may pass a timewait or request socket; the helper takes any `sock_common`.
    ev.cookie = key.cookie_of(sk_btf);
    ev.skaddr = sk;
    ev.kind = dir.kind() as u8;
    if ev.cookie != 0 {
        ev.flags = FLAG_HAS_COOKIE;
    }
    emit::submit(ev, cfg);
    0
}

/// Classic tracepoint path. Since Linux 6.10 `tcp_send_reset` records carry socket-address
/// images (`saddr[28]`) instead of separate fields; the layout says which form this kernel has.
#[inline(always)]
pub fn on_tracepoint(ctx: &TracePointContext, dir: Direction) -> u32 {
    let cfg = config();
    let l = match dir {
        Direction::Received => cfg.tp_reset_rx,
        Direction::Sent => cfg.tp_reset_tx,
    };
    if l.validated == 0 {
        return 0;
    }
    let mut slot = core::mem::MaybeUninit::uninit();
    let ev = emit::blank(&mut slot);
    ev.skaddr = record::at(ctx, l.skaddr);
    if ev.skaddr == 0 {
        // A RST for a segment that matched no full socket.
        return 0;
    }
    ev.family = if l.flags & RESET_TP_HAS_FAMILY != 0 {
        record::at(ctx, l.family)
    } else {
        // Old kernels without the field: a v4 socket has a v4-mapped saddr_v6.
        let v6: [u8; 16] = record::at(ctx, l.saddr_v6);
        let mapped = v6[..10] == [0u8; 10] && v6[10] == 0xff && v6[11] == 0xff;
        if mapped { AF_INET } else { AF_INET6 }
    };
    let sport: u16 = record::at(ctx, l.sport);
    let dport: u16 = record::at(ctx, l.dport);
    if l.flags & RESET_TP_SOCKADDR != 0 {
        ev.sport = u16::from_be(sport);
        ev.dport = u16::from_be(dport);
    } else {
        ev.sport = sport;
        ev.dport = dport;
    }
    record::addresses(ctx, ev, (l.saddr, l.daddr), (l.saddr_v6, l.daddr_v6));
    ev.netns = sock::netns_of(Addr(ev.skaddr), &cfg.offsets);
    if ev.family != AF_INET && ev.family != AF_INET6 {
        return 0;
    }
    emit::fill_task(ev, false);
    ev.kind = dir.kind() as u8;
    emit::submit(ev, cfg);
    0
}
