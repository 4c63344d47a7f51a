//! A live session: the probe attached, the socket table fed, losses watched. Every command that
//! observes the kernel (trace, top, report) runs one of these.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::{
    aggregate::{AggLimits, Aggregates, Summary, SummaryInput, summary},
    cli::ProbeArgs,
    clock::{WallClock, monotonic_ns},
    event::Event,
    filter::Filters,
    lifecycle::{Applied, FdOwners, Limits, ReconcileStats, SocketTable},
    owner::fdscan,
    probe::{EventReader, HookPath, LossReport, Probe, ProbeOptions},
    source::netns,
};

pub struct Live {
    pub probe: Probe,
    pub reader: EventReader,
    pub table: SocketTable,
    pub agg: Aggregates,
    /// What the user asked to see; the kernel table dump is cut to it like the event stream.
    pub filters: Filters,
    pub clock: WallClock,
    pub started: Instant,
    pub started_ns: u64,
    /// Events taken from the ring (after duplicate removal).
    pub events: u64,
    lost_reported: u64,
    last_loss_check: Instant,
    last_reconcile: Instant,
}

/// How often the table is checked against the kernel's (and owners re-read from /proc).
pub const RECONCILE_EVERY: Duration = Duration::from_secs(10);

/// How tcptrace learns that a socket entered TIME_WAIT on this path.
pub fn timewait_method(_path: HookPath) -> &'static str {
    "inferred"
}

impl Live {
    /// Loads and attaches the kernel programs and says so on stderr (tests wait for the word
    /// "attached").
    pub fn start(args: &ProbeArgs, filters: &Filters) -> anyhow::Result<Live> {
        let opts = ProbeOptions {
            ring_bytes: args.ring_size,
            family: filters.kernel_family(),
            ports: filters.kernel_ports(),
            force_path: args.hook.forced(),
            backup: true,
        };
        let (probe, reader) = Probe::load(&opts)?;
        if let Some(why) = &probe.fallback_reason {
            eprintln!("tcptrace: kernel BTF unavailable ({why}); using the classic tracepoint");
        }
        eprintln!(
            "tcptrace: attached via {} to sock:inet_sock_set_state, tcp:tcp_receive_reset, \
             tcp:tcp_send_reset (ring {} KiB; TIME_WAIT {})",
            probe.path(),
            probe.ring_bytes / 1024,
            timewait_method(probe.path()),
        );
        let table = SocketTable::new(Limits {
            fin_timeout_ns: fin_timeout_ns(),
            ..Limits::default()
        });
        let started_ns = monotonic_ns();
        let mut live = Live {
            probe,
            reader,
            table,
            agg: Aggregates::new(started_ns, AggLimits::default()),
            filters: filters.clone(),
            clock: WallClock::now(),
            started: Instant::now(),
            started_ns,
            events: 0,
            lost_reported: 0,
            last_loss_check: Instant::now(),
            last_reconcile: Instant::now(),
        };
        // The programs are attached first, so no transition falls between the kernel table
        // dump and the event stream; the table drops what the dump already covers.
        live.reconcile()
            .context("loading the existing sockets (NETLINK_SOCK_DIAG)")?;
        Ok(live)
    }

    /// Feeds one event to the socket table and the aggregates.
    pub fn apply(&mut self, ev: &Event) -> Applied {
        let a = self.table.apply(ev);
        self.agg.observe_applied(&a, ev.ts_ns);
        a
    }

    /// Timer work: expire timewait sockets, reconcile with the kernel table every
    /// `RECONCILE_EVERY`, report new losses.
    pub fn tick(&mut self) {
        let now = monotonic_ns();
        let expired = self.table.expire(now);
        self.agg.observe_expired(&expired, now);
        if self.last_reconcile.elapsed() >= RECONCILE_EVERY
            && let Err(e) = self.reconcile()
        {
            log::warn!("reconciliation with the kernel socket table failed: {e:#}");
        }
        self.report_new_losses();
    }

    /// Compares the table with the kernel's socket table (every network namespace) and names
    /// the holders of sockets by scanning /proc/*/fd, as `ss -p` does. Counts what it fixed.
    pub fn reconcile(&mut self) -> anyhow::Result<ReconcileStats> {
        self.last_reconcile = Instant::now();
        let mut snap = netns::dump_all_namespaces()?;
        // The same endpoint filters as the kernel applies to events, so the table holds the
        // same sockets from both sources.
        snap.sockets
            .retain(|k| self.filters.matches_endpoints(&k.local, &k.remote));
        let owners: FdOwners = fdscan::scan_socket_owners(None)
            .into_iter()
            .map(|(inode, procs)| (inode, procs.into_iter().map(|p| (p.pid, p.comm)).collect()))
            .collect();
        Ok(self.table.reconcile(&snap, Some(&owners)))
    }

    /// The report document's core, as of now.
    pub fn summary(&self, top: usize) -> Summary {
        summary(
            &self.table,
            &self.agg,
            &SummaryInput {
                now_ns: monotonic_ns(),
                lost_events: self.loss().lost(),
                timewait_method: timewait_method(self.probe.path()),
                port_range: port_range(),
                top,
            },
        )
    }

    /// Waits for the next poll and returns the events drained.
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> usize {
        let n = self.reader.next_batch(out).await;
        self.events += n as u64;
        n
    }

    /// Drains what is left without waiting (at shutdown).
    pub fn drain(&mut self, out: &mut Vec<Event>) -> usize {
        let n = self.reader.drain_into(out);
        self.events += n as u64;
        n
    }

    pub fn loss(&self) -> LossReport {
        self.probe.loss(&self.reader)
    }

    /// Prints a line on stderr when events were lost since the last check (at most once a
    /// second): losses are never silent.
    pub fn report_new_losses(&mut self) {
        if self.last_loss_check.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_loss_check = Instant::now();
        let loss = self.loss();
        let lost = loss.lost();
        if lost > self.lost_reported {
            eprintln!(
                "tcptrace: lost {} events (total {lost}: ring full {}, nested runs skipped {} of \
                 which {} recovered, resets skipped {})",
                lost - self.lost_reported,
                loss.ring_full,
                loss.primary_skipped,
                loss.recovered,
                loss.reset_skipped
            );
            self.lost_reported = lost;
        }
    }

    /// The closing line every command prints on stderr.
    pub fn summary_line(&self) -> String {
        let loss = self.loss();
        format!(
            "tcptrace: {} events in {:.1}s; lost {} events (ring full {}, nested runs skipped {}, \
             recovered by the backup program {}, duplicates dropped {})",
            self.events,
            self.started.elapsed().as_secs_f64(),
            loss.lost(),
            loss.ring_full,
            loss.primary_skipped,
            loss.recovered,
            loss.duplicates
        )
    }
}

/// `net.ipv4.tcp_fin_timeout`: how long an orphaned FIN_WAIT2 socket lives.
pub fn fin_timeout_ns() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fin_timeout")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(60)
        * 1_000_000_000
}

/// `net.ipv4.ip_local_port_range`: the ephemeral ports connect() picks from.
pub fn port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().filter_map(|v| v.parse::<u16>().ok());
            Some((it.next()?, it.next()?))
        })
        .unwrap_or((32768, 60999))
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Resolves when the user asks to stop (Ctrl-C, SIGTERM) or the duration runs out.
pub async fn stop_signal(duration: Option<Duration>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let sleep = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = sleep => {}
    }
    Ok(())
}
