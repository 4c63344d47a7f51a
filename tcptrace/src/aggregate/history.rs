//! A CLOSE_WAIT leak's past, read from the sockets it still holds: each held socket leaked when
//! it entered CLOSE_WAIT, so their ages (seen, or dated by the kernel's receive clocks for those
//! older than tracing) are the times of the leak. A one-second look at a leak that began an hour
//! ago so gets its rate and its start, not the rate of the second.

/// The leak history of one group.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LeakHistory {
    /// CLOSE_WAIT sockets held whose age is known or estimated.
    pub sockets: u64,
    /// Of those, dated by the kernel's receive clocks (older than tracing; their ages are lower
    /// bounds).
    pub estimated: u64,
    /// Age of the oldest, seconds: when the leak (as far as its sockets are still held) began.
    pub span_s: f64,
    /// Sockets leaked and still held per second over the span. Over the youngest 90 % of the
    /// sockets, so that a few much older ones (an earlier, separate leak) do not dilute it.
    pub per_s: f64,
    /// Age of the youngest, seconds.
    pub youngest_s: f64,
    /// The oldest age is an estimate, and so is the start.
    pub since_estimated: bool,
    /// Still leaking: the youngest socket is about as young as the rate predicts.
    pub ongoing: bool,
}

/// Share of the sockets, youngest first, the rate is taken over.
const RATE_SHARE: f64 = 0.9;

/// The history of a group from the ages of its CLOSE_WAIT sockets, sorted ascending, each with
/// whether it is an estimate. None with fewer than two sockets: one socket has no rate.
pub fn history(sorted_ages_ns: &[(u64, bool)]) -> Option<LeakHistory> {
    let n = sorted_ages_ns.len();
    if n < 2 {
        return None;
    }
    let s = |ns: u64| ns as f64 / 1e9;
    let (oldest, oldest_estimated) = sorted_ages_ns[n - 1];
    let k = ((RATE_SHARE * n as f64).ceil() as usize).clamp(2, n);
    // k sockets leaked within the age of the k-th youngest.
    let per_s = k as f64 / s(sorted_ages_ns[k - 1].0).max(1e-3);
    let youngest_s = s(sorted_ages_ns[0].0);
    Some(LeakHistory {
        sockets: n as u64,
        estimated: sorted_ages_ns.iter().filter(|a| a.1).count() as u64,
        span_s: s(oldest),
        per_s,
        youngest_s,
        since_estimated: oldest_estimated,
        // At a steady rate the youngest is at most a few intervals old.
        ongoing: youngest_s <= 3.0 / per_s + 1.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// A leak of `per_s` a second that began `for_s` ago, seen `now` (ages sorted).
    fn steady(per_s: f64, for_s: f64, estimated_over_s: f64) -> Vec<(u64, bool)> {
        let n = (per_s * for_s) as u64;
        (0..n)
            .map(|i| {
                let age = (i as f64 + 0.5) / per_s;
                ((age * S as f64) as u64, age > estimated_over_s)
            })
            .collect()
    }

    #[test]
    fn a_steady_leak_gives_its_rate_and_start() {
        let h = history(&steady(2.0, 300.0, 1.0)).unwrap();
        assert_eq!(h.sockets, 600);
        assert!((h.per_s - 2.0).abs() < 0.05, "{h:?}");
        assert!((h.span_s - 300.0).abs() < 1.0, "{h:?}");
        assert!(h.since_estimated && h.ongoing);
        assert_eq!(h.estimated, 598);
    }

    #[test]
    fn a_few_old_sockets_do_not_dilute_a_recent_leak() {
        let mut ages = steady(5.0, 60.0, 0.0);
        ages.push((86_400 * S, true));
        ages.sort_unstable();
        let h = history(&ages).unwrap();
        assert!((h.per_s - 5.0).abs() < 0.3, "{h:?}");
        assert_eq!(h.span_s, 86_400.0);
    }

    #[test]
    fn a_leak_that_stopped_is_not_ongoing() {
        // 100 sockets leaked over 100 s, the youngest an hour ago.
        let ages: Vec<(u64, bool)> = (0..100).map(|i| ((3600 + i) * S, true)).collect();
        let h = history(&ages).unwrap();
        assert!(!h.ongoing, "{h:?}");
    }

    #[test]
    fn one_socket_has_no_rate() {
        assert_eq!(history(&[(5 * S, false)]), None);
        assert_eq!(history(&[]), None);
    }
}
