//! A loopback TCP peer with scripted behaviour, run as its own process so that tests can check
//! that each socket is attributed to the process that really owns it (and never to its peer).
//!
//! ```text
//! tcpscenario server --bind ADDR:PORT [--conns N] [--on-eof close|leak] [--close-delay-ms X]
//!                    [--close-first-ms X] [--linger0] [--stop-after BYTES] [--nofile N]
//! tcpscenario client --connect ADDR:PORT [--conns N] [--bind-ip IP] [--hold-ms X]
//!                    [--wait-eof] [--close-delay-ms X] [--linger0] [--leak] [--send BYTES]
//!                    [--interval-ms X] [--nofile N]
//! tcpscenario simclose --bind ADDR:PORT
//! tcpscenario free-port --bind IP:0 [--conns N]
//! ```
//! Any role takes `--comm NAME` first: the process renames itself with `prctl(PR_SET_NAME)`
//! before anything else (at most 15 bytes, as the kernel keeps them), as any unprivileged
//! process can; the tests give it names made of terminal control sequences.
//! `free-port` prints N ports (one per line) that a server can bind on IP, picked as the
//! integration tests pick theirs (`tcptrace_tests::free_port`), and exits: for the soak, whose
//! `--port` filter must match only its own sockets.
//! `simclose` makes both ends of one connection close at the same time. It must run in a
//! network namespace of its own: it takes `lo` down so that both FINs are sent before either
//! is delivered, then brings it back up and lets the retransmissions cross (FIN_WAIT1 ->
//! CLOSING on both sides).
//! The three ways a server leaks CLOSE_WAIT sockets, on purpose: `--on-eof leak` reads to EOF
//! and never closes (Recv-Q 0), `--stop-after 0` never reads (Recv-Q 1: the FIN), and
//! `--stop-after K` reads K bytes and stops while the client `--send`s more (Recv-Q: the rest
//! plus the FIN). `--interval-ms` paces a client's connections (a leak at a known rate);
//! `--nofile` sets RLIMIT_NOFILE, so the EMFILE projection has a known limit.
//! It prints `listening PORT`, `accepted LOCAL PEER`, `connected LOCAL PEER`, `refused ERR`, and
//! `done` on stdout, then keeps every socket it did not close until stdin is closed.
//! It also prints, on CLOCK_MONOTONIC (the kernel's `ktime_get_ns`, the clock of the tracer's
//! timestamps), when it really did what it was told, so that tests compare measured dwell times
//! with what happened rather than with the sleeps they asked for (a loaded host oversleeps):
//! the client `client-times LOCAL CONNECT_NS CONNECTED_NS CLOSE_NS CLOSED_NS` after each close
//! (the clock read before and after `connect` and before and after `close`), and the server
//! `server-close PEER CLOSE_NS CLOSED_NS` after each close that followed the peer's EOF.

use std::{
    io::{BufRead, Read},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread,
    time::Duration,
};

