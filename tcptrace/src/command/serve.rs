//! `tcptrace serve`: a live session whose state is served over HTTP as Prometheus metrics, the
//! `report --json` document and a health check. The session's loop answers the HTTP server's
//! requests between batches of events (see `export::answer`).

use anyhow::Context;
use tokio::sync::mpsc;

use crate::{
    cli::ServeArgs,
    export::{Overrides, ServeConfig, WebConfigSource, answer, http, web_config},
    session::{NoSink, Session},
};

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = ServeConfig::load(
        args.config.as_deref(),
        &Overrides {
            listen: args.listen,
            top_pids: args.top_pids,
            top_peers: args.top_peers,
            top_ports: args.top_ports,
        },
    )?;
    // Bound before the programs load: a taken port fails fast, and the endpoint answers as soon
    // as "attached" is printed.
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let web = args
        .web_config_file
        .as_deref()
        .map(WebConfigSource::load)
        .transpose()?;
    for line in web_config::notices(addr, web.as_ref().map(|w| &*w.1)) {
        eprintln!("tcptrace: {line}");
    }
    let mut session = Session::start(&args.probe.options(false), &args.filter.to_filters())?;
    let (requests_tx, requests) = mpsc::channel(64);
    let (queries_tx, queries) = mpsc::channel(64);
    session.answer_queries(queries);
    let server = tokio::spawn(http::serve(
        listener,
        requests_tx,
        cfg.max_connections,
        web.map(|w| w.0),
    ));
    let forward = tokio::spawn(answer::forward(requests, queries_tx, cfg.limits));
    let res = session.run(&mut NoSink, args.duration).await;
    server.abort();
    forward.abort();
    res
}
