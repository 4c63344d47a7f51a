//! The BPF ring buffer, read in place with the consumer position published once per batch.
//!
//! Hand-rolled rather than aya's `RingBuf::next`, which publishes the consumer position after
//! every record (`RingBufItem`'s drop): the kernel reads that position in every
//! `bpf_ringbuf_reserve`, so a store per record by the reader keeps its cache line moving
//! between the CPUs. Measured honestly, that was not where the reservation's cost was: in one
//! storm profile `__bpf_ringbuf_reserve` + `bpf_ringbuf_output` went from 6.6% to 5.3% of the
//! host's CPU with this reader, but `bpf_stats` over a whole bench stayed at 371-372 ns per
//! transition (the cost is the ring's spinlock, shared by the CPUs). What this reader does buy
//! is one mapping for records and fill level (aya keeps its positions private, so the fill
//! needed a second mapping) and a drain that stops after a given number of records
//! ([`Ring::drain`]'s `limit`), which the session's bounded batches use (see `reader.rs`).
//! Here the position is published at the end of each drain, and every [`PUBLISH_EVERY`] bytes
//! within a long one so the producers see space freed while it runs.
//!
//! The kernel lays the ring out as one page holding the consumer position (which userspace may
//! map writable), one page holding the producer position, then the data pages, mapped twice in a
//! row so that a record wrapping around the end is contiguous. Each record starts with an 8-byte
//! header: its length with a busy bit (reserved, not yet committed) and a discard bit, then the
//! page offset the kernel uses; records are 8-byte aligned.
//! <https://github.com/torvalds/linux/blob/v6.1/kernel/bpf/ringbuf.c#L259>
//! <https://github.com/torvalds/linux/blob/v6.1/include/uapi/linux/bpf.h> (`BPF_RINGBUF_*`)

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HEADER: u64 = 8;

/// Bytes consumed between two publications of the consumer position within one drain: small
/// beside the ring (256 KiB at least), large beside a record (112 bytes), so a drain of a full
/// ring publishes a few dozen times instead of tens of thousands.
const PUBLISH_EVERY: u64 = 64 * 1024;

/// Where a drain stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// At the producer position: every record reserved before the drain began was read.
    End,
    /// At a record still being written.
    Busy,
    /// At the limit, with records left.
    Limit,
}

pub struct Ring {
    consumer: NonNull<libc::c_void>,
    /// The producer page followed by the data pages twice.
    producer: NonNull<libc::c_void>,
    page: usize,
    data_size: u64,
    /// The consumer position as read so far (published or not).
    pos: u64,
    /// Mapped by [`Ring::map`] (unmapped on drop); tests lay a ring out in plain memory.
    mapped: bool,
}

// SAFETY: the mappings are plain shared memory owned by this value; nothing else in the process
// writes the consumer page.
unsafe impl Send for Ring {}
// SAFETY: `&Ring` only reads the positions atomically.
unsafe impl Sync for Ring {}

