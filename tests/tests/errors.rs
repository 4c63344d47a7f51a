//! Bad input gets a clear error naming the problem and the fix, and the right exit code.

use std::os::unix::process::CommandExt;

use tcptrace_tests::*;

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = run_tcptrace(&["trace", "--frobnicate"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--frobnicate"), "{}", out.stderr);
}

#[test]
fn malformed_filters_name_the_bad_part() {
    for (args, needle) in [
        (
            vec!["trace", "--peer", "10.0.0.256"],
            "'10.0.0.256' is not an IP address",
        ),
        (vec!["trace", "--peer", "10.0.0.0/40"], "prefix '/40'"),
        (vec!["trace", "--peer", "[::1]x"], "expected ':PORT'"),
        (
            vec!["trace", "--state", "HALF_OPEN"],
            "'HALF_OPEN' is not a TCP state",
        ),
        (vec!["trace", "--port", "0"], "'0' is not a port"),
        (vec!["trace", "--ring-size", "3M"], "power of two"),
        (vec!["report", "--duration", "5y"], "unknown unit 'y'"),
    ] {
        let out = run_tcptrace(&args);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn without_privileges_the_error_says_what_is_needed() {
    let out = std::process::Command::new(tcptrace_bin())
        .args(["trace", "--duration", "1s"])
        // SAFETY: setgid/setuid in the child before exec; async-signal-safe calls only.
        .pre_exec_nobody()
        .output()
        .expect("run tcptrace as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("lacks CAP_BPF and CAP_PERFMON: run it with sudo"),
        "{stderr}"
    );
}

trait AsNobody {
    fn pre_exec_nobody(&mut self) -> &mut Self;
}

impl AsNobody for std::process::Command {
    fn pre_exec_nobody(&mut self) -> &mut Self {
        // SAFETY: only setgroups/setgid/setuid between fork and exec.
        unsafe {
            self.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        }
    }
}
