//! Per-program kernel statistics: run count, run time and, above all, `recursion_misses`: the
//! runs the kernel skipped because the program was already running on that CPU. Those are lost
//! events the program itself never sees, so they must be read from outside.
//!
//! aya 0.14 does not expose `recursion_misses`, so this asks the kernel directly with
//! `BPF_OBJ_GET_INFO_BY_FD`. The field exists since Linux 5.12; older kernels leave it 0.
//! <https://github.com/torvalds/linux/blob/v6.1/include/uapi/linux/bpf.h#L6100>

use std::os::fd::{AsFd, AsRawFd};

use aya_obj::generated::bpf_prog_info;

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// What the kernel counts for one loaded program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub id: u32,
    /// Runs; only counted while `kernel.bpf_stats_enabled` is 1.
    pub run_cnt: u64,
    /// Total run time in ns; only counted while `kernel.bpf_stats_enabled` is 1.
    pub run_time_ns: u64,
    /// Runs the kernel skipped because this program was already active on the CPU.
    pub recursion_misses: u64,
}

#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

pub fn prog_stats(fd: impl AsFd) -> std::io::Result<ProgStats> {
    // SAFETY: bpf_prog_info is a plain C struct; all-zero is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFd {
        bpf_fd: fd.as_fd().as_raw_fd() as u32,
        info_len: std::mem::size_of::<bpf_prog_info>() as u32,
        info: &mut info as *mut _ as u64,
    };
    // SAFETY: the kernel writes at most info_len bytes into `info`, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoByFd,
            std::mem::size_of::<InfoByFd>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ProgStats {
        id: info.id,
        run_cnt: info.run_cnt,
        run_time_ns: info.run_time_ns,
        recursion_misses: info.recursion_misses,
    })
}
