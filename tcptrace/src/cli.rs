//! Command-line definitions (clap only; `main` wires them to the pipeline).
//!
//! Malformed values are rejected by clap with exit code 2 and a message naming the bad part.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tcptrace_common::TcpState;

use crate::filter::{Family, Filters, PeerSpec, parse_port, parse_state};
use crate::probe::{DEFAULT_RING_BYTES, HookPath, TimewaitHooks};
use crate::session::Options;
use crate::source::file::{Speed, parse_speed};
pub use crate::view::top::{GroupBy, SortBy};

#[derive(Debug, Parser)]
#[command(
    name = "tcptrace",
    version,
    about = "Which process leaks CLOSE_WAIT, who piles up TIME_WAIT, and how long TCP connections \
             dwell in each state: live, from the kernel, with eBPF.",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Live stream of TCP state transitions, one line each.
    Trace(TraceArgs),
    /// Live table of TIME_WAIT and CLOSE_WAIT by process, local port or peer.
    Top(TopArgs),
    /// Observe for a while, then print a summary of accumulation and dwell times.
    Report(ReportArgs),
    /// Record the session (kernel table dumps and every event) to a file for later analysis
    /// with `--from FILE`.
    Record(RecordArgs),
    /// Prometheus exporter: /metrics, /report.json and /healthz over HTTP.
    Serve(ServeArgs),
    /// Observe for a while, then explain what is wrong and what to do (ranked findings).
    Diagnose(DiagnoseArgs),
}

#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// How long to observe before diagnosing.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Print one JSON document (schema in docs/diagnose.md).
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// Markdown, to paste into an incident ticket.
    #[arg(long)]
    pub markdown: bool,
    /// Also write a self-contained HTML report with plots to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// The file to write.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Stop after this long; default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// One JSON object per line instead of aligned columns.
    #[arg(long)]
    pub json: bool,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Refresh interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Group rows by.
    #[arg(long, value_enum, default_value_t = GroupBy::Pid)]
    pub by: GroupBy,
    /// Sort rows by.
    #[arg(long, value_enum, default_value_t = SortBy::CloseWait)]
    pub sort: SortBy,
    /// Rows to show.
    #[arg(long, default_value_t = 20)]
    pub rows: usize,
    /// Stop after this many refreshes (default: until q or Ctrl-C).
    #[arg(long)]
    pub iterations: Option<u64>,
    /// Stop after this long.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// How long to observe before reporting.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Print one JSON document (schema in the README).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Address to serve on [default: 127.0.0.1:9977, or `listen` in the config file].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// Config file (TOML: listen, top_pids, top_peers, top_ports, max_connections); flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// TLS and basic authentication, in the web configuration file every Prometheus exporter
    /// takes (YAML: tls_server_config, basic_auth_users with bcrypt hashes); see
    /// deploy/README.md.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<std::path::PathBuf>,
    /// Processes with their own series; the rest are summed into pid="other" [default: 20].
    #[arg(long, value_name = "N")]
    pub top_pids: Option<usize>,
    /// Peers with their own series; the rest are summed into peer="other" [default: 20].
    #[arg(long, value_name = "N")]
    pub top_peers: Option<usize>,
    /// Local ports with their own series; the rest are summed into port="other" [default: 20].
    #[arg(long, value_name = "N")]
    pub top_ports: Option<usize>,
    /// Stop after this long (default: until SIGTERM or Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Only sockets owned by this process (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only sockets owned by a process with this command name (repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Only sockets with this local or remote port (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = port_arg)]
    pub ports: Vec<u16>,
    /// Only sockets with this local port (repeatable).
    #[arg(long = "lport", value_name = "PORT", value_parser = port_arg)]
    pub lports: Vec<u16>,
    /// Only sockets with this remote port (repeatable).
    #[arg(long = "rport", value_name = "PORT", value_parser = port_arg)]
    pub rports: Vec<u16>,
    /// Only sockets whose peer matches ADDR[/PREFIX][:PORT] ([ADDR]:PORT for IPv6; repeatable).
    #[arg(long = "peer", value_name = "PEER", value_parser = peer_arg)]
    pub peers: Vec<PeerSpec>,
    /// Only transitions from or to this state (repeatable), e.g. CLOSE_WAIT.
    #[arg(long = "state", value_name = "STATE", value_parser = state_arg)]
    pub states: Vec<TcpState>,
    /// Only sockets in this network namespace: its inode, as `ls -Li /proc/PID/ns/net` or
    /// `stat -L -c %i /run/netns/NAME` shows it (repeatable).
    #[arg(long = "netns", value_name = "INODE")]
    pub netns: Vec<u32>,
    /// Only sockets of processes in this container: its id or a prefix of it (as `docker ps`
    /// or `crictl ps` show it), or a Kubernetes pod uid (repeatable). Containers are known from
    /// cgroups, so names are not: use the id.
    #[arg(long = "container", value_name = "ID")]
    pub containers: Vec<String>,
    /// IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// IPv6 only.
    #[arg(short = '6')]
    pub ipv6: bool,
}

