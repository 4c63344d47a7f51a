//! `cargo xtask setup`: install what is missing, and only that, saying what and why.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

use crate::arch::Arch;
use crate::cmd;
use crate::requirements::{
    APT_PACKAGES, ARM64_BUILD_PACKAGES, ARM64_VM_PACKAGES, AptPackage, BPF_LINKER_LLVM_FEATURE,
    BPF_LINKER_LLVM_PREFIX, BPF_LINKER_VERSION, DEBIAN_RUST_SRC, Need,
};

/// Whether setup may change the machine or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Install,
    CheckOnly,
}

/// Which compiler can build `core` for the BPF target.
#[derive(Debug)]
enum KernelToolchain {
    /// rustup's nightly with its `rust-src` component (upstream's usual path).
    NightlyRustSrc(PathBuf),
    /// Debian's rustc-web with rust-web-src.
    Debian,
}

/// What this machine lacks.
#[derive(Debug)]
struct Plan {
    toolchain: KernelToolchain,
    linker_runs: bool,
    /// Missing packages the build or the tests cannot do without.
    required: Vec<&'static AptPackage>,
    /// Missing packages that are installed only when apt offers them.
    optional: Vec<&'static AptPackage>,
}

/// Checks every requirement and installs the missing ones (in `Mode::Install`).
pub fn ensure(mode: Mode) -> Result<()> {
    let plan = plan();
    plan.report();
    let complete = plan.required.is_empty() && plan.linker_runs;
    if mode == Mode::CheckOnly {
        if complete {
            eprintln!("setup: all requirements present");
            return Ok(());
        }
        bail!("setup: requirements missing (run `cargo xtask setup` as root to install them)");
    }

    let installed_packages = install_packages(&plan)?;
    if matches!(plan.toolchain, KernelToolchain::Debian) && !Path::new(DEBIAN_RUST_SRC).is_dir() {
        bail!("setup: {DEBIAN_RUST_SRC} is missing although rust-web-src is installed");
    }
    if !plan.linker_runs {
        install_bpf_linker()?;
    }
    if complete && !installed_packages {
        eprintln!("setup: all requirements present");
    }
    Ok(())
}

fn plan() -> Plan {
    let toolchain = match nightly_rust_src() {
        Some(src) => KernelToolchain::NightlyRustSrc(src),
        None => KernelToolchain::Debian,
    };
    let linker_runs = bpf_linker_runs();
    let wanted = APT_PACKAGES.iter().filter(|p| match p.need {
        Need::Always | Need::IfAvailable => true,
        Need::WithoutNightlyRustSrc => matches!(toolchain, KernelToolchain::Debian),
        Need::ToBuildBpfLinker => !linker_runs,
    });
    let (optional, required) = wanted
        .filter(|p| !dpkg_installed(p.name))
        .partition(|p| p.need == Need::IfAvailable);
    Plan {
        toolchain,
        linker_runs,
        required,
        optional,
    }
}

impl Plan {
    fn report(&self) {
        match &self.toolchain {
            KernelToolchain::NightlyRustSrc(src) => {
                eprintln!(
                    "setup: kernel toolchain: rustup nightly + rust-src ({})",
                    src.display()
                )
            }
            KernelToolchain::Debian => eprintln!(
                "setup: kernel toolchain: Debian rustc-web (rustup nightly has no rust-src)"
            ),
        }
        for p in &self.required {
            eprintln!("setup: missing Debian package {}: {}", p.name, p.why);
        }
        for p in &self.optional {
            eprintln!(
                "setup: missing optional Debian package {}: {}",
                p.name, p.why
            );
        }
        if !self.linker_runs {
            eprintln!(
                "setup: missing bpf-linker {BPF_LINKER_VERSION}: links the kernel programs into \
                 a BPF object (`bpf-linker --version` fails)"
            );
        }
    }
}

