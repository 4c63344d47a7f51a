//! fentry hooks on the timewait socket's life, which `inet_sock_set_state` never shows:
//! - `tcp_time_wait(struct sock *sk, int state, int timeo)`: the full socket hands the connection
//!   to a timewait socket in substate `state` (TIME_WAIT, or FIN_WAIT2 for an orphan whose peer
//!   has not closed). It runs before the `-> CLOSE` transition (it calls `tcp_done()` last).
//!   <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_minisocks.c#L245>
//! - `inet_twsk_free(struct inet_timewait_sock *tw)`: the timewait socket is freed, whether its
//!   timer ran out, a new connection reused its 4-tuple, or a RST killed it.
//!   <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/inet_timewait_sock.c#L93>
//!
//! Where fentry is refused, `timer:timer_expire_entry` gives the exact end of timewait sockets
//! whose timer ran out (`on_timer`); their start is then inferred from FIN_WAIT2/CLOSING -> CLOSE
//! by userspace, and ends by reuse or RST (`inet_twsk_deschedule_put`, which deletes the timer
//! without running it) from the 4-tuple's next connection.
//!
//! A timewait socket starts with `struct sock_common __tw_common`, as `struct sock` starts with
//! `__sk_common` (userspace checks both offsets are 0 before it attaches), so the `sock_common`
//! offsets in `SockOffsets` read it too, and its cookie is the full socket's (`inet_twsk_alloc`
//! copies `sk_cookie` into `tw_cookie`).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie,
    programs::{FEntryContext, TracePointContext},
};
use tcptrace_common::{
    EventKind,
    event::{AF_INET, AF_INET6, FLAG_HAS_COOKIE},
};

use crate::{
    config::{config, tw_timer_config},
    emit, record,
    sock::{self, Addr, Sock, Typed},
    summary,
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `tcp_time_wait`: argument 0 is a full TCP `struct sock *`, argument 1 the substate.
    Enter,
    /// `inet_twsk_free`: argument 0 is the `struct inet_timewait_sock *`.
    End,
}

#[inline(always)]
pub fn on_fentry(ctx: &FEntryContext, hook: Hook) -> i32 {
    let sk_btf: *const c_void = ctx.arg(0);
    if sk_btf.is_null() {
        return 0;
    }
    let sk = sk_btf as u64;
    let cfg = config();
    if hook == Hook::Enter {
        if sock::protocol(Typed(sk_btf), &cfg.offsets) != sock::IPPROTO_TCP {
            return 0;
        }
        let substate: i32 = ctx.arg(1);
        if cfg.summary != 0 && summary::timewait_entered(sk_btf, substate as u8) {
            // The socket's close record, which comes next, carries it.
            return 0;
        }
    }
    let mut slot = core::mem::MaybeUninit::uninit();
    let ev = emit::blank(&mut slot);
    sock::fill_endpoints(Typed(sk_btf), &cfg.offsets, ev);
    emit::fill_task(ev, false);
    // SAFETY: a typed `struct sock *` or `struct inet_timewait_sock *`; the helper takes any
    // socket that begins with `sock_common`.
    ev.cookie = unsafe { bpf_get_socket_cookie(sk_btf as *mut c_void) };
    ev.skaddr = sk;
    ev.flags = FLAG_HAS_COOKIE;
    match hook {
        Hook::Enter => {
            let state: i32 = ctx.arg(1);
            ev.kind = EventKind::TimeWaitEnter as u8;
            ev.newstate = state as u8;
        }
        Hook::End => ev.kind = EventKind::TimeWaitEnd as u8,
    }
    emit::submit(ev, cfg);
    0
}

/// `timer:timer_expire_entry(timer, now, function, baseclk)`: a timer-wheel timer is about to
/// run its handler. For a timewait socket's `tw_timer` the handler is `tw_timer_handler`, which
/// kills the socket (`inet_twsk_kill`), so this is when `ss` stops showing it.
/// <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/inet_timewait_sock.c#L148>
///
/// It runs for every timer in the kernel, so anything but a timewait timer returns after two
/// reads. The socket is `timer - offsetof(inet_timewait_sock, tw_timer)`; it is read like the
/// fentry `inet_twsk_free` hook reads it, except for the cookie: `bpf_get_socket_cookie` is not
/// offered to classic tracepoints, so `skc_cookie` is read as is (the full socket's cookie,
/// which the tp_btf programs generated; 0 leaves userspace to match the 4-tuple).
#[inline(always)]
pub fn on_timer(ctx: &TracePointContext) -> u32 {
    let t = tw_timer_config();
    if t.validated == 0 {
        return 0;
    }
    let function: u64 = record::at(ctx, t.tp_function);
    if function != t.handler {
        return 0;
    }
    let timer: u64 = record::at(ctx, t.tp_timer);
    if timer < t.tw_timer as u64 {
        return 0;
    }
    let tw = timer - t.tw_timer as u64;
    let cfg = config();
    let mut slot = core::mem::MaybeUninit::uninit();
    let ev = emit::blank(&mut slot);
    let family = sock::fill_endpoints(Addr(tw), &cfg.offsets, ev);
    if family != AF_INET && family != AF_INET6 {
        // Not an inet timewait socket after all (a faulted read): userspace could not decode
        // it, and would count it as lost.
        return 0;
    }
    emit::fill_task(ev, false);
    ev.cookie = Addr(tw).at(t.skc_cookie);
    ev.skaddr = tw;
    if ev.cookie != 0 {
        ev.flags = FLAG_HAS_COOKIE;
    }
    ev.kind = EventKind::TimeWaitEnd as u8;
    emit::submit(ev, cfg);
    0
}
