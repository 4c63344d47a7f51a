//! `sock:inet_sock_set_state`: every state change of a full TCP socket.
//! <https://github.com/torvalds/linux/blob/v6.1/include/trace/events/sock.h#L141>

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie,
    macros::map,
    maps::PerCpuArray,
    programs::{BtfTracePointContext, TracePointContext},
};
use tcptrace_common::{
    EventKind, TcpState,
    config::ProbeConfig,
    event::{
        FLAG_FROM_BACKUP, FLAG_HAS_COOKIE, FLAG_NO_LOCAL_PORT, FLAG_NO_TIMEWAIT, FLAG_TW_FIN_WAIT2,
        FLAG_TW_SUBSTATE, RawEvent,
    },
    pending::{Pending, states_of},
    state::runs_in_owner_context,
};

use crate::{
    config::{Counter, config, count},
    emit, record,
    rings::Reserved,
    sock::{self, Addr, Sock, Typed},
    summary, timewait_made,
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Backup,
}

/// How the tp_btf programs name a socket.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SockKey {
    /// `bpf_get_socket_cookie(sk)`: unique for the kernel's life. Tracing programs may call it
    /// since Linux 5.12 (`bpf_get_socket_ptr_cookie_proto`); the verifier of older kernels
    /// rejects the whole program ("unknown func bpf_get_socket_cookie#46", seen on 5.10).
    /// <https://github.com/torvalds/linux/blob/v5.12/net/core/filter.c> (`bpf_get_socket_ptr_cookie`)
    Cookie,
    /// The socket's address alone (cookie 0), as on the classic tracepoint path: userspace
    /// retires an address-keyed socket at its CLOSE, since the allocator reuses the address.
    Address,
}

impl SockKey {
    /// The cookie of `sk_btf`, or 0 when this variant may not ask for it.
    #[inline(always)]
    pub fn cookie_of(self, sk_btf: *const c_void) -> u64 {
        match self {
            // SAFETY: sk_btf is the hook's typed socket pointer (any `sock_common`), which this
            // helper accepts.
            SockKey::Cookie => unsafe { bpf_get_socket_cookie(sk_btf as *mut c_void) },
            SockKey::Address => 0,
        }
    }
}

/// Per CPU, the transitions the primary started on and the backup has not found yet: the
/// backup sends only those it does not find (see `tcptrace_common::pending`).
#[map]
static PENDING_RUNS: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// The primary's first action: this CPU is handling transition `states` of socket `id`.
#[inline(always)]
fn primary_starts(id: u64, states: u64) -> bool {
    let Some(p) = PENDING_RUNS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot. A softirq landing here finds the primary active: the kernel skips
    // the nested primary run, and its backup does not find its transition.
    unsafe { (*p).push(id, states) };
    true
}

/// The backup's first action, before anything that takes time (the cookie helper): the top of
/// the stack as this run found it.
#[inline(always)]
fn backup_starts() -> u64 {
    PENDING_RUNS.get(0).map_or(0, |p| p.top())
}

/// The backup's test: whether the primary started on transition `states` of socket `id`
/// (nothing to recover).
#[inline(always)]
fn primary_handled(top: u64, id: u64, states: u64) -> bool {
    let Some(p) = PENDING_RUNS.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: per-CPU slot; a primary nested in this run pushes above `top`, and its backup is
    // skipped (ours is active), so popping its entry loses nothing.
    unsafe { (*p).handled(top, id, states) }
}

/// Whether this run handles the transition: the primary always (it pushes it first), the
/// backup only when the primary did not start on it (`top`: what [`backup_starts`] noted).
#[inline(always)]
fn handles(role: Role, top: u64, id: u64, states: u64) -> bool {
    match role {
        Role::Primary => primary_starts(id, states),
        Role::Backup => !primary_handled(top, id, states),
    }
}

