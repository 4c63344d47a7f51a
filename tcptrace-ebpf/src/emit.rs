//! Filling the task fields, applying the in-kernel filters, and handing records to userspace.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, generated::bpf_get_current_comm,
    },
    macros::map,
    maps::PerCpuArray,
};
use tcptrace_common::{
    EventKind, TcpState,
    config::{PORT_FILTER_ON, PORT_MATCH_LOCAL, PORT_MATCH_REMOTE, ProbeConfig},
    event::{FLAG_FROM_BACKUP, FLAG_OWNER_CONTEXT, RAW_EVENT_SIZE, RawEvent},
};

use crate::{
    config::{self, ADMITTED, Counter, PORTS, count, count_transition, counting_mode},
    rings::{Reserved, Ring},
};

/// Zeroes `slot` in place with 13 word stores and returns it as a record. `RawEvent::zeroed()`
/// compiles to a call of `memset`, which aya-ebpf implements as a byte loop (BPF has no such
/// instruction): 104 iterations per event, 1.4% of the whole host's CPU in a storm profile
/// (`perf record -a`, symbol `bpf_prog_*_memset`), two thirds of what the state-change program
/// itself took. In place, because returning the record by value lets LLVM see the copy is all
/// zeros and turn it back into a `memset`.
#[inline(always)]
pub fn blank(slot: &mut core::mem::MaybeUninit<RawEvent>) -> &mut RawEvent {
    // SAFETY: the slot is a RawEvent's (its size a multiple of 8, asserted in the common crate,
    // its alignment 8); all-zero is a valid RawEvent.
    unsafe { blank_at(slot.as_mut_ptr()) }
}

/// [`blank`] anywhere, such as a record reserved in a ring: written there directly instead of
/// built on the stack and copied in (13 loads and 13 stores less per record).
///
/// # Safety
/// `record` must be valid for a `RawEvent` and 8-byte aligned (ring records are).
#[inline(always)]
pub unsafe fn blank_at<'a>(record: *mut RawEvent) -> &'a mut RawEvent {
    // SAFETY: per the caller; all-zero is a valid RawEvent.
    unsafe {
        zero_words(record.cast(), RAW_EVENT_SIZE / 8);
        &mut *record
    }
}

/// Copies `words` 8-byte words from `src` to `dst`, one load and one store each. An array
/// assignment compiles to a call of `memmove`/`memcpy`, which aya-ebpf implements as a byte
/// loop: a summary record's four arrays (152 bytes) cost ~600 instructions that way.
///
/// # Safety
/// Both must be valid and 8-byte aligned for `words` words.
#[inline(always)]
pub unsafe fn copy_words(dst: *mut u64, src: *const u64, words: usize) {
    let mut i = 0;
    while i < words {
        // SAFETY: within both ranges, per the caller; volatile so LLVM cannot turn the loop back
        // into a `memcpy` call.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        i += 1;
    }
}

/// Zeroes `words` 8-byte words at `dst` (see [`copy_words`] and [`blank`] for why not `memset`).
///
/// # Safety
/// `dst` must be valid and 8-byte aligned for `words` words.
#[inline(always)]
pub unsafe fn zero_words(dst: *mut u64, words: usize) {
    let mut i = 0;
    while i < words {
        // SAFETY: within the range, per the caller; volatile as in `blank`.
        unsafe { dst.add(i).write_volatile(0) };
        i += 1;
    }
}

/// Fills the current task (the time is stamped at submission, after the reservation: see
/// `rings`). The task is only the socket's owner for some transitions (`owner`, sent as
/// `FLAG_OWNER_CONTEXT`), and userspace never trusts it otherwise.
///
/// Its name and cgroup are read only then: 7 of a connection's 10 transitions run in softirq,
/// where the current task is whoever was interrupted. (bpftrace's classic tracepoint measured
/// `bpf_get_current_cgroup_id` at ~180 ns, BENCHMARKS.md's helper table; from this tp_btf
/// program, alternated at 40k conn/s, leaving it out changed nothing measurable: primary
/// 239-255 ns with it, 227-253 without.) The pid is kept for every event (2 ns): a failed
/// connect compares it with its owner's.
#[inline(always)]
pub fn fill_task(ev: &mut RawEvent, owner: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    if owner {
        ev.flags |= FLAG_OWNER_CONTEXT;
        // Straight into the record: aya's `bpf_get_current_comm()` zeroes a buffer of its own
        // first (another byte-loop `memset`). The helper NUL-pads what it writes.
        // SAFETY: the helper writes at most the 16 bytes it is given.
        unsafe { bpf_get_current_comm(ev.comm.as_mut_ptr() as *mut c_void, ev.comm.len() as u32) };
        // SAFETY: as above.
        ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    }
}

