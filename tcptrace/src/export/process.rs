//! tcptrace's own cost, as the Prometheus client libraries name it (`process_*` metrics), read
//! from `/proc/self`. Field numbers are those of proc(5) `/proc/pid/stat`; see `do_task_stat()` in
//! <https://github.com/torvalds/linux/blob/v6.1/fs/proc/array.c>.

/// One reading of this process's resource use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
    pub open_fds: u64,
    /// The soft `RLIMIT_NOFILE`.
    pub max_fds: u64,
}

impl ProcessStats {
    /// Reads `/proc/self/stat`, `/proc/stat` (boot time) and `/proc/self/fd`.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let btime = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse::<u64>()
            .ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        // SAFETY: sysconf and getrlimit only read process-wide values into our locals.
        let (ticks, page, max_fds) = unsafe {
            let mut rl: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
                rl.rlim_cur,
            )
        };
        parse_stat(&stat, ticks.max(1) as u64, page.max(1) as u64, btime).map(|mut s| {
            s.open_fds = open_fds;
            s.max_fds = max_fds;
            s
        })
    }
}

/// Parses `/proc/PID/stat`. The comm field (2) is in parentheses and may itself hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str, ticks_per_s: u64, page_bytes: u64, btime: u64) -> Option<ProcessStats> {
    let after = &text[text.rfind(')')? + 1..];
    // `after` starts at field 3 (state); field N is at index N - 3.
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    let (utime, stime) = (num(14)?, num(15)?);
    let start_ticks = num(22)?;
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / ticks_per_s as f64,
        resident_bytes: num(24)? * page_bytes,
        virtual_bytes: num(23)?,
        start_time_seconds: btime as f64 + start_ticks as f64 / ticks_per_s as f64,
        open_fds: 0,
        max_fds: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_comm() {
        // A comm with spaces and a parenthesis; utime 250, stime 50, starttime 1000,
        // vsize 123456789, rss 2500 pages.
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 \
                    1000 123456789 2500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let s = parse_stat(line, 100, 4096, 1_700_000_000).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.resident_bytes, 2500 * 4096);
        assert_eq!(s.virtual_bytes, 123456789);
        assert_eq!(s.start_time_seconds, 1_700_000_010.0);
        assert_eq!(parse_stat("garbage", 100, 4096, 0), None);
    }

    #[test]
    fn reads_itself() {
        let s = ProcessStats::read().unwrap();
        assert!(s.resident_bytes > 1 << 20, "{s:?}");
        assert!(s.open_fds >= 3 && s.open_fds <= s.max_fds, "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 86400.0);
    }
}