struct Opts {
    addr: SocketAddr,
    conns: usize,
    on_eof_leak: bool,
    close_delay: Duration,
    close_first: Option<Duration>,
    linger0: bool,
    hold: Duration,
    wait_eof: bool,
    leak: bool,
    bind_ip: Option<std::net::IpAddr>,
    /// Server: read this many bytes, then stop reading and keep the socket.
    stop_after: Option<usize>,
    /// Client: bytes written after connecting.
    send: usize,
    /// Client: pause between connections.
    interval: Duration,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let role = args.first().cloned().unwrap_or_default();
    let mut o = Opts {
        addr: "127.0.0.1:0".parse().unwrap(),
        conns: 1,
        on_eof_leak: false,
        close_delay: Duration::ZERO,
        close_first: None,
        linger0: false,
        hold: Duration::ZERO,
        wait_eof: false,
        leak: false,
        bind_ip: None,
        stop_after: None,
        send: 0,
        interval: Duration::ZERO,
    };
    let mut it = args.iter().skip(1);
    if args.get(1).map(String::as_str) == Some("--comm") {
        let name = args.get(2).expect("--comm NAME");
        set_comm(name);
        it.next();
        it.next();
    }
    let ms = |v: Option<&String>| Duration::from_millis(v.expect("value").parse().expect("ms"));
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bind" | "--connect" => o.addr = it.next().expect("addr").parse().expect("addr"),
            "--conns" => o.conns = it.next().expect("n").parse().expect("n"),
            "--on-eof" => o.on_eof_leak = it.next().map(|s| s == "leak").unwrap_or(false),
            "--close-delay-ms" => o.close_delay = ms(it.next()),
            "--close-first-ms" => o.close_first = Some(ms(it.next())),
            "--hold-ms" => o.hold = ms(it.next()),
            "--linger0" => o.linger0 = true,
            "--wait-eof" => o.wait_eof = true,
            "--leak" => o.leak = true,
            "--bind-ip" => o.bind_ip = Some(it.next().expect("ip").parse().expect("ip")),
            "--stop-after" => o.stop_after = Some(it.next().expect("n").parse().expect("n")),
            "--send" => o.send = it.next().expect("n").parse().expect("n"),
            "--interval-ms" => o.interval = ms(it.next()),
            "--nofile" => set_nofile(it.next().expect("n").parse().expect("n")),
            other => panic!("tcpscenario: unknown argument {other}"),
        }
    }
    if role == "free-port" {
        for _ in 0..o.conns {
            println!("{}", tcptrace_tests::free_port(o.addr.ip()));
        }
        return;
    }
    let kept = match role.as_str() {
        "server" => server(&o),
        "client" => client(&o),
        "simclose" => simclose(&o),
        _ => panic!("tcpscenario: first argument must be server, client, simclose or free-port"),
    };
    println!("done");
    // Hold leaked sockets until the test is done with us.
    let mut sink = String::new();
    let _ = std::io::stdin().lock().read_line(&mut sink);
    drop(kept);
}

/// Renames the calling thread, whose name every thread it starts inherits.
fn set_comm(name: &str) {
    let c = std::ffi::CString::new(name).expect("no NUL in the name");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of which the kernel copies 15 bytes.
    let rc = unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) };
    assert_eq!(
        rc,
        0,
        "prctl(PR_SET_NAME): {}",
        std::io::Error::last_os_error()
    );
}

fn server(o: &Opts) -> Vec<TcpStream> {
    let l = TcpListener::bind(o.addr).expect("bind");
    println!("listening {}", l.local_addr().unwrap().port());
    let mut handles = Vec::new();
    for _ in 0..o.conns {
        let (s, peer) = l.accept().expect("accept");
        println!("accepted {} {}", s.local_addr().unwrap(), peer);
        let (leak, delay, first, linger0) =
            (o.on_eof_leak, o.close_delay, o.close_first, o.linger0);
        if let Some(n) = o.stop_after {
            // Read n bytes (none: never read), then keep the socket unread.
            let mut s = s;
            let mut buf = vec![0u8; n];
            s.read_exact(&mut buf).expect("read the bytes asked for");
            handles.push(thread::spawn(move || Some(s)));
            continue;
        }
        handles.push(thread::spawn(move || {
            serve_one(s, peer, leak, delay, first, linger0)
        }));
    }
    let kept = handles
        .into_iter()
        .filter_map(|h| h.join().unwrap())
        .collect();
    drop(l);
    kept
}

