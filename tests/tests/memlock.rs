//! `RLIMIT_MEMLOCK`: kernels before 5.11 charge BPF maps to it. tcptrace raises it at start-up
//! where it may (root, CAP_SYS_RESOURCE) and says so; where it may not, it names the limit and
//! the fixes instead of the kernel's bare EPERM. Newer kernels ignore the limit, so the same
//! 64 KiB limit without CAP_SYS_RESOURCE must not matter there.

use std::process::Command;

use tcptrace_tests::{kernel, *};

/// The documented capabilities, without CAP_SYS_RESOURCE.
const CAPS: &str = "+bpf,+perfmon,+net_admin,+sys_ptrace,+dac_read_search";
/// A common distribution default, far below the 8 MiB ring.
const LIMIT: u64 = 64 << 10;

/// `tcptrace report` for a second as nobody with `caps`, under a 64 KiB locked-memory limit.
fn report_as_nobody(caps: &str) -> TracerOutput {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(tcptrace_bin())
        .args(["report", "--json", "--duration", "1s"]);
    run_to_end(kernel::with_memlock(&mut cmd, Some(LIMIT)))
}

#[test]
fn a_low_memlock_limit_is_raised_or_named_before_5_11_and_ignored_after() {
    let out = report_as_nobody(CAPS);
    if !kernel::charges_memlock() {
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(out.json()["lost_events"].is_u64(), "{}", out.stdout);
        assert!(!out.stderr.contains("RLIMIT_MEMLOCK"), "{}", out.stderr);
        return;
    }
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    for needle in [
        "charges BPF maps to RLIMIT_MEMLOCK (before Linux 5.11), which is 64 KiB",
        "CAP_SYS_RESOURCE",
        "LimitMEMLOCK=infinity",
    ] {
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
    }
    // With CAP_SYS_RESOURCE (which root has) tcptrace lifts the limit itself, and says so.
    let out = report_as_nobody(&format!("{CAPS},+sys_resource"));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "charges BPF memory to RLIMIT_MEMLOCK (before Linux 5.11); raised it from 64 KiB to \
             unlimited"
        ),
        "{}",
        out.stderr
    );
}
