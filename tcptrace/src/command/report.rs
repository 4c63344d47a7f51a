//! `tcptrace report`: observe for a while, reconcile with the kernel table, summarise.

use crate::{cli::ReportArgs, session::Session, sink::report::Report};

pub async fn run(args: ReportArgs) -> anyhow::Result<()> {
    let filters = args.filter.to_filters();
    let mut session = Session::start(&args.probe.options(false), &filters)?;
    let mut report = Report { json: args.json };
    session.run(&mut report, Some(args.duration)).await
}