/// Installs the missing packages with one `apt-get update` first; whether it installed any.
///
/// Optional packages justify an update only when the current lists already offer them; after
/// an update (done anyway for required ones) their availability is checked again.
fn install_packages(plan: &Plan) -> Result<bool> {
    let offered_now: Vec<&str> = plan
        .optional
        .iter()
        .filter(|p| apt_has_candidate(p.name))
        .map(|p| p.name)
        .collect();
    if plan.required.is_empty() && offered_now.is_empty() {
        for p in &plan.optional {
            eprintln!("setup: {} is not offered by apt here; skipping it", p.name);
        }
        return Ok(false);
    }
    if !cmd::is_root() {
        if plan.required.is_empty() {
            eprintln!(
                "setup: not root, so optional packages stay missing; tests needing them skip"
            );
            return Ok(false);
        }
        let names: Vec<&str> = plan
            .required
            .iter()
            .map(|p| p.name)
            .chain(offered_now)
            .collect();
        bail!(
            "setup: installing Debian packages needs root. Missing: {}.\n\
             Run `cargo xtask setup` as root, or: \
             sudo apt-get install --no-install-recommends {}",
            names.join(", "),
            names.join(" ")
        );
    }
    cmd::run(apt_get().arg("update"))?;
    let mut install: Vec<&str> = plan.required.iter().map(|p| p.name).collect();
    for p in &plan.optional {
        if apt_has_candidate(p.name) {
            install.push(p.name);
        } else {
            eprintln!("setup: {} is not offered by apt here; skipping it", p.name);
        }
    }
    cmd::run(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&install),
    )?;
    Ok(true)
}

/// What cross-building for `arch` needs (and, with `vm`, booting it): the architecture enabled in
/// dpkg (multiarch), and the packages of `ARM64_BUILD_PACKAGES` / `ARM64_VM_PACKAGES`.
pub fn ensure_cross(mode: Mode, arch: Arch, vm: bool) -> Result<()> {
    if arch == Arch::Amd64 {
        return Ok(());
    }
    let foreign = cmd::probe_stdout(Command::new("dpkg").arg("--print-foreign-architectures"))
        .is_some_and(|out| out.split_whitespace().any(|a| a == "arm64"));
    let vm_packages: &[AptPackage] = if vm { ARM64_VM_PACKAGES } else { &[] };
    let missing: Vec<&AptPackage> = ARM64_BUILD_PACKAGES
        .iter()
        .chain(vm_packages)
        .filter(|p| !dpkg_installed(p.name))
        .collect();
    if !foreign {
        eprintln!(
            "setup: dpkg does not have the arm64 architecture (multiarch), which the arm64 Rust standard library needs"
        );
    }
    for p in &missing {
        eprintln!("setup: missing Debian package {}: {}", p.name, p.why);
    }
    if foreign && missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|p| p.name).collect();
    if mode == Mode::CheckOnly || !cmd::is_root() {
        bail!(
            "setup: cross-building for {arch} needs root to install: sudo dpkg --add-architecture \
             arm64 && sudo apt-get update && sudo apt-get install --no-install-recommends {}",
            names.join(" ")
        );
    }
    if !foreign {
        cmd::run(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
    }
    cmd::run(apt_get().arg("update"))?;
    cmd::run(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&names),
    )
}

/// The `core` source of rustup's nightly, when that toolchain and its rust-src are installed.
fn nightly_rust_src() -> Option<PathBuf> {
    let mut rustc = Command::new("rustup");
    // A probe must not download a toolchain.
    rustc.env("RUSTUP_AUTO_INSTALL", "0");
    rustc.args(["run", "nightly", "rustc", "--print", "sysroot"]);
    let sysroot = cmd::probe_stdout(&mut rustc)?;
    let core = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    core.is_dir().then_some(core)
}

fn bpf_linker_runs() -> bool {
    cmd::succeeds(Command::new("bpf-linker").arg("--version"))
}

fn install_bpf_linker() -> Result<()> {
    cmd::run(
        Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .env("LLVM_PREFIX", BPF_LINKER_LLVM_PREFIX)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                BPF_LINKER_LLVM_FEATURE,
            ]),
    )?;
    if !bpf_linker_runs() {
        bail!(
            "setup: bpf-linker was installed but `bpf-linker --version` still fails; is {} on PATH?",
            cargo_bin_dir().display()
        );
    }
    Ok(())
}

/// Where `cargo install` puts binaries.
pub fn cargo_bin_dir() -> PathBuf {
    match env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home).join("bin"),
        None => {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo/bin")
        }
    }
}

fn dpkg_installed(package: &str) -> bool {
    cmd::probe_stdout(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

fn apt_has_candidate(package: &str) -> bool {
    cmd::probe_stdout(Command::new("apt-cache").args(["policy", package])).is_some_and(|policy| {
        policy
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Candidate:"))
            .any(|c| c.trim() != "(none)")
    })
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}
