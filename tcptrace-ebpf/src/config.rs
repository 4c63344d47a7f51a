//! Load-time configuration and the maps every program shares.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
pub use tcptrace_common::counter::Counter;
use tcptrace_common::{
    config::{
        MAX_FILTER_PORTS, MODE_RING_FILLED, ProbeConfig, ResetTpLayout, SetStateTpLayout,
        TwLookupConfig, TwTimerConfig,
    },
    counter::{COUNTER_SLOTS, TRANSITION_SLOTS, transition_slot},
};

/// Filled by userspace before load (`EbpfLoader::override_global`); read-only afterwards, so the
/// verifier sees constants and prunes disabled filters.
#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig {
    offsets: tcptrace_common::config::SockOffsets {
        skc_daddr: 0,
        skc_rcv_saddr: 0,
        skc_dport: 0,
        skc_num: 0,
        skc_family: 0,
        skc_v6_daddr: 0,
        skc_v6_rcv_saddr: 0,
        skc_net: 0,
        net_ns_inum: 0,
        sk_protocol: 0,
        sk_protocol_size: 0,
        sk_err: 0,
        inet_sport: 0,
        sk_flags: 0,
    },
    family: 0,
    port_filter: 0,
    no_wakeup: 1,
    wakeup_bytes: 0,
    guard_bytes: 0,
    tp_set_state: SetStateTpLayout {
        skaddr: 0,
        oldstate: 0,
        newstate: 0,
        sport: 0,
        dport: 0,
        family: 0,
        protocol: 0,
        protocol_size: 0,
        saddr: 0,
        daddr: 0,
        saddr_v6: 0,
        daddr_v6: 0,
        validated: 0,
        _pad: 0,
    },
    tp_reset_rx: EMPTY_RESET_LAYOUT,
    tp_reset_tx: EMPTY_RESET_LAYOUT,
    summary: 0,
    _pad: [0; 7],
    tw_timer: TwTimerConfig {
        handler: 0,
        tw_timer: 0,
        skc_cookie: 0,
        tp_timer: 0,
        tp_function: 0,
        validated: 0,
        _pad: 0,
    },
    tw_lookup: TwLookupConfig {
        net_death_row: 0,
        death_row_hashinfo: 0,
        hashinfo_ehash: 0,
        hashinfo_ehash_mask: 0,
        bucket_size: 0,
        skc_hash: 0,
        skc_state: 0,
        skc_nulls_node: 0,
        death_row_is_pointer: 0,
        validated: 0,
        _pad: [0; 6],
    },
};

const EMPTY_RESET_LAYOUT: ResetTpLayout = ResetTpLayout {
    skaddr: 0,
    sport: 0,
    dport: 0,
    family: 0,
    saddr: 0,
    daddr: 0,
    saddr_v6: 0,
    daddr_v6: 0,
    sock_cookie: 0,
    flags: 0,
    validated: 0,
    _pad: 0,
};

/// The configuration. Userspace rewrites the global before load, so the compiler must not fold
/// its initial value in; but copying all 160 bytes on every run (a volatile read of the whole
/// struct) cost a load per field. Only the address is hidden from the optimiser: each field
/// read is then one load from the frozen `.rodata` map, whose values the verifier knows, so it
/// still prunes the branches of disabled features.
#[inline(always)]
pub fn config() -> &'static ProbeConfig {
    core::hint::black_box(&CONFIG)
}

/// Only the timer hook's part of `CONFIG`. That program runs for every kernel timer, so its
/// early return reads these 24 bytes instead of copying the whole configuration.
#[inline(always)]
pub fn tw_timer_config() -> TwTimerConfig {
    // SAFETY: as in `config`.
    unsafe { core::ptr::read_volatile(&CONFIG.tw_timer) }
}

/// Per-CPU counters userspace reads: see [`Counter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Ports the user asked for: value bits are `PORT_MATCH_LOCAL` / `PORT_MATCH_REMOTE`.
#[map]
pub static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_FILTER_PORTS, 0);

/// Sockets (cookie, or kernel address on the classic path) that passed the port filter, so their
/// closing event, which no longer carries the local port, passes too. LRU: bounded, and a socket
/// whose close was never seen ages out.
#[map]
pub static ADMITTED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// Slot 0: `MODE_COUNTING` when userspace switched to counting mode because the event rate
/// exceeded its budget, `MODE_RING_FILLED` when the kernel did because a ring filled (see
/// `emit::wakeup_flags`). Events are then counted per transition in `TRANSITIONS` and not
/// sent: the host is protected, nothing is dropped silently, and the kernel table keeps the
/// counts exact.
#[map]
pub static MODE: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU counts of transitions by `transition_slot(old, new)` (resets at 0), in counting mode.
#[map]
pub static TRANSITIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TRANSITION_SLOTS, 0);

#[inline(always)]
pub fn counting_mode() -> bool {
    MODE.get(0).copied().unwrap_or(0) != 0
}

/// The kernel's own switch to counting mode; only userspace switches back.
#[inline(always)]
pub fn count_from_now() {
    if let Some(m) = MODE.get_ptr_mut(0) {
        // SAFETY: slot 0 of an array map; a racing store of the same kind is harmless.
        unsafe { *m = MODE_RING_FILLED };
    }
}

#[inline(always)]
pub fn count_transition(old: u8, new: u8) {
    if let Some(p) = TRANSITIONS.get_ptr_mut(transition_slot(old, new)) {
        add_n(p, 1);
    }
}

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c.slot()) {
        add_n(p, 1);
    }
}

#[inline(always)]
pub fn add(c: Counter, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(c.slot()) {
        add_n(p, n);
    }
}

/// An atomic add (`lock xadd`), not `*p += 1`: a per-CPU slot is not private to one program.
/// The kernel skips a nested run of the *same* program, but the backup runs nested inside the
/// primary (that is its job), and both count ring-full reservations in the same slot. A softirq
/// landing between the primary's load and store would lose the backup's increment: a lost event
/// that is never counted. (Found while chasing such a CI failure, which had another cause.)
/// Written as the instruction itself: the BPF target has no compare-and-swap, so core's
/// atomics are not offered on it, but the plain atomic add (without fetch) is accepted by every
/// kernel that runs BPF.
#[inline(always)]
fn add_n(p: *mut u64, n: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: `p` points into a map value, valid and 8-byte aligned while the program runs.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {n}",
            p = in(reg) p,
            n = in(reg) n,
            options(nostack)
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    let _ = (p, n);
}
