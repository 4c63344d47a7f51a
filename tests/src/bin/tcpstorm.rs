//! A loopback connection storm: worker threads connect and close as fast as they can (or at a
//! set rate) against an accept loop in this same process, bounded by a count and a time. Shared
//! by the fault tests, `cargo xtask bench` and `cargo xtask soak`.
//!
//! ```text
//! tcpstorm [--conns N] [--seconds S] [--threads T] [--addr IP:PORT] [--targets K] [--rate R]
//! ```
//! `--rate R` paces the storm at R connections per second in total (default: unlimited, as fast
//! as the threads go): each thread connects at R/T per second on a fixed schedule of absolute
//! deadlines, sleeping until its next slot. A thread that falls behind (a slow connect, a
//! preempted thread) catches up at most `CATCH_UP` worth of slots at once and gives up the rest,
//! so the rate stays steady instead of bursting. The rate reported is the one measured, which
//! is below R when the machine cannot keep up.
//!
//! The accept loop listens on K consecutive addresses starting at IP (127.0.0.1, 127.0.0.2, ...),
//! all on the same port (PORT 0 picks one). Each connection is closed by the client first, so
//! the client side goes through FIN_WAIT1, FIN_WAIT2 and TIME_WAIT and the server side through
//! CLOSE_WAIT and LAST_ACK: 10 transitions per connection.
//!
//! TIME_WAIT sockets pile up on the client side and hold their 4-tuple for 60 s. With
//! `net.ipv4.tcp_tw_reuse = 2` (the default) connect() may reuse a loopback 4-tuple whose
//! TIME_WAIT is more than a second old; otherwise each destination offers one ephemeral port
//! range's worth of tuples per minute. More targets multiply the tuples. Runs that exhaust them
//! get `EADDRNOTAVAIL`; the result line says after how many connections that first happened.
//!
//! Prints `listening PORT` on stderr once the accept loop is up, and one JSON line on stdout at
//! the end: `{"conns":..,"elapsed_s":..,"conns_per_s":..,"addr_not_avail":..,
//! "first_addr_not_avail_at":..,"other_errors":..,"server_closed":..,"port":..,"targets":..,
//! "threads":..,"rate":..}` (`rate`: the `--rate` asked for, null when unlimited; `conns_per_s`
//! is the rate measured).

use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// Listen backlog: std's default (128) overflows under a storm, and a dropped SYN costs a 1 s
/// retransmission that would dominate the measured rate.
const BACKLOG: i32 = 4096;

/// The most a paced thread that fell behind makes up at once: a longer stall's missed slots are
/// dropped, not sent as a burst (which would measure a tracer under a peak, not at the rate).
const CATCH_UP: Duration = Duration::from_millis(10);

struct Opts {
    conns: u64,
    seconds: f64,
    threads: usize,
    addr: SocketAddr,
    targets: u32,
    /// Total connections per second over all threads; None: unlimited.
    rate: Option<f64>,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "tcpstorm: {msg}\nusage: tcpstorm [--conns N] [--seconds S] [--threads T] \
         [--addr IP:PORT] [--targets K] [--rate R]\n  --rate R: R connections per second \
         in total, paced (default: as fast as possible)"
    );
    std::process::exit(2);
}

fn value<T: std::str::FromStr>(flag: &str, v: &str) -> T {
    v.parse()
        .unwrap_or_else(|_| usage(&format!("bad value for {flag}: {v}")))
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        conns: u64::MAX,
        seconds: 5.0,
        threads: 2,
        addr: "127.0.0.1:0".parse().unwrap(),
        targets: 1,
        rate: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it
            .next()
            .unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--conns" => o.conns = value(a, v),
            "--seconds" => o.seconds = value(a, v),
            "--threads" => o.threads = value(a, v),
            "--addr" => o.addr = value(a, v),
            "--targets" => o.targets = value(a, v),
            "--rate" => o.rate = Some(value(a, v)),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if o.threads == 0 || o.targets == 0 || o.seconds.is_nan() || o.seconds <= 0.0 {
        usage("--threads, --targets and --seconds must be positive");
    }
    if o.rate.is_some_and(|r: f64| !r.is_finite() || r <= 0.0) {
        usage("--rate must be positive");
    }
    if o.addr.is_ipv6() && o.targets > 1 {
        usage("IPv6 loopback is ::1 alone: use --targets 1");
    }
    o
}

/// The `i`-th target address after `first` (127.0.0.1 -> 127.0.0.2 ...; all of 127.0.0.0/8 is
/// loopback, while IPv6 has `::1` alone).
fn nth_ip(first: IpAddr, i: u32) -> IpAddr {
    match first {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + i)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + i as u128)),
    }
}

fn listen(o: &Opts) -> Vec<TcpListener> {
    let mut out: Vec<TcpListener> = Vec::new();
    let mut port = o.addr.port();
    for i in 0..o.targets {
        let at = SocketAddr::new(nth_ip(o.addr.ip(), i), port);
        let l = TcpListener::bind(at).unwrap_or_else(|e| usage(&format!("bind {at}: {e}")));
        // SAFETY: listen(2) on a socket we own; calling it again only raises the backlog.
        unsafe { libc::listen(l.as_raw_fd(), BACKLOG) };
        port = l.local_addr().unwrap().port();
        out.push(l);
    }
    out
}

