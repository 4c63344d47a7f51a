//! The shared libraries a dynamically linked binary loads: what the VM tests' initramfs must
//! carry besides the binary.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_needs_libc_and_its_loader() {
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
        assert!(libc.is_file());
    }
}
