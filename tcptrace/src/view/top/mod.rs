//! `tcptrace top`: one screen of the busiest processes, ports or peers.
//!
//! [`Content`] is what a screen says, before it is laid out; [`Content::plain`] is the plain
//! snapshot (stdout not a terminal), [`terminal::draw`] lays it out on a terminal of any size.

pub mod fit;
pub mod terminal;

use super::report::{
    FAILURE_HEADERS, container_cell, failure_cells, oldest_close_wait, process_cells,
};
use super::table::{Align, Table, rate};
use crate::aggregate::{GroupCounts, Summary};
use crate::clock::human_ms;
use crate::lifecycle::Comm;
use crate::probe::Overload;

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

/// How a column gives way on a narrow terminal (the plain snapshot shows every column whole).
/// Columns give way by rank, lowest first, until the rest fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Give {
    /// Always shown whole: ids and the counts the rows are sorted by.
    Never,
    /// Hidden.
    Hide(u8),
    /// Cut with an ellipsis down to `min` cells (in the middle when `keep_end`).
    Cut { rank: u8, min: u16, keep_end: bool },
}

#[derive(Clone, Copy)]
pub struct Column {
    pub head: &'static str,
    pub align: Align,
    pub give: Give,
}

/// One row of the table. `process`: the pid and name of a live process's row (not of the
/// summed history of ended ones), whose command line a terminal can show.
#[derive(Clone, Debug)]
pub struct Row {
    pub cells: Vec<String>,
    pub process: Option<(u32, Comm)>,
}

/// One screen, before it is laid out.
#[derive(Clone)]
pub struct Content {
    /// `OVERLOAD: ...` while the kernel counts instead of sending events.
    pub overload: Option<String>,
    /// The first line's fields; the lost-event count is always one of them.
    pub status: Vec<String>,
    /// `by process, sorted by CLOSE_WAIT`.
    pub title: String,
    pub columns: Vec<Column>,
    /// Sorted, at most `TopState::rows`.
    pub rows: Vec<Row>,
    /// The busiest failed connects (process, destination, errno), as table lines under the
    /// main table; empty when none failed.
    pub failures: Vec<String>,
}

/// Said when the table has no rows.
pub const EMPTY: &str = "(no sockets in TIME_WAIT or CLOSE_WAIT)";

const fn col(head: &'static str, align: Align, give: Give) -> Column {
    Column { head, align, give }
}

const PID: Column = col("PID", Align::Right, Give::Never);
/// Names are cut after the rates, the TIME_WAIT median and the CLOSE_WAIT cause are hidden,
/// before anything else is.
const NAME_RANK: u8 = 5;

const COMM: Column = col(
    "COMM",
    Align::Left,
    Give::Cut {
        rank: NAME_RANK,
        min: 8,
        keep_end: false,
    },
);

/// The counts every row ends with.
/// On a narrow terminal the CLOSE_WAIT age, evidence of a leak, stays longest after the current
/// counts; the TIME_WAIT dwell median goes first, the CLOSE_WAIT cause before names are cut.
const COUNTS: [Column; 8] = [
    col("CLOSE_WAIT", Align::Right, Give::Never),
    col("CW/s", Align::Right, Give::Hide(3)),
    col("HELD/s", Align::Right, Give::Hide(3)),
    col("OLDEST_CW", Align::Right, Give::Hide(7)),
    col("CW_CAUSE", Align::Left, Give::Hide(4)),
    col("TIME_WAIT", Align::Right, Give::Never),
    col("TW/s", Align::Right, Give::Hide(2)),
    col("TW_P50", Align::Right, Give::Hide(1)),
];

fn count_cells(c: &GroupCounts) -> [String; 8] {
    [
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
}

/// Failed-connect rows under the main table.
const FAILED_ROWS: usize = 5;

fn sort_key(c: &GroupCounts, sort: SortBy) -> (u64, u64, u64) {
    match sort {
        SortBy::CloseWait => (c.close_wait, c.close_wait_entries, c.time_wait),
        SortBy::TimeWait => (c.time_wait, c.time_wait_entries, c.close_wait),
    }
}

/// The `st.rows` busiest groups by the sort key, in summary order among equals (a stable sort):
/// sorted before any cell is formatted, so a host with thousands of processes costs a sort of
/// keys, not thousands of formatted rows.
fn busiest<'a, T>(
    rows: &'a [T],
    st: &TopState,
    counts: impl Fn(&T) -> &GroupCounts,
) -> impl Iterator<Item = &'a T> {
    let mut order: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (std::cmp::Reverse(sort_key(counts(r), st.sort)), i))
        .collect();
    let n = st.rows.min(order.len());
    if n < order.len() {
        order.select_nth_unstable(n);
        order.truncate(n);
    }
    // (key, index) pairs are unique, so this order is the stable sort's.
    order.sort_unstable();
    order.into_iter().map(move |(_, i)| &rows[i])
}

