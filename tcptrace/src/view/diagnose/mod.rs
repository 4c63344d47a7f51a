//! `tcptrace diagnose`: findings as text (coloured on a terminal), one JSON document, Markdown
//! for an incident ticket, or a self-contained HTML page with plots.
//!
//! comm and cmdline are chosen by the processes themselves: every renderer escapes them for its
//! format (control characters for text, Markdown and HTML syntax, JSON string escaping).

mod html;
mod markdown;
mod text;

use serde::Serialize;

pub use html::html;
pub use markdown::markdown;
pub use text::text;

use crate::aggregate::Summary;
use crate::diagnose::{Finding, HostFacts, Timeline};
use crate::view::sanitize::{REPLACEMENT, is_inert};

/// The `diagnose --json` document.
#[derive(Serialize)]
pub struct DiagnoseDoc<'a> {
    /// Document format version.
    pub schema: u32,
    /// Wall-clock time the diagnosis was made, seconds since the Unix epoch.
    pub generated_at: f64,
    pub host: String,
    pub kernel: String,
    /// Kernel hook that delivered the events: "tp_btf" or "tracepoint".
    pub hook: String,
    /// Seconds observed.
    pub window_s: f64,
    /// Events the kernel side lost; always shown.
    pub lost_events: u64,
    /// The replayed recording was cut short (no End record): see `report --json`'s field of the
    /// same name. Present only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recording_truncated: bool,
    /// True when there are no findings.
    pub nothing_abnormal: bool,
    /// Most severe first.
    pub findings: &'a [Finding],
    /// Sysctls, counters and per-process fd limits that were read.
    pub host_facts: &'a HostFacts,
    /// TIME_WAIT / CLOSE_WAIT counts per process, once a second.
    pub timeline: &'a Timeline,
    /// The report summary the findings were computed from (dwell distributions for the HTML
    /// plots); not part of the JSON document (`report --json` has it).
    #[serde(skip)]
    pub summary: &'a Summary,
}

pub const SCHEMA: u32 = 1;

/// Escapes for HTML text and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if !is_inert(c) => out.push(REPLACEMENT),
            c => out.push(c),
        }
    }
    out
}

/// Escapes Markdown syntax (and HTML, which Markdown renderers pass through), so a process name
/// cannot add links, images, tables or markup to a ticket.
pub fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '{' | '}' | '[' | ']' | '(' | ')' | '#' | '+' | '-' | '.'
            | '!' | '|' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            c if !is_inert(c) => out.push(REPLACEMENT),
            c => out.push(c),
        }
    }
    out
}

/// Local date and time of a Unix timestamp, UTC: `2026-11-22 00:49:48 UTC`.
pub fn utc(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_inert_in_every_format() {
        let comm = "<img src=x onerror=alert(1)>[x](http://e)|*\u{1b}[2J";
        let h = html_escape(comm);
        assert!(
            !h.contains('<') && !h.contains('>') && !h.contains('\u{1b}'),
            "{h}"
        );
        let m = md_escape(comm);
        assert!(
            !m.contains('<') && !m.contains("](") && !m.contains('\u{1b}'),
            "{m}"
        );
        assert!(m.contains("\\|") && m.contains("\\["), "{m}");
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_795_308_588.0), "2026-11-22 00:49:48 UTC");
    }
}
