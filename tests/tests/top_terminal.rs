//! `tcptrace top` on a real terminal: a pseudo-terminal of a set size is its controlling
//! terminal (stdin and stdout), a terminal emulator (vt100) reads what it draws, keys are typed
//! into it, and the size is changed while it runs (TIOCSWINSZ: the kernel sends SIGWINCH).
//!
//! Two leakers with the same name (`tcpscenario`): one on 127.0.0.1, one in a namespace of
//! its own on a long IPv6 address, so that peers and command lines are wider than a narrow
//! terminal and the command lines are what tells the two apart.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tcptrace_tests::netns::{TestNetns, ip};
use tcptrace_tests::*;

const T: Duration = Duration::from_secs(30);

/// The namespaced leaker's address: 39 characters, 47 for a peer with its port.
const LONG_V6: &str = "fd00:1234:5678:9abc:def0:1234:5678:9abc";

/// A pseudo-terminal's master side, and what a terminal emulator made of its output.
struct Pty {
    master: OwnedFd,
    seen: Arc<Mutex<Seen>>,
}

struct Seen {
    screen: vt100::Parser,
    /// Every byte the program wrote.
    raw: Vec<u8>,
}

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn nonzero(n: u16) -> std::num::NonZeroU16 {
    std::num::NonZeroU16::new(n).unwrap()
}

impl Pty {
    /// Opens a pseudo-terminal of `rows` x `cols`; returns it and its slave side.
    fn open(rows: u16, cols: u16) -> (Pty, OwnedFd) {
        let (mut master, mut slave) = (-1, -1);
        let ws = winsize(rows, cols);
        // SAFETY: openpty writes two descriptors; name and termios are optional (null).
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both were just opened and are owned by nothing else.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let seen = Arc::new(Mutex::new(Seen {
            screen: vt100::Parser::new(nonzero(rows), nonzero(cols), 0),
            raw: Vec::new(),
        }));
        let mut reader = std::fs::File::from(master.try_clone().unwrap());
        let into = seen.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 65536];
            // Ends with EIO once every slave descriptor is closed (the program exited).
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                let mut s = into.lock().unwrap();
                s.screen.process(&buf[..n]);
                s.raw.extend_from_slice(&buf[..n]);
            }
        });
        (Pty { master, seen }, slave)
    }

    /// Types `keys`.
    fn send(&self, keys: &str) {
        // SAFETY: writes from a live buffer to our descriptor.
        let n = unsafe { libc::write(self.master.as_raw_fd(), keys.as_ptr().cast(), keys.len()) };
        assert_eq!(n, keys.len() as isize);
    }

    /// Gives the terminal a new size: the kernel sends SIGWINCH to its foreground process
    /// group (`tty_do_resize`, <https://github.com/torvalds/linux/blob/v6.18/drivers/tty/tty_io.c>).
    fn resize(&self, rows: u16, cols: u16) {
        let mut s = self.seen.lock().unwrap();
        let ws = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
        s.screen.set_size(nonzero(rows), nonzero(cols));
    }

    /// Waits until the screen satisfies `ok`; returns its lines.
    fn wait_for(&self, what: &str, ok: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + T;
        loop {
            let lines = self.lines();
            if ok(&lines) {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {T:?}:\n{}",
                lines.join("\n")
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn lines(&self) -> Vec<String> {
        let s = self.seen.lock().unwrap();
        let (_, cols) = s.screen.screen().size();
        s.screen.screen().rows(0, cols.get()).collect()
    }

    /// Rows of the screen the terminal wrapped (text written past the last column).
    fn wrapped(&self) -> Vec<u16> {
        let s = self.seen.lock().unwrap();
        let (rows, _) = s.screen.screen().size();
        (0..rows.get())
            .filter(|&r| s.screen.screen().row_wrapped(r))
            .collect()
    }

    /// How many times the whole screen was cleared (`ESC [ 2 J`).
    fn clears(&self) -> usize {
        let s = self.seen.lock().unwrap();
        s.raw.windows(4).filter(|w| w == b"\x1b[2J").count()
    }

    fn alternate_screen(&self) -> bool {
        self.seen.lock().unwrap().screen.screen().alternate_screen()
    }
}

/// `tcptrace top ARGS` with the terminal as its controlling terminal, stdin and stdout;
/// stderr is read here. Returns once it has attached.
fn top_on(slave: OwnedFd, args: &[&str]) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut cmd = Command::new(tcptrace_bin());
    cmd.arg("top")
        .args(args)
        .env("TERM", "xterm-256color")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped());
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            // A session of its own whose controlling terminal is the pty (stdin), so that a
            // resize signals it and /dev/tty is this terminal.
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn tcptrace top");
    // The slave descriptors this side held are closed with the command, so the master reads
    // end when the program exits.
    drop(cmd);
    let err = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let into = lines.clone();
    thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l.clone());
            into.lock().unwrap().push(l);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) if l.contains("attached") => return (child, lines),
            Ok(_) => {}
            Err(_) => {
                let _ = Top(child);
                panic!("tcptrace never attached: {:?}", lines.lock().unwrap())
            }
        }
    }
}

/// Types `q`; the program must leave the alternate screen and exit with its closing line.
fn quit(s: Session) {
    let Session {
        pty,
        mut child,
        stderr,
        ..
    } = s;
    pty.send("q");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "top did not quit on q");
        thread::sleep(Duration::from_millis(20));
    };
    let err = stderr.lock().unwrap().join("\n");
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains(" events in "), "no closing line: {err}");
    assert!(
        !pty.alternate_screen(),
        "the terminal was left on the alternate screen"
    );
}

