//! `cargo xtask bench`: what tcptrace costs the host, and how fast its userspace pipeline is.
//!
//! Host cost: rounds of loopback connection storms (`tcpstorm`) with no tracer, under
//! `tcptrace report` and under `tcptrace trace > /dev/null`, alternated within one invocation so
//! that drifting background load hits every mode alike. Aggregator throughput: the kernel-free
//! `replay` example at 1k, 100k and 1M live sockets, one process per size. The results replace
//! the bench section of BENCHMARKS.md.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::measure::{self, BpfStats, median};
use crate::{cmd, workspace};

/// Storm destinations: 127.0.77.1 upwards, used by nothing else, so the TIME_WAIT sockets a run
/// leaves behind can be flushed without touching anyone else's.
pub const STORM_NET: &str = "127.0.77.0/24";
const STORM_FIRST: &str = "127.0.77.1";

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub rounds: usize,
    pub seconds: f64,
    pub conns: u64,
    pub threads: usize,
    pub targets: u32,
    pub skip_replay: bool,
    pub output: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    NoTracer,
    Report,
    Trace,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::NoTracer, Mode::Report, Mode::Trace];

    fn label(self) -> &'static str {
        match self {
            Mode::NoTracer => "no tracer",
            Mode::Report => "`tcptrace report`",
            Mode::Trace => "`tcptrace trace > /dev/null`",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Mode::NoTracer => &[],
            // SIGINT ends the observation early and prints the report; the duration is a bound.
            Mode::Report => &["report", "--duration", "10m"],
            Mode::Trace => &["trace"],
        }
    }
}

/// One storm under one mode.
#[derive(Clone, Debug)]
struct Run {
    mode: Mode,
    conns: u64,
    conns_per_s: f64,
    /// Tracer CPU seconds during the storm (plus the drain after it).
    cpu_s: f64,
    /// Runs of the tracer's state-change programs during the storm: the transitions it saw.
    transitions: u64,
    bpf_run_ns: u64,
    lost: Option<u64>,
}

pub fn run(opts: &BenchOptions) -> Result<()> {
    build()?;
    let target = workspace::target_dir()?.join("release");
    let tracer = target.join("tcptrace");
    let storm = target.join("tcpstorm");

    let runs = {
        let _stats = BpfStats::enable()?;
        host_runs(opts, &tracer, &storm)?
    };
    let replay = if opts.skip_replay {
        Vec::new()
    } else {
        [1_000u64, 100_000, 1_000_000]
            .iter()
            .map(|&n| replay(&target.join("examples").join("replay"), n))
            .collect::<Result<Vec<_>>>()?
    };
    let md = render(opts, &runs, &replay);
    print!("{md}");
    measure::write_section(&opts.output, "bench", &md)?;
    eprintln!("xtask: wrote {}", opts.output.display());
    Ok(())
}

fn build() -> Result<()> {
    cmd::run(workspace::cargo().args([
        "build",
        "--release",
        "-p",
        "tcptrace",
        "--bin",
        "tcptrace",
        "--example",
        "replay",
    ]))?;
    cmd::run(workspace::cargo().args([
        "build",
        "--release",
        "-p",
        workspace::TESTS_PACKAGE,
        "--bin",
        "tcpstorm",
    ]))
}

