//! Load-time configuration of the kernel programs: filters, kernel structure offsets and
//! tracepoint record layouts.
//!
//! Userspace fills one [`ProbeConfig`] before load (an `.rodata` global), so disabled filters cost
//! one predictable branch and unwanted events never reach the ring buffer.

/// Bits in the values of the `PORTS` map.
pub const PORT_MATCH_LOCAL: u8 = 1 << 0;
pub const PORT_MATCH_REMOTE: u8 = 1 << 1;
/// Bit of `ProbeConfig::port_filter`: a port filter is set.
pub const PORT_FILTER_ON: u8 = 1 << 0;
/// Most ports a filter may name; the kernel map has this many slots.
pub const MAX_FILTER_PORTS: u32 = 64;

/// Most CPUs the per-CPU rings provide for (the outer map's size in the object; userspace
/// sets it to the possible CPUs at load). Linux's own default `NR_CPUS` on x86-64 is 8192 at
/// most in distribution kernels; beyond this many, loading fails with a clear error.
pub const MAX_CPUS: usize = 8192;

/// `MODE` slot 0: counting because userspace's overload guard said so (rate over budget, or
/// records refused).
pub const MODE_COUNTING: u32 = 1;
/// `MODE` slot 0: counting because the kernel found a CPU's ring `guard_bytes` full.
pub const MODE_RING_FILLED: u32 = 2;

/// Offsets into `struct sock`, read from the running kernel's BTF at load time. Rust eBPF programs
/// get no CO-RE relocations, so userspace resolves these and the tp_btf programs read fields with
/// `bpf_probe_read_kernel` at `sk + offset`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockOffsets {
    /// `sock_common.skc_daddr` (u32, network order).
    pub skc_daddr: u32,
    /// `sock_common.skc_rcv_saddr` (u32, network order).
    pub skc_rcv_saddr: u32,
    /// `sock_common.skc_dport` (u16, network order).
    pub skc_dport: u32,
    /// `sock_common.skc_num` (u16, host order: the local port).
    pub skc_num: u32,
    /// `sock_common.skc_family` (u16).
    pub skc_family: u32,
    /// `sock_common.skc_v6_daddr` (16 bytes).
    pub skc_v6_daddr: u32,
    /// `sock_common.skc_v6_rcv_saddr` (16 bytes).
    pub skc_v6_rcv_saddr: u32,
    /// `sock_common.skc_net` (pointer to `struct net`).
    pub skc_net: u32,
    /// `net.ns.inum` (u32): offset inside `struct net`.
    pub net_ns_inum: u32,
    /// `sock.sk_protocol` (u16 since 5.6; u8 bitfield before, see `sk_protocol_size`).
    pub sk_protocol: u32,
    /// Size in bytes of `sk_protocol` (1 or 2).
    pub sk_protocol_size: u32,
    /// `sock.sk_err` (int): why a connect failed. 0 when unknown (not read).
    pub sk_err: u32,
    /// `inet_sock.inet_sport` (u16, network order): the local port `connect()` picked, which
    /// unlike `skc_num` survives the release of the port at ->CLOSE. 0 when unknown (not read).
    pub inet_sport: u32,
    /// `sock.sk_flags`, i.e. `__sk_common.skc_flags` (unsigned long): `SOCK_DONE` is set once the peer's FIN arrived (and
    /// `close()` does not set it, unlike `sk_shutdown`'s `RCV_SHUTDOWN`). Tells the substate of the timewait socket
    /// a FIN_WAIT2 -> CLOSE made, where no fentry hook says it. 0 when unknown (not read).
    pub sk_flags: u32,
}

