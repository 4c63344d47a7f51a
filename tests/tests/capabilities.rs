//! tcptrace runs with exactly the documented capabilities and no root: CAP_BPF and CAP_PERFMON
//! for the kernel programs, CAP_NET_ADMIN for the socket table, CAP_SYS_PTRACE and
//! CAP_DAC_READ_SEARCH to read other processes' fds and tracefs. Before Linux 5.11 also
//! CAP_SYS_RESOURCE, to raise RLIMIT_MEMLOCK (see memlock.rs).

use std::{net::SocketAddr, process::Command, time::Duration};

use tcptrace_tests::*;

const CAPS: &str = "+bpf,+perfmon,+net_admin,+sys_ptrace,+dac_read_search";

#[test]
fn traces_as_nobody_with_only_the_documented_capabilities() {
    let ip = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let addr = SocketAddr::new(ip, port);
    let caps = if tcptrace_tests::kernel::charges_memlock() {
        format!("{CAPS},+sys_resource")
    } else {
        CAPS.to_string()
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
