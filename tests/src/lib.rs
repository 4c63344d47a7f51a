//! Loopback scenarios shared by the integration tests and the benchmarks: a scripted TCP peer
//! run as its own process (`tcpscenario`), the tracer run as a child, and `ss` as the referee.
//!
//! Everything here panics on failure rather than returning errors, so a failing test keeps its
//! backtrace. Nothing skips: without privileges the tracer fails to start and the test fails.

pub mod cgroups;
pub mod deploy;
pub mod exporter;
pub mod kernel;
pub mod netns;
pub mod podman;
pub mod tls;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// The tracer binary: `TCPTRACE_BIN`, else next to the test executable's target dir.
pub fn tcptrace_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TCPTRACE_BIN") {
        return PathBuf::from(p);
    }
    target_bin("tcptrace")
}

/// The scripted peer: `TCPSCENARIO_BIN`, else next to the test executable.
pub fn scenario_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TCPSCENARIO_BIN") {
        return PathBuf::from(p);
    }
    target_bin("tcpscenario")
}

/// The connection storm: `TCPSTORM_BIN`, else next to the test executable.
pub fn storm_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TCPSTORM_BIN") {
        return PathBuf::from(p);
    }
    target_bin("tcpstorm")
}

fn target_bin(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: build it first (cargo build --workspace)",
        p.display()
    );
    p
}

/// A port for a test server that no socket on this host uses, now or by chance later.
///
/// It lies below `ip_local_port_range`, so no `connect` anywhere (another test running in
/// parallel, or a daemon) can pick it as its ephemeral local port: with `bind(:0)`, which draws
/// from that range, a parallel test's client once got the port a report test filtered on, and
/// its TIME_WAIT showed in that report's totals (CI, 31 for 30). It is also absent from
/// `/proc/net/tcp{,6}` in every state, TIME_WAIT included, as local or remote port, so a socket
/// a previous test left on it is not in the tracer's start-up snapshot. Successive calls, in
/// this process and in the next test binary, walk the window from a pid-derived start, so ports
/// are not reused while their TIME_WAIT lingers (60 s).
pub fn free_port(ip: IpAddr) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    // 8000 ports under the range; on a host whose range starts low, the ports just above 1024.
    let (base, size) = if low > 9024 {
        (low - 8000, 8000)
    } else {
        (1025, 8000)
    };
    let start = std::process::id().wrapping_mul(2_654_435_761) % size;
    for _ in 0..size {
        let port = (base + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % size) as u16;
        if !port_in_use(port) && TcpListener::bind(SocketAddr::new(ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {base}..{}", base + size)
}

/// Whether any TCP socket in this network namespace has `port` as its local or remote port.
fn port_in_use(port: u16) -> bool {
    let hex = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                let mut cols = l.split_whitespace().skip(1);
                cols.by_ref().take(2).any(|addr| addr.ends_with(&hex))
            })
        })
    })
}

/// A child process whose stdout is read line by line in the background.
pub struct Proc {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            stdin,
            lines: rx,
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line starting with `prefix`; returns the rest of it.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(_) => panic!(
                    "no line starting with {prefix:?} within {timeout:?}; saw {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Lines starting with `prefix` seen so far (after `expect` calls).
    pub fn seen_with(&self, prefix: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_string()))
            .collect()
    }

    /// Collects the lines printed so far (waiting up to `quiet` for each next one).
    pub fn drain(&mut self, quiet: Duration) {
        while let Ok(l) = self.lines.recv_timeout(quiet) {
            self.seen.push(l);
        }
    }

    /// Waits for `done`, collecting everything before it.
    pub fn wait_done(&mut self, timeout: Duration) {
        self.expect("done", timeout);
    }

    /// Closes stdin (the peer then releases what it kept) and waits for exit.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `tcpscenario server ...`; returns once it listens.
