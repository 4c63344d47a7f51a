//! Throughput of `trace`'s text formatting alone (`view::trace::TextWriter::line`), the per-event
//! cost of `tcptrace trace > /dev/null` once events are decoded and applied:
//!
//! ```text
//! cargo run --release -p tcptrace --example trace_format -- [--lines 2000000] [--rounds 7]
//! ```
//! Lines cycle through 4096 prepared transitions with owners named as real hosts name them
//! (`nginx`, `python3`, `kworker/0:1H`, ...), IPv4 and IPv6, into a sink. Prints one JSON line:
//! the best and median ns per line over the rounds (best is the least disturbed by other work on
//! a shared machine).

use std::io;
use std::time::Instant;

use tcptrace::clock::WallClock;
use tcptrace::event::{Event, SockId, Task, What};
use tcptrace::view::trace::{TextWriter, TraceLine};
use tcptrace_common::TcpState;

const NAMES: [&str; 8] = [
    "nginx",
    "python3",
    "java",
    "kworker/0:1H",
    "postgres",
    "envoy",
    "tcpscenario",
    "node",
];

fn lines() -> Vec<TraceLine> {
    (0..4096u64)
        .map(|i| {
            let v6 = i % 4 == 0;
            let local = if v6 {
                format!("[fd00::{:x}]:{}", i, 30000 + i)
            } else {
                format!("10.0.{}.{}:{}", i / 256 % 256, i % 256, 30000 + i)
            };
            let remote = if v6 {
                "[fd00::1]:443".to_string()
            } else {
                "10.1.2.3:8080".to_string()
            };
            let local = local.parse().unwrap();
            let remote = remote.parse().unwrap();
            let comm = NAMES[i as usize % NAMES.len()];
            TraceLine {
                event: Event {
                    ts_ns: 1_000_000_000 + i * 1_000,
                    sock: SockId {
                        cookie: i,
                        skaddr: 0xffff_8880_0000_0000 + i * 64,
                    },
                    netns: 4026531840,
                    local,
                    remote,
                    what: What::Transition {
                        old: TcpState::Established,
                        new: TcpState::FinWait1,
                    },
                    task: Task {
                        pid: 1000 + i as u32,
                        tid: 1000 + i as u32,
                        comm: comm.into(),
                        cgroup_id: 1,
                    },
                    owner_context: true,
                    from_backup: false,
                    connect_end: None,
                    timewait_read: None,
                },
                old: TcpState::Established,
                new: TcpState::FinWait1,
                local,
                remote,
                owner: Some((1000 + i as u32, comm.to_string())),
                owner_cgroup: 1,
                owner_method: Some("kernel_context"),
                dwell_ns: (i % 3 != 0).then_some(i * 12_345),
                note: (i % 7 == 0).then_some("time_wait"),
            }
        })
        .collect()
}

fn main() {
    let mut n_lines: usize = 2_000_000;
    let mut rounds: usize = 7;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v: usize = it
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{a} needs a number"));
        match a.as_str() {
            "--lines" => n_lines = v,
            "--rounds" => rounds = v,
            _ => panic!("unknown argument {a}"),
        }
    }
    let prepared = lines();
    let mut per_line = Vec::new();
    for _ in 0..rounds {
        let mut w = TextWriter::new(io::sink(), WallClock::with_offset_ns(0));
        let t = Instant::now();
        for l in prepared.iter().cycle().take(n_lines) {
            w.line(l).unwrap();
        }
        per_line.push(t.elapsed().as_nanos() as f64 / n_lines as f64);
    }
    per_line.sort_by(f64::total_cmp);
    println!(
        "{{\"lines\":{n_lines},\"rounds\":{rounds},\"best_ns_per_line\":{:.1},\"median_ns_per_line\":{:.1}}}",
        per_line[0],
        per_line[per_line.len() / 2]
    );
}
