//! Aggregator throughput with no kernel: a synthetic event stream, shaped like a loopback
//! connection storm, replayed through decode -> lifecycle -> aggregate.
//!
//! ```text
//! cargo run --release -p tcptrace --example replay -- --live 1000000 [--conns 200000]
//! ```
//! First `--live` established client sockets are loaded (2 events each), then `--conns`
//! connections run their 10 transitions each (both ends, client closes first) while the live
//! sockets stay in the table. Records go through the ring buffer's byte layout and
//! `event::decode`, as they do from the kernel, then `SocketTable::apply_into` and
//! `Aggregates::observe_applied`, as in `Live::apply`.
//!
//! Events are 1 µs apart in event time. TIME_WAIT lasts `--timewait-ms` of event time (default
//! 10 ms) and expiry runs every 10 ms of event time, as `Live::tick` would, so the
//! working set stays the live sockets plus a few thousand timewait sockets rather than growing
//! with the storm. Expiry is timed apart and reported per call: its cost follows what expires
//! (a deadline heap), not the events replayed.
//!
//! Prints one JSON line: events/s (one thread, so per core; `events_per_cpu_s` divides by the
//! thread's CPU time instead of the wall clock, steadier on a shared machine), the table's
//! bytes per live socket (its own accounting, and resident memory growth while loading), and
//! VmHWM. Run one size per process so that VmHWM belongs to that size.
//!
//! Instruction counts per event, which unlike wall-clock time are repeatable on a shared machine:
//! ```text
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*replay_chunk*' \
//!     target/release/examples/replay --live 1000 --conns 20000
//! callgrind_annotate --inclusive=yes callgrind.out.PID | grep -E 'replay_chunk|expire_scan'
//! ```
//! (`replay_chunk` minus `expire_scan`, divided by `storm_events`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Instant;

use tcptrace::aggregate::{AggLimits, Aggregates};
use tcptrace::event::{Event, SockId, Task, What, decode, encode, raw_bytes};
use tcptrace::lifecycle::{Applied, Limits, SocketTable};
use tcptrace_common::TcpState::{self, *};
use tcptrace_common::event::RAW_EVENT_SIZE;

const NETNS: u32 = 4026531840;
/// Connections generated, then replayed, per chunk: keeps the encoded stream (104 bytes per
/// event) out of the peak memory figure.
const CHUNK_CONNS: u64 = 10_000;

struct Opts {
    live: u64,
    conns: u64,
    timewait_ms: u64,
}

fn parse() -> Opts {
    let mut o = Opts {
        live: 1000,
        conns: 200_000,
        timewait_ms: 10,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v: u64 = it
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{a} needs a number"));
        match a.as_str() {
            "--live" => o.live = v,
            "--conns" => o.conns = v,
            "--timewait-ms" => o.timewait_ms = v,
            _ => panic!("unknown argument {a}"),
        }
    }
    o
}

/// Builds events with a running clock: 1 µs apart.
struct Gen {
    ts: u64,
}

/// Who is current when the event fires: the owner in a syscall, or softirq.
#[derive(Clone, Copy)]
enum Ctx {
    Owner(u32, &'static str),
    Softirq,
}

impl Gen {
    fn ev(
        &mut self,
        id: u64,
        local: SocketAddr,
        remote: SocketAddr,
        old: TcpState,
        new: TcpState,
        ctx: Ctx,
    ) -> Event {
        self.ts += 1_000;
        // As the kernel fills them (`emit::fill_task`): the command and cgroup only in the
        // owner's context; in softirq the pid is whoever was interrupted.
        let (pid, comm, cgroup_id, owner_context) = match ctx {
            Ctx::Owner(p, c) => (p, c, 100 + p as u64, true),
            Ctx::Softirq => (0, "", 0, false),
        };
        Event {
            ts_ns: self.ts,
            sock: SockId {
                cookie: id,
                skaddr: id << 12,
            },
            netns: NETNS,
            local,
            remote,
            what: What::Transition { old, new },
            task: Task {
                pid,
                tid: pid,
                comm: comm.into(),
                cgroup_id,
            },
            owner_context,
            from_backup: false,
            connect_end: None,
            timewait_read: None,
        }
    }
}

fn v4(ip: u32, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))
}

