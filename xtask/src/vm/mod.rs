//! `cargo xtask vm`: the integration tests on a matrix of Debian kernels under QEMU (the newest
//! 5.10, 6.1 and 6.12 cloud kernels by default).
//!
//! The host kernel is one kernel; the programs must also load where tracing programs get no
//! socket cookies and BPF memory is charged to RLIMIT_MEMLOCK (5.10), where fentry works, where
//! the tracepoint layouts are older (6.1) and where they changed since (6.12). Each guest boots
//! straight into a busybox initramfs that holds the test binaries, runs them one after another,
//! and powers off; the kernels run one after another, each with its own console log.

mod apt;
mod console;
mod initramfs;
mod kernel;
mod qemu;
mod userland;

use kernel::{AptKernels, Request};
use qemu::Accel;
use userland::Userland;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::arch::Arch;
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
    /// The guests' architecture (arm64: cross-built binaries under qemu-system-aarch64).
    pub arch: Arch,
    /// How many guests run at once.
    pub jobs: usize,
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

/// Test binaries that need what a guest cannot carry. `daemonset` runs the container image under
/// podman, whose runtime, storage and image would not fit the initramfs; the privileges and
/// mounts it proves are the same on every kernel of the matrix (all newer than 5.8, where
/// CAP_BPF and CAP_PERFMON appeared), and the other binaries test the kernels. `top_terminal`
/// tests how `top` draws on a pseudo-terminal: userspace alone, the same on every kernel, so
/// the guests (slow under TCG) would spend their time on it for nothing.
const HOST_ONLY_BINARIES: &[&str] = &["daemonset", "top_terminal"];

/// Builds what the guests need, then boots each kernel of the matrix in turn and returns their
/// tallies. A kernel that fails (to download, to boot, or a test) does not stop the others.
pub fn run(opts: &VmOptions) -> Result<Matrix> {
    let arch = opts.arch;
    tracer::build(false, arch)?;
    let tracer = workspace::tracer_binary(false, arch)?;
    let tests = if opts.test_binaries.is_empty() {
        let mut built = workspace::build_integration_tests(arch)?;
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
    let bins = workspace::profile_dir(arch, "debug")?;
    let scenario = bins.join("tcpscenario");
    anyhow::ensure!(
        scenario.exists(),
        "{} is missing: the integration tests build it",
        scenario.display()
    );
    let storm = bins.join("tcpstorm");
    anyhow::ensure!(
        storm.exists(),
        "{} is missing: the integration tests build it",
        storm.display()
    );
    let userland = Userland::prepare(&cache, arch)?;
    let payload = initramfs::Payload {
        tracer: &tracer,
        scenario: &scenario,
        storm: &storm,
        tests: &tests,
        libtest_args: &opts.libtest_args,
        package_dir: &package_dir,
        arch,
        userland: &userland,
    };
    // One staging tree per architecture, so an arm64 run does not disturb an x86-64 one.
    let staging = cache.join(match arch {
        Arch::Amd64 => "rootfs".to_string(),
        other => format!("rootfs-{other}"),
    });
    initramfs::stage(&staging, &payload)?;

    let requests = if opts.kernels.is_empty() {
        Request::default_matrix(arch)
    } else {
        opts.kernels.iter().cloned().map(Request::Given).collect()
    };
    // Kernels are prepared (downloaded, initramfs packed) one after another, then booted up to
    // `jobs` at a time: a guest spends much of its run waiting on test timers, so emulated
    // guests can share the machine's cores.
    let mut apt = AptKernels::new(&cache);
    let mut slots: Vec<Result<Prepared, KernelRun>> = Vec::new();
    for request in &requests {
        let started = Instant::now();
        slots.push(
            prepare_one(&cache, &staging, &payload, request, &mut apt).map_err(|err| {
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
            }),
        );
    }
    let jobs = opts.jobs.max(1);
    let queue: Mutex<Vec<(usize, Prepared)>> = Mutex::new(Vec::new());
    let mut runs: Vec<Option<KernelRun>> = Vec::new();
    for (i, slot) in slots.into_iter().enumerate() {
        match slot {
            Ok(prepared) => {
                queue.lock().expect("queue").push((i, prepared));
                runs.push(None);
            }
            Err(run) => runs.push(Some(run)),
        }
    }
    queue.lock().expect("queue").reverse();
    let concurrent = jobs > 1 && queue.lock().expect("queue").len() > 1;
    let done: Mutex<Vec<(usize, KernelRun)>> = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let Some((i, prepared)) = queue.lock().expect("queue").pop() else {
                        break;
                    };
                    let started = Instant::now();
                    let label = prepared.label.clone();
                    let run = boot_prepared(prepared, opts, concurrent).unwrap_or_else(|err| {
                        eprintln!("vm: {label}: {err:#}");
                        KernelRun {
                            label,
                            tally: Tally {
                                passed: 0,
                                failed: 1,
                            },
                            elapsed: started.elapsed(),
                            error: Some(format!("{err:#}")),
                        }
                    });
                    eprintln!("{run}");
                    done.lock().expect("results").push((i, run));
                }
            });
        }
    });
    for (i, run) in done.into_inner().expect("results") {
        runs[i] = Some(run);
    }
    Ok(Matrix(runs.into_iter().flatten().collect()))
}

