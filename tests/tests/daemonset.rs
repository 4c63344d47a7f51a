//! The image `cargo xtask image` builds, run the way deploy/daemonset.yaml runs it: podman with
//! the pod's host namespaces, user, capabilities (nothing ambient), seccomp profile, read-only
//! root, hostPath mounts and the web config's Secret (TLS and basic authentication), all read
//! from the manifest. Sockets made on the host are then scraped over TLS from the container's
//! `/metrics` and checked against `ss`. Then each privilege and
//! mount of the manifest is taken away in turn, to show what it is needed for; what the
//! manifest lacks (CAP_NET_ADMIN, mounts of /sys/kernel/btf, debugfs and /run/netns) is shown
//! unneeded by the first run, which has everything without them.
//!
//! Host only: the VM tests cannot carry a container runtime (xtask's HOST_ONLY_BINARIES).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tcptrace::owner::cgroup::Cgroup2Mount;
use tcptrace_tests::cgroups::{self, Cgroups, hex};
use tcptrace_tests::deploy::{self, PodSpec, Source};
use tcptrace_tests::netns::TestNetns;
use tcptrace_tests::podman::{self, Container, SecretVolume};
use tcptrace_tests::{exporter, tls, *};

const T: Duration = Duration::from_secs(30);
/// The user and password the web config in the test's Secret admits.
const USER: &str = "prometheus";
const PASSWORD: &str = "daemonset test password";

/// What the exporter in the container said about the host's sockets: for each group the test
/// made, the value of its series (`None`: no series for that owner).
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    /// CLOSE_WAIT sockets of a server that leaked them before the exporter started, running as
    /// nobody in a Docker-named cgroup: only the start-up dump and the fd scan can name it.
    /// Series `{pid, comm="tcpscenario", container}`.
    older_leak: Option<f64>,
    /// The same, in a network namespace of its own (as a pod has), `{pid}`.
    older_leak_in_pod_netns: Option<f64>,
    /// CLOSE_WAIT sockets leaked over IPv6 by a root process after the exporter attached:
    /// the kernel programs see them happen. `{pid, comm}`.
    new_leak: Option<f64>,
    /// TIME_WAIT sockets of a client in a Docker-named cgroup that has exited since:
    /// `tcptrace_time_wait_sockets{pid, container}`.
    exited_client_time_wait: Option<f64>,
    /// `tcptrace_build_info`'s `timewait_method`.
    timewait_method: String,
    /// `tcptrace_build_info`'s `hook`.
    hook: String,
}

/// The sockets made on the host, and what `ss` says of them.
struct Host {
    older: Proc,
    older_container: String,
    pod_server: Proc,
    new_server: Option<Proc>,
    exited_client: Option<(u32, String)>,
    /// Deleted, and removed, after the processes inside (the fields above drop first).
    _pod_netns: TestNetns,
    _cgroups: Vec<Cgroups>,
    /// What `ss` counts for each group, as `Observed` (taken when the group is complete).
    ss: Observed,
}

const OLDER_LEAK: usize = 3;
const POD_LEAK: usize = 2;
const NEW_LEAK: usize = 2;
const EXITED_CLIENT_CONNS: usize = 2;

impl Host {
    /// The sockets that exist before the exporter starts.
    fn before_start() -> Host {
        let mount = Cgroup2Mount::find().expect("a cgroup2 mount");
        let container = hex(32);
        let (cg, dir) = Cgroups::make(&mount, &format!("docker-{container}.scope"));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let addr = SocketAddr::new(ip, free_port(ip));
        let conns = OLDER_LEAK.to_string();
        // Another user's process: naming it takes CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH.
        let mut older = cgroups::server_in(
            &dir,
            addr,
            &["--conns", &conns, "--on-eof", "leak"],
            Some(65534),
        );
        leak_into(&mut older, addr, OLDER_LEAK);

        let pod_netns = TestNetns::add();
        let port = free_port(ip);
        let pod_bind = format!("127.0.0.1:{port}");
        let mut pod_server = pod_netns.scenario(&[
            "server",
            "--bind",
            &pod_bind,
            "--conns",
            &POD_LEAK.to_string(),
            "--on-eof",
            "leak",
        ]);
        pod_server.expect("listening", T);
        let mut pod_client = pod_netns.scenario(&[
            "client",
            "--connect",
            &pod_bind,
            "--conns",
            &POD_LEAK.to_string(),
        ]);
        pod_client.wait_done(T);
        pod_server.wait_done(T);
        pod_client.finish();

        let ss = Observed {
            older_leak: Some(ss_count("close-wait", &format!("sport = :{}", addr.port())) as f64),
            older_leak_in_pod_netns: Some(
                pod_netns
                    .ss()
                    .iter()
                    .filter(|(state, local, _)| {
                        state == "CLOSE-WAIT" && local.ends_with(&format!(":{port}"))
                    })
                    .count() as f64,
            ),
            new_leak: None,
            exited_client_time_wait: None,
            timewait_method: String::new(),
            hook: String::new(),
        };
        assert_eq!(ss.older_leak, Some(OLDER_LEAK as f64), "ss");
        assert_eq!(ss.older_leak_in_pod_netns, Some(POD_LEAK as f64), "ss");
        Host {
            older,
            older_container: container,
            _pod_netns: pod_netns,
            pod_server,
            new_server: None,
            exited_client: None,
            _cgroups: vec![cg],
            ss,
        }
    }

