//! `cargo xtask vm`: the integration tests on a matrix of Debian kernels under QEMU (the newest
//! 6.1 and the newest 6.12 cloud kernels by default).
//!
//! The host kernel is one kernel; the programs must also load where fentry works, where the
//! tracepoint layouts are older (6.1) and where they changed since (6.12). Each guest boots
//! straight into a busybox initramfs that holds the test binaries, runs them one after another,
//! and powers off; the kernels run one after another, each with its own console log.

mod console;
mod initramfs;
mod kernel;
mod qemu;

use kernel::{AptKernels, Request};
use qemu::Accel;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::libtest::Tally;
use crate::tracer;
use crate::workspace::{self, TESTS_PACKAGE, TestBinary};

/// How to run the VM tests.
#[derive(Debug)]
pub struct VmOptions {
    /// Kernel package names (or .deb paths), one boot each; empty runs the default matrix (the
    /// newest kernel of each series in `kernel::SERIES`).
    pub kernels: Vec<String>,
    /// Arguments for every test binary (filter, `--exact`, ...).
    pub libtest_args: Vec<String>,
    /// The time limit of each boot.
    pub timeout: Duration,
    /// Run these libtest binaries instead of building the integration tests.
    pub test_binaries: Vec<PathBuf>,
}

/// What one guest kernel of the matrix did.
#[derive(Debug)]
pub struct KernelRun {
    /// The short release (`6.12.117`), or what was asked for when it never booted.
    pub label: String,
    /// A guest that stops early, or a kernel that cannot be prepared, counts as a failure.
    pub tally: Tally,
    /// The whole boot, tests included.
    pub elapsed: Duration,
    /// Why the kernel never booted.
    pub error: Option<String>,
}

impl fmt::Display for KernelRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            Some(_) => write!(f, "vm {}: not run, {}", self.label, self.tally),
            None => write!(
                f,
                "vm {}: {} in {:.0} s",
                self.label,
                self.tally,
                self.elapsed.as_secs_f64()
            ),
        }
    }
}

/// The results of every kernel of the matrix, in order.
#[derive(Debug, Default)]
pub struct Matrix(pub Vec<KernelRun>);

impl Matrix {
    pub fn ok(&self) -> bool {
        self.0.iter().all(|r| r.tally.ok() && r.error.is_none())
    }
}

impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, run) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{run}")?;
        }
        Ok(())
    }
}

/// Builds what the guests need, then boots each kernel of the matrix in turn and returns their
/// tallies. A kernel that fails (to download, to boot, or a test) does not stop the others.
/// Test binaries that need what a guest cannot carry. `daemonset` runs the container image under
/// podman, whose runtime, storage and image would not fit the initramfs; the privileges and
/// mounts it proves are the same on every kernel of the matrix (all newer than 5.8, where
/// CAP_BPF and CAP_PERFMON appeared), and the other binaries test the kernels. `top_terminal`
/// tests how `top` draws on a pseudo-terminal: userspace alone, the same on every kernel, so
/// the guests (slow under TCG) would spend their time on it for nothing.
const HOST_ONLY_BINARIES: &[&str] = &["daemonset", "top_terminal"];

