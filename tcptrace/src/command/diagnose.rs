//! `tcptrace diagnose`: observe like `report`, sample TIME_WAIT / CLOSE_WAIT per process every
//! second, read the host's limits, and print ranked findings.

use crate::{
    cli::DiagnoseArgs,
    diagnose::HostFacts,
    session::Session,
    sink::diagnose::{Diagnosis, Format},
};

pub async fn run(args: DiagnoseArgs) -> anyhow::Result<()> {
    let filters = args.filter.to_filters();
    // Counters first, so their growth covers the whole window.
    let host = HostFacts::read_start();
    let mut session = Session::start(&args.probe.options(false), &filters)?;
    let format = if args.json {
        Format::Json
    } else if args.markdown {
        Format::Markdown
    } else {
        Format::Text
    };
    let mut diagnosis = Diagnosis::new(host, format, args.html);
    session.run(&mut diagnosis, Some(args.duration)).await
}
