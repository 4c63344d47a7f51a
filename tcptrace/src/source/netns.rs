//! Every network namespace on the host, and the TCP table of each one, read from inside it.
//!
//! inet_diag dumps only the namespace of the netlink socket that asks (`sock_net(skb->sk)` in
//! <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/inet_diag.c>), and a socket belongs to
//! the namespace of the thread that created it (`current->nsproxy->net_ns` in `sock_create`,
//! <https://github.com/torvalds/linux/blob/v6.1/net/socket.c>). So each namespace is dumped by a
//! dedicated thread that enters it with `setns(CLONE_NEWNET)`, which moves only the calling
//! thread (<https://github.com/torvalds/linux/blob/v6.1/kernel/nsproxy.c>). The thread exits
//! when the scan is done; the main thread and tokio's workers never change namespace.
//!
//! Namespaces are found in two places: `/proc/PID/ns/net` of every process (thread-group leaders
//! only; a thread that entered another namespace on its own is not seen), and the bind mounts
//! under `/run/netns` that `ip netns add` creates, which keep a namespace alive with no process
//! in it. Entering needs CAP_SYS_ADMIN (`netns_install` in
//! <https://github.com/torvalds/linux/blob/v6.1/net/core/net_namespace.c>).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::source::snapshot::{KernelSocket, Snapshot};
use crate::source::sock_diag::{self, SockDiagError};

/// Where `ip netns add NAME` bind-mounts the namespaces it names.
const NAMED_NETNS_DIR: &str = "/run/netns";
/// The calling thread's namespace: a thread can be in another namespace than its process.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// How long `dump_all_namespaces` keeps entering namespaces; the rest are counted in
/// `NetnsScan::not_reached` rather than stalling the caller.
///
/// Entering a namespace and opening its socket take about 10 us. The dump itself costs far more,
/// and not for its rows: namespaces share one established-socket hash table (unless created with
/// `net.ipv4.tcp_child_ehash_entries`), and every dump walks all its buckets and skips other
/// namespaces' sockets (`inet_diag_dump_icsk` in
/// <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/inet_diag.c>), once per address family.
/// With 262,144 buckets (24 GB of RAM) that is about 0.23 ms per family, so about 0.5 ms per
/// namespace and some 4,000 namespaces in this budget; the table grows with RAM.
pub const DEFAULT_SCAN_BUDGET: Duration = Duration::from_secs(2);

/// One network namespace and a path that enters it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsRef {
    /// The namespace's inode (`ip netns identify`, `ls -L -i /proc/PID/ns/net`): what
    /// `KernelSocket::netns` and the kernel probe's netns field hold.
    pub inode: u32,
    /// `/run/netns/NAME` for a named namespace, else `/proc/PID/ns/net` of one process in it.
    pub path: PathBuf,
    /// The `ip netns` name, if the namespace has one.
    pub name: Option<String>,
}

/// The result of dumping several namespaces: one snapshot of all their sockets, and what was
/// left out and why.
#[derive(Debug, Default)]
pub struct NetnsScan {
    /// Every socket of every namespace dumped; `taken_ns` is taken before the first dump.
    pub snapshot: Snapshot,
    /// The namespaces dumped, in order, each with the CLOCK_MONOTONIC time its own dump began.
    /// A namespace not listed here was not read: absence of its sockets means nothing.
    pub dumped: Vec<(u32, u64)>,
    /// Namespaces that disappeared between listing and entering (quietly skipped).
    pub vanished: usize,
    /// Namespaces that exist but could not be dumped (no CAP_SYS_ADMIN, netlink errors).
    pub failed: Vec<(u32, SockDiagError)>,
    /// Namespaces left unread because the time budget ran out.
    pub not_reached: usize,
}

/// The calling thread's network namespace inode; 0 if `/proc` cannot tell.
pub fn current_netns() -> u32 {
    ns_link_inode(Path::new(THREAD_NETNS)).unwrap_or(0)
}

