//! A live session: the probe attached, the socket table fed, losses watched. Every command that
//! observes the kernel (trace, top, report) runs one of these.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::{
    cli::ProbeArgs,
    clock::{WallClock, monotonic_ns},
    event::Event,
    filter::Filters,
    lifecycle::{Limits, SocketTable},
    probe::{EventReader, HookPath, LossReport, Probe, ProbeOptions},
};

pub struct Live {
    pub probe: Probe,
    pub reader: EventReader,
    pub table: SocketTable,
    pub clock: WallClock,
    pub started: Instant,
    pub started_ns: u64,
    /// Events taken from the ring (after duplicate removal).
    pub events: u64,
    lost_reported: u64,
    last_loss_check: Instant,
}

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
        let table = SocketTable::new(Limits { fin_timeout_ns: fin_timeout_ns(), ..Limits::default() });
        Ok(Live {
            probe,
            reader,
            table,
            clock: WallClock::now(),
            started: Instant::now(),
            started_ns: monotonic_ns(),
            events: 0,
            lost_reported: 0,
            last_loss_check: Instant::now(),
        })
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
