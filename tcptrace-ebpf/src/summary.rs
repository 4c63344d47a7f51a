//! Summary mode: each socket followed in socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`, which
//! lives in the socket itself: no global lookup, no lock), and one record sent per CLOSE_WAIT
//! entry and per close instead of one per transition.
//!
//! Most transitions only update the socket's storage: the time spent in the state it leaves,
//! the owner when the transition runs in the owner's syscall, the 4-tuple once it is complete.
//! A record ([`SockSummary`]) carries what happened since the last one: a connection costs two
//! or three records instead of ten, and userspace applies two or three instead of ten.
//!
//! A run of this program skipped by the kernel (nested on one CPU) leaves the storage one state
//! behind; the socket's next transition sees it (the stored state is not the transition's old
//! state), takes the kernel's word, and marks the stays around the gap inexact.
//! <https://github.com/torvalds/linux/blob/v6.1/net/core/bpf_sk_storage.c#L260>

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_current_comm, bpf_get_socket_cookie, bpf_sk_storage_get},
    },
    macros::btf_map,
};
use tcptrace_common::{
    TcpState,
    config::{PORT_MATCH_LOCAL, PORT_MATCH_REMOTE, ProbeConfig},
    event::{
        AF_INET, AF_INET6, STATE_SLOTS, SUMMARY_BORN_UNSEEN, SUMMARY_CLOSER, SUMMARY_HAS_COOKIE,
        SUMMARY_NO_LOCAL_PORT, SUMMARY_NO_TIMEWAIT, SUMMARY_OWNER, SUMMARY_OWNER_CONTEXT,
        SUMMARY_PASSIVE, SUMMARY_REPAIRED, SUMMARY_RESET, SUMMARY_TUPLE, SUMMARY_TW_FIN_WAIT2,
        SUMMARY_TW_HOOKED, SUMMARY_TW_SUBSTATE, SockSummary,
    },
    state::runs_in_owner_context,
};

use crate::{
    config::{Counter, PORTS, add, count, count_transition, counting_mode},
    emit,
    rings::Reserved,
    sock::{self, Sock, Typed},
    state_change::SOCK_DONE,
    timewait_made,
};

/// What the kernel keeps per socket (about 200 bytes; freed with the socket).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockState {
    /// When the socket entered `state`; 0 when unknown (first seen mid-life).
    entered_ns: u64,
    born_ns: u64,
    cgroup_id: u64,
    dwell_ns: [u64; STATE_SLOTS],
    comm: [u8; 16],
    saddr: [u8; 16],
    daddr: [u8; 16],
    netns: u32,
    pid: u32,
    sport: u16,
    dport: u16,
    family: u16,
    visited: u16,
    known: u16,
    /// `SUMMARY_*` bits that go into the record, plus the `ST_*` bits below.
    flags: u16,
    /// Transitions followed while the port filter had not decided about the socket yet: they
    /// count as followed once it is admitted, and not at all if it is filtered out.
    undecided: u16,
    state: u8,
    /// The transition applied before the latest one (old, new): a backup run for it, once a
    /// later transition of the socket ran in between, must not apply it twice.
    prev: [u8; 2],
    /// `old` of the latest transition applied (its `new` is `state`).
    last_old: u8,
    _pad: [u8; 2],
}

// The word copies in `send` read these arrays 8 bytes at a time.
const _: () = {
    use core::mem::{align_of, offset_of};
    assert!(align_of::<SockState>() == 8);
    assert!(offset_of!(SockState, dwell_ns) % 8 == 0);
    assert!(offset_of!(SockState, comm) % 8 == 0);
    assert!(offset_of!(SockState, saddr) % 8 == 0);
    assert!(offset_of!(SockState, daddr) % 8 == 0);
};

/// The storage has been filled at the socket's first transition (a new one is all zero).
const ST_INIT: u16 = 1 << 12;
/// The port filter let this socket through; its closing records pass whatever their ports.
const ST_ADMITTED: u16 = 1 << 13;
/// Filtered out (family or ports): nothing is followed or sent for it.
const ST_IGNORED: u16 = 1 << 14;
/// The bits of `flags` that records carry: all but the `ST_*` ones.
const RECORD_FLAGS: u16 = !(ST_INIT | ST_ADMITTED | ST_IGNORED);

#[btf_map]
pub static SOCKS: SkStorage<SockState> = SkStorage::new();