impl Content {
    pub fn new(
        s: &Summary,
        st: &TopState,
        lost: u64,
        clock: &str,
        overload: Option<&Overload>,
    ) -> Content {
        let tw = s.totals.get(tcptrace_common::TcpState::TimeWait);
        let cw = s.totals.get(tcptrace_common::TcpState::CloseWait);
        let est = s.totals.get(tcptrace_common::TcpState::Established);
        let status = vec![
            "tcptrace top".to_string(),
            clock.to_string(),
            format!("up {:.0}s", s.window_s),
            format!("sockets {}", s.sockets),
            format!("ESTABLISHED {est}"),
            format!("CLOSE_WAIT {cw}"),
            format!("TIME_WAIT {tw}"),
            format!("lost events {lost}{}", super::loss::suffix(s)),
        ];
        let by = match st.by {
            GroupBy::Pid => "process",
            GroupBy::Port => "local port",
            GroupBy::Peer => "peer",
        };
        let sort = match st.sort {
            SortBy::CloseWait => "CLOSE_WAIT",
            SortBy::TimeWait => "TIME_WAIT",
        };
        let containers = s.by_pid.iter().any(|r| r.container.is_some());
        let (mut columns, rows): (Vec<Column>, Vec<Row>) = match st.by {
            GroupBy::Pid => {
                let mut h = vec![PID, COMM];
                if containers {
                    h.push(col("CONTAINER", Align::Left, Give::Hide(6)));
                }
                let rows = busiest(&s.by_pid, st, |r| &r.counts)
                    .map(|r| {
                        let mut v =
                            process_cells(r.pid, r.comm.as_str(), r.ended_processes).to_vec();
                        if containers {
                            v.push(container_cell(r.container.as_ref()));
                        }
                        v.extend(count_cells(&r.counts));
                        Row {
                            cells: v,
                            process: (r.pid != 0).then_some((r.pid, r.comm)),
                        }
                    })
                    .collect();
                (h, rows)
            }
            GroupBy::Port => (
                vec![col("LOCAL_PORT", Align::Right, Give::Never)],
                busiest(&s.by_local_port, st, |r| &r.counts)
                    .map(|r| {
                        let mut v = vec![r.port.to_string()];
                        v.extend(count_cells(&r.counts));
                        Row {
                            cells: v,
                            process: None,
                        }
                    })
                    .collect(),
            ),
            GroupBy::Peer => (
                // Cut in the middle: the port, at the end, tells services on one host apart.
                vec![col(
                    "PEER",
                    Align::Left,
                    Give::Cut {
                        rank: NAME_RANK,
                        min: 16,
                        keep_end: true,
                    },
                )],
                busiest(&s.by_peer, st, |r| &r.counts)
                    .map(|r| {
                        let peer = match r.port {
                            Some(p) if r.addr.contains(':') => format!("[{}]:{p}", r.addr),
                            Some(p) => format!("{}:{p}", r.addr),
                            None => format!("{} (inbound)", r.addr),
                        };
                        let mut v = vec![peer];
                        v.extend(count_cells(&r.counts));
                        Row {
                            cells: v,
                            process: None,
                        }
                    })
                    .collect(),
            ),
        };
        columns.extend_from_slice(&COUNTS);
        Content {
            overload: overload.filter(|o| o.counting).map(|o| {
                format!(
                    "OVERLOAD: over {} events/s, the kernel counts transitions ({} so far); \
                     counts come from the kernel table",
                    o.budget_per_s, o.counted_events
                )
            }),
            status,
            title: format!("by {by}, sorted by {sort}"),
            columns,
            rows,
            failures: failure_lines(s),
        }
    }

    /// The plain snapshot: every column whole, lines as long as they need.
    pub fn plain(&self) -> String {
        let mut out = String::new();
        if let Some(o) = &self.overload {
            out.push_str(o);
            out.push('\n');
        }
        out.push_str(&self.status.join("  "));
        out.push('\n');
        out.push_str(&self.title);
        out.push_str("\n\n");
        let heads: Vec<(&str, Align)> = self.columns.iter().map(|c| (c.head, c.align)).collect();
        let mut t = Table::new(&heads);
        for r in &self.rows {
            t.row(r.cells.clone());
        }
        out.push_str(&t.render());
        if t.is_empty() {
            out.push_str(EMPTY);
            out.push('\n');
        }
        if !self.failures.is_empty() {
            out.push('\n');
            for l in &self.failures {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// The failed-connects table, one string per line.
fn failure_lines(s: &Summary) -> Vec<String> {
    if s.connect_failures.is_empty() {
        return Vec::new();
    }
    let mut t = Table::new(&FAILURE_HEADERS);
    for r in s.connect_failures.iter().take(FAILED_ROWS) {
        t.row(failure_cells(r).to_vec());
    }
    t.render().lines().map(str::to_string).collect()
}

#[cfg(test)]
mod tests;
