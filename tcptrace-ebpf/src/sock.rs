//! Reading `struct sock` fields without CO-RE: at offsets userspace resolved from the running
//! kernel's BTF and handed over in `CONFIG.offsets`.
//!
//! Two ways to read, by what the program was given:
//! - [`Typed`]: the typed `struct sock *` of a tp_btf or fentry program. A field is a plain
//!   load: the offsets live in frozen `.rodata`, so the verifier knows each as a constant,
//!   checks the access against the kernel's BTF, and the JIT emits a load that yields 0 if it
//!   faults (`BPF_PROBE_MEM`). No helper call: about 25 ns less per field on 6.18.
//!   <https://github.com/torvalds/linux/blob/v6.1/kernel/bpf/verifier.c#L4519> (map_direct_read)
//! - [`Addr`]: a bare address (classic tracepoints, the timer hook): `bpf_probe_read_kernel` per
//!   field, the only way there.

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_probe_read_kernel;
use tcptrace_common::{
    config::SockOffsets,
    event::{AF_INET, AF_INET6, RawEvent},
};

pub const IPPROTO_TCP: u16 = 6;

/// A socket (or timewait socket: both begin with `sock_common`) whose fields can be read.
pub trait Sock: Copy {
    /// The `T` at byte `off`; 0 when the read faults.
    fn at<T: Copy + Default>(self, off: u32) -> T;
    /// The pointer at byte `off`, read the same way.
    fn follow(self, off: u32) -> Self;
    fn is_null(self) -> bool;
    /// The socket's address.
    fn raw(self) -> u64;

    /// A `T` at byte `off` of a struct that begins with `struct sock` (`inet_sock`, `tcp_sock`)
    /// and lies past its end. The verifier bounds a typed load by the pointer's own type ("access
    /// beyond struct sock"), so this one goes through `bpf_probe_read_kernel` on either kind.
    #[inline(always)]
    fn outer<T: Copy + Default>(self, off: u32) -> T {
        Addr(self.raw()).at(off)
    }

    /// An IPv6 address (`struct in6_addr`).
    #[inline(always)]
    fn addr16(self, off: u32) -> [u8; 16] {
        let hi: u64 = self.at(off);
        let lo: u64 = self.at(off + 8);
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&hi.to_ne_bytes());
        a[8..].copy_from_slice(&lo.to_ne_bytes());
        a
    }
}

/// The typed pointer a tp_btf or fentry program gets as its argument.
#[derive(Clone, Copy)]
pub struct Typed(pub *const c_void);

impl Sock for Typed {
    #[inline(always)]
    fn at<T: Copy + Default>(self, off: u32) -> T {
        // SAFETY: a load through the kernel's typed pointer at an offset taken from its BTF; the
        // verifier checks it against that BTF and the JIT makes a faulting load yield 0.
        unsafe { core::ptr::read_volatile(self.0.cast::<u8>().add(off as usize).cast::<T>()) }
    }

    #[inline(always)]
    fn follow(self, off: u32) -> Self {
        // The loaded pointer keeps its BTF type for the verifier (e.g. `struct net *`).
        Typed(self.at(off))
    }

    #[inline(always)]
    fn is_null(self) -> bool {
        self.0.is_null()
    }

    #[inline(always)]
    fn raw(self) -> u64 {
        self.0 as u64
    }
}

/// A bare kernel address.
#[derive(Clone, Copy)]
pub struct Addr(pub u64);

impl Sock for Addr {
    #[inline(always)]
    fn at<T: Copy + Default>(self, off: u32) -> T {
        // SAFETY: bpf_probe_read_kernel checks the address and returns an error instead of
        // faulting.
        unsafe { bpf_probe_read_kernel((self.0 + off as u64) as *const T) }.unwrap_or_default()
    }

    #[inline(always)]
    fn follow(self, off: u32) -> Self {
        Addr(self.at(off))
    }

    #[inline(always)]
    fn is_null(self) -> bool {
        self.0 == 0
    }

    #[inline(always)]
    fn raw(self) -> u64 {
        self.0
    }

    /// One helper call rather than two.
    #[inline(always)]
    fn addr16(self, off: u32) -> [u8; 16] {
        self.at(off)
    }
}

/// The protocol field is a u16 since 5.6 and an 8-bit bitfield before.
#[inline(always)]
pub fn protocol(sk: impl Sock, o: &SockOffsets) -> u16 {
    if o.sk_protocol_size == 1 {
        sk.at::<u8>(o.sk_protocol) as u16
    } else {
        sk.at::<u16>(o.sk_protocol)
    }
}

/// An IPv4 address (`__be32`) as its bytes.
#[inline(always)]
pub fn addr4(sk: impl Sock, off: u32) -> [u8; 4] {
    sk.at::<u32>(off).to_ne_bytes()
}

/// Fills family, ports, addresses and network namespace of `ev` from `sk`. Returns the family.
#[inline(always)]
pub fn fill_endpoints(sk: impl Sock, o: &SockOffsets, ev: &mut RawEvent) -> u16 {
    let family: u16 = sk.at(o.skc_family);
    ev.family = family;
    ev.sport = sk.at(o.skc_num);
    ev.dport = u16::from_be(sk.at(o.skc_dport));
    if family == AF_INET6 {
        ev.saddr = sk.addr16(o.skc_v6_rcv_saddr);
        ev.daddr = sk.addr16(o.skc_v6_daddr);
    } else if family == AF_INET {
        ev.saddr[..4].copy_from_slice(&addr4(sk, o.skc_rcv_saddr));
        ev.daddr[..4].copy_from_slice(&addr4(sk, o.skc_daddr));
    }
    ev.netns = netns_of(sk, o);
    family
}

/// Inode of the socket's network namespace (`sk->__sk_common.skc_net.net->ns.inum`); 0 when the
/// offsets are unknown (classic tracepoint path on a kernel without BTF), consistently for every
/// event, so sockets are still keyed the same way.
#[inline(always)]
pub fn netns_of(sk: impl Sock, o: &SockOffsets) -> u32 {
    if o.skc_net == 0 || sk.is_null() {
        return 0;
    }
    let net = sk.follow(o.skc_net);
    if net.is_null() {
        return 0;
    }
    net.at(o.net_ns_inum)
}
