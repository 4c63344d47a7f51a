//! `tcptrace record`: write the session to a file, for `report|top|trace|diagnose --from FILE`
//! later or on another machine.

use crate::{
    cli::RecordArgs,
    session::{NoSink, Session},
};

pub async fn run(args: RecordArgs) -> anyhow::Result<()> {
    if args.probe.from.is_some() {
        anyhow::bail!("record reads the kernel; --from makes no sense here");
    }
    let filters = args.filter.to_filters();
    let mut opts = args.probe.options(false);
    opts.record = Some(args.output.clone());
    let mut session = Session::start(&opts, &filters)?;
    eprintln!("tcptrace: recording to {}", args.output.display());
    session.run(&mut NoSink, args.duration).await
}
