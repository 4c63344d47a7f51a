//! `RLIMIT_MEMLOCK`: before Linux 5.11 the kernel charges every BPF map and program to the
//! locked-memory limit of the process that creates it (`bpf_map_charge_memlock`); 5.11 moved
//! that accounting to the memory cgroup and stopped looking at the limit.
//! <https://github.com/torvalds/linux/blob/v5.10/kernel/bpf/syscall.c>
//!
//! tcptrace's ring buffer alone is 8 MiB by default and the usual limit is 64 KiB (8 MiB on
//! newer distributions), so on such a kernel the limit is raised to unlimited at start-up, as
//! aya's template does, before anything is loaded. Raising it above the hard limit needs root
//! or `CAP_SYS_RESOURCE`; without either, a refused map is explained with the limit and the fix
//! instead of the kernel's bare EPERM.

use std::io;

use super::kernel::version_of;

/// The first kernel that does not charge BPF memory to `RLIMIT_MEMLOCK`.
const MEMCG_ACCOUNTING: (u32, u32) = (5, 11);

/// What start-up did about the limit.
#[derive(Debug)]
pub enum Memlock {
    /// 5.11 or newer: the limit plays no part.
    NotCharged,
    /// Charged, and unlimited: it already was (`raised_from` None), or it is now.
    Unlimited { raised_from: Option<u64> },
    /// Charged, and it could not be raised: loads larger than `bytes` fail with EPERM.
    Limited { bytes: u64, error: io::Error },
}

impl Memlock {
    /// Raises the limit to unlimited on a kernel that charges BPF memory to it (one whose
    /// release cannot be parsed counts as one: raising is harmless).
    pub fn raise_if_charged(release: &str) -> Memlock {
        if version_of(release).is_some_and(|v| v >= MEMCG_ACCOUNTING) {
            return Memlock::NotCharged;
        }
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut current) } != 0 {
            return Memlock::Limited {
                bytes: 0,
                error: io::Error::last_os_error(),
            };
        }
        if current.rlim_cur == libc::RLIM_INFINITY {
            return Memlock::Unlimited { raised_from: None };
        }
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit reads the struct we own; it changes only this process's limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
            Memlock::Unlimited {
                raised_from: Some(current.rlim_cur),
            }
        } else {
            Memlock::Limited {
                bytes: current.rlim_cur,
                error: io::Error::last_os_error(),
            }
        }
    }

    /// The start-up notice when the limit was raised.
    pub fn notice(&self) -> Option<String> {
        match self {
            Memlock::Unlimited {
                raised_from: Some(from),
            } => Some(format!(
                "this kernel charges BPF memory to RLIMIT_MEMLOCK (before Linux 5.11); raised it \
                 from {} to unlimited",
                human_bytes(*from)
            )),
            _ => None,
        }
    }

    /// Why a load that the kernel refused with EPERM failed, when the limit explains it.
    pub fn explain_refusal(&self) -> Option<String> {
        let Memlock::Limited { bytes, error } = self else {
            return None;
        };
        Some(format!(
            "this kernel charges BPF maps to RLIMIT_MEMLOCK (before Linux 5.11), which is {} for \
             tcptrace and could not be raised ({error}); the ring buffer alone needs more. Give \
             it CAP_SYS_RESOURCE (root has it unless a container drops it), or raise the limit \
             before starting it (`ulimit -l unlimited`, systemd `LimitMEMLOCK=infinity`)",
            human_bytes(*bytes)
        ))
    }
}

/// Whether `err` (an aya error chain) holds the kernel's EPERM.
pub fn is_eperm(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
    })
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_from_5_11_are_not_charged() {
        assert!(matches!(
            Memlock::raise_if_charged("5.11.0"),
            Memlock::NotCharged
        ));
        assert!(matches!(
            Memlock::raise_if_charged("6.18.44-fc"),
            Memlock::NotCharged
        ));
    }

    #[test]
    fn a_refusal_names_the_limit_and_the_fixes() {
        let m = Memlock::Limited {
            bytes: 64 << 10,
            error: io::Error::from_raw_os_error(libc::EPERM),
        };
        let why = m.explain_refusal().unwrap();
        for needle in [
            "RLIMIT_MEMLOCK",
            "64 KiB",
            "CAP_SYS_RESOURCE",
            "LimitMEMLOCK=infinity",
        ] {
            assert!(why.contains(needle), "{needle}: {why}");
        }
        assert!(Memlock::NotCharged.explain_refusal().is_none());
    }

    #[test]
    fn the_notice_says_what_was_raised() {
        let m = Memlock::Unlimited {
            raised_from: Some(8 << 20),
        };
        assert!(m.notice().unwrap().contains("from 8 MiB to unlimited"));
        assert!(
            Memlock::Unlimited { raised_from: None }.notice().is_none(),
            "nothing to say when it already was"
        );
    }

    #[test]
    fn eperm_is_found_anywhere_in_the_chain() {
        let err = anyhow::Error::new(io::Error::from_raw_os_error(libc::EPERM))
            .context("failed to create map `cpu_ring`");
        assert!(is_eperm(&err));
        let err = anyhow::Error::new(io::Error::from_raw_os_error(libc::EINVAL));
        assert!(!is_eperm(&err));
    }
}
