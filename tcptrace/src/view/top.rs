//! `tcptrace top`: one screen of the busiest processes, ports or peers.

use std::fmt::Write as _;

use super::report::{
    FAILURE_HEADERS, container_cell, failure_cells, oldest_close_wait, process_cells,
};
use super::table::{Align, Table, rate};
use crate::aggregate::{GroupCounts, Summary};
use crate::clock::human_ms;

/// What the rows are. (A value enum for `--by`: the screen's own setting, which clap parses.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    Pid,
    Port,
    Peer,
}

/// Which count orders the rows (`--sort`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    #[value(name = "close-wait", alias = "cw")]
    CloseWait,
    #[value(name = "time-wait", alias = "tw")]
    TimeWait,
}

/// What the screen shows; keys change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopState {
    pub by: GroupBy,
    pub sort: SortBy,
    pub rows: usize,
}

impl TopState {
    /// Applies a key press; returns false for quit.
    pub fn key(&mut self, c: char) -> bool {
        match c {
            'q' | 'Q' => return false,
            'p' => self.by = GroupBy::Pid,
            'o' => self.by = GroupBy::Port,
            'e' => self.by = GroupBy::Peer,
            'c' => self.sort = SortBy::CloseWait,
            't' => self.sort = SortBy::TimeWait,
            _ => {}
        }
        true
    }
}

fn sort_key(c: &GroupCounts, sort: SortBy) -> (u64, u64, u64) {
    match sort {
        SortBy::CloseWait => (c.close_wait, c.close_wait_entries, c.time_wait),
        SortBy::TimeWait => (c.time_wait, c.time_wait_entries, c.close_wait),
    }
}

/// Renders one screen. `lost` is always on the first line.
pub fn screen(s: &Summary, st: &TopState, lost: u64, clock: &str, interactive: bool) -> String {
    let mut out = String::new();
    let tw = s.totals.get(tcptrace_common::TcpState::TimeWait);
    let cw = s.totals.get(tcptrace_common::TcpState::CloseWait);
    let est = s.totals.get(tcptrace_common::TcpState::Established);
    let _ = writeln!(
        out,
        "tcptrace top  {clock}  up {:.0}s  sockets {}  ESTABLISHED {est}  CLOSE_WAIT {cw}  TIME_WAIT {tw}  lost events {lost}{}",
        s.window_s,
        s.sockets,
        super::loss::suffix(s)
    );
    let by = match st.by {
        GroupBy::Pid => "process",
        GroupBy::Port => "local port",
        GroupBy::Peer => "peer",
    };
    let sort = match st.sort {
        SortBy::CloseWait => "CLOSE_WAIT",
        SortBy::TimeWait => "TIME_WAIT",
    };
    if interactive {
        let _ = writeln!(
            out,
            "by {by}, sorted by {sort}    keys: p process  o port  e peer  c/t sort  q quit"
        );
    } else {
        let _ = writeln!(out, "by {by}, sorted by {sort}");
    }
    let heads = [
        ("CLOSE_WAIT", Align::Right),
        ("CW/s", Align::Right),
        ("HELD/s", Align::Right),
        ("OLDEST_CW", Align::Right),
        ("CW_CAUSE", Align::Left),
        ("TIME_WAIT", Align::Right),
        ("TW/s", Align::Right),
        ("TW_P50", Align::Right),
    ];
    let cells = |c: &GroupCounts| -> Vec<String> {
        vec![
            c.close_wait.to_string(),
            rate(c.close_wait_per_s),
            // The leak's rate from its sockets' ages: right from the first screen.
            c.close_wait_history
                .map_or_else(|| "-".into(), |h| rate(h.per_s)),
            oldest_close_wait(c).unwrap_or_else(|| "-".into()),
            c.close_wait_causes
                .and_then(|k| k.dominant())
                .map_or_else(|| "-".into(), |k| k.name().to_string()),
            c.time_wait.to_string(),
            rate(c.time_wait_per_s),
            c.dwell_ms
                .get("TIME_WAIT")
                .map(|d| human_ms(d.p50))
                .unwrap_or_else(|| "-".into()),
        ]
    };
    let containers = s.by_pid.iter().any(|r| r.container.is_some());
    let mut rows: Vec<(Vec<String>, (u64, u64, u64))> = match st.by {
        GroupBy::Pid => s
            .by_pid
            .iter()
            .map(|r| {
                let mut v = process_cells(r.pid, r.comm.as_str(), r.ended_processes).to_vec();
                if containers {
                    v.push(container_cell(r.container.as_ref()));
                }
                v.extend(cells(&r.counts));
                (v, sort_key(&r.counts, st.sort))
            })
            .collect(),
        GroupBy::Port => s
            .by_local_port
            .iter()
            .map(|r| {
                let mut v = vec![r.port.to_string()];
                v.extend(cells(&r.counts));
                (v, sort_key(&r.counts, st.sort))
            })
            .collect(),
        GroupBy::Peer => s
            .by_peer
            .iter()
            .map(|r| {
                let peer = match r.port {
                    Some(p) if r.addr.contains(':') => format!("[{}]:{p}", r.addr),
                    Some(p) => format!("{}:{p}", r.addr),
                    None => format!("{} (inbound)", r.addr),
                };
                let mut v = vec![peer];
                v.extend(cells(&r.counts));
                (v, sort_key(&r.counts, st.sort))
            })
            .collect(),
    };
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    let mut h: Vec<(&str, Align)> = match st.by {
        GroupBy::Pid if containers => vec![
            ("PID", Align::Right),
            ("COMM", Align::Left),
            ("CONTAINER", Align::Left),
        ],
        GroupBy::Pid => vec![("PID", Align::Right), ("COMM", Align::Left)],
        GroupBy::Port => vec![("LOCAL_PORT", Align::Right)],
        GroupBy::Peer => vec![("PEER", Align::Left)],
    };
    h.extend_from_slice(&heads);
    let mut t = Table::new(&h);
    for (cells, _) in rows.into_iter().take(st.rows) {
        t.row(cells);
    }
    out.push('\n');
    out.push_str(&t.render());
    if t.is_empty() {
        out.push_str("(no sockets in TIME_WAIT or CLOSE_WAIT)\n");
    }
    if !s.connect_failures.is_empty() {
        let mut t = Table::new(&FAILURE_HEADERS);
        for r in s.connect_failures.iter().take(FAILED_ROWS) {
            t.row(failure_cells(r).to_vec());
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

/// Failed-connect rows under the main table.
const FAILED_ROWS: usize = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_switch_grouping_and_sort_and_quit() {
        let mut st = TopState {
            by: GroupBy::Pid,
            sort: SortBy::CloseWait,
            rows: 10,
        };
        assert!(st.key('e'));
        assert_eq!(st.by, GroupBy::Peer);
        assert!(st.key('t'));
        assert_eq!(st.sort, SortBy::TimeWait);
        assert!(st.key('o'));
        assert_eq!(st.by, GroupBy::Port);
        assert!(!st.key('q'));
    }
}