/// A kernel ready to boot: unpacked, with its initramfs.
#[derive(Debug)]
struct Prepared {
    label: String,
    vmlinuz: PathBuf,
    initramfs: PathBuf,
    console_log: PathBuf,
    arch: Arch,
}

/// Finds and unpacks one kernel and packs its initramfs.
fn prepare_one(
    cache: &Path,
    staging: &Path,
    payload: &initramfs::Payload,
    request: &Request,
    apt: &mut AptKernels,
) -> Result<Prepared> {
    let guest = kernel::prepare(cache, request, apt)?;
    eprintln!(
        "vm: guest kernel {} ({})",
        guest.package,
        guest.vmlinuz.display()
    );
    let modules = kernel::diag_modules(&guest)?;
    let initramfs = cache.join(format!("initramfs-{}.cpio", guest.release));
    initramfs::pack(staging, &initramfs, payload, &modules)?;
    let size = fs::metadata(&initramfs)?.len();
    eprintln!("vm: initramfs {} ({} MiB)", initramfs.display(), size >> 20);
    let label = match payload.arch {
        Arch::Amd64 => guest.label(),
        other => format!("{} {other}", guest.label()),
    };
    Ok(Prepared {
        label,
        console_log: cache.join(format!("console-{}.log", guest.release)),
        vmlinuz: guest.vmlinuz,
        initramfs,
        arch: payload.arch,
    })
}

/// Boots a prepared kernel and reads the tally off its console. `concurrent`: other guests
/// run beside it, so its console lines on stdout carry its label.
fn boot_prepared(p: Prepared, opts: &VmOptions, concurrent: bool) -> Result<KernelRun> {
    let mut boot = qemu::Boot {
        vmlinuz: &p.vmlinuz,
        initramfs: &p.initramfs,
        console_log: p.console_log.clone(),
        timeout: opts.timeout,
        accel: Accel::detect(p.arch),
        arch: p.arch,
        prefix: concurrent.then(|| format!("[{}]", p.label)),
    };
    let mut report = qemu::boot(&boot)?;
    if boot.accel == Accel::Kvm && report.to_init.is_none() && !report.timed_out {
        eprintln!("vm: the guest did not start under KVM; booting again with TCG");
        boot.accel = Accel::Tcg;
        report = qemu::boot(&boot)?;
    }
    if report.console.int3_oops && !report.console.all_done && boot.accel == Accel::Tcg {
        // Once, loudly: a second crash fails the run as any crash does.
        eprintln!(
            "vm: {}: the guest kernel oopsed on a breakpoint in its own text (Oops: int3), \
             which is code patching racing under emulation, not a test; console log {}; \
             booting it again once",
            p.label,
            p.console_log.display()
        );
        let first = p.console_log.with_extension("oops.log");
        let _ = fs::rename(&p.console_log, &first);
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
            "vm: guest {} never reached /init ({:.1} s)",
            p.label,
            report.total.as_secs_f64()
        ),
    }
    if report.timed_out {
        eprintln!(
            "vm: {} timed out after {} s",
            p.label,
            opts.timeout.as_secs()
        );
    }
    for problem in report.console.problems() {
        eprintln!("vm: {}: {problem}", p.label);
    }
    eprintln!("vm: console log {}", p.console_log.display());
    Ok(KernelRun {
        label: p.label,
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

/// Guests booted at once by default: the whole matrix. On two cores, three emulated guests side
/// by side took 20 minutes where one after another took 43 (the same busy host): each spends
/// most of its run waiting on test timers.
pub const DEFAULT_JOBS: usize = 3;

/// Long enough for every integration test under TCG on two slow cores with the other guests of
/// the matrix beside it (16 to 17 minutes on a busy host); a hung guest ends here.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(25 * 60);