    /// The sockets made while the exporter runs.
    fn after_start(&mut self) {
        let ip: IpAddr = "::1".parse().unwrap();
        let addr = SocketAddr::new(ip, free_port(ip));
        let (mut leaker, _) = server(
            addr,
            &["--conns", &NEW_LEAK.to_string(), "--on-eof", "leak"],
        );
        leak_into(&mut leaker, addr, NEW_LEAK);
        self.ss.new_leak =
            Some(ss_count("close-wait", &format!("sport = :{}", addr.port())) as f64);
        assert_eq!(self.ss.new_leak, Some(NEW_LEAK as f64), "ss");
        self.new_server = Some(leaker);

        // A client in a container that closes first (its sockets go to TIME_WAIT), then exits.
        let mount = Cgroup2Mount::find().expect("a cgroup2 mount");
        let container = hex(32);
        let (cg, dir) = Cgroups::make(&mount, &format!("docker-{container}.scope"));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let addr = SocketAddr::new(ip, free_port(ip));
        let conns = EXITED_CLIENT_CONNS.to_string();
        let (mut closer, _) = server(addr, &["--conns", &conns, "--on-eof", "close"]);
        let scenario = scenario_bin();
        let connect = addr.to_string();
        let mut client = cgroups::spawn_in(
            &dir,
            &[
                scenario.to_str().unwrap(),
                "client",
                "--connect",
                &connect,
                "--conns",
                &conns,
            ],
        );
        client.wait_done(T);
        closer.wait_done(T);
        let pid = client.pid();
        client.finish();
        closer.finish();
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the client has exited"
        );
        self.ss.exited_client_time_wait =
            Some(ss_count("time-wait", &format!("dport = :{}", addr.port())) as f64);
        // ss is the referee: on loopback the kernel may reuse a TIME_WAIT port for the next
        // connect to the same destination (net.ipv4.tcp_tw_reuse=2, the default), ending that
        // TIME_WAIT early (seen: 1 of 2).
        let tw = self.ss.exited_client_time_wait.unwrap();
        assert!(
            (1.0..=EXITED_CLIENT_CONNS as f64).contains(&tw),
            "ss: {tw} TIME_WAIT"
        );
        self.exited_client = Some((pid, container));
        self._cgroups.push(cg);
    }

    /// Reads the groups' series from a scrape.
    fn observe(&self, metrics: &str) -> Observed {
        let build = exporter::samples(metrics, "tcptrace_build_info");
        let label = |key: &str| {
            build
                .first()
                .and_then(|(labels, _)| labels.iter().find(|(k, _)| k == key))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let pid = |p: &Proc| p.pid().to_string();
        let close_wait =
            |want: &[(&str, &str)]| exporter::sample(metrics, "tcptrace_close_wait_sockets", want);
        Observed {
            older_leak: close_wait(&[
                ("pid", &pid(&self.older)),
                ("comm", "tcpscenario"),
                ("container", &self.older_container),
            ]),
            older_leak_in_pod_netns: close_wait(&[("pid", &pid(&self.pod_server))]),
            new_leak: self
                .new_server
                .as_ref()
                .and_then(|s| close_wait(&[("pid", &pid(s)), ("comm", "tcpscenario")])),
            exited_client_time_wait: self.exited_client.as_ref().and_then(|(p, container)| {
                exporter::sample(
                    metrics,
                    "tcptrace_time_wait_sockets",
                    &[("pid", &p.to_string()), ("container", container)],
                )
            }),
            timewait_method: label("timewait_method"),
            hook: label("hook"),
        }
    }
}

