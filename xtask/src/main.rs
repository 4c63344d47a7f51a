//! tcptrace's orchestration: set up a machine, build, run, test, and test on other kernels.
//!
//! Orchestration only: every step is another program (apt-get, cargo, qemu) started with
//! `std::process::Command`. `cargo xtask` is an alias in .cargo/config.toml.

mod arch;
mod bench;
mod cmd;
mod fuzz;
mod image;
mod libs;
mod libtest;
mod measure;
mod requirements;
mod setup;
mod soak;
mod test;
mod tracer;
mod vm;
mod workspace;

use std::env;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::arch::Arch;
use crate::setup::{Mode, Scope};
use crate::test::TestOptions;
use crate::vm::VmOptions;

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set up, build, run and test tcptrace"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what is missing (Debian packages, bpf-linker, cargo-deny), saying what and why:
    /// what building, running, testing and the container image need, or with --run-only what
    /// building and running need.
    Setup {
        /// Only report what is missing; change nothing.
        #[arg(long)]
        check: bool,
        /// Only the kernel-program toolchain (what `build` and `run` install), not the test
        /// tools.
        #[arg(long)]
        run_only: bool,
    },
    /// Set up, then build tcptrace (kernel programs included).
    Build {
        #[arg(long)]
        release: bool,
        /// Cross-build for another architecture: `aarch64` (aarch64-unknown-linux-gnu, with
        /// Debian's cross linker and arm64 Rust standard library, which setup installs).
        #[arg(long, value_enum)]
        target: Option<BuildTarget>,
    },
    /// Set up, build the release binary, and run it: `cargo xtask run -- trace`.
    Run {
        /// Run the debug build instead.
        #[arg(long)]
        debug: bool,
        /// The tracer's arguments.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build the release binary, and build the container image deploy/daemonset.yaml
    /// runs: localhost/tcptrace:VERSION, saved as target/image/tcptrace-VERSION.oci.tar.
    Image {
        /// From the debug binary instead (tag VERSION-debug), as the tests do.
        #[arg(long)]
        debug: bool,
    },
    /// Set up, then fmt, clippy, the host test suite, and the integration tests in a VM.
    Test {
        /// Skip the VM run.
        #[arg(long, conflicts_with = "vm_only")]
        no_vm: bool,
        /// Only the VM run.
        #[arg(long)]
        vm_only: bool,
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Host cost under a loopback connection storm against the floor (an empty program on the
    /// same hook) and bpftrace's peers, tracer CPU at a fixed rate, BPF run time per transition,
    /// loss counted independently, and kernel-free aggregator throughput; writes BENCHMARKS.md.
    /// Needs root.
    Bench {
        /// Rounds of every mode (nothing, the floor, the peers, tcptrace's commands).
        #[arg(long, default_value_t = 4)]
        rounds: usize,
        /// Time bound of each storm.
        #[arg(long, default_value_t = 8.0)]
        seconds: f64,
        /// Connection bound of each storm.
        #[arg(long, default_value_t = 1_000_000)]
        conns: u64,
        /// Connections of each storm of the loss balance (0: skip it).
        #[arg(long, default_value_t = 20_000)]
        balance_conns: u64,
        /// Loss-balance storms per tracer mode (`report`, `trace`).
        #[arg(long, default_value_t = 5)]
        balance_storms: usize,
        /// Storm client threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Storm destinations (127.0.77.1 upwards): more of them, fewer port collisions.
        #[arg(long, default_value_t = 16)]
        targets: u32,
        /// Skip the kernel-free replay.
        #[arg(long)]
        skip_replay: bool,
        /// Total connections per second of the fixed-rate storms (issue 13's userspace goal is
        /// set at 40k).
        #[arg(long, default_value_t = 40_000.0)]
        rate: f64,
        /// Time bound of each fixed-rate storm: long enough for the tracer's checks against
        /// the kernel's socket table (every 10 s) to fall inside it twice, since they are part
        /// of what a tracer costs at a sustained rate.
        #[arg(long, default_value_t = 20.0)]
        paced_seconds: f64,
        /// Run only this part and print it; the output file is left as it is.
        #[arg(long, value_enum)]
        only: Option<bench::Part>,
        /// Where to write the results.
        #[arg(long, default_value = "BENCHMARKS.md")]
        output: PathBuf,
    },
    /// Connection churn with CLOSE_WAIT leaks under `tcptrace report`; checks counts against
    /// `ss`, flat memory and zero loss, and appends the result to BENCHMARKS.md. Not part of CI.
    Soak {
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        #[arg(long, default_value = "BENCHMARKS.md")]
        output: PathBuf,
    },
    /// Fuzz the command-line parsers, the event decoder, the recording reader and the readers
    /// of kernel formats (BTF, sock_diag, tracefs) with cargo-fuzz (nightly), each for a bounded
    /// time. Not part of CI.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (repeatable): value_parsers, cli_args, event_decode, record_reader,
        /// btf_sock_offsets, sock_diag_datagram, tracefs_format.
        #[arg(long = "target")]
        targets: Vec<String>,
        #[arg(long, default_value = "BENCHMARKS.md")]
        output: PathBuf,
    },
    /// Set up, then run the integration tests under QEMU on each kernel of the matrix (the
    /// newest Debian 5.10, 6.1 and 6.12 cloud kernels).
    Vm {
        #[command(flatten)]
        vm: VmArgs,
        /// Run these prebuilt libtest binaries instead of the integration tests.
        #[arg(long = "test-binary", value_name = "PATH")]
        test_binaries: Vec<PathBuf>,
    },
}

/// Targets `cargo xtask build --target` cross-builds for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BuildTarget {
    /// aarch64-unknown-linux-gnu.
    Aarch64,
}