impl FilterArgs {
    pub fn to_filters(&self) -> Filters {
        Filters {
            pids: self.pids.clone(),
            comms: self.comms.clone(),
            ports: self.ports.clone(),
            lports: self.lports.clone(),
            rports: self.rports.clone(),
            peers: self.peers.clone(),
            states: self.states.clone(),
            netns: self.netns.clone(),
            containers: self.containers.clone(),
            family: match (self.ipv4, self.ipv6) {
                (true, _) => Some(Family::V4),
                (_, true) => Some(Family::V6),
                _ => None,
            },
        }
    }
}

#[derive(Debug, Args, Clone)]
pub struct ProbeArgs {
    /// Ring buffer memory in all (power of two, e.g. 8M, 512K), shared out among the CPUs:
    /// each gets a ring of its share rounded down to a power of two, at least a page.
    #[arg(long, value_name = "SIZE", default_value_t = DEFAULT_RING_BYTES, value_parser = parse_size)]
    pub ring_size: u32,
    /// Kernel hook: auto picks tp_btf when the kernel has BTF, else the classic tracepoint.
    #[arg(long, value_enum, default_value_t = HookArg::Auto)]
    pub hook: HookArg,
    /// Read a recorded session (`tcptrace record`) instead of the kernel.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// With --from: replay speed, a multiple of real time (1, 10, 0.5) or max.
    #[arg(long, default_value = "max", value_parser = parse_speed)]
    pub speed: Speed,
    /// Overload guard: above this many events per second the kernel counts transitions instead
    /// of sending them (logged, and shown in every view); counts stay exact through the kernel
    /// table, per-connection detail pauses until the rate falls below half of it. It also counts
    /// when tcptrace cannot drain the ring as fast as the kernel fills it: the kernel itself
    /// switches when a CPU's ring is three quarters full, and so does tcptrace when 1% or more
    /// of a second's records were refused.
    #[arg(long, value_name = "EVENTS_PER_S", default_value_t = 500_000)]
    pub max_event_rate: u64,
    /// Also write the session to FILE as it runs (what `tcptrace record` writes).
    #[arg(long, value_name = "FILE", conflicts_with = "from")]
    pub record: Option<PathBuf>,
    /// TIME_WAIT from fentry hooks on tcp_time_wait/inet_twsk_free where the kernel allows them,
    /// else inferred from FIN_WAIT2/CLOSING -> CLOSE with its end from the timer:timer_expire_entry
    /// tracepoint (auto); the timer tracepoint even where fentry loads (timer); or always
    /// inferred, start and end (off).
    #[arg(long, value_enum, default_value_t = TimewaitHooksArg::Auto)]
    pub timewait_hooks: TimewaitHooksArg,
    /// Have the kernel follow each socket in socket-local storage (Linux 5.11+) and send one
    /// summary per CLOSE_WAIT entry and per close instead of every transition: fewer records,
    /// but on our 6.18 VM it cost the host more connections per second than every transition
    /// (BENCHMARKS.md), and states no record reports (ESTABLISHED, ...) are only as fresh as
    /// the last check against the kernel's table. Not for `trace`, which prints every transition.
    #[arg(long)]
    pub summaries: bool,
}

