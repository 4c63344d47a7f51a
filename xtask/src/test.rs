//! `cargo xtask test`: formatting, lints, the host test suite, then the VM run.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::libtest::Tally;
use crate::vm::{self, VmOptions};
use crate::{cmd, tracer, workspace};

/// The crate that builds only for the BPF target; host-side tools skip it.
const KERNEL_CRATE: &str = "tcptrace-ebpf";

#[derive(Debug)]
pub struct TestOptions {
    pub no_vm: bool,
    pub vm_only: bool,
    pub vm: VmOptions,
}

/// Runs every step and returns the total tally plus the names of failed non-test steps.
pub fn run(opts: &TestOptions) -> Result<(Tally, Vec<String>)> {
    let mut total = Tally::default();
    let mut failed_steps = Vec::new();

    if !opts.vm_only {
        if !passes(workspace::cargo().args(["fmt", "--all", "--", "--check"])) {
            failed_steps.push("cargo fmt --check".to_string());
        }
        let mut clippy = workspace::cargo();
        clippy
            .args([
                "clippy",
                "--workspace",
                "--exclude",
                KERNEL_CRATE,
                "--all-targets",
            ])
            .args(["--", "-D", "warnings"]);
        if !passes(&mut clippy) {
            failed_steps.push("cargo clippy".to_string());
        }
        // The integration tests start this binary; a build failure ends the run here.
        tracer::build(false)?;
        total += host_tests(&opts.vm.libtest_args)?;
    }

    if !opts.no_vm {
        match vm::run(&opts.vm) {
            Ok(tally) => total += tally,
            Err(err) => {
                eprintln!("xtask: VM run failed: {err:#}");
                failed_steps.push("VM run".to_string());
            }
        }
    }
    Ok((total, failed_steps))
}

/// `cargo test` over the host-side crates, on the running kernel. Libtest's stdout is echoed
/// and its summary lines are counted.
fn host_tests(libtest_args: &[String]) -> Result<Tally> {
    let tracer = workspace::tracer_binary(false)?;
    let mut cargo = workspace::cargo();
    cargo
        .args([
            "test",
            "--workspace",
            "--exclude",
            KERNEL_CRATE,
            "--no-fail-fast",
        ])
        .env("TCPTRACE_BIN", &tracer)
        .arg("--")
        .args(libtest_args);
    eprintln!("xtask: $ {}", cmd::describe(&cargo));
    let mut child = cargo
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut tally = Tally::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(result) = Tally::from_result_line(&line) {
            tally += result;
        }
    }
    let status = child.wait()?;
    if !status.success() && tally.ok() {
        // A build error or a crashed test binary reports no failed test; count it as one.
        eprintln!("xtask: cargo test failed ({status}) without reporting a failed test");
        tally.failed += 1;
    }
    Ok(tally)
}

/// Runs a check step with inherited stdio; whether it passed.
fn passes(cmd: &mut Command) -> bool {
    cmd::run(cmd)
        .inspect_err(|err| eprintln!("xtask: {err:#}"))
        .is_ok()
}
