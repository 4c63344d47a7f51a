//! When a measurement becomes a finding. Each value says why it is where it is; a finding that
//! fires on a healthy host is worse than none.

/// A CLOSE_WAIT socket this old is stuck, not slow: request/response servers read the peer's
/// EOF and close within milliseconds, and a minute is longer than common idle timeouts.
pub const CLOSE_WAIT_OLD_MS: u64 = 60_000;

/// A CLOSE_WAIT socket still open this long after the peer's FIN was not closed as part of
/// finishing a request: servers close within milliseconds of reading EOF.
pub const CLOSE_WAIT_STUCK_MS: u64 = 1_000;

/// Net growth of a process's CLOSE_WAIT count over the window (or new sockets stuck in it,
/// whichever is larger) that counts as a leak. A healthy
/// busy server's count moves up and down by a few as requests finish; five more at the end than
/// at the start, with none of them closing, is a trend.
pub const CLOSE_WAIT_MIN_GROWTH: u64 = 5;

/// A window this long that saw a process's CLOSE_WAIT count not grow overrides the history read
/// from its sockets' ages (they churn, or the leak stopped): what is seen live wins.
pub const CLOSE_WAIT_TRUST_LIVE_S: f64 = 60.0;

/// Projected time to `Too many open files` under which a CLOSE_WAIT leak is critical: someone
/// must act within the hour.
pub const FD_EXHAUSTION_CRITICAL_S: f64 = 3600.0;

/// Share of `RLIMIT_NOFILE` in use at which a leaking process is critical regardless of rate.
pub const FD_USE_CRITICAL: f64 = 0.9;

/// TIME_WAIT sockets (now, or in steady state at the current rate: rate x 60 s) on one listening
/// port or towards one destination before it is worth a finding. Below a hundred, TIME_WAIT is
/// routine on any host that serves or makes connections.
pub const TIME_WAIT_PILE_MIN: u64 = 100;

/// Share of `ip_local_port_range` held by TIME_WAIT towards one destination at which connect()
/// failures (EADDRNOTAVAIL) become a risk worth acting on.
pub const PORT_RISK_RATIO: f64 = 0.5;

/// Share at which the range is practically exhausted: a burst takes the rest.
pub const PORT_CRITICAL_RATIO: f64 = 0.9;

/// Projected time to exhaustion of the range below which the risk is critical.
pub const PORT_EXHAUSTION_CRITICAL_S: f64 = 300.0;

/// Share of `tcp_max_tw_buckets` in use at which the limit is close: above it a burst makes the
/// kernel skip TIME_WAIT for new closes.
pub const TW_BUCKETS_RATIO: f64 = 0.8;

/// A connection shorter than this did too little work to pay for its handshakes (three packets
/// to open, four to close): it is a candidate for reuse.
pub const SHORT_LIVED_MS: f64 = 100.0;

/// Closed connections to one peer, and their rate, before short lifetimes are a finding: a
/// handful of health checks is not a pooling opportunity.
pub const SHORT_LIVED_MIN_CONNS: u64 = 50;
pub const SHORT_LIVED_MIN_PER_S: f64 = 1.0;

/// Orphaned FIN_WAIT2 sockets that make a finding: each pins a socket for `tcp_fin_timeout`,
/// and fewer than this cost nothing worth a change.
pub const FIN_WAIT2_ORPHANS_MIN: u64 = 100;

/// TIME_WAIT lasts exactly this long on Linux (`TCP_TIMEWAIT_LEN`, not tunable).
/// <https://github.com/torvalds/linux/blob/v6.1/include/net/tcp.h>
pub const TIME_WAIT_S: f64 = 60.0;
