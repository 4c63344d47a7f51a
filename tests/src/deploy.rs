//! The deployment files (`deploy/`), embedded at build time so the tests that check them run
//! anywhere the test binaries do (the VM tests have no source tree).

/// `deploy/tcptrace.service`.
pub const UNIT: &str = include_str!("../../deploy/tcptrace.service");
/// `deploy/daemonset.yaml`.
pub const DAEMONSET: &str = include_str!("../../deploy/daemonset.yaml");
/// `deploy/serve.toml`.
pub const SERVE_TOML: &str = include_str!("../../deploy/serve.toml");

/// The capabilities the unit documents, as its `AmbientCapabilities=` line lists them
/// (`CAP_BPF`, ...).
pub fn unit_capabilities() -> Vec<String> {
    unit_values("AmbientCapabilities")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

/// Every value of `key=` in the unit (comments skipped).
pub fn unit_values(key: &str) -> Vec<String> {
    UNIT.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// The release these files are for: the workspace version. The DaemonSet's image tag and the
/// unit's `# For tcptrace VERSION` line name it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version the unit says it is for (its `# For tcptrace VERSION ...` comment).
pub fn unit_version() -> Option<String> {
    UNIT.lines()
        .find_map(|l| l.strip_prefix("# For tcptrace "))
        .and_then(|rest| rest.split_whitespace().next())
        .map(|v| v.trim_end_matches([',', ':', '.']).to_string())
}

/// What the DaemonSet's pod asks of a node, read from deploy/daemonset.yaml: what the
/// container runtime is told, and so what the container test hands podman.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSpec {
    pub image: String,
    pub args: Vec<String>,
    pub container_port: u16,
    pub host_pid: bool,
    pub host_network: bool,
    pub run_as_user: Option<u64>,
    pub privileged: bool,
    pub allow_privilege_escalation: bool,
    pub read_only_root_filesystem: bool,
    /// `capabilities.drop` is `[ALL]`.
    pub drop_all_capabilities: bool,
    /// `capabilities.add` as Kubernetes writes them: `BPF`, `PERFMON`, ...
    pub capabilities: Vec<String>,
    /// `seccompProfile.type`: `Unconfined`, `RuntimeDefault` or `Localhost`.
    pub seccomp: String,
    pub mounts: Vec<HostMount>,
}

/// A hostPath volume and where the container mounts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    pub host_path: String,
    pub mount_path: String,
    pub read_only: bool,
    /// `mountPropagation`, when set (`HostToContainer`, ...).
    pub propagation: Option<String>,
}

impl PodSpec {
    /// The same pod without capability `cap` (`BPF`, ...); panics when it has no such one.
    pub fn without_capability(&self, cap: &str) -> PodSpec {
        let mut pod = self.clone();
        let before = pod.capabilities.len();
        pod.capabilities.retain(|c| c != cap);
        assert_ne!(before, pod.capabilities.len(), "the pod adds no {cap}");
        pod
    }

    /// The same pod with capability `cap` added too.
    pub fn with_capability(&self, cap: &str) -> PodSpec {
        let mut pod = self.clone();
        assert!(!pod.capabilities.iter().any(|c| c == cap), "{cap} already");
        pod.capabilities.push(cap.to_string());
        pod
    }

    /// The same pod without the mount at `mount_path`; panics when it has no such one.
    pub fn without_mount(&self, mount_path: &str) -> PodSpec {
        let mut pod = self.clone();
        let before = pod.mounts.len();
        pod.mounts.retain(|m| m.mount_path != mount_path);
        assert_ne!(
            before,
            pod.mounts.len(),
            "the pod mounts nothing at {mount_path}"
        );
        pod
    }
}

/// The DaemonSet document of deploy/daemonset.yaml (which also holds its Namespace).
pub fn daemonset() -> serde_yaml::Value {
    serde_yaml::Deserializer::from_str(DAEMONSET)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .find(|d: &serde_yaml::Value| d["kind"] == "DaemonSet")
        .expect("a DaemonSet")
}

