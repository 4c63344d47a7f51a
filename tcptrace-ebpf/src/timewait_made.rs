//! Whether a FIN_WAIT2 / CLOSING -> CLOSE made a timewait socket.
//!
//! `tcp_time_wait` asks `inet_twsk_alloc` for one; at the `tcp_max_tw_buckets` cap it gets none,
//! counts `TCPTimeWaitOverflow` and closes the socket all the same. Nothing on the full socket
//! tells the two apart at this tracepoint: `inet_sk_state_store` fires it after `tcp_set_state`
//! has unhashed the socket either way. The established hash does: `inet_twsk_hashdance` put the
//! timewait socket at the head of the full socket's chain just before `tcp_done`, so it is
//! there, found by the full socket's hash, when it was made.
//! <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_minisocks.c#L263>
//! <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/inet_timewait_sock.c#L121>
//!
//! Without it tcptrace kept a TIME_WAIT entry for every such close until the next check
//! against the kernel's table: at 40k connections/s against the cap it showed 212,015
//! TIME_WAIT sockets where `ss` showed 131,076.

use core::{ffi::c_void, mem::MaybeUninit, mem::size_of};

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;
use tcptrace_common::{
    TcpState,
    config::{ProbeConfig, SOCK_COMMON_HEAD},
};

use crate::sock::{Addr, Sock};

/// Chain links the tp_btf programs look at. A timewait socket just made is the first, unless
/// another CPU hashed a socket into the same bucket in the microseconds since; a close that
/// made none is known only at the chain's end, and chains are longer where the table is small
/// for what it holds: in CI's 6.1 guest (a small ehash, thousands of timewait sockets left by
/// earlier tests) a walk of 4 links ran out before the end once in 48 refused closes, which then
/// counted as made. A chain longer than this is still taken as holding one, as before the
/// lookup existed.
pub const LOOK_BTF: usize = 16;
/// The same for the classic tracepoint program: the 5.10 and 6.1 verifiers give up on its
/// larger body walking 16 links (a million instructions explored), not on 4.
pub const LOOK_CLASSIC: usize = 4;

/// The first [`SOCK_COMMON_HEAD`] bytes of a `sock_common`.
#[repr(C)]
struct Head([u64; SOCK_COMMON_HEAD as usize / 8]);

impl Head {
    /// The `T` at byte `off`, which userspace checked fits; 0 otherwise.
    #[inline(always)]
    fn field<T: Copy + Default>(&self, off: u32) -> T {
        let off = off as usize;
        if off + size_of::<T>() > size_of::<Head>() {
            return T::default();
        }
        // SAFETY: in bounds (checked above); an unaligned read of plain bytes.
        unsafe { core::ptr::read_unaligned(self.0.as_ptr().cast::<u8>().add(off).cast::<T>()) }
    }
}

/// Whether the socket whose `sock_common` starts at `at` is the timewait socket sought. One
/// read of its head into stack memory left uninitialised (the helper writes all of it, or
/// fails): a zeroed or returned `Head` compiled to a byte loop (`memset`) that the 6.1
/// verifier walked, inside the chain walk, up to its million-instruction limit.
#[inline(always)]
fn is_the_timewait_socket(at: u64, hash: u32, dport: u16, net: u64, cfg: &ProbeConfig) -> bool {
    let mut head = MaybeUninit::<Head>::uninit();
    // SAFETY: the destination is our stack slot of exactly that size; the helper checks the
    // source address.
    let rc = unsafe {
        bpf_probe_read_kernel(
            head.as_mut_ptr().cast(),
            size_of::<Head>() as u32,
            at as *const c_void,
        )
    };
    if rc != 0 {
        return false;
    }
    // SAFETY: written whole by the helper, which returned 0.
    let c = unsafe { head.assume_init_ref() };
    let (t, o) = (&cfg.tw_lookup, &cfg.offsets);
    c.field::<u8>(t.skc_state) == TcpState::TimeWait as u8
        && c.field::<u32>(t.skc_hash) == hash
        && c.field::<u16>(o.skc_dport) == dport
        && c.field::<u64>(o.skc_net) == net
}

/// True when this FIN_WAIT2 / CLOSING -> CLOSE made no timewait socket (none with the full
/// socket's hash, remote port and namespace is in its chain), false when it made one or the
/// lookup is off.
#[inline(always)]
pub fn refused<const LOOK: usize>(sk: impl Sock, old: u8, new: u8, cfg: &ProbeConfig) -> bool {
    let t = &cfg.tw_lookup;
    let o = &cfg.offsets;
    if new != TcpState::Close as u8
        || (old != TcpState::FinWait2 as u8 && old != TcpState::Closing as u8)
        || t.validated == 0
        || o.skc_net == 0
        || sk.is_null()
    {
        return false;
    }
    // Read as numbers (`bpf_probe_read_kernel`): past the socket, the verifier knows no types.
    let net = Addr(sk.follow(o.skc_net).raw());
    if net.is_null() {
        return false;
    }
    let death_row = if t.death_row_is_pointer != 0 {
        net.follow(t.net_death_row)
    } else {
        Addr(net.0 + t.net_death_row as u64)
    };
    let hashinfo = death_row.follow(t.death_row_hashinfo);
    if hashinfo.is_null() {
        return false;
    }
    let ehash: u64 = hashinfo.at(t.hashinfo_ehash);
    let mask: u32 = hashinfo.at(t.hashinfo_ehash_mask);
    if ehash == 0 {
        return false;
    }
    let hash: u32 = sk.at(t.skc_hash);
    let dport: u16 = sk.at(o.skc_dport);
    let mut node: u64 = Addr(ehash + (hash & mask) as u64 * t.bucket_size as u64).at(0);
    for _ in 0..LOOK {
        // A nulls list ends in an odd marker (the bucket's number), never in NULL: a NULL is a
        // read that failed, which tells nothing (taken as made, as when the lookup is off).
        if node == 0 {
            return false;
        }
        if node & 1 != 0 {
            return true;
        }
        // The node's `sock_common` head in one read: userspace checked that the four fields
        // lie within it (`SOCK_COMMON_HEAD`).
        if is_the_timewait_socket(node - t.skc_nulls_node as u64, hash, dport, net.0, cfg) {
            return false;
        }
        node = Addr(node).at(0);
    }
    false
}
