//! Who owns a socket, how we know, and the interned store that keeps one copy per process.

use std::fmt;

use super::intern::{Interned, Pool};
use crate::event::Task;

/// A task name as the kernel keeps it: at most 15 bytes, NUL padded (`TASK_COMM_LEN`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Comm([u8; 16]);

/// One 16-byte word rather than a length-prefixed byte slice: owners are hashed several times
/// per event (owner pool, group-by tables).
impl std::hash::Hash for Comm {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u128(u128::from_ne_bytes(self.0));
    }
}

impl Comm {
    /// Truncates to 15 bytes on a character boundary, as the kernel would keep it.
    pub fn new(s: &str) -> Comm {
        let mut end = s.len().min(15);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut b = [0u8; 16];
        b[..end].copy_from_slice(&s.as_bytes()[..end]);
        Comm(b)
    }

    pub fn as_str(&self) -> &str {
        let n = self.0.iter().position(|&b| b == 0).unwrap_or(16);
        // Built from a &str cut on a character boundary, so always UTF-8.
        std::str::from_utf8(&self.0[..n]).unwrap_or("?")
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The process a socket belongs to.
///
/// Identity is (pid, comm): the cgroup id is learned later for some sockets (the fd scan
/// brings none), and one process must stay one row in every table.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Owner {
    /// Thread group id (what `ps` calls the pid). Never 0 for a process; 0 marks the history
    /// of ended processes folded by command (see [`Owner::ended`]).
    pub pid: u32,
    /// The task name (for kernel-context attribution, the name of the thread that made the call).
    pub comm: Comm,
    /// cgroup v2 id, 0 when unknown (the fd scan does not read it).
    pub cgroup_id: u64,
}

impl Owner {
    /// The key under which the history of this process is kept once it has ended: its command
    /// and cgroup (container), without the pid.
    pub fn ended(&self) -> Owner {
        Owner { pid: 0, ..*self }
    }

    /// Whether this is the folded history of ended processes rather than one process.
    pub fn is_ended(&self) -> bool {
        self.pid == 0
    }

    /// A process is (pid, comm); the cgroup tells apart ended processes folded by command,
    /// so the same command in two containers stays two rows.
    fn key(&self) -> (u32, Comm, u64) {
        let cg = if self.is_ended() { self.cgroup_id } else { 0 };
        (self.pid, self.comm, cg)
    }
}

impl PartialEq for Owner {
    fn eq(&self, o: &Owner) -> bool {
        self.key() == o.key()
    }
}

impl Eq for Owner {}

impl std::hash::Hash for Owner {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.key().hash(h)
    }
}

impl PartialOrd for Owner {
    fn partial_cmp(&self, o: &Owner) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Owner {
    fn cmp(&self, o: &Owner) -> std::cmp::Ordering {
        self.key().cmp(&o.key())
    }
}

impl From<&Task> for Owner {
    fn from(t: &Task) -> Owner {
        Owner {
            pid: t.pid,
            comm: Comm::new(&t.comm),
            cgroup_id: t.cgroup_id,
        }
    }
}

/// How the owner of a socket was learned, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    /// The socket's own process made a system call that changed its state (connect, listen,
    /// close): the task current in the kernel was the owner. Exact at that moment.
    KernelContext,
    /// The socket holder's fd was found by scanning `/proc/*/fd` (periodic scan). Exact at scan
    /// time, and the only way to name the holder of a socket after fork or fd passing.
    FdScan,
    /// Found in the kernel socket table (it predates tracing or its events were lost) and
    /// attributed by the fd scan taken with that snapshot.
    Snapshot,
    /// An accepted socket inherits the owner of the listener it was accepted from. A guess:
    /// the process that listens usually accepts, but it may hand the socket to another.
    Listener,
}

impl Attribution {
    pub(super) const fn to_u8(self) -> u8 {
        match self {
            Attribution::KernelContext => 1,
            Attribution::FdScan => 2,
            Attribution::Snapshot => 3,
            Attribution::Listener => 4,
        }
    }

