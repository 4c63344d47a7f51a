//! The guest kernels: Debian cloud kernel packages, each downloaded once and unpacked in the
//! cache.
//!
//! The matrix is one kernel per series in `SERIES`: the newest package of that series its apt
//! archive offers (or, offline, the newest one already unpacked).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::apt::{Apt, Archive};
use crate::arch::Arch;
use crate::cmd;

/// A kernel line the VM tests cover. Debian's cloud flavour: small, BTF built in, loopback and
/// BPF built in (only the socket-diagnostics modules are needed, see `diag_modules`).
#[derive(Debug)]
pub struct Series {
    /// The series as people say it: "6.1".
    pub name: &'static str,
    /// Package names start with this, followed by the ABI or patch number.
    prefix: &'static str,
    /// And end with this.
    flavour: &'static str,
    /// Where the packages are.
    pub archive: Archive,
}

/// The x86-64 matrix. Debian 11's kernel (5.10, `linux-image-5.10.0-<abi>-cloud-amd64` from
/// bullseye and bullseye-security, through a private apt configuration) is where fleets on
/// Debian 11 and Amazon Linux 2 are: no socket cookies, sk_storage or recursion guard for
/// tracing programs, and BPF memory charged to RLIMIT_MEMLOCK. Debian 12's own kernel (6.1)
/// and its 6.12 line (`linux-image-6.12.<patch>+deb12-cloud-amd64`) from the machine's own
/// sources: 6.12 is past the `tcp_send_reset` record change (6.10) and the timewait rework
/// (6.9/6.10) that 6.1 predates.
pub const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        prefix: "linux-image-5.10.0-",
        flavour: "-cloud-amd64",
        archive: Archive::Bullseye,
    },
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
        flavour: "-cloud-amd64",
        archive: Archive::Host,
    },
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
        flavour: "-cloud-amd64",
        archive: Archive::Host,
    },
];

/// The arm64 matrix: Debian 12's own arm64 cloud kernel (`linux-image-6.1.0-<abi>-cloud-arm64`),
/// from the private arm64 apt configuration.
pub const SERIES_ARM64: &[Series] = &[Series {
    name: "6.1 arm64",
    prefix: "linux-image-6.1.0-",
    flavour: "-cloud-arm64",
    archive: Archive::BookwormArm64,
}];

/// The matrix of `arch`.
pub fn series(arch: Arch) -> &'static [Series] {
    match arch {
        Arch::Amd64 => SERIES,
        Arch::Arm64 => SERIES_ARM64,
    }
}

/// What `apt-cache search --names-only` is asked for: every cloud kernel image; `newest` then
/// picks per series.
const APT_SEARCH_PATTERN: &str = r"^linux-image-.*-cloud-(amd|arm)64$";

/// One entry of the kernel matrix, before it is resolved to a package.
#[derive(Debug)]
pub enum Request {
    /// The newest package of this series.
    Newest(&'static Series),
    /// A package name or a .deb file (`--kernel`).
    Given(String),
}

impl Request {
    /// The matrix when `--kernel` is not given: one kernel per series.
    pub fn default_matrix(arch: Arch) -> Vec<Request> {
        series(arch).iter().map(Request::Newest).collect()
    }

    /// How to name this entry before it is resolved (when resolving fails).
    pub fn describe(&self) -> String {
        match self {
            Request::Newest(s) => format!("newest {} cloud kernel", s.name),
            Request::Given(name) => name.clone(),
        }
    }
}

/// An unpacked kernel ready to boot.
#[derive(Debug)]
pub struct GuestKernel {
    /// The Debian package it came from, or the .deb file's name.
    pub package: String,
    pub vmlinuz: PathBuf,
    /// `uname -r` of the kernel, from the vmlinuz name: `6.12.117+deb12-cloud-amd64`.
    pub release: String,
}

impl GuestKernel {
    /// The release without the flavour and Debian suffixes, for tallies: `6.1.0-56`,
    /// `6.12.117`.
    pub fn label(&self) -> String {
        short_release(&self.release)
    }
}

fn short_release(release: &str) -> String {
    let r = ["-cloud-amd64", "-cloud-arm64"]
        .iter()
        .find_map(|f| release.strip_suffix(f))
        .unwrap_or(release);
    let r = r.split_once("+deb").map_or(r, |(head, _)| head);
    r.to_string()
}

/// The cloud kernel packages each archive offers, queried once per run.
#[derive(Debug)]
pub struct AptKernels {
    cache: PathBuf,
    names: Vec<(Archive, Vec<String>)>,
}

impl AptKernels {
    pub fn new(cache: &Path) -> AptKernels {
        AptKernels {
            cache: cache.to_path_buf(),
            names: Vec::new(),
        }
    }

