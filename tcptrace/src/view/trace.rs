//! `tcptrace trace`: one line per transition, as aligned text or JSON lines.

use std::{
    io::{self, Write},
    net::SocketAddr,
};

use serde::Serialize;
use tcptrace_common::TcpState;

use super::fastfmt::{
    push_ip, push_json_f64, push_json_plain, push_json_str, push_left_fixed, push_ms3_right,
    push_printable_left_fixed, push_right, push_socket_addr_left, push_spaces, push_u64,
    push_zero_padded,
};
use crate::{clock::WallClock, event::Event};

/// One transition with what the lifecycle table knows about its socket.
#[derive(Clone, Debug)]
pub struct TraceLine {
    pub event: Event,
    pub old: TcpState,
    pub new: TcpState,
    /// The socket's endpoints as last known: at CLOSE the kernel has already released the local
    /// port (the event says 0), so the lifecycle table's tuple is shown.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The socket's owner, if known; never the softirq task.
    pub owner: Option<(u32, String)>,
    /// The owner's cgroup v2 id, 0 when unknown (owners found by the fd scan).
    pub owner_cgroup: u64,
    /// How the owner is known (kernel_context, listener, fd_scan, snapshot).
    pub owner_method: Option<&'static str>,
    /// Time spent in `old`, when the socket was seen entering it.
    pub dwell_ns: Option<u64>,
    /// What the lifecycle inferred: e.g. "time_wait" after FIN_WAIT2 -> CLOSE, "reset".
    pub note: Option<&'static str>,
}

/// Column widths grow to the widest endpoint seen so far and never shrink, so IPv6 lines stay
/// aligned with each other once one appears.
///
/// Each line is built in one reused buffer with the formatters of [`super::fastfmt`] (what
/// `format!` would write, byte for byte) and written with one `write_all`: no allocation per
/// line, and the local time of day is computed once per second.
pub struct TextWriter<W: Write> {
    out: W,
    clock: WallClock,
    local_w: usize,
    remote_w: usize,
    buf: Vec<u8>,
    tod: TimeOfDay,
}

impl<W: Write> TextWriter<W> {
    pub fn new(out: W, clock: WallClock) -> Self {
        TextWriter {
            out,
            clock,
            local_w: 21,
            remote_w: 21,
            buf: Vec::with_capacity(256),
            tod: TimeOfDay::default(),
        }
    }

    pub fn header(&mut self) -> io::Result<()> {
        writeln!(
            self.out,
            "{:<12} {:>7} {:<15} {:<lw$} {:<rw$} {:<11}    {:<11} {:>10}",
            "TIME",
            "PID",
            "COMM",
            "LOCAL",
            "REMOTE",
            "OLD",
            "NEW",
            "MS",
            lw = self.local_w,
            rw = self.remote_w
        )
    }