/// The pipeline under test: decode, table, aggregates.
struct Pipeline {
    table: SocketTable,
    agg: Aggregates,
    /// Filled per event, as `Live::apply` does.
    applied: Applied,
    events: u64,
    expire_calls: u64,
    expire_ns: u128,
    expire_cpu_ns: u128,
}

/// Events between expiry scans: 10 ms of event time, as if the tracer ticked every 10 ms.
const EXPIRE_EVERY: u64 = 10_000;

impl Pipeline {
    fn feed(&mut self, bytes: &[u8]) {
        let ev = decode(bytes).expect("synthetic record decodes");
        self.table.apply_into(&ev, &mut self.applied);
        self.agg.observe_applied(&self.applied, ev.ts_ns);
        self.events += 1;
        if self.events.is_multiple_of(EXPIRE_EVERY) {
            self.expire_scan(ev.ts_ns);
        }
    }

    /// Timed apart: its cost follows what expires, not the events. Not inlined, so
    /// that callgrind can subtract it from [`replay_chunk`].
    #[inline(never)]
    fn expire_scan(&mut self, now_ns: u64) {
        let (start, cpu) = (Instant::now(), thread_cpu_ns());
        let expired = self.table.expire(now_ns);
        self.agg.observe_expired(&expired, now_ns);
        self.expire_ns += start.elapsed().as_nanos();
        self.expire_cpu_ns += thread_cpu_ns() - cpu;
        self.expire_calls += 1;
    }
}

/// The timed part: one chunk of storm records through the pipeline. Not inlined, so that
/// `valgrind --tool=callgrind --toggle-collect='*replay_chunk*'` counts exactly this (minus
/// `expire_scan`) per event.
#[inline(never)]
fn replay_chunk(p: &mut Pipeline, buf: &[u8]) {
    for rec in buf.chunks_exact(RAW_EVENT_SIZE) {
        p.feed(rec);
    }
}

/// One loopback connection's 10 transitions, client closes first.
fn storm_conn(g: &mut Gen, i: u64, out: &mut Vec<u8>) {
    let server = v4(0x7f00_0001, 8080);
    let client = v4(
        0x7f00_0000 | (2 + (i / 50_000) as u32 % 250),
        10_000 + (i % 50_000) as u16,
    );
    let any = v4(0, 0);
    let (c, s) = ((1 << 40) | (2 * i), (1 << 40) | (2 * i + 1));
    let cli = Ctx::Owner(77, "loadgen");
    let srv = Ctx::Owner(78, "server");
    let steps = [
        (
            c,
            SocketAddr::new(client.ip(), 0),
            server,
            Close,
            SynSent,
            cli,
        ),
        (c, client, server, SynSent, Established, Ctx::Softirq),
        (s, v4(0, 8080), any, Listen, SynRecv, Ctx::Softirq),
        (s, server, client, SynRecv, Established, Ctx::Softirq),
        (c, client, server, Established, FinWait1, cli),
        (s, server, client, Established, CloseWait, Ctx::Softirq),
        (c, client, server, FinWait1, FinWait2, Ctx::Softirq),
        (c, client, server, FinWait2, Close, Ctx::Softirq),
        (s, server, client, CloseWait, LastAck, srv),
        (s, server, client, LastAck, Close, Ctx::Softirq),
    ];
    for (id, l, r, old, new, ctx) in steps {
        out.extend_from_slice(raw_bytes(&encode(&g.ev(id, l, r, old, new, ctx))));
    }
}

