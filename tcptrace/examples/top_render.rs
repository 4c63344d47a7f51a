//! What one `top` refresh costs with many processes on the host: the summary, then the screen
//! drawn for a terminal (ratatui: layout, cell diff, escape sequences) or printed plain.
//!
//! ```text
//! cargo run --release -p tcptrace --example top_render -- [--processes 1000] [--rows 20]
//! ```
//! Every process holds CLOSE_WAIT and TIME_WAIT sockets (IPv4 and IPv6 peers), so every one is
//! a row of the summary; `--rows` is `top --rows`. The terminal is 200 x 50 cells and its
//! bytes go to a counter. Each frame has a new clock, as each refresh has, so the diff always
//! has something to send. Times are medians of 5 rounds of 200 frames, per frame: `summary_us`
//! builds the summary, `content_us` the screen's text, `plain_us` that and the plain snapshot,
//! `terminal_us` that and the terminal's frame (whose bytes are `terminal_refresh_bytes`).

use std::cell::Cell;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use ratatui::{Terminal, TerminalOptions, Viewport, backend::CrosstermBackend, layout::Rect};
use tcptrace::aggregate::{AggLimits, Aggregates, Summary, SummaryInput, summary};
use tcptrace::event::{Event, SockId, Task, What};
use tcptrace::lifecycle::{Comm, Limits, SocketTable};
use tcptrace::owner::cmdline::CommandLine;
use tcptrace::view::top::terminal::{Commands, draw, fitting};
use tcptrace::view::top::{Content, GroupBy, SortBy, TopState};
use tcptrace_common::TcpState::{self, *};

const NAMES: [&str; 5] = ["python3", "java", "nginx", "node", "postgres"];
const FRAMES: u32 = 200;
const ROUNDS: usize = 5;

/// Counts the bytes a terminal would receive (the count is shared: the backend owns this).
struct Counter(Rc<Cell<u64>>);

impl Write for Counter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.set(self.0.get() + b.len() as u64);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every process has a command line of about 60 characters.
struct Lines(Vec<CommandLine>);

impl Commands for Lines {
    fn command(&self, pid: u32, _comm: Comm) -> Option<&CommandLine> {
        self.0.get(pid.checked_sub(10_000)? as usize)
    }
}

struct Host {
    table: SocketTable,
    agg: Aggregates,
    ts: u64,
    id: u64,
}

impl Host {
    fn apply(
        &mut self,
        sk: u64,
        local: SocketAddr,
        remote: SocketAddr,
        t: (TcpState, TcpState),
        pid: u32,
    ) {
        self.ts += 1_000;
        let ev = Event {
            ts_ns: self.ts,
            sock: SockId {
                cookie: sk,
                skaddr: sk << 12,
            },
            netns: 4026531840,
            local,
            remote,
            what: What::Transition { old: t.0, new: t.1 },
            task: Task {
                pid,
                tid: pid,
                comm: NAMES[pid as usize % NAMES.len()].into(),
                cgroup_id: 100 + u64::from(pid),
            },
            owner_context: true,
            from_backup: false,
            connect_end: None,
            timewait_read: None,
        };
        let a = self.table.apply(&ev);
        self.agg.observe_applied(&a, ev.ts_ns);
    }

    /// One connection of `pid` to `remote`, through `states`.
    fn connection(&mut self, pid: u32, remote: SocketAddr, states: &[TcpState]) {
        self.id += 1;
        let port = 20_000 + (self.id % 40_000) as u16;
        let local = match remote.ip() {
            IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
            IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
        };
        for w in states.windows(2) {
            self.apply(self.id, local, remote, (w[0], w[1]), pid);
        }
    }
}

fn host(processes: u32) -> Host {
    let mut h = Host {
        table: SocketTable::new(Limits::default()),
        agg: Aggregates::new(0, AggLimits::default()),
        ts: 0,
        id: 0,
    };
    for i in 0..processes {
        let pid = 10_000 + i;
        let v6: Ipv6Addr = format!("2001:db8:aaaa:bbbb:cccc:dddd:{:x}:1", i % 65536)
            .parse()
            .unwrap();
        for c in 0..=(i % 4) {
            let peer = if c % 2 == 0 {
                SocketAddr::new(v6.into(), 8443)
            } else {
                SocketAddr::new(
                    Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250) as u8).into(),
                    5432,
                )
            };
            h.connection(pid, peer, &[Close, SynSent, Established, CloseWait]);
        }
        let web = SocketAddr::new(Ipv4Addr::new(10, 2, 0, 1).into(), 80);
        for _ in 0..(i % 3) {
            h.connection(
                pid,
                web,
                &[Close, SynSent, Established, FinWait1, FinWait2, TimeWait],
            );
        }
    }
    h
}

