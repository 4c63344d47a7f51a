//! Booting the guest under QEMU and following its serial console to the end or to a deadline.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::arch::Arch;
use crate::cmd;
use crate::vm::console::{self, Console};

/// How QEMU runs the guest's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Emulation: the project's machines have no vmx/svm, so this is the usual case.
    Tcg,
}

impl Accel {
    /// KVM when the guest is the machine's own architecture, the CPU advertises virtualisation
    /// and /dev/kvm opens. Both are needed: on the project's machines /dev/kvm exists but the
    /// CPU has no vmx/svm, and QEMU aborts on it. An arm64 guest on x86-64 is always emulated.
    pub fn detect(arch: Arch) -> Accel {
        if arch != Arch::Amd64 {
            return Accel::Tcg;
        }
        let cpu_virt = fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
            info.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        });
        let kvm_opens = File::options()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if cpu_virt && kvm_opens {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

/// One boot of the guest.
#[derive(Debug)]
pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    /// The console is copied here as well as to stdout.
    pub console_log: PathBuf,
    /// The whole boot, tests included, is killed after this.
    pub timeout: Duration,
    pub accel: Accel,
    pub arch: Arch,
    /// Put before each console line on stdout (guests running side by side); the log file gets
    /// the lines as they are.
    pub prefix: Option<String>,
}

/// What the console showed, and how long the guest took to reach /init.
#[derive(Debug)]
pub struct BootReport {
    pub console: Console,
    pub to_init: Option<Duration>,
    pub total: Duration,
    pub timed_out: bool,
}

/// Boots, streams the console to stdout and the log, and returns when QEMU exits or the deadline
/// passes (QEMU is killed then).
pub fn boot(boot: &Boot) -> Result<BootReport> {
    let (program, machine) = boot.arch.qemu();
    let mut qemu = Command::new(program);
    qemu.args(machine);
    match boot.accel {
        Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => qemu.args(["-accel", "tcg"]),
    };
    qemu.args([
        "-m",
        "2G",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
    ])
    .arg("-kernel")
    .arg(boot.vmlinuz)
    .arg("-initrd")
    .arg(boot.initramfs)
    // panic=-1 reboots at once on a panic, and -no-reboot turns that into QEMU exiting.
    .arg("-append")
    .arg(format!("console={} panic=-1 quiet", boot.arch.console()));
    eprintln!("vm: $ {}", cmd::describe(&qemu));
    let started = Instant::now();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!("cannot start {program} (package qemu-system-x86 or qemu-system-arm)")
        })?;

    let stdout = child.stdout.take().expect("piped stdout");
    let (lines, received) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut raw = Vec::new();
        while stdout.read_until(b'\n', &mut raw).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&raw);
            let line = console::printable(&line);
            raw.clear();
            if lines.send(line).is_err() {
                break;
            }
        }
    });

    let mut log = File::create(&boot.console_log)
        .with_context(|| format!("creating {}", boot.console_log.display()))?;
    let mut console = Console::default();
    let mut to_init = None;
    let deadline = started + boot.timeout;
    let mut timed_out = false;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(wait) {
            Ok(line) => {
                match &boot.prefix {
                    Some(prefix) => println!("{prefix} {line}"),
                    None => println!("{line}"),
                }
                writeln!(log, "{line}")?;
                console.feed(&line);
                if to_init.is_none() && console.kernel_release.is_some() {
                    to_init = Some(started.elapsed());
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                eprintln!("vm: no end after {:?}; killing QEMU", boot.timeout);
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait()?;
    let _ = reader.join();
    if !timed_out && !status.success() {
        eprintln!("vm: QEMU exited with {status}");
    }
    Ok(BootReport {
        console,
        to_init,
        total: started.elapsed(),
        timed_out,
    })
}
