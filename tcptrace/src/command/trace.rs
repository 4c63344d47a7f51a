//! `tcptrace trace`: every transition, live, with its owner and the time spent in the previous
//! state.

use std::io::BufWriter;

use crate::{
    cli::TraceArgs,
    session::Session,
    sink::trace::{OUT_BUFFER, TraceLines},
};

pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    let filters = args.filter.to_filters();
    let mut session = Session::start(&args.probe.options(true), &filters)?;
    let stdout = std::io::stdout();
    let out = BufWriter::with_capacity(OUT_BUFFER, stdout.lock());
    let mut lines = TraceLines::new(out, args.json, session.clock)?;
    session.run(&mut lines, args.duration).await
}
