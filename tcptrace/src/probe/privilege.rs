//! Whether this process may load and attach the kernel programs, decided from its effective
//! capability set, and the capabilities it lacks named in the error.
//!
//! uid 0 is not the test: a root process in a container, or under a reduced bounding set
//! (`capsh --drop`, `setpriv --bounding-set`), has uid 0 and few or no capabilities, and `bpf()`
//! then fails with a bare EPERM. The kernel checks capabilities, so this does too:
//! `bpf_capable()` is `CAP_BPF || CAP_SYS_ADMIN` and `perfmon_capable()` is
//! `CAP_PERFMON || CAP_SYS_ADMIN`
//! (<https://elixir.bootlin.com/linux/v6.12/source/include/linux/capability.h#L196>).

use std::fmt;

use super::ProbeError;

/// A capability by its number in `include/uapi/linux/capability.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(u32);

pub const CAP_DAC_READ_SEARCH: Cap = Cap(2);
pub const CAP_NET_ADMIN: Cap = Cap(12);
pub const CAP_SYS_PTRACE: Cap = Cap(19);
pub const CAP_SYS_ADMIN: Cap = Cap(21);
pub const CAP_PERFMON: Cap = Cap(38);
pub const CAP_BPF: Cap = Cap(39);

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            2 => "CAP_DAC_READ_SEARCH",
            12 => "CAP_NET_ADMIN",
            19 => "CAP_SYS_PTRACE",
            21 => "CAP_SYS_ADMIN",
            38 => "CAP_PERFMON",
            39 => "CAP_BPF",
            n => return write!(f, "capability {n}"),
        })
    }
}

/// Capabilities that are not needed to trace, and what is missing without them (as
/// deploy/README.md documents them).
const RECOMMENDED: [(Cap, &str); 2] = [
    (
        CAP_SYS_PTRACE,
        "other users' sockets cannot be named by their /proc/PID/fd links",
    ),
    (
        CAP_DAC_READ_SEARCH,
        "tracefs and other users' /proc entries may be unreadable",
    ),
];

/// What this process has, as the kernel reports it.
#[derive(Clone, Copy, Debug)]
pub struct Privileges {
    /// The effective set (`CapEff` in /proc/self/status).
    pub effective: u64,
    pub euid: u32,
    /// The highest capability this kernel knows (`/proc/sys/kernel/cap_last_cap`): CAP_BPF and
    /// CAP_PERFMON exist from Linux 5.8 (39 and 38).
    pub last_cap: u32,
}

impl Privileges {
    /// This process's, or `None` when /proc cannot say (then the kernel's own answer decides).
    pub fn current() -> Option<Privileges> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let effective = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())?;
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(CAP_BPF.0);
        // SAFETY: geteuid has no side effects.
        let euid = unsafe { libc::geteuid() };
        Some(Privileges {
            effective,
            euid,
            last_cap,
        })
    }

    pub fn has(&self, c: Cap) -> bool {
        self.effective & (1u64 << c.0) != 0
    }

    /// `Ok` when the kernel programs can be loaded and attached; otherwise the error names
    /// what is missing and how to grant it.
    pub fn check(&self) -> Result<(), ProbeError> {
        if self.has(CAP_SYS_ADMIN) {
            return Ok(());
        }
        let kernel_has_cap_bpf = self.last_cap >= CAP_BPF.0;
        let missing: Vec<Cap> = if kernel_has_cap_bpf {
            [CAP_BPF, CAP_PERFMON]
                .into_iter()
                .filter(|c| !self.has(*c))
                .collect()
        } else {
            vec![CAP_SYS_ADMIN]
        };
        if missing.is_empty() {
            return Ok(());
        }
        Err(ProbeError::MissingCapabilities(Missing {
            missing,
            root: self.euid == 0,
            kernel_has_cap_bpf,
        }))
    }

    /// The capabilities tracing can do without but that a full view needs, each with what is
    /// lost without it.
    pub fn recommended_missing(&self) -> Vec<(Cap, &'static str)> {
        RECOMMENDED
            .into_iter()
            .filter(|(c, _)| !self.has(*c))
            .collect()
    }
}

