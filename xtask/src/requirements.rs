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
    /// Only for `cargo xtask image` and the host tests that run the image.
    ForImage,
    /// Only for `cargo xtask bench`.
    ForBench,
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
        why: "boots the Debian 6.1 and 6.12 kernels that the VM tests run on",
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
        name: "bpftrace",
        need: Need::ForBench,
        why: "the floor and the peers of `cargo xtask bench`: an empty program on the same \
              hook, and bpftrace's counting and printing one-liners",
    },
    AptPackage {
        name: "podman",
        need: Need::ForImage,
        why: "builds the container image (`cargo xtask image`) from the built binary with nothing \
              pulled from a registry, and runs it the way deploy/daemonset.yaml does in the \
              container tests",
    },
    AptPackage {
        name: "runc",
        need: Need::ForImage,
        why: "the OCI runtime the container tests start the image with: containerd's default, \
              and it handles hybrid cgroup v1/v2 hosts, which crun 1.8 refuses",
    },
    AptPackage {
        name: "bpftool",
        need: Need::Always,
        why: "tests cross-check the BTF offsets tcptrace resolves, and the loaded programs, \
              with it",
    },
];

/// The linker that turns the kernel crate's bitcode into a BPF object.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM that bpf-linker is built against; it must be at least the kernel rustc's LLVM.
pub const BPF_LINKER_LLVM_PREFIX: &str = "/usr/lib/llvm-22";
pub const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

/// Where Debian's rust-web-src puts the `core` source.
pub const DEBIAN_RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library/core";