/// Accepts, waits for the client's FIN, closes: the server side never closes first.
fn accept_loop(l: TcpListener, accepted: Arc<AtomicU64>) {
    let mut buf = [0u8; 64];
    while let Ok((mut s, _)) = l.accept() {
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        drop(s);
        accepted.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Tally {
    done: AtomicU64,
    claimed: AtomicU64,
    addr_not_avail: AtomicU64,
    first_addr_not_avail_at: AtomicU64,
    other_errors: AtomicU64,
}

/// One thread's schedule at a fixed rate: a slot every `interval`, at absolute deadlines, so the
/// time a connect takes and oversleeping do not add up into a lower rate.
struct Pacer {
    interval: Duration,
    next: Instant,
}

impl Pacer {
    /// Sleeps until the next slot is due, in steps short enough to notice `stop` at low rates.
    /// Slots more than `CATCH_UP` in the past are dropped. False when stopped.
    fn wait(&mut self, stop: &AtomicBool) -> bool {
        loop {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            let now = Instant::now();
            if self.next <= now {
                if let Some(earliest) = now.checked_sub(CATCH_UP) {
                    self.next = self.next.max(earliest);
                }
                return true;
            }
            thread::sleep((self.next - now).min(Duration::from_millis(50)));
        }
    }

    /// The slot was used: the next one is due an interval after it.
    fn advance(&mut self) {
        self.next += self.interval;
    }
}

fn connect_loop(
    targets: Arc<Vec<SocketAddr>>,
    o_conns: u64,
    stop: Arc<AtomicBool>,
    t: Arc<Tally>,
    mut pacer: Option<Pacer>,
) {
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if let Some(p) = pacer.as_mut()
            && !p.wait(&stop)
        {
            break;
        }
        if t.claimed.fetch_add(1, Ordering::Relaxed) >= o_conns {
            break;
        }
        let to = targets[i % targets.len()];
        i += 1;
        match TcpStream::connect(to) {
            Ok(s) => {
                drop(s);
                t.done.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = pacer.as_mut() {
                    p.advance();
                }
            }
            Err(e) => {
                t.claimed.fetch_sub(1, Ordering::Relaxed);
                if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                    let done = t.done.load(Ordering::Relaxed);
                    if t.addr_not_avail.fetch_add(1, Ordering::Relaxed) == 0 {
                        t.first_addr_not_avail_at.store(done, Ordering::Relaxed);
                    }
                } else {
                    t.other_errors.fetch_add(1, Ordering::Relaxed);
                }
                // Out of tuples: wait for TIME_WAIT sockets to become reusable, don't spin. A
                // paced thread retries the same slot (the pacer's catch-up bounds the burst).
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn main() {
    let o = parse_opts();
    let listeners = listen(&o);
    let port = listeners[0].local_addr().unwrap().port();
    let targets: Arc<Vec<SocketAddr>> =
        Arc::new(listeners.iter().map(|l| l.local_addr().unwrap()).collect());
    let accepted = Arc::new(AtomicU64::new(0));
    // At least one accept thread per target; more when there are more client threads.
    let per_target = o.threads.div_ceil(targets.len()).max(1);
    for l in &listeners {
        for _ in 0..per_target {
            let (l, a) = (l.try_clone().expect("clone listener"), accepted.clone());
            thread::spawn(move || accept_loop(l, a));
        }
    }
    eprintln!("listening {port}");

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let workers: Vec<_> = (0..o.threads)
        .map(|k| {
            let (tg, st, t) = (targets.clone(), stop.clone(), tally.clone());
            let conns = o.conns;
            // Each thread at rate/threads; their first slots spread over one interval, so the
            // threads take turns instead of connecting together.
            let pacer = o.rate.map(|r| {
                let interval = Duration::from_secs_f64(o.threads as f64 / r);
                Pacer {
                    interval,
                    next: start + interval.mul_f64(k as f64 / o.threads as f64),
                }
            });
            thread::spawn(move || connect_loop(tg, conns, st, t, pacer))
        })
        .collect();
    let deadline = start + Duration::from_secs_f64(o.seconds);
    while Instant::now() < deadline && workers.iter().any(|w| !w.is_finished()) {
        thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let done = tally.done.load(Ordering::Relaxed);
    // Let the accept loop close every server end, so no CLOSE_WAIT outlives the storm and no
    // server end is left for the listener's close to reset: that RST is sent once, and a
    // loaded loopback may drop it, leaving the client in FIN_WAIT2 for tcp_fin_timeout.
    // Usually immediate; slow only where segments were dropped and are being resent (an
    // emulated guest under load), so the bound is generous. `server_closed` says how many.
    let settle = Instant::now() + Duration::from_secs(60);
    while accepted.load(Ordering::Relaxed) < done && Instant::now() < settle {
        thread::sleep(Duration::from_millis(2));
    }
    let n_avail = tally.addr_not_avail.load(Ordering::Relaxed);
    let line = serde_json::json!({
        "conns": done,
        "elapsed_s": elapsed,
        "conns_per_s": done as f64 / elapsed,
        "addr_not_avail": n_avail,
        "first_addr_not_avail_at": (n_avail > 0)
            .then(|| tally.first_addr_not_avail_at.load(Ordering::Relaxed)),
        "other_errors": tally.other_errors.load(Ordering::Relaxed),
        "server_closed": accepted.load(Ordering::Relaxed),
        "port": port,
        "targets": targets.len(),
        "threads": o.threads,
        "rate": o.rate,
    });
    println!("{line}");
}
