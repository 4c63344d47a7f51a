//! Micro-measurements: events per second through `apply` and bytes per tracked socket.
//!
//! Ignored by default (slow in debug builds). Run them alone, optimised:
//! `cargo test -p tcptrace --release --lib lifecycle::tests::perf -- --ignored --nocapture --test-threads=1`

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use tcptrace_common::TcpState;
use tcptrace_common::TcpState::*;

use super::super::fixtures::{Ctx, Fx, SWAPPER, Sk};
use super::super::table::{Limits, SocketTable};
use crate::event::{Event, SockId};

/// Counts live heap bytes, so the table's footprint can be measured exactly.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: defers to the system allocator; only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Distinct v4 endpoint number `i`.
fn endpoint(i: u32, port_base: u16) -> SocketAddr {
    let ip = Ipv4Addr::from(0x0a00_0000 | (i / 50_000));
    SocketAddr::V4(SocketAddrV4::new(ip, port_base + (i % 50_000) as u16))
}

fn sk(id: u64, local: SocketAddr, remote: SocketAddr) -> Sk {
    Sk {
        id: SockId {
            cookie: id,
            skaddr: id << 12,
        },
        local,
        remote,
    }
}

/// `n` established client sockets, owned by 1000 processes.
fn populate(fx: &mut Fx, t: &mut SocketTable, n: u32, first_id: u64) {
    let peer: SocketAddr = "192.0.2.1:443".parse().unwrap();
    for i in 0..n {
        let s = sk(first_id + i as u64, endpoint(i, 10_000), peer);
        let pid = 1000 + i % 1000;
        t.apply(&fx.tr(&s, Close, SynSent, &Ctx::Owner(pid, "client")));
        fx.step(100);
        t.apply(&fx.tr(&s, SynSent, Established, &SWAPPER));
    }
}

/// A loopback connection storm: 10 events per connection, both ends, client closes first.
fn storm(fx: &mut Fx, conns: u32, first_id: u64) -> Vec<Event> {
    let server: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let cli = Ctx::Owner(77, "loadgen");
    let srv = Ctx::Owner(78, "server");
    let mut out = Vec::with_capacity(conns as usize * 10);
    for i in 0..conns {
        let caddr = SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(0x7f00_0000 | (1 + i / 50_000)),
            10_000 + (i % 50_000) as u16,
        ));
        let id = first_id + 2 * i as u64;
        let c = sk(id, caddr, server);
        let s = sk(id + 1, server, caddr);
        let mut syn = c.clone();
        syn.local.set_port(0);
        let mut child = s.clone();
        child.local = "0.0.0.0:8080".parse().unwrap();
        child.remote = "0.0.0.0:0".parse().unwrap();
        let steps: [(&Sk, TcpState, TcpState, &Ctx); 10] = [
            (&syn, Close, SynSent, &cli),
            (&c, SynSent, Established, &SWAPPER),
            (&child, Listen, SynRecv, &SWAPPER),
            (&s, SynRecv, Established, &SWAPPER),
            (&c, Established, FinWait1, &cli),
            (&s, Established, CloseWait, &SWAPPER),
            (&c, FinWait1, FinWait2, &SWAPPER),
            (&c, FinWait2, Close, &SWAPPER),
            (&s, CloseWait, LastAck, &srv),
            (&s, LastAck, Close, &SWAPPER),
        ];
        for (k, old, new, ctx) in steps {
            fx.step(1_000);
            out.push(fx.tr(k, old, new, ctx));
        }
    }
    out
}

fn rate(live: u32) {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits {
        max_sockets: 4 << 20,
        ..Limits::default()
    });
    let listener = sk(
        1,
        "0.0.0.0:8080".parse().unwrap(),
        "0.0.0.0:0".parse().unwrap(),
    );
    t.apply(&fx.tr(&listener, Close, Listen, &Ctx::Owner(78, "server")));
    populate(&mut fx, &mut t, live, 1 << 32);
    let conns = 100_000;
    let evs = storm(&mut fx, conns, 1 << 40);
    let start = Instant::now();
    let mut applied = 0u64;
    for e in &evs {
        let a = t.apply(e);
        applied += a.changes().len() as u64;
    }
    let dt = start.elapsed();
    assert_eq!(t.counts().get(TimeWait), conns as u64);
    assert_eq!(t.stats().state_mismatches, 0);
    println!(
        "apply: {} live sockets -> {} events in {:?}: {:.2} M events/s ({:.0} ns/event, {} changes)",
        live,
        evs.len(),
        dt,
        evs.len() as f64 / dt.as_secs_f64() / 1e6,
        dt.as_nanos() as f64 / evs.len() as f64,
        applied
    );
}

#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn perf_events_per_second_with_1k_live_sockets() {
    rate(1_000);
}

#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn perf_events_per_second_with_1m_live_sockets() {
    rate(1_000_000);
}

#[test]
#[ignore = "measurement; run with --release --ignored --nocapture --test-threads=1"]
fn perf_bytes_per_tracked_socket() {
    // 917_505 is just past a hash-index doubling (7/8 of 2^20): the worst point.
    for n in [100_000u32, 917_505, 1_000_000, 1_500_000] {
        let before = LIVE.load(Ordering::Relaxed);
        let mut fx = Fx::new();
        let mut t = SocketTable::new(Limits {
            max_sockets: 4 << 20,
            ..Limits::default()
        });
        // Half established, half TIME_WAIT (via a remote peer close).
        populate(&mut fx, &mut t, n, 1 << 32);
        let peer: SocketAddr = "192.0.2.1:443".parse().unwrap();
        for i in 0..n / 2 {
            let s = sk((1 << 32) + i as u64, endpoint(i, 10_000), peer);
            t.apply(&fx.tr(
                &s,
                Established,
                FinWait1,
                &Ctx::Owner(1000 + i % 1000, "client"),
            ));
            t.apply(&fx.tr(&s, FinWait1, FinWait2, &SWAPPER));
            t.apply(&fx.tr(&s, FinWait2, Close, &SWAPPER));
        }
        let live = LIVE.load(Ordering::Relaxed) - before;
        assert_eq!(t.len(), n as usize);
        println!(
            "memory: {} sockets ({} TIME_WAIT): {:.1} bytes/socket measured by the allocator, \
             {:.1} by capacity accounting (entry {} B)",
            n,
            t.counts().get(TimeWait),
            live as f64 / n as f64,
            t.heap_bytes() as f64 / n as f64,
            std::mem::size_of::<super::super::entry::Entry>()
        );
    }
}