pub fn server(bind: SocketAddr, args: &[&str]) -> (Proc, u16) {
    let mut p = Proc::spawn(
        Command::new(scenario_bin())
            .arg("server")
            .arg("--bind")
            .arg(bind.to_string())
            .args(args),
    );
    let port: u16 = p
        .expect("listening", Duration::from_secs(10))
        .parse()
        .unwrap();
    (p, port)
}

/// `tcpscenario client ...`.
pub fn client(to: SocketAddr, args: &[&str]) -> Proc {
    Proc::spawn(
        Command::new(scenario_bin())
            .arg("client")
            .arg("--connect")
            .arg(to.to_string())
            .args(args),
    )
}

/// The tracer as a child process.
/// A child process killed when dropped still running: a test that fails between starting a
/// tracer and stopping it must not leave it attached to the kernel (it would skew every later
/// test and benchmark on the host).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub struct Tracer {
    child: KillOnDrop,
    stdout: thread::JoinHandle<String>,
    stderr: thread::JoinHandle<String>,
    pub started: String,
    /// When it reported its programs attached.
    attached_at: Instant,
}

/// The findings of a `diagnose --json` document of one kind.
pub fn findings<'a>(doc: &'a serde_json::Value, kind: &str) -> Vec<&'a serde_json::Value> {
    doc["findings"]
        .as_array()
        .expect("findings array")
        .iter()
        .filter(|f| f["kind"] == kind)
        .collect()
}

/// The lines of a `report --json` document that say what the table held and how it got there,
/// for a failed assertion's message: the whole document is hundreds of lines, and CI shows only
/// its first screen.
pub fn report_digest(doc: &serde_json::Value) -> String {
    let rows = |key: &str, fields: &[&str]| {
        doc[key]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        let cols: Vec<String> =
                            fields.iter().map(|f| format!("{f}={}", r[*f])).collect();
                        format!("  {}\n", cols.join(" "))
                    })
                    .collect::<String>()
            })
            .unwrap_or_default()
    };
    format!(
        "sockets {} totals {}\ntransitions_seen {} transitions_lost {} lost_events {} \
         lost_uncounted {} duplicates {}\nunattributed {}\ncorrections {}\nby_netns\n{}by_pid\n{}",
        doc["sockets"],
        doc["totals"],
        doc["transitions_seen"],
        doc["transitions_lost"],
        doc["lost_events"],
        doc["lost_uncounted"],
        doc["duplicates"],
        doc["unattributed"],
        doc["corrections"],
        rows("by_netns", &["netns", "sockets", "time_wait", "close_wait"]),
        rows(
            "by_pid",
            &[
                "pid",
                "comm",
                "time_wait",
                "time_wait_entries",
                "time_wait_refused",
                "close_wait",
            ]
        ),
    )
}

pub struct TracerOutput {
    pub stdout: String,
    pub stderr: String,
    pub code: Option<i32>,
}

impl TracerOutput {
    /// stdout parsed as JSON lines.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }

    /// stdout parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("bad JSON document: {e}\n{}", self.stdout))
    }
}

impl Tracer {
    /// Starts `tcptrace ARGS` and waits until its programs are attached (the "attached" line on
    /// stderr). Panics with the tracer's own error if it exits first: lacking privileges is a
    /// failure, never a skip.
    pub fn start(args: &[&str]) -> Tracer {
        Tracer::start_command(Command::new(tcptrace_bin()).args(args))
    }

