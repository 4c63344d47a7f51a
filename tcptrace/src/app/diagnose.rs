//! `tcptrace diagnose`: observe like `report`, sample TIME_WAIT / CLOSE_WAIT per process every
//! second, read the host's limits, and print ranked findings.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::{
    app::live::Live,
    app::report::REPORT_TOP,
    cli::DiagnoseArgs,
    clock::monotonic_ns,
    diagnose::{Evidence, HostFacts, Timeline, diagnose},
    view::diagnose::{DiagnoseDoc, SCHEMA, html, markdown, text},
};

/// How often the per-process counts are sampled for growth rates and plots.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

pub async fn run(args: DiagnoseArgs) -> anyhow::Result<()> {
    let filters = args.filter.to_filters();
    // Counters first, so their growth covers the whole window.
    let mut host = HostFacts::read_start();
    let mut live = Live::start(&args.probe, &filters)?;
    let mut timeline = Timeline::default();
    timeline.sample(&live.table, 0.0);
    let mut last_sample = Instant::now();
    live.observe(Some(args.duration), |live| {
        if last_sample.elapsed() >= SAMPLE_EVERY {
            last_sample = Instant::now();
            timeline.sample(&live.table, live.started.elapsed().as_secs_f64());
        }
    })
    .await?;
    live.check_replay()?;
    live.reconcile()?;
    timeline.sample(&live.table, live.started.elapsed().as_secs_f64());
    let summary = live.summary(REPORT_TOP);
    host.read_end(summary.by_pid.iter().map(|r| r.pid).filter(|&p| p != 0));
    let now = monotonic_ns();
    let now_unix = live.clock.unix_secs(now);
    let evidence = Evidence::collect(
        &summary,
        &live.table,
        &timeline,
        now,
        now_unix,
        host.sysctls.ip_local_port_range,
    );
    let findings = diagnose(&evidence, &host);
    let doc = DiagnoseDoc {
        schema: SCHEMA,
        generated_at: now_unix,
        host: live.host(),
        kernel: live.kernel(),
        hook: live.hook(),
        window_s: summary.window_s,
        // Transitions the kernel skipped uncounted are as lost as the counted ones.
        lost_events: summary.lost_events + summary.lost_uncounted,
        nothing_abnormal: findings.is_empty(),
        findings: &findings,
        host_facts: &host,
        timeline: &timeline,
        summary: &summary,
    };
    if let Some(path) = &args.html {
        std::fs::write(path, html(&doc))
            .with_context(|| format!("writing the HTML report to {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if args.markdown {
        print!("{}", markdown(&doc));
    } else {
        print!("{}", text(&doc, std::io::stdout().is_terminal()));
    }
    eprintln!("{}", live.summary_line());
    Ok(())
}
