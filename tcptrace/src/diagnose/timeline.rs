//! TIME_WAIT and CLOSE_WAIT counts per process, sampled once a second during observation: the
//! growth rates findings quote and the plots of the HTML report.

use std::collections::BTreeMap;

use tcptrace_common::TcpState;

use crate::lifecycle::SocketTable;

/// Processes kept per sample (those with the most TIME_WAIT + CLOSE_WAIT): bounds memory on a
/// host with thousands of processes, and more lines than this make an unreadable plot anyway.
pub const MAX_PIDS_PER_SAMPLE: usize = 64;

/// Counts at one instant.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Sample {
    /// Seconds since observation began.
    pub t_s: f64,
    /// Tracked sockets (matching the filters) in TIME_WAIT / CLOSE_WAIT.
    pub time_wait: u64,
    pub close_wait: u64,
    /// pid -> (TIME_WAIT, CLOSE_WAIT), for sockets with a known owner.
    pub by_pid: BTreeMap<u32, (u64, u64)>,
}

/// Samples in time order.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Timeline {
    pub samples: Vec<Sample>,
    /// pid -> comm, for the processes sampled.
    pub comms: BTreeMap<u32, String>,
}

impl Timeline {
    /// Counts the table now (`t_s`: seconds since start).
    pub fn sample(&mut self, table: &SocketTable, t_s: f64) {
        let mut s = Sample {
            t_s,
            ..Sample::default()
        };
        for v in table.iter_where(|st| matches!(st, TcpState::TimeWait | TcpState::CloseWait)) {
            let tw = v.state == TcpState::TimeWait;
            if tw {
                s.time_wait += 1;
            } else {
                s.close_wait += 1;
            }
            if let Some(o) = v.owner {
                let e = s.by_pid.entry(o.pid).or_default();
                if tw {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
                self.comms
                    .entry(o.pid)
                    .or_insert_with(|| o.comm.as_str().to_string());
            }
        }
        if s.by_pid.len() > MAX_PIDS_PER_SAMPLE {
            let mut v: Vec<_> = s.by_pid.into_iter().collect();
            v.sort_by(|a, b| (b.1.0 + b.1.1).cmp(&(a.1.0 + a.1.1)).then(a.0.cmp(&b.0)));
            v.truncate(MAX_PIDS_PER_SAMPLE);
            s.by_pid = v.into_iter().collect();
        }
        self.samples.push(s);
    }

    /// CLOSE_WAIT of `pid` at the first and last sample, and the seconds between them.
    pub fn close_wait_change(&self, pid: u32) -> Option<(u64, u64, f64)> {
        let (first, last) = (self.samples.first()?, self.samples.last()?);
        let dt = last.t_s - first.t_s;
        let cw = |s: &Sample| s.by_pid.get(&pid).map_or(0, |c| c.1);
        (dt > 0.0).then(|| (cw(first), cw(last), dt))
    }

    /// The pids with the most TIME_WAIT + CLOSE_WAIT at any sample, at most `n`.
    pub fn top_pids(&self, n: usize) -> Vec<u32> {
        let mut peak: BTreeMap<u32, u64> = BTreeMap::new();
        for s in &self.samples {
            for (pid, (tw, cw)) in &s.by_pid {
                let p = peak.entry(*pid).or_default();
                *p = (*p).max(tw + cw);
            }
        }
        let mut v: Vec<_> = peak.into_iter().filter(|(_, n)| *n > 0).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.into_iter().take(n).map(|(p, _)| p).collect()
    }
}
