//! Where the guest's tools (busybox, `ss`, `ip`, `setpriv`, `bpftool`, Prometheus) and the
//! shared libraries of every binary come from: the machine itself for an x86-64 guest, or, for
//! an arm64 guest, Debian 12's arm64 packages downloaded with a private apt configuration and
//! unpacked (never installed) under `target/vm/arm64-root/`.

use std::collections::BTreeSet;
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::apt::{Apt, Archive};
use crate::arch::Arch;
use crate::cmd;

/// The arm64 packages the guest's tools come from (their libraries follow as dependencies).
/// libgcc-s1 and libc6 are what the cross-built Rust binaries link against.
const ARM64_PACKAGES: &[&str] = &[
    "busybox-static",
    "iproute2",
    "util-linux",
    "bpftool",
    "prometheus",
    "libc6",
    "libgcc-s1",
];

/// Where libraries are looked up in an unpacked root, in the dynamic loader's order.
const SYSROOT_LIB_DIRS: &[&str] = &[
    "lib/aarch64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib",
    "usr/lib",
];

#[derive(Debug)]
pub enum Userland {
    /// The machine's own programs and libraries (`PATH`, `ldd`).
    Host,
    /// An unpacked root of another architecture's packages.
    Sysroot(PathBuf),
}

impl Userland {
    /// The userland for `arch`'s guest; for arm64 its packages are downloaded and unpacked
    /// once.
    pub fn prepare(cache: &Path, arch: Arch) -> Result<Userland> {
        match arch {
            Arch::Amd64 => Ok(Userland::Host),
            Arch::Arm64 => sysroot(cache).map(Userland::Sysroot),
        }
    }

    /// A program by name: on `PATH` (and the sbin directories) of the machine, or in the root.
    pub fn tool(&self, name: &str) -> Option<PathBuf> {
        let dirs: Vec<PathBuf> = match self {
            Userland::Host => {
                let path = env::var_os("PATH").unwrap_or_default();
                env::split_paths(&path)
                    .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
                    .collect()
            }
            Userland::Sysroot(root) => {
                return ["usr/sbin", "sbin", "usr/bin", "bin"]
                    .iter()
                    .find_map(|d| in_root(root, &root.join(d).join(name)));
            }
        };
        dirs.into_iter()
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    }

    /// busybox-static's binary.
    pub fn busybox(&self) -> Result<PathBuf> {
        match self {
            Userland::Host => host_busybox(),
            Userland::Sysroot(root) => {
                let b = root.join("bin/busybox");
                anyhow::ensure!(b.is_file(), "{} is missing", b.display());
                Ok(b)
            }
        }
    }

    /// Every shared library `binaries` load, the dynamic loader included, as (file to copy,
    /// path in the guest).
    pub fn libraries(&self, binaries: &[PathBuf]) -> Result<Vec<(PathBuf, PathBuf)>> {
        match self {
            Userland::Host => Ok(crate::libs::shared_libraries(binaries)?
                .into_iter()
                .map(|p| (p.clone(), p))
                .collect()),
            Userland::Sysroot(root) => sysroot_libraries(root, binaries),
        }
    }
}

/// The host's busybox (package busybox-static): it also lists the applets of any
/// architecture's busybox of the same version.
pub fn host_busybox() -> Result<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .map(PathBuf::from)
        .into_iter()
        .find(|p| p.is_file())
        .context("vm: busybox not found (package busybox-static)")
}

