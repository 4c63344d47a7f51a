//! `cargo xtask setup`: install what is missing, and only that, saying what and why.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

use crate::arch::Arch;
use crate::cmd;
use crate::requirements::{
    APT_PACKAGES, ARM64_BUILD_PACKAGES, ARM64_VM_PACKAGES, AptPackage, BPF_LINKER_LLVM_FEATURE,
    BPF_LINKER_LLVM_PREFIX, BPF_LINKER_VERSION, CARGO_DENY_VERSION, DEBIAN_RUST_SRC, Need, Purpose,
};

/// Whether setup may change the machine or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Install,
    CheckOnly,
}

/// What the command that calls setup is about to do, and so which packages (by their
/// `Purpose`) and tools it needs. A command that needs more (bpftrace for `bench`) gets a
/// variant of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Build and run the tracer (`cargo xtask build`, `run`, `setup --run-only`): the
    /// kernel-program toolchain only.
    Run,
    /// Build the container image (`cargo xtask image`): the toolchain and podman.
    Image,
    /// Run tests without the image (`vm`, `test --vm-only`, `soak`, `fuzz`): the toolchain and
    /// the test tools (QEMU, Prometheus, ...).
    Test,
    /// `cargo xtask bench`: the test tools and bpftrace, its floor and peers.
    Bench,
    /// The host test suite, which also builds and runs the image and checks the dependencies
    /// (`test`, and plain `setup`, which prepares the machine for it): everything.
    TestWithImage,
}

impl Scope {
    /// Whether this scope wants the packages that are for `purpose`.
    pub fn wants(self, purpose: Purpose) -> bool {
        match purpose {
            Purpose::Run => true,
            Purpose::Test => matches!(self, Scope::Test | Scope::TestWithImage | Scope::Bench),
            Purpose::Image => matches!(self, Scope::Image | Scope::TestWithImage),
            Purpose::Bench => self == Scope::Bench,
        }
    }

    /// Whether it runs `cargo deny` (the host suite's first steps do).
    fn runs_cargo_deny(self) -> bool {
        self == Scope::TestWithImage
    }
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
    /// cargo-deny runs, or is not needed (only the host test suite runs it).
    deny_runs: bool,
    /// Missing packages the build or the tests cannot do without.
    required: Vec<&'static AptPackage>,
    /// Missing packages that are installed only when apt offers them.
    optional: Vec<&'static AptPackage>,
}

/// Checks every requirement of `scope` and installs the missing ones (in `Mode::Install`).
pub fn ensure(mode: Mode, scope: Scope) -> Result<()> {
    let plan = plan(scope);
    plan.report();
    let complete = plan.required.is_empty() && plan.linker_runs && plan.deny_runs;
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
    if !plan.deny_runs {
        install_cargo_deny()?;
    }
    if complete && !installed_packages {
        eprintln!("setup: all requirements present");
    }
    Ok(())
}

fn plan(scope: Scope) -> Plan {
    let toolchain = match nightly_rust_src() {
        Some(src) => KernelToolchain::NightlyRustSrc(src),
        None => KernelToolchain::Debian,
    };
    let linker_runs = bpf_linker_runs();
    let debian = matches!(toolchain, KernelToolchain::Debian);
    let (optional, required) = wanted(APT_PACKAGES, scope, debian, linker_runs)
        .filter(|p| !dpkg_installed(p.name))
        .partition(|p| p.need == Need::IfAvailable);
    Plan {
        toolchain,
        linker_runs,
        deny_runs: !scope.runs_cargo_deny() || cargo_deny_runs(),
        required,
        optional,
    }
}

