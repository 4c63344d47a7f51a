//! The Prometheus text exposition format, version 0.0.4: `# HELP`, `# TYPE`, then one line per
//! sample, `name{label="value",...} value`.
//!
//! Written by hand because the document is rebuilt from the socket table on every scrape: there
//! is no registry of long-lived metric objects to keep in step. The escaping rules are the
//! format's (<https://prometheus.io/docs/instrumenting/exposition_formats/>): in label values
//! `\`, `"` and newline are escaped; in HELP text `\` and newline. The format has no escape
//! for other control characters, and `curl /metrics` in a terminal is a common way to read it:
//! in label values (process names) they become `?`, as in the text views.

use std::fmt::Write as _;

use crate::view::sanitize::{REPLACEMENT, is_inert};

/// The `Content-Type` of the document.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A document being written. Families must be written whole, one after the other: the format
/// forbids interleaving samples of two families.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a family: its HELP and TYPE lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(valid_name(name), "{name}");
        let _ = writeln!(
            self.out,
            "# HELP {name} {}\n# TYPE {name} {}",
            escape_help(help),
            kind.name()
        );
    }

    /// One sample of an integer value (counts and counters).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.name_and_labels(name, labels);
        let _ = writeln!(self.out, " {value}");
    }

    /// One sample of a real value.
    pub fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.name_and_labels(name, labels);
        self.out.push(' ');
        push_f64(&mut self.out, value);
        self.out.push('\n');
    }

    /// A histogram's series for one label set: cumulative `_bucket` counts at each upper bound
    /// (`cumulative[i]` is the count of values <= `bounds[i]`), the `+Inf` bucket (= `count`),
    /// `_sum` and `_count`.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        cumulative: &[u64],
        sum: f64,
        count: u64,
    ) {
        let bucket = format!("{name}_bucket");
        let les: Vec<String> = bounds.iter().map(|b| fmt_f64(*b)).collect();
        let les = les
            .iter()
            .map(String::as_str)
            .zip(cumulative.iter().copied());
        for (le, n) in les.chain([("+Inf", count)]) {
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", le));
            self.sample(&bucket, &with_le, n);
        }
        self.sample_f64(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count);
    }

    pub fn finish(self) -> String {
        self.out
    }

    fn name_and_labels(&mut self, name: &str, labels: &[(&str, &str)]) {
        self.out.push_str(name);
        if labels.is_empty() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            debug_assert!(valid_name(k), "{k}");
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_label_into(&mut self.out, v);
            self.out.push('"');
        }
        self.out.push('}');
    }
}

/// Metric and label names: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn escape_label_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if !is_inert(c) => out.push(REPLACEMENT),
            c => out.push(c),
        }
    }
}

fn escape_help(h: &str) -> String {
    h.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Go's `strconv.ParseFloat` reads these; Rust's `inf`/`NaN` spellings differ for infinities.
fn fmt_f64(v: f64) -> String {
    let mut s = String::new();
    push_f64(&mut s, v);
    s
}

fn push_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut e = Exposition::new();
        e.family("t_sockets", Kind::Gauge, "Sockets.\nSecond \\ line.");
        e.sample(
            "t_sockets",
            &[("comm", "a\"b\\c\nd\x1b[2J\x07"), ("pid", "1")],
            3,
        );
        e.sample("t_sockets", &[], 0);
        e.sample_f64("t_ratio", &[], 0.25);
        e.sample_f64("t_ratio", &[], f64::INFINITY);
        e.sample_f64("t_ratio", &[], f64::NAN);
        assert_eq!(
            e.finish(),
            "# HELP t_sockets Sockets.\\nSecond \\\\ line.\n# TYPE t_sockets gauge\n\
             t_sockets{comm=\"a\\\"b\\\\c\\nd?[2J?\",pid=\"1\"} 3\n\
             t_sockets 0\nt_ratio 0.25\nt_ratio +Inf\nt_ratio NaN\n"
        );
    }

    #[test]
    fn histogram_has_cumulative_buckets_inf_sum_and_count() {
        let mut e = Exposition::new();
        e.family("t_dwell_seconds", Kind::Histogram, "Dwell.");
        e.histogram(
            "t_dwell_seconds",
            &[("state", "TIME_WAIT")],
            &[0.5, 60.0],
            &[1, 3],
            121.5,
            4,
        );
        let text = e.finish();
        let lines: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(
            lines,
            [
                "t_dwell_seconds_bucket{state=\"TIME_WAIT\",le=\"0.5\"} 1",
                "t_dwell_seconds_bucket{state=\"TIME_WAIT\",le=\"60\"} 3",
                "t_dwell_seconds_bucket{state=\"TIME_WAIT\",le=\"+Inf\"} 4",
                "t_dwell_seconds_sum{state=\"TIME_WAIT\"} 121.5",
                "t_dwell_seconds_count{state=\"TIME_WAIT\"} 4",
            ]
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("tcptrace_close_wait_sockets"));
        assert!(valid_name("le"));
        assert!(!valid_name("9x"));
        assert!(!valid_name("a-b"));
        assert!(!valid_name(""));
    }
}