impl Ring {
    /// Maps the ring buffer map `fd`, whose data area is `data_size` bytes (its `max_entries`, a
    /// power of two pages).
    pub fn map(fd: RawFd, data_size: u32) -> io::Result<Ring> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let data_size = u64::from(data_size);
        if data_size == 0 || !data_size.is_power_of_two() || data_size < page as u64 {
            return Err(io::Error::other(format!(
                "ring buffer data size {data_size} is not a power of two pages"
            )));
        }
        let consumer = map(fd, 0, page, libc::PROT_READ | libc::PROT_WRITE)?;
        let len = page + 2 * data_size as usize;
        let producer = match map(fd, page, len, libc::PROT_READ) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: mapped just above with this length.
                unsafe { libc::munmap(consumer.as_ptr(), page) };
                return Err(e);
            }
        };
        let mut ring = Ring {
            consumer,
            producer,
            page,
            data_size,
            pos: 0,
            mapped: true,
        };
        ring.pos = ring.consumer_pos().load(Ordering::Acquire);
        Ok(ring)
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the page stays mapped while `self` lives and starts with the kernel's
        // 8-byte-aligned consumer position.
        unsafe { &*self.consumer.as_ptr().cast::<AtomicU64>() }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: as above, for the producer position the kernel writes with
        // smp_store_release.
        unsafe { &*self.producer.as_ptr().cast::<AtomicU64>() }
    }

    /// Bytes written by the kernel and not yet consumed, record headers included.
    pub fn fill(&self) -> u64 {
        let c = self.consumer_pos().load(Ordering::Acquire);
        self.producer_pos()
            .load(Ordering::Acquire)
            .saturating_sub(c)
    }

    /// Hands every committed record to `each`, in order, up to the first one still being
    /// written or `limit` records. Returns the records handed over and where it stopped.
    pub fn drain(&mut self, limit: u64, mut each: impl FnMut(&[u8])) -> (u64, Stop) {
        let mut records = 0;
        let mut published = self.pos;
        let mut end = self.producer_pos().load(Ordering::Acquire);
        loop {
            let mut busy = false;
            while self.pos < end && records < limit {
                let offset = (self.pos & (self.data_size - 1)) as usize;
                // SAFETY: `offset` is within the first copy of the data pages, and the header is
                // 8-byte aligned within them (records are).
                let header = unsafe {
                    &*self
                        .producer
                        .as_ptr()
                        .cast::<u8>()
                        .add(self.page + offset)
                        .cast::<AtomicU32>()
                };
                // Pairs with the kernel's xchg that clears the busy bit at commit: the record's
                // bytes are visible once it reads clear.
                let len = header.load(Ordering::Acquire);
                if len & BUSY_BIT != 0 {
                    // Reserved and not committed yet (a program is writing it on another CPU):
                    // later records wait behind it until the next drain.
                    busy = true;
                    break;
                }
                let data_len = u64::from(len & !(BUSY_BIT | DISCARD_BIT));
                if len & DISCARD_BIT == 0 {
                    // SAFETY: the record lies within the mapping: the data pages are mapped
                    // twice, so a record that wraps is contiguous, and a record is never larger
                    // than the ring.
                    let data = unsafe {
                        std::slice::from_raw_parts(
                            self.producer
                                .as_ptr()
                                .cast::<u8>()
                                .add(self.page + offset + HEADER as usize),
                            data_len as usize,
                        )
                    };
                    each(data);
                    records += 1;
                }
                self.pos += (HEADER + data_len).next_multiple_of(8);
                if self.pos - published >= PUBLISH_EVERY {
                    self.publish();
                    published = self.pos;
                }
            }
            if published != self.pos {
                self.publish();
                published = self.pos;
            }
            if busy {
                return (records, Stop::Busy);
            }
            if records == limit {
                return (records, Stop::Limit);
            }
            // A producer that committed after our last look decides whether to wake us from the
            // consumer position it read; with the position just published, look once more so a
            // record committed in between is not left for the next poll.
            fence(Ordering::SeqCst);
            let newer = self.producer_pos().load(Ordering::Acquire);
            if newer == end {
                return (records, Stop::End);
            }
            end = newer;
        }
    }

    fn publish(&self) {
        // Pairs with the kernel's acquire load before it reuses the space.
        self.consumer_pos().store(self.pos, Ordering::Release);
    }
}