/// Every network namespace this process can see, each once: the caller's first, then by inode.
///
/// A named namespace is entered through its `/run/netns` path, which does not go away when a
/// process exits; the others through the lowest pid found in them.
pub fn list_netns() -> Vec<NetnsRef> {
    let mut by_inode = BTreeMap::new();
    named_netns(&mut by_inode);
    process_netns(&mut by_inode);
    let mut out: Vec<NetnsRef> = by_inode.into_values().collect();
    let current = current_netns();
    if let Some(i) = out.iter().position(|ns| ns.inode == current) {
        out[..=i].rotate_right(1);
    }
    out
}

/// Dumps the TCP table of every namespace (`list_netns`) within `DEFAULT_SCAN_BUDGET`.
///
/// Every row carries its namespace inode, so identical 4-tuples in two namespaces stay two rows.
/// Namespaces that vanish mid-scan are skipped; other namespaces that fail are skipped too (use
/// `scan_namespaces` to see them). It fails only when the caller's own namespace was not dumped,
/// as `sock_diag::snapshot` would.
pub fn dump_all_namespaces() -> Result<Snapshot, SockDiagError> {
    let mut scan = scan_namespaces(&list_netns(), DEFAULT_SCAN_BUDGET)?;
    let current = current_netns();
    if let Some(i) = scan.failed.iter().position(|(ino, _)| *ino == current) {
        return Err(scan.failed.swap_remove(i).1);
    }
    if !scan.dumped.iter().any(|&(ino, _)| ino == current) {
        // Without /proc nothing was listed, and an empty snapshot would read as "no sockets".
        return Err(SockDiagError::Netns(io::Error::new(
            io::ErrorKind::NotFound,
            "the caller's network namespace is not visible in /proc",
        )));
    }
    Ok(scan.snapshot)
}

/// Dumps the namespaces in order, from one dedicated thread, until `budget` is spent. Fails only
/// when that thread cannot be started.
pub fn scan_namespaces(
    namespaces: &[NetnsRef],
    budget: Duration,
) -> Result<NetnsScan, SockDiagError> {
    let taken_ns = crate::clock::monotonic_ns();
    let deadline = Instant::now() + budget;
    let mut scan = on_netns_thread(|| {
        let mut scan = NetnsScan::default();
        for (i, ns) in namespaces.iter().enumerate() {
            if Instant::now() >= deadline {
                scan.not_reached = namespaces.len() - i;
                break;
            }
            match enter_and_dump(ns) {
                Ok((started, rows)) => {
                    scan.dumped.push((ns.inode, started));
                    scan.snapshot.sockets.extend(rows);
                }
                Err(SockDiagError::NetnsGone { .. }) => scan.vanished += 1,
                Err(e) => scan.failed.push((ns.inode, e)),
            }
        }
        scan
    })?;
    scan.snapshot.taken_ns = taken_ns;
    Ok(scan)
}

/// Dumps one namespace from a dedicated thread. `SockDiagError::NetnsGone` when it no longer
/// exists (or its path now leads elsewhere).
pub fn dump_in(ns: &NetnsRef) -> Result<Vec<KernelSocket>, SockDiagError> {
    on_netns_thread(|| enter_and_dump(ns))?.map(|(_, rows)| rows)
}

/// Runs `work` on a fresh thread that may change its network namespace, and returns its result.
fn on_netns_thread<T: Send>(work: impl FnOnce() -> T + Send) -> Result<T, SockDiagError> {
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("tcptrace-netns".into())
            .spawn_scoped(scope, work)
            .map_err(SockDiagError::NetnsWorker)?;
        Ok(worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })
}

