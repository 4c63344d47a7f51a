//! Everything tcptrace needs on a machine besides rustup's stable toolchain, and why.
//!
//! This table is the single source of truth: `cargo xtask setup` reads it, and the README's
//! "Requirements and setup" section (xtask/SETUP.md) copies it. Keep them in step.

/// When a Debian package is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Always.
    Always,
    /// Only when rustup's nightly has no `rust-src` (the Debian toolchain replaces it).
    WithoutNightlyRustSrc,
    /// Only while `bpf-linker` has to be built (it is built against this LLVM).
    ToBuildBpfLinker,
    /// Wanted, but installed only when the apt lists offer it; tests skip what needs it.
    IfAvailable,
}

/// A Debian package and the reason tcptrace needs it.
#[derive(Debug)]
pub struct AptPackage {
    pub name: &'static str,
    pub need: Need,
    pub why: &'static str,
}

pub const APT_PACKAGES: &[AptPackage] = &[
    AptPackage {
        name: "rustc-web",
        need: Need::WithoutNightlyRustSrc,
        why: "rustc 1.96 with LLVM 22 that can build `core` for bpfel-unknown-none \
              (kernel programs), used by tcptrace/build.rs",
    },
    AptPackage {
        name: "cargo-web",
        need: Need::WithoutNightlyRustSrc,
        why: "the cargo that drives rustc-web for the kernel programs",
    },
    AptPackage {
        name: "rust-web-src",
        need: Need::WithoutNightlyRustSrc,
        why: "the `core` source (/usr/lib/rustlib/src/rust/library) that -Z build-std compiles",
    },
    AptPackage {
        name: "llvm-22-dev",
        need: Need::ToBuildBpfLinker,
        why: "LLVM 22, which bpf-linker is built against and links at run time",
    },
    AptPackage {
        name: "iproute2",
        need: Need::Always,
        why: "`ss` (tests compare tcptrace with it) and `ip` (loopback, network namespaces)",
    },
    AptPackage {
        name: "qemu-system-x86",
        need: Need::Always,
        why: "boots the Debian 5.10, 6.1 and 6.12 kernels that the VM tests run on",
    },
    AptPackage {
        name: "busybox-static",
        need: Need::Always,
        why: "the shell and tools inside the VM tests' initramfs",
    },
    AptPackage {
        name: "cpio",
        need: Need::Always,
        why: "packs the VM tests' initramfs",
    },
    AptPackage {
        name: "prometheus",
        need: Need::Always,
        why: "a real Prometheus server (and promtool) that the exporter tests start on loopback \
              to scrape `tcptrace serve` and answer PromQL queries",
    },
    AptPackage {
        name: "chromium",
        need: Need::Always,
        why: "headless screenshots of `diagnose --html` reports: the diagnose tests check that \
              the page renders in a real browser",
    },
    AptPackage {
        name: "bpftool",
        need: Need::Always,
        why: "tests cross-check the BTF offsets tcptrace resolves, and the loaded programs, \
              with it",
    },
];

/// What cross-building for arm64 needs (`cargo xtask build --target aarch64`, and the arm64 VM
/// tests); installed by those commands only, after `dpkg --add-architecture arm64`. rustup here
/// cannot download other targets' standard libraries, so Debian's rustc (rustc-web 1.96) builds
/// with its arm64 standard library through multiarch.
pub const ARM64_BUILD_PACKAGES: &[AptPackage] = &[
    AptPackage {
        name: "rustc-web",
        need: Need::Always,
        why: "rustc 1.96, whose arm64 standard library Debian packages",
    },
    AptPackage {
        name: "libstd-rust-web-dev:arm64",
        need: Need::Always,
        why: "the arm64 Rust standard library matching rustc-web (multiarch)",
    },
    AptPackage {
        name: "gcc-aarch64-linux-gnu",
        need: Need::Always,
        why: "the cross linker for aarch64-unknown-linux-gnu",
    },
    AptPackage {
        name: "libc6-dev-arm64-cross",
        need: Need::Always,
        why: "the arm64 C library the cross linker links against (crti.o, libc.so)",
    },
    AptPackage {
        name: "binutils-aarch64-linux-gnu",
        need: Need::Always,
        why: "aarch64-linux-gnu-strip: the arm64 guest's binaries without debug sections",
    },
];

/// What the arm64 VM tests (`cargo xtask vm --arch arm64`) need besides the cross build.
pub const ARM64_VM_PACKAGES: &[AptPackage] = &[AptPackage {
    name: "qemu-system-arm",
    need: Need::Always,
    why: "qemu-system-aarch64, which emulates the arm64 guest",
}];

/// The linker that turns the kernel crate's bitcode into a BPF object.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM that bpf-linker is built against; it must be at least the kernel rustc's LLVM.
pub const BPF_LINKER_LLVM_PREFIX: &str = "/usr/lib/llvm-22";
pub const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

/// Where Debian's rust-web-src puts the `core` source.
pub const DEBIAN_RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library/core";
