//! What the running kernel is: its release string, its version and whether it exposes BTF.

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

/// The `(major, minor)` of a release string: `(5, 10)` for `5.10.0-46-cloud-amd64`. `None` when
/// it does not start with two dot-separated numbers.
pub fn version_of(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
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
    fn versions_come_from_the_first_two_numbers() {
        assert_eq!(version_of("5.10.0-46-cloud-amd64"), Some((5, 10)));
        assert_eq!(version_of("6.12.117+deb12-cloud-amd64"), Some((6, 12)));
        assert_eq!(version_of("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(version_of("6.1"), Some((6, 1)));
        assert_eq!(version_of("unknown"), None);
        assert_eq!(version_of("5"), None);
    }

    #[test]
    fn btf_presence_matches_sysfs() {
        assert_eq!(has_btf(), std::fs::metadata(VMLINUX_BTF).is_ok());
    }
}
