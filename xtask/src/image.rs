//! `cargo xtask image`: the OCI image deploy/daemonset.yaml runs, built from this checkout with
//! nothing pulled from a registry.
//!
//! The image holds the tracer without its debug info, the C libraries `ldd` lists for it, and
//! the copyright files of the Debian packages those come from, on an empty base
//! (deploy/Containerfile): no shell, no package manager. podman builds it and saves it as an
//! OCI archive, which `ctr images import`, `podman load` and `skopeo copy oci-archive:` read.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::arch::Arch;
use crate::libs::{owning_package, shared_libraries};
use crate::{cmd, tracer, workspace};

/// The image's name without its tag. `localhost/` says that no registry serves it: containerd
/// and podman keep such a name as it is, and a node that lacks the image fails to pull it
/// rather than fetching something else.
pub const REPOSITORY: &str = "localhost/tcptrace";

/// The workspace version, which the DaemonSet's image tag and the systemd unit name too.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A built and saved image.
#[derive(Debug)]
pub struct Image {
    pub reference: String,
    pub archive: PathBuf,
    /// Bytes of the unpacked image, as podman counts them.
    pub size: u64,
    pub archive_size: u64,
}

impl fmt::Display for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "image {}: {:.1} MB unpacked; saved as {} ({:.1} MB)",
            self.reference,
            megabytes(self.size),
            self.archive.display(),
            megabytes(self.archive_size)
        )
    }
}

fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// `VERSION` for the release binary, `VERSION-debug` for the debug one (what the tests run), so
/// that a test run never replaces the image a user built for a cluster.
pub fn tag(release: bool) -> String {
    if release {
        VERSION.to_string()
    } else {
        format!("{VERSION}-debug")
    }
}

/// `target/image/tcptrace-TAG.oci.tar`.
pub fn archive_path(release: bool) -> Result<PathBuf> {
    Ok(workspace::target_dir()?
        .join("image")
        .join(format!("tcptrace-{}.oci.tar", tag(release))))
}

/// Builds the tracer, stages the image's files, builds `localhost/tcptrace:TAG` and saves it.
pub fn build(release: bool) -> Result<Image> {
    let archive = archive_path(release)?;
    // A failed build must not leave the previous archive behind for the tests to run.
    if archive.exists() {
        fs::remove_file(&archive).with_context(|| format!("removing {}", archive.display()))?;
    }
    tracer::build(release, Arch::Amd64)?;
    let binary = workspace::tracer_binary(release, Arch::Amd64)?;
    let tag = tag(release);
    let reference = format!("{REPOSITORY}:{tag}");
    let context = archive
        .parent()
        .expect("the archive lies in target/image")
        .join(format!("context-{tag}"));
    stage(&binary, &context.join("rootfs"))?;

    let previous = image_id(&reference);
    let mut podman_build = podman();
    podman_build
        .args(["build", "--pull=never", "--file"])
        .arg(workspace::root().join("deploy/Containerfile"))
        .args(["--tag", &reference])
        // The commit's time rather than now: the same checkout and binary give the same digest.
        .arg(format!("--timestamp={}", commit_time()))
        .args(labels())
        .arg(&context);
    cmd::run(&mut podman_build)?;
    if let Some(old) = previous.filter(|old| image_id(&reference).as_ref() != Some(old)) {
        // The tag moved to the new build; the old image would stay in podman's storage unnamed.
        // It may still be in use by a container, so a failure only leaves it there.
        cmd::succeeds(podman().args(["rmi", &old]));
    }
    cmd::run(
        podman()
            .args(["save", "--format", "oci-archive", "--output"])
            .arg(&archive)
            .arg(&reference),
    )?;

    let size = cmd::stdout_of(
        podman()
            .args(["image", "inspect", "--format", "{{.Size}}"])
            .arg(&reference),
    )?
    .trim()
    .parse()
    .context("podman image inspect: size")?;
    let archive_size = fs::metadata(&archive)?.len();
    Ok(Image {
        reference,
        archive,
        size,
        archive_size,
    })
}

