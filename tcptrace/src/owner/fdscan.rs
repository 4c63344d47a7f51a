//! Socket inode -> the processes holding it, by reading every `/proc/PID/fd/N` link, as `ss -p`
//! does.
//!
//! A socket file's link reads `socket:[INODE]`, the inode inet_diag reports. Only thread-group
//! leaders are scanned (the numeric entries of `/proc`; threads share their leader's fd table).
//! One `readlinkat` per descriptor, relative to the open `/proc/PID/fd` directory, so the kernel
//! does not walk `/proc/PID` again for every fd. The name is read only for processes that hold a
//! wanted socket.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::ptr::NonNull;

use crate::owner::process::ProcessRef;

/// Socket inode -> every process holding a descriptor for it, sorted by pid.
pub type FdHolders = HashMap<u64, Vec<ProcessRef>>;

/// Maps socket inode to every process holding a descriptor for it, sorted by pid. A socket
/// shared after `fork` (a listener in a pre-fork server) has several owners.
///
/// With `wanted`, only those inodes are reported (an empty set returns at once). Processes that
/// exit during the scan, and `/proc/PID/fd` directories we may not read, are skipped quietly: the
/// result is a best-effort picture of one moment, like `ss -p`.
pub fn scan_socket_owners(wanted: Option<&HashSet<u64>>) -> FdHolders {
    let mut owners = FdHolders::new();
    if wanted.is_some_and(HashSet::is_empty) {
        return owners;
    }
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return owners;
    };
    let mut pids: Vec<u32> = proc_dir
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    pids.sort_unstable();

    let mut inodes = Vec::new();
    for pid in pids {
        inodes.clear();
        socket_inodes_of(pid, &mut inodes);
        if let Some(wanted) = wanted {
            inodes.retain(|i| wanted.contains(i));
        }
        if inodes.is_empty() {
            continue;
        }
        // One fd table can hold the same socket twice (dup); one owner entry per process.
        inodes.sort_unstable();
        inodes.dedup();
        // Gone already: it no longer holds anything.
        let Some(owner) = ProcessRef::of(pid) else {
            continue;
        };
        for &inode in &inodes {
            owners.entry(inode).or_default().push(owner.clone());
        }
    }
    owners
}

/// Appends the inode of every socket in `/proc/PID/fd` to `out`. Nothing when the process is
/// gone or its fd table unreadable.
fn socket_inodes_of(pid: u32, out: &mut Vec<u64>) {
    let Some(dir) = FdDir::open(pid) else {
        return;
    };
    // "socket:[" + 20 digits + "]" is 29 bytes; a longer target is a path, not a socket.
    let mut link = [0u8; 32];
    while let Some(name) = dir.next_name() {
        if name.to_bytes().first() == Some(&b'.') {
            continue;
        }
        // SAFETY: `name` is NUL-terminated and `link` is writable for its whole length.
        let n = unsafe {
            libc::readlinkat(
                dir.fd(),
                name.as_ptr(),
                link.as_mut_ptr().cast(),
                link.len(),
            )
        };
        // n < 0: the fd was closed (or the process exited) since the listing.
        let Ok(n) = usize::try_from(n) else {
            continue;
        };
        if let Some(inode) = socket_inode(&link[..n.min(link.len())]) {
            out.push(inode);
        }
    }
}

