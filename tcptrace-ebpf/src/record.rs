//! Reading classic tracepoint records at offsets userspace took from the tracefs format files
//! (the fallback for kernels without BTF).

use aya_ebpf::programs::TracePointContext;
use tcptrace_common::event::{AF_INET, AF_INET6, RawEvent};

/// Reads a `T` at `off` in the record; the default value if the read fails.
#[inline(always)]
pub fn at<T: Default>(ctx: &TracePointContext, off: u16) -> T {
    // SAFETY: read_at uses bpf_probe_read and reports failure instead of faulting.
    unsafe { ctx.read_at::<T>(off as usize) }.unwrap_or_default()
}

/// Copies the address of the right family into the event.
#[inline(always)]
pub fn addresses(ctx: &TracePointContext, ev: &mut RawEvent, v4: (u16, u16), v6: (u16, u16)) {
    if ev.family == AF_INET6 {
        ev.saddr = at(ctx, v6.0);
        ev.daddr = at(ctx, v6.1);
    } else if ev.family == AF_INET {
        let s: [u8; 4] = at(ctx, v4.0);
        let d: [u8; 4] = at(ctx, v4.1);
        ev.saddr[..4].copy_from_slice(&s);
        ev.daddr[..4].copy_from_slice(&d);
    }
}
