//! A self-contained HTML report: findings, TIME_WAIT and CLOSE_WAIT over the window for the top
//! processes (inline SVG), and the dwell-time distributions. No scripts, no external resources.

use std::fmt::Write as _;

use super::text::proc_line;
use super::{DiagnoseDoc, html_escape as esc, utc};
use crate::aggregate::DwellMs;
use crate::clock::human_ms;
use crate::diagnose::{Timeline, human_s};

/// Processes plotted.
const TOP_PIDS: usize = 5;
const PALETTE: [&str; 5] = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd"];

const STYLE: &str = "body{font-family:sans-serif;margin:24px;max-width:1100px;color:#222}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px}\
.f{border:1px solid #ccc;border-left:6px solid #888;padding:8px 14px;margin:12px 0;border-radius:4px}\
.critical{border-left-color:#b00020}.high{border-left-color:#e53935}\
.medium{border-left-color:#f9a825}.low{border-left-color:#039be5}\
.sev{font-weight:bold;text-transform:uppercase}dt{font-weight:bold;margin-top:4px}\
dd{margin-left:16px}code{background:#f3f3f3;padding:1px 3px}\
svg{border:1px solid #ddd;background:#fff;margin:6px 0}.quiet{font-size:18px;color:#2e7d32}";

pub fn html(doc: &DiagnoseDoc<'_>) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>tcptrace diagnose: {}</title>\
         <style>{STYLE}</style></head><body>",
        esc(&doc.host)
    );
    let _ = write!(
        o,
        "<h1>tcptrace diagnose: {}</h1><p>{:.1} s observed, kernel {}, hook {}, {}. \
         Lost events: <b>{}</b>.</p>",
        esc(&doc.host),
        doc.window_s,
        esc(&doc.kernel),
        esc(&doc.hook),
        utc(doc.generated_at),
        doc.lost_events
    );
    o.push_str("<h2>Findings</h2>");
    if doc.findings.is_empty() {
        o.push_str("<p class=\"quiet\">Nothing abnormal.</p>");
    }
    for f in doc.findings {
        let _ = write!(
            o,
            "<div class=\"f {}\"><p><span class=\"sev\">{}</span> {}</p><dl><dt>What</dt><dd>{}</dd>",
            f.severity.name(),
            f.severity.name(),
            esc(&f.title),
            esc(&f.what)
        );
        if !f.who.processes.is_empty() || !f.who.peers.is_empty() {
            o.push_str("<dt>Who</dt>");
            for p in &f.who.processes {
                let _ = write!(o, "<dd>{}</dd>", proc_line(p, esc));
            }
            if !f.who.local_ports.is_empty() {
                let ports: Vec<String> = f.who.local_ports.iter().map(u16::to_string).collect();
                let _ = write!(o, "<dd>local ports {}</dd>", ports.join(", "));
            }
            if !f.who.peers.is_empty() {
                let _ = write!(o, "<dd>peers {}</dd>", esc(&f.who.peers.join(", ")));
            }
        }
        if let Some(s) = f.since_unix {
            let _ = write!(
                o,
                "<dt>Since</dt><dd>{}{}</dd>",
                utc(s),
                esc(super::text::estimated(f))
            );
        }
        if let Some(c) = f.cause {
            let _ = write!(o, "<dt>Cause</dt><dd>{}</dd>", c.name());
        }
        if let Some(g) = f.growth_per_s.filter(|g| *g > 0.0) {
            let eta = f
                .eta_s
                .map(|e| format!("; limit reached in about {}", human_s(e)))
                .unwrap_or_default();
            let _ = write!(o, "<dt>Growth</dt><dd>{g:.2}/s{}</dd>", esc(&eta));
        }
        let _ = write!(o, "<dt>Why</dt><dd>{}</dd><dt>What to do</dt>", esc(&f.why));
        for fix in &f.fix {
            let _ = write!(o, "<dd>{}</dd>", esc(fix));
        }
        for k in &f.knobs {
            let _ = write!(
                o,
                "<dd><code>{}</code> (now {}): {}</dd>",
                k.sysctl,
                esc(k.current.as_deref().unwrap_or("?")),
                esc(&k.advice)
            );
        }
        o.push_str("</dl></div>");
    }
    let pids = doc.timeline.top_pids(TOP_PIDS);
    o.push_str("<h2>TIME_WAIT and CLOSE_WAIT over the window, top processes</h2>");
    if pids.is_empty() {
        o.push_str("<p>No process held TIME_WAIT or CLOSE_WAIT sockets.</p>");
    } else {
        plot(&mut o, doc.timeline, &pids, "TIME_WAIT", |c| c.0);
        plot(&mut o, doc.timeline, &pids, "CLOSE_WAIT", |c| c.1);
    }
    o.push_str("<h2>Time spent in each state (completed stays)</h2>");
    let mut rows: Vec<(String, DwellMs)> = doc
        .summary
        .dwell_ms
        .iter()
        .filter(|(_, d)| d.count > 0)
        .map(|(s, d)| (s.to_string(), *d))
        .collect();
    if doc.summary.lifetime_ms.count > 0 {
        rows.push(("lifetime".into(), doc.summary.lifetime_ms));
    }
    if rows.is_empty() {
        o.push_str("<p>No completed stays.</p>");
    } else {
        dwell_chart(&mut o, &rows);
    }
    o.push_str("</body></html>\n");
    o
}

