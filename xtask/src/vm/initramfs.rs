//! The VM tests' root filesystem: busybox, the test binaries, tcptrace, iproute2 and bpftool, with
//! the shared libraries they load, and an /init that runs the tests and powers off.

use std::env;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::arch::Arch;
use crate::cmd;
use crate::vm::console as markers;
use crate::vm::userland::{Userland, host_busybox};
use crate::workspace::TestBinary;

/// Where things live inside the guest.
const GUEST_TRACER: &str = "/bin/tcptrace";
/// The scripted loopback peer the integration tests start (`tests/src/bin/tcpscenario.rs`).
const GUEST_SCENARIO: &str = "/bin/tcpscenario";
/// The connection storm the fault tests run (`tests/src/bin/tcpstorm.rs`).
const GUEST_STORM: &str = "/bin/tcpstorm";
const GUEST_TESTS_DIR: &str = "/tests";

/// What goes into the guest besides the fixed tools.
#[derive(Debug)]
pub struct Payload<'a> {
    pub tracer: &'a Path,
    pub scenario: &'a Path,
    pub storm: &'a Path,
    pub tests: &'a [TestBinary],
    /// Arguments for every test binary (filter, `--exact`, ...).
    pub libtest_args: &'a [String],
    /// The test binaries' working directory, as `cargo test` would set it (the package root).
    /// It is recreated at the same path in the guest with the package's files.
    pub package_dir: &'a Path,
    /// The guest's architecture: every binary above is built for it.
    pub arch: Arch,
    /// Where the guest's tools and the binaries' libraries come from.
    pub userland: &'a Userland,
}

/// Stages the part of the root filesystem every guest kernel shares under `staging`; `pack`
/// adds one kernel's modules and /init.
pub fn stage(staging: &Path, payload: &Payload) -> Result<()> {
    if staging.exists() {
        fs::remove_dir_all(staging)?;
    }
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "etc",
        "root",
        "var",
        GUEST_TESTS_DIR,
    ] {
        fs::create_dir_all(staging.join(dir.trim_start_matches('/')))?;
    }
    symlink("/run", staging.join("var/run"))?;

    let mut dynamic = Vec::new();
    let mut provided = vec![
        GUEST_TRACER.to_string(),
        GUEST_SCENARIO.to_string(),
        GUEST_STORM.to_string(),
    ];
    let strip = payload.arch.strip();
    install_binary(payload.tracer, staging, GUEST_TRACER, strip)?;
    dynamic.push(payload.tracer.to_path_buf());
    install_binary(payload.scenario, staging, GUEST_SCENARIO, strip)?;
    install_binary(payload.storm, staging, GUEST_STORM, strip)?;
    dynamic.push(payload.storm.to_path_buf());
    dynamic.push(payload.scenario.to_path_buf());
    for test in payload.tests {
        let guest = format!("{GUEST_TESTS_DIR}/{}", test.name);
        install_binary(&test.path, staging, &guest, strip)?;
        dynamic.push(test.path.clone());
    }
    for (tool, guest, required) in [
        ("ss", "/bin/ss", true),
        ("ip", "/sbin/ip", true),
        // util-linux's, not busybox's: the capability test needs --reuid and --ambient-caps.
        ("setpriv", "/usr/bin/setpriv", true),
        ("bpftool", "/sbin/bpftool", false),
        // The exporter tests scrape `tcptrace serve` with a real Prometheus (package prometheus).
        ("prometheus", "/usr/bin/prometheus", false),
        ("promtool", "/usr/bin/promtool", false),
    ] {
        match payload.userland.tool(tool) {
            Some(host) => {
                install_binary(&host, staging, guest, strip)?;
                dynamic.push(host);
                provided.push(guest.to_string());
            }
            None if required => bail!("vm: `{tool}` not found for the guest (package iproute2)"),
            None => eprintln!("vm: `{tool}` not found; the guest will lack it"),
        }
    }
    for (lib, guest) in payload.userland.libraries(&dynamic)? {
        let dest = staging.join(rel(&guest));
        if !dest.exists() {
            fs::create_dir_all(dest.parent().expect("library path has a parent"))?;
            fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
        }
    }
    install_busybox(staging, &provided, payload.userland)?;
    copy_package_dir(payload.package_dir, &staging.join(rel(payload.package_dir)))?;
    write_etc(staging)?;
    Ok(())
}

