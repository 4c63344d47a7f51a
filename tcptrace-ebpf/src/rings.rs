//! One ring buffer per CPU, so that the CPUs never share a reservation.
//!
//! A BPF ring buffer serialises its producers with a spinlock and a producer position that
//! every reservation writes: with transitions on both CPUs of the bench VM, a record cost the
//! state-change program ~160 ns more than with the same storm on one CPU (`bpf_stats`, primary
//! 272-289 ns against 140-150; 93-112 ns with no record sent at all), the cache lines of the
//! lock and the positions moving between the CPUs at every record. Here each CPU reserves in a
//! ring of its own (`BPF_MAP_TYPE_ARRAY_OF_MAPS` holding ring buffers, which userspace creates
//! and installs for every possible CPU), and userspace merges the rings by timestamp (see
//! `tcptrace/src/probe/reader.rs`).
//!
//! The merge needs one promise from every record: its timestamp is taken *after* its
//! reservation. A record that a drain of a ring did not find was then reserved after the drain
//! read that ring's producer position, so its time is later than the drain's start: every
//! record older than the oldest ring's drain start has been read, and can be applied in order.
//! <https://github.com/torvalds/linux/blob/v6.1/kernel/bpf/ringbuf.c#L402> (`__bpf_ringbuf_reserve`)
//! <https://github.com/torvalds/linux/blob/v6.1/tools/testing/selftests/bpf/progs/test_ringbuf_multi.c>

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_RB_AVAIL_DATA,
    btf_maps::{ArrayOfMaps, RingBuf},
    helpers::{
        bpf_ktime_get_ns,
        generated::{
            bpf_get_smp_processor_id, bpf_ringbuf_query, bpf_ringbuf_reserve, bpf_ringbuf_submit,
        },
    },
    macros::btf_map,
};
use tcptrace_common::config::MAX_CPUS;

/// The inner maps' template: userspace creates the real rings at the size it chose (ring
/// buffers of any size may stand in for it, the kernel compares only their type and flags).
type CpuRing = RingBuf<u8, 4096>;

/// Ring of CPU `n` at index `n`; userspace sets the outer size to the possible CPUs.
#[btf_map]
pub static RINGS: ArrayOfMaps<CpuRing, MAX_CPUS> = ArrayOfMaps::new();

/// This CPU's ring.
#[derive(Clone, Copy)]
pub struct Ring(*mut c_void);

impl Ring {
    #[inline(always)]
    fn this_cpu() -> Option<Ring> {
        // SAFETY: a helper without arguments.
        let cpu = unsafe { bpf_get_smp_processor_id() };
        RINGS
            .get(cpu)
            .map(|r| Ring(r as *const CpuRing as *mut c_void))
    }

    /// Bytes committed and not yet consumed.
    #[inline(always)]
    pub fn fill(self) -> u64 {
        // SAFETY: `self.0` is a ring buffer map looked up from RINGS.
        unsafe { bpf_ringbuf_query(self.0, BPF_RB_AVAIL_DATA as u64) }
    }
}

/// A record of type `T` reserved in this CPU's ring. `T` starts with its time, a `u64`
/// (`RawEvent` and `SockSummary`, asserted in `tcptrace_common::event`), which [`Self::submit`]
/// stamps: the one place the promise of the module doc is kept. The caller writes every other
/// byte; the verifier refuses a path that leaves a reservation behind.
pub struct Reserved<T> {
    pub ring: Ring,
    pub record: *mut T,
}

impl<T> Reserved<T> {
    /// None when this CPU has no ring or its ring is full.
    #[inline(always)]
    pub fn new() -> Option<Reserved<T>> {
        let ring = Ring::this_cpu()?;
        // SAFETY: `ring.0` is a ring buffer map looked up from RINGS.
        let record: *mut T =
            unsafe { bpf_ringbuf_reserve(ring.0, core::mem::size_of::<T>() as u64, 0) }.cast();
        (!record.is_null()).then_some(Reserved { ring, record })
    }

    /// Stamps the record's time, now that it is reserved, and commits it.
    ///
    /// # Safety
    /// Every byte of the record after its time must have been written.
    #[inline(always)]
    pub unsafe fn submit(self, flags: u64) {
        // SAFETY: the reservation holds a `T`, which starts with its 8-byte-aligned time.
        unsafe {
            *self.record.cast::<u64>() = bpf_ktime_get_ns();
            bpf_ringbuf_submit(self.record.cast(), flags);
        }
    }
}
