//! Root-cause diagnosis: measurements become ranked findings an on-call engineer can act on.
//!
//! Input is [`Evidence`] (the report summary, the socket table's details, growth over the
//! window) and [`HostFacts`] (sysctls, counters, fd limits). Both are plain data, so every
//! finding's logic is tested without a kernel. Each finding says what (with numbers), who,
//! since when and how fast, why (the mechanism), and what to do: the application fix first,
//! then the kernel knobs the evidence calls for, with their caveats. No knob is suggested that
//! the evidence does not support, and `tcp_tw_recycle` never is.

mod close_wait;
pub mod evidence;
mod fixes;
pub mod host;
mod kernel;
mod ports;
pub mod thresholds;
mod time_wait;
pub mod timeline;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use crate::lifecycle::{CauseCounts, LeakCause};

pub use evidence::{
    DestEvidence, Evidence, ListenPortEvidence, PeerLifetimes, ProcEvidence, ProcId,
};
pub use host::{HostFacts, ProcFacts, Sysctls};
pub use timeline::{Sample, Timeline};

/// How urgent a finding is. Ordered most urgent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Failure is imminent (fd or port exhaustion within the hour, kernel dropping TIME_WAIT).
    Critical,
    /// Growing toward a failure.
    High,
    /// Wrong, but not on its way to a failure at the current rate.
    Medium,
    /// Costs resources; worth fixing when convenient.
    Low,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }
}

/// What kind of problem a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A process does not close sockets after the peer closed them.
    CloseWaitLeak,
    /// A server closes accepted connections first: TIME_WAIT on its listening port.
    TimeWaitServerClose,
    /// A client opens and closes connections to one destination: TIME_WAIT on ephemeral ports.
    TimeWaitClientClose,
    /// TIME_WAIT towards one destination holds much of the ephemeral port range.
    PortExhaustion,
    /// TIME_WAIT sockets near (or over) `tcp_max_tw_buckets`.
    TimeWaitBuckets,
    /// Many short connections to one peer: a connection-reuse opportunity.
    ShortLived,
    /// Orphaned FIN_WAIT2 sockets pile up: peers that never close.
    FinWait2Orphans,
    /// `tcp_tw_recycle` is on (kernels before 4.12).
    TwRecycle,
}

/// A process a finding names.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct WhoProc {
    pub pid: u32,
    /// The task name: set by the process itself, so untrusted.
    pub comm: String,
    pub container: Option<String>,
    pub open_fds: Option<u64>,
    pub nofile_limit: Option<u64>,
}

/// Who is involved.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Who {
    pub processes: Vec<WhoProc>,
    pub local_ports: Vec<u16>,
    /// `addr:port` (or `[v6]:port`), most involved first.
    pub peers: Vec<String>,
}

/// A kernel setting the evidence calls for, with its current value and caveats.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Knob {
    /// `net.ipv4.tcp_tw_reuse` etc.
    pub sysctl: &'static str,
    pub current: Option<String>,
    pub advice: String,
}

/// One diagnosis.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub severity: Severity,
    pub title: String,
    /// What is happening, with the numbers.
    pub what: String,
    pub who: Who,
    /// When it started, seconds since the epoch (the oldest socket's entry), if known.
    pub since_unix: Option<f64>,
    /// `since_unix` is estimated from the kernel's clocks (sockets older than tracing), not seen.
    pub since_estimated: bool,
    /// Net growth per second of the count the finding is about.
    pub growth_per_s: Option<f64>,
    /// Projected seconds until the limit is hit at the current rate.
    pub eta_s: Option<f64>,
    /// The mechanism, in one or two sentences.
    pub why: String,
    /// What to change in the application (or its configuration), most effective first.
    pub fix: Vec<String>,
    /// Kernel settings, only those the evidence calls for.
    pub knobs: Vec<Knob>,
    /// The measurements behind the finding, by name (machine-readable).
    pub numbers: BTreeMap<&'static str, f64>,
    /// CLOSE_WAIT leaks: the sockets by why they are stuck (from their receive queues).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causes: Option<CauseCounts>,
    /// CLOSE_WAIT leaks: the most common cause, which `why` and `fix` are about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<LeakCause>,
}

/// Every finding the evidence supports, most severe first.
pub fn diagnose(ev: &Evidence, host: &HostFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    out.extend(close_wait::leaks(ev, host));
    out.extend(ports::exhaustion(ev, host));
    out.extend(time_wait::server_close(ev, host));
    out.extend(time_wait::client_close(ev, host));
    out.extend(kernel::tw_buckets(ev, host));
    out.extend(time_wait::short_lived(ev, host));
    out.extend(kernel::fin_wait2_orphans(ev, host));
    out.extend(kernel::tw_recycle(host));
    // Stable: within a severity, the order above (leaks before pressure) holds.
    out.sort_by_key(|f| f.severity);
    out
}

/// Names a process with what /proc said about it.
pub(crate) fn who_proc(p: &ProcId, host: &HostFacts) -> WhoProc {
    let f = host.processes.get(&p.pid).cloned().unwrap_or_default();
    WhoProc {
        pid: p.pid,
        comm: p.comm.clone(),
        container: f.container,
        open_fds: f.open_fds,
        nofile_limit: f.nofile_limit,
    }
}

/// TIME_WAIT sockets at steady state for an entry rate: each stays 60 s, and the kernel never
/// holds more than `tcp_max_tw_buckets` (past it, closes skip TIME_WAIT).
pub(crate) fn steady_state(per_s: f64, host: &HostFacts) -> f64 {
    let cap = host
        .sysctls
        .tcp_max_tw_buckets
        .map_or(f64::INFINITY, |m| m as f64);
    (per_s * thresholds::TIME_WAIT_S).min(cap)
}

/// `1.2 h`, `15 min`, `40 s`.
pub fn human_s(s: f64) -> String {
    if !s.is_finite() {
        return "never".into();
    }
    if s >= 7200.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 120.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{s:.0} s")
    }
}