/// Makes a client open `n` connections to `server` and close them; the server leaks them.
fn leak_into(server: &mut Proc, addr: SocketAddr, n: usize) {
    let mut cli = client(addr, &["--conns", &n.to_string()]);
    cli.wait_done(T);
    server.wait_done(T);
    cli.finish();
}

/// How this host's root (`TCPTRACE_BIN`, the binary the image holds) attaches: the hook and
/// the TIME_WAIT method a container with the DaemonSet's privileges must match.
fn host_root() -> &'static (String, String) {
    static ROOT: OnceLock<(String, String)> = OnceLock::new();
    ROOT.get_or_init(|| {
        let out = run_tcptrace(&["report", "--json", "--duration", "1s", "--port", "9"]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let doc = out.json();
        (
            doc["hook"].as_str().unwrap().to_string(),
            doc["timewait_method"].as_str().unwrap().to_string(),
        )
    })
}

/// The exporter in a container started from the DaemonSet's pod spec (as changed by a test).
struct Exporter {
    container: Container,
    listen: SocketAddr,
    /// A client that trusts the CA that signed the server's certificate.
    client: Arc<rustls::ClientConfig>,
    /// The Secret's folder, removed after the container (fields drop in order).
    _web: SecretVolume,
}

impl Exporter {
    /// Starts the image with `pod`'s privileges and mounts and the DaemonSet's arguments, with
    /// `$(NODE_IP):PORT` (the node's address, from the downward API) replaced by a free
    /// loopback port: with the host's network namespace, the test reaches it there.
    ///
    /// The Secret `tcptrace-web` holds what deploy/README.md says to put in it: deploy/web.yml
    /// with a bcrypt hash for `USER`, and a server certificate (for 127.0.0.1, from a CA made
    /// here) and its key.
    fn start(pod: &PodSpec) -> Exporter {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let listen = SocketAddr::new(ip, free_port(ip));
        let node_address = format!("$(NODE_IP):{}", pod.container_port);
        let args: Vec<String> = pod
            .args
            .iter()
            .map(|a| {
                if *a == node_address {
                    listen.to_string()
                } else {
                    assert!(!a.contains("$("), "{a}: not translated");
                    a.clone()
                }
            })
            .collect();
        assert!(args.contains(&listen.to_string()), "{:?}", pod.args);
        let secret = "tcptrace-web";
        let mode = pod
            .mounts
            .iter()
            .find_map(|m| match &m.source {
                Source::Secret { name, mode } if name == secret => Some(*mode),
                _ => None,
            })
            .unwrap_or_else(|| panic!("the pod mounts no Secret {secret}"));
        let ca = tls::Ca::new("tcptrace daemonset test CA");
        let server = ca.server();
        let web_yml = deploy::WEB_YML.replace(
            "REPLACE-WITH-A-BCRYPT-HASH",
            &format!("'{}'", tls::bcrypt_hash(PASSWORD)),
        );
        let web = SecretVolume::new(
            &[
                ("web.yml", &web_yml),
                ("tls.crt", &server.cert_pem),
                ("tls.key", &server.key_pem),
            ],
            mode,
        );
        let flags = podman::run_flags(pod, &[(secret, &web.dir)]);
        let container = Container::run(podman::load_image(), &flags, &args);
        Exporter {
            container,
            listen,
            client: tls::client_config(&ca.pem(), None),
            _web: web,
        }
    }

    /// Waits until the kernel programs are attached; `Err(logs)` when it exits first.
    fn attached(&self) -> Result<(), String> {
        self.container.wait_for_log("attached", T)
    }

    /// `GET path` over TLS, as Prometheus scrapes it: with the user and password.
    fn scrape(&self, path: &str) -> exporter::Response {
        self.get(path, Some((USER, PASSWORD)))
            .unwrap_or_else(|e| panic!("GET {path}: {e}\nlogs:\n{}", self.container.logs()))
    }

