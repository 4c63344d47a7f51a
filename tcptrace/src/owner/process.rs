//! What /proc says about one process: its name, command line, open files and open-files limit.
//!
//! Every reader returns `None` when the process is gone (or unreadable): processes exit while we
//! look at them, and that is never an error worth reporting.

use std::path::PathBuf;

/// A process that holds a socket, at thread-group level (the pid `ps` shows).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ProcessRef {
    pub pid: u32,
    /// `/proc/PID/comm`: the kernel's task name, at most 15 bytes.
    pub comm: String,
}

impl ProcessRef {
    /// The process as it is now, `None` if it has exited.
    pub fn of(pid: u32) -> Option<ProcessRef> {
        comm(pid).map(|comm| ProcessRef { pid, comm })
    }
}

fn proc_path(pid: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

/// The task name (`/proc/PID/comm`), without its trailing newline.
pub fn comm(pid: u32) -> Option<String> {
    let raw = std::fs::read(proc_path(pid, "comm")).ok()?;
    let name = raw.strip_suffix(b"\n").unwrap_or(&raw);
    Some(String::from_utf8_lossy(name).into_owned())
}

/// The argument vector (`/proc/PID/cmdline`). Empty for kernel threads and zombies, which have
/// no user memory to read it from.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(proc_path(pid, "cmdline")).ok()?;
    let raw = raw.strip_suffix(b"\0").unwrap_or(&raw);
    if raw.is_empty() {
        return Some(Vec::new());
    }
    Some(
        raw.split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// How many file descriptors the process has open.
///
/// Since 6.2 the size of `/proc/PID/fd` is that count, read without listing the directory
/// (`proc_readfd_count` in <https://github.com/torvalds/linux/blob/v6.2/fs/proc/fd.c>); older
/// kernels report 0 there, and then the entries are counted.
pub fn open_fds(pid: u32) -> Option<usize> {
    let dir = proc_path(pid, "fd");
    let size = std::fs::metadata(&dir).ok()?.len();
    if size > 0 {
        return usize::try_from(size).ok();
    }
    count_fd_entries(pid)
}

/// Counts `/proc/PID/fd` entries one by one (the pre-6.2 way).
fn count_fd_entries(pid: u32) -> Option<usize> {
    let entries = std::fs::read_dir(proc_path(pid, "fd")).ok()?;
    Some(entries.filter(Result::is_ok).count())
}

/// The open-files limit (`RLIMIT_NOFILE`) as `(soft, hard)`, from `/proc/PID/limits`. A hard
/// limit of "unlimited" is `None`. The kernel caps both at `fs.nr_open`, so a soft "unlimited"
/// cannot occur; it would read as `u64::MAX`.
pub fn nofile_limit(pid: u32) -> Option<(u64, Option<u64>)> {
    let text = std::fs::read_to_string(proc_path(pid, "limits")).ok()?;
    parse_limit(&text, "Max open files")
}

/// Finds one row of a `/proc/PID/limits` table: the name column, then soft, hard, units.
fn parse_limit(text: &str, name: &str) -> Option<(u64, Option<u64>)> {
    let row = text.lines().find_map(|l| l.strip_prefix(name))?;
    let mut cols = row.split_whitespace();
    let value = |v: &str| match v {
        "unlimited" => Some(None),
        n => n.parse::<u64>().ok().map(Some),
    };
    let soft = value(cols.next()?)?.unwrap_or(u64::MAX);
    let hard = value(cols.next()?)?;
    Some((soft, hard))
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};

    use super::*;

    /// `close_range` flag (linux/close_range.h): mark the fds close-on-exec instead of closing.
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

    /// Whether the process is blocked in a sleep syscall (`/proc/PID/syscall` starts with the
    /// number of the syscall a blocked task is in).
    fn in_nanosleep(pid: u32) -> bool {
        let Ok(text) = std::fs::read_to_string(proc_path(pid, "syscall")) else {
            return false;
        };
        let nr = text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<i64>().ok());
        nr == Some(libc::SYS_clock_nanosleep) || nr == Some(libc::SYS_nanosleep)
    }

    /// A child that exists until dropped, started with stdio on /dev/null.
    struct Sleeper(Child);

    impl Sleeper {
        fn shell(script: &str) -> Sleeper {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // Other tests run in parallel threads and may hold fds without CLOEXEC at the moment
            // of the fork: the child would inherit a varying number of them. Mark every fd
            // above stdio close-on-exec, so each child starts from stdio alone.
            // SAFETY: close_range is async-signal-safe and touches only the child's fd table.
            unsafe {
                cmd.pre_exec(|| {
                    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
                    Ok(())
                });
            }
            let child = cmd.spawn().unwrap();
            let s = Sleeper(child);
            // Wait until `sleep` sleeps, so its fds, name and arguments are final: exec sets the
            // name before it maps the new arguments, and after exec the dynamic loader briefly
            // holds an fd on each library it maps.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while comm(s.pid()).as_deref() != Some("sleep") || !in_nanosleep(s.pid()) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "child never became sleep"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            s
        }

        fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn comm_and_cmdline_of_a_child() {
        let child = Sleeper::shell("exec sleep 30");
        assert_eq!(comm(child.pid()).as_deref(), Some("sleep"));
        assert_eq!(
            cmdline(child.pid()),
            Some(vec!["sleep".to_string(), "30".to_string()])
        );
        assert_eq!(
            ProcessRef::of(child.pid()).map(|p| p.comm),
            Some("sleep".into())
        );
    }

    #[test]
    fn comm_of_self_is_the_main_thread_name() {
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        // The kernel keeps at most 15 bytes of the executable's name.
        assert_eq!(comm(me).unwrap(), name[..name.len().min(15)]);
    }

    #[test]
    fn kernel_threads_have_an_empty_cmdline_and_gone_pids_read_as_none() {
        // kthreadd is pid 2 in the initial pid namespace.
        if comm(2).as_deref() == Some("kthreadd") {
            assert_eq!(cmdline(2), Some(vec![]));
        }
        let gone = u32::try_from(i32::MAX).unwrap();
        assert_eq!(comm(gone), None);
        assert_eq!(cmdline(gone), None);
        assert_eq!(open_fds(gone), None);
        assert_eq!(nofile_limit(gone), None);
    }

    #[test]
    fn open_fds_counts_what_the_process_opened() {
        let plain = Sleeper::shell("exec sleep 30");
        let more = Sleeper::shell(
            "exec 3</dev/null 4</dev/null 5</dev/null 6</dev/null 7</dev/null 8</dev/null; \
             exec sleep 30",
        );
        // The baseline is stdio (see `Sleeper::shell`).
        let fds = |pid: u32| {
            std::fs::read_dir(proc_path(pid, "fd"))
                .unwrap()
                .flatten()
                .map(|e| {
                    let link = std::fs::read_link(e.path()).unwrap_or_default();
                    format!("{}->{}", e.file_name().to_string_lossy(), link.display())
                })
                .collect::<Vec<_>>()
        };
        let base = open_fds(plain.pid()).unwrap();
        assert_eq!(base, 3, "stdio only: {:?}", fds(plain.pid()));
        assert_eq!(
            open_fds(more.pid()),
            Some(base + 6),
            "{:?}",
            fds(more.pid())
        );
        assert_eq!(count_fd_entries(more.pid()), Some(base + 6));
    }

    #[test]
    fn nofile_limit_reads_back_what_prlimit_set() {
        let child = Sleeper::shell("exec sleep 30");
        let new = libc::rlimit {
            rlim_cur: 777,
            rlim_max: 888,
        };
        // SAFETY: prlimit reads `new` and writes nothing (old is null).
        let rc = unsafe {
            libc::prlimit(
                child.pid() as i32,
                libc::RLIMIT_NOFILE,
                &new,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
        assert_eq!(nofile_limit(child.pid()), Some((777, Some(888))));

        // And our own limit, as getrlimit reports it.
        let mut own = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into `own`.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut own) }, 0);
        let hard = (own.rlim_max != libc::RLIM_INFINITY).then_some(own.rlim_max);
        assert_eq!(nofile_limit(std::process::id()), Some((own.rlim_cur, hard)));
    }

    #[test]
    fn limits_table_parses_numbers_and_unlimited() {
        let text = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max open files            1024                 524288               files     
Max locked memory         8388608              unlimited            bytes     
";
        assert_eq!(
            parse_limit(text, "Max open files"),
            Some((1024, Some(524288)))
        );
        assert_eq!(
            parse_limit(text, "Max locked memory"),
            Some((8388608, None))
        );
        assert_eq!(parse_limit(text, "Max cpu time"), Some((u64::MAX, None)));
        assert_eq!(parse_limit(text, "Max processes"), None);
        assert_eq!(
            parse_limit("Max open files            lots  1", "Max open files"),
            None
        );
    }
}