fn serve_one(
    mut s: TcpStream,
    peer: SocketAddr,
    leak: bool,
    delay: Duration,
    first: Option<Duration>,
    linger0: bool,
) -> Option<TcpStream> {
    if let Some(d) = first {
        thread::sleep(d);
        if linger0 {
            set_linger0(&s);
        }
        return None;
    }
    let mut buf = [0u8; 512];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    if leak {
        return Some(s);
    }
    thread::sleep(delay);
    if linger0 {
        set_linger0(&s);
    }
    // The peer's address from accept: after a RST, `peer_addr` fails (ENOTCONN).
    let close = monotonic_ns();
    drop(s);
    let closed = monotonic_ns();
    println!("server-close {peer} {close} {closed}");
    None
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes one timespec we own.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn simclose(o: &Opts) -> Vec<TcpStream> {
    let l = TcpListener::bind(o.addr).expect("bind");
    let c = TcpStream::connect(l.local_addr().unwrap()).expect("connect");
    let (a, _) = l.accept().expect("accept");
    println!(
        "connected {} {}",
        c.local_addr().unwrap(),
        c.peer_addr().unwrap()
    );
    println!(
        "accepted {} {}",
        a.local_addr().unwrap(),
        a.peer_addr().unwrap()
    );
    let lo = |state: &str| {
        let ok = std::process::Command::new("ip")
            .args(["link", "set", "lo", state])
            .status();
        assert!(
            ok.map(|s| s.success()).unwrap_or(false),
            "ip link set lo {state}"
        );
    };
    lo("down");
    c.shutdown(std::net::Shutdown::Write)
        .expect("shutdown client");
    a.shutdown(std::net::Shutdown::Write)
        .expect("shutdown server");
    thread::sleep(Duration::from_millis(50));
    lo("up");
    // The FINs are retransmitted after the minimum RTO (200 ms). Wait until both sockets have
    // finished (each went to TIME_WAIT, which leaves the socket itself in CLOSE), rather than
    // for a fixed time that a loaded host can outrun.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while [&c, &a].iter().any(|s| tcp_state(s) != TCP_CLOSE) {
        if std::time::Instant::now() > deadline {
            println!("simclose: still open after 30 s");
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    drop(l);
    vec![c, a]
}

/// `TCP_CLOSE` in the kernel's numbering (include/net/tcp_states.h); libc has no Linux copy.
const TCP_CLOSE: u8 = 7;

/// The socket's TCP state (`tcpi_state`, the kernel's TCP_* numbering).
fn tcp_state(s: &TcpStream) -> u8 {
    // SAFETY: getsockopt writes at most `len` bytes into a tcp_info we own.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_state
}

/// RLIMIT_NOFILE, soft and hard.
fn set_nofile(n: u64) {
    let l = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit reads one rlimit we own.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

fn client(o: &Opts) -> Vec<TcpStream> {
    let mut kept = Vec::new();
    for i in 0..o.conns {
        if i > 0 {
            thread::sleep(o.interval);
        }
        let connect = monotonic_ns();
        let s = match o.bind_ip {
            Some(ip) => connect_from(ip, o.addr),
            None => TcpStream::connect(o.addr),
        };
        let connected = monotonic_ns();
        let mut s = match s {
            Ok(s) => s,
            Err(e) => {
                println!("refused {:?}", e.kind());
                continue;
            }
        };
        // Named now: after the server's RST, the socket no longer has a peer.
        let local = s.local_addr().unwrap();
        println!("connected {local} {}", s.peer_addr().unwrap());
        if o.send > 0 {
            std::io::Write::write_all(&mut s, &vec![b'x'; o.send]).expect("send");
        }
        thread::sleep(o.hold);
        if o.wait_eof {
            let mut buf = [0u8; 512];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            thread::sleep(o.close_delay);
        }
        if o.leak {
            kept.push(s);
            continue;
        }
        if o.linger0 {
            set_linger0(&s);
        }
        let close = monotonic_ns();
        drop(s);
        let closed = monotonic_ns();
        println!("client-times {local} {connect} {connected} {close} {closed}");
    }
    kept
}

/// Connects from a chosen source address (e.g. 127.0.0.2), so tests get several distinct peers.
fn connect_from(ip: std::net::IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let domain = if ip.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket syscalls on a fd we own until it is wrapped in a TcpStream.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let (sa, len) = sockaddr(SocketAddr::new(ip, 0));
        if libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (sa, len) = sockaddr(to);
        if libc::connect(fd, &sa as *const _ as *const libc::sockaddr, len) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = &mut ss as *mut _ as *mut libc::sockaddr_in;
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            unsafe {
                (*sin).sin_family = libc::AF_INET as u16;
                (*sin).sin_port = v4.port().to_be();
                (*sin).sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            }
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = &mut ss as *mut _ as *mut libc::sockaddr_in6;
            // SAFETY: as above, for sockaddr_in6.
            unsafe {
                (*sin6).sin6_family = libc::AF_INET6 as u16;
                (*sin6).sin6_port = v6.port().to_be();
                (*sin6).sin6_addr.s6_addr = v6.ip().octets();
            }
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// SO_LINGER with a zero timeout: close() sends a RST instead of a FIN.
fn set_linger0(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `l` for the given length.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}