/// The two leakers (kept while they live) and their ports.
struct Leakers {
    _v4: Proc,
    _v6: Proc,
    _ns: TestNetns,
    ports: [u16; 2],
}

fn leakers() -> Leakers {
    let ip4 = "127.0.0.1".parse().unwrap();
    let addr = SocketAddr::new(ip4, free_port(ip4));
    let (mut v4, p4) = server(addr, &["--conns", "2", "--on-eof", "leak"]);
    let mut cli = client(addr, &["--conns", "2"]);
    cli.wait_done(T);
    v4.wait_done(T);
    cli.finish();

    let ns = TestNetns::add();
    ip(&[
        "-n",
        &ns.name,
        "addr",
        "add",
        &format!("{LONG_V6}/128"),
        "dev",
        "lo",
        "nodad",
    ]);
    let p6 = free_port(ip4);
    let addr6 = format!("[{LONG_V6}]:{p6}");
    let mut v6 = ns.scenario(&[
        "server", "--bind", &addr6, "--conns", "3", "--on-eof", "leak",
    ]);
    v6.expect("listening", T);
    let mut cli = ns.scenario(&["client", "--connect", &addr6, "--conns", "3"]);
    cli.wait_done(T);
    v6.wait_done(T);
    cli.finish();
    Leakers {
        _v4: v4,
        _v6: v6,
        _ns: ns,
        ports: [p4, p6],
    }
}

/// A running `top --interval 200ms` for the two leakers' ports on a 24 x 60 terminal, once
/// it shows both; returns the screen lines then.
struct Session {
    _leakers: Leakers,
    pty: Pty,
    child: Top,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// The `tcptrace top` under test, killed when a failed assertion unwinds past it (a leaked one
/// stays attached to the kernel and skews whatever runs next on the host).
struct Top(Child);

impl Drop for Top {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn start() -> (Session, Vec<String>) {
    let l = leakers();
    let (pty, slave) = Pty::open(24, 60);
    let mut args = vec!["--interval".to_string(), "200ms".to_string()];
    for p in l.ports {
        args.extend(["--port".to_string(), p.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (child, stderr) = top_on(slave, &args);
    let child = Top(child);
    let lines = pty.wait_for("process table with both leakers", |s| {
        has(s, "PID") && s.iter().filter(|l| l.contains("tcpscenario")).count() == 2
    });
    let s = Session {
        _leakers: l,
        pty,
        child,
        stderr,
    };
    (s, lines)
}

fn has(lines: &[String], pat: &str) -> bool {
    lines.iter().any(|l| l.contains(pat))
}

fn line<'a>(lines: &'a [String], pat: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(pat))
        .unwrap_or_else(|| panic!("no {pat:?} in\n{}", lines.join("\n")))
}

#[test]
fn top_on_a_sixty_column_terminal_fits_every_line_and_quits_on_q() {
    // Both leakers, 2 and 3 CLOSE_WAIT sockets, by process.
    let (s, lines) = start();
    let pty = &s.pty;
    let header = line(&lines, "PID");
    assert!(
        header.contains("CLOSE_WAIT") && header.contains("TIME_WAIT"),
        "{header}"
    );
    assert!(has(&lines, "lost events 0"), "{lines:#?}");
    assert!(has(&lines, "(hidden, too narrow:"), "{lines:#?}");
    assert!(
        !has(&lines, "COMMAND"),
        "no room for command lines at 60 columns"
    );
    assert!(pty.alternate_screen());
    assert!(lines.iter().all(|l| l.chars().count() <= 60));
    assert_eq!(pty.wrapped(), Vec::<u16>::new(), "{lines:#?}");

    // Refreshes redraw what changed, not the whole screen.
    pty.wait_for("a few refreshes", |s| has(s, "up 2s"));
    assert_eq!(pty.clears(), 0, "the screen was cleared on a refresh");

    // By peer: the long IPv6 peer is cut, with an ellipsis, within the width.
    pty.send("e");
    let lines = pty.wait_for("peer table", |s| has(s, "PEER") && has(s, "fd00:"));
    let peer = line(&lines, "fd00:");
    assert!(peer.contains('…'), "{peer}");
    assert!(!peer.contains(LONG_V6), "{peer}");
    // (The sockets are older than the tracer: it cannot tell they were accepted, so each
    // client is a peer of its own.)
    assert!(has(&lines, "127.0.0.1:"), "{lines:#?}");
    assert_eq!(pty.wrapped(), Vec::<u16>::new(), "{lines:#?}");

    quit(s);
}

#[test]
fn top_redraws_for_a_new_terminal_size_and_shows_command_lines_where_they_fit() {
    let (s, _) = start();
    let pty = &s.pty;

    // Wider: every column, and the command lines tell the two tcpscenario apart.
    pty.resize(30, 200);
    let lines = pty.wait_for("command lines", |s| {
        has(s, "COMMAND") && has(s, "--bind 127.0.0.1:") && has(s, &format!("--bind [{LONG_V6}]"))
    });
    assert!(line(&lines, "PID").contains("TW_P50"), "{lines:#?}");
    assert!(!has(&lines, "(hidden, too narrow:"), "{lines:#?}");
    assert_eq!(pty.wrapped(), Vec::<u16>::new(), "{lines:#?}");
    assert!(pty.clears() >= 1, "a new size starts from a clear screen");

    // Narrow again: the command lines go, nothing wraps.
    pty.resize(24, 60);
    let lines = pty.wait_for("narrow screen", |s| {
        has(s, "(hidden, too narrow:") && !has(s, "COMMAND")
    });
    assert!(lines.iter().all(|l| l.chars().count() <= 60));
    assert_eq!(pty.wrapped(), Vec::<u16>::new(), "{lines:#?}");

    quit(s);
}