/// The packages `scope` needs on a machine whose kernel toolchain is Debian's (`debian`) or
/// rustup's nightly, and whose bpf-linker runs or not; installed or not.
fn wanted(
    packages: &'static [AptPackage],
    scope: Scope,
    debian: bool,
    linker_runs: bool,
) -> impl Iterator<Item = &'static AptPackage> {
    packages
        .iter()
        .filter(move |p| scope.wants(p.purpose))
        .filter(move |p| match p.need {
            Need::Always | Need::IfAvailable => true,
            Need::WithoutNightlyRustSrc => debian,
            Need::ToBuildBpfLinker => !linker_runs,
        })
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
            eprintln!(
                "setup: missing Debian package {} (for {}): {}",
                p.name,
                p.purpose.name(),
                p.why
            );
        }
        for p in &self.optional {
            eprintln!(
                "setup: missing optional Debian package {}: {}",
                p.name, p.why
            );
        }
        if !self.deny_runs {
            eprintln!(
                "setup: missing cargo-deny {CARGO_DENY_VERSION} (for test): `cargo xtask test` \
                 checks dependency licenses, bans and sources with it (`cargo deny --version` \
                 fails)"
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

fn cargo_deny_runs() -> bool {
    cmd::succeeds(Command::new("cargo-deny").arg("--version"))
}

fn install_cargo_deny() -> Result<()> {
    cmd::run(
        Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args([
            "install",
            "cargo-deny",
            "--version",
            CARGO_DENY_VERSION,
            "--locked",
        ]),
    )?;
    if !cargo_deny_runs() {
        bail!(
            "setup: cargo-deny was installed but `cargo-deny --version` still fails; is {} on PATH?",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(scope: Scope, debian: bool, linker_runs: bool) -> Vec<&'static str> {
        wanted(APT_PACKAGES, scope, debian, linker_runs)
            .map(|p| p.name)
            .collect()
    }

    #[test]
    fn running_installs_only_the_kernel_program_toolchain() {
        assert_eq!(
            names(Scope::Run, true, false),
            ["rustc-web", "cargo-web", "rust-web-src", "llvm-22-dev"]
        );
        // rustup's nightly with rust-src and a working bpf-linker: nothing at all.
        assert!(names(Scope::Run, false, true).is_empty());
        assert!(!Scope::Run.runs_cargo_deny());
    }

    #[test]
    fn testing_installs_the_test_tools_too() {
        for scope in [Scope::Test, Scope::TestWithImage] {
            let all = names(scope, true, true);
            for p in [
                "qemu-system-x86",
                "chromium",
                "prometheus",
                "iproute2",
                "bpftool",
            ] {
                assert!(all.contains(&p), "{p} in {all:?} for {scope:?}");
                assert!(!names(Scope::Run, true, true).contains(&p), "{p} for run");
                assert!(
                    !names(Scope::Image, true, true).contains(&p),
                    "{p} for image"
                );
            }
        }
        // bpftrace is the bench's floor and peers, and nothing else's.
        assert!(names(Scope::Bench, true, true).contains(&"bpftrace"));
        for scope in [Scope::Run, Scope::Image, Scope::Test, Scope::TestWithImage] {
            assert!(!names(scope, true, true).contains(&"bpftrace"), "{scope:?}");
        }
        // cargo deny runs before the host tests only.
        assert!(Scope::TestWithImage.runs_cargo_deny());
        assert!(!Scope::Test.runs_cargo_deny());
    }

    #[test]
    fn podman_is_installed_only_for_the_image_and_the_tests_that_run_it() {
        let for_image: Vec<&str> = APT_PACKAGES
            .iter()
            .filter(|p| p.purpose == Purpose::Image)
            .map(|p| p.name)
            .collect();
        assert_eq!(for_image, ["podman", "runc"]);
        for (scope, wanted) in [
            (Scope::Run, false),
            (Scope::Test, false),
            (Scope::Image, true),
            (Scope::TestWithImage, true),
        ] {
            let names = names(scope, false, true);
            for p in &for_image {
                assert_eq!(names.contains(p), wanted, "{p} for {scope:?}: {names:?}");
            }
        }
        // The image is built from the tracer: its toolchain comes along.
        assert!(names(Scope::Image, true, false).contains(&"llvm-22-dev"));
    }

    /// The README's "Debian packages" table lists every package of `APT_PACKAGES`, in order,
    /// with what it is for.
    #[test]
    fn the_readme_setup_table_matches_the_requirements() {
        let readme = std::fs::read_to_string(crate::workspace::root().join("README.md")).unwrap();
        let rows: Vec<(String, String)> = readme
            .lines()
            .skip_while(|l| !l.starts_with("### Debian packages"))
            .skip_while(|l| !l.starts_with("| package"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                (cells[1].trim_matches('`').to_string(), cells[2].to_string())
            })
            .collect();
        let want: Vec<(String, String)> = APT_PACKAGES
            .iter()
            .map(|p| (p.name.to_string(), p.purpose.name().to_string()))
            .collect();
        assert_eq!(rows, want);
    }
}