const CLOSE: u8 = TcpState::Close as u8;
const LISTEN: u8 = TcpState::Listen as u8;
const SYN_SENT: u8 = TcpState::SynSent as u8;
const SYN_RECV: u8 = TcpState::SynRecv as u8;
const ESTABLISHED: u8 = TcpState::Established as u8;
const FIN_WAIT1: u8 = TcpState::FinWait1 as u8;
const FIN_WAIT2: u8 = TcpState::FinWait2 as u8;
const CLOSE_WAIT: u8 = TcpState::CloseWait as u8;
const LAST_ACK: u8 = TcpState::LastAck as u8;

#[inline(always)]
fn bit(state: u8) -> u16 {
    1u16 << (state as u16 & 0xf)
}

#[inline(always)]
fn storage(sk_btf: *const c_void, create: bool) -> *mut SockState {
    let flags = if create {
        BPF_SK_STORAGE_GET_F_CREATE as u64
    } else {
        0
    };
    // SAFETY: `sk_btf` is the tracepoint's typed `struct sock *`, which the helper accepts; the
    // map is the BTF-defined socket storage above.
    unsafe {
        bpf_sk_storage_get(
            core::ptr::addr_of!(SOCKS) as *mut c_void,
            sk_btf as *mut c_void,
            core::ptr::null_mut(),
            flags,
        )
    }
    .cast()
}

/// Whether summary mode follows this transition. Listeners are few and their transitions are
/// sent as events (userspace tracks every listener for owner inheritance).
#[inline(always)]
pub fn follows(old: u8, new: u8) -> bool {
    new != LISTEN && !(old == LISTEN && new == CLOSE)
}