    /// Every cloud kernel image name `series`'s archive knows. Its lists are updated once
    /// (a private archive's always may be; the machine's as root) when the series has none.
    fn names(&mut self, series: &Series) -> Result<&[String]> {
        let archive = series.archive;
        if !self.names.iter().any(|(a, _)| *a == archive) {
            let apt = Apt::new(&self.cache, archive);
            apt.update(false)?;
            let mut names = apt.search(APT_SEARCH_PATTERN);
            let complete = |names: &[String]| {
                SERIES
                    .iter()
                    .chain(SERIES_ARM64)
                    .filter(|s| s.archive == archive)
                    .all(|s| newest(s, names.iter().map(String::as_str)).is_some())
            };
            if !complete(&names) {
                apt.update(true)?;
                names = apt.search(APT_SEARCH_PATTERN);
            }
            self.names.push((archive, names));
        }
        Ok(self
            .names
            .iter()
            .find(|(a, _)| *a == archive)
            .map(|(_, n)| n.as_slice())
            .unwrap_or_default())
    }
}

/// Finds, downloads and unpacks the requested kernel, reusing an earlier unpack under `cache`.
pub fn prepare(cache: &Path, request: &Request, apt: &mut AptKernels) -> Result<GuestKernel> {
    let kernels = cache.join("kernels");
    let package = match request {
        Request::Given(deb) if deb.ends_with(".deb") => {
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
        Request::Given(name) => (name.clone(), archive_of(name)),
        Request::Newest(series) => {
            let names = match apt.names(series) {
                Ok(names) => names,
                Err(err) => {
                    eprintln!("vm: {} kernels: {err:#}", series.name);
                    &[]
                }
            };
            match newest(series, names.iter().map(String::as_str)) {
                Some(name) => (name, series.archive),
                None => return newest_cached(series, &kernels),
            }
        }
    };
    let (package, archive) = package;
    let dir = kernels.join(&package);
    if find_vmlinuz(&dir).is_none() {
        eprintln!("vm: downloading {package} (guest kernel for the VM tests)");
        let deb = Apt::new(cache, archive).download(&package, &cache.join("downloads"))?;
        unpack(&deb, &dir)?;
        fs::remove_file(&deb)?;
    }
    loaded(package, &dir)
}

fn loaded(package: String, dir: &Path) -> Result<GuestKernel> {
    let vmlinuz =
        find_vmlinuz(dir).with_context(|| format!("no boot/vmlinuz-* in {}", dir.display()))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("vmlinuz name")?
        .to_string();
    Ok(GuestKernel {
        package,
        vmlinuz,
        release,
    })
}

/// The archive of a kernel named with `--kernel`: its series', else the machine's own.
fn archive_of(package: &str) -> Archive {
    SERIES
        .iter()
        .chain(SERIES_ARM64)
        .find(|s| version_in(s, package).is_some())
        .map_or(Archive::Host, |s| s.archive)
}

/// `dpkg-deb -x` into a temporary directory, renamed into place only when complete.
fn unpack(deb: &Path, dir: &Path) -> Result<()> {
    let partial = with_suffix(dir, ".partial");
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

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
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

fn newest_cached(series: &Series, kernels: &Path) -> Result<GuestKernel> {
    let names: Vec<String> = fs::read_dir(kernels)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let Some(name) = newest(series, names.iter().map(String::as_str)) else {
        bail!(
            "vm: apt knows no {}*{} package and none is cached in {} \
             (run `apt-get update` as root, or pass --kernel)",
            series.prefix,
            series.flavour,
            kernels.display()
        );
    };
    eprintln!(
        "vm: apt lists have no {} cloud kernel; using cached {name}",
        series.name
    );
    loaded(name.clone(), &kernels.join(&name))
}

/// The version of a package of `series`, compared numerically: `(56, 0)` for
/// `linux-image-6.1.0-56-cloud-amd64`, `(117, 12)` for `linux-image-6.12.117+deb12-cloud-amd64`.
/// `None` for anything else: other series, meta packages (`linux-image-6.12-cloud-amd64`),
/// `-unsigned` and `-dbg` packages.
fn version_in(series: &Series, name: &str) -> Option<(u32, u32)> {
    let rest = name
        .strip_prefix(series.prefix)?
        .strip_suffix(series.flavour)?;
    let (number, deb) = match rest.split_once("+deb") {
        Some((number, deb)) => (number, Some(deb)),
        None => (rest, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(number) || deb.is_some_and(|d| !digits(d)) {
        return None;
    }
    Some((
        number.parse().ok()?,
        deb.map_or(Some(0), |d| d.parse().ok())?,
    ))
}

/// The newest package of `series` among `names`.
fn newest<'a>(series: &Series, names: impl Iterator<Item = &'a str>) -> Option<String> {
    names
        .filter_map(|n| Some((version_in(series, n)?, n)))
        .max()
        .map(|(_, n)| n.to_string())
}

/// The socket-diagnostics modules `ss` and tcptrace's kernel table dump need. Debian's cloud
/// kernels build them as modules (`CONFIG_INET_DIAG=m`, `CONFIG_INET_TCP_DIAG=m`) and the guest
/// has no module tree, so the initramfs carries them and `/init` loads them, in this order.
///
/// 6.1 ships them as plain `.ko`; 6.12 compresses every module (`CONFIG_MODULE_COMPRESS_XZ`,
/// `inet_diag.ko.xz`). A compressed module is unpacked here, once, next to the compressed one,
/// so the guest's `insmod` gets a plain ELF module whatever its own xz support.
pub fn diag_modules(guest: &GuestKernel) -> Result<Vec<PathBuf>> {
    let root = guest
        .vmlinuz
        .parent()
        .and_then(|boot| boot.parent())
        .context("kernel tree of the guest")?;
    let dir = root
        .join("lib/modules")
        .join(&guest.release)
        .join("kernel/net/ipv4");
    let mut found = Vec::new();
    for name in ["inet_diag", "tcp_diag"] {
        let plain = dir.join(format!("{name}.ko"));
        let xz = dir.join(format!("{name}.ko.xz"));
        if plain.exists() {
            found.push(plain);
        } else if xz.exists() {
            decompress_xz(&xz, &plain)?;
            found.push(plain);
        } else {
            // Built in: nothing to load.
            eprintln!(
                "vm: {name}.ko not found in {}; assuming built in",
                dir.display()
            );
        }
    }
    Ok(found)
}

/// `xz -dc` with busybox's applet (busybox-static is required anyway; xz-utils is not).
fn decompress_xz(from: &Path, to: &Path) -> Result<()> {
    let busybox = super::userland::host_busybox()?;
    let partial = with_suffix(to, ".partial");
    let out = fs::File::create(&partial)?;
    let status = Command::new(&busybox)
        .arg("xzcat")
        .arg(from)
        .stdout(out)
        .status()
        .with_context(|| format!("cannot start {} xzcat", busybox.display()))?;
    if !status.success() {
        bail!("`busybox xzcat {}` failed: {status}", from.display());
    }
    fs::rename(&partial, to)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str) -> &'static Series {
        SERIES.iter().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn newest_6_1_compares_abi_numerically() {
        let names = [
            "linux-image-6.1.0-9-cloud-amd64",
            "linux-image-6.1.0-56-cloud-amd64",
            "linux-image-6.1.0-100-cloud-amd64-unsigned",
            "linux-image-6.1.0-101-cloud-amd64-dbg",
            "linux-image-6.1.0-47-cloud-amd64",
            "linux-image-6.12.117+deb12-cloud-amd64",
        ];
        assert_eq!(
            newest(series("6.1"), names.into_iter()).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
    }

    #[test]
    fn newest_6_12_compares_patch_numerically_and_skips_meta_packages() {
        let names = [
            "linux-image-6.12-cloud-amd64",
            "linux-image-6.12.99+deb12-cloud-amd64",
            "linux-image-6.12.115+deb12-cloud-amd64",
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
            "linux-image-6.12.119+deb12-cloud-amd64-dbg",
            "linux-image-6.12.100+deb12-cloud-amd64",
            "linux-image-6.1.0-56-cloud-amd64",
            "linux-image-6.12.x+deb12-cloud-amd64",
        ];
        assert_eq!(
            newest(series("6.12"), names.into_iter()).as_deref(),
            Some("linux-image-6.12.115+deb12-cloud-amd64")
        );
        assert_eq!(
            newest(series("6.12"), ["linux-image-6.12-cloud-amd64"].into_iter()),
            None
        );
    }

    #[test]
    fn debian_revision_breaks_ties() {
        let names = [
            "linux-image-6.12.117+deb13-cloud-amd64",
            "linux-image-6.12.117+deb12-cloud-amd64",
        ];
        assert_eq!(
            newest(series("6.12"), names.into_iter()).as_deref(),
            Some("linux-image-6.12.117+deb13-cloud-amd64")
        );
    }

    #[test]
    fn every_series_has_a_distinct_prefix() {
        for a in SERIES {
            for b in SERIES {
                if a.name != b.name {
                    let sample = format!("{}1{}", a.prefix, a.flavour);
                    assert_eq!(version_in(b, &sample), None, "{sample} in {}", b.name);
                }
            }
        }
    }

    #[test]
    fn labels_drop_flavour_and_debian_suffix() {
        assert_eq!(short_release("5.10.0-46-cloud-amd64"), "5.10.0-46");
        assert_eq!(short_release("6.1.0-56-cloud-amd64"), "6.1.0-56");
        assert_eq!(short_release("6.12.117+deb12-cloud-amd64"), "6.12.117");
        assert_eq!(short_release("6.18.44-fc"), "6.18.44-fc");
    }
}
