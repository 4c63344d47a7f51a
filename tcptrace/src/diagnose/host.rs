//! What the host says about its limits: TCP sysctls (read by [`crate::host`]), the TIME_WAIT
//! overflow counter, and per process open files against `RLIMIT_NOFILE`.
//!
//! Everything lands in plain structs ([`HostFacts`], [`ProcFacts`]) so the finding logic can be
//! tested with made-up hosts. The readers are the only code here that touches /proc.
//!
//! Network sysctls and `/proc/net/*` are per network namespace: these readers see the namespace
//! tcptrace itself runs in (run it with `nsenter --net=...` to diagnose another namespace).

use std::collections::BTreeMap;

pub use crate::host::Sysctls;
use crate::owner::{cgroup, process};

/// One process's file descriptors and limit, and its container.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ProcFacts {
    pub open_fds: Option<u64>,
    /// Soft `RLIMIT_NOFILE`: open() / accept() / socket() fail with EMFILE beyond it.
    pub nofile_limit: Option<u64>,
    /// Container the process runs in (`runtime:short-id`), from its cgroup path.
    pub container: Option<String>,
}

/// Everything diagnose knows about the host besides the sockets.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct HostFacts {
    pub sysctls: Sysctls,
    /// TIME_WAIT sockets in tcptrace's network namespace, from `/proc/net/sockstat` (`tw`),
    /// unfiltered: the number `tcp_max_tw_buckets` is compared with.
    pub time_wait_now: Option<u64>,
    /// `TcpExt: TCPTimeWaitOverflow` when observation began and ended.
    pub tw_overflow_start: Option<u64>,
    pub tw_overflow_end: Option<u64>,
    /// Per pid, for the processes that appear in findings.
    pub processes: BTreeMap<u32, ProcFacts>,
}

impl HostFacts {
    /// Timewait sockets the kernel could not create during the window.
    pub fn tw_overflow_growth(&self) -> Option<u64> {
        Some(
            self.tw_overflow_end?
                .saturating_sub(self.tw_overflow_start?),
        )
    }

    /// Reads the sysctls and counters now (the start of observation).
    pub fn read_start() -> HostFacts {
        HostFacts {
            sysctls: Sysctls::read(),
            tw_overflow_start: read_tw_overflow(),
            ..HostFacts::default()
        }
    }

    /// Reads what is read at the end: the overflow counter, the timewait count, and the
    /// processes named by `pids`.
    pub fn read_end(&mut self, pids: impl IntoIterator<Item = u32>) {
        self.tw_overflow_end = read_tw_overflow();
        self.time_wait_now = std::fs::read_to_string("/proc/net/sockstat")
            .ok()
            .and_then(|t| parse_sockstat_tw(&t));
        for pid in pids {
            self.processes.entry(pid).or_insert_with(|| read_proc(pid));
        }
    }
}

fn read_tw_overflow() -> Option<u64> {
    parse_netstat(
        &std::fs::read_to_string("/proc/net/netstat").ok()?,
        "TcpExt",
        "TCPTimeWaitOverflow",
    )
}

/// One counter from `/proc/net/netstat`: each group is a header line of names followed by a
/// line of values, both starting with `Group:`.
pub fn parse_netstat(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// The `tw` field of the `TCP:` line of `/proc/net/sockstat`.
pub fn parse_sockstat_tw(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(k) = it.next() {
        if k == "tw" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// A process's fds, limit and container, as /proc shows them now.
pub fn read_proc(pid: u32) -> ProcFacts {
    ProcFacts {
        open_fds: process::open_fds(pid).map(|n| n as u64),
        nofile_limit: process::nofile_limit(pid).map(|(soft, _)| soft),
        container: cgroup::cgroup_path_of_pid(pid)
            .and_then(|p| cgroup::container_from_path(&p))
            .map(|c| format!("{}:{}", c.runtime, c.short_id())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstat_counter_is_found_by_name() {
        let text = "TcpExt: SyncookiesSent TCPTimeWaitOverflow TW\n\
                    TcpExt: 1 42 7\n\
                    IpExt: InNoRoutes\n\
                    IpExt: 3\n";
        assert_eq!(
            parse_netstat(text, "TcpExt", "TCPTimeWaitOverflow"),
            Some(42)
        );
        assert_eq!(parse_netstat(text, "IpExt", "InNoRoutes"), Some(3));
        assert_eq!(parse_netstat(text, "TcpExt", "Nope"), None);
    }

    #[test]
    fn sockstat_tw_parses() {
        let s = "sockets: used 25\nTCP: inuse 2 orphan 0 tw 1103 alloc 2 mem 223\n";
        assert_eq!(parse_sockstat_tw(s), Some(1103));
    }

    #[test]
    fn this_host_has_the_counters_diagnose_reads() {
        let h = HostFacts::read_start();
        assert!(h.tw_overflow_start.is_some(), "TCPTimeWaitOverflow");
        assert!(h.sysctls.tcp_max_tw_buckets.is_some());
        assert!(h.sysctls.tcp_tw_reuse.is_some());
        // Removed in 4.12; this host runs a newer kernel.
        assert_eq!(h.sysctls.tcp_tw_recycle, None);
        let me = read_proc(std::process::id());
        assert!(me.open_fds.unwrap() >= 3 && me.nofile_limit.unwrap() >= 3);
    }
}