/// Family and port filters.
///
/// Ports alone cannot decide two kinds of events, because the kernel has not chosen the local
/// port yet or has already released it:
/// - CLOSE->SYN_SENT in `connect()`: the port is picked after the transition (see
///   `tcp_v4_connect()`, <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_ipv4.c#L283>).
///   It passes when its remote port matches.
/// - X->CLOSE: `tcp_set_state()` unhashes the socket and releases the port first (`skc_num`
///   says 0). On the typed path the event then carries `inet_sport`, which keeps the port
///   (`state_change::released_port`); the classic tracepoint's `sport` is `inet_sport` already.
///   Otherwise (a socket that never had a port) it passes when the same socket passed before,
///   which `ADMITTED` remembers.
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
    if !filters_ports(cfg) {
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
        // Looked up first: an LRU update allocates a node and frees the old one even when the
        // key is there, and every event of an admitted socket passes here.
        // SAFETY: as above.
        if unsafe { ADMITTED.get(key) }.is_none() && ADMITTED.insert(key, 1, 0).is_err() {
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

/// In counting mode (the overload guard) with no family or port filter, a transition is only
/// counted, so the state-change programs count it before reading a single socket field or
/// asking for the time and the task: that path then costs what counting `(old, new)` in a map
/// costs, which is the point of the guard. (With a filter the fields decide whether it counts.)
#[inline(always)]
pub fn counts_without_fields(cfg: &ProbeConfig) -> bool {
    unfiltered(cfg) && counting_mode()
}

/// A port filter is on.
#[inline(always)]
pub fn filters_ports(cfg: &ProbeConfig) -> bool {
    cfg.port_filter & PORT_FILTER_ON != 0
}

/// No family or port filter: every TCP transition is wanted.
#[inline(always)]
fn unfiltered(cfg: &ProbeConfig) -> bool {
    cfg.family == 0 && !filters_ports(cfg)
}

/// Every TCP transition is sent (no family or port filter, not counting): the state-change
/// programs then reserve the record first and fill it in the ring (see [`blank_at`]), as
/// nothing can decide against sending it once it is built.
#[inline(always)]
pub fn sends_every_transition(cfg: &ProbeConfig) -> bool {
    unfiltered(cfg) && !counting_mode()
}

/// A state-change record (or a reset's, which [`submit`] counts once more) that could not be
/// reserved.
#[inline(always)]
pub fn reserve_failed(from_backup: bool) {
    count(Counter::ReserveFailed);
    if from_backup {
        count(Counter::BackupReserveFailed);
    }
}

/// Submits a record, with the wakeup its ring's fill asks for.
///
/// # Safety
/// Every byte of the record after its time must have been written.
#[inline(always)]
pub unsafe fn commit<T>(r: Reserved<T>, cfg: &ProbeConfig) {
    let flags = wakeup_flags(r.ring, cfg);
    // SAFETY: per the caller.
    unsafe { r.submit(flags) };
}

/// Counts a transition in counting mode instead of sending it.
#[inline(always)]
pub fn count_instead(old: u8, new: u8, from_backup: bool) {
    if from_backup {
        // A run the primary missed, handled here by counting: not lost.
        count(Counter::BackupDiscarded);
    }
    count(Counter::Counted);
    count_transition(old, new);
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
        count_instead(ev.oldstate, ev.newstate, ev.flags & FLAG_FROM_BACKUP != 0);
        return;
    }
    let Some(r) = Reserved::<RawEvent>::new() else {
        if ev.kind == EventKind::TimeWaitEnter as u8 || ev.kind == EventKind::TimeWaitEnd as u8 {
            count(Counter::TimewaitReserveFailed);
            return;
        }
        reserve_failed(ev.flags & FLAG_FROM_BACKUP != 0);
        if ev.kind == EventKind::ResetReceived as u8 || ev.kind == EventKind::ResetSent as u8 {
            count(Counter::ResetReserveFailed);
        }
        return;
    };
    // SAFETY: `r.record` is a reservation of a RawEvent (8-byte aligned, as ring records are),
    // written whole here; `Reserved::submit` stamps its time.
    unsafe {
        copy_words(
            r.record.cast(),
            (ev as *const RawEvent).cast(),
            RAW_EVENT_SIZE / 8,
        );
        commit(r, cfg);
    }
}

/// Records submitted on this CPU, so that the fill level is asked for only every
/// [`QUERY_EVERY`]th one.
#[map]
static SUBMITTED: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// `bpf_ringbuf_query(BPF_RB_AVAIL_DATA)` reads the consumer position, a cache line the reader
/// writes on another CPU: per record it took 1.6% of the host's CPU in a storm profile, more
/// than the state-change program itself. The forced wakeup waits for half the ring, so checking
/// every 64th record per CPU is late by at most 64 records (6.5 KiB) per CPU.
const QUERY_EVERY: u32 = 64;

/// No wakeup per record; a forced one once enough data waits (see [`submit`]). The same look
/// at the fill level is the overload guard's last line: a ring `guard_bytes` full means the
/// reader has fallen behind (a long gap between its drains, or a rate it cannot apply), and the
/// kernel switches itself to counting before the ring refuses a record. Userspace learns it
/// from `MODE` at its next check (a few times a second); waiting for its once-a-second rate
/// check lost records at ~900k events/s, the rings full within ~100 ms of a slow drain.
#[inline(always)]
fn wakeup_flags(ring: Ring, cfg: &ProbeConfig) -> u64 {
    let Some(n) = SUBMITTED.get_ptr_mut(0) else {
        return BPF_RB_NO_WAKEUP as u64;
    };
    // SAFETY: this CPU's slot; programs on one CPU do not run at once except nested, where a
    // lost increment only moves the next check by one record.
    let k = unsafe { *n };
    unsafe { *n = k.wrapping_add(1) };
    let wake = if cfg.no_wakeup == 0 {
        0
    } else {
        BPF_RB_NO_WAKEUP as u64
    };
    if k % QUERY_EVERY != 0 || (cfg.guard_bytes == 0 && cfg.wakeup_bytes == 0) {
        return wake;
    }
    let fill = ring.fill();
    if cfg.guard_bytes != 0 && fill >= cfg.guard_bytes as u64 {
        config::count_from_now();
    }
    if wake != 0 && cfg.wakeup_bytes != 0 && fill >= cfg.wakeup_bytes as u64 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        wake
    }
}
