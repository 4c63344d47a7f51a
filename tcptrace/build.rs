//! Builds the kernel programs (`tcptrace-ebpf`) and leaves the object in OUT_DIR, so the
//! `tcptrace` binary embeds it and is the only file a user copies to a host.
//!
//! The BPF target needs `core` built from source, so this needs one of:
//! - rustup nightly with the `rust-src` component (the upstream aya path), or
//! - Debian's `rustc-web` + `rust-web-src` (rustc 1.96 with its library source), used with
//!   `RUSTC_BOOTSTRAP=1`,
//!
//! plus `bpf-linker` on PATH. `cargo xtask setup` installs whatever is missing.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const BPF_TARGET: &str = "bpfel-unknown-none";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    for p in [
        "tcptrace-ebpf/src",
        "tcptrace-ebpf/Cargo.toml",
        "tcptrace-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=TCPTRACE_BPF_TOOLCHAIN");

    // Shared by debug and release builds of the userspace, so `core` is built once. The path is
    // the workspace target dir: OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join("ebpf"))
        .unwrap_or_else(|| out_dir.join("ebpf"));

    let mut cmd = toolchain_command();
    cmd.current_dir(&root)
        .args([
            "build",
            "--package",
            "tcptrace-ebpf",
            "--release",
            "--target",
            BPF_TARGET,
        ])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        // BTF for the object: socket-local storage maps are BTF-defined (`.maps`), and the
        // kernel wants their key and value types.
        .env("RUSTFLAGS", "-C link-arg=--btf")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "2")
        .env("PATH", path_with_cargo_bin());

    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run {cmd:?}: {e}")));
    if !status.success() {
        fail("building the kernel programs (tcptrace-ebpf) failed; see the errors above");
    }
    let obj = target_dir
        .join(BPF_TARGET)
        .join("release")
        .join("tcptrace-ebpf");
    std::fs::copy(&obj, out_dir.join("tcptrace.bpf.o"))
        .unwrap_or_else(|e| fail(&format!("cannot copy {}: {e}", obj.display())));
}

/// The cargo that can build `core` for the BPF target, with none of the outer (host) build's
/// environment: cargo passes its own settings to build scripts, and they must not leak in.
fn toolchain_command() -> Command {
    let choice = env::var("TCPTRACE_BPF_TOOLCHAIN").unwrap_or_default();
    let clean = |mut c: Command| {
        for (k, _) in env::vars() {
            let host_only = k.starts_with("CARGO_") && k != "CARGO_HOME"
                || k.starts_with("RUSTC")
                || k.starts_with("RUSTUP_TOOLCHAIN")
                || k == "RUSTFLAGS"
                || k == "RUSTDOC";
            if host_only {
                c.env_remove(&k);
            }
        }
        c
    };
    if choice != "debian" && nightly_has_rust_src() {
        let mut c = clean(Command::new("rustup"));
        c.args(["run", "nightly", "cargo"]);
        return c;
    }
    if choice != "nightly" && Path::new("/usr/lib/rustlib/src/rust/library/core").is_dir() {
        let mut c = clean(Command::new("/usr/bin/cargo"));
        c.env("RUSTC", "/usr/bin/rustc").env("RUSTC_BOOTSTRAP", "1");
        return c;
    }
    fail(
        "no toolchain can build the kernel programs: need rustup nightly with rust-src, or \
         Debian's rustc-web + rust-web-src. Run `cargo xtask setup` (as root) to install them.",
    )
}

fn nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
}

/// bpf-linker is usually installed with `cargo install`, into ~/.cargo/bin.
fn path_with_cargo_bin() -> String {
    let mut parts = Vec::new();
    let home = env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env::var("HOME").unwrap_or_default()).join(".cargo"));
    parts.push(home.join("bin").display().to_string());
    parts.push(env::var("PATH").unwrap_or_default());
    parts.join(":")
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    panic!("{msg}");
}
