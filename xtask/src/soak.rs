//! `cargo xtask soak`: connection churn with CLOSE_WAIT leaks for a while under
//! `tcptrace report`, then: do its counts equal `ss`, did its memory stay flat after warm-up,
//! and were events lost? The result is appended to BENCHMARKS.md. Not part of CI.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench::{self, TracerChild};
use crate::measure::{self, median};
use crate::{cmd, workspace};

/// Where the leaking server listens (outside the storm's 127.0.77.0/24).
const LEAK_IP: &str = "127.0.78.1";
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Storm connections per sample period: about 60k TIME_WAIT sockets at steady state, well
/// under `net.ipv4.tcp_max_tw_buckets` (131072 by default).
const STORM_CONNS: u64 = 10_000;
/// Leaked connections per sample period.
const LEAKS: u32 = 20;
/// The leaking server is restarted this often: its CLOSE_WAIT sockets must leave the table.
const LEAKER_LIFE: Duration = Duration::from_secs(120);

pub struct SoakOptions {
    pub minutes: f64,
    pub output: PathBuf,
}

/// Two ports for the storm and the leaking server, from `tcpscenario free-port`: below
/// `ip_local_port_range` and free of sockets in every state, as the tests pick theirs. A port
/// from `bind(:0)` lies in the ephemeral range, where a storm client could take it as its local
/// port while the leaker restarts, and `--port` would count that client too.
fn free_ports(scenario: &std::path::Path, ip: &str) -> Result<(u16, u16)> {
    let out = cmd::stdout_of(Command::new(scenario).args([
        "free-port",
        "--bind",
        &format!("{ip}:0"),
        "--conns",
        "2",
    ]))?;
    let ports: Vec<u16> = out
        .lines()
        .map(|l| l.trim().parse().context("tcpscenario free-port output"))
        .collect::<Result<_>>()?;
    match ports[..] {
        [a, b] => Ok((a, b)),
        _ => bail!("tcpscenario free-port printed {out:?}, not two ports"),
    }
}