/// One transition of a TCP (or other) socket, in summary mode. `sk` is `sk_btf` as a number.
/// `backup`: run by the backup program for a run of the primary the kernel skipped.
#[inline(always)]
pub fn on_transition(
    sk_btf: *const c_void,
    sk: u64,
    old: u8,
    new: u8,
    cfg: &ProbeConfig,
    backup: bool,
) {
    // A direct load, cheaper than a storage lookup that would fail for other protocols: then
    // one helper call finds or creates the storage.
    if sock::protocol(Typed(sk_btf), &cfg.offsets) != sock::IPPROTO_TCP {
        if backup {
            // A skipped run of a socket we never follow: not a lost transition.
            count(Counter::BackupHandled);
        }
        return;
    }
    let st = storage(sk_btf, true);
    if st.is_null() {
        count(Counter::StorageFailed);
        return;
    }
    // SAFETY: the helper returned this socket's storage, valid while the program runs.
    let s = unsafe { &mut *st };
    if s.flags & ST_INIT == 0 && !first_sight(s, Typed(sk_btf), old, new, cfg) {
        return;
    }
    if backup {
        if s.flags & ST_INIT != 0 && s.entered_ns != 0 && (s.state == new || s.prev == [old, new]) {
            // The primary ran for this very transition and a nested one moved the per-CPU key
            // on before the backup's turn: applied already (a socket never makes the same
            // transition twice in a row). Or the nested one was this socket's next transition,
            // which the primary, no longer running, applied too: then this one is the pair
            // before it (seen in the 6.1 guest: 2 of 50,008 transitions counted twice).
            return;
        }
        count(Counter::BackupHandled);
    }
    if s.flags & ST_IGNORED != 0 {
        return;
    }
    // Every followed transition by kind, for the exporter's transition counters.
    count_transition(old, new);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // CLOSE before a connect, LISTEN before an accepted child's first transition: not stays.
    let stay = old != CLOSE && old != LISTEN;
    if s.state == old {
        if stay {
            // A mask and a bound the verifier can follow (a modulo compiles to a multiply it
            // cannot bound).
            let slot = (old & 0xf) as usize;
            if s.entered_ns != 0 && slot < STATE_SLOTS {
                s.dwell_ns[slot] += now.saturating_sub(s.entered_ns);
                s.known |= bit(old);
            }
            s.visited |= bit(old);
        }
    } else {
        // A transition between them was skipped: both stays lost their exact times.
        count(Counter::Repaired);
        s.flags |= SUMMARY_REPAIRED;
        s.visited |= bit(s.state) | bit(old);
        s.known &= !bit(s.state);
    }
    s.prev = [s.last_old, s.state];
    s.last_old = old;
    s.state = new;
    s.entered_ns = now;
    if new == FIN_WAIT1 {
        // The active close: the socket gets its cookie now, before tcp_time_wait() copies it
        // into the timewait socket. A socket without one hands over 0, and the timewait socket
        // gets a cookie of its own when first asked (a dump, the timer hook), matching no
        // record. Only closers pay the call.
        // <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/inet_timewait_sock.c#L185>
        // SAFETY: `sk_btf` is the tracepoint's typed socket pointer, which this helper accepts.
        unsafe { bpf_get_socket_cookie(sk_btf as *mut c_void) };
    }
    if old == CLOSE {
        // connect() again on a socket whose earlier attempt failed: a new life.
        s.born_ns = now;
        s.flags &= !SUMMARY_BORN_UNSEEN;
    }
    if runs_in_owner_context(old, new) {
        owner(s);
        if new == FIN_WAIT1 || (old == CLOSE_WAIT && new == LAST_ACK) {
            s.flags |= SUMMARY_CLOSER;
        }
    }
    if new == ESTABLISHED || (s.flags & SUMMARY_TUPLE == 0 && new != CLOSE && new != SYN_SENT) {
        tuple(s, Typed(sk_btf), cfg);
    } else if old == SYN_SENT && new == CLOSE {
        // A connect that failed: where to, and whether it ever had a local port.
        connect_tuple(s, Typed(sk_btf), cfg);
    }
    s.undecided = s.undecided.saturating_add(1);
    if s.flags & ST_ADMITTED == 0 && !admit(s, Typed(sk_btf), new, cfg) {
        if s.flags & ST_IGNORED != 0 {
            count(Counter::Filtered);
        }
        if new != CLOSE {
            return;
        }
    }
    if s.flags & ST_ADMITTED != 0 {
        add(Counter::Handled, s.undecided as u64);
        s.undecided = 0;
    }
    if new == CLOSE
        && old == FIN_WAIT2
        && s.flags & (SUMMARY_RESET | SUMMARY_TW_HOOKED) == 0
        && cfg.offsets.sk_flags != 0
    {
        // Which timewait socket this close made. tcp_fin() sets SOCK_DONE before it calls
        // tcp_time_wait(TCP_TIME_WAIT); an orphan handed over when its own FIN was acked
        // (tcp_rcv_state_process, or its FIN_WAIT2 timer) never had the peer's FIN.
        // <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_input.c#L4400>
        s.flags |= SUMMARY_TW_SUBSTATE;
        if Typed(sk_btf).at::<u64>(cfg.offsets.sk_flags) & SOCK_DONE == 0 {
            s.flags |= SUMMARY_TW_FIN_WAIT2;
        } else {
            s.flags &= !SUMMARY_TW_FIN_WAIT2;
        }
    }
    if new == CLOSE_WAIT || new == CLOSE {
        if s.flags & (ST_ADMITTED | ST_IGNORED) != 0 || !emit::filters_ports(cfg) {
            if s.flags & ST_IGNORED == 0 {
                send(s, sk_btf, sk, old, new, cfg);
            }
        } else {
            // Undecided at its close (a connect that never got a local port, to a remote port
            // not asked for): filtered.
            count(Counter::Filtered);
        }
        s.visited = 0;
        s.known = 0;
        // SAFETY: the array's own words (the struct is 8-byte aligned and so is the field).
        unsafe { emit::zero_words(s.dwell_ns.as_mut_ptr(), STATE_SLOTS) };
        if new == CLOSE {
            // Only a failed connect is ever used again (another connect()): it starts afresh.
            s.flags &= ST_INIT;
            s.undecided = 0;
        }
    }
}

/// Fills a new socket's storage. False when it is not followed (filtered by family).
#[inline(always)]
fn first_sight(s: &mut SockState, sk: Typed, old: u8, new: u8, cfg: &ProbeConfig) -> bool {
    let o = &cfg.offsets;
    s.flags = ST_INIT;
    s.state = old;
    s.family = sk.at(o.skc_family);
    s.netns = sock::netns_of(sk, o);
    if cfg.family != 0 && s.family != cfg.family {
        s.flags |= ST_IGNORED;
        count(Counter::Filtered);
        return false;
    }
    let birth = old == CLOSE || (old == LISTEN && new == SYN_RECV);
    if old == LISTEN || old == SYN_RECV {
        // Accepted: even when its listener is gone by the time userspace sees it.
        s.flags |= SUMMARY_PASSIVE;
    }
    if birth {
        // The time is taken again below; the entry time of CLOSE / LISTEN is not a stay.
        // SAFETY: a helper without arguments.
        s.born_ns = unsafe { bpf_ktime_get_ns() };
    } else {
        s.flags |= SUMMARY_BORN_UNSEEN;
    }
    true
}