fn map(
    fd: RawFd,
    offset: usize,
    len: usize,
    prot: libc::c_int,
) -> io::Result<NonNull<libc::c_void>> {
    // SAFETY: a fresh shared mapping of the map's fd; checked for MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
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

impl Drop for Ring {
    fn drop(&mut self) {
        if !self.mapped {
            return;
        }
        // SAFETY: both were mapped by `map` with these lengths and are not used after this.
        unsafe {
            libc::munmap(self.consumer.as_ptr(), self.page);
            libc::munmap(
                self.producer.as_ptr(),
                self.page + 2 * self.data_size as usize,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;
    const SIZE: usize = 4096;

    /// A ring laid out as the kernel maps it, in plain memory: the consumer page, then the
    /// producer page and the data twice.
    struct Fake {
        consumer: Vec<u64>,
        producer: Vec<u64>,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                consumer: vec![0; PAGE / 8],
                producer: vec![0; (PAGE + 2 * SIZE) / 8],
            }
        }

        fn ring(&mut self) -> Ring {
            Ring {
                consumer: NonNull::new(self.consumer.as_mut_ptr().cast()).unwrap(),
                producer: NonNull::new(self.producer.as_mut_ptr().cast()).unwrap(),
                page: PAGE,
                data_size: SIZE as u64,
                pos: self.consumer[0],
                mapped: false,
            }
        }

        /// Writes a record of `len` bytes of `fill` with header bits `bits` at the producer
        /// position, in both copies of the data, and advances the producer.
        fn push(&mut self, len: u32, fill: u8, bits: u32) {
            let pos = self.producer[0] as usize;
            let bytes: &mut [u8] = bytemuck_bytes(&mut self.producer);
            let mut rec = vec![0u8; (8 + len as usize).next_multiple_of(8)];
            rec[..4].copy_from_slice(&(len | bits).to_ne_bytes());
            rec[8..8 + len as usize].fill(fill);
            for (i, b) in rec.iter().enumerate() {
                let off = (pos + i) % SIZE;
                bytes[PAGE + off] = *b;
                bytes[PAGE + SIZE + off] = *b;
            }
            self.producer[0] = (pos + rec.len()) as u64;
        }
    }

    fn bytemuck_bytes(v: &mut [u64]) -> &mut [u8] {
        // SAFETY: u64s viewed as their bytes, same length in bytes.
        unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len() * 8) }
    }

    fn take(ring: &mut Ring, limit: u64) -> Vec<(usize, u8)> {
        take_stop(ring, limit).0
    }

    fn take_stop(ring: &mut Ring, limit: u64) -> (Vec<(usize, u8)>, Stop) {
        let mut got = Vec::new();
        let (n, stop) = ring.drain(limit, |d| got.push((d.len(), d[0])));
        assert_eq!(n as usize, got.len());
        (got, stop)
    }

    #[test]
    fn reads_in_order_skips_discarded_and_stops_at_a_busy_record() {
        let mut f = Fake::new();
        f.push(104, 1, 0);
        f.push(20, 2, DISCARD_BIT);
        f.push(20, 3, 0);
        f.push(104, 4, BUSY_BIT);
        f.push(104, 5, 0);
        let mut ring = f.ring();
        assert_eq!(
            take_stop(&mut ring, u64::MAX),
            (vec![(104, 1), (20, 3)], Stop::Busy)
        );
        // Published up to the busy record, not past it.
        assert_eq!(f.consumer[0], 112 + 32 + 32);
        assert_eq!(take_stop(&mut ring, u64::MAX), (vec![], Stop::Busy));
    }

    #[test]
    fn a_limit_leaves_the_rest_and_publishes_what_was_read() {
        let mut f = Fake::new();
        for i in 0..5 {
            f.push(104, i, 0);
        }
        let mut ring = f.ring();
        assert_eq!(
            take_stop(&mut ring, 2),
            (vec![(104, 0), (104, 1)], Stop::Limit)
        );
        assert_eq!(f.consumer[0], 2 * 112);
        assert_eq!(ring.fill(), 3 * 112);
        assert_eq!(
            take_stop(&mut ring, 10),
            (vec![(104, 2), (104, 3), (104, 4)], Stop::End)
        );
        assert_eq!(ring.fill(), 0);
    }

    #[test]
    fn a_record_across_the_end_of_the_data_is_read_whole() {
        let mut f = Fake::new();
        // 36 records of 112 bytes end at 4032: the next one wraps.
        for _ in 0..36 {
            f.push(104, 7, 0);
        }
        let mut ring = f.ring();
        assert_eq!(take(&mut ring, u64::MAX).len(), 36);
        f.push(104, 9, 0);
        f.push(104, 8, 0);
        assert_eq!(take(&mut ring, u64::MAX), vec![(104, 9), (104, 8)]);
        assert_eq!(f.consumer[0], 38 * 112);
    }
}