/// Milliseconds for an axis or a label: `0.25ms`, `3ms`, `1.5s`.
fn short_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.2}ms")
    } else {
        human_ms(ms)
    }
}

/// A line per process of one count over time (only processes that had any).
fn plot(o: &mut String, tl: &Timeline, pids: &[u32], title: &str, pick: fn(&(u64, u64)) -> u64) {
    let pids: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| {
            tl.samples
                .iter()
                .any(|s| s.by_pid.get(p).map_or(0, pick) > 0)
        })
        .collect();
    if pids.is_empty() {
        let _ = write!(
            o,
            "<p>No process held {title} sockets during the window.</p>"
        );
        return;
    }
    let (w, h, l, r, t, b) = (1000.0, 260.0, 60.0, 220.0, 30.0, 40.0);
    let t_max = tl.samples.last().map_or(1.0, |s| s.t_s).max(1.0);
    let y_max = tl
        .samples
        .iter()
        .flat_map(|s| pids.iter().map(move |p| s.by_pid.get(p).map_or(0, pick)))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let x = |ts: f64| l + ts / t_max * (w - l - r);
    let y = |v: f64| t + (1.0 - v / y_max) * (h - t - b);
    let _ = write!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\">\
         <text x=\"{l}\" y=\"18\" font-size=\"14\" font-weight=\"bold\">{title} sockets per process</text>\
         <line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#444\"/>\
         <line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"#444\"/>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{y_max:.0}</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">0</text>\
         <text x=\"{l}\" y=\"{}\" font-size=\"11\">0 s</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{t_max:.0} s</text>",
        h - b,
        w - r,
        h - b,
        h - b,
        l - 6.0,
        t + 4.0,
        l - 6.0,
        h - b,
        h - b + 16.0,
        w - r,
        h - b + 16.0,
    );
    for (i, pid) in pids.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let pts: Vec<String> = tl
            .samples
            .iter()
            .map(|s| {
                let v = s.by_pid.get(pid).map_or(0, pick) as f64;
                format!("{:.1},{:.1}", x(s.t_s), y(v))
            })
            .collect();
        let comm = tl.comms.get(pid).map(String::as_str).unwrap_or("?");
        let _ = write!(
            o,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>\
             <rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{c}\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"12\">{} ({pid})</text>",
            pts.join(" "),
            w - r + 12.0,
            t + i as f64 * 20.0,
            w - r + 30.0,
            t + i as f64 * 20.0 + 11.0,
            esc(comm)
        );
    }
    o.push_str("</svg>");
}

/// One row per state: p50, p90, p99 and max on a log scale from 0.1 ms.
fn dwell_chart(o: &mut String, rows: &[(String, DwellMs)]) {
    let (w, l, r, row_h, top) = (1000.0, 110.0, 30.0, 28.0, 40.0);
    let h = top + row_h * rows.len() as f64 + 30.0;
    let max_ms = rows.iter().map(|r| r.1.max).fold(1.0, f64::max);
    let (lo, hi) = (0.1f64.log10(), max_ms.max(1.0).log10() + 0.2);
    let x = |ms: f64| l + (ms.max(0.1).log10() - lo) / (hi - lo) * (w - l - r);
    let _ = write!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\">\
         <text x=\"{l}\" y=\"18\" font-size=\"14\" font-weight=\"bold\">Dwell time (log scale): \
         bar to p50, ticks at p90 / p99, dot at max</text>"
    );
    // Decade grid lines.
    let mut d = 0.1f64;
    while d.log10() <= hi {
        let _ = write!(
            o,
            "<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"#eee\"/>\
             <text x=\"{0:.1}\" y=\"{2}\" font-size=\"10\" text-anchor=\"middle\">{3}</text>",
            x(d),
            h - 28.0,
            h - 14.0,
            short_ms(d)
        );
        d *= 10.0;
    }
    for (i, (name, dw)) in rows.iter().enumerate() {
        let yy = top + i as f64 * row_h;
        let (ty, by, bw, p90, p99, mx, cy) = (
            yy + 12.0,
            yy + 2.0,
            (x(dw.p50) - l).max(1.0),
            x(dw.p90),
            x(dw.p99),
            x(dw.max),
            yy + 9.0,
        );
        let (y2, label_x, label_y) = (yy + 18.0, (mx + 8.0).min(w - 200.0), yy + 24.0);
        let _ = write!(
            o,
            "<text x=\"{lx}\" y=\"{ty}\" font-size=\"12\" text-anchor=\"end\">{name}</text>\
             <rect x=\"{l}\" y=\"{by}\" width=\"{bw:.1}\" height=\"14\" fill=\"#90caf9\"/>\
             <line x1=\"{p90:.1}\" x2=\"{p90:.1}\" y1=\"{yy}\" y2=\"{y2}\" stroke=\"#1565c0\" stroke-width=\"2\"/>\
             <line x1=\"{p99:.1}\" x2=\"{p99:.1}\" y1=\"{yy}\" y2=\"{y2}\" stroke=\"#0d47a1\" stroke-width=\"2\"/>\
             <circle cx=\"{mx:.1}\" cy=\"{cy}\" r=\"4\" fill=\"#b71c1c\"/>\
             <text x=\"{label_x:.1}\" y=\"{label_y}\" font-size=\"10\">n={n} p50 {p50} max {max}</text>",
            lx = l - 8.0,
            name = esc(name),
            n = dw.count,
            p50 = short_ms(dw.p50),
            max = short_ms(dw.max),
        );
    }
    o.push_str("</svg>");
}
