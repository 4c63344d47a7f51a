//! What the running kernel is: its release string and whether it exposes BTF.

use std::ffi::CStr;
use std::path::Path;

use super::btf::VMLINUX_BTF;

/// The running kernel's release, as `uname -r` prints it (e.g. `6.1.0-18-cloud-amd64`).
pub fn kernel_release() -> String {
    // SAFETY: `utsname` is plain bytes, so all-zero is a valid value; uname fills it and
    // NUL-terminates every field.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::from("unknown");
    }
    // SAFETY: the kernel NUL-terminates `release` within the array.
    let release = unsafe { CStr::from_ptr(uts.release.as_ptr()) };
    release.to_string_lossy().into_owned()
}

/// Whether the kernel was built with CONFIG_DEBUG_INFO_BTF, which the tp_btf probe needs.
pub fn has_btf() -> bool {
    Path::new(VMLINUX_BTF).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_matches_proc() {
        let proc = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(kernel_release(), proc.trim());
    }

    #[test]
    fn btf_presence_matches_sysfs() {
        assert_eq!(has_btf(), std::fs::metadata(VMLINUX_BTF).is_ok());
    }
}
