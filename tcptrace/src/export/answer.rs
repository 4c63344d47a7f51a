//! Answers the HTTP server's requests from the session, on its event loop: the handler's
//! [`Request`] becomes a [`Query`] the session runs with everything the kernel has delivered up
//! to that moment applied.

use tokio::sync::mpsc;

use super::current::Cardinality;
use super::http::Request;
use super::metrics::{Scrape, render};
use super::process::ProcessStats;
use crate::session::{Query, Session};
use crate::view::report::REPORT_TOP;

/// Forwards the server's requests to the session as queries until either side is gone.
pub async fn forward(
    mut requests: mpsc::Receiver<Request>,
    queries: mpsc::Sender<Query>,
    limits: Cardinality,
) {
    while let Some(req) = requests.recv().await {
        let q: Query = Box::new(move |s: &mut Session| answer(s, req, limits));
        if queries.send(q).await.is_err() {
            return;
        }
    }
}

/// A requester that gave up has dropped its receiver; nothing to do then.
fn answer(s: &mut Session, req: Request, limits: Cardinality) {
    match req {
        Request::Metrics(reply) => {
            let _ = reply.send(metrics(s, limits));
        }
        Request::Report(reply) => {
            let summary = s.summary_named(REPORT_TOP, s.now_ns());
            let json = serde_json::to_string_pretty(&s.report_doc(&summary))
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            let _ = reply.send(json);
        }
        Request::Health(reply) => {
            let _ = reply.send(());
        }
    }
}

/// The `/metrics` document, now.
pub fn metrics(s: &mut Session, limits: Cardinality) -> String {
    let overload = s.overload();
    let loss = s.loss();
    let counters = s.transition_totals();
    let scrape = Scrape {
        table: &s.table,
        agg: &s.agg,
        loss,
        counters: &counters,
        events: s.events,
        hook: &s.origin.hook,
        timewait_method: &s.origin.timewait_method,
        port_range: s.origin.port_range,
        limits,
        process: ProcessStats::read(),
        overload,
    };
    let containers = &mut s.containers;
    render(&scrape, &mut |pid, cg| containers.of(pid, cg))
}
