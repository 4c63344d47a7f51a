//! `tcptrace report`: the summary as text, or as one JSON document.

use std::fmt::Write as _;

use serde::Serialize;

use super::table::{Align, Table, printable, rate};
use crate::aggregate::{GroupCounts, Summary};
use crate::clock::human_ms;

/// The `report --json` document: the engine's summary plus where and when it was taken.
/// Fields that say when the report was made: `generated_at`, `host`; everything else is a
/// function of the events observed.
#[derive(Serialize)]
pub struct ReportDoc<'a> {
    /// Document format version.
    pub schema: u32,
    /// Wall-clock time the report was made, seconds since the Unix epoch.
    pub generated_at: f64,
    pub host: String,
    pub kernel: String,
    /// Kernel hook that delivered the events: "tp_btf" or "tracepoint".
    pub hook: String,
    /// How the kernel programs named sockets: "cookie", or "address" (the classic tracepoint,
    /// and tp_btf on kernels before 5.12, whose tracing programs cannot ask for the cookie).
    /// Absent when replaying a recording older than format 1.3.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_key: Option<String>,
    /// What the overload guard did, when it acted (see `--max-event-rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overload: Option<crate::probe::Overload>,
    /// The replayed recording had no End record (its writer was killed, or the host crashed):
    /// everything up to its last complete record is in the document, and the loss counters
    /// after its last Loss record are unknown. Present only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recording_truncated: bool,
    #[serde(flatten)]
    pub summary: &'a Summary,
    /// Transitions since the start by kind, "OLD->NEW", as `tcptrace_transitions_total` counts
    /// them (in summary mode, those the kernel followed too): checked against a known load, they
    /// say which transitions a short `transitions_seen` lacks.
    pub transitions: std::collections::BTreeMap<String, u64>,
}

pub const SCHEMA: u32 = 1;

/// Rows kept per group-by list in the document.
pub const REPORT_TOP: usize = 50;

/// The oldest CLOSE_WAIT socket's age; `>` when some ages were read from the kernel's clocks,
/// which are lower bounds.
pub fn oldest_close_wait(c: &GroupCounts) -> Option<String> {
    let at_least = if c.close_wait_age_estimated > 0 {
        ">"
    } else {
        ""
    };
    c.close_wait_oldest_ms
        .map(|m| format!("{at_least}{}", human_ms(m)))
}