/// Moves the calling thread into `ns` and dumps it there. Only for threads `on_netns_thread`
/// started: the thread stays in `ns` afterwards.
fn enter_and_dump(ns: &NetnsRef) -> Result<(u64, Vec<KernelSocket>), SockDiagError> {
    let gone = SockDiagError::NetnsGone { inode: ns.inode };
    let file = match File::open(&ns.path) {
        Ok(f) => f,
        Err(e) if is_gone(&e) => return Err(gone),
        Err(e) => {
            return Err(SockDiagError::Setns {
                inode: ns.inode,
                source: e,
            });
        }
    };
    // A process that exited and whose pid was reused now shows another namespace at this path.
    match file.metadata() {
        Ok(meta) if meta.ino() == u64::from(ns.inode) => {}
        _ => return Err(gone),
    }
    if current_netns() != ns.inode {
        // SAFETY: setns on a descriptor we hold; it changes only this thread's namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(SockDiagError::Setns {
                inode: ns.inode,
                source: io::Error::last_os_error(),
            });
        }
    }
    let started = crate::clock::monotonic_ns();
    sock_diag::dump_tcp(ns.inode).map(|rows| (started, rows))
}

/// The process exited (its `/proc/PID` is gone, or it is a zombie whose namespaces were
/// released), or the named namespace was deleted.
fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Named namespaces: the bind mounts in `/run/netns`, sorted by name so that a namespace with two
/// names always shows the same one. A leftover file with nothing mounted on it is skipped.
fn named_netns(by_inode: &mut BTreeMap<u32, NetnsRef>) {
    let Ok(entries) = std::fs::read_dir(NAMED_NETNS_DIR) else {
        return;
    };
    // Every namespace file lives on the one internal nsfs mount: same device as ours.
    let Ok(nsfs_dev) = std::fs::metadata(THREAD_NETNS).map(|m| m.dev()) else {
        return;
    };
    let mut named: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    named.sort();
    for (name, path) in named {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let Ok(inode) = u32::try_from(meta.ino()) else {
            continue;
        };
        if meta.dev() != nsfs_dev {
            continue;
        }
        by_inode.entry(inode).or_insert(NetnsRef {
            inode,
            path,
            name: Some(name),
        });
    }
}

/// The namespace of every process, through the lowest pid in each.
fn process_netns(by_inode: &mut BTreeMap<u32, NetnsRef>) {
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut pids: Vec<u32> = proc_dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        // Gone, a zombie, or not ours to look at (ptrace access check): nothing to enter.
        let Some(inode) = ns_link_inode(&path) else {
            continue;
        };
        by_inode.entry(inode).or_insert(NetnsRef {
            inode,
            path,
            name: None,
        });
    }
}

/// The inode in a namespace link's target, `net:[4026531840]` (`ns_get_name` in
/// <https://github.com/torvalds/linux/blob/v6.1/fs/nsfs.c>). Reading the link does not open the
/// namespace, so it is the cheap way to identify one.
fn ns_link_inode(path: &Path) -> Option<u32> {
    let target = std::fs::read_link(path).ok()?;
    parse_net_link(target.to_str()?)
}

fn parse_net_link(target: &str) -> Option<u32> {
    let digits = target.strip_prefix("net:[")?.strip_suffix(']')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Tests that need no namespace of their own; those that make namespaces (root only) are in
/// `tests/tests/netns_dump.rs`.
#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn link_targets_parse_only_as_net_namespaces() {
        assert_eq!(parse_net_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_net_link("net:[]"), None);
        assert_eq!(parse_net_link("net:[12a]"), None);
        assert_eq!(parse_net_link("net:[99999999999]"), None);
        assert_eq!(parse_net_link("mnt:[4026531840]"), None);
        assert_eq!(parse_net_link("socket:[123]"), None);
    }

    #[test]
    fn current_namespace_is_ours_and_listed_first() {
        let me = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        assert_eq!(current_netns(), me);
        let all = list_netns();
        assert_eq!(all[0].inode, me, "{all:?}");
        let inodes: HashSet<u32> = all.iter().map(|n| n.inode).collect();
        assert_eq!(inodes.len(), all.len(), "each namespace once: {all:?}");
        for ns in &all {
            // The path really enters the namespace it names.
            let ino = std::fs::metadata(&ns.path).map(|m| m.ino() as u32);
            assert!(ino.is_err() || ino.unwrap() == ns.inode, "{ns:?}");
        }
    }
}
