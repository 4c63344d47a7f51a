//! Filling the task fields, applying the in-kernel filters, and handing records to userspace.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
};
use tcptrace_common::{
    EventKind, TcpState,
    config::{PORT_FILTER_ON, PORT_MATCH_LOCAL, PORT_MATCH_REMOTE, ProbeConfig},
    event::{FLAG_FROM_BACKUP, RawEvent},
};

use crate::config::{ADMITTED, Counter, EVENTS, PORTS, count, count_transition, counting_mode};

/// Stamps the time and the current task. The task is only the socket's owner for some
/// transitions; `FLAG_OWNER_CONTEXT` says which, and userspace never trusts it otherwise.
#[inline(always)]
pub fn fill_task(ev: &mut RawEvent) {
    // SAFETY: helpers without pointer arguments.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.comm = bpf_get_current_comm().unwrap_or_default();
    // SAFETY: as above.
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
}

/// Family and port filters.
///
/// Ports alone cannot decide two kinds of events, because the kernel has not chosen the local
/// port yet or has already released it:
/// - CLOSE->SYN_SENT in `connect()`: the port is picked after the transition (see
///   `tcp_v4_connect()`, <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_ipv4.c#L283>).
///   It passes when its remote port matches.
/// - X->CLOSE: `tcp_set_state()` unhashes the socket and releases the port first (the event says
///   0). It passes when the same socket passed before, which `ADMITTED` remembers.
///
/// So the kernel filter is exact: userspace sees every event of the sockets it asked for and
/// nothing else, and lost-event counts stay comparable with what was generated.
///
/// An accepted child's first event has no cookie yet (see `state_change::on_btf`), so its
/// admission starts under its address and moves to its cookie with the next event. Left behind,
/// address keys would fill the LRU on a busy port and age out the admission of long-lived
/// connections, whose close would then be filtered without a count.
#[inline(always)]
pub fn wanted(ev: &RawEvent, cfg: &ProbeConfig) -> bool {
    if cfg.family != 0 && ev.family != cfg.family {
        return false;
    }
    if cfg.port_filter & PORT_FILTER_ON == 0 {
        return true;
    }
    let key = if ev.cookie != 0 { ev.cookie } else { ev.skaddr };
    // The end of a timewait socket closes its admission like a ->CLOSE (its ports are still
    // set, so it passes on them).
    let closing = (ev.kind == EventKind::StateChange as u8 && ev.newstate == TcpState::Close as u8)
        || ev.kind == EventKind::TimeWaitEnd as u8;
    // SAFETY: the values are plain bytes; a concurrent update at worst gives the old value.
    let remote = unsafe { PORTS.get(ev.dport) }.copied().unwrap_or(0) & PORT_MATCH_REMOTE != 0;
    let matched = if ev.sport == 0 {
        // SAFETY: as above.
        remote
            || unsafe { ADMITTED.get(key) }.is_some()
            || (ev.cookie != 0 && unsafe { ADMITTED.get(ev.skaddr) }.is_some())
    } else {
        // SAFETY: as above.
        remote || unsafe { PORTS.get(ev.sport) }.copied().unwrap_or(0) & PORT_MATCH_LOCAL != 0
    };
    if matched && !closing {
        // A failed update of a key already present is harmless (the entry stays).
        // SAFETY: as above.
        if ADMITTED.insert(key, 1, 0).is_err() && unsafe { ADMITTED.get(key) }.is_none() {
            count(Counter::AdmitFailed);
        }
    } else if closing {
        let _ = ADMITTED.remove(key);
    }
    let child_named = ev.kind == EventKind::StateChange as u8
        && ev.oldstate == TcpState::SynRecv as u8
        && ev.cookie != 0;
    if child_named || (closing && ev.cookie != 0) {
        let _ = ADMITTED.remove(ev.skaddr);
    }
    matched
}

/// Copies the record into the ring buffer without waking the reader, unless enough data waits.
///
/// Waking userspace per event raises an irq_work IPI per event: it slows the host several-fold
/// and opens the window in which nested softirq transitions are skipped (see the guide). The
/// reader polls on a short timer instead; a wakeup is forced only when the ring is filling up.
#[inline(always)]
pub fn submit(ev: &RawEvent, cfg: &ProbeConfig) {
    if !wanted(ev, cfg) {
        count(Counter::Filtered);
        if ev.flags & FLAG_FROM_BACKUP != 0 {
            count(Counter::BackupDiscarded);
        }
        return;
    }
    if counting_mode() {
        if ev.kind == EventKind::TimeWaitEnter as u8 || ev.kind == EventKind::TimeWaitEnd as u8 {
            // Not transitions: while counting, TIME_WAIT is inferred from the kernel table.
            return;
        }
        if ev.flags & FLAG_FROM_BACKUP != 0 {
            // A run the primary missed, handled here by counting: not lost.
            count(Counter::BackupDiscarded);
        }
        count(Counter::Counted);
        count_transition(ev.oldstate, ev.newstate);
        return;
    }
    if EVENTS.output::<RawEvent>(ev, wakeup_flags(cfg)).is_err() {
        if ev.kind == EventKind::TimeWaitEnter as u8 || ev.kind == EventKind::TimeWaitEnd as u8 {
            count(Counter::TimewaitReserveFailed);
            return;
        }
        count(Counter::ReserveFailed);
        if ev.flags & FLAG_FROM_BACKUP != 0 {
            count(Counter::BackupReserveFailed);
        }
        if ev.kind == EventKind::ResetReceived as u8 || ev.kind == EventKind::ResetSent as u8 {
            count(Counter::ResetReserveFailed);
        }
    }
}

/// No wakeup per record; a forced one once enough data waits (see [`submit`]).
#[inline(always)]
pub fn wakeup_flags(cfg: &ProbeConfig) -> u64 {
    if cfg.no_wakeup == 0 {
        0
    } else if cfg.wakeup_bytes != 0
        && EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= cfg.wakeup_bytes as u64
    {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}