#[inline(always)]
pub fn on_btf(ctx: &BtfTracePointContext, role: Role, key: SockKey) -> i32 {
    let sk_btf: *const c_void = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    // The typed pointer as a number: the socket's address in records and per-CPU keys.
    // Privileged programs may store and compare it (`allow_ptr_leaks`, which CAP_PERFMON
    // grants), so no helper call is needed to read the argument.
    let sk = sk_btf as u64;
    let top = match role {
        Role::Backup => backup_starts(),
        Role::Primary => 0,
    };
    // Keyed by the socket's address, which both runs of one transition see: the cookie helper
    // comes later, and only when the transition is sent (counting mode never asks for it).
    if !handles(role, top, sk, states_of(old as u8, new as u8)) {
        return 0;
    }
    let cfg = config();
    // Summaries live in socket storage, which the address-keyed variant (for kernels before
    // 5.11/5.12) must not even name: the constant `key` removes this path from it.
    if key == SockKey::Cookie && cfg.summary != 0 && summary::follows(old as u8, new as u8) {
        summary::on_transition(sk_btf, sk, old as u8, new as u8, cfg, role == Role::Backup);
        return 0;
    }
    if sock::protocol(Typed(sk_btf), &cfg.offsets) != sock::IPPROTO_TCP {
        if role == Role::Backup {
            // A run the primary missed, but of a socket we never report: not a lost event.
            count(Counter::BackupDiscarded);
        }
        return 0;
    }
    if emit::counts_without_fields(cfg) {
        emit::count_instead(old as u8, new as u8, role == Role::Backup);
        return 0;
    }
    // An accepted child reports LISTEN->SYN_RECV from inet_csk_clone_lock() before the kernel
    // copies the request socket's cookie into it (up to at least 6.1), so a cookie generated
    // now would be overwritten. That event is keyed by address; userspace ties it to the cookie
    // the next event carries.
    // <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/inet_connection_sock.c#L1000>
    let clone = old == TcpState::Listen as i32 && new == TcpState::SynRecv as i32;
    let cookie = if clone { 0 } else { key.cookie_of(sk_btf) };
    let mut slot = core::mem::MaybeUninit::uninit();
    let reserved = if emit::sends_every_transition(cfg) {
        let Some(r) = Reserved::<RawEvent>::new() else {
            emit::reserve_failed(role == Role::Backup);
            return 0;
        };
        Some(r)
    } else {
        None
    };
    let ev = match &reserved {
        // SAFETY: a reservation of a RawEvent, written whole below and submitted by `commit`.
        Some(r) => unsafe { emit::blank_at(r.record) },
        None => emit::blank(&mut slot),
    };
    sock::fill_endpoints(Typed(sk_btf), &cfg.offsets, ev);
    if new == TcpState::Close as i32 {
        released_port(Typed(sk_btf), cfg, ev);
    }
    ev.cookie = cookie;
    ev.skaddr = sk;
    ev.kind = EventKind::StateChange as u8;
    ev.oldstate = old as u8;
    ev.newstate = new as u8;
    ev.flags = if cookie != 0 { FLAG_HAS_COOKIE } else { 0 };
    let owner = runs_in_owner_context(ev.oldstate, ev.newstate);
    emit::fill_task(ev, owner);
    if role == Role::Backup {
        ev.flags |= FLAG_FROM_BACKUP;
        count(Counter::BackupEmitted);
    }
    connect_end(Typed(sk_btf), &cfg.offsets, ev);
    timewait_handover::<{ timewait_made::LOOK_BTF }>(Typed(sk_btf), cfg, ev);
    match reserved {
        // SAFETY: blanked whole by `blank_at`, then filled.
        Some(r) => unsafe { emit::commit(r, cfg) },
        None => emit::submit(ev, cfg),
    }
    0
}

/// FIN_WAIT2 / CLOSING -> CLOSE: whether a timewait socket took the connection over, and in
/// which substate. None did when the kernel's TIME_WAIT table was full (see
/// `timewait_made`). Else, from FIN_WAIT2: tcp_fin() sets SOCK_DONE before it calls
/// tcp_time_wait(TCP_TIME_WAIT); an orphan handed over when its own FIN was acked (or by its
/// FIN_WAIT2 timer) never had the peer's FIN, and waits in substate FIN_WAIT2. (Not
/// `sk_shutdown`'s RCV_SHUTDOWN: tcp_close() sets that on every socket it closes.)
/// <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_input.c#L4400>
#[inline(always)]
fn timewait_handover<const LOOK: usize>(sk: impl Sock, cfg: &ProbeConfig, ev: &mut RawEvent) {
    let o = &cfg.offsets;
    if timewait_made::refused::<LOOK>(sk, ev.oldstate, ev.newstate, cfg) {
        ev.flags |= FLAG_NO_TIMEWAIT;
        return;
    }
    if ev.oldstate != TcpState::FinWait2 as u8
        || ev.newstate != TcpState::Close as u8
        || o.sk_flags == 0
        || sk.is_null()
    {
        return;
    }
    ev.flags |= FLAG_TW_SUBSTATE;
    if sk.at::<u64>(o.sk_flags) & SOCK_DONE == 0 {
        ev.flags |= FLAG_TW_FIN_WAIT2;
    }
}

