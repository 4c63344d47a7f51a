//! What a bench run attaches: nothing, an empty program (the floor), bpftrace's one-liners
//! (peers), or one of tcptrace's commands.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

use super::child::{Ready, TracerChild, lost_events, lost_kinds};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    NoTracer,
    /// bpftrace, an empty program on `tracepoint:sock:inet_sock_set_state`.
    Floor,
    /// bpftrace counting transitions by (old, new) in a map.
    BpftraceCount,
    /// bpftrace printing a line per transition (what `tcpstates` does), to /dev/null.
    BpftracePrint,
    /// `tcptrace report`, as run by default: above 500k events/s its overload guard has the
    /// kernel count transitions instead of sending them.
    Report,
    /// `tcptrace report` with the rate budget out of reach: every transition sent until the
    /// reader falls behind (a ring three quarters full, or full rings refusing 1% of the
    /// records), which still switches the kernel to counting.
    ReportEvents,
    /// `tcptrace report --summaries`: one summary per CLOSE_WAIT entry and close.
    ReportSummaries,
    /// `tcptrace trace > /dev/null`.
    Trace,
    /// `tcptrace trace > /dev/null` with the rate budget out of reach: at the storm's rate the
    /// default budget has the guard count in every run, which prints no line per transition,
    /// so the trace goal is judged here.
    TraceEvents,
    /// `tcptrace serve`, scraped once a second.
    Serve,
    /// `tcptrace record`: every event written to a file (under the target directory).
    Record,
}

/// Where `record` writes, in the target directory: overwritten by every run, removed after it.
fn recording() -> Result<std::path::PathBuf> {
    Ok(crate::workspace::target_dir()?.join("bench-record.rec"))
}

/// The empty program and the peers, as bpftrace one-liners.
pub const FLOOR: &str = "tracepoint:sock:inet_sock_set_state { }";
const COUNT: &str =
    "tracepoint:sock:inet_sock_set_state { @[args->oldstate, args->newstate] = count(); }";
const PRINT: &str = "tracepoint:sock:inet_sock_set_state { printf(\"%d %d %d %d\\n\", pid, args->sport, args->oldstate, args->newstate); }";

impl Mode {
    pub const ALL: [Mode; 11] = [
        Mode::NoTracer,
        Mode::Floor,
        Mode::BpftraceCount,
        Mode::BpftracePrint,
        Mode::Report,
        Mode::ReportEvents,
        Mode::ReportSummaries,
        Mode::Trace,
        Mode::TraceEvents,
        Mode::Serve,
        Mode::Record,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Mode::NoTracer => "nothing",
            Mode::Floor => "empty program (bpftrace `{ }`): the floor",
            Mode::BpftraceCount => "bpftrace counting (old, new) in a map",
            Mode::BpftracePrint => "bpftrace printing a line per transition",
            Mode::Report => "`tcptrace report`",
            Mode::ReportEvents => "`tcptrace report --max-event-rate 100000000` (rate budget off)",
            Mode::ReportSummaries => "`tcptrace report --summaries`",
            Mode::Trace => "`tcptrace trace > /dev/null`",
            Mode::TraceEvents => {
                "`tcptrace trace --max-event-rate 100000000 > /dev/null` (rate budget off)"
            }
            Mode::Serve => "`tcptrace serve`, scraped every second",
            Mode::Record => "`tcptrace record` to a file",
        }
    }

    /// A tracer whose own CPU is measured.
    pub fn is_tracer(self) -> bool {
        self != Mode::NoTracer
    }

    /// What the table says when a mode reports no loss figure.
    pub fn loss_note(self) -> &'static str {
        match self {
            Mode::NoTracer | Mode::Floor => "–",
            _ => "not counted",
        }
    }

    fn tcptrace_args(self) -> Option<&'static [&'static str]> {
        Some(match self {
            // SIGINT ends the observation early and prints the report; the duration is a bound.
            Mode::Report => &["report", "--duration", "10m"],
            Mode::ReportEvents => &[
                "report",
                "--duration",
                "10m",
                "--max-event-rate",
                "100000000",
            ],
            Mode::ReportSummaries => &["report", "--duration", "10m", "--summaries"],
            Mode::Trace => &["trace"],
            Mode::TraceEvents => &["trace", "--max-event-rate", "100000000"],
            Mode::Serve => &["serve", "--listen", "127.0.0.1:0"],
            // The file is appended by `Running::start`.
            Mode::Record => &["record", "--output"],
            _ => return None,
        })
    }

    fn bpftrace_program(self) -> Option<&'static str> {
        match self {
            Mode::Floor => Some(FLOOR),
            Mode::BpftraceCount => Some(COUNT),
            Mode::BpftracePrint => Some(PRINT),
            _ => None,
        }
    }
}