/// A `tcpscenario server` that keeps every connection whose client closed (CLOSE_WAIT).
fn start_leaker(scenario: &std::path::Path, port: u16) -> Result<Child> {
    let mut c = Command::new(scenario)
        .args(["server", "--bind", &format!("{LEAK_IP}:{port}")])
        .args(["--conns", "1000000", "--on-eof", "leak"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the leaking server")?;
    let out = c.stdout.take().expect("piped");
    let mut lines = BufReader::new(out).lines();
    match lines.next() {
        Some(Ok(l)) if l.starts_with("listening") => {}
        other => bail!("leaking server did not listen: {other:?}"),
    }
    // Keep reading so the server never blocks on a full pipe.
    thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    Ok(c)
}

/// `ss` counts per state for sockets with this local or remote port.
fn ss_counts(ports: &[u16]) -> Result<std::collections::BTreeMap<String, u64>> {
    let filter = ports
        .iter()
        .map(|p| format!("sport = :{p} or dport = :{p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let out = cmd::stdout_of(Command::new("ss").args(["-tanH", &format!("( {filter} )")]))?;
    let mut m = std::collections::BTreeMap::new();
    for l in out.lines() {
        if let Some(state) = l.split_whitespace().next() {
            *m.entry(tcp_name(state)).or_insert(0) += 1;
        }
    }
    Ok(m)
}

/// `ss` state names as tcptrace (and the kernel) spell them.
fn tcp_name(ss: &str) -> String {
    match ss {
        "ESTAB" => "ESTABLISHED".into(),
        "FIN-WAIT-1" => "FIN_WAIT1".into(),
        "FIN-WAIT-2" => "FIN_WAIT2".into(),
        other => other.replace('-', "_"),
    }
}

pub fn run(opts: &SoakOptions) -> Result<()> {
    cmd::run(workspace::cargo().args([
        "build",
        "--release",
        "-p",
        "tcptrace",
        "--bin",
        "tcptrace",
    ]))?;
    cmd::run(workspace::cargo().args([
        "build",
        "--release",
        "-p",
        workspace::TESTS_PACKAGE,
        "--bins",
    ]))?;
    let target = workspace::target_dir()?.join("release");
    let (tracer, storm, scenario) = (
        target.join("tcptrace"),
        target.join("tcpstorm"),
        target.join("tcpscenario"),
    );
    // Both servers bind a different address; one port picker process never hands out a
    // port twice.
    let (storm_port, leak_port) = free_ports(&scenario, "127.0.0.1")?;
    let total = Duration::from_secs_f64(opts.minutes * 60.0);
    bench::flush_storm_timewait();
    let sp = storm_port.to_string();
    let lp = leak_port.to_string();
    let t = TracerChild::start(
        &tracer,
        &[
            "report",
            "--json",
            "--duration",
            "24h",
            "--port",
            &sp,
            "--port",
            &lp,
        ],
        true,
    )?;
    let pid = t.pid();
    let started = Instant::now();
    let mut leaker = start_leaker(&scenario, leak_port)?;
    let mut leaker_since = Instant::now();
    let mut rss: Vec<(f64, u64)> = Vec::new();
    let (mut conns, mut leaked, mut leakers) = (0u64, 0u64, 1u32);
    while started.elapsed() < total {
        let period = Instant::now();
        // TIME_WAIT from the previous storm still holds tuples; tw_reuse frees them after 1 s.
        let r = bench::storm(&storm, STORM_CONNS, 5.0, 1, 8, storm_port, None)?;
        conns += r["conns"].as_u64().unwrap_or(0);
        let ok = cmd::succeeds(Command::new(&scenario).args([
            "client",
            "--connect",
            &format!("{LEAK_IP}:{leak_port}"),
            "--conns",
            &LEAKS.to_string(),
        ]));
        leaked += if ok { LEAKS as u64 } else { 0 };
        if leaker_since.elapsed() >= LEAKER_LIFE {
            // Exiting releases the leaked sockets: the tracer must drop them too.
            let _ = leaker.kill();
            let _ = leaker.wait();
            leaker = start_leaker(&scenario, leak_port)?;
            leaker_since = Instant::now();
            leakers += 1;
        }
        thread::sleep(SAMPLE_EVERY.saturating_sub(period.elapsed()));
        let kib = measure::status_kib(pid, "VmRSS").context("tracer gone")?;
        rss.push((started.elapsed().as_secs_f64(), kib));
        eprintln!(
            "xtask: soak {:>5.0} s: {conns} storm connections, {leaked} leaked, tracer RSS {kib} KiB",
            started.elapsed().as_secs_f64()
        );
    }
    // Let the last leaks settle, then compare: ss just before and just after the report,
    // because TIME_WAIT sockets keep expiring in between.
    thread::sleep(Duration::from_secs(2));
    let before = ss_counts(&[storm_port, leak_port])?;
    let hwm = measure::status_kib(pid, "VmHWM").unwrap_or(0);
    let out = t.stop()?;
    let after = ss_counts(&[storm_port, leak_port])?;
    let _ = leaker.kill();
    let _ = leaker.wait();
    let doc: serde_json::Value = serde_json::from_str(&out.0).context("report JSON")?;
    let lost = bench::lost_events(&out.1);

    let totals = &doc["totals"];
    let mut rows = String::new();
    let mut counts_ok = true;
    let states: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for s in states {
        let (b, a) = (
            before.get(s).copied().unwrap_or(0),
            after.get(s).copied().unwrap_or(0),
        );
        let got = totals[s.as_str()].as_u64().unwrap_or(0);
        let ok = got >= a.min(b) && got <= a.max(b);
        counts_ok &= ok;
        let _ = writeln!(
            rows,
            "| {s} | {b} | {got} | {a} | {} |",
            if ok { "yes" } else { "**no**" }
        );
    }
    let warm = (rss.len() / 4).max(1);
    let after_warm: Vec<f64> = rss[warm.min(rss.len())..]
        .iter()
        .map(|x| x.1 as f64)
        .collect();
    let (early, late) = after_warm.split_at(after_warm.len() / 2);
    let (m_early, m_late) = (median(early), median(late));
    let flat = after_warm.len() >= 2 && m_late <= m_early * 1.05;

    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "### Soak, {:.1} minutes\n", opts.minutes);
    let _ = writeln!(w, "{}", measure::machine());
    let _ = writeln!(
        w,
        "Every {} s: a storm of up to {STORM_CONNS} connections (port {storm_port}) and {LEAKS} \
         connections leaked in CLOSE_WAIT by a `tcpscenario` server (port {leak_port}), \
         restarted every {} s ({leakers} servers in all). {conns} storm connections, {leaked} \
         leaked. Tracer: `tcptrace report --json --port {storm_port} --port {leak_port}`.\n",
        SAMPLE_EVERY.as_secs(),
        LEAKER_LIFE.as_secs()
    );
    let _ = writeln!(
        w,
        "| state | ss before | report | ss after | between |\n| --- | ---: | ---: | ---: | --- |\n{rows}"
    );
    let _ = writeln!(
        w,
        "Corrections over the run: {}; state mismatches {}.\n",
        doc["corrections"], doc["state_mismatches"]
    );
    let _ = writeln!(
        w,
        "- Counts equal `ss`: {}\n- Memory flat after warm-up (median RSS {:.1} MiB, then {:.1} \
         MiB; VmHWM {:.1} MiB; samples every {} s: {:?} KiB): {}\n- Lost events: {:?}: {}\n",
        if counts_ok { "yes" } else { "**no**" },
        m_early / 1024.0,
        m_late / 1024.0,
        hwm as f64 / 1024.0,
        SAMPLE_EVERY.as_secs(),
        rss.iter().map(|x| x.1).collect::<Vec<_>>(),
        if flat { "yes" } else { "**no**" },
        lost,
        if lost == Some(0) { "yes" } else { "**no**" }
    );
    print!("{md}");
    append_soak(&opts.output, &md)?;
    eprintln!("xtask: appended to {}", opts.output.display());
    if !(counts_ok && flat && lost == Some(0)) {
        bail!("soak failed a check; see {}", opts.output.display());
    }
    Ok(())
}

fn append_soak(path: &std::path::Path, md: &str) -> Result<()> {
    let mut old =
        std::fs::read_to_string(path).unwrap_or_else(|_| "# tcptrace benchmarks\n".into());
    if !old.contains("## Soak runs") {
        old = format!("{}\n\n## Soak runs (`cargo xtask soak`)\n", old.trim_end());
    }
    std::fs::write(path, format!("{}\n\n{md}", old.trim_end()))
        .with_context(|| format!("writing {}", path.display()))
}
