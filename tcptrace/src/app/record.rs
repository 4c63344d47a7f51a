//! `tcptrace record`: write the session to a file, for `report|top|trace --from FILE` later or
//! on another machine.

use crate::{app::live::Live, cli::RecordArgs};

pub async fn run(args: RecordArgs) -> anyhow::Result<()> {
    if args.probe.from.is_some() {
        anyhow::bail!("record reads the kernel; --from makes no sense here");
    }
    let filters = args.filter.to_filters();
    let mut probe = args.probe.clone();
    probe.record = Some(args.output.clone());
    let mut live = Live::start(&probe, &filters)?;
    eprintln!("tcptrace: recording to {}", args.output.display());
    live.observe(args.duration, |_| {}).await?;
    // The same closing steps as `report`, so a report replayed from this file matches one
    // taken live at this moment.
    live.check_replay()?;
    live.reconcile()?;
    let now = live.now_ns();
    live.finish(now)?;
    eprintln!("{}", live.summary_line());
    Ok(())
}
