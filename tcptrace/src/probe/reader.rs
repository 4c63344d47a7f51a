//! Draining the ring buffer. The kernel side never wakes us per event, so the reader polls on a
//! short timer, and also wakes when the kernel forces a wakeup because the ring is half full.

use std::{
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

use super::loss::BackupDedup;
use super::ring::Ring;
use crate::event::{Event, decode};

pub const DEFAULT_POLL: Duration = Duration::from_millis(5);

/// Records taken per batch while the ring keeps more: decoded events are 288 bytes, so a batch
/// of 2048 (590 KB) is still in the CPU's cache when the session applies it. Draining the whole
/// ring first made batches of up to 545k events (157 MB) under a storm: each event written to
/// memory by the drain and read back from it by the apply, 1.0-1.3 µs per event in all, and
/// the longer the apply, the fuller the ring and the larger the next batch, until it overflowed.
pub const BATCH: u64 = 2048;

pub struct EventReader {
    ring: AsyncFd<RawRing>,
    pub dedup: BackupDedup,
    pub undecodable: u64,
    /// Records read, before deduplication.
    pub records: u64,
    /// Times the ring was read to empty: a drain that started after a moment has consumed
    /// every record submitted before it.
    pub drains: u64,
    /// The fullest the ring was found when a drain began, bytes (its high-water mark, as far
    /// as the reader sees it).
    pub high_water: u64,
    /// The records, read in place (see `ring.rs` for why not through aya).
    data: Ring,
    /// The longest time between two drains: how long the ring was left to fill.
    pub max_drain_gap: Duration,
    /// The last drain stopped at its limit with records left in the ring.
    more: bool,
    last_drain: Option<Instant>,
    pub poll: Duration,
}

/// AsyncFd needs an owner that is AsRawFd: the map's fd, kept open by aya's `RingBuf`, which
/// is only waited on (epoll says readable when records wait), never read through.
struct RawRing(RingBuf<MapData>);

impl AsRawFd for RawRing {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl EventReader {
    /// Must be called inside a tokio runtime.
    /// `data_size`: the ring's `max_entries`.
    pub fn new(ring: RingBuf<MapData>, data_size: u32) -> std::io::Result<EventReader> {
        let data = Ring::map(ring.as_raw_fd(), data_size)?;
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until it is dropped
        // together with this AsyncFd.
        let ring = unsafe { AsyncFd::register_with_interest(RawRing(ring), Interest::READABLE) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(EventReader {
            ring,
            dedup: BackupDedup::default(),
            undecodable: 0,
            records: 0,
            drains: 0,
            high_water: 0,
            data,
            max_drain_gap: Duration::ZERO,
            more: false,
            last_drain: None,
            poll: DEFAULT_POLL,
        })
    }

    /// Appends every record waiting in the ring to `out`, decoded and deduplicated. Does not
    /// block. Returns how many events were appended.
    pub fn drain_into(&mut self, out: &mut Vec<Event>) -> usize {
        self.drain_at_most(out, u64::MAX)
    }

    /// As [`Self::drain_into`], stopping after `limit` records; `more` tells whether it did.
    fn drain_at_most(&mut self, out: &mut Vec<Event>, limit: u64) -> usize {
        let before = out.len();
        let Self {
            data,
            dedup,
            undecodable,
            records,
            high_water,
            ..
        } = self;
        *high_water = (*high_water).max(data.fill());
        let n = data.drain(limit, |bytes| match decode(bytes) {
            Ok(ev) => {
                if dedup.keep(&ev) {
                    out.push(ev);
                }
            }
            Err(_) => *undecodable += 1,
        });
        *records += n;
        self.more = n == limit;
        if !self.more {
            // Read to empty: what `drains` counts (the loss watch relies on it).
            self.drains += 1;
        }
        let now = Instant::now();
        if let Some(last) = self.last_drain.replace(now) {
            self.max_drain_gap = self.max_drain_gap.max(now - last);
        }
        out.len() - before
    }

    /// Waits until the poll interval passes or the kernel wakes us, then drains at most
    /// [`BATCH`] records; when the last call left more behind, drains again without waiting.
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> usize {
        if !self.more {
            let poll = self.poll;
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    if let Ok(mut g) = guard {
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
