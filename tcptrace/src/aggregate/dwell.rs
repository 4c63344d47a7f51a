//! Dwell-time distributions: HDR histograms in microseconds, reported in milliseconds.

use hdrhistogram::Histogram;

/// Significant digits of the global per-state histograms (0.1 % resolution).
pub const GLOBAL_SIGFIG: u8 = 3;
/// Significant digits of per-group histograms: coarse (about 3 % after rounding to the bucket
/// middle) so that thousands of groups stay within a few MB.
pub const GROUP_SIGFIG: u8 = 1;

/// A distribution of durations.
#[derive(Clone, Debug)]
pub struct Dwell {
    /// Microseconds. Auto-resizing: grows only as far as the largest value seen.
    hist: Histogram<u64>,
    /// The exact largest value, in nanoseconds (the histogram only keeps its bucket).
    max_ns: u64,
}

impl Dwell {
    pub fn new(sigfig: u8) -> Dwell {
        Dwell {
            hist: Histogram::new(sigfig.clamp(1, 5)).expect("1..=5 significant digits"),
            max_ns: 0,
        }
    }

    pub fn record(&mut self, ns: u64) {
        // `record` grows the histogram; `saturating_record` would clamp to its current range.
        if self.hist.record(ns / 1_000).is_err() {
            self.hist.saturating_record(ns / 1_000);
        }
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds another distribution's values to this one.
    pub fn merge(&mut self, other: &Dwell) {
        // Both histograms auto-resize, so adding cannot run out of range.
        let _ = self.hist.add(&other.hist);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn summary(&self) -> DwellMs {
        if self.hist.is_empty() {
            return DwellMs::default();
        }
        let q = |q: f64| {
            let v = self.hist.median_equivalent(self.hist.value_at_quantile(q));
            // Never report a quantile above the exact maximum.
            ms((v * 1_000).min(self.max_ns))
        };
        DwellMs {
            count: self.count(),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: ms(self.max_ns),
        }
    }

    /// For a cumulative (Prometheus) histogram: the count of values at or below each bound
    /// (nanoseconds, ascending), and the sum of all values in nanoseconds. Both come from the
    /// HDR buckets, so a value within the bucket resolution of a bound (0.1 % for the global
    /// histograms) may count on either side, and the sum is the mean times the count.
    pub fn cumulative(&self, bounds_ns: &[u64]) -> (Vec<u64>, f64) {
        let counts = bounds_ns
            .iter()
            .map(|&b| self.hist.count_between(0, b / 1_000))
            .collect();
        (counts, self.hist.mean() * self.hist.len() as f64 * 1_000.0)
    }

    /// Heap bytes (for accounting).
    pub fn heap_bytes(&self) -> usize {
        self.hist.distinct_values() * std::mem::size_of::<u64>()
    }
}

/// Nanoseconds to milliseconds, rounded to the microsecond.
pub fn ms(ns: u64) -> f64 {
    (ns / 1_000) as f64 / 1_000.0
}

/// A dwell distribution as reported: milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct DwellMs {
    /// Samples.
    pub count: u64,
    /// Median, ms.
    pub p50: f64,
    /// 90th percentile, ms.
    pub p90: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// Largest, ms (exact).
    pub max: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_close_and_max_is_exact() {
        let mut d = Dwell::new(GLOBAL_SIGFIG);
        for i in 1..=1000u64 {
            d.record(i * 1_000_000); // 1..1000 ms
        }
        let s = d.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 500.0).abs() <= 1.0, "{s:?}");
        assert!((s.p90 - 900.0).abs() <= 1.0, "{s:?}");
        assert!((s.p99 - 990.0).abs() <= 1.0, "{s:?}");
        assert_eq!(s.max, 1000.0);
    }

    #[test]
    fn coarse_group_histogram_stays_within_a_few_percent() {
        let mut d = Dwell::new(GROUP_SIGFIG);
        for _ in 0..10 {
            d.record(60_000_000_000);
        }
        let s = d.summary();
        assert!((s.p50 - 60_000.0).abs() / 60_000.0 < 0.04, "{s:?}");
        assert_eq!(s.max, 60_000.0);
        assert!(s.p99 <= s.max);
        assert!(d.heap_bytes() < 4096, "{} bytes", d.heap_bytes());
    }

    #[test]
    fn cumulative_counts_at_bounds_and_sum() {
        let mut d = Dwell::new(GLOBAL_SIGFIG);
        for ms in [1u64, 2, 50, 60_000, 60_000] {
            d.record(ms * 1_000_000);
        }
        let (counts, sum_ns) = d.cumulative(&[500_000, 10_000_000, 1_000_000_000, 120_000_000_000]);
        assert_eq!(counts, [0, 2, 3, 5]);
        let exact = (1 + 2 + 50 + 120_000) as f64 * 1e6;
        assert!(
            (sum_ns - exact).abs() / exact < 0.001,
            "{sum_ns} vs {exact}"
        );
        assert_eq!(Dwell::new(2).cumulative(&[1]), (vec![0], 0.0));
    }

    #[test]
    fn empty_is_all_zero() {
        assert_eq!(Dwell::new(2).summary(), DwellMs::default());
    }
}