    pub(super) const fn from_u8(v: u8) -> Option<Attribution> {
        match v {
            1 => Some(Attribution::KernelContext),
            2 => Some(Attribution::FdScan),
            3 => Some(Attribution::Snapshot),
            4 => Some(Attribution::Listener),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Attribution::KernelContext => "kernel_context",
            Attribution::FdScan => "fd_scan",
            Attribution::Snapshot => "snapshot",
            Attribution::Listener => "listener",
        }
    }
}

/// Owner reference stored in a socket entry: 0 is "unknown", otherwise pool index + 1.
pub(super) type OwnerRef = u32;

impl Interned for Owner {
    /// A process is its pid and name; the cgroup id is learned later for some sockets.
    type Key = (u32, Comm);
    fn key(&self) -> (u32, Comm) {
        (self.pid, self.comm)
    }
    /// A known non-zero cgroup id replaces an unknown one (the fd scan brings none).
    fn update(&mut self, newer: &Owner) {
        if newer.cgroup_id != 0 {
            self.cgroup_id = newer.cgroup_id;
        }
    }
}

/// One copy of each owner, shared by all its sockets.
pub(super) struct OwnerPool(Pool<Owner>);

impl OwnerPool {
    pub fn new() -> OwnerPool {
        OwnerPool(Pool::new())
    }

    /// Takes one reference to `owner`.
    pub fn acquire(&mut self, owner: &Owner) -> OwnerRef {
        self.0.acquire(owner) + 1
    }

    /// Takes one more reference to an owner already held.
    pub fn retain(&mut self, r: OwnerRef) -> OwnerRef {
        if r != 0 {
            self.0.retain(r - 1);
        }
        r
    }

    pub fn release(&mut self, r: OwnerRef) {
        if r != 0 {
            self.0.release(r - 1);
        }
    }

    pub fn get(&self, r: OwnerRef) -> Option<Owner> {
        (r != 0).then(|| self.0.get(r - 1))
    }

    /// Whether some socket entry still refers to this process.
    pub fn contains(&self, owner: &Owner) -> bool {
        self.0.find(&Interned::key(owner)).is_some()
    }

    /// Heap bytes held (capacity, not length).
    pub fn heap_bytes(&self) -> usize {
        self.0.heap_bytes()
    }

    /// Owners currently referenced (for tests and memory accounting).
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(pid: u32, comm: &str, cg: u64) -> Owner {
        Owner {
            pid,
            comm: Comm::new(comm),
            cgroup_id: cg,
        }
    }

    #[test]
    fn comm_keeps_at_most_15_bytes_on_a_char_boundary() {
        assert_eq!(
            Comm::new("a-very-long-process-name").as_str(),
            "a-very-long-pro"
        );
        assert_eq!(Comm::new("ééééééééé").as_str(), "ééééééé");
        assert_eq!(Comm::new("").as_str(), "");
    }

    #[test]
    fn pool_shares_one_copy_and_frees_it_with_the_last_reference() {
        let mut p = OwnerPool::new();
        let a = p.acquire(&owner(10, "nginx", 0));
        let b = p.acquire(&owner(10, "nginx", 77));
        assert_eq!(a, b);
        assert_eq!(
            p.get(a).unwrap().cgroup_id,
            77,
            "known cgroup replaces unknown"
        );
        let c = p.acquire(&owner(11, "curl", 1));
        assert_ne!(a, c);
        assert_eq!(p.len(), 2);
        p.release(a);
        assert_eq!(p.len(), 2);
        p.release(b);
        assert_eq!(p.len(), 1);
        // The freed slot is reused and the index no longer finds the old owner.
        let d = p.acquire(&owner(12, "java", 0));
        assert_eq!(d, a);
        assert_eq!(p.get(d).unwrap().pid, 12);
        let e = p.acquire(&owner(10, "nginx", 0));
        assert_ne!(e, d);
        assert_eq!(p.get(e).unwrap().cgroup_id, 0);
    }
}
