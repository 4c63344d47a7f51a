//! cgroups made by tests, named the way container engines name theirs, and processes started
//! inside them before they create any socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tcptrace::owner::cgroup::Cgroup2Mount;

use crate::{Proc, scenario_bin};

/// 2n random hex digits: `hex(32)` is a container id.
pub fn hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A chain of cgroup directories made by the test, removed (deepest first) on drop.
pub struct Cgroups {
    made: Vec<PathBuf>,
}

impl Cgroups {
    /// Makes `rel` (slash-separated) under the cgroup v2 mount; returns it and the deepest
    /// directory.
    pub fn make(mount: &Cgroup2Mount, rel: &str) -> (Cgroups, PathBuf) {
        let mut made = Vec::new();
        let mut dir = mount.mount_point.clone();
        for part in rel.split('/') {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                made.push(dir.clone());
            }
        }
        (Cgroups { made }, dir)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for d in self.made.iter().rev() {
            // The processes inside are gone by now (the server is dropped first); a zombie may
            // take a moment to leave.
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(d).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Starts `argv` inside `cgroup`: a shell writes its own pid to cgroup.procs, then becomes the
/// program, so the process is in the cgroup before it does anything.
pub fn spawn_in(cgroup: &Path, argv: &[&str]) -> Proc {
    let quoted: Vec<String> = argv
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let script = format!(
        "echo $$ > '{}/cgroup.procs' && exec {}",
        cgroup.display(),
        quoted.join(" ")
    );
    Proc::spawn(Command::new("sh").args(["-c", &script]))
}

/// Whether process `pid` is in `cgroup` (its `0::` line in /proc/PID/cgroup).
pub fn is_in(pid: u32, cgroup: &Path) -> bool {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    own.lines().any(|l| {
        l.strip_prefix("0::")
            .is_some_and(|p| cgroup.ends_with(p.trim_start_matches('/')))
    })
}

/// `tcpscenario server --bind BIND ARGS` inside `cgroup`, as `uid` (and its gid) when given,
/// once it listens.
pub fn server_in(cgroup: &Path, bind: SocketAddr, args: &[&str], uid: Option<u32>) -> Proc {
    let (scenario, bind) = (scenario_bin(), bind.to_string());
    let user = uid.map(|u| [format!("--reuid={u}"), format!("--regid={u}")]);
    let mut argv: Vec<&str> = Vec::new();
    if let Some([reuid, regid]) = &user {
        argv.extend(["setpriv", reuid, regid, "--clear-groups"]);
    }
    argv.extend([scenario.to_str().unwrap(), "server", "--bind", &bind]);
    argv.extend(args);
    let mut server = spawn_in(cgroup, &argv);
    server.expect("listening", Duration::from_secs(30));
    assert!(
        is_in(server.pid(), cgroup),
        "the server is not in {}",
        cgroup.display()
    );
    server
}
