//! The diagnosis: TIME_WAIT / CLOSE_WAIT per process sampled every second of the session's
//! time, then, at its end, the host's limits read and ranked findings printed.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;

use crate::{
    diagnose::{Evidence, HostFacts, Timeline, diagnose},
    session::{Flow, Session, Sink},
    view::{
        diagnose::{DiagnoseDoc, SCHEMA, html, markdown, text},
        report::REPORT_TOP,
    },
};

/// How often the per-process counts are sampled for growth rates and plots, in seconds of the
/// session's time (recorded time in a replay, so a replay samples what the live run did).
pub const SAMPLE_EVERY_S: f64 = 1.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Markdown,
}

pub struct Diagnosis {
    host: HostFacts,
    timeline: Timeline,
    last_sample_s: f64,
    format: Format,
    html: Option<PathBuf>,
}

impl Diagnosis {
    /// `host`: the counters read before the session started, so their growth covers it all
    /// (ignored for a replay).
    pub fn new(host: HostFacts, format: Format, html: Option<PathBuf>) -> Self {
        Diagnosis {
            host,
            timeline: Timeline::default(),
            last_sample_s: 0.0,
            format,
            html,
        }
    }
}

impl Sink for Diagnosis {
    /// The first sample, with the sockets that existed before tracing loaded.
    fn started(&mut self, s: &mut Session) -> anyhow::Result<()> {
        self.last_sample_s = s.elapsed_s();
        self.timeline.sample(&s.table, self.last_sample_s);
        Ok(())
    }

    fn batch(&mut self, s: &mut Session, _ended: bool) -> anyhow::Result<Flow> {
        let t = s.elapsed_s();
        if t - self.last_sample_s >= SAMPLE_EVERY_S {
            self.last_sample_s = t;
            self.timeline.sample(&s.table, t);
        }
        Ok(Flow::Continue)
    }

    fn finish(&mut self, s: &mut Session, end_ns: u64) -> anyhow::Result<()> {
        self.timeline.sample(&s.table, s.elapsed_s());
        let summary = s.summary_at(REPORT_TOP, end_ns);
        let host = &mut self.host;
        if s.is_live() {
            host.read_end(summary.by_pid.iter().map(|r| r.pid).filter(|&p| p != 0));
        } else {
            // This host's counters and processes say nothing about the recorded one; what the
            // recording says of its host is all there is.
            *host = HostFacts::default();
            host.sysctls.ip_local_port_range = s.origin.port_range;
            host.sysctls.tcp_fin_timeout = Some(s.origin.fin_timeout_ns / 1_000_000_000);
        }
        let now_unix = s.clock.unix_secs(end_ns);
        let evidence = Evidence::collect(
            &summary,
            &s.table,
            &self.timeline,
            end_ns,
            now_unix,
            host.sysctls.ip_local_port_range,
        );
        let findings = diagnose(&evidence, host);
        let doc = DiagnoseDoc {
            schema: SCHEMA,
            generated_at: now_unix,
            host: s.origin.host.clone(),
            kernel: s.origin.kernel.clone(),
            hook: s.origin.hook.clone(),
            window_s: summary.window_s,
            // Transitions the kernel skipped uncounted are as lost as the counted ones.
            lost_events: summary.lost_events + summary.lost_uncounted,
            recording_truncated: s.truncation().is_some(),
            nothing_abnormal: findings.is_empty(),
            findings: &findings,
            host_facts: host,
            timeline: &self.timeline,
            summary: &summary,
        };
        if let Some(path) = &self.html {
            std::fs::write(path, html(&doc))
                .with_context(|| format!("writing the HTML report to {}", path.display()))?;
        }
        match self.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
            Format::Markdown => print!("{}", markdown(&doc)),
            Format::Text => print!("{}", text(&doc, std::io::stdout().is_terminal())),
        }
        Ok(())
    }
}