pub fn run(opts: &VmOptions) -> Result<Matrix> {
    tracer::build(false)?;
    let tracer = workspace::tracer_binary(false)?;
    let tests = if opts.test_binaries.is_empty() {
        let mut built = workspace::build_integration_tests()?;
        built.retain(|t| !HOST_ONLY_BINARIES.contains(&t.name.as_str()));
        built
    } else {
        opts.test_binaries
            .iter()
            .map(|p| prebuilt(p))
            .collect::<Result<_>>()?
    };
    if tests.is_empty() {
        eprintln!("vm: {TESTS_PACKAGE} has no integration test binaries; nothing to boot");
        return Ok(Matrix::default());
    }

    let cache = workspace::target_dir()?.join("vm");
    fs::create_dir_all(&cache)?;
    let package_dir = workspace::root().join("tests");
    let scenario = workspace::target_dir()?.join("debug").join("tcpscenario");
    anyhow::ensure!(
        scenario.exists(),
        "{} is missing: the integration tests build it",
        scenario.display()
    );
    let storm = workspace::target_dir()?.join("debug").join("tcpstorm");
    anyhow::ensure!(
        storm.exists(),
        "{} is missing: the integration tests build it",
        storm.display()
    );
    let payload = initramfs::Payload {
        tracer: &tracer,
        scenario: &scenario,
        storm: &storm,
        tests: &tests,
        libtest_args: &opts.libtest_args,
        package_dir: &package_dir,
    };
    let staging = cache.join("rootfs");
    initramfs::stage(&staging, &payload)?;

    let requests = if opts.kernels.is_empty() {
        Request::default_matrix()
    } else {
        opts.kernels.iter().cloned().map(Request::Given).collect()
    };
    let mut apt = AptKernels::default();
    let mut matrix = Matrix::default();
    for request in &requests {
        let started = Instant::now();
        let run = match boot_one(&cache, &staging, &payload, request, &mut apt, opts) {
            Ok(run) => run,
            Err(err) => {
                eprintln!("vm: {}: {err:#}", request.describe());
                KernelRun {
                    label: request.describe(),
                    tally: Tally {
                        passed: 0,
                        failed: 1,
                    },
                    elapsed: started.elapsed(),
                    error: Some(format!("{err:#}")),
                }
            }
        };
        eprintln!("{run}");
        matrix.0.push(run);
    }
    Ok(matrix)
}

/// Prepares one kernel, packs its initramfs, boots it and reads the tally off its console.
fn boot_one(
    cache: &Path,
    staging: &Path,
    payload: &initramfs::Payload,
    request: &Request,
    apt: &mut AptKernels,
    opts: &VmOptions,
) -> Result<KernelRun> {
    let guest = kernel::prepare(cache, request, apt)?;
    eprintln!(
        "vm: guest kernel {} ({})",
        guest.package,
        guest.vmlinuz.display()
    );
    let modules = kernel::diag_modules(&guest)?;
    let initramfs = cache.join("initramfs.cpio");
    initramfs::pack(staging, &initramfs, payload, &modules)?;
    let size = fs::metadata(&initramfs)?.len();
    eprintln!("vm: initramfs {} ({} MiB)", initramfs.display(), size >> 20);

    let console_log = cache.join(format!("console-{}.log", guest.release));
    let mut boot = qemu::Boot {
        vmlinuz: &guest.vmlinuz,
        initramfs: &initramfs,
        console_log: console_log.clone(),
        timeout: opts.timeout,
        accel: Accel::detect(),
    };
    let mut report = qemu::boot(&boot)?;
    if boot.accel == Accel::Kvm && report.to_init.is_none() && !report.timed_out {
        eprintln!("vm: the guest did not start under KVM; booting again with TCG");
        boot.accel = Accel::Tcg;
        report = qemu::boot(&boot)?;
    }

    let tally = report.console.tally();
    match report.to_init {
        Some(t) => eprintln!(
            "vm: guest {} reached /init in {:.1} s; whole run {:.1} s",
            report.console.kernel_release.as_deref().unwrap_or("?"),
            t.as_secs_f64(),
            report.total.as_secs_f64()
        ),
        None => eprintln!(
            "vm: guest never reached /init ({:.1} s)",
            report.total.as_secs_f64()
        ),
    }
    if report.timed_out {
        eprintln!("vm: timed out after {} s", opts.timeout.as_secs());
    }
    for problem in report.console.problems() {
        eprintln!("vm: {problem}");
    }
    eprintln!("vm: console log {}", console_log.display());
    Ok(KernelRun {
        label: guest.label(),
        tally,
        elapsed: report.total,
        error: None,
    })
}

fn prebuilt(path: &Path) -> Result<TestBinary> {
    let path = fs::canonicalize(path).with_context(|| format!("test binary {}", path.display()))?;
    let file = path
        .file_name()
        .context("test binary has no name")?
        .to_string_lossy();
    // cargo names them deps/<target>-<16 hex digits>; keep the target's name.
    let name = match file.rsplit_once('-') {
        Some((target, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            target.to_string()
        }
        _ => file.to_string(),
    };
    Ok(TestBinary { name, path })
}

/// Long enough for every integration test under TCG on two slow cores; a hung guest ends here.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20 * 60);