/// The capabilities a process lacks to load the kernel programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub missing: Vec<Cap>,
    /// uid 0 without them: a container or a reduced bounding set.
    pub root: bool,
    /// The kernel knows CAP_BPF (5.8+); before that only CAP_SYS_ADMIN will do.
    pub kernel_has_cap_bpf: bool,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.missing.iter().map(Cap::to_string).collect();
        let names = names.join(" and ");
        if self.kernel_has_cap_bpf {
            write!(
                f,
                "tcptrace needs the capabilities CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) in \
                 its effective set to load its kernel programs; this process lacks {names}"
            )?;
        } else {
            write!(
                f,
                "tcptrace needs CAP_SYS_ADMIN in its effective set to load its kernel programs \
                 (this kernel predates CAP_BPF and CAP_PERFMON, Linux 5.8); this process lacks it"
            )?;
        }
        let add: Vec<String> = self
            .missing
            .iter()
            .map(|c| c.to_string().trim_start_matches("CAP_").to_string())
            .collect();
        if self.root {
            write!(
                f,
                ". It runs as root (uid 0), but in a container or under a capability bounding \
                 set that drops them: grant them (docker run --cap-add {}; Kubernetes \
                 securityContext.capabilities.add: [{}], see deploy/daemonset.yaml)",
                add.join(" --cap-add "),
                add.join(", ")
            )
        } else {
            write!(
                f,
                ": run it with sudo, or grant them (systemd AmbientCapabilities=, see \
                 deploy/tcptrace.service; setpriv --ambient-caps)"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(caps: &[Cap]) -> u64 {
        caps.iter().map(|c| 1u64 << c.0).sum()
    }

    fn p(caps: &[Cap], euid: u32) -> Privileges {
        Privileges {
            effective: bits(caps),
            euid,
            last_cap: 40,
        }
    }

    #[test]
    fn root_without_capabilities_is_refused_with_the_missing_ones_named() {
        let e = p(&[], 0).check().unwrap_err().to_string();
        assert!(e.contains("lacks CAP_BPF and CAP_PERFMON"), "{e}");
        assert!(e.contains("runs as root (uid 0)"), "{e}");
        assert!(e.contains("--cap-add BPF --cap-add PERFMON"), "{e}");
        // Only the one that is missing.
        let e = p(&[CAP_BPF], 0).check().unwrap_err().to_string();
        assert!(
            e.contains("lacks CAP_PERFMON;") || e.contains("lacks CAP_PERFMON."),
            "{e}"
        );
        assert!(!e.contains("lacks CAP_BPF"), "{e}");
    }

    #[test]
    fn a_normal_user_is_told_to_use_sudo_or_grant_them() {
        let e = p(&[CAP_NET_ADMIN], 1000).check().unwrap_err().to_string();
        assert!(
            e.contains("lacks CAP_BPF and CAP_PERFMON: run it with sudo"),
            "{e}"
        );
    }

    #[test]
    fn bpf_and_perfmon_or_sys_admin_suffice() {
        assert!(p(&[CAP_BPF, CAP_PERFMON], 1000).check().is_ok());
        assert!(p(&[CAP_SYS_ADMIN], 1000).check().is_ok());
        assert!(p(&[CAP_BPF, CAP_PERFMON], 0).check().is_ok());
    }

    #[test]
    fn before_linux_5_8_only_sys_admin_will_do() {
        let mut old = p(&[CAP_BPF, CAP_PERFMON], 0);
        old.last_cap = 37;
        let e = old.check().unwrap_err().to_string();
        assert!(e.contains("needs CAP_SYS_ADMIN"), "{e}");
        assert!(e.contains("--cap-add SYS_ADMIN"), "{e}");
    }

    #[test]
    fn the_missing_recommended_ones_are_listed() {
        let r = p(&[CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH], 0).recommended_missing();
        let names: Vec<Cap> = r.iter().map(|x| x.0).collect();
        assert_eq!(names, [CAP_SYS_PTRACE]);
        let all = [CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH];
        assert!(p(&all, 65534).recommended_missing().is_empty());
    }
}
