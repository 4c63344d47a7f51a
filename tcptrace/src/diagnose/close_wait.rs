//! CLOSE_WAIT leaks: a process that does not close sockets its peers have closed.
//!
//! How fast and since when come from the ages of the sockets it holds (each leaked when it
//! entered CLOSE_WAIT; those older than tracing are dated by the kernel's receive clocks), so a
//! short look at an old leak gets its real rate; what was seen growing live wins over that
//! estimate once the window is long. Why comes from the receive queues (see
//! [`crate::lifecycle::LeakCause`]), and the advice follows the cause.

use std::collections::BTreeMap;

use super::thresholds::{
    CLOSE_WAIT_MIN_GROWTH, CLOSE_WAIT_OLD_MS, CLOSE_WAIT_TRUST_LIVE_S, FD_EXHAUSTION_CRITICAL_S,
    FD_USE_CRITICAL,
};
use super::{Evidence, Finding, HostFacts, Kind, ProcEvidence, Severity, Who, human_s, who_proc};
use crate::clock::human_ms;
use crate::lifecycle::{CauseCounts, LeakCause};

/// How fast a process leaks and since when.
struct Pace {
    /// Net growth seen during the window (never counting sockets older than tracing).
    grown: u64,
    growing: bool,
    per_s: f64,
    /// From the ages of the sockets held rather than from what the window saw.
    from_history: bool,
    since_ago_s: Option<f64>,
    since_estimated: bool,
}

fn pace(p: &ProcEvidence, window_s: f64) -> Pace {
    // Net growth: start and end of the window, else (one sample) the entries seen; at most the
    // sockets seen entering CLOSE_WAIT that are still held: a socket older than tracing that
    // got its owner during the window is not growth.
    let grown = match p.close_wait_at_start {
        Some(start) => p.close_wait.saturating_sub(start),
        None => p.close_wait_entries.min(p.close_wait),
    }
    .max(p.close_wait_stuck_new)
    .min(p.close_wait_new_held);
    let live_per_s = if window_s > 0.0 {
        grown as f64 / window_s
    } else {
        0.0
    };
    let oldest_s = p.close_wait_age_ms.map(|a| a.max / 1000.0);
    // A long window that saw no growth overrides the history: the sockets churn (or the leak
    // stopped) rather than pile up.
    let live_says_flat = window_s >= CLOSE_WAIT_TRUST_LIVE_S && grown < CLOSE_WAIT_MIN_GROWTH;
    match p.close_wait_history {
        Some(h) if h.ongoing && !live_says_flat => Pace {
            grown,
            growing: grown >= CLOSE_WAIT_MIN_GROWTH || h.sockets >= CLOSE_WAIT_MIN_GROWTH,
            per_s: h.per_s,
            from_history: true,
            since_ago_s: Some(h.span_s),
            since_estimated: h.since_estimated,
        },
        _ => Pace {
            grown,
            growing: grown >= CLOSE_WAIT_MIN_GROWTH,
            per_s: live_per_s,
            from_history: false,
            since_ago_s: oldest_s,
            since_estimated: p.close_wait_age_estimated > 0,
        },
    }
}

