//! The processes a benchmark runs: the storm, and a tracer (tcptrace or bpftrace) started as a
//! child and stopped with SIGINT. Shared by `bench` and `soak`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cmd, measure};

/// Storm destinations: 127.0.77.1 upwards, used by nothing else, so the TIME_WAIT sockets a run
/// leaves behind can be flushed without touching anyone else's.
pub const STORM_NET: &str = "127.0.77.0/24";
const STORM_FIRST: &str = "127.0.77.1";

/// How a tracer says it is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// tcptrace's "attached" line on stderr.
    Attached,
    /// Any BPF program held open (bpftrace).
    HoldsPrograms,
}

/// Removes the TIME_WAIT sockets earlier storms left on their destinations (`ss -K` reaches
/// timewait sockets too): every run starts with the same empty port space.
pub fn flush_storm_timewait() {
    let _ = cmd::succeeds(Command::new("ss").args([
        "-K",
        "-tan",
        "state",
        "time-wait",
        "dst",
        STORM_NET,
    ]));
}

/// A tracer started as a child; its stderr is collected in the background.
pub struct TracerChild {
    pub child: Child,
    pub stderr: mpsc::Receiver<String>,
    pub lines: Vec<String>,
    stdout: Option<thread::JoinHandle<String>>,
}

impl TracerChild {
    /// Starts the tracer and waits for "attached"; its stdout goes to /dev/null unless
    /// `capture_stdout`, when [`TracerChild::stop`] returns it.
    pub fn start(tracer: &Path, args: &[&str], capture_stdout: bool) -> Result<TracerChild> {
        TracerChild::start_command(
            Command::new(tracer).args(args),
            capture_stdout,
            Ready::Attached,
        )
    }

    /// Starts `cmd` and waits until it is ready: it said "attached" (tcptrace), or it holds BPF
    /// programs (bpftrace, whose own message goes with its output).
    pub fn start_command(
        cmd: &mut Command,
        capture_stdout: bool,
        ready: Ready,
    ) -> Result<TracerChild> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(if capture_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", cmd::describe(cmd)))?;
        let stdout = child.stdout.take().map(|mut out| {
            thread::spawn(move || {
                let mut s = String::new();
                let _ = std::io::Read::read_to_string(&mut out, &mut s);
                s
            })
        });
        let err = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut t = TracerChild {
            child,
            stderr: rx,
            lines: Vec::new(),
            stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if ready == Ready::HoldsPrograms && !measure::prog_ids_of(t.pid()).is_empty() {
                // Loaded; give it a moment to attach them all.
                thread::sleep(Duration::from_millis(300));
                return Ok(t);
            }
            match t.stderr.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let attached = l.contains("attached");
                    t.lines.push(l);
                    if attached && ready == Ready::Attached {
                        return Ok(t);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = t.child.wait();
                    bail!(
                        "the tracer exited before attaching:\n{}",
                        t.lines.join("\n")
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() > deadline {
                let _ = t.child.kill();
                bail!("the tracer did not attach within 60 s");
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT, wait for exit, and return stdout (when captured) and every stderr line.
    pub fn stop(mut self) -> Result<(String, Vec<String>)> {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("the tracer did not stop within 120 s of SIGINT");
            }
            thread::sleep(Duration::from_millis(20));
        };
        self.lines.extend(self.stderr.try_iter());
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            self.lines.push(l);
        }
        if !status.success() {
            bail!("the tracer failed ({status}):\n{}", self.lines.join("\n"));
        }
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        Ok((stdout, std::mem::take(&mut self.lines)))
    }
}

impl Drop for TracerChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The tracer's closing line's loss clause: `lost N events (BREAKDOWN)`, as N and BREAKDOWN
/// (`N transitions, M resets; ring full ...`).
fn loss_clause(lines: &[String]) -> Option<(u64, Option<&str>)> {
    lines.iter().rev().find_map(|l| {
        let rest = l.split("; lost ").nth(1)?;
        let n = rest.split_whitespace().next()?.parse().ok()?;
        let kinds = rest
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .map(|(k, _)| k);
        Some((n, kinds))
    })
}

/// `lost N events` from the tracer's closing summary line.
pub fn lost_events(lines: &[String]) -> Option<u64> {
    loss_clause(lines).map(|(n, _)| n)
}

/// What the closing line says the lost events were, when it says any were lost: the run tables
/// keep it beside the count.
pub fn lost_kinds(lines: &[String]) -> Option<String> {
    loss_clause(lines)
        .filter(|&(n, _)| n > 0)
        .and_then(|(_, k)| k.map(str::to_string))
}

/// One `tcpstorm` run against 127.0.77.1 upwards, on `port` (0: any), as fast as it goes or
/// paced at `rate` connections per second in total (`tcpstorm --rate`); its JSON result line.
pub fn storm(
    storm: &Path,
    conns: u64,
    seconds: f64,
    threads: usize,
    targets: u32,
    port: u16,
    rate: Option<f64>,
) -> Result<serde_json::Value> {
    let mut cmd = Command::new(storm);
    cmd.args([
        "--conns",
        &conns.to_string(),
        "--seconds",
        &seconds.to_string(),
        "--threads",
        &threads.to_string(),
        "--targets",
        &targets.to_string(),
        "--addr",
        &format!("{STORM_FIRST}:{port}"),
    ]);
    if let Some(r) = rate {
        cmd.args(["--rate", &r.to_string()]);
    }
    let out = cmd::stdout_of(&mut cmd)?;
    serde_json::from_str(out.trim()).with_context(|| format!("tcpstorm output {out:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closing_line_gives_the_count_and_what_was_lost() {
        let line = |s: &str| vec!["listening".to_string(), s.to_string()];
        let lossy = line(
            "tcptrace: 396153 events in 8.0s; lost 2 events (2 transitions, 0 resets; ring full 0, \
             nested runs skipped 7, recovered by the backup program 5, duplicates dropped 0), \
             at least 2 more skipped by the kernel without being counted (kernel table)",
        );
        assert_eq!(lost_events(&lossy), Some(2));
        assert_eq!(
            lost_kinds(&lossy).as_deref(),
            Some(
                "2 transitions, 0 resets; ring full 0, nested runs skipped 7, recovered by the \
                 backup program 5, duplicates dropped 0"
            )
        );
        let clean = line(
            "tcptrace: 10 events in 1.0s; lost 0 events (0 transitions, 0 resets; ring full 0, \
             nested runs skipped 0, recovered by the backup program 0, duplicates dropped 0)",
        );
        assert_eq!(lost_events(&clean), Some(0));
        assert_eq!(lost_kinds(&clean), None);
    }
}
