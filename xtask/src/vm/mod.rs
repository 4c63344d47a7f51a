//! `cargo xtask vm`: the integration tests on a Debian 6.1 kernel under QEMU.
//!
//! The host kernel is one kernel; the programs must also load where fentry works and where the
//! tracepoint layout is older. The guest boots straight into a busybox initramfs that holds the
//! test binaries, runs them one after another, and powers off.

mod console;
mod initramfs;
mod kernel;
mod qemu;

use qemu::Accel;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::libtest::Tally;
use crate::tracer;
use crate::workspace::{self, TESTS_PACKAGE, TestBinary};

/// How to run the VM tests.
#[derive(Debug)]
pub struct VmOptions {
    /// A kernel package name (or a .deb path); `None` picks the newest 6.1 cloud kernel.
    pub kernel: Option<String>,
    /// Arguments for every test binary (filter, `--exact`, ...).
    pub libtest_args: Vec<String>,
    pub timeout: Duration,
    /// Run these libtest binaries instead of building the integration tests.
    pub test_binaries: Vec<PathBuf>,
}

/// Builds what the guest needs, boots it, and returns the tests' tally (a guest that stops
/// early counts as a failure in it).
pub fn run(opts: &VmOptions) -> Result<Tally> {
    tracer::build(false)?;
    let tracer = workspace::tracer_binary(false)?;
    let tests = if opts.test_binaries.is_empty() {
        workspace::build_integration_tests()?
    } else {
        opts.test_binaries
            .iter()
            .map(|p| prebuilt(p))
            .collect::<Result<_>>()?
    };
    if tests.is_empty() {
        eprintln!("vm: {TESTS_PACKAGE} has no integration test binaries; nothing to boot");
        return Ok(Tally::default());
    }

    let cache = workspace::target_dir()?.join("vm");
    fs::create_dir_all(&cache)?;
    let guest = kernel::prepare(&cache, opts.kernel.as_deref())?;
    eprintln!(
        "vm: guest kernel {} ({})",
        guest.package,
        guest.vmlinuz.display()
    );

    let initramfs = cache.join("initramfs.cpio");
    let package_dir = workspace::root().join("tests");
    let scenario = workspace::target_dir()?.join("debug").join("tcpscenario");
    anyhow::ensure!(
        scenario.exists(),
        "{} is missing: the integration tests build it",
        scenario.display()
    );
    let modules = kernel::diag_modules(&guest)?;
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
        modules: &modules,
        tests: &tests,
        libtest_args: &opts.libtest_args,
        package_dir: &package_dir,
    };
    initramfs::build(&cache.join("rootfs"), &initramfs, &payload)?;
    let size = fs::metadata(&initramfs)?.len();
    eprintln!("vm: initramfs {} ({} MiB)", initramfs.display(), size >> 20);

    let mut boot = qemu::Boot {
        vmlinuz: &guest.vmlinuz,
        initramfs: &initramfs,
        console_log: cache.join("console.log"),
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
    eprintln!(
        "vm: {tally} (console log: {})",
        cache.join("console.log").display()
    );
    Ok(tally)
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
