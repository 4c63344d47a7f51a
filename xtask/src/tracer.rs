//! `cargo xtask build` and `cargo xtask run`: build the tracer and start it.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Context, Result};

use crate::arch::Arch;
use crate::{cmd, workspace};

/// `cargo build [--release] -p tcptrace` for `arch` (its build script builds the kernel
/// programs, which are the same bytecode for every architecture).
pub fn build(release: bool, arch: Arch) -> Result<()> {
    let mut cargo = workspace::cargo_for(arch, &["build", "-p", "tcptrace"]);
    if release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo)?;
    if arch != Arch::Amd64 {
        eprintln!(
            "xtask: built {}",
            workspace::tracer_binary(release, arch)?.display()
        );
    }
    Ok(())
}

/// Replaces this process with the tracer, so its exit code and its signal handling (Ctrl-C
/// ends the trace and prints the summary) are the tracer's own.
pub fn exec(release: bool, args: &[String]) -> Result<()> {
    let binary = workspace::tracer_binary(release, Arch::Amd64)?;
    let mut tracer = Command::new(&binary);
    tracer.args(args);
    eprintln!("xtask: $ {}", cmd::describe(&tracer));
    let err = tracer.exec();
    Err(err).with_context(|| format!("cannot start {}", binary.display()))
}