    /// Like [`Tracer::start`], for a prepared command (e.g. under `setpriv`).
    pub fn start_command(cmd: &mut Command) -> Tracer {
        let args = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcptrace");
        let mut out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let stdout = thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let (tx, rx) = mpsc::channel::<String>();
        let stderr = thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut early = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    early.push(l.clone());
                    if l.contains("attached") {
                        return Tracer {
                            child: KillOnDrop(child),
                            stdout,
                            stderr,
                            started: early.join("\n"),
                            attached_at: Instant::now(),
                        };
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = child.wait();
                    panic!(
                        "tcptrace {args:?} exited before attaching:\n{}",
                        early.join("\n")
                    );
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "tcptrace {args:?} did not attach within 60 s:\n{}",
                    early.join("\n")
                );
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Sends `sig` (SIGINT by default for a clean stop) and collects the output.
    pub fn stop_with(self, sig: i32) -> TracerOutput {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.0.id() as i32, sig) };
        self.wait()
    }

    pub fn stop(self) -> TracerOutput {
        self.stop_with(libc::SIGINT)
    }

    /// Stops it (SIGINT) once `at_least` has passed since it attached. For a scenario that runs
    /// first and is compared with `ss` afterwards: a `--duration` timer alone can end before a
    /// slow guest finishes the scenario, and `ss` then counts sockets the tracer never saw.
    pub fn stop_after(self, at_least: Duration) -> TracerOutput {
        if let Some(rest) = at_least.checked_sub(self.attached_at.elapsed()) {
            thread::sleep(rest);
        }
        self.stop()
    }

    /// Waits for the tracer to exit on its own (e.g. `--duration`).
    pub fn wait(mut self) -> TracerOutput {
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Ok(Some(st)) = self.child.0.try_wait() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.0.kill();
                break self.child.0.wait().unwrap();
            }
            thread::sleep(Duration::from_millis(20));
        };
        TracerOutput {
            stdout: self.stdout.join().unwrap_or_default(),
            stderr: self.stderr.join().unwrap_or_default(),
            code: status.code(),
        }
    }
}

/// A number the tracer's closing line on stderr (`N events in Ts; lost ...`) gives after
/// `what`: " events (" for the lost transitions, "ring full", "nested runs skipped".
pub fn closing_count(stderr: &str, what: &str) -> u64 {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("; lost "))
        .unwrap_or_else(|| panic!("no summary: {stderr}"));
    let after = line
        .split(what)
        .nth(1)
        .unwrap_or_else(|| panic!("no {what:?} in {line}"));
    after
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Runs tcptrace to completion with the given args (for commands that exit by themselves or
/// fail), returning its output.
pub fn run_tcptrace(args: &[&str]) -> TracerOutput {
    run_to_end(Command::new(tcptrace_bin()).args(args))
}

/// Runs a command that starts tcptrace (e.g. through `setpriv`) to completion.
pub fn run_to_end(cmd: &mut Command) -> TracerOutput {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    TracerOutput {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
    }
}

/// `ss -tanH state STATE` rows matching a filter expression (e.g. `dport = :8080`).
pub fn ss_count(state: &str, filter: &str) -> usize {
    let out = Command::new("ss")
        .args(["-tanH", "state", state, filter])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// `ss -tanH` rows whose local or remote port is `port`: (state, local, remote).
pub fn ss_rows(port: u16) -> Vec<(String, String, String)> {
    let out = Command::new("ss")
        .args(["-tanH", &format!("( sport = :{port} or dport = :{port} )")])
        .output()
        .expect("run ss");
    assert!(
        out.status.success(),
        "ss failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ss_tuples(&out.stdout)
}

/// (state, local, peer) of each row `ss -tanH` printed.
fn ss_tuples(stdout: &[u8]) -> Vec<(String, String, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5).then(|| (f[0].to_string(), f[3].to_string(), f[4].to_string()))
        })
        .collect()
}

/// Writes a line to a child's stdin (unused by most tests; kept for interactive peers).
pub fn send_line(stdin: &mut ChildStdin, line: &str) {
    writeln!(stdin, "{line}").expect("write to child");
}

/// Addresses to run every scenario over.
pub fn loopbacks() -> [IpAddr; 2] {
    ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()]
}

