//! Where the workspace and its build outputs are, and the cargo that builds them.

use std::env;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::arch::Arch;
use crate::cmd;

/// The package that holds the integration tests (`tests/`).
pub const TESTS_PACKAGE: &str = "tcptrace-tests";

/// The repository root: xtask lives one level below it.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// `cargo` in the repository root: the same cargo that runs xtask, when it says which.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Debian's rustc (package rustc-web), whose standard library for other architectures comes
/// from multiarch packages (`libstd-rust-web-dev:arm64`): rustup's stable here has only its own.
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// `cargo ARGS` for `arch`: natively, or cross-compiling for arm64 with Debian's rustc and
/// linker (gcc-aarch64-linux-gnu). Build scripts and proc macros are then also built by that
/// rustc, so the two builds never share artifacts.
pub fn cargo_for(arch: Arch, args: &[&str]) -> Command {
    let mut cmd = cargo();
    cmd.args(args);
    if let Some(target) = arch.rust_target() {
        cmd.args(["--target", target])
            .env("RUSTC", DEBIAN_RUSTC)
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
                "aarch64-linux-gnu-gcc",
            );
    }
    cmd
}

/// Where cargo puts `arch`'s outputs of `profile` (`debug`, `release`).
pub fn profile_dir(arch: Arch, profile: &str) -> Result<PathBuf> {
    let mut dir = target_dir()?;
    if let Some(target) = arch.rust_target() {
        dir.push(target);
    }
    Ok(dir.join(profile))
}

/// The target directory, honouring `CARGO_TARGET_DIR` and `.cargo/config.toml`.
pub fn target_dir() -> Result<PathBuf> {
    let json = cmd::stdout_of(cargo().args([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
        "--offline",
    ]))?;
    let meta: serde_json::Value = serde_json::from_str(&json).context("cargo metadata output")?;
    let dir = meta["target_directory"]
        .as_str()
        .context("cargo metadata: no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// `target/[<triple>/]<profile>/tcptrace`.
pub fn tracer_binary(release: bool, arch: Arch) -> Result<PathBuf> {
    Ok(profile_dir(arch, if release { "release" } else { "debug" })?.join("tcptrace"))
}

/// One integration test executable, as cargo built it.
#[derive(Debug, Clone)]
pub struct TestBinary {
    /// The test target's name (the file name under tests/tests/).
    pub name: String,
    pub path: PathBuf,
}

/// Builds the integration tests without running them and returns their executables.
///
/// Only targets of kind `test` count: the VM is slow, so the library's unit tests stay on the
/// host.
pub fn build_integration_tests(arch: Arch) -> Result<Vec<TestBinary>> {
    let mut cmd = cargo_for(
        arch,
        &[
            "test",
            "-p",
            TESTS_PACKAGE,
            "--no-run",
            "--message-format=json-render-diagnostics",
        ],
    );
    eprintln!("xtask: $ {}", cmd::describe(&cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut binaries = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's JSON messages")?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_test_target = msg["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "test"));
        if let (true, Some(path)) = (is_test_target, msg["executable"].as_str()) {
            let name = msg["target"]["name"].as_str().unwrap_or("test").to_string();
            binaries.push(TestBinary {
                name,
                path: PathBuf::from(path),
            });
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("building the integration tests failed: {status}");
    }
    binaries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(binaries)
}
