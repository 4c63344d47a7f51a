//! The kernel the tests run on, for the few behaviours that differ by version (each one checked
//! both ways: what older kernels do, and that newer ones do not need the workaround).

use std::os::unix::process::CommandExt;
use std::process::Command;

/// `(major, minor)` of the running kernel.
pub fn version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release.trim().split(['.', '-', '+']);
    let mut next = || -> u32 {
        parts
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("kernel release {release:?}"))
    };
    (next(), next())
}

/// Linux before 5.11 charges BPF maps to `RLIMIT_MEMLOCK`; later ones to the memory cgroup.
pub fn charges_memlock() -> bool {
    version() < (5, 11)
}

/// Sets `RLIMIT_MEMLOCK` (soft and hard) of the command's process before it starts, as a
/// systemd unit's `LimitMEMLOCK=` does before the service drops its privileges. `None`: unlimited.
pub fn with_memlock(cmd: &mut Command, bytes: Option<u64>) -> &mut Command {
    let limit = bytes.unwrap_or(libc::RLIM_INFINITY);
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        cmd.pre_exec(move || {
            let l = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}
