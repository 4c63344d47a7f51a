//! The deployment files (`deploy/`), embedded at build time so the tests that check them run
//! anywhere the test binaries do (the VM tests have no source tree).

/// `deploy/tcptrace.service`.
pub const UNIT: &str = include_str!("../../deploy/tcptrace.service");
/// `deploy/daemonset.yaml`.
pub const DAEMONSET: &str = include_str!("../../deploy/daemonset.yaml");
/// `deploy/serve.toml`.
pub const SERVE_TOML: &str = include_str!("../../deploy/serve.toml");
/// `deploy/tcptrace-tls.conf`: the drop-in that turns on TLS and basic authentication.
pub const TLS_DROPIN: &str = include_str!("../../deploy/tcptrace-tls.conf");
/// `deploy/web.yml`: the web config file template.
pub const WEB_YML: &str = include_str!("../../deploy/web.yml");

/// The `ExecStart=` of the TLS drop-in (the one after its reset), split into arguments.
pub fn dropin_exec_start() -> Vec<String> {
    let last = TLS_DROPIN
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStart="))
        .rfind(|v| !v.is_empty())
        .expect("an ExecStart= in the drop-in");
    last.split_whitespace().map(str::to_string).collect()
}

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

/// `CAP_NET_ADMIN` -> `+net_admin`, comma-joined, as setpriv takes them.
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
    const DOCUMENTED: [&str; 5] = [
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_NET_ADMIN",
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
        let verify = || {
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&path)
                .output()
                .expect("systemd-analyze (package systemd)");
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "{stderr}");
            // Unknown keys and bad values are warnings on stderr, not failures.
            assert!(stderr.trim().is_empty(), "warnings: {stderr}");
        };
        verify();
        // With the TLS drop-in beside it (verify reads tcptrace.service.d/ next to the unit: a
        // second ExecStart= without the reset fails it).
        let dropins = dir.join("tcptrace.service.d");
        std::fs::create_dir_all(&dropins).unwrap();
        std::fs::write(
            dropins.join("tls.conf"),
            TLS_DROPIN.replace("/usr/local/bin/tcptrace", bin.to_str().unwrap()),
        )
        .unwrap();
        verify();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_tls_dropin_hands_the_files_over_as_credentials() {
        assert_eq!(
            dropin_exec_start(),
            [
                "/usr/local/bin/tcptrace",
                "serve",
                "--web.config.file",
                "%d/web.yml",
                "$TCPTRACE_ARGS"
            ]
        );
        let creds: Vec<&str> = TLS_DROPIN
            .lines()
            .filter_map(|l| l.strip_prefix("LoadCredential="))
            .collect();
        assert_eq!(
            creds,
            [
                "web.yml:/etc/tcptrace/web.yml",
                "tls.crt:/etc/tcptrace/tls.crt",
                "tls.key:/etc/tcptrace/tls.key"
            ]
        );
        // The template names the same files, relative to its folder.
        assert!(WEB_YML.contains("cert_file: tls.crt") && WEB_YML.contains("key_file: tls.key"));
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
        let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(DAEMONSET)
            .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
            .collect();
        let ds = docs
            .iter()
            .find(|d| d["kind"] == "DaemonSet")
            .expect("a DaemonSet");
        assert_eq!(ds["apiVersion"], "apps/v1");
        let labels = &ds["spec"]["selector"]["matchLabels"];
        assert_eq!(&ds["spec"]["template"]["metadata"]["labels"], labels);
        let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], "9977");
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["hostPID"], true);
        assert_eq!(pod["hostNetwork"], true);
        let c = &pod["containers"][0];
        assert_eq!(c["args"][0], "serve");
        // Served on the node's address: TLS and basic authentication from the Secret.
        let args: Vec<&str> = c["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let web = args
            .iter()
            .position(|a| *a == "--web.config.file")
            .map(|i| args[i + 1])
            .expect("--web.config.file in the args");
        assert_eq!(annotations["prometheus.io/scheme"], "https");
        assert!(
            c["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|p| p["containerPort"] == 9977)
        );
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_ne!(sc["privileged"], true);
        assert_eq!(sc["capabilities"]["drop"][0], "ALL");
        let added: Vec<String> = sc["capabilities"]["add"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| format!("CAP_{}", v.as_str().unwrap()))
            .collect();
        assert_eq!(added, DOCUMENTED, "the same set as the systemd unit");
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "open to probes");
            assert_eq!(c[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
        }
        let mounts: Vec<(&str, bool)> = c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|m| (m["mountPath"].as_str().unwrap(), m["readOnly"] == true))
            .collect();
        for path in ["/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/cgroup"] {
            assert!(
                mounts.contains(&(path, true)),
                "{path} read-only in {mounts:?}"
            );
        }
        // Every mount has a volume behind it: the host's own paths, and the web config's Secret
        // where --web.config.file looks.
        for m in c["volumeMounts"].as_sequence().unwrap() {
            let v = pod["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|v| v["name"] == m["name"])
                .unwrap_or_else(|| panic!("no volume for {m:?}"));
            if v["secret"].is_mapping() {
                assert_eq!(v["secret"]["secretName"], "tcptrace-web");
                assert_eq!(m["readOnly"], true);
                let dir = m["mountPath"].as_str().unwrap();
                assert_eq!(web, format!("{dir}/web.yml"));
            } else {
                assert_eq!(v["hostPath"]["path"], m["mountPath"]);
            }
        }
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
    fn the_web_config_template_refuses_its_placeholder_and_loads_once_filled() {
        let files = crate::tls::Files::new("template");
        crate::tls::write_server(&files, &crate::tls::Ca::new("template CA").server());
        let web = files.write("web.yml", WEB_YML);
        let e = tcptrace::export::WebConfig::load(&web)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("basic_auth_users.prometheus: not a bcrypt hash"),
            "{e}"
        );
        let filled = WEB_YML.replace(
            "REPLACE-WITH-A-BCRYPT-HASH",
            &format!("'{}'", crate::tls::bcrypt_hash("pw")),
        );
        files.write("web.yml", &filled);
        let w = tcptrace::export::WebConfig::load(&web).unwrap();
        assert!(w.tls.is_some());
        assert_eq!(w.users.keys().collect::<Vec<_>>(), ["prometheus"]);
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
