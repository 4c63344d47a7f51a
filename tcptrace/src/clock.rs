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

/// Milliseconds as a short human duration: `850ms`, `12.3s`, `4m05s`, `2h10m`.
pub fn human_ms(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        return "-".into();
    }
    if ms < 1000.0 {
        return format!("{ms:.0}ms");
    }
    let s = ms / 1000.0;
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let s = s as u64;
    if s < 3600 {
        return format!("{}m{:02}s", s / 60, s % 60);
    }
    format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
}

#[cfg(test)]
mod tests {
    use super::human_ms;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_ms(850.0), "850ms");
        assert_eq!(human_ms(12_345.0), "12.3s");
        assert_eq!(human_ms(245_000.0), "4m05s");
        assert_eq!(human_ms(7_800_000.0), "2h10m");
    }
}
