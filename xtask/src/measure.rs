//! What the benchmarks read about processes, kernel programs and the machine: /proc, sysctls and
//! `bpftool`. Shared by `bench` and `soak`.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd;

/// `kernel.bpf_stats_enabled` set to 1 for as long as this lives; the previous value comes back
/// on drop, so also when a benchmark fails half-way.
pub struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        let previous = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_string();
        fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        Ok(BpfStats { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = fs::write(BPF_STATS, &self.previous) {
            eprintln!(
                "xtask: could not restore {BPF_STATS} to {}: {e}",
                self.previous
            );
        }
    }
}

/// User plus system CPU seconds of a live process (`/proc/PID/stat` fields 14 and 15).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

/// A `/proc/PID/status` field in KiB (VmRSS, VmHWM).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Ids of the BPF programs a process holds open (`prog_id:` in /proc/PID/fdinfo). Other
/// tracers on the host have programs with the same names; the fds tell ours apart.
pub fn prog_ids_of(pid: u32) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for ent in dir.flatten() {
        if let Ok(text) = fs::read_to_string(ent.path()) {
            for l in text.lines() {
                if let Some(v) = l.strip_prefix("prog_id:") {
                    ids.extend(v.trim().parse::<u32>().ok());
                }
            }
        }
    }
    ids
}

/// One program as `bpftool prog show --json` reports it.
#[derive(Clone, Debug, Default)]
pub struct ProgStats {
    pub id: u32,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Every loaded program's statistics (run time and count need `kernel.bpf_stats_enabled`).
pub fn prog_stats() -> Result<Vec<ProgStats>> {
    let json = cmd::stdout_of(Command::new("bpftool").args(["prog", "show", "--json"]))?;
    let v: serde_json::Value = serde_json::from_str(&json).context("bpftool JSON")?;
    Ok(v.as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|p| ProgStats {
            id: p["id"].as_u64().unwrap_or(0) as u32,
            name: p["name"].as_str().unwrap_or_default().to_string(),
            run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
            run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
        })
        .collect())
}

/// Date, machine and kernel, for the head of BENCHMARKS.md.
pub fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let hypervisor = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"));
    let mem_kib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = cmd::probe_stdout(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .unwrap_or_default();
    format!(
        "- Date: {}\n- Machine: {nproc} CPUs, {model}{}, {:.1} GiB memory\n- Kernel: {}\n",
        date.trim(),
        if hypervisor { " (virtual machine)" } else { "" },
        mem_kib as f64 / (1 << 20) as f64,
        kernel.trim()
    )
}

/// Replaces the text between `<!-- NAME:start -->` and `<!-- NAME:end -->` in `path` (appending
/// the marked section when it is missing), leaving everything else as it was.
pub fn write_section(path: &Path, name: &str, body: &str) -> Result<()> {
    let (start, end) = (
        format!("<!-- {name}:start -->"),
        format!("<!-- {name}:end -->"),
    );
    let old = fs::read_to_string(path).unwrap_or_else(|_| "# tcptrace benchmarks\n\n".into());
    let section = format!("{start}\n{body}{end}\n");
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) if b > a => {
            format!(
                "{}{section}{}",
                &old[..a],
                old[b + end.len()..].trim_start_matches('\n')
            )
        }
        _ => format!("{}\n{section}", old.trim_end()),
    };
    fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// The median of `v` (mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn section_is_replaced_in_place() {
        let p = std::env::temp_dir().join(format!("xtask-section-{}.md", std::process::id()));
        fs::write(&p, "# t\n\nbefore\n").unwrap();
        write_section(&p, "bench", "one\n").unwrap();
        fs::write(&p, fs::read_to_string(&p).unwrap() + "\nafter\n").unwrap();
        write_section(&p, "bench", "two\n").unwrap();
        let s = fs::read_to_string(&p).unwrap();
        assert!(s.contains("before") && s.contains("two\n") && s.contains("after"));
        assert!(!s.contains("one"));
        fs::remove_file(p).unwrap();
    }

    #[test]
    fn own_cpu_and_memory_are_readable() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        assert!(status_kib(me, "VmRSS").unwrap() > 0);
    }
}
