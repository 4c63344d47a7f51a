//! Connects that failed, by process, destination and errno: what the application saw
//! `connect()` return (EADDRNOTAVAIL when ports ran out, ECONNREFUSED, ETIMEDOUT, ...).

use std::net::SocketAddr;

use hashbrown::HashMap;

use crate::lifecycle::{Comm, Owner};

/// One (process, destination, errno).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectFailureKey {
    /// None when the connect's process is not known.
    pub owner: Option<Owner>,
    pub dest: SocketAddr,
    pub errno: u16,
}

/// Failed connects, bounded like the group-by tables.
#[derive(Clone, Debug, Default)]
pub struct ConnectFailures {
    counts: HashMap<ConnectFailureKey, u64>,
    max: usize,
    /// Failures of keys that did not fit (counted in `total` only).
    pub dropped: u64,
    pub total: u64,
}

impl ConnectFailures {
    pub fn new(max: usize) -> ConnectFailures {
        ConnectFailures {
            max,
            ..ConnectFailures::default()
        }
    }

    pub fn record(&mut self, owner: Option<Owner>, dest: SocketAddr, errno: u16) {
        self.total += 1;
        let key = ConnectFailureKey { owner, dest, errno };
        if let Some(n) = self.counts.get_mut(&key) {
            *n += 1;
        } else if self.counts.len() < self.max {
            self.counts.insert(key, 1);
        } else {
            self.dropped += 1;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ConnectFailureKey, u64)> {
        self.counts.iter().map(|(k, n)| (k, *n))
    }

    /// Rows, most failures first, at most `top` (0: all).
    pub fn rows(&self, top: usize) -> Vec<ConnectFailureRow> {
        let mut v: Vec<(&ConnectFailureKey, u64)> = self.iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        if top > 0 {
            v.truncate(top);
        }
        v.into_iter()
            .map(|(k, count)| ConnectFailureRow {
                pid: k.owner.map_or(0, |o| o.pid),
                comm: k.owner.map(|o| o.comm),
                addr: k.dest.ip().to_string(),
                port: k.dest.port(),
                errno: errno_name(k.errno),
                count,
            })
            .collect()
    }

    pub fn heap_bytes(&self) -> usize {
        self.counts.allocation_size()
    }
}

/// One row of `report --json`'s `connect_failures`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ConnectFailureRow {
    /// 0 when the process is not known.
    pub pid: u32,
    pub comm: Option<Comm>,
    /// Destination address and port.
    pub addr: String,
    pub port: u16,
    /// The errno's name (`ECONNREFUSED`), or `errno N` for one not listed here.
    pub errno: String,
    pub count: u64,
}

/// The errnos a TCP connect can end with, by name. Hand-rolled: libc has the numbers but not
/// the names.
const NAMES: [(i32, &str); 15] = [
    (libc::ECONNREFUSED, "ECONNREFUSED"),
    (libc::EADDRNOTAVAIL, "EADDRNOTAVAIL"),
    (libc::ETIMEDOUT, "ETIMEDOUT"),
    (libc::EHOSTUNREACH, "EHOSTUNREACH"),
    (libc::ENETUNREACH, "ENETUNREACH"),
    (libc::ECONNRESET, "ECONNRESET"),
    (libc::ECONNABORTED, "ECONNABORTED"),
    (libc::EHOSTDOWN, "EHOSTDOWN"),
    (libc::ENETDOWN, "ENETDOWN"),
    (libc::EACCES, "EACCES"),
    (libc::EPERM, "EPERM"),
    (libc::EPROTO, "EPROTO"),
    (libc::ENOBUFS, "ENOBUFS"),
    (libc::EADDRINUSE, "EADDRINUSE"),
    (libc::EPIPE, "EPIPE"),
];

/// The name of an errno `connect()` can return, if it is one of those.
pub fn errno_static(errno: u16) -> Option<&'static str> {
    NAMES
        .iter()
        .find(|(e, _)| *e == i32::from(errno))
        .map(|(_, n)| *n)
}

/// The name of an errno (`ECONNREFUSED`), or `errno N`.
pub fn errno_name(errno: u16) -> String {
    errno_static(errno).map_or_else(|| format!("errno {errno}"), String::from)
}

/// The trace line's note for a failed connect.
pub fn connect_note(errno: u16) -> &'static str {
    match errno_static(errno) {
        Some("ECONNREFUSED") => "connect_failed:ECONNREFUSED",
        Some("EADDRNOTAVAIL") => "connect_failed:EADDRNOTAVAIL",
        Some("ETIMEDOUT") => "connect_failed:ETIMEDOUT",
        Some("EHOSTUNREACH") => "connect_failed:EHOSTUNREACH",
        Some("ENETUNREACH") => "connect_failed:ENETUNREACH",
        _ => "connect_failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(pid: u32) -> Option<Owner> {
        Some(Owner {
            pid,
            comm: Comm::new("client"),
            cgroup_id: 0,
        })
    }

    #[test]
    fn counts_per_process_destination_and_errno_within_the_bound() {
        let mut f = ConnectFailures::new(2);
        let d: SocketAddr = "10.0.0.1:80".parse().unwrap();
        f.record(owner(1), d, libc::ECONNREFUSED as u16);
        f.record(owner(1), d, libc::ECONNREFUSED as u16);
        f.record(owner(1), d, libc::EADDRNOTAVAIL as u16);
        f.record(owner(2), d, libc::ETIMEDOUT as u16);
        let rows = f.rows(0);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].errno.as_str(), rows[0].count), ("ECONNREFUSED", 2));
        assert_eq!(rows[1].errno, "EADDRNOTAVAIL");
        assert_eq!((f.total, f.dropped), (4, 1));
        assert_eq!(errno_name(200), "errno 200");
    }
}
