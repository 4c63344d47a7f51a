//! `cargo xtask fuzz`: the cargo-fuzz targets under tests/fuzz (command-line parsers, the event
//! decoder, the recording reader, and the readers of the kernel's own formats: BTF, sock_diag
//! replies, tracefs format files), each for a bounded time, on the nightly toolchain.
//! Targets with seeds in tests/fuzz/seeds/TARGET start from them (real kernel output, so the
//! fuzzer begins deep in the format); what it finds goes to tests/fuzz/corpus/TARGET.
//! cargo-fuzz is installed here when missing, for this command only.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{cmd, measure, workspace};

pub const TARGETS: [&str; 7] = [
    "value_parsers",
    "cli_args",
    "event_decode",
    "record_reader",
    "btf_sock_offsets",
    "sock_diag_datagram",
    "tracefs_format",
];

pub struct FuzzOptions {
    pub seconds: u64,
    /// Only these targets (default: all).
    pub targets: Vec<String>,
    pub output: PathBuf,
}

/// What libFuzzer said at the end of one target's run.
struct Outcome {
    target: String,
    ok: bool,
    runs: Option<u64>,
    coverage: Option<u64>,
    tail: String,
}

fn ensure_cargo_fuzz() -> Result<()> {
    if cmd::succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        return Ok(());
    }
    eprintln!("xtask: cargo-fuzz is missing; installing it (needed by `cargo xtask fuzz` only)");
    cmd::run(Command::new("cargo").args(["install", "cargo-fuzz"]))
}

pub fn run(opts: &FuzzOptions) -> Result<()> {
    ensure_cargo_fuzz()?;
    let targets: Vec<String> = if opts.targets.is_empty() {
        TARGETS.iter().map(|s| s.to_string()).collect()
    } else {
        opts.targets.clone()
    };
    let mut outcomes = Vec::new();
    for t in &targets {
        outcomes.push(fuzz_one(t, opts.seconds)?);
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Fuzzing (`cargo xtask fuzz --seconds {}`)\n",
        opts.seconds
    );
    let _ = writeln!(md, "{}", measure::machine());
    let _ = writeln!(
        md,
        "| target | result | runs | coverage (edges) |\n| --- | --- | ---: | ---: |"
    );
    for o in &outcomes {
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} |",
            o.target,
            if o.ok { "no crash" } else { "**crash**" },
            o.runs.map_or("–".into(), |r| r.to_string()),
            o.coverage.map_or("–".into(), |c| c.to_string())
        );
    }
    let _ = writeln!(md);
    print!("{md}");
    measure::write_section(&opts.output, "fuzz", &md)?;
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ok).collect();
    for o in &failed {
        eprintln!("xtask: {} failed:\n{}", o.target, o.tail);
    }
    if !failed.is_empty() {
        bail!(
            "{} fuzz target(s) crashed; inputs are under tests/fuzz/artifacts",
            failed.len()
        );
    }
    Ok(())
}

fn fuzz_one(target: &str, seconds: u64) -> Result<Outcome> {
    let fuzz = workspace::root().join("tests/fuzz");
    let corpus = fuzz.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = fuzz.join("seeds").join(target);
    let mut c = Command::new("cargo");
    c.current_dir(workspace::root().join("tests"))
        .args(["+nightly", "fuzz", "run", target])
        // New inputs go to the first folder; the seeds are only read.
        .arg(&corpus)
        .args(seeds.is_dir().then_some(&seeds))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("xtask: $ {}", cmd::describe(&c));
    let out = c.output().context("starting cargo fuzz")?;
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // libFuzzer ends with "Done N runs in T second(s)"; "#N DONE cov: X" before it.
    let runs = text.lines().rev().find_map(|l| {
        l.strip_prefix("Done ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    let coverage = text.lines().rev().find_map(|l| {
        let rest = l.split(" cov: ").nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    });
    let tail: String = text
        .lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    Ok(Outcome {
        target: target.to_string(),
        ok: out.status.success() && runs.is_some(),
        runs,
        coverage,
        tail,
    })
}
