//! apt for the guests: the machine's own lists, or a private configuration for an archive the
//! machine does not use (Debian 11's kernels; Debian 12's arm64 packages). A private
//! configuration has its own sources, lists, cache and an empty package status under
//! `target/vm/apt/<name>/`, so it is used for those downloads only: the machine's apt sources,
//! lists and installed packages are never touched.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd;

/// Debian's signing keys (package debian-archive-keyring), which cover Debian 11 and 12.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Where packages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archive {
    /// The machine's own apt sources (Debian 12, amd64): its 6.1 and 6.12 kernels.
    Host,
    /// Debian 11 (`bullseye`, `bullseye-security`), amd64: the 5.10 kernels.
    Bullseye,
    /// Debian 12 (`bookworm`, `-updates`, `-security`) for arm64: the arm64 cloud kernel and
    /// the programs the arm64 guest runs.
    BookwormArm64,
}

const DEBIAN: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";

/// A private configuration: its directory name, the architecture it resolves packages for,
/// and its sources as (URI, suite), component `main`.
struct Private {
    name: &'static str,
    arch: &'static str,
    sources: &'static [(&'static str, &'static str)],
}

impl Archive {
    fn private(self) -> Option<Private> {
        match self {
            Archive::Host => None,
            Archive::Bullseye => Some(Private {
                name: "bullseye",
                arch: "amd64",
                sources: &[(DEBIAN, "bullseye"), (SECURITY, "bullseye-security")],
            }),
            Archive::BookwormArm64 => Some(Private {
                name: "bookworm-arm64",
                arch: "arm64",
                sources: &[
                    (DEBIAN, "bookworm"),
                    (DEBIAN, "bookworm-updates"),
                    (SECURITY, "bookworm-security"),
                ],
            }),
        }
    }
}

/// apt-get and apt-cache bound to one archive.
#[derive(Debug)]
pub struct Apt {
    pub archive: Archive,
    /// `target/vm/apt/<name>` for a private configuration.
    dir: Option<PathBuf>,
    /// The architecture packages are resolved for.
    arch: &'static str,
}

impl Apt {
    pub fn new(cache: &Path, archive: Archive) -> Apt {
        match archive.private() {
            None => Apt {
                archive,
                dir: None,
                arch: "amd64",
            },
            Some(p) => Apt {
                archive,
                dir: Some(cache.join("apt").join(p.name)),
                arch: p.arch,
            },
        }
    }

    /// `-o` options that point apt at the private configuration, for every apt command.
    fn options(&self) -> Vec<String> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let d = dir.display();
        [
            format!("Dir::Etc::SourceList={d}/sources.list"),
            format!("Dir::Etc::SourceParts={d}/sources.list.d"),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::State::status={d}/status"),
            format!("Dir::Cache={d}/cache"),
            format!("APT::Architecture={}", self.arch),
            format!("APT::Architectures={}", self.arch),
            // Only the package lists: no translations, no AppStream metadata.
            "Acquire::Languages=none".to_string(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_string(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".to_string(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".to_string(),
            "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false".to_string(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect()
    }

    /// `apt-get` (or `apt-cache`) with this archive's options.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .args(self.options());
        c
    }

    /// Writes the private configuration and downloads its lists (`apt-get update`) when they
    /// are missing or `refresh` is asked. The machine's own lists are only refreshed, and only
    /// as root.
    pub fn update(&self, refresh: bool) -> Result<()> {
        let Some(dir) = &self.dir else {
            if refresh && cmd::is_root() {
                cmd::run(self.command("apt-get").arg("update"))?;
            }
            return Ok(());
        };
        let private = self
            .archive
            .private()
            .expect("a private archive has a directory");
        let lists = dir.join("lists");
        let have_lists = fs::read_dir(&lists).is_ok_and(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
        });
        if have_lists && !refresh {
            return Ok(());
        }
        for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let status = dir.join("status");
        if !status.exists() {
            fs::write(&status, "")?;
        }
        let sources: String = private
            .sources
            .iter()
            .map(|(uri, suite)| {
                format!(
                    "deb [arch={} signed-by={KEYRING}] {uri} {suite} main\n",
                    self.arch
                )
            })
            .collect();
        fs::write(dir.join("sources.list"), sources)?;
        cmd::run(self.command("apt-get").arg("update"))
            .with_context(|| format!("updating the apt lists in {}", dir.display()))
    }

    /// Names of the packages whose name matches `pattern` (`apt-cache search --names-only`).
    pub fn search(&self, pattern: &str) -> Vec<String> {
        cmd::probe_stdout(
            self.command("apt-cache")
                .args(["search", "--names-only", pattern]),
        )
        .map(|out| {
            out.lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
    }

    /// `apt-get download PACKAGE` into `into`; the path of the .deb.
    pub fn download(&self, package: &str, into: &Path) -> Result<PathBuf> {
        fs::create_dir_all(into)?;
        cmd::run(
            self.command("apt-get")
                .args(["download", package])
                .current_dir(into),
        )?;
        let name = package.split(':').next().unwrap_or(package);
        fs::read_dir(into)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}_")))
            })
            .with_context(|| format!("apt-get download left no {name}_*.deb"))
    }
}