/// CPU time of this thread: unlike the wall clock, it leaves out the time other work on a
/// shared machine takes the CPU away, so events per CPU-second is the per-core figure.
fn thread_cpu_ns() -> u128 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let o = parse();
    let mut g = Gen { ts: 1_000_000_000 };
    let mut p = Pipeline {
        table: SocketTable::new(Limits {
            max_sockets: 4 << 20,
            timewait_len_ns: o.timewait_ms * 1_000_000,
            ..Limits::default()
        }),
        agg: Aggregates::new(g.ts, AggLimits::default()),
        applied: Applied::default(),
        events: 0,
        expire_calls: 0,
        expire_ns: 0,
        expire_cpu_ns: 0,
    };
    let listener = g.ev(
        1,
        v4(0, 8080),
        v4(0, 0),
        Close,
        Listen,
        Ctx::Owner(78, "server"),
    );
    p.feed(raw_bytes(&encode(&listener)));

    // Load the live sockets one record at a time, so resident growth is the table's.
    let rss_before = status_kib("VmRSS:");
    let peer: IpAddr = "192.0.2.1".parse().unwrap();
    let load_start = Instant::now();
    for i in 0..o.live {
        let local = v4(
            0x0a00_0000 | (i / 50_000) as u32,
            10_000 + (i % 50_000) as u16,
        );
        let remote = SocketAddr::new(peer, 443);
        let owner = Ctx::Owner(1000 + (i % 1000) as u32, "client");
        let id = (1 << 32) | i;
        let syn = g.ev(id, local, remote, Close, SynSent, owner);
        p.feed(raw_bytes(&encode(&syn)));
        let est = g.ev(id, local, remote, SynSent, Established, Ctx::Softirq);
        p.feed(raw_bytes(&encode(&est)));
    }
    let load_s = load_start.elapsed().as_secs_f64();
    let rss_loaded = status_kib("VmRSS:");
    let live_in_table = p.table.len() as u64;
    let table_bytes = p.table.heap_bytes() as u64;

    // The storm: generated in chunks (untimed), replayed (timed).
    let mut buf = Vec::with_capacity((CHUNK_CONNS * 10) as usize * RAW_EVENT_SIZE);
    let (mut replayed, mut replay_ns) = (0u64, 0u128);
    let expire_ns_before = p.expire_ns;
    let expire_calls_before = p.expire_calls;
    let mut expire_total_seen = 0u128;
    let mut decode_ns = 0u128;
    let mut replay_cpu_ns = 0u128;
    let mut i = 0;
    while i < o.conns {
        buf.clear();
        let end = (i + CHUNK_CONNS).min(o.conns);
        for k in i..end {
            storm_conn(&mut g, k, &mut buf);
        }
        i = end;
        // Decode alone first, to split the cost between the stages.
        let start = Instant::now();
        for rec in buf.chunks_exact(RAW_EVENT_SIZE) {
            std::hint::black_box(decode(rec).expect("decodes"));
        }
        decode_ns += start.elapsed().as_nanos();
        let (start, cpu, expire_cpu) = (Instant::now(), thread_cpu_ns(), p.expire_cpu_ns);
        replay_chunk(&mut p, &buf);
        replay_ns += start.elapsed().as_nanos();
        replay_cpu_ns += thread_cpu_ns() - cpu - (p.expire_cpu_ns - expire_cpu);
        replay_ns -= p.expire_ns - expire_ns_before - expire_total_seen;
        expire_total_seen = p.expire_ns - expire_ns_before;
        replayed += (buf.len() / RAW_EVENT_SIZE) as u64;
    }
    let stats = p.table.stats();
    assert_eq!(
        stats.state_mismatches, 0,
        "the synthetic stream is consistent"
    );
    let events_per_s = replayed as f64 / (replay_ns as f64 / 1e9);
    let line = serde_json::json!({
        "live_sockets": o.live,
        "sockets_in_table_after_load": live_in_table,
        "sockets_in_table_at_end": p.table.len(),
        "load_events_per_s": (2 * o.live) as f64 / load_s,
        "storm_events": replayed,
        "events_per_s": events_per_s,
        "events_per_cpu_s": replayed as f64 / (replay_cpu_ns as f64 / 1e9),
        "decode_only_events_per_s": replayed as f64 / (decode_ns as f64 / 1e9),
        "expire_scans": p.expire_calls - expire_calls_before,
        "expire_scan_ms": (p.expire_ns - expire_ns_before) as f64
            / 1e6 / (p.expire_calls - expire_calls_before).max(1) as f64,
        "ns_per_event": replay_ns as f64 / replayed.max(1) as f64,
        "table_heap_bytes": table_bytes,
        "table_bytes_per_socket": table_bytes as f64 / live_in_table.max(1) as f64,
        "rss_growth_bytes_per_socket":
            (rss_loaded.saturating_sub(rss_before) * 1024) as f64 / live_in_table.max(1) as f64,
        "aggregates_heap_bytes": p.agg.heap_bytes(),
        "vm_hwm_kib": status_kib("VmHWM:"),
    });
    println!("{line}");
}
