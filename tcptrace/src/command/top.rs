//! `tcptrace top`: a live table of TIME_WAIT and CLOSE_WAIT by process, local port or peer.

use std::io::IsTerminal;

use crate::{cli::TopArgs, session::Session, sink::top::Top, view::top::TopState};

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    let filters = args.filter.to_filters();
    let mut session = Session::start(&args.probe.options(false), &filters)?;
    let interactive = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    let state = TopState {
        by: args.by,
        sort: args.sort,
        rows: args.rows,
    };
    let mut top = Top::new(state, args.interval, args.iterations, interactive)?;
    session.run(&mut top, args.duration).await
}