/// What each refresh starts from (`Session::summary_named` without the container names).
fn summary_of(h: &Host) -> Summary {
    summary(
        &h.table,
        &h.agg,
        &SummaryInput {
            now_ns: h.ts + 5_000_000_000,
            lost_events: 0,
            lost_uncounted: 0,
            timewait_hook_missed: 0,
            port_filter_forgot: 0,
            transitions_seen: 0,
            transitions_lost: 0,
            timewait_method: "inferred",
            port_range: (32768, 60999),
            top: usize::MAX,
        },
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median µs per call of `f` (called with the frame number).
fn time(mut f: impl FnMut(u32)) -> f64 {
    let rounds = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for n in 0..FRAMES {
                f(n);
            }
            t.elapsed().as_secs_f64() * 1e6 / f64::from(FRAMES)
        })
        .collect();
    median(rounds)
}

fn main() {
    let mut processes = 1000;
    let mut rows = 20;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for w in args.chunks(2) {
        let v = w
            .get(1)
            .and_then(|v| v.parse().ok())
            .expect("a number after each flag");
        match w[0].as_str() {
            "--processes" => processes = v,
            "--rows" => rows = v as usize,
            a => panic!("unknown argument {a}"),
        }
    }
    let h = host(processes);
    let s = summary_of(&h);
    assert_eq!(s.by_pid.len(), processes as usize);
    let st = TopState {
        by: GroupBy::Pid,
        sort: SortBy::CloseWait,
        rows,
    };
    let clock = |n: u32| format!("12:{:02}:{:02}", n / 60 % 60, n % 60);
    let lines = Lines(
        (0..processes)
            .map(|i| {
                let args = [
                    format!("/usr/local/bin/{}", NAMES[i as usize % NAMES.len()]),
                    format!("/srv/app/worker-{i}.py"),
                    "--queue".to_string(),
                    format!("q{}", i % 17),
                ];
                CommandLine::new(&args).unwrap()
            })
            .collect(),
    );

    let summary_us = time(|_| {
        std::hint::black_box(summary_of(&h));
    });
    let content_us = time(|n| {
        std::hint::black_box(Content::new(&s, &st, 0, &clock(n), None));
    });
    let mut plain_bytes = 0;
    let plain_us = time(|n| {
        let text = Content::new(&s, &st, 0, &clock(n), None).plain();
        plain_bytes = text.len() + 1;
        std::hint::black_box(text);
    });
    let area = Rect::new(0, 0, 200, 50);
    let sent = Rc::new(Cell::new(0));
    let mut term = Terminal::with_options(
        CrosstermBackend::new(Counter(sent.clone())),
        TerminalOptions {
            viewport: Viewport::Fixed(area),
        },
    )
    .unwrap();
    // As the sink does: no more rows than the terminal shows.
    let st = fitting(&st, area.height);
    // The first frame draws everything; what follows is what a refresh sends.
    let c = Content::new(&s, &st, 0, &clock(0), None);
    term.draw(|f| draw(f, &c, &lines)).unwrap();
    let first_bytes = sent.get();
    let drawn_us = time(|n| {
        let c = Content::new(&s, &st, 0, &clock(n + 1), None);
        term.draw(|f| draw(f, &c, &lines)).unwrap();
    });
    let frames = f64::from(FRAMES) * ROUNDS as f64;
    let refresh_bytes = (sent.get() - first_bytes) as f64 / frames;
    println!(
        "{{\"processes\":{processes},\"rows\":{rows},\"summary_us\":{summary_us:.1},\
         \"content_us\":{content_us:.1},\
         \"plain_us\":{plain_us:.1},\"plain_bytes\":{plain_bytes},\"terminal_us\":{drawn_us:.1},\
         \"terminal_first_bytes\":{first_bytes},\"terminal_refresh_bytes\":{refresh_bytes:.0}}}"
    );
}