/// Where the classic `sock:inet_sock_set_state` tracepoint puts each field of its record, read
/// from the event's tracefs `format` file at load time. All values are byte offsets into the
/// record (which starts with the 8-byte common header), except the sizes and flags.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SetStateTpLayout {
    /// `const void *skaddr` (8 bytes).
    pub skaddr: u16,
    /// `int oldstate`, `int newstate` (4 bytes each).
    pub oldstate: u16,
    pub newstate: u16,
    /// `__u16 sport`, `__u16 dport`: host byte order.
    pub sport: u16,
    pub dport: u16,
    /// `__u16 family`.
    pub family: u16,
    /// `protocol`: `__u16` since 5.6 (commit bf9765145b85, with `sk_protocol`), `__u8` before;
    /// its size is `protocol_size`.
    pub protocol: u16,
    pub protocol_size: u16,
    /// `__u8 saddr[4]`, `__u8 daddr[4]` (network order).
    pub saddr: u16,
    pub daddr: u16,
    /// `__u8 saddr_v6[16]`, `__u8 daddr_v6[16]` (v4-mapped for AF_INET sockets).
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// 1 once userspace has checked every field's size; 0 (the default) means "not filled".
    pub validated: u16,
    pub _pad: u16,
}

/// [`ResetTpLayout::flags`]: the record has a `family` field (older `tcp_event_sk` records
/// do not; the address family must then be inferred from the addresses).
pub const RESET_TP_HAS_FAMILY: u16 = 1 << 0;
/// [`ResetTpLayout::flags`]: the record has `__u64 sock_cookie` at `sock_cookie`.
pub const RESET_TP_HAS_SOCK_COOKIE: u16 = 1 << 1;
/// [`ResetTpLayout::flags`]: addresses and ports come from `struct sockaddr_in`/`sockaddr_in6`
/// images (`tcp_send_reset` since 6.10): `sport`/`dport` are in network byte order, `family`
/// is `sa_family`, and `skaddr` may be 0 (a reset sent for an skb with no socket).
pub const RESET_TP_SOCKADDR: u16 = 1 << 2;

/// Where the classic `tcp:tcp_receive_reset` / `tcp:tcp_send_reset` tracepoints put each field
/// of their records (byte offsets into the record), from their tracefs `format` files.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ResetTpLayout {
    /// `const void *skaddr` (8 bytes).
    pub skaddr: u16,
    /// Ports (2 bytes each): host order unless `RESET_TP_SOCKADDR`.
    pub sport: u16,
    pub dport: u16,
    /// `__u16 family`; meaningful only with `RESET_TP_HAS_FAMILY`.
    pub family: u16,
    /// IPv4 addresses (4 bytes each, network order).
    pub saddr: u16,
    pub daddr: u16,
    /// IPv6 addresses (16 bytes each).
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// `__u64 sock_cookie`; meaningful only with `RESET_TP_HAS_SOCK_COOKIE`.
    pub sock_cookie: u16,
    /// `RESET_TP_*` bits.
    pub flags: u16,
    /// 1 once userspace has checked every field's size; 0 (the default) means "not filled".
    pub validated: u16,
    pub _pad: u16,
}

/// The exact end of a timewait socket where fentry is refused: `timer:timer_expire_entry` runs
/// for every expiring timer-wheel timer, and a timewait socket's timer (`tw_timer`, embedded in
/// `struct inet_timewait_sock`, handler `tw_timer_handler`) expiring is its end.
/// <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/inet_timewait_sock.c#L148>
/// <https://github.com/torvalds/linux/blob/v6.1/include/trace/events/timer.h#L86>
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TwTimerConfig {
    /// Address of `tw_timer_handler`, from /proc/kallsyms: the record's `function` for the
    /// timers of timewait sockets.
    pub handler: u64,
    /// `offsetof(struct inet_timewait_sock, tw_timer)`, from BTF: the record's `timer` minus
    /// this is the timewait socket.
    pub tw_timer: u32,
    /// `offsetof(struct inet_timewait_sock, __tw_common.skc_cookie)` (8 bytes): the socket
    /// cookie, which `inet_twsk_alloc` copies from the full socket.
    pub skc_cookie: u32,
    /// Record offsets of `void *timer` and `void *function` (8 bytes each), from the format file.
    pub tp_timer: u16,
    pub tp_function: u16,
    /// 1 once userspace filled every field; 0 (the default) keeps the program inert.
    pub validated: u16,
    pub _pad: u16,
}