fn host_runs(opts: &BenchOptions, tracer: &Path, storm: &Path) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for round in 0..opts.rounds {
        // Rotate the order so no mode always runs first (after the longest idle gap).
        for k in 0..Mode::ALL.len() {
            let mode = Mode::ALL[(round + k) % Mode::ALL.len()];
            let r = one_run(mode, opts, tracer, storm)
                .with_context(|| format!("round {}, {}", round + 1, mode.label()))?;
            eprintln!(
                "xtask: round {} {:<32} {:>9.0} conn/s  cpu {:.2} s  transitions {}  bpf {} ns/event  lost {:?}",
                round + 1,
                mode.label(),
                r.conns_per_s,
                r.cpu_s,
                r.transitions,
                r.bpf_run_ns.checked_div(r.transitions).unwrap_or(0),
                r.lost
            );
            runs.push(r);
        }
    }
    Ok(runs)
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
        let mut child = Command::new(tracer)
            .args(args)
            .stdin(Stdio::null())
            .stdout(if capture_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", tracer.display()))?;
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
            match t.stderr.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let attached = l.contains("attached");
                    t.lines.push(l);
                    if attached {
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

/// `lost N events` from the tracer's closing summary line.
pub fn lost_events(lines: &[String]) -> Option<u64> {
    lines.iter().rev().find_map(|l| {
        let rest = l.split("; lost ").nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// One `tcpstorm` run against 127.0.77.1 upwards, on `port` (0: any); its JSON result line.
pub fn storm(
    storm: &Path,
    conns: u64,
    seconds: f64,
    threads: usize,
    targets: u32,
    port: u16,
) -> Result<serde_json::Value> {
    let out = cmd::stdout_of(Command::new(storm).args([
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
    ]))?;
    serde_json::from_str(out.trim()).with_context(|| format!("tcpstorm output {out:?}"))
}

fn one_run(mode: Mode, opts: &BenchOptions, tracer: &Path, storm_bin: &Path) -> Result<Run> {
    flush_storm_timewait();
    let t = match mode {
        Mode::NoTracer => None,
        _ => Some(TracerChild::start(tracer, mode.args(), false)?),
    };
    // Let the start-up table dump finish before measuring.
    thread::sleep(Duration::from_millis(500));
    let ids = t.as_ref().map(|t| measure::prog_ids_of(t.pid()));
    let cpu0 = t.as_ref().and_then(|t| measure::cpu_seconds(t.pid()));
    let bpf0 = ids.as_ref().map(measure::state_prog_totals).transpose()?;
    let result = storm(
        storm_bin,
        opts.conns,
        opts.seconds,
        opts.threads,
        opts.targets,
        0,
    )?;
    // The reader polls every few ms: give it time to drain what the storm left in the ring.
    thread::sleep(Duration::from_millis(300));
    let cpu1 = t.as_ref().and_then(|t| measure::cpu_seconds(t.pid()));
    let bpf1 = ids.as_ref().map(measure::state_prog_totals).transpose()?;
    let lost = match t {
        Some(t) => lost_events(&t.stop()?.1),
        None => None,
    };
    let (bpf_run_ns, transitions) = match (bpf0, bpf1) {
        (Some(a), Some(b)) => (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)),
        _ => (0, 0),
    };
    Ok(Run {
        mode,
        conns: result["conns"].as_u64().unwrap_or(0),
        conns_per_s: result["conns_per_s"].as_f64().unwrap_or(0.0),
        cpu_s: match (cpu0, cpu1) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        },
        transitions,
        bpf_run_ns,
        lost,
    })
}

fn replay(bin: &Path, live: u64) -> Result<serde_json::Value> {
    let out = cmd::stdout_of(Command::new(bin).args(["--live", &live.to_string()]))?;
    serde_json::from_str(out.trim()).with_context(|| format!("replay output {out:?}"))
}

/// Medians for one mode.
struct ModeSummary {
    conns_per_s: f64,
    cpu_per_m: f64,
    bpf_ns: f64,
    lost: Vec<u64>,
}

fn summarise(runs: &[Run], mode: Mode) -> ModeSummary {
    let of: Vec<&Run> = runs.iter().filter(|r| r.mode == mode).collect();
    ModeSummary {
        conns_per_s: median(&of.iter().map(|r| r.conns_per_s).collect::<Vec<_>>()),
        cpu_per_m: median(
            &of.iter()
                .filter(|r| r.transitions > 0)
                .map(|r| r.cpu_s / (r.transitions as f64 / 1e6))
                .collect::<Vec<_>>(),
        ),
        bpf_ns: median(
            &of.iter()
                .filter(|r| r.transitions > 0)
                .map(|r| r.bpf_run_ns as f64 / r.transitions as f64)
                .collect::<Vec<_>>(),
        ),
        lost: of.iter().filter_map(|r| r.lost).collect(),
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

fn render(opts: &BenchOptions, runs: &[Run], replay: &[serde_json::Value]) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "## Benchmarks (`cargo xtask bench`)\n");
    let _ = writeln!(w, "{}", measure::machine());
    let _ = writeln!(
        w,
        "Storm: `tcpstorm --threads {} --targets {} --conns {} --seconds {}` (client closes \
         first, 10 transitions per connection, destinations {STORM_NET}; their TIME_WAIT sockets \
         are flushed with `ss -K` before each run). {} rounds, modes alternated, order rotated \
         each round. `kernel.bpf_stats_enabled=1` during the runs, restored afterwards.\n",
        opts.threads, opts.targets, opts.conns, opts.seconds, opts.rounds
    );
    let base = summarise(runs, Mode::NoTracer);
    let _ = writeln!(
        w,
        "| mode | conn/s (median) | ratio to no tracer | tracer CPU s per M transitions | BPF ns per event | lost events per run |"
    );
    let _ = writeln!(w, "| --- | ---: | ---: | ---: | ---: | --- |");
    for mode in Mode::ALL {
        let m = summarise(runs, mode);
        let num = |x: f64, p: usize| {
            if x.is_finite() {
                format!("{x:.p$}")
            } else {
                "–".into()
            }
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} |",
            mode.label(),
            num(m.conns_per_s, 0),
            num(m.conns_per_s / base.conns_per_s, 3),
            num(m.cpu_per_m, 2),
            num(m.bpf_ns, 0),
            if m.lost.is_empty() {
                "–".into()
            } else {
                format!("{:?}", m.lost)
            }
        );
    }
    let _ = writeln!(w, "\nEvery run, in order:\n");
    let _ = writeln!(
        w,
        "| mode | connections | conn/s | tracer CPU s | transitions | BPF ns/event | lost |"
    );
    let _ = writeln!(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in runs {
        let _ = writeln!(
            w,
            "| {} | {} | {:.0} | {:.2} | {} | {} | {} |",
            r.mode.label(),
            r.conns,
            r.conns_per_s,
            r.cpu_s,
            r.transitions,
            r.bpf_run_ns
                .checked_div(r.transitions)
                .map_or("–".into(), |v| v.to_string()),
            r.lost.map_or("–".into(), |v| v.to_string())
        );
    }
    let _ = writeln!(
        w,
        "\nThe incumbent, bcc's `tcpstates` (Debian `bpfcc-tools`), was not measured: bcc compiles \
         its programs at run time against kernel headers, and this kernel ships none \
         (no `/lib/modules/$(uname -r)/build`, no `/sys/kernel/kheaders.tar.xz`).\n"
    );

    if !replay.is_empty() {
        let _ = writeln!(w, "### Aggregator throughput (kernel-free replay)\n");
        let _ = writeln!(
            w,
            "`cargo run --release -p tcptrace --example replay -- --live N`: N established \
             sockets loaded, then 200k storm connections (2M events) replayed through \
             `event::decode` -> `SocketTable::apply` -> `Aggregates::observe_applied`, one \
             thread. The expiry scan (linear in the table) is timed apart.\n"
        );
        let _ = writeln!(
            w,
            "| live sockets | events/s per core | decode alone, events/s | expiry scan ms | table bytes per socket | RSS growth per socket | VmHWM MiB |"
        );
        let _ = writeln!(w, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for r in replay {
            let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
            let _ = writeln!(
                w,
                "| {} | {:.2} M | {:.1} M | {:.2} | {:.0} | {:.0} | {:.0} |",
                r["live_sockets"],
                f("events_per_s") / 1e6,
                f("decode_only_events_per_s") / 1e6,
                f("expire_scan_ms"),
                f("table_bytes_per_socket"),
                f("rss_growth_bytes_per_socket"),
                f("vm_hwm_kib") / 1024.0
            );
        }
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "### Goals\n");
    let report = summarise(runs, Mode::Report);
    let trace = summarise(runs, Mode::Trace);
    let ratio = report.conns_per_s / base.conns_per_s;
    let all_lost: Vec<u64> = report.lost.iter().chain(&trace.lost).copied().collect();
    let vm = measure::machine().contains("virtual machine");
    let _ = writeln!(
        w,
        "| goal | measured | status |\n| --- | --- | --- |\n\
         | conn rate with `report` within 3% of no tracer | {:.1}% of no tracer | {} |\n\
         | zero lost events at the default ring size | {:?} (report, then trace) | {} |\n\
         | BPF run time ≤ 100 ns per event on bare metal | {:.0} ns{} | {} |",
        ratio * 100.0,
        met(ratio >= 0.97),
        all_lost,
        met(all_lost.iter().all(|&l| l == 0) && !all_lost.is_empty()),
        report.bpf_ns,
        if vm {
            " (in a VM: reported as measured)"
        } else {
            ""
        },
        if vm {
            "VM figure"
        } else {
            met(report.bpf_ns <= 100.0)
        }
    );
    let get = |live: u64, k: &str| {
        replay
            .iter()
            .find(|r| r["live_sockets"].as_u64() == Some(live))
            .and_then(|r| r[k].as_f64())
            .unwrap_or(f64::NAN)
    };
    if !replay.is_empty() {
        let (hot, big) = (get(1_000, "events_per_s"), get(1_000_000, "events_per_s"));
        let bytes = get(1_000_000, "table_bytes_per_socket")
            .max(get(1_000_000, "rss_growth_bytes_per_socket"));
        let _ = writeln!(
            w,
            "| aggregator ≥ 5 M events/s per core, hot working set (1k sockets) | {:.2} M | {} |\n\
             | aggregator ≥ 2 M events/s per core at 1M sockets | {:.2} M | {} |\n\
             | ≤ 128 bytes per tracked socket (1M sockets) | {:.0} B | {} |",
            hot / 1e6,
            met(hot >= 5e6),
            big / 1e6,
            met(big >= 2e6),
            bytes,
            met(bytes <= 128.0)
        );
    }
    let _ = writeln!(w);
    s
}
