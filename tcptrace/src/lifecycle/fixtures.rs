//! Synthetic event streams shaped like what the kernel emits, for kernel-free tests.

use std::net::SocketAddr;

use tcptrace_common::TcpState;
use tcptrace_common::TcpState::*;

use super::change::Applied;
use super::table::SocketTable;
use crate::event::{Event, SockId, Task, What};
use crate::source::snapshot::{KernelSocket, Snapshot};

pub const NETNS: u32 = 4026531840;
pub const MS: u64 = 1_000_000;
pub const SEC: u64 = 1_000_000_000;

/// Who is current in the kernel when an event fires.
#[derive(Clone, Debug)]
pub enum Ctx {
    /// The socket's own process, in a system call (owner context).
    Owner(u32, &'static str),
    /// Softirq that happened to interrupt this task (on loopback, often the peer).
    Softirq(u32, &'static str),
}

/// A socket as the events name it.
#[derive(Clone, Debug)]
pub struct Sk {
    pub id: SockId,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Builds events with a running clock and fresh socket identities.
pub struct Fx {
    pub ts: u64,
    pub netns: u32,
    /// Identify sockets by skaddr only, as the classic tracepoint path does.
    pub classic: bool,
    /// Every task's cgroup id; None gives each pid its own.
    pub cgroup: Option<u64>,
    next_id: u64,
}

impl Fx {
    pub fn new() -> Fx {
        Fx {
            ts: 1_000 * SEC,
            netns: NETNS,
            classic: false,
            cgroup: None,
            next_id: 1,
        }
    }

    pub fn classic() -> Fx {
        Fx {
            classic: true,
            ..Fx::new()
        }
    }

    pub fn sock(&mut self, local: &str, remote: &str) -> Sk {
        let n = self.next_id;
        self.next_id += 1;
        Sk {
            id: SockId {
                cookie: if self.classic { 0 } else { 1000 + n },
                skaddr: 0xffff_8880_0000_0000 + n * 0x1000,
            },
            local: addr(local),
            remote: addr(remote),
        }
    }

    /// A new socket on the same addresses.
    pub fn renew(&mut self, sk: &Sk) -> Sk {
        let mut s = self.sock("0.0.0.0:0", "0.0.0.0:0");
        s.local = sk.local;
        s.remote = sk.remote;
        s
    }

    /// A new identity with the same kernel address (classic path: the allocator reuses it).
    pub fn same_skaddr(&mut self, sk: &Sk, local: &str, remote: &str) -> Sk {
        let mut s = self.sock(local, remote);
        s.id.skaddr = sk.id.skaddr;
        s
    }

    pub fn step(&mut self, ns: u64) -> &mut Fx {
        self.ts += ns;
        self
    }

    pub fn ev(&self, sk: &Sk, what: What, ctx: &Ctx) -> Event {
        let (pid, comm, owner_context) = match ctx {
            Ctx::Owner(p, c) => (*p, *c, true),
            Ctx::Softirq(p, c) => (*p, *c, false),
        };
        Event {
            ts_ns: self.ts,
            sock: sk.id,
            netns: self.netns,
            local: sk.local,
            remote: sk.remote,
            what,
            task: Task {
                pid,
                tid: pid,
                comm: comm.into(),
                cgroup_id: self.cgroup.unwrap_or(100 + pid as u64),
            },
            owner_context,
            from_backup: false,
            connect_end: None,
            timewait_read: None,
        }
    }

    pub fn tr(&self, sk: &Sk, old: TcpState, new: TcpState, ctx: &Ctx) -> Event {
        self.ev(sk, What::Transition { old, new }, ctx)
    }
}

pub const SWAPPER: Ctx = Ctx::Softirq(0, "swapper/1");

/// Where fixture events go: the table alone, or the table and the aggregates.
pub trait Sink {
    fn apply(&mut self, ev: &Event) -> Applied;
}

impl Sink for SocketTable {
    fn apply(&mut self, ev: &Event) -> Applied {
        SocketTable::apply(self, ev)
    }
}

/// A client, a listener and its accepted child on loopback, with each side's process.
pub struct Loopback {
    pub listener: Sk,
    pub client: Sk,
    pub server: Sk,
    pub client_ctx: Ctx,
    pub server_ctx: Ctx,
}

impl Loopback {
    /// `client` connects from `cport` to the server on 127.0.0.1:8080.
    pub fn new(fx: &mut Fx, cport: u16) -> Loopback {
        let c = format!("127.0.0.1:{cport}");
        Loopback {
            listener: fx.sock("0.0.0.0:8080", "0.0.0.0:0"),
            client: fx.sock(&c, "127.0.0.1:8080"),
            server: fx.sock("127.0.0.1:8080", &c),
            client_ctx: Ctx::Owner(200, "curl"),
            server_ctx: Ctx::Owner(100, "server"),
        }
    }

    pub fn peer_softirq(ctx: &Ctx) -> Ctx {
        match ctx {
            Ctx::Owner(p, c) | Ctx::Softirq(p, c) => Ctx::Softirq(*p, c),
        }
    }

    /// listen(): CLOSE -> LISTEN.
    pub fn listen(&self, fx: &mut Fx, t: &mut impl Sink) -> Applied {
        fx.step(MS);
        t.apply(&fx.tr(&self.listener, Close, Listen, &self.server_ctx))
    }

    /// connect() and accept, in loopback order. Softirq events run in the client's context (its
    /// SYN and ACK are processed on its CPU), so they carry the client's pid.
    pub fn connect(&self, fx: &mut Fx, t: &mut impl Sink) {
        let soft = Loopback::peer_softirq(&self.client_ctx);
        // connect(): the local port is picked after the state change.
        let mut syn = self.client.clone();
        syn.local.set_port(0);
        fx.step(MS);
        t.apply(&fx.tr(&syn, Close, SynSent, &self.client_ctx));
        fx.step(10_000);
        t.apply(&fx.tr(&self.client, SynSent, Established, &soft));
        // The child is cloned from the listener: its first event shows the listener's address.
        let mut child = self.server.clone();
        child.local = self.listener.local;
        child.remote = addr("0.0.0.0:0");
        fx.step(10_000);
        t.apply(&fx.tr(&child, Listen, SynRecv, &soft));
        fx.step(1_000);
        t.apply(&fx.tr(&self.server, SynRecv, Established, &soft));
    }

    /// The client closes first; the server's FIN comes `server_delay` later.
    pub fn client_closes(&self, fx: &mut Fx, t: &mut impl Sink) -> Vec<Applied> {
        let soft = Loopback::peer_softirq(&self.client_ctx);
        fx.step(MS);
        let mut out = vec![t.apply(&fx.tr(&self.client, Established, FinWait1, &self.client_ctx))];
        fx.step(10_000);
        out.push(t.apply(&fx.tr(&self.server, Established, CloseWait, &soft)));
        fx.step(1_000);
        out.push(t.apply(&fx.tr(&self.client, FinWait1, FinWait2, &soft)));
        fx.step(1_000);
        // The orphan's FIN_WAIT2 goes to a timewait socket as soon as its FIN is acked.
        out.push(t.apply(&fx.tr(&self.client, FinWait2, Close, &soft)));
        out
    }

    /// The server, in CLOSE_WAIT, finally closes.
    pub fn server_closes(&self, fx: &mut Fx, t: &mut impl Sink) -> Vec<Applied> {
        let soft = Loopback::peer_softirq(&self.server_ctx);
        fx.step(MS);
        let mut out = vec![t.apply(&fx.tr(&self.server, CloseWait, LastAck, &self.server_ctx))];
        fx.step(10_000);
        out.push(t.apply(&fx.tr(&self.server, LastAck, Close, &soft)));
        out
    }
}

/// A row of a kernel dump.
pub fn ks(state: TcpState, local: &str, remote: &str, cookie: u64, inode: u64) -> KernelSocket {
    KernelSocket {
        netns: NETNS,
        state,
        local: addr(local),
        remote: addr(remote),
        cookie,
        inode,
        uid: 0,
        timer_ms: None,
        rqueue: 0,
        wqueue: 0,
        last_recv_ms: None,
        cgroup_id: 0,
    }
}

pub fn snapshot(taken_ns: u64, sockets: Vec<KernelSocket>) -> Snapshot {
    Snapshot { taken_ns, sockets }
}

/// What the kernel programs do in summary mode (`tcptrace-ebpf/src/summary.rs`), in userspace:
/// follows each socket through the transitions it is given and passes on one summary per
/// CLOSE_WAIT entry and per close, and listener and other events as they are. For tests that a
/// table fed summaries ends up where one fed every transition does.
pub struct KernelModel<T: Sink> {
    pub inner: T,
    socks: std::collections::HashMap<u64, Followed>,
}

#[derive(Default)]
struct Followed {
    state: Option<TcpState>,
    entered: u64,
    born: Option<u64>,
    dwell: [u64; tcptrace_common::event::STATE_SLOTS],
    visited: u16,
    known: u16,
    owner: Option<Task>,
    closer: bool,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    passive: bool,
    timewait: Option<TcpState>,
}

impl<T: Sink> KernelModel<T> {
    pub fn new(inner: T) -> KernelModel<T> {
        KernelModel {
            inner,
            socks: Default::default(),
        }
    }
}

impl<T: Sink> Sink for KernelModel<T> {
    fn apply(&mut self, ev: &Event) -> Applied {
        if let What::TimeWaitEnter { substate } = ev.what {
            // Folded into the close record of a socket the kernel follows.
            if let Some(f) = self.socks.get_mut(&ev.sock.skaddr) {
                f.timewait = Some(substate);
                return Applied::default();
            }
            return self.inner.apply(ev);
        }
        let What::Transition { old, new } = ev.what else {
            return self.inner.apply(ev);
        };
        if new == Listen || (old == Listen && new == Close) {
            return self.inner.apply(ev);
        }
        let bit = |s: TcpState| 1u16 << (s as u16);
        let f = self.socks.entry(ev.sock.skaddr).or_default();
        if f.state.is_none() {
            f.state = Some(old);
            if old == Close || old == Listen {
                f.born = Some(ev.ts_ns);
            }
            f.passive = old == Listen || old == SynRecv;
        }
        if old != Close && old != Listen {
            if f.state == Some(old) {
                if f.entered != 0 {
                    f.dwell[old as usize] += ev.ts_ns - f.entered;
                    f.known |= bit(old);
                }
            } else if let Some(s) = f.state {
                f.visited |= bit(s);
                f.known &= !bit(s);
            }
            f.visited |= bit(old);
        }
        f.state = Some(new);
        f.entered = ev.ts_ns;
        if let Some(t) = ev.owner_task() {
            f.owner = Some(t.clone());
            if new == FinWait1 || (old == CloseWait && new == LastAck) {
                f.closer = true;
            }
        }
        if ev.local.port() != 0 && ev.remote.port() != 0 {
            f.local = Some(ev.local);
            f.remote = Some(ev.remote);
        }
        if new != CloseWait && new != Close {
            return Applied::default();
        }
        let stays = crate::event::Stays {
            dwell_ns: f.dwell,
            visited: f.visited,
            known: f.known,
            born_ns: f.born,
            closer: f.closer,
            reset: false,
            repaired: false,
            passive: f.passive,
            err: 0,
            timewait: f.timewait.take(),
        };
        let mut out = ev.clone();
        out.what = What::Summary { old, new, stays };
        out.local = f.local.unwrap_or(ev.local);
        out.remote = f.remote.unwrap_or(ev.remote);
        out.owner_context = f.owner.is_some();
        if let Some(t) = &f.owner {
            out.task = t.clone();
        }
        f.dwell = Default::default();
        f.visited = 0;
        f.known = 0;
        if new == Close {
            self.socks.remove(&ev.sock.skaddr);
        }
        self.inner.apply(&out)
    }
}
