//! Reading `struct sock` fields without CO-RE: at offsets userspace resolved from the running
//! kernel's BTF and handed over in `CONFIG.offsets`.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use tcptrace_common::{
    config::SockOffsets,
    event::{AF_INET, AF_INET6, RawEvent},
};

pub const IPPROTO_TCP: u16 = 6;

/// Reads a `T` at `base + off`; 0 when the read faults.
#[inline(always)]
pub fn read<T: Default>(base: u64, off: u32) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address and returns an error instead of faulting.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.unwrap_or_default()
}

/// The protocol field is a u16 since 5.6 and an 8-bit bitfield before.
#[inline(always)]
pub fn protocol(sk: u64, o: &SockOffsets) -> u16 {
    if o.sk_protocol_size == 1 {
        read::<u8>(sk, o.sk_protocol) as u16
    } else {
        read::<u16>(sk, o.sk_protocol)
    }
}

/// Fills family, ports, addresses and network namespace of `ev` from `sk`. Returns the family.
#[inline(always)]
pub fn fill_endpoints(sk: u64, o: &SockOffsets, ev: &mut RawEvent) -> u16 {
    let family: u16 = read(sk, o.skc_family);
    ev.family = family;
    ev.sport = read(sk, o.skc_num);
    ev.dport = u16::from_be(read(sk, o.skc_dport));
    if family == AF_INET6 {
        ev.saddr = read(sk, o.skc_v6_rcv_saddr);
        ev.daddr = read(sk, o.skc_v6_daddr);
    } else if family == AF_INET {
        let s: [u8; 4] = read(sk, o.skc_rcv_saddr);
        let d: [u8; 4] = read(sk, o.skc_daddr);
        ev.saddr[..4].copy_from_slice(&s);
        ev.daddr[..4].copy_from_slice(&d);
    }
    ev.netns = netns_of(sk, o);
    family
}

/// Inode of the socket's network namespace (`sk->__sk_common.skc_net.net->ns.inum`); 0 when the
/// offsets are unknown (classic tracepoint path on a kernel without BTF), consistently for every
/// event, so sockets are still keyed the same way.
#[inline(always)]
pub fn netns_of(sk: u64, o: &SockOffsets) -> u32 {
    if o.skc_net == 0 || sk == 0 {
        return 0;
    }
    let net: u64 = read(sk, o.skc_net);
    if net == 0 {
        return 0;
    }
    read(net, o.net_ns_inum)
}
