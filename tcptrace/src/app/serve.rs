//! `tcptrace serve`: a live session whose state is served over HTTP as Prometheus metrics, the
//! `report --json` document and a health check. One event loop owns the session; the HTTP
//! server on the same runtime asks it for documents (see `export::http`).

use anyhow::Context;
use tokio::sync::mpsc;

use crate::{
    app::{
        containers::name_containers,
        live::{Live, stop_signal, timewait_method},
        report::{REPORT_TOP, document},
    },
    cli::ServeArgs,
    export::{EventCounters, Overrides, Scrape, ServeConfig, http, process::ProcessStats, render},
    owner::container::ContainerNames,
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
    eprintln!("tcptrace: serving http://{addr}/metrics, /report.json and /healthz");
    if !addr.ip().is_loopback() {
        eprintln!(
            "tcptrace: {addr} is not a loopback address: anyone who can reach it can read the \
             process names, ports and peers in the metrics"
        );
    }
    let mut live = Live::start(&args.probe, &args.filter.to_filters())?;
    let (tx, mut requests) = mpsc::channel(64);
    let server = tokio::spawn(http::serve(listener, tx, cfg.max_connections));
    let mut session = Session {
        counters: EventCounters::default(),
        containers: ContainerNames::new(),
        cfg,
        batch: Vec::new(),
    };
    let stop = stop_signal(args.duration);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut stop => { r?; break; }
            _ = live.next_batch(&mut session.batch) => {}
            Some(req) = requests.recv() => {
                // Answer with everything the kernel has delivered up to now.
                live.drain(&mut session.batch);
                session.apply(&mut live);
                live.settle();
                session.answer(&mut live, req);
                continue;
            }
        }
        session.apply(&mut live);
        live.tick();
    }
    server.abort();
    eprintln!("{}", live.summary_line());
    Ok(())
}

struct Session {
    counters: EventCounters,
    containers: ContainerNames,
    cfg: ServeConfig,
    batch: Vec<crate::event::Event>,
}

impl Session {
    fn apply(&mut self, live: &mut Live) {
        for ev in self.batch.drain(..) {
            self.counters.observe(&ev);
            live.apply(&ev);
        }
    }

    fn answer(&mut self, live: &mut Live, req: http::Request) {
        // A requester that gave up has dropped its receiver; nothing to do then.
        match req {
            http::Request::Metrics(reply) => {
                let _ = reply.send(self.metrics(live));
            }
            http::Request::Report(reply) => {
                let mut summary = live.summary(REPORT_TOP);
                name_containers(&mut summary, &mut self.containers, &live.filters);
                let json = serde_json::to_string_pretty(&document(live, &summary))
                    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
                let _ = reply.send(json);
            }
            http::Request::Health(reply) => {
                let _ = reply.send(());
            }
        }
    }

    fn metrics(&mut self, live: &Live) -> String {
        let hook = live.hook();
        let scrape = Scrape {
            table: &live.table,
            agg: &live.agg,
            loss: live.loss(),
            counters: &self.counters,
            events: live.events,
            hook: &hook,
            timewait_method: live.probe().map(timewait_method).unwrap_or("inferred"),
            port_range: live.port_range(),
            limits: self.cfg.limits,
            process: ProcessStats::read(),
            overload: live.overload(),
        };
        let containers = &mut self.containers;
        render(&scrape, &mut |pid, cg| containers.of(pid, cg))
    }
}