/// The owner: the task of a syscall-driven transition. Its name and cgroup are read only when
/// the process is not the one already known (a client's close is done by the process that
/// connected): the cgroup id alone costs about 200 ns here.
#[inline(always)]
fn owner(s: &mut SockState) {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if s.flags & SUMMARY_OWNER != 0 && s.pid == pid {
        return;
    }
    s.pid = pid;
    // Straight into the storage: aya's `bpf_get_current_comm()` zeroes and copies a buffer of
    // its own with byte loops. The helper NUL-pads what it writes.
    // SAFETY: the helper writes at most the 16 bytes it is given.
    unsafe { bpf_get_current_comm(s.comm.as_mut_ptr() as *mut c_void, s.comm.len() as u32) };
    // SAFETY: a helper without arguments.
    s.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    s.flags |= SUMMARY_OWNER;
}

/// Reads the 4-tuple while the socket holds it (its local port is gone at CLOSE).
#[inline(always)]
fn tuple(s: &mut SockState, sk: Typed, cfg: &ProbeConfig) {
    let o = &cfg.offsets;
    s.sport = sk.at(o.skc_num);
    s.dport = u16::from_be(sk.at(o.skc_dport));
    if s.family == AF_INET6 {
        s.saddr = sk.addr16(o.skc_v6_rcv_saddr);
        s.daddr = sk.addr16(o.skc_v6_daddr);
    } else if s.family == AF_INET {
        s.saddr[..4].copy_from_slice(&sock::addr4(sk, o.skc_rcv_saddr));
        s.daddr[..4].copy_from_slice(&sock::addr4(sk, o.skc_daddr));
    }
    if s.sport != 0 && s.dport != 0 {
        s.flags |= SUMMARY_TUPLE;
    }
}

/// The 4-tuple of a connect that ends in SYN_SENT -> CLOSE (refused, timed out, or no local
/// port left). `skc_num` is already 0 here (`tcp_set_state` releases the port before the
/// tracepoint); `inet_sport`, set when `inet_hash_connect` picked a port, is not cleared.
/// <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_ipv4.c#L295>
#[inline(always)]
fn connect_tuple(s: &mut SockState, sk: Typed, cfg: &ProbeConfig) {
    tuple(s, sk, cfg);
    let o = &cfg.offsets;
    if o.inet_sport != 0 {
        s.sport = u16::from_be(sk.outer(o.inet_sport));
        if s.sport == 0 {
            s.flags |= SUMMARY_NO_LOCAL_PORT;
        }
    }
}

/// The port filter, decided once per socket: by its remote port as soon as it is known (a
/// connect's), by its local port once it has one. True when admitted.
#[inline(always)]
fn admit(s: &mut SockState, sk: Typed, new: u8, cfg: &ProbeConfig) -> bool {
    if !emit::filters_ports(cfg) {
        s.flags |= ST_ADMITTED;
        return true;
    }
    let dport = if s.dport != 0 {
        s.dport
    } else if new != CLOSE {
        u16::from_be(sk.at(cfg.offsets.skc_dport))
    } else {
        0
    };
    // SAFETY: the values are plain bytes; a concurrent update at worst gives the old value.
    let remote = unsafe { PORTS.get(dport) }.copied().unwrap_or(0) & PORT_MATCH_REMOTE != 0;
    let local = s.sport != 0
        // SAFETY: as above.
        && unsafe { PORTS.get(s.sport) }.copied().unwrap_or(0) & PORT_MATCH_LOCAL != 0;
    if remote || local {
        s.flags |= ST_ADMITTED;
        return true;
    }
    if s.sport != 0 && dport != 0 {
        s.flags |= ST_IGNORED;
    }
    false
}

