//! Draining the per-CPU ring buffers into one stream in time order. The kernel side never
//! wakes us per event, so the reader polls on a short timer, and also wakes when the kernel
//! forces a wakeup because a CPU's ring is half full.
//!
//! Each CPU has its own ring (see `tcptrace-ebpf/src/rings.rs`); a socket's transitions can
//! land in different rings (softirq on one CPU, the owner's syscall on another), so the rings
//! are merged by timestamp. What makes that exact is the kernel's promise that a record's time
//! is taken after its reservation: a record a drain of ring `r` did not find was reserved after
//! the drain read `r`'s producer position, so it is younger than the moment the drain started
//! on `r`. The *watermark* is the oldest of those moments over all rings (each ring's latest
//! drain that reached its end); every record older than it has been read, so those are handed
//! out sorted by time, and younger ones wait for a later drain. A socket's transitions are
//! ordered by its lock, and each one's record is stamped inside it, so time order is their
//! order. Records of one CPU nested in each other (a softirq interrupting a program) are of
//! different sockets, so sorting them by time loses nothing the ring order said.

use std::{
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use aya::maps::MapData;
use tokio::io::{Interest, unix::AsyncFd};

use super::loss::BackupDedup;
use super::merge::{Pending, watermark};
use super::ring::{Ring, Stop};
use crate::clock::monotonic_ns;
use crate::event::{Event, decode};

pub const DEFAULT_POLL: Duration = Duration::from_millis(5);

/// Events handed out per batch: decoded events are 288 bytes, so a batch of 2048 (590 KB) is
/// still in the CPU's cache when the session applies it. Decoding everything first made
/// batches of up to 545k events (157 MB) under a storm: each event written to memory by the
/// drain and read back from it by the apply, 1.0-1.3 µs per event in all, and the longer the
/// apply, the fuller the ring and the larger the next batch, until it overflowed. The raw
/// records of one read of the rings (at most their size) wait in `pending` meanwhile.
pub const BATCH: usize = 2048;

/// The rings are read at least this often while there are batches to apply (see
/// [`EventReader::drain_at_most`]).
const READ_AT_LEAST_EVERY: Duration = Duration::from_millis(5);

/// Held back from the watermark: `bpf_ktime_get_ns` (the kernel's fast monotonic clock) and
/// `clock_gettime(CLOCK_MONOTONIC)` may disagree by up to a clock update; a millisecond covers
/// that with room and delays nothing anyone sees.
const CLOCK_SLACK_NS: u64 = 1_000_000;

pub struct EventReader {
    rings: Vec<CpuRing>,
    /// Readable when any ring is (the kernel forced a wakeup).
    wake: AsyncFd<OwnedFd>,
    pub dedup: BackupDedup,
    pub undecodable: u64,
    /// Records read, before deduplication.
    pub records: u64,
    /// The fullest a ring was found when a drain began, bytes (the high-water mark, as far as
    /// the reader sees it).
    pub high_water: u64,
    /// The longest time between two drains: how long the rings were left to fill.
    pub max_drain_gap: Duration,
    /// Records are ready to hand out, or the last read of the rings found a backlog: the next
    /// batch does not wait.
    more: bool,
    last_drain: Option<Instant>,
    pub poll: Duration,
    /// Records read and not handed out yet.
    pending: Pending,
    /// Every record stamped before this (CLOCK_MONOTONIC ns) has been read.
    watermark_ns: u64,
    /// Every record stamped before this has been handed out: the watermark, or the oldest
    /// record still pending when a batch limit or [`Self::keep_up`] left ready ones behind.
    handed_out_ns: u64,
}

struct CpuRing {
    data: Ring,
    /// Keeps the ring buffer map (and the fd `data` maps) open.
    _map: MapData,
    /// When the latest drain that read this ring to its end began.
    read_to_end_at: u64,
}

impl EventReader {
    /// Must be called inside a tokio runtime. `data_size`: each ring's `max_entries`.
    pub fn new(maps: Vec<MapData>, data_size: u32) -> std::io::Result<EventReader> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked below.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        let mut rings = Vec::with_capacity(maps.len());
        let started = monotonic_ns();
        for map in maps {
            let fd = map.fd().as_fd().as_raw_fd();
            watch(ep.as_raw_fd(), fd)?;
            rings.push(CpuRing {
                data: Ring::map(fd, data_size)?,
                _map: map,
                read_to_end_at: started,
            });
        }
        // SAFETY: the epoll fd is ours and stays open, unchanged, as long as the AsyncFd.
        let wake = unsafe { AsyncFd::register_with_interest(ep, Interest::READABLE) }?;
        Ok(EventReader {
            rings,
            wake,
            dedup: BackupDedup::default(),
            undecodable: 0,
            records: 0,
            high_water: 0,
            max_drain_gap: Duration::ZERO,
            more: false,
            last_drain: None,
            poll: DEFAULT_POLL,
            pending: Pending::default(),
            watermark_ns: 0,
            handed_out_ns: 0,
        })
    }

    /// Every record stamped before this has been handed out (see the module doc). Not merely
    /// read: a dump applied, or kernel counters judged, against records read but still waiting
    /// behind a batch limit would meet a table (or a recovery count) older than they assume.
    pub fn handed_out_ns(&self) -> u64 {
        self.handed_out_ns
    }

    /// Reads the rings into the pending records without handing anything out: for long work
    /// between batches (applying a dump of 131,072 sockets took 65-85 ms at 40k conn/s, and the
    /// rings, left alone for that long, filled to three quarters and the guard had the kernel
    /// count instead of send).
    pub fn keep_up(&mut self) {
        self.read_rings();
    }

    /// Appends every record older than the watermark after reading every ring, decoded,
    /// deduplicated and in time order. Does not block. Returns how many events were appended.
    pub fn drain_into(&mut self, out: &mut Vec<Event>) -> usize {
        self.read_rings();
        self.release(out, self.watermark_ns, usize::MAX)
    }

    /// As [`Self::drain_into`], and then the records younger than the watermark too: for the
    /// end of a session, when nothing is applied after them.
    pub fn drain_all_into(&mut self, out: &mut Vec<Event>) -> usize {
        self.read_rings();
        self.release(out, u64::MAX, usize::MAX)
    }

    /// At most `limit` events: those the last read of the rings made ready first, then a new
    /// read. `more` says whether to come back without waiting.
    fn drain_at_most(&mut self, out: &mut Vec<Event>, limit: usize) -> usize {
        let mut backlog = false;
        // Also read while records wait, if the rings were last read a while ago: a backlog
        // (what the rings held after a dump was applied, say) is applied a batch at a time, and
        // the rings must not wait for all of it.
        let stale = self
            .last_drain
            .is_none_or(|t| t.elapsed() >= READ_AT_LEAST_EVERY);
        if stale || !self.pending.has_ready(self.watermark_ns) {
            backlog = self.read_rings() >= limit as u64;
        }
        let n = self.release(out, self.watermark_ns, limit);
        self.more = backlog || self.pending.has_ready(self.watermark_ns);
        n
    }

    /// Reads every ring to its end (or to a record still being written) into `pending`, and
    /// moves the watermark. At most the rings' size is read at once: raw records, decoded a
    /// batch at a time as they are released. Returns the records read.
    fn read_rings(&mut self) -> u64 {
        let mut read = 0;
        for r in &mut self.rings {
            let started = monotonic_ns();
            self.high_water = self.high_water.max(r.data.fill());
            let pending = &mut self.pending;
            let (n, stop) = r.data.drain(u64::MAX, |bytes| pending.push(bytes));
            read += n;
            // At a record still being written, this ring's part of the watermark stays where
            // its last full read left it.
            if stop == Stop::End {
                r.read_to_end_at = started;
            }
        }
        self.records += read;
        self.watermark_ns = watermark(self.rings.iter().map(|r| r.read_to_end_at), CLOCK_SLACK_NS);
        let now = Instant::now();
        if let Some(last) = self.last_drain.replace(now) {
            self.max_drain_gap = self.max_drain_gap.max(now - last);
        }
        read
    }

    /// Decodes at most `max` pending records stamped before `before` into `out`, in time order.
    fn release(&mut self, out: &mut Vec<Event>, before: u64, max: usize) -> usize {
        let start = out.len();
        let (dedup, undecodable) = (&mut self.dedup, &mut self.undecodable);
        self.pending
            .release(before, max, |bytes| match decode(bytes) {
                Ok(ev) => {
                    if dedup.keep(&ev) {
                        out.push(ev);
                    }
                }
                Err(_) => *undecodable += 1,
            });
        self.handed_out_ns = self
            .pending
            .next_ts()
            .map_or(self.watermark_ns, |ts| ts.min(self.watermark_ns));
        out.len() - start
    }

    /// Waits until the poll interval passes or the kernel wakes us, then drains at most
    /// [`BATCH`] records; when the last call left more behind, drains again without waiting.
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> usize {
        if !self.more {
            let poll = self.poll;
            tokio::select! {
                guard = self.wake.readable_mut() => {
                    if let Ok(mut g) = guard {
                        forget_wakeups(g.get_inner().as_raw_fd());
                        g.clear_ready();
                    }
                }
                _ = tokio::time::sleep(poll) => {}
            }
        } else {
            // Let the session's other wakers (a query, a dump, the stop signal) in between.
            tokio::task::yield_now().await;
        }
        self.drain_at_most(out, BATCH)
    }
}

/// Adds ring buffer `fd` to epoll `ep`: it is readable while the ring holds records, and the
/// kernel wakes it only when a program forces a wakeup.
fn watch(ep: RawFd, fd: RawFd) -> std::io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: fd as u64,
    };
    // SAFETY: both fds are open; `ev` is a valid epoll_event.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Empties epoll `ep`'s ready list: the rings are drained next whatever it says, and an entry
/// left on it would keep the epoll fd readable.
fn forget_wakeups(ep: RawFd) {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
    // SAFETY: `evs` has room for the count given; a timeout of 0 never blocks.
    unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), evs.len() as i32, 0) };
}