/// Bit numbers from include/uapi/linux/capability.h, by name with or without `CAP_`.
pub fn cap_bit(name: &str) -> u64 {
    1 << match name.trim_start_matches("CAP_") {
        "DAC_READ_SEARCH" => 2,
        "NET_ADMIN" => 12,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYSLOG" => 34,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("unknown capability {other}"),
    }
}

/// A capability set of process `pid`: `key` is a /proc/PID/status field (`CapEff`, `CapAmb`,
/// ...).
pub fn process_caps(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// The DaemonSet's pod, from its one container. Panics with the field when the manifest does
/// not have the shape tcptrace's deployment needs.
pub fn daemonset_pod() -> PodSpec {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    let c = &containers[0];
    let sc = &c["securityContext"];
    let strings = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence()
            .map(|s| {
                s.iter()
                    .map(|x| x.as_str().expect("a string").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let volumes = pod["volumes"].as_sequence().expect("volumes");
    let mounts = c["volumeMounts"]
        .as_sequence()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    let volume = volumes
                        .iter()
                        .find(|v| v["name"] == m["name"])
                        .unwrap_or_else(|| panic!("no volume for {m:?}"));
                    HostMount {
                        host_path: volume["hostPath"]["path"]
                            .as_str()
                            .unwrap_or_else(|| panic!("not a hostPath volume: {volume:?}"))
                            .to_string(),
                        mount_path: m["mountPath"].as_str().expect("mountPath").to_string(),
                        read_only: m["readOnly"] == true,
                        propagation: m["mountPropagation"].as_str().map(str::to_string),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    PodSpec {
        image: c["image"].as_str().expect("image").to_string(),
        args: strings(&c["args"]),
        container_port: c["ports"][0]["containerPort"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("a containerPort"),
        host_pid: pod["hostPID"] == true,
        host_network: pod["hostNetwork"] == true,
        run_as_user: sc["runAsUser"].as_u64(),
        privileged: sc["privileged"] == true,
        // Kubernetes' default is true.
        allow_privilege_escalation: sc["allowPrivilegeEscalation"] != false,
        read_only_root_filesystem: sc["readOnlyRootFilesystem"] == true,
        drop_all_capabilities: strings(&sc["capabilities"]["drop"]) == ["ALL"],
        capabilities: strings(&sc["capabilities"]["add"]),
        seccomp: sc["seccompProfile"]["type"]
            .as_str()
            .unwrap_or("RuntimeDefault")
            .to_string(),
        mounts,
    }
}

/// `CAP_SYS_PTRACE` -> `+sys_ptrace`, comma-joined, as setpriv takes them.
pub fn setpriv_caps(caps: &[String]) -> String {
    caps.iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The set deploy/README.md documents, and the reason each is there.
    const DOCUMENTED: [&str; 4] = [
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_SYS_PTRACE",
        "CAP_DAC_READ_SEARCH",
    ];

    #[test]
    fn the_unit_passes_systemd_analyze_verify_without_warnings() {
        // verify checks that ExecStart's binary exists, so a copy points at the built one.
        let bin = crate::tcptrace_bin();
        let dir = std::env::temp_dir().join(format!("tcptrace-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            unit_values("ExecStart"),
            ["/usr/local/bin/tcptrace serve $TCPTRACE_ARGS"]
        );
        let unit = UNIT.replace("/usr/local/bin/tcptrace", bin.to_str().unwrap());
        let path = dir.join("tcptrace.service");
        std::fs::write(&path, unit).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze (package systemd)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        // Unknown keys and bad values are warnings on stderr, not failures.
        assert!(stderr.trim().is_empty(), "warnings: {stderr}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_unit_grants_exactly_the_documented_capabilities_and_sandboxes() {
        assert_eq!(unit_capabilities(), DOCUMENTED);
        assert_eq!(
            unit_values("CapabilityBoundingSet"),
            unit_values("AmbientCapabilities")
        );
        for (key, want) in [
            ("DynamicUser", "yes"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("ProtectKernelTunables", "yes"),
            ("ProtectControlGroups", "yes"),
            ("ProtectProc", "default"),
        ] {
            assert_eq!(unit_values(key), [want], "{key}");
        }
    }

    #[test]
    fn the_daemonset_has_what_tracing_needs() {
        let ds = daemonset();
        assert_eq!(ds["apiVersion"], "apps/v1");
        // The selector picks the pods by name only: it is immutable, and the version label
        // changes with each release.
        let selector = ds["spec"]["selector"]["matchLabels"].as_mapping().unwrap();
        let labels = &ds["spec"]["template"]["metadata"]["labels"];
        assert!(selector.iter().all(|(k, v)| &labels[k] == v), "{labels:?}");
        assert!(selector.get("app.kubernetes.io/version").is_none());
        let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], "9977");
        let c = &ds["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");

        // What tests/tests/daemonset.rs proved necessary, and nothing more.
        let pod = daemonset_pod();
        assert!(pod.host_pid && pod.host_network);
        assert_eq!(pod.args[0], "serve");
        assert_eq!(pod.container_port, 9977);
        assert!(pod.read_only_root_filesystem);
        assert!(!pod.allow_privilege_escalation);
        assert!(!pod.privileged);
        assert_eq!(pod.run_as_user, Some(0));
        assert!(pod.drop_all_capabilities);
        let added: Vec<String> = pod
            .capabilities
            .iter()
            .map(|c| format!("CAP_{c}"))
            .collect();
        // The unit's set, and CAP_SYSLOG, which the unit's sandbox would make useless
        // (ProtectKernelTunables= hides /proc/kallsyms).
        assert_eq!(added, [&DOCUMENTED[..], &["CAP_SYSLOG"]].concat());
        assert_eq!(pod.seccomp, "Unconfined");
        let mounts: Vec<(&str, &str, bool)> = pod
            .mounts
            .iter()
            .map(|m| (m.host_path.as_str(), m.mount_path.as_str(), m.read_only))
            .collect();
        assert_eq!(
            mounts,
            [
                ("/sys/kernel/tracing", "/sys/kernel/tracing", true),
                ("/sys/fs/cgroup", "/sys/fs/cgroup", true),
            ]
        );
    }

    #[test]
    fn the_daemonset_and_the_unit_are_for_this_release() {
        assert_eq!(
            daemonset_pod().image,
            format!("localhost/tcptrace:{VERSION}")
        );
        assert_eq!(
            unit_version().as_deref(),
            Some(VERSION),
            "the unit's `# For tcptrace` line"
        );
        let version_label = DAEMONSET
            .lines()
            .filter_map(|l| l.trim().strip_prefix("app.kubernetes.io/version:"))
            .map(|v| v.trim().trim_matches('"').to_string())
            .collect::<Vec<_>>();
        assert_eq!(version_label, [VERSION], "the pod template's version label");
    }

    #[test]
    fn the_scrape_config_and_alert_rules_pass_promtool() {
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        for args in [
            &["check", "config", "prometheus.yml"][..],
            // Feeds the rules synthetic series: a leak fires, a steady count does not.
            &["test", "rules", "alerts.test.yml"][..],
        ] {
            let out = Command::new("promtool")
                .args(args)
                .current_dir(&deploy)
                .output()
                .expect("promtool (package prometheus)");
            assert!(
                out.status.success(),
                "promtool {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn the_example_config_loads() {
        let p = std::env::temp_dir().join(format!("tcptrace-serve-{}.toml", std::process::id()));
        std::fs::write(&p, SERVE_TOML).unwrap();
        let cfg = tcptrace::export::ServeConfig::load(Some(&p), &Default::default()).unwrap();
        assert_eq!(cfg, tcptrace::export::ServeConfig::default());
        let _ = std::fs::remove_file(p);
    }
}
