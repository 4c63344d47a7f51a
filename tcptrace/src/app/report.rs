//! `tcptrace report`: observe for a while, reconcile with the kernel table, summarise.

use crate::{
    aggregate::Summary,
    app::{containers::name_containers, live::Live},
    cli::ReportArgs,
    owner::container::ContainerNames,
    view::report::{ReportDoc, SCHEMA, text},
};

/// Rows kept per group-by list in the document.
pub const REPORT_TOP: usize = 50;

/// The `report --json` document for a summary of `live`, taken now.
pub fn document<'a>(live: &Live, summary: &'a Summary) -> ReportDoc<'a> {
    ReportDoc {
        schema: SCHEMA,
        generated_at: crate::clock::WallClock::now().unix_secs(crate::clock::monotonic_ns()),
        host: live.host(),
        kernel: live.kernel(),
        hook: live.hook(),
        socket_key: live.socket_key(),
        overload: live.overload(),
        summary,
    }
}

pub async fn run(args: ReportArgs) -> anyhow::Result<()> {
    let filters = args.filter.to_filters();
    let mut live = Live::start(&args.probe, &filters)?;
    live.observe(Some(args.duration), |_| {}).await?;
    // Counts are the sockets in each state when the report is taken: one last check against
    // the kernel's table makes them exact (a replay has that check in the file).
    live.check_replay()?;
    live.reconcile()?;
    let now = live.now_ns();
    live.finish(now)?;
    let mut summary = live.summary_at(REPORT_TOP, now);
    // Container names come from this host's cgroups: only for a live session.
    if live.probe().is_some() {
        name_containers(&mut summary, &mut ContainerNames::new(), &live.filters);
    }
    let doc = document(&live, &summary);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", text(&doc, 20));
    }
    eprintln!("{}", live.summary_line());
    Ok(())
}
