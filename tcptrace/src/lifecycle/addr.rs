//! Compact socket addresses: an IPv4 address is stored inline in 4 bytes, an IPv6 address is
//! interned once and referred to by a 4-byte index. A socket's two addresses share one family.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::intern::{Interned, Pool};

impl Interned for Ipv6Addr {
    type Key = Ipv6Addr;
    fn key(&self) -> Ipv6Addr {
        *self
    }
}

/// IPv6 addresses shared by reference-counted socket entries.
pub(super) type V6Pool = Pool<Ipv6Addr>;

/// A socket's addresses as the table stores them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub(super) struct Tuple {
    pub v6: bool,
    /// IPv4 address as a big-endian u32, or an index into [`V6Pool`].
    pub lip: u32,
    pub rip: u32,
    pub lport: u16,
    pub rport: u16,
}

impl Tuple {
    /// Known well enough to be indexed: a bound local port and either a peer or a listener.
    pub fn is_complete(&self, listener: bool) -> bool {
        self.lport != 0 && (self.rport != 0 || listener)
    }

    pub fn reversed(&self) -> Tuple {
        Tuple {
            v6: self.v6,
            lip: self.rip,
            rip: self.lip,
            lport: self.rport,
            rport: self.lport,
        }
    }
}

fn v4(a: &IpAddr) -> Option<u32> {
    match a {
        IpAddr::V4(a) => Some(u32::from(*a)),
        IpAddr::V6(_) => None,
    }
}

/// Looks up the compact form of an address pair without interning anything: `None` when an IPv6
/// address is not in the pool (then no stored socket can have it) or the families differ.
pub(super) fn lookup(pool: &V6Pool, local: &SocketAddr, remote: &SocketAddr) -> Option<Tuple> {
    let (lip, rip, v6) = match (local.ip(), remote.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (v4(&local.ip())?, v4(&remote.ip())?, false),
        (IpAddr::V6(l), IpAddr::V6(r)) => (pool.find(&l)?, pool.find(&r)?, true),
        _ => return None,
    };
    Some(Tuple {
        v6,
        lip,
        rip,
        lport: local.port(),
        rport: remote.port(),
    })
}

/// Interns an address pair (one reference per IPv6 address). A mixed pair, which the kernel never
/// reports, is stored as IPv6 with the IPv4 side mapped.
pub(super) fn acquire(pool: &mut V6Pool, local: &SocketAddr, remote: &SocketAddr) -> Tuple {
    let (lip, rip, v6) = match (local.ip(), remote.ip()) {
        (IpAddr::V4(l), IpAddr::V4(r)) => (u32::from(l), u32::from(r), false),
        (l, r) => (pool.acquire(&to_v6(l)), pool.acquire(&to_v6(r)), true),
    };
    Tuple {
        v6,
        lip,
        rip,
        lport: local.port(),
        rport: remote.port(),
    }
}

pub(super) fn release(pool: &mut V6Pool, t: &Tuple) {
    if t.v6 {
        pool.release(t.lip);
        pool.release(t.rip);
    }
}

fn to_v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

pub(super) fn ip(pool: &V6Pool, v6: bool, x: u32) -> IpAddr {
    if v6 {
        IpAddr::V6(pool.get(x))
    } else {
        IpAddr::V4(Ipv4Addr::from(x))
    }
}

pub(super) fn local(pool: &V6Pool, t: &Tuple) -> SocketAddr {
    SocketAddr::new(ip(pool, t.v6, t.lip), t.lport)
}

pub(super) fn remote(pool: &V6Pool, t: &Tuple) -> SocketAddr {
    SocketAddr::new(ip(pool, t.v6, t.rip), t.rport)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_inline_and_ipv6_is_shared() {
        let mut pool = V6Pool::new();
        let l: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let r: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let t = acquire(&mut pool, &l, &r);
        assert!(!t.v6);
        assert_eq!(pool.len(), 0);
        assert_eq!(local(&pool, &t), l);
        assert_eq!(remote(&pool, &t), r);
        assert_eq!(lookup(&pool, &l, &r), Some(t));

        let l6: SocketAddr = "[::1]:80".parse().unwrap();
        let r6: SocketAddr = "[::1]:40000".parse().unwrap();
        assert_eq!(lookup(&pool, &l6, &r6), None, "not interned yet");
        let a = acquire(&mut pool, &l6, &r6);
        let b = acquire(&mut pool, &r6, &l6);
        assert_eq!(pool.len(), 1, "one copy of ::1");
        assert_eq!(lookup(&pool, &l6, &r6), Some(a));
        assert_eq!(b, a.reversed());
        assert_eq!(remote(&pool, &b), l6);
        release(&mut pool, &a);
        assert_eq!(pool.len(), 1);
        release(&mut pool, &b);
        assert_eq!(pool.len(), 0);
        assert_eq!(lookup(&pool, &l6, &r6), None);
    }
}
