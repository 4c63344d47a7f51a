//! Where the BPF time goes: run time per program from `kernel.bpf_stats_enabled` (on only for
//! this pass, which its own cost would distort the rates of), and what one helper or map costs
//! on this hook, from bpftrace one-liners that differ from a base program by that one thing.

use std::fmt::Write as _;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

use super::modes::{Mode, Running, bpftrace};
use super::{BenchOptions, Bins, child::flush_storm_timewait, storm};
use crate::measure::{self, BpfStats};

/// One program's run time under one mode.
pub struct ProgCost {
    pub mode: Mode,
    pub name: String,
    pub runs: u64,
    pub ns_per_run: f64,
    /// The overload guard switched the kernel to counting during the run.
    pub counting: bool,
}

/// One bpftrace variant's run time, and the base's it differs from.
pub struct HelperCost {
    pub what: &'static str,
    pub program: &'static str,
    pub ns_per_run: f64,
}

pub struct Costs {
    pub programs: Vec<ProgCost>,
    pub helpers: Vec<HelperCost>,
}

impl Costs {
    /// What one transition costs a mode: every state-change program runs once per transition.
    pub fn ns_per_transition(&self, mode: Mode) -> f64 {
        let progs: Vec<&ProgCost> = self
            .programs
            .iter()
            .filter(|p| p.mode == mode && p.name.starts_with("set_state"))
            .collect();
        if progs.is_empty() {
            return f64::NAN;
        }
        progs.iter().map(|p| p.ns_per_run).sum()
    }
}

/// The variants: each differs from `BASE` by one helper or map operation. The condition is never
/// true (no map write happens); it keeps the compiler from dropping the value.
const BASE: &str = "tracepoint:sock:inet_sock_set_state { if (args->oldstate == 99) { @z = 1; } }";
const VARIANTS: [(&str, &str); 7] = [
    ("base: read a tracepoint field", BASE),
    (
        "+ bpf_ktime_get_ns",
        "tracepoint:sock:inet_sock_set_state { if (nsecs == 1) { @z = 1; } }",
    ),
    (
        "+ bpf_get_current_pid_tgid",
        "tracepoint:sock:inet_sock_set_state { if (pid == 1) { @z = 1; } }",
    ),
    (
        "+ bpf_get_current_cgroup_id",
        "tracepoint:sock:inet_sock_set_state { if (cgroup == 1) { @z = 1; } }",
    ),
    (
        "+ bpf_get_current_comm",
        "tracepoint:sock:inet_sock_set_state { $c = comm; if ($c == \"zz\") { @z = 1; } }",
    ),
    (
        "+ a per-CPU map update (count)",
        "tracepoint:sock:inet_sock_set_state { @n = count(); }",
    ),
    (
        "+ a global hash map keyed by socket, updated (and deleted at CLOSE)",
        "tracepoint:sock:inet_sock_set_state { if (args->newstate == 7) { delete(@s[args->skaddr]); } else { @s[args->skaddr] = nsecs; } }",
    ),
];

/// Modes whose programs are timed.
const TIMED: [Mode; 6] = [
    Mode::Floor,
    Mode::BpftraceCount,
    Mode::Report,
    Mode::ReportEvents,
    Mode::ReportSummaries,
    Mode::Trace,
];

pub fn measure(opts: &BenchOptions, bins: &Bins) -> Result<Costs> {
    let _stats = BpfStats::enable()?;
    let mut programs = Vec::new();
    for mode in TIMED {
        flush_storm_timewait();
        let t = Running::start(mode, &bins.tracer)?.context("a timed mode attaches something")?;
        thread::sleep(Duration::from_millis(500));
        let timed = timed_storm(opts, bins, t.pid())?;
        let counting = t.stop()?.counting;
        for (name, runs, ns) in timed {
            programs.push(ProgCost {
                mode,
                name,
                runs,
                ns_per_run: ns as f64 / runs as f64,
                counting,
            });
        }
    }
    let mut helpers = Vec::new();
    for (what, program) in VARIANTS {
        flush_storm_timewait();
        let t = bpftrace(program)?;
        let timed = timed_storm(opts, bins, t.pid())?;
        t.stop()?;
        let ns: u64 = timed.iter().map(|(_, _, ns)| ns).sum();
        let runs = timed.iter().map(|(_, runs, _)| *runs).max().unwrap_or(1);
        helpers.push(HelperCost {
            what,
            program,
            ns_per_run: ns as f64 / runs as f64,
        });
    }
    Ok(Costs { programs, helpers })
}

