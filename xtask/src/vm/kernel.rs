//! The guest kernel: a Debian 6.1 cloud kernel package, downloaded once and unpacked in the cache.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Debian's cloud flavour: small, BTF built in, loopback and BPF built in (no modules needed).
const CLOUD_KERNEL_PATTERN: &str = r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$";

/// An unpacked kernel ready to boot.
#[derive(Debug)]
pub struct GuestKernel {
    /// The Debian package it came from, or the .deb file's name.
    pub package: String,
    pub vmlinuz: PathBuf,
}

/// Finds, downloads and unpacks the requested kernel package (default: the newest 6.1 cloud
/// kernel apt knows), reusing an earlier unpack under `cache`.
pub fn prepare(cache: &Path, requested: Option<&str>) -> Result<GuestKernel> {
    let kernels = cache.join("kernels");
    if let Some(deb) = requested.filter(|r| r.ends_with(".deb")) {
        let deb = Path::new(deb);
        let name = deb
            .file_stem()
            .context("kernel .deb has no name")?
            .to_string_lossy();
        let dir = kernels.join(name.as_ref());
        if find_vmlinuz(&dir).is_none() {
            unpack(deb, &dir)?;
        }
        return loaded(name.into_owned(), &dir);
    }

    let package = match requested {
        Some(name) => name.to_string(),
        None => match newest_cloud_kernel()? {
            Some(name) => name,
            None => return newest_cached(&kernels),
        },
    };
    let dir = kernels.join(&package);
    if find_vmlinuz(&dir).is_none() {
        let downloads = cache.join("downloads");
        fs::create_dir_all(&downloads)?;
        eprintln!("vm: downloading {package} (guest kernel for the VM tests)");
        cmd::run(
            Command::new("apt-get")
                .args(["download", &package])
                .current_dir(&downloads),
        )?;
        let deb = fs::read_dir(&downloads)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
            })
            .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
        unpack(&deb, &dir)?;
        fs::remove_file(&deb)?;
    }
    loaded(package, &dir)
}

fn loaded(package: String, dir: &Path) -> Result<GuestKernel> {
    let vmlinuz =
        find_vmlinuz(dir).with_context(|| format!("no boot/vmlinuz-* in {}", dir.display()))?;
    Ok(GuestKernel { package, vmlinuz })
}

/// `dpkg-deb -x` into a temporary directory, renamed into place only when complete.
fn unpack(deb: &Path, dir: &Path) -> Result<()> {
    let mut partial = dir.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    if partial.exists() {
        fs::remove_dir_all(&partial)?;
    }
    fs::create_dir_all(&partial)?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&partial))?;
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::rename(&partial, dir)?;
    Ok(())
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir.join("boot"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

/// The newest 6.1 cloud kernel in the apt lists, updating the lists once if they have none.
fn newest_cloud_kernel() -> Result<Option<String>> {
    let search = || {
        cmd::probe_stdout(Command::new("apt-cache").args([
            "search",
            "--names-only",
            CLOUD_KERNEL_PATTERN,
        ]))
        .and_then(|out| newest_by_abi(out.lines().filter_map(|l| l.split_whitespace().next())))
    };
    if let Some(name) = search() {
        return Ok(Some(name));
    }
    if cmd::is_root() {
        cmd::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .arg("update"),
        )?;
        return Ok(search());
    }
    Ok(None)
}

fn newest_cached(kernels: &Path) -> Result<GuestKernel> {
    let names: Vec<String> = fs::read_dir(kernels)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let Some(name) = newest_by_abi(names.iter().map(String::as_str)) else {
        bail!(
            "vm: apt knows no package matching {CLOUD_KERNEL_PATTERN} and none is cached in {} \
             (run `apt-get update` as root, or pass --kernel)",
            kernels.display()
        );
    };
    eprintln!("vm: apt lists have no cloud kernel; using cached {name}");
    loaded(name.clone(), &kernels.join(&name))
}

/// Picks the highest ABI number from `linux-image-6.1.0-<abi>-cloud-amd64` names.
fn newest_by_abi<'a>(names: impl Iterator<Item = &'a str>) -> Option<String> {
    names
        .filter_map(|n| {
            let abi = n
                .strip_prefix("linux-image-6.1.0-")?
                .strip_suffix("-cloud-amd64")?;
            Some((abi.parse::<u32>().ok()?, n))
        })
        .max()
        .map(|(_, n)| n.to_string())
}

/// The socket-diagnostics modules `ss` and tcptrace's kernel table dump need. Debian's cloud
/// kernels build them as modules (`CONFIG_INET_DIAG=m`, `CONFIG_INET_TCP_DIAG=m`) and the guest
/// has no module tree, so the initramfs carries them and `/init` loads them, in this order.
pub fn diag_modules(guest: &GuestKernel) -> Result<Vec<PathBuf>> {
    let root = guest
        .vmlinuz
        .parent()
        .and_then(|boot| boot.parent())
        .context("kernel tree of the guest")?;
    let mut found = Vec::new();
    for name in ["inet_diag.ko", "tcp_diag.ko"] {
        let hit = std::fs::read_dir(root.join("lib/modules"))?
            .filter_map(|d| d.ok())
            .map(|d| d.path().join("kernel/net/ipv4").join(name))
            .find(|p| p.exists());
        match hit {
            Some(p) => found.push(p),
            // Built in: nothing to load.
            None => {
                eprintln!("vm: {name} not found in the guest kernel's modules; assuming built in")
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_compares_abi_numerically() {
        let names = [
            "linux-image-6.1.0-9-cloud-amd64",
            "linux-image-6.1.0-56-cloud-amd64",
            "linux-image-6.1.0-100-cloud-amd64-unsigned",
            "linux-image-6.1.0-47-cloud-amd64",
        ];
        assert_eq!(
            newest_by_abi(names.into_iter()).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
    }
}