/// The inode in a `socket:[12345]` link target.
fn socket_inode(target: &[u8]) -> Option<u64> {
    let digits = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// An open `/proc/PID/fd` directory stream.
struct FdDir(NonNull<libc::DIR>);

impl FdDir {
    fn open(pid: u32) -> Option<FdDir> {
        let path = CString::new(format!("/proc/{pid}/fd")).ok()?;
        // SAFETY: `path` is NUL-terminated; opendir opens with O_DIRECTORY | O_CLOEXEC.
        NonNull::new(unsafe { libc::opendir(path.as_ptr()) }).map(FdDir)
    }

    fn fd(&self) -> libc::c_int {
        // SAFETY: the stream is open until drop.
        unsafe { libc::dirfd(self.0.as_ptr()) }
    }

    /// The next entry's name; `None` at the end or on an error (the process exited).
    fn next_name(&self) -> Option<&CStr> {
        // SAFETY: the stream is open; the returned entry stays valid until the next readdir or
        // closedir, and the borrow of `self` keeps both from happening while `name` lives.
        unsafe {
            let entry = libc::readdir64(self.0.as_ptr());
            if entry.is_null() {
                return None;
            }
            Some(CStr::from_ptr((*entry).d_name.as_ptr()))
        }
    }
}

impl Drop for FdDir {
    fn drop(&mut self) {
        // SAFETY: opened by opendir and closed only here.
        unsafe { libc::closedir(self.0.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    fn inode_of(fd: &impl AsRawFd) -> u64 {
        // SAFETY: fstat writes into the zeroed struct we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
        st.st_ino
    }

    fn me() -> ProcessRef {
        ProcessRef::of(std::process::id()).unwrap()
    }

    #[test]
    fn link_targets_parse_only_as_sockets() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"socket:[12a]"), None);
        assert_eq!(socket_inode(b"socket:[99999999999999999999999]"), None);
        assert_eq!(socket_inode(b"pipe:[12345]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"anon_inode:[eventpoll]"), None);
    }

    #[test]
    fn finds_our_own_tcp_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let owners = scan_socket_owners(None);
        for ino in [inode_of(&listener), inode_of(&client)] {
            let found = owners
                .get(&ino)
                .unwrap_or_else(|| panic!("inode {ino} has no owner"));
            assert!(found.contains(&me()), "{found:?}");
        }
    }

    #[test]
    fn wanted_limits_the_result_and_empty_wanted_returns_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _other = TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = inode_of(&listener);
        let wanted = HashSet::from([ino]);
        let owners = scan_socket_owners(Some(&wanted));
        assert_eq!(owners.keys().copied().collect::<Vec<_>>(), vec![ino]);
        assert!(scan_socket_owners(Some(&HashSet::new())).is_empty());
    }

    #[test]
    fn a_socket_shared_with_a_child_has_both_owners_once_each() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // Two extra descriptors for the same socket in this process: still one owner entry.
        let dup: OwnedFd = listener.try_clone().unwrap().into();
        let for_child: OwnedFd = listener.try_clone().unwrap().into();
        // The child gets the socket as stdin, as a pre-fork server's workers inherit theirs.
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::from(for_child))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let ino = inode_of(&listener);
        let deadline = Instant::now() + Duration::from_secs(5);
        let owners = loop {
            let owners = scan_socket_owners(Some(&HashSet::from([ino])));
            if owners
                .get(&ino)
                .is_some_and(|o| o.iter().any(|p| p.comm == "sleep"))
            {
                break owners;
            }
            assert!(
                Instant::now() < deadline,
                "child never showed as an owner: {owners:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let _ = child.kill();
        let _ = child.wait();
        let found = &owners[&ino];
        // Other tests in this binary fork children that hold every descriptor of ours until
        // they exec, so more owners may show up; ours must be there exactly once each.
        assert!(found.contains(&me()), "{found:?}");
        assert!(found.contains(&ProcessRef {
            pid: child.id(),
            comm: "sleep".into()
        }));
        assert_pids_unique(found);
        drop(dup);
    }

    fn assert_pids_unique(found: &[ProcessRef]) {
        let mut pids: Vec<u32> = found.iter().map(|p| p.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        assert_eq!(pids.len(), found.len(), "{found:?}");
    }

    #[test]
    fn agrees_with_ss_on_the_listener_owner() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let out = Command::new("ss")
            .args(["-ltnpH", "sport", "=", &format!(":{port}")])
            .output()
            .unwrap();
        let ss = String::from_utf8_lossy(&out.stdout);
        let owners = scan_socket_owners(Some(&HashSet::from([inode_of(&listener)])));
        let pids: Vec<u32> = owners.values().flatten().map(|p| p.pid).collect();
        assert!(pids.contains(&std::process::id()), "{pids:?}");
        assert!(
            ss.contains(&format!("pid={},", std::process::id())),
            "ss says: {ss}"
        );
    }

    #[test]
    fn processes_exiting_during_the_scan_are_skipped() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = inode_of(&listener);
        // A shell that forks and exits processes as fast as it can; its children do not hold
        // our socket.
        let mut churn = Command::new("sh")
            .args(["-c", "while :; do /bin/true; done"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        for _ in 0..20 {
            let owners = scan_socket_owners(None);
            let found = owners.get(&ino).expect("our listener is found");
            assert!(found.contains(&me()), "{found:?}");
            assert_pids_unique(found);
        }
        let _ = churn.kill();
        let _ = churn.wait();
    }

    /// Opens 18k socket descriptors in this process and times full and filtered scans:
    /// `cargo test -p tcptrace --release -- --ignored --nocapture scan_speed`.
    #[test]
    #[ignore]
    fn scan_speed() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write the struct we own; raising the soft limit
        // up to the hard one affects nothing else.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = lim.rlim_max.min(65536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        let time = |label: &str, wanted: Option<&HashSet<u64>>| {
            let mut best = Duration::MAX;
            let mut owners = HashMap::new();
            for _ in 0..5 {
                let t = Instant::now();
                owners = scan_socket_owners(wanted);
                best = best.min(t.elapsed());
            }
            let fds: usize = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(crate::owner::process::open_fds)
                .sum();
            eprintln!(
                "{label}: {} sockets owned, {fds} fds on the host, best {best:?}",
                owners.len()
            );
            best
        };
        time("host as is", None);
        let pairs: Vec<_> = (0..9_000).map(|_| UnixStream::pair().unwrap()).collect();
        let all = time("plus 18k socket fds", None);
        let wanted = HashSet::from([inode_of(&pairs[0].0)]);
        time("plus 18k socket fds, one wanted", Some(&wanted));
        assert!(all < Duration::from_secs(1));
    }
}