/// One finding per process whose CLOSE_WAIT count grows (seen, or read from the ages of the
/// sockets it holds), or that holds CLOSE_WAIT sockets older than [`CLOSE_WAIT_OLD_MS`].
pub fn leaks(ev: &Evidence, host: &HostFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in &ev.processes {
        if p.close_wait == 0 {
            continue;
        }
        let pace = pace(p, ev.window_s);
        // Undated sockets older than tracing count as old once the window itself is that long.
        let unknown_old = if ev.window_s * 1000.0 >= CLOSE_WAIT_OLD_MS as f64 {
            p.close_wait_age_unknown
        } else {
            0
        };
        let old = p.close_wait_old + unknown_old;
        if !pace.growing && old == 0 {
            continue;
        }
        let rate = pace.per_s;
        let who = who_proc(&p.proc, host);
        let mut numbers = BTreeMap::new();
        numbers.insert("close_wait", p.close_wait as f64);
        numbers.insert("close_wait_growth", pace.grown as f64);
        numbers.insert("close_wait_growth_per_s", rate);
        numbers.insert("close_wait_old", old as f64);
        numbers.insert(
            "close_wait_age_estimated",
            p.close_wait_age_estimated as f64,
        );
        let mut what = format!("{} sockets in CLOSE_WAIT", p.close_wait);
        match p.close_wait_history.filter(|_| pace.from_history) {
            Some(h) => {
                numbers.insert("history_span_s", h.span_s);
                what.push_str(&format!(
                    "; from their ages, {:.2} new per second still held over the last {}{} \
                     ({} new during the {:.0} s window)",
                    rate,
                    human_s(h.span_s),
                    if h.since_estimated {
                        ", estimated from the kernel's receive clocks"
                    } else {
                        ""
                    },
                    pace.grown,
                    ev.window_s
                ));
            }
            None => what.push_str(&format!(
                "; {} new ones not closed during the {:.0} s window ({:.2}/s)",
                pace.grown, ev.window_s, rate
            )),
        }
        let oldest_ms = p.close_wait_age_ms.map(|a| a.max);
        if let Some(a) = p.close_wait_age_ms {
            what.push_str(&format!(
                "; ages: median {}, p90 {}, oldest {}",
                human_ms(a.p50),
                human_ms(a.p90),
                human_ms(a.max)
            ));
            numbers.insert("close_wait_oldest_ms", a.max);
        }
        if p.close_wait_age_estimated > 0 {
            what.push_str(&format!(
                " ({} older than tracing, aged by the kernel's clocks: at least that old)",
                p.close_wait_age_estimated
            ));
        }
        if p.close_wait_age_unknown > 0 {
            what.push_str(&format!(
                "; {} older than tracing (over {:.0} s)",
                p.close_wait_age_unknown, ev.window_s
            ));
        }
        what.push('.');
        let causes = p.close_wait_causes;
        let cause = causes.dominant();
        if causes.known() > 0 {
            for c in LeakCause::ALL {
                numbers.insert(c.name(), causes.get(c) as f64);
            }
            what.push_str(&format!(" Receive queues: {}.", cause_breakdown(&causes)));
        }
        let mut eta_s = None;
        let mut fd_share = None;
        if let (Some(fds), Some(limit)) = (who.open_fds, who.nofile_limit) {
            numbers.insert("open_fds", fds as f64);
            numbers.insert("nofile_limit", limit as f64);
            let share = fds as f64 / limit.max(1) as f64;
            fd_share = Some(share);
            what.push_str(&format!(
                " The process has {fds} open files of its limit of {limit} (RLIMIT_NOFILE, {:.0}%)",
                share * 100.0
            ));
            if rate > 0.0 && pace.growing {
                let eta = limit.saturating_sub(fds) as f64 / rate;
                eta_s = Some(eta);
                numbers.insert("eta_s", eta);
                what.push_str(&format!(
                    "; at this rate accept()/socket()/open() fail with EMFILE \
                     (\"Too many open files\") in about {}.",
                    human_s(eta)
                ));
            } else {
                what.push('.');
            }
        }
        let severity = if eta_s.is_some_and(|e| e < FD_EXHAUSTION_CRITICAL_S)
            || fd_share.is_some_and(|s| s >= FD_USE_CRITICAL)
        {
            Severity::Critical
        } else if pace.growing {
            Severity::High
        } else {
            Severity::Medium
        };
        let since_ago_s = pace.since_ago_s.or(oldest_ms.map(|m| m / 1000.0));
        let (why, fix) = advice(cause, &causes);
        out.push(Finding {
            kind: Kind::CloseWaitLeak,
            severity,
            title: format!(
                "{} (pid {}) leaks CLOSE_WAIT sockets{}",
                p.proc.comm,
                p.proc.pid,
                if pace.growing { ", growing" } else { "" }
            ),
            what,
            who: Who {
                processes: vec![who],
                local_ports: p.close_wait_local_ports.iter().map(|x| x.0).collect(),
                peers: p.close_wait_peers.iter().map(|x| x.0.clone()).collect(),
            },
            since_unix: since_ago_s.map(|a| ev.now_unix - a),
            since_estimated: pace.since_estimated,
            growth_per_s: Some(rate),
            eta_s,
            why,
            fix,
            knobs: Vec::new(),
            numbers,
            causes: (causes.known() + causes.unknown > 0).then_some(causes),
            cause,
        });
    }
    out
}

