//! How full the ring buffer is: its consumer and producer positions, mapped a second time,
//! read-only. aya's `RingBuf` keeps its own mappings private; the reader samples these before
//! each drain to learn the ring's high-water mark (how close it came to dropping events).
//!
//! The kernel lays a BPF ring buffer out as one page holding the consumer position, one page
//! holding the producer position, then the data pages; userspace may map any of them readable.
//! <https://github.com/torvalds/linux/blob/v6.1/kernel/bpf/ringbuf.c#L259>

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct RingFill {
    consumer: NonNull<libc::c_void>,
    producer: NonNull<libc::c_void>,
    page: usize,
}

impl RingFill {
    /// Maps the two position pages of the ring buffer map `fd`.
    pub fn map(fd: RawFd) -> io::Result<RingFill> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let consumer = map_page(fd, 0, page)?;
        let producer = match map_page(fd, page, page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: mapped just above with this length.
                unsafe { libc::munmap(consumer.as_ptr(), page) };
                return Err(e);
            }
        };
        Ok(RingFill {
            consumer,
            producer,
            page,
        })
    }

    /// Bytes written by the kernel and not yet consumed, record headers included.
    pub fn bytes(&self) -> u64 {
        // SAFETY: both pages stay mapped while `self` lives; each starts with the kernel's
        // 8-byte-aligned position, written atomically (smp_store_release) by its owner.
        let (c, p) = unsafe {
            (
                (*self.consumer.as_ptr().cast::<AtomicU64>()).load(Ordering::Acquire),
                (*self.producer.as_ptr().cast::<AtomicU64>()).load(Ordering::Acquire),
            )
        };
        p.saturating_sub(c)
    }
}

fn map_page(fd: RawFd, offset: usize, len: usize) -> io::Result<NonNull<libc::c_void>> {
    // SAFETY: a fresh shared read-only mapping of the map's fd; checked for MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p).ok_or_else(|| io::Error::other("mmap returned NULL"))
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: both were mapped by `map` with this length and are not used after this.
        unsafe {
            libc::munmap(self.consumer.as_ptr(), self.page);
            libc::munmap(self.producer.as_ptr(), self.page);
        }
    }
}
