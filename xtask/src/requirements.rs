//! Everything tcptrace needs on a machine besides rustup's stable toolchain, and why.
//!
//! This table is the single source of truth: `cargo xtask setup` reads it, and the README's
//! "Debian packages" table copies it (a test in setup.rs holds them in step).

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

/// What a package is for: building and running the tracer, testing it, or building and running
/// its container image. Which commands want which is `setup::Scope`'s business.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The kernel-program toolchain: every command builds the tracer.
    Run,
    /// The test tools: `cargo xtask test`, `vm`, `bench`, `soak` and `fuzz`.
    Test,
    /// The container tools: `cargo xtask image`, and the host tests, which run the image.
    Image,
    /// The floor and the peers `cargo xtask bench` measures against.
    Bench,
}

impl Purpose {
    /// As the README's setup table says it.
    pub fn name(self) -> &'static str {
        match self {
            Purpose::Run => "run",
            Purpose::Test => "test",
            Purpose::Image => "image",
            Purpose::Bench => "bench",
        }
    }
}

/// A Debian package and the reason tcptrace needs it.
#[derive(Debug)]
pub struct AptPackage {
    pub name: &'static str,
    pub need: Need,
    pub purpose: Purpose,
    pub why: &'static str,
}

pub const APT_PACKAGES: &[AptPackage] = &[
    AptPackage {
        name: "rustc-web",
        need: Need::WithoutNightlyRustSrc,
        purpose: Purpose::Run,
        why: "rustc 1.96 with LLVM 22 that can build `core` for bpfel-unknown-none \
              (kernel programs), used by tcptrace/build.rs",
    },
    AptPackage {
        name: "cargo-web",
        need: Need::WithoutNightlyRustSrc,
        purpose: Purpose::Run,
        why: "the cargo that drives rustc-web for the kernel programs",
    },
    AptPackage {
        name: "rust-web-src",
        need: Need::WithoutNightlyRustSrc,
        purpose: Purpose::Run,
        why: "the `core` source (/usr/lib/rustlib/src/rust/library) that -Z build-std compiles",
    },
    AptPackage {
        name: "llvm-22-dev",
        need: Need::ToBuildBpfLinker,
        purpose: Purpose::Run,
        why: "LLVM 22, which bpf-linker is built against and links at run time",
    },
    AptPackage {
        name: "iproute2",
        need: Need::Always,
        purpose: Purpose::Test,
        why: "`ss` (tests compare tcptrace with it) and `ip` (loopback, network namespaces)",
    },
    AptPackage {
        name: "qemu-system-x86",
        need: Need::Always,
        purpose: Purpose::Test,
        why: "boots the Debian 5.10, 6.1 and 6.12 kernels that the VM tests run on",
    },
    AptPackage {
        name: "busybox-static",
        need: Need::Always,
        purpose: Purpose::Test,
        why: "the shell and tools inside the VM tests' initramfs",
    },
    AptPackage {
        name: "cpio",
        need: Need::Always,
        purpose: Purpose::Test,
        why: "packs the VM tests' initramfs",
    },
    AptPackage {
        name: "prometheus",
        need: Need::Always,
        purpose: Purpose::Test,
        why: "a real Prometheus server (and promtool) that the exporter tests start on loopback \
              to scrape `tcptrace serve` and answer PromQL queries",
    },
    AptPackage {
        name: "chromium",
        need: Need::Always,
        purpose: Purpose::Test,
        why: "headless screenshots of `diagnose --html` reports: the diagnose tests check that \
              the page renders in a real browser",
    },
    AptPackage {
        name: "bpftool",
        need: Need::Always,
        purpose: Purpose::Test,
        why: "tests cross-check the BTF offsets tcptrace resolves, and the loaded programs, \
              with it",
    },
    AptPackage {
        name: "bpftrace",
        need: Need::Always,
        purpose: Purpose::Bench,
        why: "the floor and the peers of `cargo xtask bench`: an empty program on the same \
              hook, and bpftrace's counting and printing one-liners",
    },
    AptPackage {
        name: "podman",
        need: Need::Always,
        purpose: Purpose::Image,
        why: "builds the container image (`cargo xtask image`) from the built binary with nothing \
              pulled from a registry, and runs it the way deploy/daemonset.yaml does in the \
              container tests",
    },
    AptPackage {
        name: "runc",
        need: Need::Always,
        purpose: Purpose::Image,
        why: "the OCI runtime the container tests start the image with: containerd's default, \
              and it handles hybrid cgroup v1/v2 hosts, which crun 1.8 refuses",
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
        purpose: Purpose::Run,
        why: "rustc 1.96, whose arm64 standard library Debian packages",
    },
    AptPackage {
        name: "libstd-rust-web-dev:arm64",
        need: Need::Always,
        purpose: Purpose::Run,
        why: "the arm64 Rust standard library matching rustc-web (multiarch)",
    },
    AptPackage {
        name: "gcc-aarch64-linux-gnu",
        need: Need::Always,
        purpose: Purpose::Run,
        why: "the cross linker for aarch64-unknown-linux-gnu",
    },
    AptPackage {
        name: "libc6-dev-arm64-cross",
        need: Need::Always,
        purpose: Purpose::Run,
        why: "the arm64 C library the cross linker links against (crti.o, libc.so)",
    },
    AptPackage {
        name: "binutils-aarch64-linux-gnu",
        need: Need::Always,
        purpose: Purpose::Run,
        why: "aarch64-linux-gnu-strip: the arm64 guest's binaries without debug sections",
    },
];

/// What the arm64 VM tests (`cargo xtask vm --arch arm64`) need besides the cross build.
pub const ARM64_VM_PACKAGES: &[AptPackage] = &[AptPackage {
    name: "qemu-system-arm",
    need: Need::Always,
    purpose: Purpose::Test,
    why: "qemu-system-aarch64, which emulates the arm64 guest",
}];

/// The linker that turns the kernel crate's bitcode into a BPF object.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM that bpf-linker is built against; it must be at least the kernel rustc's LLVM.
pub const BPF_LINKER_LLVM_PREFIX: &str = "/usr/lib/llvm-22";
pub const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

/// The dependency checker `cargo xtask test` runs (`cargo deny check bans licenses sources`);
/// installed with `cargo install --locked` for testing only.
pub const CARGO_DENY_VERSION: &str = "0.20.2";

/// Where Debian's rust-web-src puts the `core` source.
pub const DEBIAN_RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library/core";
