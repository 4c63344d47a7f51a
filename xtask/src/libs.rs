//! The shared libraries a dynamically linked binary loads, and the Debian packages that ship
//! them: what the VM tests' initramfs and the container image must carry besides the binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd;

/// Every library `ldd` lists for `binaries`, the dynamic loader included.
pub fn shared_libraries(binaries: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for binary in binaries {
        let out = cmd::stdout_of(Command::new("ldd").arg(binary))?;
        for line in out.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                libs.push(PathBuf::from(path));
            }
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// The Debian package that installed `file` (`dpkg-query -S`), without its architecture.
pub fn owning_package(file: &Path) -> Result<String> {
    let out = cmd::stdout_of(Command::new("dpkg-query").arg("-S").arg(file))
        .with_context(|| format!("which Debian package ships {}", file.display()))?;
    // "libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6"
    let first = out.lines().next().unwrap_or_default();
    let package = first.split(':').next().unwrap_or_default().trim();
    anyhow::ensure!(
        !package.is_empty(),
        "dpkg-query -S {}: no package in {first:?}",
        file.display()
    );
    Ok(package.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libc_comes_from_libc6_with_its_loader() {
        let ls = PathBuf::from("/bin/ls");
        let libs = shared_libraries(std::slice::from_ref(&ls)).unwrap();
        let libc = libs
            .iter()
            .find(|l| l.file_name().is_some_and(|n| n == "libc.so.6"))
            .unwrap_or_else(|| panic!("no libc in {libs:?}"));
        assert!(
            libs.iter()
                .any(|l| l.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
        assert_eq!(owning_package(libc).unwrap(), "libc6");
    }
}