/// `addr:port`, with brackets for IPv6.
pub fn endpoint(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// Rows of failed connects: count, errno, pid, comm, destination.
pub fn failure_cells(r: &crate::aggregate::ConnectFailureRow) -> [String; 5] {
    [
        r.count.to_string(),
        r.errno.clone(),
        if r.pid == 0 {
            "-".into()
        } else {
            r.pid.to_string()
        },
        r.comm
            .as_ref()
            .map_or_else(|| "?".into(), |c| printable(c.as_str())),
        endpoint(&r.addr, r.port),
    ]
}

pub const FAILURE_HEADERS: [(&str, Align); 5] = [
    ("FAILED", Align::Right),
    ("ERRNO", Align::Left),
    ("PID", Align::Right),
    ("COMM", Align::Left),
    ("DESTINATION", Align::Left),
];

fn counts_cells(c: &GroupCounts) -> Vec<String> {
    vec![
        c.close_wait.to_string(),
        rate(c.close_wait_per_s),
        oldest_close_wait(c).unwrap_or_else(|| {
            if c.close_wait_age_unknown > 0 {
                "before start".into()
            } else {
                "-".into()
            }
        }),
        c.time_wait.to_string(),
        rate(c.time_wait_per_s),
    ]
}

const COUNT_HEADERS: [(&str, Align); 5] = [
    ("CLOSE_WAIT", Align::Right),
    ("CW/s", Align::Right),
    ("OLDEST_CW", Align::Right),
    ("TIME_WAIT", Align::Right),
    ("TW/s", Align::Right),
];

fn with_counts(first: &[(&'static str, Align)]) -> Vec<(&'static str, Align)> {
    let mut h = first.to_vec();
    h.extend_from_slice(&COUNT_HEADERS);
    h
}

/// Renders the summary for a terminal.
pub fn text(doc: &ReportDoc<'_>, rows: usize) -> String {
    let s = doc.summary;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tcptrace report: {:.1}s observed on {} (kernel {}), hook {}, TIME_WAIT {}",
        s.window_s,
        // A replayed recording says what they were: the file may come from anywhere.
        printable(&doc.host),
        printable(&doc.kernel),
        printable(&doc.hook),
        s.timewait_method
    );
    let c = &s.corrections;
    if let Some(o) = &doc.overload {
        let _ = writeln!(
            out,
            "overload guard: switched {} time(s) to in-kernel counting (budget {} events/s); {} \
             events counted in the kernel, not traced one by one{}",
            o.switches,
            o.budget_per_s,
            o.counted_events,
            if o.counting { "; still counting" } else { "" }
        );
    }
    let _ = writeln!(
        out,
        "lost events: {}{}   corrections from the kernel table: {}   evicted: {} sockets, {} groups",
        s.lost_events,
        super::loss::suffix(s),
        c.added + c.removed + c.state_fixed + c.substate_fixed,
        s.evictions.sockets,
        s.evictions.groups
    );
    let totals: Vec<String> = s
        .totals
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(st, n)| format!("{} {n}", st.name()))
        .collect();
    let _ = writeln!(
        out,
        "sockets now: {}",
        if totals.is_empty() {
            "none".into()
        } else {
            totals.join("  ")
        }
    );
    if s.unattributed.time_wait + s.unattributed.close_wait > 0 {
        let _ = writeln!(
            out,
            "owner unknown: TIME_WAIT {}  CLOSE_WAIT {}",
            s.unattributed.time_wait, s.unattributed.close_wait
        );
    }

    let rows_shown = &s.by_pid[..rows.min(s.by_pid.len())];
    let containers = rows_shown.iter().any(|r| r.container.is_some());
    let mut first = vec![("PID", Align::Right), ("COMM", Align::Left)];
    if containers {
        first.push(("CONTAINER", Align::Left));
    }
    let mut t = Table::new(&with_counts(&first));
    for r in rows_shown {
        let mut cells = process_cells(r.pid, r.comm.as_str(), r.ended_processes).to_vec();
        if containers {
            cells.push(container_cell(r.container.as_ref()));
        }
        cells.extend(counts_cells(&r.counts));
        t.row(cells);
    }
    section(&mut out, "By process", &t);
    leaks(&mut out, rows_shown);
    connect_failures(&mut out, s, rows);

    let mut t = Table::new(&with_counts(&[("LOCAL_PORT", Align::Right)]));
    for r in s.by_local_port.iter().take(rows) {
        let mut cells = vec![r.port.to_string()];
        cells.extend(counts_cells(&r.counts));
        t.row(cells);
    }
    section(&mut out, "By local port (inbound connections)", &t);

    let mut t = Table::new(&with_counts(&[("PEER", Align::Left)]));
    for r in s.by_peer.iter().take(rows) {
        let peer = match r.port {
            Some(p) if r.addr.contains(':') => format!("[{}]:{p}", r.addr),
            Some(p) => format!("{}:{p}", r.addr),
            None => format!("{} (inbound)", r.addr),
        };
        let mut cells = vec![peer];
        cells.extend(counts_cells(&r.counts));
        t.row(cells);
    }
    section(&mut out, "By peer", &t);

    let mut t = Table::new(&[
        ("STATE", Align::Left),
        ("STAYS", Align::Right),
        ("P50", Align::Right),
        ("P90", Align::Right),
        ("P99", Align::Right),
        ("MAX", Align::Right),
    ]);
    for (state, d) in &s.dwell_ms {
        if d.count == 0 {
            continue;
        }
        t.row(vec![
            state.to_string(),
            d.count.to_string(),
            human_ms(d.p50),
            human_ms(d.p90),
            human_ms(d.p99),
            human_ms(d.max),
        ]);
    }
    section(&mut out, "Time spent in each state (completed stays)", &t);

    let mut t = Table::new(&[
        ("NETNS", Align::Right),
        ("SOCKETS", Align::Right),
        ("CLOSE_WAIT", Align::Right),
        ("TIME_WAIT", Align::Right),
    ]);
    for r in s.by_netns.iter().take(rows) {
        t.row(vec![
            r.netns.to_string(),
            r.sockets.to_string(),
            r.close_wait.to_string(),
            r.time_wait.to_string(),
        ]);
    }
    section(
        &mut out,
        "By network namespace (inode, as in /proc/PID/ns/net)",
        &t,
    );

    let mut t = Table::new(&[
        ("FROM", Align::Left),
        ("TO", Align::Left),
        ("TIME_WAIT", Align::Right),
        ("PORT_RANGE", Align::Right),
        ("USED", Align::Right),
    ]);
    for p in s.port_pressure.iter().take(rows) {
        let to = if p.peer_addr.contains(':') {
            format!("[{}]:{}", p.peer_addr, p.peer_port)
        } else {
            format!("{}:{}", p.peer_addr, p.peer_port)
        };
        t.row(vec![
            p.local_addr.clone(),
            to,
            p.time_wait.to_string(),
            p.range_size.to_string(),
            format!("{:.1}%", p.ratio * 100.0),
        ]);
    }
    section(
        &mut out,
        "Ephemeral ports held by TIME_WAIT, per destination",
        &t,
    );
    out
}

/// CLOSE_WAIT per process: the leak's history from its sockets' ages, and why they are stuck.
fn leaks(out: &mut String, rows: &[crate::aggregate::PidRow]) {
    let mut t = Table::new(&[
        ("PID", Align::Right),
        ("COMM", Align::Left),
        ("CLOSE_WAIT", Align::Right),
        ("HELD/s", Align::Right),
        ("OVER", Align::Right),
        ("NEVER_READ", Align::Right),
        ("READ_EOF", Align::Right),
        ("STOPPED", Align::Right),
        ("UNKNOWN", Align::Right),
    ]);
    for r in rows.iter().filter(|r| r.counts.close_wait > 0) {
        let c = &r.counts;
        let (per_s, over) = match &c.close_wait_history {
            Some(h) => (
                rate(h.per_s),
                format!(
                    "{}{}",
                    if h.since_estimated { ">" } else { "" },
                    human_ms(h.span_s * 1000.0)
                ),
            ),
            None => ("-".into(), "-".into()),
        };
        let causes = c.close_wait_causes.unwrap_or_default();
        let mut cells = process_cells(r.pid, r.comm.as_str(), r.ended_processes).to_vec();
        cells.extend([
            c.close_wait.to_string(),
            per_s,
            over,
            causes.never_read_eof.to_string(),
            causes.read_eof_not_closed.to_string(),
            causes.stopped_reading.to_string(),
            causes.unknown.to_string(),
        ]);
        t.row(cells);
    }
    section(
        out,
        "CLOSE_WAIT by process: held per second over the age of the oldest (> when aged by the \
         kernel's clocks), and why (Recv-Q 1: never read the EOF, 0: read EOF and did not close, \
         more: stopped reading)",
        &t,
    );
}

/// Failed connects by process, destination and errno.
fn connect_failures(out: &mut String, s: &Summary, rows: usize) {
    let mut t = Table::new(&FAILURE_HEADERS);
    for r in s.connect_failures.iter().take(rows) {
        t.row(failure_cells(r).to_vec());
    }
    section(out, "Failed connects", &t);
}

/// The 12-digit id `docker ps` and `crictl ps` show, or `-` outside containers.
/// The PID and COMM cells of a process row; the summed history of ended processes shows no
/// pid and how many processes it sums.
pub fn process_cells(pid: u32, comm: &str, ended: u32) -> [String; 2] {
    if pid == 0 {
        let n = if ended == 1 { "process" } else { "processes" };
        [
            "-".into(),
            format!("{} ({ended} ended {n})", printable(comm)),
        ]
    } else {
        [pid.to_string(), printable(comm)]
    }
}

pub fn container_cell(c: Option<&crate::owner::cgroup::Container>) -> String {
    c.map(|c| c.short_id().to_string())
        .unwrap_or_else(|| "-".into())
}

fn section(out: &mut String, title: &str, t: &Table) {
    let _ = writeln!(out, "\n{title}");
    if t.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&t.render());
    }
}