/// Puts one guest kernel's `modules` (loaded at boot, in order) and the /init that loads them
/// into `staging`, replacing the previous kernel's, and packs it as an uncompressed newc cpio at
/// `out`.
///
/// Uncompressed on purpose: the binaries are large and TCG decompresses slowly.
pub fn pack(staging: &Path, out: &Path, payload: &Payload, modules: &[PathBuf]) -> Result<()> {
    let module_dir = staging.join("lib/modules");
    if module_dir.exists() {
        fs::remove_dir_all(&module_dir)?;
    }
    fs::create_dir_all(&module_dir)?;
    for m in modules {
        let name = m.file_name().context("module file name")?;
        fs::copy(m, module_dir.join(name)).with_context(|| format!("copying {}", m.display()))?;
    }
    let init = staging.join("init");
    fs::write(&init, init_script(payload, modules))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    pack_cpio(staging, out)
}

/// `path` without its leading `/`, for joining under the staging directory.
fn rel(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

/// Copies a binary without its debug sections when `strip` (for the guest's architecture)
/// exists: a debug test binary is mostly DWARF, and the guest unpacks every byte of it in
/// emulated RAM. Symbols stay for backtraces.
fn install_binary(host: &Path, staging: &Path, guest: &str, strip: &str) -> Result<()> {
    let dest = staging.join(guest.trim_start_matches('/'));
    fs::create_dir_all(dest.parent().expect("guest path has a parent"))?;
    let stripped = cmd::succeeds(
        Command::new(strip)
            .arg("--strip-debug")
            .arg("-o")
            .arg(&dest)
            .arg(host),
    );
    if !stripped {
        fs::copy(host, &dest).with_context(|| format!("copying {}", host.display()))?;
    }
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// busybox-static and a link per applet, except where a real tool was installed. The applets
/// are listed by the machine's busybox, which runs here whatever the guest's architecture
/// (both come from the same Debian release).
fn install_busybox(staging: &Path, provided: &[String], userland: &Userland) -> Result<()> {
    fs::copy(userland.busybox()?, staging.join("bin/busybox"))?;
    let applets = cmd::stdout_of(Command::new(host_busybox()?).arg("--list-full"))?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        let guest = format!("/{applet}");
        let name = applet.rsplit('/').next().unwrap_or(applet);
        let shadowed = provided.iter().any(|p| p.rsplit('/').next() == Some(name));
        let link = staging.join(applet);
        // symlink_metadata: the links point at /bin/busybox, which `exists()` would resolve on
        // the host.
        if shadowed || fs::symlink_metadata(&link).is_ok() || guest == "/bin/busybox" {
            continue;
        }
        fs::create_dir_all(link.parent().expect("applet path has a parent"))?;
        symlink("/bin/busybox", &link)?;
    }
    Ok(())
}

/// The package's own files (fixtures a test may read), without build output.
fn copy_package_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_package_dir(&entry.path(), &to.join(&name))?;
        } else if kind.is_file() {
            fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

fn write_etc(staging: &Path) -> Result<()> {
    let etc = staging.join("etc");
    let passwd = concat!(
        "root:x:0:0:root:/root:/bin/sh\n",
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    );
    fs::write(etc.join("passwd"), passwd)?;
    fs::write(etc.join("group"), "root:x:0:\nnogroup:x:65534:\n")?;
    fs::write(
        etc.join("hosts"),
        "127.0.0.1 localhost\n::1 localhost ip6-localhost\n",
    )?;
    fs::write(
        etc.join("nsswitch.conf"),
        "passwd: files\ngroup: files\nhosts: files\n",
    )?;
    Ok(())
}

/// Tests that do not depend on the kernel and need a program the guest cannot carry, or more
/// CPU than a 2-vCPU TCG guest has: they run on the host only.
/// - A headless Chromium (hundreds of MiB of libraries) renders `diagnose --html`; the page is
///   the same whatever kernel produced the report.
/// - Nine tracers at once render a hostile process name in every view: in the 6.1 guest the
///   sixth did not attach within 60 s. What they check (escaping) is the same on any kernel.
/// - A real Prometheus scraping over TLS with client certificates and bcrypt-checked passwords
///   in five jobs: in the 6.1 guest every scrape overran its 5 s timeout. The kernel-dependent
///   part (the CLOSE_WAIT count scraped) runs there in `serve`'s plain-HTTP Prometheus test, and
///   the TLS refusals in `clients_without_credentials_or_with_a_bad_certificate_are_refused`.
const HOST_ONLY: &[&str] = &[
    "html_report_renders_in_headless_chromium",
    "a_process_named_with_escape_sequences_is_inert_in_every_view",
    "prometheus_scrapes_over_tls_with_a_client_certificate_and_basic_auth",
];

/// The guest's /init: mount what tcptrace reads, bring up loopback, run every test binary with a
/// marker line around it, power off.
fn init_script(payload: &Payload, modules: &[PathBuf]) -> String {
    let args: Vec<String> = ["--test-threads=1", "--color=never"]
        .iter()
        .map(|a| a.to_string())
        .chain(
            HOST_ONLY
                .iter()
                .flat_map(|t| ["--skip".to_string(), t.to_string()]),
        )
        .chain(payload.libtest_args.iter().cloned())
        .map(|a| cmd::shell_quote(&a))
        .collect();
    let args = args.join(" ");
    let mut passthrough = String::new();
    for var in ["RUST_LOG", "RUST_BACKTRACE", "RUST_LIB_BACKTRACE"] {
        if let Ok(value) = env::var(var) {
            passthrough.push_str(&format!("export {var}={}\n", cmd::shell_quote(&value)));
        }
    }
    let mut runs = String::new();
    for test in payload.tests {
        let name = cmd::shell_quote(&test.name);
        runs.push_str(&format!(
            "echo \"{begin} {name_raw}\"\n\
             {GUEST_TESTS_DIR}/{name} {args}\n\
             echo \"{end} {name_raw} exit=$?\"\n",
            begin = markers::TEST_BEGIN,
            end = markers::TEST_END,
            name_raw = test.name,
        ));
    }
    format!(
        r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
{insmods}ip link set lo up
echo "{init} $(uname -r)"
export TCPTRACE_BIN={tracer} TCPSCENARIO_BIN={scenario} TCPSTORM_BIN={storm} RUST_BACKTRACE=1
# TCG emulation: timing-sensitive tests widen their bounds (and say so).
export TCPTRACE_TEST_SLOW_CPU=1
{passthrough}cd {package_dir}
{runs}echo "{done}"
poweroff -f
"#,
        init = markers::INIT,
        tracer = GUEST_TRACER,
        scenario = GUEST_SCENARIO,
        storm = GUEST_STORM,
        insmods = modules
            .iter()
            .filter_map(|m| m.file_name())
            .map(|n| format!("insmod /lib/modules/{}\n", n.to_string_lossy()))
            .collect::<String>(),
        package_dir = cmd::shell_quote(&payload.package_dir.to_string_lossy()),
        done = markers::ALL_DONE,
    )
}

/// Packs `staging` with GNU cpio (newc, every file owned by root).
fn pack_cpio(staging: &Path, out: &Path) -> Result<()> {
    let mut list = Vec::new();
    collect_paths(staging, Path::new(""), &mut list)?;
    let archive = fs::File::create(out)?;
    let mut child = Command::new("cpio")
        .args(["--create", "--format=newc", "--owner=0:0", "--quiet"])
        .current_dir(staging)
        .stdin(Stdio::piped())
        .stdout(archive)
        .spawn()
        .context("cannot start cpio (package cpio)")?;
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        for path in &list {
            writeln!(stdin, "{}", path.display())?;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cpio failed: {status}");
    }
    Ok(())
}

/// Every path under `root`, parents before children (cpio needs directories first).
fn collect_paths(root: &Path, dir: &Path, list: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(root.join(dir))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = dir.join(entry.file_name());
        list.push(path.clone());
        if entry.file_type()?.is_dir() {
            collect_paths(root, &path, list)?;
        }
    }
    Ok(())
}