/// `40 never read the peer's EOF (Recv-Q 1), 2 read EOF and did not close (Recv-Q 0)`.
fn cause_breakdown(c: &CauseCounts) -> String {
    let mut parts: Vec<String> = LeakCause::ALL
        .iter()
        .filter(|&&k| c.get(k) > 0)
        .map(|&k| {
            let words = match k {
                LeakCause::NeverReadEof => "never read the peer's EOF (Recv-Q 1)",
                LeakCause::ReadEofNotClosed => "read EOF and did not close (Recv-Q 0)",
                LeakCause::StoppedReading => "stopped reading with data unread (Recv-Q > 1)",
            };
            format!("{} {words}", c.get(k))
        })
        .collect();
    if c.unknown > 0 {
        parts.push(format!("{} not yet in a kernel table dump", c.unknown));
    }
    parts.join(", ")
}

/// Why and what to do, for the dominant cause; the others' first fix follows when they matter.
fn advice(cause: Option<LeakCause>, causes: &CauseCounts) -> (String, Vec<String>) {
    let closing = "No sysctl cures this: the kernel keeps CLOSE_WAIT as long as the application \
                   holds the socket. Raising RLIMIT_NOFILE only delays the failure.";
    let (why, mut fix): (&str, Vec<&str>) = match cause {
        Some(LeakCause::NeverReadEof) => (
            "The peer closed its side, and the only thing in these sockets' receive queues is \
             its FIN (Recv-Q 1): since then nothing has read them. Nobody is reading these \
             connections: typically idle connections in a pool that never checks them, or a \
             handler that never reads its socket.",
            vec![
                "Connection pool: validate connections on borrow (or test idle ones \
                 periodically) and evict those the server closed; make the pool's idle timeout \
                 shorter than the server's keep-alive timeout.",
                "Watch idle connections for readability (EPOLLIN / EPOLLRDHUP): an idle socket \
                 that becomes readable and returns 0 from read() was closed by the peer; close \
                 it.",
                "A handler that never reads: read the request (to EOF when the protocol says \
                 so) or close the connection when done with it.",
            ],
        ),
        Some(LeakCause::ReadEofNotClosed) => (
            "The application read the peer's EOF (read() returned 0: Recv-Q 0) and still did \
             not call close(): a missing close on the EOF or error path.",
            vec![
                "Close the socket where read() returns 0, and on every error and timeout \
                 path (try/finally, defer, RAII, with-blocks).",
                "Look for the code that handles the peer's EOF and returns (or logs) without \
                 closing: a connection object dropped from a table but not closed, or a \
                 file descriptor kept by a forgotten reference.",
            ],
        ),
        Some(LeakCause::StoppedReading) => (
            "Data from the peer sits unread before its FIN (Recv-Q larger than 1): the code \
             reading these sockets stopped, blocked or stuck (a deadlock, a slow downstream \
             call, an exhausted worker pool) or gave up on the connection without closing it.",
            vec![
                "Find what the threads serving these connections wait on: take a thread dump \
                 or stack trace of the process (jstack, py-spy, gdb, /proc/PID/task/*/stack).",
                "Put timeouts on request handling and downstream calls, and close the \
                 connection when they fire.",
                "HTTP clients: always close (or fully read) response bodies.",
            ],
        ),
        None => (
            "The peer closed its side (its FIN arrived, read() returned 0) but this process \
             never called close() on its socket. The socket and its file descriptor stay \
             until the process closes it or exits.",
            vec![
                "Close the socket when read() returns 0 (EOF), on every code path including \
                 errors and timeouts.",
                "If it is a connection pool: release connections back to the pool and evict \
                 connections the server closed (validate or test on borrow, idle timeout \
                 shorter than the server's).",
                "HTTP clients: always close (or fully read) response bodies.",
            ],
        ),
    };
    // A second cause with a sizeable share gets its first fix too.
    let mut extra = Vec::new();
    if let Some(main) = cause {
        for c in LeakCause::ALL {
            if c != main && causes.get(c) * 5 >= causes.known().max(1) && causes.get(c) > 0 {
                let (_, f) = advice(Some(c), &CauseCounts::default());
                extra.push(format!(
                    "Also {} of them {}: {}",
                    causes.get(c),
                    match c {
                        LeakCause::NeverReadEof => "were never read",
                        LeakCause::ReadEofNotClosed => "read EOF and were not closed",
                        LeakCause::StoppedReading => "have data unread",
                    },
                    f[0]
                ));
            }
        }
    }
    fix.push(closing);
    let mut fix: Vec<String> = fix.into_iter().map(String::from).collect();
    let n = fix.len();
    fix.splice(n - 1..n - 1, extra);
    (why.to_string(), fix)
}
