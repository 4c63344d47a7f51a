//! Kernel timestamps (CLOCK_MONOTONIC, from `bpf_ktime_get_ns`) and wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// CLOCK_MONOTONIC now, in nanoseconds: the clock the kernel programs stamp events with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass and has no other effect.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Converts monotonic kernel timestamps to wall-clock time, using one offset taken at start.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// Wall-clock nanoseconds since the epoch minus monotonic nanoseconds, at creation.
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> WallClock {
        let mono = monotonic_ns() as i128;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        WallClock {
            offset_ns: wall - mono,
        }
    }

    /// A clock with a fixed offset, for replay and tests.
    pub fn with_offset_ns(offset_ns: i128) -> WallClock {
        WallClock { offset_ns }
    }

    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }

    pub fn to_system_time(&self, mono_ns: u64) -> SystemTime {
        let wall = (mono_ns as i128 + self.offset_ns).max(0) as u128;
        UNIX_EPOCH + Duration::from_nanos(wall as u64)
    }

    /// Seconds since the epoch, with fractions, for JSON.
    pub fn unix_secs(&self, mono_ns: u64) -> f64 {
        let ns = mono_ns as i128 + self.offset_ns;
        // The same rounding either way; i64 converts in one instruction, i128 in a libcall.
        match i64::try_from(ns) {
            Ok(ns) => ns as f64 / 1e9,
            Err(_) => ns as f64 / 1e9,
        }
    }
}
