//! `tcptrace report`: observe for a while, reconcile with the kernel table, summarise.

use crate::{
    aggregate::Summary,
    app::{
        containers::name_containers,
        live::{Live, hostname, stop_signal},
    },
    cli::ReportArgs,
    owner::container::ContainerNames,
    probe::kernel::kernel_release,
    view::report::{ReportDoc, SCHEMA, text},
};

/// Rows kept per group-by list in the document.
pub const REPORT_TOP: usize = 50;

/// The `report --json` document for a summary of `live`, taken now.
pub fn document<'a>(live: &Live, summary: &'a Summary) -> ReportDoc<'a> {
    ReportDoc {
        schema: SCHEMA,
        generated_at: live.clock.unix_secs(crate::clock::monotonic_ns()),
        host: hostname(),
        kernel: kernel_release(),
        hook: live.probe.path().to_string(),
        summary,
    }
}

pub async fn run(args: ReportArgs) -> anyhow::Result<()> {
    let filters = args.filter.to_filters();
    let mut live = Live::start(&args.probe, &filters)?;
    let stop = stop_signal(Some(args.duration));
    tokio::pin!(stop);
    let mut batch = Vec::new();
    loop {
        let done = tokio::select! {
            r = &mut stop => { r?; true }
            _ = live.next_batch(&mut batch) => false,
        };
        if done {
            live.drain(&mut batch);
        }
        for ev in batch.drain(..) {
            live.apply(&ev);
        }
        live.tick();
        if done {
            break;
        }
    }
    // Counts are the sockets in each state when the report is taken: one last check against
    // the kernel's table makes them exact.
    live.reconcile()?;
    let mut summary = live.summary(REPORT_TOP);
    name_containers(&mut summary, &mut ContainerNames::new());
    let doc = document(&live, &summary);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", text(&doc, 20));
    }
    eprintln!("{}", live.summary_line());
    Ok(())
}