/// A storm of half the rate runs' length at the fixed rate (`--rate`, issue 13's 40k conn/s);
/// the run count and run time of each program `pid` holds, over it: (name, runs, ns). At a
/// fixed rate, not saturating: a saturating storm makes the overload guard switch tcptrace to
/// counting part-way (its rings' guard acts within ~100 ms of a slow drain), and the pass would
/// time a mix of the two paths.
fn timed_storm(opts: &BenchOptions, bins: &Bins, pid: u32) -> Result<Vec<(String, u64, u64)>> {
    let ids = measure::prog_ids_of(pid);
    let before = measure::prog_stats()?;
    storm(
        &bins.storm,
        opts.conns,
        (opts.seconds / 2.0).max(2.0),
        opts.threads,
        opts.targets,
        0,
        Some(opts.rate),
    )?;
    let after = measure::prog_stats()?;
    Ok(after
        .into_iter()
        .filter(|p| ids.contains(&p.id))
        .filter_map(|p| {
            let b = before.iter().find(|b| b.id == p.id);
            let runs = p.run_cnt - b.map_or(0, |b| b.run_cnt);
            let ns = p.run_time_ns - b.map_or(0, |b| b.run_time_ns);
            (runs > 0).then_some((p.name, runs, ns))
        })
        .collect())
}

pub fn render(w: &mut String, c: &Costs, rate: f64) {
    let _ = writeln!(
        w,
        "### BPF run time per transition (`bpf_stats` on, a separate pass)\n"
    );
    let _ = writeln!(
        w,
        "Per program: run time over run count while a storm runs at {} conn/s (the fixed \
         rate's). Every state-change program (`set_state*`) runs once per transition, so their \
         sum is what one transition costs. Timed inside the kernel with \
         `kernel.bpf_stats_enabled=1`, which adds its own cost and which the rate tables above \
         do not have: the empty program's time is that cost's floor, paid once per program.\n",
        rate
    );
    let _ = writeln!(
        w,
        "| attached | program | runs | ns per run |\n| --- | --- | ---: | ---: |"
    );
    for p in &c.programs {
        let _ = writeln!(
            w,
            "| {} | `{}` | {} | {:.0} |",
            p.mode.label(),
            p.name,
            p.runs,
            p.ns_per_run
        );
    }
    let _ = writeln!(w);
    for mode in [
        Mode::Report,
        Mode::ReportEvents,
        Mode::ReportSummaries,
        Mode::Trace,
    ] {
        let counted = c.programs.iter().any(|p| p.mode == mode && p.counting);
        let _ = writeln!(
            w,
            "- {}: {:.0} ns per transition (every `set_state*` program){}.",
            mode.label(),
            c.ns_per_transition(mode),
            if counted {
                "; the overload guard counted during the run: a mix of both paths"
            } else {
                ""
            }
        );
    }
    let base = c.helpers.first().map_or(f64::NAN, |h| h.ns_per_run);
    let _ = writeln!(
        w,
        "\nWhat one helper or map costs on this hook: bpftrace programs that differ from the \
         base by that one thing (classic tracepoint, so their absolute times include its \
         dispatch; the differences are the helper's).\n"
    );
    let _ = writeln!(
        w,
        "| what | ns per run | over the base |\n| --- | ---: | ---: |"
    );
    for h in &c.helpers {
        let _ = writeln!(
            w,
            "| {} | {:.0} | {} |",
            h.what,
            h.ns_per_run,
            if h.program == BASE {
                "–".to_string()
            } else {
                format!("{:+.0}", h.ns_per_run - base)
            }
        );
    }
    let _ = writeln!(w);
}