/// The arm64 root: the packages and their dependencies, downloaded with the private
/// `bookworm-arm64` apt configuration and unpacked with `dpkg-deb -x`. Redone only when the set
/// of downloaded packages changes.
fn sysroot(cache: &Path) -> Result<PathBuf> {
    let apt = Apt::new(cache, Archive::BookwormArm64);
    apt.update(false)?;
    let debs = cache.join("arm64-debs");
    fs::create_dir_all(&debs)?;
    let archives = format!("-oDir::Cache::archives={}", debs.display());
    cmd::run(
        apt.command("apt-get")
            .args([
                "install",
                "--download-only",
                "-y",
                "--no-install-recommends",
            ])
            .arg(&archives)
            .args(ARM64_PACKAGES),
    )
    .context("downloading the arm64 guest's packages")?;
    // Older versions of those packages, which the lists no longer offer, would be unpacked too.
    cmd::run(apt.command("apt-get").arg("autoclean").arg(&archives))?;
    let mut files: Vec<PathBuf> = fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    files.sort();
    let manifest: String = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| format!("{}\n", n.to_string_lossy())))
        .collect();
    let root = cache.join("arm64-root");
    let stamp = cache.join("arm64-root.debs");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(manifest.as_str()) && root.is_dir() {
        return Ok(root);
    }
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(&root)?;
    for deb in &files {
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    }
    fs::write(&stamp, manifest)?;
    Ok(root)
}

/// The libraries of `binaries` in the root: their `NEEDED` entries and program interpreter
/// (`readelf` reads any architecture), followed through each library's own `NEEDED`.
fn sysroot_libraries(root: &Path, binaries: &[PathBuf]) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut found: BTreeSet<PathBuf> = BTreeSet::new();
    let mut todo: Vec<PathBuf> = binaries.to_vec();
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    let mut out = Vec::new();
    while let Some(file) = todo.pop() {
        if !seen.insert(file.clone()) {
            continue;
        }
        let (interp, needed) = elf_dependencies(&file)?;
        if let Some(interp) = interp {
            let src =
                in_root(root, &root.join(interp.trim_start_matches('/'))).with_context(|| {
                    format!(
                        "{}: interpreter {interp} is not in {}",
                        file.display(),
                        root.display()
                    )
                })?;
            if found.insert(PathBuf::from(&interp)) {
                out.push((src, PathBuf::from(&interp)));
            }
        }
        for name in needed {
            let Some((dir, src)) = SYSROOT_LIB_DIRS
                .iter()
                .find_map(|d| Some((d, in_root(root, &root.join(d).join(&name))?)))
            else {
                bail!(
                    "{} needs {name}, which is in none of {:?} under {}",
                    file.display(),
                    SYSROOT_LIB_DIRS,
                    root.display()
                );
            };
            let guest = Path::new("/").join(dir).join(&name);
            if found.insert(guest.clone()) {
                todo.push(src.clone());
                out.push((src, guest));
            }
        }
    }
    Ok(out)
}

/// The regular file `path` (under `root`) names, following symlinks as the guest would: an
/// absolute target is inside the root (`/sbin/ip -> /bin/ip`), not on this machine.
fn in_root(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut path = path.to_path_buf();
    for _ in 0..40 {
        let meta = fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_symlink() {
            return meta.is_file().then_some(path);
        }
        let target = fs::read_link(&path).ok()?;
        path = match target.strip_prefix("/") {
            Ok(inside) => root.join(inside),
            Err(_) => path.parent()?.join(target),
        };
    }
    None
}

/// The program interpreter and the `NEEDED` libraries of an ELF file, from `readelf`.
fn elf_dependencies(file: &Path) -> Result<(Option<String>, Vec<String>)> {
    let out = cmd::stdout_of(Command::new("readelf").args(["-W", "-l", "-d"]).arg(file))?;
    let mut interp = None;
    let mut needed = Vec::new();
    for line in out.lines() {
        // "      [Requesting program interpreter: /lib/ld-linux-aarch64.so.1]"
        if let Some(rest) = line
            .trim()
            .strip_prefix("[Requesting program interpreter: ")
        {
            interp = rest.strip_suffix(']').map(str::to_string);
        }
        // " 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]"
        if line.contains("(NEEDED)")
            && let Some((_, lib)) = line.split_once("Shared library: [")
        {
            needed.push(lib.trim_end_matches(']').to_string());
        }
    }
    Ok((interp, needed))
}
