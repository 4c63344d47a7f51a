//! tcptrace runs with exactly the documented capabilities and no root: CAP_BPF and CAP_PERFMON
//! for the kernel programs, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to read other processes' fds
//! and tracefs (the set deploy/tcptrace.service grants). uid 0 alone is not enough: a root
//! process without CAP_BPF and CAP_PERFMON (a container, a reduced bounding set) is told which
//! capabilities it lacks instead of failing with the kernel's bare EPERM. Before Linux 5.11 also
//! CAP_SYS_RESOURCE, to raise RLIMIT_MEMLOCK (see memlock.rs).

use std::{net::SocketAddr, process::Command, time::Duration};

use tcptrace_tests::{deploy, *};

#[test]
fn traces_as_nobody_with_only_the_documented_capabilities() {
    let unit = deploy::setpriv_caps(&deploy::unit_capabilities());
    let ip = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let addr = SocketAddr::new(ip, port);
    // systemd raises LimitMEMLOCK for the unit; here the process raises it itself.
    let caps = if tcptrace_tests::kernel::charges_memlock() {
        format!("{unit},+sys_resource")
    } else {
        unit
    };
    let tracer = Tracer::start_command(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"))
            .arg(tcptrace_bin())
            .args(["trace", "--json", "--port", &port.to_string()]),
    );
    let (mut srv, _) = server(addr, &["--on-eof", "close"]);
    let mut cli = client(addr, &["--hold-ms", "10"]);
    cli.wait_done(Duration::from_secs(20));
    srv.wait_done(Duration::from_secs(20));
    cli.finish();
    srv.finish();
    std::thread::sleep(Duration::from_millis(300));
    let out = tracer.stop();
    assert_eq!(out.json_lines().len(), 12, "{}\n{}", out.stdout, out.stderr);
}

/// `tcptrace ARGS` as root with `--bounding-set=-all,EXTRA`: an execve by uid 0 gets only the
/// bounding set as its capabilities, as in a container that drops them.
fn as_root_with_only(extra: &str, args: &[&str]) -> TracerOutput {
    let bounding = if extra.is_empty() {
        "-all".to_string()
    } else {
        format!("-all,{extra}")
    };
    let out = Command::new("setpriv")
        .args(["--inh-caps=-all", &format!("--bounding-set={bounding}")])
        .arg(tcptrace_bin())
        .args(args)
        .output()
        .expect("setpriv (util-linux)");
    TracerOutput {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
    }
}

#[test]
fn root_without_capabilities_is_told_which_ones_it_lacks() {
    let out = as_root_with_only("", &["trace", "--duration", "1s"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    for needle in [
        "lacks CAP_BPF and CAP_PERFMON",
        "runs as root (uid 0)",
        "--cap-add BPF --cap-add PERFMON",
    ] {
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
    }
    // Refused before any bpf() call, not with the kernel's bare EPERM.
    assert!(!out.stderr.contains("os error 1"), "{}", out.stderr);

    let out = as_root_with_only("+bpf", &["report", "--duration", "1s"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("lacks CAP_PERFMON."), "{}", out.stderr);
    assert!(!out.stderr.contains("lacks CAP_BPF"), "{}", out.stderr);
}

#[test]
fn root_with_bpf_and_perfmon_traces_and_names_what_else_it_lacks() {
    // Before 5.11 the maps are charged to RLIMIT_MEMLOCK, which only CAP_SYS_RESOURCE raises
    // (without it tcptrace stops and says so: memlock.rs).
    let caps = if tcptrace_tests::kernel::charges_memlock() {
        "+bpf,+perfmon,+sys_resource"
    } else {
        "+bpf,+perfmon"
    };
    let out = as_root_with_only(caps, &["report", "--duration", "1s", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.json()["lost_events"].is_u64(), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("without CAP_SYS_PTRACE in the effective set"),
        "{}",
        out.stderr
    );
}
