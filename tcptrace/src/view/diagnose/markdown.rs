//! Findings as Markdown, to paste into an incident ticket.

use std::fmt::Write as _;

use super::text::proc_line;
use super::{DiagnoseDoc, md_escape, utc};
use crate::diagnose::human_s;

pub fn markdown(doc: &DiagnoseDoc<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## tcptrace diagnose: {}\n\n{:.1} s observed, kernel {}, hook {}, {}; lost events: {}\n",
        md_escape(&doc.host),
        doc.window_s,
        md_escape(&doc.kernel),
        md_escape(&doc.hook),
        utc(doc.generated_at),
        doc.lost_events
    );
    if doc.findings.is_empty() {
        out.push_str("Nothing abnormal.\n");
        return out;
    }
    for (i, f) in doc.findings.iter().enumerate() {
        let _ = writeln!(
            out,
            "### {}. [{}] {}\n",
            i + 1,
            f.severity.name().to_uppercase(),
            md_escape(&f.title)
        );
        let _ = writeln!(out, "- **What:** {}", md_escape(&f.what));
        for p in &f.who.processes {
            let _ = writeln!(out, "- **Who:** {}", proc_line(p, md_escape));
        }
        if !f.who.local_ports.is_empty() {
            let ports: Vec<String> = f.who.local_ports.iter().map(u16::to_string).collect();
            let _ = writeln!(out, "- **Local ports:** {}", ports.join(", "));
        }
        if !f.who.peers.is_empty() {
            let peers: Vec<String> = f.who.peers.iter().map(|p| md_escape(p)).collect();
            let _ = writeln!(out, "- **Peers:** {}", peers.join(", "));
        }
        if let Some(s) = f.since_unix {
            let _ = writeln!(out, "- **Since:** {}{}", utc(s), super::text::estimated(f));
        }
        if let Some(c) = f.cause {
            let _ = writeln!(out, "- **Cause:** {}", c.name());
        }
        if let Some(g) = f.growth_per_s.filter(|g| *g > 0.0) {
            let eta = f
                .eta_s
                .map(|e| format!("; limit reached in about {}", human_s(e)))
                .unwrap_or_default();
            let _ = writeln!(out, "- **Growth:** {g:.2}/s{eta}");
        }
        let _ = writeln!(out, "- **Why:** {}", md_escape(&f.why));
        let _ = writeln!(out, "- **Fix:**");
        for fix in &f.fix {
            let _ = writeln!(out, "  - {}", md_escape(fix));
        }
        for k in &f.knobs {
            let _ = writeln!(
                out,
                "  - `{}` (now {}): {}",
                k.sysctl,
                md_escape(k.current.as_deref().unwrap_or("?")),
                md_escape(&k.advice)
            );
        }
        out.push('\n');
    }
    out
}
