//! Dumps of the running kernel's table, with real loopback sockets in every state and `ss`
//! as the referee.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::super::*;

fn netns() -> u32 {
    std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32
}

fn inode_of(fd: &impl AsRawFd) -> u64 {
    // SAFETY: fstat writes into the zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
    st.st_ino
}

fn so_cookie(fd: &impl AsRawFd) -> u64 {
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "SO_COOKIE: {}", io::Error::last_os_error());
    cookie
}

fn connected(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

/// Rows whose local or remote address is `addr`.
fn rows_touching(addr: SocketAddr) -> Vec<KernelSocket> {
    dump_tcp(netns())
        .unwrap()
        .into_iter()
        .filter(|s| s.local == addr || s.remote == addr)
        .collect()
}

fn find(rows: &[KernelSocket], local: SocketAddr, remote: SocketAddr) -> Option<&KernelSocket> {
    rows.iter().find(|s| s.local == local && s.remote == remote)
}

/// Polls the dump until `local -> remote` is in `state`: loopback FIN processing runs in
/// softirq right after the write, but give it time on a loaded machine.
fn wait_for(local: SocketAddr, remote: SocketAddr, state: TcpState) -> KernelSocket {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let rows = rows_touching(local);
        if let Some(s) = find(&rows, local, remote).filter(|s| s.state == state) {
            return s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{local} -> {remote} never reached {state:?}: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ss_state_name(state: TcpState) -> &'static str {
    match state {
        TcpState::Established => "established",
        TcpState::SynSent => "syn-sent",
        TcpState::SynRecv | TcpState::NewSynRecv => "syn-recv",
        TcpState::FinWait1 => "fin-wait-1",
        TcpState::FinWait2 => "fin-wait-2",
        TcpState::TimeWait => "time-wait",
        TcpState::Close => "closed",
        TcpState::CloseWait => "close-wait",
        TcpState::LastAck => "last-ack",
        TcpState::Listen => "listening",
        TcpState::Closing => "closing",
    }
}

fn ss_count(state: TcpState, port: u16) -> usize {
    let out = std::process::Command::new("ss")
        .args([
            "-tanH",
            "state",
            ss_state_name(state),
            "sport",
            "=",
            &format!(":{port}"),
        ])
        .output()
        .expect("ss runs");
    assert!(
        out.status.success(),
        "ss failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// Our per-state counts for local port `port` equal `ss`'s. Other tests on this machine may
/// open sockets on the same ephemeral ports between the two reads, so retry a few times.
fn assert_counts_match_ss(port: u16) {
    let mut last = String::new();
    for _ in 0..5 {
        let mut ours: HashMap<TcpState, usize> = HashMap::new();
        for s in dump_tcp(netns())
            .unwrap()
            .iter()
            .filter(|s| s.local.port() == port)
        {
            *ours.entry(s.state).or_default() += 1;
        }
        let mismatch: Vec<_> = TcpState::ALL
            .into_iter()
            .filter(|&st| st != TcpState::NewSynRecv && st != TcpState::SynRecv)
            .map(|st| (st, ours.get(&st).copied().unwrap_or(0), ss_count(st, port)))
            .filter(|(_, a, b)| a != b)
            .collect();
        if mismatch.is_empty() {
            return;
        }
        last = format!("{mismatch:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("port {port}: (state, ours, ss) differ: {last}");
}

fn every_state_is_seen(ip: IpAddr) {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    let lport = listener.local_addr().unwrap();
    let unspecified: SocketAddr = match ip {
        IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
        IpAddr::V6(_) => "[::]:0".parse().unwrap(),
    };

    // ESTABLISHED, both ends.
    let (est_client, est_server) = connected(&listener);
    let ec = est_client.local_addr().unwrap();

    // CLOSE_WAIT: the peer (server side) closed, we (client) did not. The orphaned closer
    // sits in FIN_WAIT2 as a timewait socket.
    let (cw_client, cw_server) = connected(&listener);
    let cw = cw_client.local_addr().unwrap();
    let cw_server_cookie = so_cookie(&cw_server);
    drop(cw_server);

    // TIME_WAIT: the active closer (client) closes first, then the peer.
    let (tw_client, mut tw_server) = connected(&listener);
    let tw = tw_client.local_addr().unwrap();
    let tw_cookie = so_cookie(&tw_client);
    drop(tw_client);
    let mut sink = [0u8; 1];
    assert_eq!(
        tw_server.read(&mut sink).unwrap(),
        0,
        "server sees the client's FIN"
    );
    drop(tw_server);

    let listen_row = wait_for(lport, unspecified, TcpState::Listen);
    assert_eq!(listen_row.inode, inode_of(&listener));
    assert_eq!(listen_row.cookie, so_cookie(&listener));
    assert_eq!(listen_row.uid, unsafe { libc::geteuid() });
    assert_eq!(listen_row.netns, netns());
    // The socket's cgroup is the one its creator (this process) runs in.
    assert_eq!(
        Some(listen_row.cgroup_id),
        crate::owner::cgroup::cgroup_id_of_pid(std::process::id())
    );

    let row = wait_for(ec, lport, TcpState::Established);
    assert_eq!(row.inode, inode_of(&est_client));
    assert_eq!(row.cookie, so_cookie(&est_client));
    let row = wait_for(lport, ec, TcpState::Established);
    assert_eq!(row.inode, inode_of(&est_server));
    assert_eq!(row.cookie, so_cookie(&est_server));

    let row = wait_for(cw, lport, TcpState::CloseWait);
    assert_eq!(row.cookie, so_cookie(&cw_client));
    let row = wait_for(lport, cw, TcpState::FinWait2);
    assert_eq!(row.inode, 0, "an orphaned FIN_WAIT2 has no file");
    assert_eq!(row.cookie, cw_server_cookie);

    let row = wait_for(tw, lport, TcpState::TimeWait);
    assert_eq!((row.inode, row.uid), (0, 0));
    let left = row.timer_ms.expect("TIME_WAIT has its timer armed");
    assert!(
        (50_000..=60_000).contains(&left),
        "TIME_WAIT timer {left} ms"
    );
    // The timewait socket carries the full socket's cookie (`inet_twsk_alloc`), so it joins
    // the events the probe saw for that socket.
    assert_eq!(row.cookie, tw_cookie);

    // Data queued and unread shows up in the receive queue.
    let mut est_client = est_client;
    est_client.write_all(b"hello").unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while find(&rows_touching(ec), lport, ec).map(|s| s.rqueue) != Some(5) {
        assert!(Instant::now() < deadline, "rqueue never reached 5");
        std::thread::sleep(Duration::from_millis(10));
    }

    assert_counts_match_ss(lport.port());
    for client in [ec, cw, tw] {
        assert_counts_match_ss(client.port());
    }
    drop((listener, est_server, cw_client));
}

#[test]
fn dump_shows_loopback_sockets_in_every_state_ipv4() {
    every_state_is_seen("127.0.0.1".parse().unwrap());
}

#[test]
fn dump_shows_loopback_sockets_in_every_state_ipv6() {
    every_state_is_seen("::1".parse().unwrap());
}

#[test]
fn snapshot_is_stamped_before_the_dump() {
    let before = crate::clock::monotonic_ns();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let snap = snapshot().unwrap();
    let after = crate::clock::monotonic_ns();
    assert!(before <= snap.taken_ns && snap.taken_ns <= after);
    let port = listener.local_addr().unwrap().port();
    assert!(
        snap.sockets
            .iter()
            .any(|s| s.local.port() == port && s.state == TcpState::Listen)
    );
    assert!(snap.sockets.iter().all(|s| s.netns == netns()));
}

/// Leaves ~20k TIME_WAIT sockets on the host for a minute, so it runs only when asked:
/// `cargo test -p tcptrace --release -- --ignored --nocapture dump_of_20k`.
#[test]
#[ignore]
fn dump_of_20k_timewait_sockets_is_fast_and_complete() {
    // The server closes first so the TIME_WAIT sockets hold the listeners' ports, not 20k
    // ephemeral ports other tests on this machine need. Connect picks client ports with
    // random strides per destination and wraps after a few thousand; a SYN from a reused
    // port kills the server's TIME_WAIT socket for that 4-tuple (`TCP_TW_SYN` in
    // https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_minisocks.c), so spread the
    // connections over several listeners.
    const LISTENERS: usize = 10;
    const PER_LISTENER: usize = 2_000;
    let listeners: Vec<TcpListener> = (0..LISTENERS)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let start = Instant::now();
    for listener in &listeners {
        for _ in 0..PER_LISTENER {
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            drop(server);
            drop(client);
        }
    }
    let n = LISTENERS * PER_LISTENER;
    eprintln!("{n} connections in {:?}", start.elapsed());

    let mut times = Vec::new();
    let mut rows = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        rows = dump_tcp(netns()).unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    let tw = |port: u16| {
        rows.iter()
            .filter(|s| s.local.port() == port && s.state == TcpState::TimeWait)
            .count()
    };
    let total: usize = ports.iter().map(|&p| tw(p)).sum();
    eprintln!(
        "dump of {} sockets ({total} TIME_WAIT on our listeners): min {:?} median {:?}",
        rows.len(),
        times[0],
        times[2]
    );
    assert!(
        total >= n * 99 / 100,
        "only {total} of {n} TIME_WAIT sockets in the dump"
    );
    for &port in &ports[..3] {
        assert_eq!(tw(port), ss_count(TcpState::TimeWait, port), "port {port}");
    }
    assert!(
        times[0] < Duration::from_millis(500),
        "dump took {:?}",
        times[0]
    );
}