/// Lays out the image's files under `rootfs` (emptied first): the binary at
/// /usr/local/bin/tcptrace, each library at the path the dynamic loader looks for it, and each
/// library package's copyright file.
fn stage(binary: &Path, rootfs: &Path) -> Result<()> {
    if rootfs.exists() {
        fs::remove_dir_all(rootfs).with_context(|| format!("emptying {}", rootfs.display()))?;
    }
    let installed = rootfs.join("usr/local/bin/tcptrace");
    fs::create_dir_all(installed.parent().expect("a directory"))?;
    // Debug info is most of the binary (a release build is 53 MB with it, 7.4 MB without);
    // the symbols stay, for backtraces.
    cmd::run(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&installed)
            .arg(binary),
    )?;
    let mut packages = Vec::new();
    for lib in shared_libraries(&[binary.to_path_buf()])? {
        copy_into(&lib, rootfs)?;
        packages.push(owning_package(&lib)?);
    }
    packages.sort();
    packages.dedup();
    for package in packages {
        copy_into(
            &Path::new("/usr/share/doc").join(package).join("copyright"),
            rootfs,
        )?;
    }
    Ok(())
}

/// Copies `file` (following symlinks) to the same path under `rootfs`.
fn copy_into(file: &Path, rootfs: &Path) -> Result<()> {
    let dest = rootfs.join(file.strip_prefix("/").unwrap_or(file));
    fs::create_dir_all(dest.parent().expect("a file has a directory"))?;
    fs::copy(file, &dest).with_context(|| format!("copying {}", file.display()))?;
    Ok(())
}

/// OCI annotations on the image config, which `podman inspect` and registries show.
fn labels() -> Vec<String> {
    let revision = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_string());
    [
        ("title", "tcptrace".to_string()),
        (
            "description",
            "TCP TIME_WAIT/CLOSE_WAIT by process, port and peer, from eBPF".to_string(),
        ),
        ("version", VERSION.to_string()),
        ("revision", revision),
        ("licenses", env!("CARGO_PKG_LICENSE").to_string()),
    ]
    .into_iter()
    .flat_map(|(key, value)| {
        [
            "--label".to_string(),
            format!("org.opencontainers.image.{key}={value}"),
        ]
    })
    .collect()
}

/// The checked-out commit's time (Unix seconds), 0 outside a git checkout.
fn commit_time() -> u64 {
    git(&["log", "-1", "--format=%ct"])
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

fn git(args: &[&str]) -> Option<String> {
    cmd::probe_stdout(
        Command::new("git")
            .args(args)
            .current_dir(workspace::root()),
    )
    .map(|out| out.trim().to_string())
    .filter(|out| !out.is_empty())
}

/// The image id `reference` names in podman's storage, if any.
fn image_id(reference: &str) -> Option<String> {
    cmd::probe_stdout(podman().args(["image", "inspect", "--format", "{{.Id}}", reference]))
        .map(|id| id.trim().to_string())
}

fn podman() -> Command {
    Command::new("podman")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_image_never_takes_the_release_tag() {
        assert_eq!(tag(true), VERSION);
        assert_eq!(tag(false), format!("{VERSION}-debug"));
        assert!(
            archive_path(true)
                .unwrap()
                .ends_with(format!("image/tcptrace-{VERSION}.oci.tar"))
        );
    }

    #[test]
    fn labels_name_the_version_and_licence() {
        let labels = labels();
        assert!(labels.contains(&format!("org.opencontainers.image.version={VERSION}")));
        assert!(
            labels.contains(&"org.opencontainers.image.licenses=MIT OR Apache-2.0".to_string())
        );
        assert_eq!(labels.iter().filter(|l| *l == "--label").count(), 5);
    }
}
