//! The image run under podman the way a Kubernetes node runs deploy/daemonset.yaml's pod: the
//! pod's namespaces, user, capabilities, seccomp profile, read-only root and hostPath mounts,
//! each translated to the podman flag that asks the runtime for the same thing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::deploy::PodSpec;

/// The image archive to run: `TCPTRACE_IMAGE` (`cargo xtask test` sets it), else the debug
/// image `cargo xtask image --debug` writes, else the release one.
pub fn image_archive() -> PathBuf {
    if let Ok(p) = std::env::var("TCPTRACE_IMAGE") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "TCPTRACE_IMAGE={}: no such archive (did `cargo xtask image --debug` fail?)",
            p.display()
        );
        return p;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/image");
    let version = crate::deploy::VERSION;
    [
        format!("tcptrace-{version}-debug"),
        format!("tcptrace-{version}"),
    ]
    .iter()
    .map(|name| dir.join(format!("{name}.oci.tar")))
    .find(|p| p.is_file())
    .unwrap_or_else(|| {
        panic!(
            "no image archive in {}: build it first (cargo xtask image --debug) or set \
                 TCPTRACE_IMAGE",
            dir.display()
        )
    })
}

/// Loads the archive into podman's storage once per test binary, as `ctr images import` loads
/// it on a node; returns the name it carries (`localhost/tcptrace:VERSION[-debug]`).
pub fn load_image() -> &'static str {
    static LOADED: OnceLock<String> = OnceLock::new();
    LOADED.get_or_init(|| {
        let archive = image_archive();
        let out = podman(&["load", "--input", archive.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "podman load: {}", describe(&out));
        // "Loaded image: localhost/tcptrace:0.1.0" (podman 4.3 and later).
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("Loaded image: "))
            .or_else(|| {
                stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("Loaded image(s): "))
            })
            .map(|name| name.trim().to_string())
            .unwrap_or_else(|| panic!("podman load named no image: {stdout}"))
    })
}

/// `podman ARGS`, its output.
pub fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("podman (package podman; cargo xtask setup installs it)")
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The podman flags that ask for what `pod` asks of a Kubernetes node.
pub fn run_flags(pod: &PodSpec) -> Vec<String> {
    let mut flags: Vec<String> = vec![
        // containerd's default runtime; crun 1.8 also refuses hosts with a hybrid cgroup layout.
        "--runtime=runc".into(),
    ];
    if pod.host_pid {
        flags.push("--pid=host".into());
    }
    if pod.host_network {
        flags.push("--network=host".into());
    }
    if let Some(uid) = pod.run_as_user {
        flags.push(format!("--user={uid}"));
    }
    assert!(!pod.privileged, "the test runs an unprivileged pod only");
    if pod.read_only_root_filesystem {
        // Kubernetes adds no writable tmpfs to a read-only root; podman does unless told not to.
        flags.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    if !pod.allow_privilege_escalation {
        flags.push("--security-opt=no-new-privileges".into());
    }
    if pod.drop_all_capabilities {
        flags.push("--cap-drop=all".into());
    }
    flags.extend(pod.capabilities.iter().map(|c| format!("--cap-add={c}")));
    match pod.seccomp.as_str() {
        "Unconfined" => flags.push("--security-opt=seccomp=unconfined".into()),
        // podman's own default profile (containers-common's, which CRI-O uses too).
        "RuntimeDefault" => {}
        other => panic!("seccompProfile {other} is not translated"),
    }
    for m in &pod.mounts {
        let mut options = vec![if m.read_only { "ro" } else { "rw" }];
        match m.propagation.as_deref() {
            None | Some("None") => {}
            Some("HostToContainer") => options.push("rslave"),
            Some(other) => panic!("mountPropagation {other} is not translated"),
        }
        flags.push(format!(
            "--volume={}:{}:{}",
            m.host_path,
            m.mount_path,
            options.join(",")
        ));
    }
    flags.extend(rlimits());
    flags
}

/// podman asks the runtime for RLIMIT_NOFILE 1048576 and a large RLIMIT_NPROC, which a host
/// whose own limits are lower (and that lacks CAP_SYS_RESOURCE) refuses; Kubernetes sets no
/// limits, the container inherits the runtime's. So: this process's hard limits, and for
/// RLIMIT_NPROC no more than kernel.pid_max, which is where podman puts conmon's (seen here:
/// 96555 refused, 32768 = pid_max taken).
fn rlimits() -> Vec<String> {
    let hard = |resource| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we pass.
        assert_eq!(unsafe { libc::getrlimit(resource, &mut lim) }, 0);
        lim.rlim_max
    };
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    let nofile = hard(libc::RLIMIT_NOFILE).min(1 << 20);
    let nproc = hard(libc::RLIMIT_NPROC).min(pid_max);
    vec![
        format!("--ulimit=nofile={nofile}:{nofile}"),
        format!("--ulimit=nproc={nproc}:{nproc}"),
    ]
}

/// A container started detached, removed (with its logs) on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `podman run --detach` of `image` with `flags`, running `args`. Panics when podman
    /// cannot start it (a bad flag, a runtime error); the process inside may still fail.
    pub fn run(image: &str, flags: &[String], args: &[String]) -> Container {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "tcptrace-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut argv: Vec<&str> = vec!["run", "--detach", "--name", &name];
        argv.extend(flags.iter().map(String::as_str));
        argv.push(image);
        argv.extend(args.iter().map(String::as_str));
        let out = podman(&argv);
        assert!(
            out.status.success(),
            "podman {}: {}",
            argv.join(" "),
            describe(&out)
        );
        Container { name }
    }

    /// stdout and stderr of the process inside, so far.
    pub fn logs(&self) -> String {
        let out = podman(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Its process's pid in the host's pid namespace; `None` once it has exited.
    pub fn pid(&self) -> Option<u32> {
        let out = podman(&["inspect", "--format", "{{.State.Pid}}", &self.name]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .ok()
            .filter(|&p| p != 0)
    }

    /// The exit code once the process has exited, waiting up to `timeout`.
    pub fn exit_code(&self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = podman(&[
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.ExitCode}}",
                &self.name,
            ]);
            let state = String::from_utf8_lossy(&out.stdout).to_string();
            if let Some(code) = state.strip_prefix("exited ") {
                return code.trim().parse().ok();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for a log line containing `needle`; `Err(logs)` when the process exits first or
    /// `timeout` passes.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return Ok(());
            }
            if self.pid().is_none() || Instant::now() > deadline {
                return Err(logs);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time=5", &self.name]);
    }
}