/// `sk_flags` bit `SOCK_DONE` (enum sock_flags: SOCK_DEAD is 0, SOCK_DONE 1): the peer's FIN
/// arrived.
/// <https://github.com/torvalds/linux/blob/v6.1/include/net/sock.h#L880>
pub const SOCK_DONE: u64 = 1 << 1;

/// X->CLOSE under a port filter: the local port the socket had. `tcp_set_state()` releases it
/// before the event (`skc_num` reads 0, see `emit::wanted`), but `inet_sport` keeps it, as the
/// classic tracepoint's `sport` shows. The filter then decides the close on the socket's own
/// port rather than on its `ADMITTED` entry, which the LRU map may evict to make room for new
/// keys (not seen in a storm, whose admissions are removed at each close; an evicted one would
/// have filtered the close without a count). Only under a filter: without
/// one every event is sent, and the read (a helper call) would buy nothing.
/// <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp.c#L2596> (`tcp_set_state`),
/// <https://github.com/torvalds/linux/blob/v6.1/kernel/bpf/bpf_lru_list.c#L340>
#[inline(always)]
fn released_port(sk: impl Sock, cfg: &ProbeConfig, ev: &mut RawEvent) {
    if ev.sport == 0 && cfg.offsets.inet_sport != 0 && emit::filters_ports(cfg) && !sk.is_null() {
        ev.sport = u16::from_be(sk.outer(cfg.offsets.inet_sport));
    }
}

/// SYN_SENT -> CLOSE: why the connect failed (`sk_err`, set before `tcp_done`) and whether it
/// ever had a local port (`inet_sport`; `skc_num` is already released here).
/// <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_input.c#L4363>
#[inline(always)]
fn connect_end(sk: impl Sock, o: &tcptrace_common::config::SockOffsets, ev: &mut RawEvent) {
    if ev.oldstate != TcpState::SynSent as u8
        || ev.newstate != TcpState::Close as u8
        || sk.is_null()
    {
        return;
    }
    if o.sk_err != 0 {
        ev.err = sk.at::<i32>(o.sk_err) as u16;
    }
    if o.inet_sport != 0 && sk.outer::<u16>(o.inet_sport) == 0 {
        ev.flags |= FLAG_NO_LOCAL_PORT;
    }
}

/// The classic tracepoint: no typed socket, so no cookie; the socket is named by `skaddr`.
/// Classic tracepoints share one per-CPU guard (`bpf_prog_active`) with every kprobe and
/// tracepoint program, so a backup program would be skipped too: nested transitions are only
/// counted (as the program's recursion misses), not recovered, on this path.
#[inline(always)]
pub fn on_tracepoint(ctx: &TracePointContext) -> u32 {
    let cfg = config();
    let l = &cfg.tp_set_state;
    if l.validated == 0 {
        return 0;
    }
    let protocol: u16 = if l.protocol_size == 1 {
        record::at::<u8>(ctx, l.protocol) as u16
    } else {
        record::at::<u16>(ctx, l.protocol)
    };
    if protocol != sock::IPPROTO_TCP {
        return 0;
    }
    let mut slot = core::mem::MaybeUninit::uninit();
    let ev = emit::blank(&mut slot);
    ev.skaddr = record::at(ctx, l.skaddr);
    ev.oldstate = record::at::<i32>(ctx, l.oldstate) as u8;
    ev.newstate = record::at::<i32>(ctx, l.newstate) as u8;
    ev.sport = record::at(ctx, l.sport);
    ev.dport = record::at(ctx, l.dport);
    ev.family = record::at(ctx, l.family);
    record::addresses(ctx, ev, (l.saddr, l.daddr), (l.saddr_v6, l.daddr_v6));
    ev.netns = sock::netns_of(Addr(ev.skaddr), &cfg.offsets);
    ev.kind = EventKind::StateChange as u8;
    let owner = runs_in_owner_context(ev.oldstate, ev.newstate);
    emit::fill_task(ev, owner);
    connect_end(Addr(ev.skaddr), &cfg.offsets, ev);
    timewait_handover::<{ timewait_made::LOOK_CLASSIC }>(Addr(ev.skaddr), cfg, ev);
    emit::submit(ev, cfg);
    0
}

/// Raw access to the first context slot.
trait CtxSlot {
    fn as_ptr_u64(&self) -> *const u64;
}

impl CtxSlot for BtfTracePointContext {
    fn as_ptr_u64(&self) -> *const u64 {
        use aya_ebpf::EbpfContext;
        self.as_ptr() as *const u64
    }
}