/// bpftrace with `program`, its output to /dev/null.
pub fn bpftrace(program: &str) -> Result<TracerChild> {
    let mut cmd = Command::new("bpftrace");
    cmd.args(["-o", "/dev/null", "-e", program]);
    TracerChild::start_command(&mut cmd, false, Ready::HoldsPrograms)
        .context("starting bpftrace (`cargo xtask setup` installs it)")
}

/// An attached tracer, and for `serve` the scraper.
pub struct Running {
    mode: Mode,
    child: TracerChild,
    scraper: Option<(Arc<AtomicBool>, thread::JoinHandle<()>)>,
}

impl Running {
    /// Starts what `mode` attaches; None for nothing.
    pub fn start(mode: Mode, tracer: &Path) -> Result<Option<Running>> {
        let child = if mode == Mode::Record {
            let out = recording()?;
            let mut args: Vec<&str> = mode.tcptrace_args().unwrap_or_default().to_vec();
            args.push(
                out.to_str()
                    .context("the target directory's path is not UTF-8")?,
            );
            TracerChild::start(tracer, &args, false)?
        } else if let Some(args) = mode.tcptrace_args() {
            TracerChild::start(tracer, args, false)?
        } else if let Some(p) = mode.bpftrace_program() {
            bpftrace(p)?
        } else {
            return Ok(None);
        };
        let scraper = if mode == Mode::Serve {
            let addr = child
                .lines
                .iter()
                .find_map(|l| l.split("serving http://").nth(1)?.split('/').next())
                .context("serve did not say where it listens")?
                .to_string();
            let stop = Arc::new(AtomicBool::new(false));
            let s = stop.clone();
            let h = thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let _ = scrape(&addr);
                    thread::sleep(Duration::from_secs(1));
                }
            });
            Some((stop, h))
        } else {
            None
        };
        Ok(Some(Running {
            mode,
            child,
            scraper,
        }))
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Stops it; what tcptrace's stderr said about loss and its overload guard.
    pub fn stop(self) -> Result<Stopped> {
        if let Some((stop, h)) = self.scraper {
            stop.store(true, Ordering::Relaxed);
            let _ = h.join();
        }
        let tcptrace = self.mode.tcptrace_args().is_some();
        let lines = match self.child.stop() {
            Ok((_, lines)) => lines,
            // A peer's rate was measured while it ran; how it ends is not ours to measure. (bpftrace
            // printing a line per transition once took more than 120 s to exit after a storm, and
            // the whole bench ended there.) It is killed, and said so.
            Err(e) if !tcptrace => {
                eprintln!(
                    "xtask: warning: {}: {e:#}; killed, its rate stands",
                    self.mode.label()
                );
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        if self.mode == Mode::Record {
            let _ = std::fs::remove_file(recording()?);
        }
        Ok(Stopped {
            lost: tcptrace.then(|| lost_events(&lines)).flatten(),
            lost_kinds: tcptrace.then(|| lost_kinds(&lines)).flatten(),
            // The switch message, whichever its cause (a rate over the budget, or a ring the
            // reader could not keep up with).
            counting: tcptrace
                && lines
                    .iter()
                    .any(|l| l.contains("the kernel now counts transitions")),
        })
    }
}

/// What a stopped tracer said.
pub struct Stopped {
    /// Lost events from tcptrace's closing line.
    pub lost: Option<u64>,
    /// What they were, when any were lost.
    pub lost_kinds: Option<String>,
    /// Its overload guard switched the kernel to counting during the run: from then on the
    /// run measured the counting path, not every transition sent.
    pub counting: bool,
}

/// One GET /metrics, read to the end.
fn scrape(addr: &str) -> std::io::Result<usize> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    Ok(body.len())
}
