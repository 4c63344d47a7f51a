//! Load-time configuration of the kernel programs: filters and kernel structure offsets.
//!
//! Userspace fills one [`ProbeConfig`] before load (an `.rodata` global), so disabled filters cost
//! one predictable branch and unwanted events never reach the ring buffer.

/// Bits in the values of the `PORTS` map.
pub const PORT_MATCH_LOCAL: u8 = 1 << 0;
pub const PORT_MATCH_REMOTE: u8 = 1 << 1;
/// Bits of `ProbeConfig::port_filter`: a port filter is set, and it has local-port entries.
pub const PORT_FILTER_ON: u8 = 1 << 0;
pub const PORT_FILTER_HAS_LOCAL: u8 = 1 << 1;
/// Most ports a filter may name; the kernel map has this many slots.
pub const MAX_FILTER_PORTS: u32 = 64;

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
    pub _pad: u32,
}

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
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for ProbeConfig {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for SockOffsets {}