    /// `{time:<12} {pid:>7} {comm:<15} {local:<lw} {remote:<rw} {old:<11} -> {new:<11} {ms:>10}`
    /// and the note, if any, as `  (note)`.
    pub fn line(&mut self, l: &TraceLine) -> io::Result<()> {
        let b = &mut self.buf;
        b.clear();
        let start = b.len();
        self.tod.push(b, &self.clock, l.event.ts_ns);
        push_spaces(b, 12usize.saturating_sub(b.len() - start));
        b.push(b' ');
        match &l.owner {
            Some((pid, comm)) => {
                let mut ib = itoa::Buffer::new();
                push_right(b, ib.format(*pid), 7);
                b.push(b' ');
                // The process named itself: no terminal controls from it reach the screen.
                push_printable_left_fixed::<15>(b, comm);
            }
            None => {
                b.extend_from_slice(b"      - -              ");
            }
        }
        b.push(b' ');
        self.local_w = push_socket_addr_left(b, &l.local, self.local_w);
        b.push(b' ');
        self.remote_w = push_socket_addr_left(b, &l.remote, self.remote_w);
        b.push(b' ');
        push_left_fixed::<11>(b, l.old.name());
        b.extend_from_slice(b" -> ");
        push_left_fixed::<11>(b, l.new.name());
        b.push(b' ');
        match l.dwell_ns {
            Some(ns) => push_ms3_right(b, ns, 10),
            None => push_right(b, "-", 10),
        }
        if let Some(n) = l.note {
            b.extend_from_slice(b"  (");
            b.extend_from_slice(n.as_bytes());
            b.push(b')');
        }
        b.push(b'\n');
        self.out.write_all(b)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// `[v6]:port` for IPv6, `a.b.c.d:port` for IPv4: what `ss` prints.
pub fn endpoint(a: &std::net::SocketAddr) -> String {
    a.to_string()
}

/// `HH:MM:SS.mmm` in local time, with the `HH:MM:SS` of the last second seen kept, so
/// `localtime_r` runs once per second of event time rather than once per line.
#[derive(Default)]
struct TimeOfDay {
    /// The whole second of `hms`, if any yet.
    whole: Option<libc::time_t>,
    hms: Vec<u8>,
}

impl TimeOfDay {
    fn push(&mut self, b: &mut Vec<u8>, clock: &WallClock, ts_ns: u64) {
        let secs = clock.unix_secs(ts_ns);
        let floor = secs.floor();
        let whole = floor as libc::time_t;
        if self.whole != Some(whole) {
            self.hms.clear();
            self.hms.extend_from_slice(hms(whole).as_bytes());
            self.whole = Some(whole);
        }
        b.extend_from_slice(&self.hms);
        b.push(b'.');
        let ms = ((secs - floor) * 1000.0) as u32;
        push_zero_padded(b, ms as u64, 3);
    }
}

fn hms(whole: libc::time_t) -> String {
    let mut t = libc::tm {
        tm_sec: 0,
        tm_min: 0,
        tm_hour: 0,
        tm_mday: 0,
        tm_mon: 0,
        tm_year: 0,
        tm_wday: 0,
        tm_yday: 0,
        tm_isdst: 0,
        tm_gmtoff: 0,
        tm_zone: std::ptr::null(),
    };
    // SAFETY: localtime_r writes only into `t`.
    unsafe { libc::localtime_r(&whole, &mut t) };
    format!("{:02}:{:02}:{:02}", t.tm_hour, t.tm_min, t.tm_sec)
}

/// The JSON line for one transition. Every field is named and typed; absent facts are `null`.
#[derive(Serialize)]
pub struct JsonLine<'a> {
    /// Wall-clock time, seconds since the Unix epoch.
    pub time: f64,
    /// Kernel CLOCK_MONOTONIC timestamp, ns.
    pub ts_ns: u64,
    /// Owner pid, or null when not known.
    pub pid: Option<u32>,
    pub comm: Option<&'a str>,
    pub owner_method: Option<&'static str>,
    /// "ipv4" or "ipv6".
    pub family: &'static str,
    pub laddr: String,
    pub lport: u16,
    pub raddr: String,
    pub rport: u16,
    pub old: &'static str,
    pub new: &'static str,
    /// Milliseconds spent in `old`, or null when the socket was not seen entering it.
    pub dwell_ms: Option<f64>,
    pub note: Option<&'static str>,
    /// Stable socket id for this run: the cookie (tp_btf path) or the kernel address (classic
    /// path, where an address is reused after the socket closes).
    pub sock: u64,
    pub cookie: u64,
    pub skaddr: String,
    pub netns: u32,
    /// The task current in the kernel when the transition happened (may be swapper or the
    /// peer: that is why `pid` is separate).
    pub task_pid: u32,
    /// Its name and cgroup: read by the kernel only for transitions made in the owner's own
    /// syscall (`emit::fill_task`: the cgroup read costs half a transition), null otherwise.
    pub task_comm: Option<&'a str>,
    pub cgroup_id: Option<u64>,
    /// Recovered by the backup kernel program.
    pub recovered: bool,
}

impl<'a> JsonLine<'a> {
    pub fn new(l: &'a TraceLine, clock: &WallClock) -> JsonLine<'a> {
        let e = &l.event;
        JsonLine {
            time: clock.unix_secs(e.ts_ns),
            ts_ns: e.ts_ns,
            pid: l.owner.as_ref().map(|o| o.0),
            comm: l.owner.as_ref().map(|o| o.1.as_str()),
            owner_method: l.owner_method,
            family: if e.is_ipv6() { "ipv6" } else { "ipv4" },
            laddr: l.local.ip().to_string(),
            lport: l.local.port(),
            raddr: l.remote.ip().to_string(),
            rport: l.remote.port(),
            old: l.old.name(),
            new: l.new.name(),
            dwell_ms: l.dwell_ns.map(|ns| ns as f64 / 1e6),
            note: l.note,
            sock: e.sock.key(),
            cookie: e.sock.cookie,
            skaddr: format!("{:#x}", e.sock.skaddr),
            netns: e.netns,
            task_pid: e.task.pid,
            task_comm: e.owner_context.then_some(e.task.comm.as_str()),
            cgroup_id: e.owner_context.then_some(e.task.cgroup_id),
            recovered: e.from_backup,
        }
    }
}

pub fn write_json<W: Write>(out: &mut W, l: &TraceLine, clock: &WallClock) -> io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    push_json(&mut buf, l, clock);
    out.write_all(&buf)
}

/// Appends the JSON line for `l` (what `serde_json` writes for [`JsonLine`], byte for byte, and
/// a newline) to `b`, without building the `JsonLine` or any string.
pub fn push_json(b: &mut Vec<u8>, l: &TraceLine, clock: &WallClock) {
    let e = &l.event;
    fn opt_str(b: &mut Vec<u8>, s: Option<&str>) {
        match s {
            Some(s) => push_json_str(b, s),
            None => b.extend_from_slice(b"null"),
        }
    }
    // Owner methods, notes and state names are identifiers: nothing to escape.
    fn opt_plain(b: &mut Vec<u8>, s: Option<&'static str>) {
        match s {
            Some(s) => push_json_plain(b, s),
            None => b.extend_from_slice(b"null"),
        }
    }
    b.extend_from_slice(b"{\"time\":");
    push_json_f64(b, clock.unix_secs(e.ts_ns));
    b.extend_from_slice(b",\"ts_ns\":");
    push_u64(b, e.ts_ns);
    b.extend_from_slice(b",\"pid\":");
    match &l.owner {
        Some((pid, _)) => push_u64(b, *pid as u64),
        None => b.extend_from_slice(b"null"),
    }
    b.extend_from_slice(b",\"comm\":");
    opt_str(b, l.owner.as_ref().map(|o| o.1.as_str()));
    b.extend_from_slice(b",\"owner_method\":");
    opt_plain(b, l.owner_method);
    b.extend_from_slice(if e.is_ipv6() {
        b",\"family\":\"ipv6\",\"laddr\":\""
    } else {
        b",\"family\":\"ipv4\",\"laddr\":\""
    });
    // Addresses need no escaping.
    push_ip(b, &l.local.ip());
    b.extend_from_slice(b"\",\"lport\":");
    push_u64(b, l.local.port() as u64);
    b.extend_from_slice(b",\"raddr\":\"");
    push_ip(b, &l.remote.ip());
    b.extend_from_slice(b"\",\"rport\":");
    push_u64(b, l.remote.port() as u64);
    b.extend_from_slice(b",\"old\":");
    push_json_plain(b, l.old.name());
    b.extend_from_slice(b",\"new\":");
    push_json_plain(b, l.new.name());
    b.extend_from_slice(b",\"dwell_ms\":");
    match l.dwell_ns {
        Some(ns) => push_json_f64(b, ns as f64 / 1e6),
        None => b.extend_from_slice(b"null"),
    }
    b.extend_from_slice(b",\"note\":");
    opt_plain(b, l.note);
    b.extend_from_slice(b",\"sock\":");
    push_u64(b, e.sock.key());
    b.extend_from_slice(b",\"cookie\":");
    push_u64(b, e.sock.cookie);
    b.extend_from_slice(b",\"skaddr\":\"0x");
    super::fastfmt::push_hex(b, e.sock.skaddr);
    b.extend_from_slice(b"\",\"netns\":");
    push_u64(b, e.netns as u64);
    b.extend_from_slice(b",\"task_pid\":");
    push_u64(b, e.task.pid as u64);
    b.extend_from_slice(b",\"task_comm\":");
    opt_str(b, e.owner_context.then_some(e.task.comm.as_str()));
    b.extend_from_slice(b",\"cgroup_id\":");
    match e.owner_context {
        true => push_u64(b, e.task.cgroup_id),
        false => b.extend_from_slice(b"null"),
    }
    b.extend_from_slice(if e.from_backup {
        b",\"recovered\":true}\n"
    } else {
        b",\"recovered\":false}\n"
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{SockId, Task, What};

    fn ev() -> Event {
        Event {
            ts_ns: 5_000_000_000,
            sock: SockId {
                cookie: 9,
                skaddr: 0xffff_0000_0000_1000,
            },
            netns: 1,
            local: "[::1]:8080".parse().unwrap(),
            remote: "[::1]:40000".parse().unwrap(),
            what: What::Transition {
                old: TcpState::Established,
                new: TcpState::CloseWait,
            },
            task: Task {
                pid: 0,
                tid: 0,
                comm: "swapper/1".into(),
                cgroup_id: 1,
            },
            owner_context: false,
            from_backup: false,
            connect_end: None,
            timewait_read: None,
        }
    }

    /// A line of `e` (ESTABLISHED -> CLOSE_WAIT) with this owner, owner method and dwell.
    fn line_of(
        e: Event,
        owner: Option<(u32, &str)>,
        owner_method: Option<&'static str>,
        dwell_ns: Option<u64>,
    ) -> TraceLine {
        TraceLine {
            local: e.local,
            remote: e.remote,
            event: e,
            old: TcpState::Established,
            new: TcpState::CloseWait,
            owner: owner.map(|(pid, comm)| (pid, comm.into())),
            owner_cgroup: 0,
            owner_method,
            dwell_ns,
            note: None,
        }
    }

    #[test]
    fn text_line_shows_dash_for_unknown_owner_and_aligns() {
        let e = ev();
        let mut buf = Vec::new();
        let mut w = TextWriter::new(&mut buf, WallClock::with_offset_ns(0));
        let line = line_of(e, None, None, Some(1_500_000));
        w.line(&line).unwrap();
        let s = String::from_utf8(buf).unwrap();
        assert!(s.contains("      - -"), "{s}");
        assert!(
            !s.contains("swapper"),
            "the softirq task is never shown as owner: {s}"
        );
        assert!(s.contains("ESTABLISHED -> CLOSE_WAIT"), "{s}");
        assert!(s.contains("1.500"), "{s}");
        assert!(s.contains("[::1]:8080"), "{s}");
    }

    #[test]
    fn text_line_neutralises_terminal_controls_in_comm() {
        let e = ev();
        let mut buf = Vec::new();
        let mut w = TextWriter::new(&mut buf, WallClock::with_offset_ns(0));
        for comm in ["\x1b[2Jevil\x07", "\u{9b}2Jlonger-than-15-\x1b"] {
            let line = line_of(e.clone(), Some((7, comm)), Some("listener"), None);
            w.line(&line).unwrap();
        }
        let s = String::from_utf8(buf).unwrap();
        assert!(!s.chars().any(|c| c.is_control() && c != '\n'), "{s:?}");
        assert!(s.contains("      7 ?[2Jevil?       [::1]:8080"), "{s:?}");
        assert!(
            s.contains("      7 ?2Jlonger-than-15-? [::1]:8080"),
            "{s:?}"
        );
    }

    /// Outside the owner's syscall the kernel reads no name or cgroup: null, never stale.
    #[test]
    fn json_line_has_no_task_name_outside_the_owner_context() {
        let e = ev();
        let line = line_of(e, None, None, None);
        let mut buf = Vec::new();
        write_json(&mut buf, &line, &WallClock::with_offset_ns(0)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["task_pid"], 0);
        assert_eq!(v["task_comm"], serde_json::Value::Null);
        assert_eq!(v["cgroup_id"], serde_json::Value::Null);
    }

    #[test]
    fn json_line_is_typed_and_escapes_comm() {
        let mut e = ev();
        e.task.comm = "evil\"\n{\x1b[2J\x07".into();
        e.owner_context = true;
        let line = line_of(e, Some((7, "a\"b\x1b]0;title\x07")), Some("listener"), None);
        let mut buf = Vec::new();
        write_json(&mut buf, &line, &WallClock::with_offset_ns(0)).unwrap();
        let s = String::from_utf8(buf).unwrap();
        assert_eq!(s.lines().count(), 1);
        // Escaped as \u001b and \u0007: no control byte reaches the terminal.
        assert!(!s.trim_end().bytes().any(|b| b < 0x20), "{s:?}");
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["pid"], 7);
        assert_eq!(v["comm"], "a\"b\x1b]0;title\x07");
        assert_eq!(v["task_comm"], "evil\"\n{\x1b[2J\x07");
        assert_eq!(v["cgroup_id"], 1);
        assert_eq!(v["dwell_ms"], serde_json::Value::Null);
        assert_eq!(v["family"], "ipv6");
        assert_eq!(v["lport"], 8080);
        assert_eq!(v["old"], "ESTABLISHED");
    }
}