    /// `GET path` over TLS with `auth`, or none.
    fn get(&self, path: &str, auth: Option<(&str, &str)>) -> Result<exporter::Response, String> {
        tls::https_get(self.listen, path, self.client.clone(), auth)
    }
}

/// Runs the exporter with `pod` against the host's sockets; scrapes until what it reports
/// equals `expected(ss)` or 10 s pass, and returns the last observation with `ss`'s counts and
/// the container (for more checks). `Err(logs)` when the exporter never attached.
fn observe(
    pod: &PodSpec,
    expected: impl Fn(&Observed) -> Observed,
) -> Result<(Observed, Observed, Exporter, String), String> {
    let mut host = Host::before_start();
    let exporter = Exporter::start(pod);
    exporter.attached()?;
    host.after_start();
    let want = expected(&host.ss);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = exporter.scrape("/metrics").body;
        let seen = host.observe(&metrics);
        if seen == want || Instant::now() > deadline {
            drop(host);
            return Ok((seen, want, exporter, metrics));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the DaemonSet's own pod reports: everything `ss` counts except the older sockets of a
/// pod's own network namespace (that takes CAP_SYS_ADMIN), and the host root's methods.
fn full(ss: &Observed) -> Observed {
    let (hook, timewait_method) = host_root().clone();
    Observed {
        older_leak_in_pod_netns: None,
        hook,
        timewait_method,
        ..ss.clone()
    }
}

/// Runs `pod`, expecting `expected`; panics with the exporter's logs otherwise.
fn check(what: &str, pod: &PodSpec, expected: impl Fn(&Observed) -> Observed) -> Exporter {
    let (seen, want, exporter, metrics) = observe(pod, expected)
        .unwrap_or_else(|logs| panic!("{what}: the exporter never attached:\n{logs}"));
    assert_eq!(
        seen,
        want,
        "{what}\nlogs:\n{}\nmetrics:\n{}",
        exporter.container.logs(),
        relevant(&metrics)
    );
    // The scrape, for the record (`cargo test -- --nocapture`).
    eprintln!("{what}: {seen:?}\n{}", relevant(&metrics));
    exporter
}

/// The scrape's lines about the test's groups and the exporter itself.
fn relevant(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("tcptrace_close_wait_sockets")
                || l.starts_with("tcptrace_time_wait_sockets")
                || l.starts_with("tcptrace_build_info")
                || l.starts_with("tcptrace_lost_events_total")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_daemonsets_pod_names_every_leak_ss_counts() {
    let pod = deploy::daemonset_pod();
    let exporter = check("the DaemonSet's pod", &pod, full);

    // The process as the runtime started it: root with exactly the added capabilities, none
    // ambient or inheritable, no way to gain more, no seccomp filter, a read-only root.
    let pid = exporter.container.pid().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let added: u64 = pod.capabilities.iter().map(|c| deploy::cap_bit(c)).sum();
    for key in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(deploy::process_caps(pid, key), added, "{key}\n{status}");
    }
    for key in ["CapAmb", "CapInh"] {
        assert_eq!(deploy::process_caps(pid, key), 0, "{key}\n{status}");
    }
    assert!(status.contains("\nUid:\t0\t0\t0\t0"), "{status}");
    assert!(status.contains("\nNoNewPrivs:\t1"), "{status}");
    assert!(status.contains("\nSeccomp:\t0"), "{status}");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .expect("a root mount");
    assert!(
        root.split(' ')
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{root}"
    );

    // The kubelet's HTTPS probes send no credentials.
    let health = exporter.get("/healthz", None).unwrap();
    assert_eq!((health.status, health.body.trim()), (200, "ok"));
    // Anything else on the node's network gets no metrics without the password, nor over
    // plain HTTP.
    for auth in [None, Some((USER, "not the password"))] {
        let denied = exporter.get("/metrics", auth).unwrap();
        assert_eq!(denied.status, 401, "{auth:?}: {}", denied.body);
        assert!(!denied.body.contains("tcptrace_"), "{}", denied.body);
    }
    let plain = exporter::raw(
        exporter.listen,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        plain.as_ref().is_none_or(|r| !r.body.contains("tcptrace_")),
        "{plain:?}"
    );
    let metrics = exporter.scrape("/metrics").body;
    assert_eq!(
        exporter::sample(
            &metrics,
            "tcptrace_build_info",
            &[("version", deploy::VERSION)]
        ),
        Some(1.0),
        "{}",
        relevant(&metrics)
    );
    for cause in ["ring_full", "nested"] {
        assert_eq!(
            exporter::sample(&metrics, "tcptrace_lost_events_total", &[("cause", cause)]),
            Some(0.0),
            "{cause}"
        );
    }
}

#[test]
fn without_bpf_or_perfmon_the_exporter_says_which_capabilities_it_lacks() {
    let pod = deploy::daemonset_pod();
    for cap in ["BPF", "PERFMON"] {
        let exporter = Exporter::start(&pod.without_capability(cap));
        let code = exporter.container.exit_code(T);
        let logs = exporter.container.logs();
        assert_eq!(code, Some(1), "without {cap}: {logs}");
        // Named, with the fix for a container's root, before any bpf() call could fail with a
        // bare EPERM.
        for needle in [
            "needs the capabilities CAP_BPF and CAP_PERFMON".to_string(),
            format!("this process lacks CAP_{cap}."),
            "runs as root (uid 0)".to_string(),
            format!("capabilities.add: [{cap}]"),
        ] {
            assert!(logs.contains(&needle), "without {cap}: {needle}: {logs}");
        }
        assert!(!logs.contains("os error 1"), "without {cap}: {logs}");
    }
}

#[test]
fn under_the_runtimes_default_seccomp_profile_bpf_is_refused() {
    let mut pod = deploy::daemonset_pod();
    pod.seccomp = "RuntimeDefault".to_string();
    let exporter = Exporter::start(&pod);
    let code = exporter.container.exit_code(T);
    let logs = exporter.container.logs();
    assert_eq!(code, Some(1), "{logs}");
    assert!(logs.contains("Operation not permitted"), "{logs}");
}

#[test]
fn without_sys_ptrace_or_dac_read_search_older_sockets_of_other_users_have_no_owner() {
    let pod = deploy::daemonset_pod();
    for cap in ["SYS_PTRACE", "DAC_READ_SEARCH"] {
        check(
            &format!("without {cap}"),
            &pod.without_capability(cap),
            |ss| Observed {
                older_leak: None,
                ..full(ss)
            },
        );
    }
}

/// CAP_SYSLOG (kernel addresses in /proc/kallsyms) and tracefs make the end of TIME_WAIT exact
/// where the kernel refuses fentry, through the timer tracepoint. Where fentry loads (most
/// distribution kernels), neither is used and nothing changes without them.
#[test]
fn without_syslog_or_tracefs_time_wait_ends_are_inferred_where_fentry_is_refused() {
    let pod = deploy::daemonset_pod();
    let (_, root_method) = host_root();
    let uses_timer = root_method.contains("timer_expire_entry");
    let expected = |ss: &Observed| {
        let mut want = full(ss);
        if uses_timer {
            want.timewait_method = "inferred".to_string();
        }
        want
    };
    check(
        "without SYSLOG",
        &pod.without_capability("SYSLOG"),
        expected,
    );
    check(
        "without the tracefs mount",
        &pod.without_mount("/sys/kernel/tracing"),
        expected,
    );
}

#[test]
fn without_the_hosts_cgroup_hierarchy_an_exited_clients_container_is_unknown() {
    let pod = deploy::daemonset_pod();
    check(
        "without the /sys/fs/cgroup mount",
        &pod.without_mount("/sys/fs/cgroup"),
        |ss| Observed {
            exited_client_time_wait: None,
            ..full(ss)
        },
    );
}

#[test]
fn without_the_hosts_pid_namespace_older_sockets_have_no_owner() {
    let mut pod = deploy::daemonset_pod();
    pod.host_pid = false;
    check("without hostPID", &pod, |ss| Observed {
        older_leak: None,
        ..full(ss)
    });
}

/// The optional CAP_SYS_ADMIN: the exporter enters other network namespaces (found through
/// /proc/PID/ns/net, so /run/netns needs no mount) and dumps their sockets.
#[test]
fn with_sys_admin_older_sockets_in_a_pods_own_namespace_are_seen() {
    let pod = deploy::daemonset_pod().with_capability("SYS_ADMIN");
    check("with SYS_ADMIN", &pod, |ss| Observed {
        older_leak_in_pod_netns: ss.older_leak_in_pod_netns,
        ..full(ss)
    });
}