/// Bytes of a `sock_common` the timewait lookup reads at once: `skc_hash`, `skc_dport`,
/// `skc_state` and `skc_net` lie within them on every kernel so far (`skc_net` at 48 on
/// 64-bit); userspace turns the lookup off where they do not.
pub const SOCK_COMMON_HEAD: u32 = 56;

/// Where a timewait socket made at a FIN_WAIT2 / CLOSING -> CLOSE would be: at the head of its
/// chain in the kernel's established hash, which the program looks through at the close (see
/// `tcptrace-ebpf`'s `timewait_made.rs`). Offsets from BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TwLookupConfig {
    /// `offsetof(struct net, ipv4.tcp_death_row)`: a pointer since 6.1, embedded before.
    pub net_death_row: u32,
    /// `offsetof(struct inet_timewait_death_row, hashinfo)` (a pointer).
    pub death_row_hashinfo: u32,
    /// `offsetof(struct inet_hashinfo, ehash)` (a pointer to the buckets).
    pub hashinfo_ehash: u32,
    /// `offsetof(struct inet_hashinfo, ehash_mask)` (unsigned int).
    pub hashinfo_ehash_mask: u32,
    /// `sizeof(struct inet_ehash_bucket)`, whose chain's first node comes first.
    pub bucket_size: u32,
    /// `offsetof(struct sock_common, skc_hash)` (u32; the timewait socket keeps the full one's).
    pub skc_hash: u32,
    /// `offsetof(struct sock_common, skc_state)` (u8).
    pub skc_state: u32,
    /// `offsetof(struct sock_common, skc_nulls_node)`: the chain links point at it.
    pub skc_nulls_node: u32,
    /// Non-zero: `tcp_death_row` is a pointer.
    pub death_row_is_pointer: u8,
    /// 1 once userspace filled every field; 0 (the default) keeps the lookup off.
    pub validated: u8,
    pub _pad: [u8; 6],
}

// Both sides compile these; a field added on one side only must not go unnoticed.
const _: () = assert!(core::mem::size_of::<SetStateTpLayout>() == 28);
const _: () = assert!(core::mem::size_of::<ResetTpLayout>() == 24);
const _: () = assert!(core::mem::size_of::<TwTimerConfig>() == 24);
const _: () = assert!(core::mem::size_of::<TwLookupConfig>() == 40);
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 216);

/// Everything the kernel programs are configured with at load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProbeConfig {
    pub offsets: SockOffsets,
    /// 0: both families; otherwise AF_INET or AF_INET6.
    pub family: u16,
    /// `PORT_FILTER_*` bits: only ports present in the `PORTS` map pass.
    pub port_filter: u8,
    /// Non-zero: the ring buffer is never woken per event (the reader polls).
    pub no_wakeup: u8,
    /// Wake the reader when at least this many bytes wait in the ring (0: never).
    pub wakeup_bytes: u32,
    /// Switch to counting mode (`MODE_RING_FILLED`) when a CPU's ring holds at least this many
    /// bytes (0: never): the reader has fallen behind, and records would soon be refused.
    pub guard_bytes: u32,
    /// Classic tracepoint path: where the record fields are (from the tracefs format files).
    pub tp_set_state: SetStateTpLayout,
    pub tp_reset_rx: ResetTpLayout,
    pub tp_reset_tx: ResetTpLayout,
    /// Non-zero: follow each socket in socket-local storage and send one [`SockSummary`] per
    /// CLOSE_WAIT entry and per close, instead of every transition (see `tcptrace-ebpf`'s
    /// `summary.rs`). Listener transitions and resets are sent as events either way.
    ///
    /// [`SockSummary`]: crate::event::SockSummary
    pub summary: u8,
    /// Explicit padding: `tw_timer` is 8-byte aligned, and `Pod` wants no implicit padding.
    pub _pad: [u8; 7],
    /// The `timer:timer_expire_entry` hook (fentry refused): see [`TwTimerConfig`].
    pub tw_timer: TwTimerConfig,
    /// Whether a close made a timewait socket: see [`TwLookupConfig`].
    pub tw_lookup: TwLookupConfig,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for ProbeConfig {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for SockOffsets {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for SetStateTpLayout {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ResetTpLayout {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for TwTimerConfig {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for TwLookupConfig {}