#[derive(Debug, clap::Args)]
struct VmArgs {
    /// Guest kernel: a Debian package name or a .deb file; repeat for several, booted in turn
    /// [default: the newest linux-image-5.10.0-*-cloud-amd64 (Debian 11), the newest
    /// linux-image-6.1.0-*-cloud-amd64 and the newest linux-image-6.12.*-cloud-amd64].
    #[arg(long = "kernel", value_name = "PKG")]
    kernels: Vec<String>,
    /// Kill each guest after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = vm::DEFAULT_TIMEOUT.as_secs())]
    vm_timeout: u64,
    /// The guests' architecture: arm64 cross-builds the tracer and the tests for
    /// aarch64-unknown-linux-gnu and boots Debian 12's arm64 cloud kernel under
    /// qemu-system-aarch64 (emulated; setup installs what that needs).
    #[arg(long, value_enum, default_value_t = Arch::Amd64)]
    arch: Arch,
    /// How many guests run at once.
    #[arg(long, value_name = "N", default_value_t = vm::DEFAULT_JOBS)]
    vm_jobs: usize,
    /// Arguments for the test binaries: a name filter, `--exact`, `--ignored`, ...
    #[arg(last = true, value_name = "FILTER")]
    libtest_args: Vec<String>,
}

impl VmArgs {
    fn into_options(self, test_binaries: Vec<PathBuf>) -> VmOptions {
        VmOptions {
            kernels: self.kernels,
            libtest_args: self.libtest_args,
            timeout: Duration::from_secs(self.vm_timeout),
            test_binaries,
            arch: self.arch,
            jobs: self.vm_jobs,
        }
    }
}

fn main() -> ExitCode {
    put_cargo_bin_on_path();
    match run(Cli::parse().task) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<ExitCode> {
    match task {
        Task::Setup { check, run_only } => {
            setup::ensure(
                if check {
                    Mode::CheckOnly
                } else {
                    Mode::Install
                },
                if run_only {
                    Scope::Run
                } else {
                    Scope::TestWithImage
                },
            )?;
        }
        Task::Build { release, target } => {
            setup::ensure(Mode::Install, Scope::Run)?;
            let arch = match target {
                None => Arch::Amd64,
                Some(BuildTarget::Aarch64) => {
                    setup::ensure_cross(Mode::Install, Arch::Arm64, false)?;
                    Arch::Arm64
                }
            };
            tracer::build(release, arch)?;
        }
        Task::Run { debug, args } => {
            setup::ensure(Mode::Install, Scope::Run)?;
            tracer::build(!debug, Arch::Amd64)?;
            tracer::exec(!debug, &args)?;
        }
        Task::Image { debug } => {
            setup::ensure(Mode::Install, Scope::Image)?;
            let built = image::build(!debug)?;
            println!("{built}");
        }
        Task::Test { no_vm, vm_only, vm } => {
            // The host tests build and run the image; the VM run alone does not.
            let scope = if vm_only {
                Scope::Test
            } else {
                Scope::TestWithImage
            };
            setup::ensure(Mode::Install, scope)?;
            if !no_vm && vm.arch != Arch::Amd64 {
                setup::ensure_cross(Mode::Install, vm.arch, true)?;
            }
            let opts = TestOptions {
                no_vm,
                vm_only,
                vm: vm.into_options(Vec::new()),
            };
            let (summary, failed_steps) = test::run(&opts)?;
            for step in &failed_steps {
                eprintln!("xtask: failed: {step}");
            }
            println!("{summary}");
            if !summary.ok() || !failed_steps.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Task::Bench {
            rounds,
            seconds,
            conns,
            balance_conns,
            balance_storms,
            threads,
            targets,
            skip_replay,
            rate,
            paced_seconds,
            only,
            output,
        } => {
            setup::ensure(Mode::Install, Scope::Bench)?;
            bench::run(&bench::BenchOptions {
                rounds,
                seconds,
                conns,
                balance_conns,
                balance_storms,
                threads,
                targets,
                skip_replay,
                rate,
                paced_seconds,
                only,
                output: workspace::root().join(output),
            })?;
        }
        Task::Soak { minutes, output } => {
            setup::ensure(Mode::Install, Scope::Test)?;
            soak::run(&soak::SoakOptions {
                minutes,
                output: workspace::root().join(output),
            })?;
        }
        Task::Fuzz {
            seconds,
            targets,
            output,
        } => {
            setup::ensure(Mode::Install, Scope::Test)?;
            fuzz::run(&fuzz::FuzzOptions {
                seconds,
                targets,
                output: workspace::root().join(output),
            })?;
        }
        Task::Vm { vm, test_binaries } => {
            setup::ensure(Mode::Install, Scope::Test)?;
            if vm.arch != Arch::Amd64 {
                setup::ensure_cross(Mode::Install, vm.arch, true)?;
            }
            let matrix = vm::run(&vm.into_options(test_binaries))?;
            println!("{matrix}");
            if !matrix.ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cargo install` puts bpf-linker in ~/.cargo/bin, which a fresh shell may not have on PATH;
/// the kernel build and setup's own check both need to find it.
fn put_cargo_bin_on_path() {
    let bin = setup::cargo_bin_dir();
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined = env::join_paths(env::split_paths(&path).chain([bin])).expect("PATH joins");
    // SAFETY: called first thing in main, before any thread exists.
    unsafe { env::set_var("PATH", joined) };
}
