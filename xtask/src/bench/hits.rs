//! The kernel's own count of a tracepoint's hits, independent of BPF: a perf counting event
//! on every CPU (what `perf stat -e sock:inet_sock_set_state -a` opens). The loss balance sets
//! it beside what the storm made and what the tracer saw: a storm whose hits equal what it
//! made, but whose tracer saw fewer and counted none lost, had transitions the kernel made
//! without running the tracer's programs (seen: 200,032 hits, both programs' runs plus
//! recursion misses 200,030).
//!
//! Hand-rolled over `perf_event_open(2)`: one counting event and a read of its count need 64
//! bytes of attributes, not a profiling library.
//! <https://man7.org/linux/man-pages/man2/perf_event_open.2.html>
//!
//! perf's probe on the tracepoint costs the host ~4% of its connection rate at saturation
//! (measured: 0.84-0.99 of the rate without it, 3 rounds), so it is opened for the balance
//! storms only, which count transitions and do not time them.

use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;

use anyhow::{Context, Result, bail};

/// `PERF_TYPE_TRACEPOINT`.
const TYPE_TRACEPOINT: u32 = 2;
/// `PERF_ATTR_SIZE_VER0`: the attributes up to `config1`, all a counting event needs.
const ATTR_SIZE: u32 = 64;
/// `PERF_FLAG_FD_CLOEXEC`.
const FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// `struct perf_event_attr` as of `PERF_ATTR_SIZE_VER0`; every flag bit clear: enabled at
/// once, kernel and user counted.
#[repr(C)]
#[derive(Default)]
struct Attr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

/// A tracepoint's hits on every CPU since [`Hits::open`].
pub struct Hits {
    per_cpu: Vec<File>,
}

impl Hits {
    /// Starts counting `category:event` on every online CPU.
    pub fn open(category: &str, event: &str) -> Result<Hits> {
        let id = tracepoint_id(category, event)?;
        let cpus = online_cpus()?;
        let attr = Attr {
            kind: TYPE_TRACEPOINT,
            size: ATTR_SIZE,
            config: id,
            ..Attr::default()
        };
        let mut per_cpu = Vec::with_capacity(cpus.len());
        for cpu in cpus {
            // SAFETY: a valid attribute struct of the size it declares; pid -1 with a CPU counts
            // every task on that CPU; no group.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_perf_event_open,
                    &attr as *const Attr,
                    -1 as libc::pid_t,
                    cpu as libc::c_int,
                    -1 as libc::c_int,
                    FLAG_FD_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                bail!(
                    "perf_event_open for {category}:{event} on CPU {cpu}: {e} (needs root or \
                     kernel.perf_event_paranoid <= -1)"
                );
            }
            // SAFETY: a new descriptor this process owns.
            per_cpu.push(unsafe { File::from_raw_fd(fd as i32) });
        }
        Ok(Hits { per_cpu })
    }

    /// Hits so far, all CPUs together.
    pub fn read(&self) -> Result<u64> {
        let mut total = 0;
        for f in &self.per_cpu {
            let mut b = [0u8; 8];
            (&*f).read_exact(&mut b).context("reading a perf counter")?;
            total += u64::from_ne_bytes(b);
        }
        Ok(total)
    }
}

/// The tracepoint's id in tracefs (mounted at /sys/kernel/tracing, or under debugfs).
fn tracepoint_id(category: &str, event: &str) -> Result<u64> {
    let mut tried = Vec::new();
    for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        let p = format!("{root}/events/{category}/{event}/id");
        match std::fs::read_to_string(&p) {
            Ok(s) => return s.trim().parse().with_context(|| format!("{p}: {s:?}")),
            Err(e) => tried.push(format!("{p}: {e}")),
        }
    }
    bail!(
        "no tracefs id for {category}:{event} ({})",
        tried.join("; ")
    )
}

/// The online CPUs, from `/sys/devices/system/cpu/online` ("0-3,6").
fn online_cpus() -> Result<Vec<u32>> {
    let p = "/sys/devices/system/cpu/online";
    let s = std::fs::read_to_string(p).with_context(|| format!("reading {p}"))?;
    parse_cpu_list(s.trim()).with_context(|| format!("{p}: {s:?}"))
}

fn parse_cpu_list(s: &str) -> Result<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<u32>()?..=b.parse::<u32>()?),
            None => cpus.push(part.parse()?),
        }
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_as_sysfs_writes_them() {
        assert_eq!(parse_cpu_list("0").unwrap(), [0]);
        assert_eq!(parse_cpu_list("0-3,6,8-9").unwrap(), [0, 1, 2, 3, 6, 8, 9]);
        assert!(parse_cpu_list("0-x").is_err());
    }

    #[test]
    fn the_attributes_are_the_first_version_of_the_kernel_struct() {
        assert_eq!(std::mem::size_of::<Attr>(), ATTR_SIZE as usize);
    }
}
