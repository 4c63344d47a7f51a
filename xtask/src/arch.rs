//! The guest's architecture: x86-64 (the machine's own, KVM where the CPU allows it) or arm64
//! (emulated by `qemu-system-aarch64`, with cross-built binaries).

use std::fmt;

/// What the guests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// x86-64: the machine's own.
    Amd64,
    /// aarch64: Graviton, Ampere; cross-built for `aarch64-unknown-linux-gnu`.
    Arm64,
}

impl Arch {
    /// The Rust target to cross-build for; `None` builds for the machine itself.
    pub fn rust_target(self) -> Option<&'static str> {
        match self {
            Arch::Amd64 => None,
            Arch::Arm64 => Some(ARM64_TARGET),
        }
    }

    /// The QEMU system emulator and the machine it emulates, without the accelerator.
    pub fn qemu(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Arch::Amd64 => ("qemu-system-x86_64", &[]),
            // cortex-a72: a real core without pointer authentication, which `-cpu max` adds and
            // TCG emulates slowly.
            Arch::Arm64 => ("qemu-system-aarch64", &["-M", "virt", "-cpu", "cortex-a72"]),
        }
    }

    /// The kernel's name for the first serial port.
    pub fn console(self) -> &'static str {
        match self {
            Arch::Amd64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }

    /// `strip` for this architecture's binaries (binutils-aarch64-linux-gnu for arm64).
    pub fn strip(self) -> &'static str {
        match self {
            Arch::Amd64 => "strip",
            Arch::Arm64 => "aarch64-linux-gnu-strip",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        })
    }
}

/// The Rust target triple of arm64 Linux.
pub const ARM64_TARGET: &str = "aarch64-unknown-linux-gnu";
