//! Draining the ring buffer. The kernel side never wakes us per event, so the reader polls on a
//! short timer, and also wakes when the kernel forces a wakeup because the ring is half full.

use std::{
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

use super::loss::BackupDedup;
use super::ring_fill::RingFill;
use crate::event::{Event, decode};

pub const DEFAULT_POLL: Duration = Duration::from_millis(5);

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
    /// as the reader sees it); None when the positions could not be mapped.
    pub high_water: Option<u64>,
    fill: Option<RingFill>,
    /// The longest time between two drains: how long the ring was left to fill.
    pub max_drain_gap: Duration,
    last_drain: Option<Instant>,
    pub poll: Duration,
}

/// AsyncFd needs an owner that is AsRawFd.
struct RawRing(RingBuf<MapData>);

impl AsRawFd for RawRing {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl EventReader {
    /// Must be called inside a tokio runtime.
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<EventReader> {
        let fill = RingFill::map(ring.as_raw_fd())
            .inspect_err(|e| log::debug!("ring positions not mapped: {e}"))
            .ok();
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
            high_water: fill.as_ref().map(|_| 0),
            fill,
            max_drain_gap: Duration::ZERO,
            last_drain: None,
            poll: DEFAULT_POLL,
        })
    }

    /// Appends every record waiting in the ring to `out`, decoded and deduplicated. Does not
    /// block. Returns how many events were appended.
    pub fn drain_into(&mut self, out: &mut Vec<Event>) -> usize {
        let before = out.len();
        if let (Some(f), Some(hw)) = (&self.fill, &mut self.high_water) {
            *hw = (*hw).max(f.bytes());
        }
        let ring = &mut self.ring.get_mut().0;
        while let Some(item) = ring.next() {
            self.records += 1;
            match decode(&item) {
                Ok(ev) => {
                    if self.dedup.keep(&ev) {
                        out.push(ev);
                    }
                }
                Err(_) => self.undecodable += 1,
            }
        }
        self.drains += 1;
        let now = Instant::now();
        if let Some(last) = self.last_drain.replace(now) {
            self.max_drain_gap = self.max_drain_gap.max(now - last);
        }
        out.len() - before
    }

    /// Waits until the poll interval passes or the kernel wakes us, then drains.
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> usize {
        let poll = self.poll;
        tokio::select! {
            guard = self.ring.readable_mut() => {
                if let Ok(mut g) = guard {
                    g.clear_ready();
                }
            }
            _ = tokio::time::sleep(poll) => {}
        }
        self.drain_into(out)
    }
}
