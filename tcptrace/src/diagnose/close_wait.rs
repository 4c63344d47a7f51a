//! CLOSE_WAIT leaks: a process that does not close sockets its peers have closed.

use std::collections::BTreeMap;

use super::thresholds::{
    CLOSE_WAIT_MIN_GROWTH, CLOSE_WAIT_OLD_MS, FD_EXHAUSTION_CRITICAL_S, FD_USE_CRITICAL,
};
use super::{Evidence, Finding, HostFacts, Kind, Severity, Who, human_s, who_proc};
use crate::clock::human_ms;

/// One finding per process whose CLOSE_WAIT count grew during the window, or that holds
/// CLOSE_WAIT sockets older than [`CLOSE_WAIT_OLD_MS`].
pub fn leaks(ev: &Evidence, host: &HostFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in &ev.processes {
        if p.close_wait == 0 {
            continue;
        }
        // Net growth: start and end of the window, else (one sample) the entries seen.
        let grown = match p.close_wait_at_start {
            Some(start) => p.close_wait.saturating_sub(start),
            None => p.close_wait_entries.min(p.close_wait),
        }
        .max(p.close_wait_stuck_new);
        let growing = grown >= CLOSE_WAIT_MIN_GROWTH;
        // Sockets older than tracing count as old once the window itself is that long.
        let unknown_old = if ev.window_s * 1000.0 >= CLOSE_WAIT_OLD_MS as f64 {
            p.close_wait_age_unknown
        } else {
            0
        };
        let old = p.close_wait_old + unknown_old;
        if !growing && old == 0 {
            continue;
        }
        let rate = p
            .close_wait_growth_per_s
            .unwrap_or(0.0)
            .max(if ev.window_s > 0.0 {
                grown as f64 / ev.window_s
            } else {
                0.0
            });
        let who = who_proc(&p.proc, host);
        let mut numbers = BTreeMap::new();
        numbers.insert("close_wait", p.close_wait as f64);
        numbers.insert("close_wait_growth", grown as f64);
        numbers.insert("close_wait_growth_per_s", rate);
        numbers.insert("close_wait_old", old as f64);
        let mut what = format!(
            "{} sockets in CLOSE_WAIT; {} new ones not closed during the {:.0} s window ({:.2}/s)",
            p.close_wait, grown, ev.window_s, rate
        );
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
        if p.close_wait_age_unknown > 0 {
            what.push_str(&format!(
                "; {} older than tracing (over {:.0} s)",
                p.close_wait_age_unknown, ev.window_s
            ));
        }
        what.push('.');
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
            if rate > 0.0 && growing {
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
        } else if growing {
            Severity::High
        } else {
            Severity::Medium
        };
        let since_unix = oldest_ms.map(|m| ev.now_unix - m / 1000.0);
        out.push(Finding {
            kind: Kind::CloseWaitLeak,
            severity,
            title: format!(
                "{} (pid {}) leaks CLOSE_WAIT sockets{}",
                p.proc.comm,
                p.proc.pid,
                if growing { ", growing" } else { "" }
            ),
            what,
            who: Who {
                processes: vec![who],
                local_ports: p.close_wait_local_ports.iter().map(|x| x.0).collect(),
                peers: p.close_wait_peers.iter().map(|x| x.0.clone()).collect(),
            },
            since_unix,
            growth_per_s: Some(rate),
            eta_s,
            why: "The peer closed its side (its FIN arrived, read() returned 0) but this process \
                  never called close() on its socket. The socket and its file descriptor stay \
                  until the process closes it or exits."
                .into(),
            fix: vec![
                "Close the socket when read() returns 0 (EOF), on every code path including \
                 errors and timeouts."
                    .into(),
                "If it is a connection pool: release connections back to the pool and evict \
                 connections the server closed (validate or test on borrow, idle timeout shorter \
                 than the server's)."
                    .into(),
                "HTTP clients: always close (or fully read) response bodies.".into(),
                "No sysctl cures this: the kernel keeps CLOSE_WAIT as long as the application \
                 holds the socket. Raising RLIMIT_NOFILE only delays the failure."
                    .into(),
            ],
            knobs: Vec::new(),
            numbers,
        });
    }
    out
}
