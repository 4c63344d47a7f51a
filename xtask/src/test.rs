//! `cargo xtask test`: formatting, dependency checks (cargo deny), lints, the host test suite,
//! then the VM run.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::arch::Arch;
use crate::libtest::Tally;
use crate::vm::{self, Matrix, VmOptions};
use crate::{cmd, image, tracer, workspace};

/// The crate that builds only for the BPF target; host-side tools skip it.
const KERNEL_CRATE: &str = "tcptrace-ebpf";

#[derive(Debug)]
pub struct TestOptions {
    pub no_vm: bool,
    pub vm_only: bool,
    pub vm: VmOptions,
}

/// The tests' results: on the host kernel, then on each kernel of the VM matrix.
#[derive(Debug, Default)]
pub struct Summary {
    /// `None` when the host tests did not run (`--vm-only`).
    pub host: Option<Tally>,
    /// `None` when the VM run was skipped (`--no-vm`) or could not start.
    pub vm: Option<Matrix>,
}

impl Summary {
    /// Every test passed on every kernel that ran.
    pub fn ok(&self) -> bool {
        self.host.is_none_or(|t| t.ok()) && self.vm.as_ref().is_none_or(Matrix::ok)
    }
}

/// One line: `host: 310 passed, 0 failed; vm 6.1.0-56: 58 passed, 0 failed in 452 s; ...`.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(host) = &self.host {
            parts.push(format!("host: {host}"));
        }
        if let Some(vm) = self.vm.as_ref().filter(|m| !m.0.is_empty()) {
            parts.push(vm.to_string());
        }
        if parts.is_empty() {
            parts.push("no tests ran".to_string());
        }
        f.write_str(&parts.join("; "))
    }
}

/// Runs every step and returns the tallies plus the names of failed non-test steps.
pub fn run(opts: &TestOptions) -> Result<(Summary, Vec<String>)> {
    let mut summary = Summary::default();
    let mut failed_steps = Vec::new();

    if !opts.vm_only {
        if !passes(workspace::cargo().args(["fmt", "--all", "--", "--check"])) {
            failed_steps.push("cargo fmt --check".to_string());
        }
        // Licenses, bans and sources (deny.toml); not advisories, whose database is on GitHub,
        // which this project's machines cannot reach.
        if !passes(workspace::cargo().args(["deny", "check", "bans", "licenses", "sources"])) {
            failed_steps.push("cargo deny check".to_string());
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
        tracer::build(false, Arch::Amd64)?;
        // The container tests run an image of this debug binary: a release build for it alone
        // would add minutes to the run (see deploy/README.md). A failed image build leaves no
        // archive, so those tests fail too, saying so.
        if let Err(err) = image::build(false) {
            eprintln!("xtask: {err:#}");
            failed_steps.push("cargo xtask image --debug".to_string());
        }
        summary.host = Some(host_tests(&opts.vm.libtest_args)?);
    }

    if !opts.no_vm {
        match vm::run(&opts.vm) {
            Ok(matrix) => summary.vm = Some(matrix),
            Err(err) => {
                eprintln!("xtask: VM run failed: {err:#}");
                failed_steps.push("VM run".to_string());
            }
        }
    }
    Ok((summary, failed_steps))
}

/// `cargo test` over the host-side crates, on the running kernel. Libtest's stdout is echoed
/// and its summary lines are counted.
fn host_tests(libtest_args: &[String]) -> Result<Tally> {
    let tracer = workspace::tracer_binary(false, Arch::Amd64)?;
    let image = image::archive_path(false)?;
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
        .env("TCPTRACE_IMAGE", &image)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::vm::KernelRun;

    fn kernel(label: &str, passed: u64, failed: u64) -> KernelRun {
        KernelRun {
            label: label.to_string(),
            tally: Tally { passed, failed },
            elapsed: Duration::from_secs(452),
            error: None,
        }
    }

    /// A clean host run and the two guest kernels, the second with `last` as its tally.
    fn host_and_two_kernels(last: KernelRun) -> Summary {
        Summary {
            host: Some(Tally {
                passed: 310,
                failed: 0,
            }),
            vm: Some(Matrix(vec![kernel("6.1.0-56", 58, 0), last])),
        }
    }

    #[test]
    fn the_summary_line_has_a_tally_per_kernel() {
        let summary = host_and_two_kernels(kernel("6.12.117", 58, 0));
        assert_eq!(
            summary.to_string(),
            "host: 310 passed, 0 failed; vm 6.1.0-56: 58 passed, 0 failed in 452 s; \
             vm 6.12.117: 58 passed, 0 failed in 452 s"
        );
        assert!(summary.ok());
    }

    #[test]
    fn one_failing_kernel_fails_the_run() {
        let summary = host_and_two_kernels(kernel("6.12.117", 57, 1));
        assert!(!summary.ok());
    }

    #[test]
    fn a_kernel_that_never_booted_fails_the_run_and_says_so() {
        let mut never = kernel("newest 6.12 cloud kernel", 0, 1);
        never.error = Some("apt-get download failed".to_string());
        let summary = Summary {
            host: None,
            vm: Some(Matrix(vec![kernel("6.1.0-56", 58, 0), never])),
        };
        assert!(!summary.ok());
        assert!(
            summary
                .to_string()
                .ends_with("vm newest 6.12 cloud kernel: not run, 0 passed, 1 failed"),
            "{summary}"
        );
    }
}
