//! `cargo xtask build` and `cargo xtask run`: build the tracer and start it.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Context, Result};

use crate::{cmd, workspace};

/// `cargo build [--release] -p tcptrace` (its build script builds the kernel programs).
pub fn build(release: bool) -> Result<()> {
    let mut cargo = workspace::cargo();
    cargo.args(["build", "-p", "tcptrace"]);
    if release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo)
}

/// Replaces this process with the tracer, so its exit code and its signal handling (Ctrl-C
/// ends the trace and prints the summary) are the tracer's own.
pub fn exec(release: bool, args: &[String]) -> Result<()> {
    let binary = workspace::tracer_binary(release)?;
    let mut tracer = Command::new(&binary);
    tracer.args(args);
    eprintln!("xtask: $ {}", cmd::describe(&tracer));
    let err = tracer.exec();
    Err(err).with_context(|| format!("cannot start {}", binary.display()))
}