/// The `OLD->NEW` of each `trace --json` line, in order: `["CLOSE->SYN_SENT", ...]`.
pub fn transitions(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            format!(
                "{}->{}",
                l["old"].as_str().unwrap(),
                l["new"].as_str().unwrap()
            )
        })
        .collect()
}

/// One socket's transitions from `trace --json` output, in order.
#[derive(Debug, Clone)]
pub struct SocketTrace {
    pub cookie: u64,
    pub lines: Vec<serde_json::Value>,
}

impl SocketTrace {
    /// `["CLOSE->SYN_SENT", ...]`.
    pub fn transitions(&self) -> Vec<String> {
        transitions(&self.lines)
    }

    /// Distinct owner pids reported (null excluded).
    pub fn pids(&self) -> Vec<u64> {
        let mut p: Vec<u64> = self
            .lines
            .iter()
            .filter_map(|l| l["pid"].as_u64())
            .collect();
        p.sort();
        p.dedup();
        p
    }

    /// The line for one transition, e.g. `("ESTABLISHED", "FIN_WAIT1")`.
    pub fn line(&self, old: &str, new: &str) -> &serde_json::Value {
        self.lines
            .iter()
            .find(|l| l["old"] == old && l["new"] == new)
            .unwrap_or_else(|| panic!("no {old}->{new} in {:?}", self.transitions()))
    }
}

/// Splits trace lines into socket lives: grouped by the `sock` id, and ended at `-> CLOSE`
/// (on the classic tracepoint path the id is the kernel address, which is reused afterwards).
pub fn socket_lives(lines: &[serde_json::Value]) -> Vec<SocketTrace> {
    let mut open: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut lives: Vec<SocketTrace> = Vec::new();
    for l in lines {
        let Some(id) = l["sock"].as_u64() else {
            continue;
        };
        // A birth starts a new life even when the id is still open: an address-keyed stream
        // (the classic tracepoint, tp_btf before 5.12) reuses a freed socket's address, and a
        // close lost to a full ring leaves its life open.
        let birth = l["old"] == "CLOSE" || (l["old"] == "LISTEN" && l["new"] == "SYN_RECV");
        if birth {
            open.remove(&id);
        }
        let idx = *open.entry(id).or_insert_with(|| {
            lives.push(SocketTrace {
                cookie: id,
                lines: Vec::new(),
            });
            lives.len() - 1
        });
        lives[idx].lines.push(l.clone());
        if l["new"] == "CLOSE" {
            open.remove(&id);
        }
    }
    lives
}

/// Socket lives that touched `port` locally (`local == true`) or remotely.
pub fn sockets_on_port(lines: &[serde_json::Value], port: u16, local: bool) -> Vec<SocketTrace> {
    let key = if local { "lport" } else { "rport" };
    socket_lives(lines)
        .into_iter()
        .filter(|s| s.lines.iter().any(|l| l[key].as_u64() == Some(port as u64)))
        .collect()
}

/// The socket life with this endpoint pair, as tcpscenario prints it (`connected LOCAL PEER`,
/// `accepted LOCAL PEER`): the pair tells an accepted socket from its listener.
pub fn socket_with(lines: &[serde_json::Value], endpoints: &str) -> SocketTrace {
    let mut it = endpoints
        .split_whitespace()
        .map(|a| a.parse::<SocketAddr>().expect("socket address"));
    let (local, remote) = (it.next().expect("local"), it.next().expect("peer"));
    let matches = |l: &serde_json::Value, a: &SocketAddr, ip: &str, port: &str| {
        l[port].as_u64() == Some(a.port() as u64)
            && l[ip].as_str().and_then(|x| x.parse::<IpAddr>().ok()) == Some(a.ip())
    };
    socket_lives(lines)
        .into_iter()
        .find(|s| {
            s.lines.iter().any(|l| {
                matches(l, &local, "laddr", "lport") && matches(l, &remote, "raddr", "rport")
            })
        })
        .unwrap_or_else(|| panic!("no socket {local} -> {remote}"))
}