/// Writes the record straight into the ring (no copy on the 512-byte stack).
#[inline(always)]
fn send(s: &SockState, sk_btf: *const c_void, sk: u64, old: u8, new: u8, cfg: &ProbeConfig) {
    if counting_mode() {
        // `TRANSITIONS` already has every transition in summary mode.
        count(Counter::Counted);
        return;
    }
    let Some(reserved) = Reserved::<SockSummary>::new() else {
        count(Counter::ReserveFailed);
        count(Counter::SummaryReserveFailed);
        return;
    };
    let r = reserved.record;
    // SAFETY: `r` points at a reserved record of our size; every field but the time is written
    // below, and `submit` stamps the time after the reservation, as every record's is (see
    // `rings`): the stays were measured up to the transition's time, a little earlier.
    unsafe {
        (*r).born_ns = s.born_ns;
        // The cookie is read here, once per record: an accepted socket has none until after its
        // first transition.
        (*r).cookie = bpf_get_socket_cookie(sk_btf as *mut c_void);
        (*r).skaddr = sk;
        (*r).cgroup_id = s.cgroup_id;
        // Word copies, not array assignments (see `emit::copy_words`). The arrays sit at
        // 8-byte-aligned offsets of both 8-byte-aligned structs (asserted here and in the common
        // crate); a ring record starts 8-byte aligned.
        emit::copy_words((*r).dwell_ns.as_mut_ptr(), s.dwell_ns.as_ptr(), STATE_SLOTS);
        emit::copy_words((*r).comm.as_mut_ptr().cast(), s.comm.as_ptr().cast(), 2);
        emit::copy_words((*r).saddr.as_mut_ptr().cast(), s.saddr.as_ptr().cast(), 2);
        emit::copy_words((*r).daddr.as_mut_ptr().cast(), s.daddr.as_ptr().cast(), 2);
        (*r).netns = s.netns;
        (*r).pid = s.pid;
        (*r).sport = s.sport;
        (*r).dport = s.dport;
        (*r).family = s.family;
        (*r).visited = s.visited;
        (*r).known = s.known;
        let mut flags = (s.flags & RECORD_FLAGS) | SUMMARY_HAS_COOKIE;
        if runs_in_owner_context(old, new)
            || (old == SYN_SENT
                && new == CLOSE
                && s.flags & SUMMARY_OWNER != 0
                && (bpf_get_current_pid_tgid() >> 32) as u32 == s.pid)
        {
            // A failed connect ends in the caller's connect() only when no port was left.
            flags |= SUMMARY_OWNER_CONTEXT;
        }
        // Read at the close itself, not kept in the storage (whose spare flag bits are taken):
        // the hook on `tcp_time_wait` runs before the kernel tries to make a timewait socket.
        if timewait_made::refused::<{ timewait_made::LOOK_BTF }>(Typed(sk_btf), old, new, cfg) {
            flags |= SUMMARY_NO_TIMEWAIT;
        }
        (*r).flags = flags;
        (*r).err = if new == CLOSE && cfg.offsets.sk_err != 0 {
            Typed(sk_btf).at::<i32>(cfg.offsets.sk_err) as u16
        } else {
            0
        };
        (*r).oldstate = old;
        (*r).newstate = new;
        (*r)._pad = [0; 8];
    }
    // SAFETY: the reservation above, written whole.
    unsafe { emit::commit(reserved, cfg) };
}

/// `tcp_time_wait(sk, substate)`: the close that follows hands the connection to a timewait
/// socket in `substate`. Noted in the storage for the close record, instead of an event of its
/// own; false when the socket has no storage (not followed since its birth: the event goes out).
#[inline(always)]
pub fn timewait_entered(sk_btf: *const c_void, substate: u8) -> bool {
    let st = storage(sk_btf, false);
    if st.is_null() {
        return false;
    }
    // SAFETY: this socket's storage, valid while the program runs.
    let s = unsafe { &mut *st };
    if s.flags & ST_INIT == 0 {
        return false;
    }
    s.flags |= SUMMARY_TW_HOOKED;
    if substate == FIN_WAIT2 {
        s.flags |= SUMMARY_TW_FIN_WAIT2;
    } else {
        s.flags &= !SUMMARY_TW_FIN_WAIT2;
    }
    true
}

/// `tcp_receive_reset`: the RST that is about to close the socket, remembered so its close
/// record says so (a FIN_WAIT2 -> CLOSE by RST leaves no TIME_WAIT).
#[inline(always)]
pub fn reset_received(sk_btf: *const c_void) {
    let st = storage(sk_btf, false);
    if !st.is_null() {
        // SAFETY: this socket's storage, valid while the program runs.
        unsafe { (*st).flags |= SUMMARY_RESET };
    }
}
