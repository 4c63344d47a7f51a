//! `tcp:tcp_receive_reset` and `tcp:tcp_send_reset`. A RST close also shows as `X -> CLOSE` in
//! `inet_sock_set_state`; these events, which fire before that transition, let userspace tell it
//! apart from a close that leaves a TIME_WAIT socket.
//! <https://github.com/torvalds/linux/blob/v6.1/include/trace/events/tcp.h>

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_probe_read_kernel, generated::bpf_get_socket_cookie},
    programs::BtfTracePointContext,
};
use tcptrace_common::{
    event::{FLAG_HAS_COOKIE, RawEvent},
    EventKind,
};

use crate::{config::config, emit, sock};

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
pub fn on_btf(ctx: &BtfTracePointContext, dir: Direction) -> i32 {
    let sk_btf: *const c_void = ctx.arg(0);
    if sk_btf.is_null() {
        // A RST for a segment that matched no socket: nothing of ours changes state.
        return 0;
    }
    // SAFETY: the context holds the arguments as u64s; argument 0 is `sk`.
    let Ok(sk) = (unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const u64) }) else {
        return 0;
    };
    let cfg = config();
    if sock::protocol(sk, &cfg.offsets) != sock::IPPROTO_TCP {
        return 0;
    }
    let mut ev = RawEvent::zeroed();
    sock::fill_endpoints(sk, &cfg.offsets, &mut ev);
    emit::fill_task(&mut ev);
    // SAFETY: `sk` is the tracepoint's typed socket pointer. tcp_send_reset may pass a timewait
    // or request socket; the helper takes any `sock_common`.
    ev.cookie = unsafe { bpf_get_socket_cookie(sk_btf as *mut c_void) };
    ev.skaddr = sk;
    ev.kind = dir.kind() as u8;
    ev.flags = FLAG_HAS_COOKIE;
    emit::submit(&ev, &cfg);
    0
}
