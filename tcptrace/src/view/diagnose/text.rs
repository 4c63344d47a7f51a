//! Findings for a terminal.

use std::fmt::Write as _;

use super::{DiagnoseDoc, utc};
use crate::diagnose::{Finding, Severity, WhoProc, human_s};
use crate::view::table::printable;

fn colour(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "\x1b[1;31m",
        Severity::High => "\x1b[31m",
        Severity::Medium => "\x1b[33m",
        Severity::Low => "\x1b[36m",
    }
}

const RESET: &str = "\x1b[0m";

/// A process as a line: `tcpscenario (pid 42, docker:0123456789ab), 40/1024 fds`.
pub(super) fn proc_line(p: &WhoProc, clean: impl Fn(&str) -> String) -> String {
    let mut s = format!("{} (pid {}", clean(&p.comm), p.pid);
    if let Some(c) = &p.container {
        s.push_str(&format!(", container {}", clean(c)));
    }
    s.push(')');
    if let (Some(f), Some(l)) = (p.open_fds, p.nofile_limit) {
        s.push_str(&format!(", {f}/{l} open files"));
    }
    s
}

/// Renders the findings; `colour` adds ANSI colours (only when stdout is a terminal).
pub fn text(doc: &DiagnoseDoc<'_>, use_colour: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tcptrace diagnose: {:.1}s observed on {} (kernel {}), hook {}; lost events: {}",
        doc.window_s,
        printable(&doc.host),
        printable(&doc.kernel),
        printable(&doc.hook),
        doc.lost_events
    );
    if doc.findings.is_empty() {
        out.push_str("nothing abnormal\n");
        return out;
    }
    for (i, f) in doc.findings.iter().enumerate() {
        finding(&mut out, i + 1, f, use_colour);
    }
    out
}

/// The mark of a start read from the kernel's clocks rather than seen.
pub(super) fn estimated(f: &Finding) -> &'static str {
    if f.since_estimated {
        " (estimated from the kernel's clocks: at least this long ago)"
    } else {
        ""
    }
}

fn finding(out: &mut String, n: usize, f: &Finding, use_colour: bool) {
    let sev = f.severity.name().to_uppercase();
    let (on, off) = if use_colour {
        (colour(f.severity), RESET)
    } else {
        ("", "")
    };
    let _ = writeln!(out, "\n{n}. {on}[{sev}]{off} {}", printable(&f.title));
    let _ = writeln!(out, "   What: {}", printable(&f.what));
    for p in &f.who.processes {
        let _ = writeln!(out, "   Who:  {}", proc_line(p, printable));
    }
    if !f.who.local_ports.is_empty() {
        let ports: Vec<String> = f.who.local_ports.iter().map(u16::to_string).collect();
        let _ = writeln!(out, "   Local ports: {}", ports.join(", "));
    }
    if !f.who.peers.is_empty() {
        let _ = writeln!(out, "   Peers: {}", printable(&f.who.peers.join(", ")));
    }
    if let Some(s) = f.since_unix {
        let _ = writeln!(out, "   Since: {}{}", utc(s), estimated(f));
    }
    if let Some(c) = f.cause {
        let _ = writeln!(out, "   Cause: {}", c.name());
    }
    if let Some(g) = f.growth_per_s.filter(|g| *g > 0.0) {
        let _ = write!(out, "   Growth: {g:.2}/s");
        if let Some(e) = f.eta_s {
            let _ = write!(out, "; limit reached in about {}", human_s(e));
        }
        out.push('\n');
    }
    // Every text of a finding may quote process names (a fix names the leakers).
    let _ = writeln!(out, "   Why:  {}", printable(&f.why));
    for (i, fix) in f.fix.iter().enumerate() {
        let _ = writeln!(
            out,
            "   {} {}",
            if i == 0 { "Fix: " } else { "     " },
            printable(fix)
        );
    }
    for k in &f.knobs {
        let _ = writeln!(
            out,
            "   Knob: {} (now {}): {}",
            k.sysctl,
            printable(k.current.as_deref().unwrap_or("?")),
            printable(&k.advice)
        );
    }
}