impl ProbeArgs {
    /// What the session reads and how. `trace` prints every transition; the other views take
    /// the kernel's summaries when `--summaries` asks for them.
    pub fn options(&self, every_transition: bool) -> Options {
        Options {
            from: self.from.clone(),
            speed: self.speed,
            record: self.record.clone(),
            ring_bytes: self.ring_size,
            hook: self.hook.forced(),
            timewait_hooks: match self.timewait_hooks {
                TimewaitHooksArg::Auto => TimewaitHooks::Auto,
                TimewaitHooksArg::Timer => TimewaitHooks::Timer,
                TimewaitHooksArg::Off => TimewaitHooks::Off,
            },
            max_event_rate: self.max_event_rate,
            summary: self.summaries && !every_transition,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TimewaitHooksArg {
    Auto,
    Timer,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HookArg {
    Auto,
    #[value(name = "tp_btf", alias = "tp-btf")]
    TpBtf,
    Tracepoint,
}

impl HookArg {
    pub fn forced(self) -> Option<HookPath> {
        match self {
            HookArg::Auto => None,
            HookArg::TpBtf => Some(HookPath::TpBtf),
            HookArg::Tracepoint => Some(HookPath::Tracepoint),
        }
    }
}

fn port_arg(s: &str) -> Result<u16, String> {
    parse_port(s).map_err(|e| e.to_string())
}

fn peer_arg(s: &str) -> Result<PeerSpec, String> {
    s.parse()
        .map_err(|e: crate::filter::FilterError| e.to_string())
}

fn state_arg(s: &str) -> Result<TcpState, String> {
    parse_state(s).map_err(|e| e.to_string())
}

/// `30s`, `5m`, `1h`, `500ms`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration: use e.g. 30s, 5m, 1h or 500ms"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}': use ms, s, m or h")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 366.0 * 86400.0 {
        return Err(format!(
            "'{s}' is out of range: use a positive duration up to a year"
        ));
    }
    let d = Duration::from_secs_f64(secs);
    // Found by fuzzing: 0.0000000001s is positive but rounds to a zero Duration.
    if d < Duration::from_millis(1) {
        return Err(format!("'{s}' is too short: use at least 1ms"));
    }
    Ok(d)
}

/// `8M`, `512K`, `1G` or bytes; must be a power of two (the ring buffer requires it).
pub fn parse_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size: use e.g. 8M, 512K or 4096"))?;
    let bytes = n
        .checked_mul(mult)
        .filter(|b| *b <= 1 << 30)
        .ok_or(format!("'{s}' is too large: at most 1G"))?;
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err(format!(
            "'{s}' must be a power of two of at least 4K (e.g. 64K, 8M)"
        ));
    }
    Ok(bytes as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(
            parse_duration("10x")
                .unwrap_err()
                .contains("unknown unit 'x'")
        );
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("0").is_err());
        assert!(
            parse_duration("0.0000000001s")
                .unwrap_err()
                .contains("too short")
        );
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("3M").unwrap_err().contains("power of two"));
        assert!(parse_size("2G").unwrap_err().contains("too large"));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for args in [
            vec!["tcptrace", "trace", "--peer", "10.0.0.300"],
            vec!["tcptrace", "trace", "--state", "WAITING"],
            vec!["tcptrace", "trace", "--port", "70000"],
            vec!["tcptrace", "trace", "--frobnicate"],
            vec!["tcptrace", "trace", "-4", "-6"],
            vec!["tcptrace", "report", "--duration", "soon"],
            vec!["tcptrace", "serve", "--listen", "localhost"],
            vec!["tcptrace", "serve", "--top-pids", "-1"],
        ] {
            let e = Cli::try_parse_from(&args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }
}
