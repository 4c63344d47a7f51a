//! Command lines of the processes a screen shows, read on a thread of their own and kept per
//! process.
//!
//! Reading `/proc/PID/cmdline` reads the target's memory under its mmap lock
//! (`get_mm_cmdline` -> `access_remote_vm`,
//! <https://github.com/torvalds/linux/blob/v6.18/fs/proc/base.c>): a process stuck with that
//! lock held (a page fault on a dead network mount) stalls the reader, the way it stalls `ps`.
//! The event loop must keep draining the ring meanwhile, so it only asks and later collects.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use super::process::cmdline;

/// How long a command line read is trusted: a pid reused by a process of the same name, or a
/// process that rewrote its arguments, shows the new line after this.
const FRESH: Duration = Duration::from_secs(10);

/// How long "no command line" is trusted. A process in the middle of execve has none for a
/// moment (its new memory gets the arguments after the old one is let go), so it is asked
/// again soon; a kernel thread never has one, and costs one read a second while on screen.
const FRESH_NONE: Duration = Duration::from_secs(1);

/// A process as the caller names it: its pid and a tag of the caller's (the tables use the
/// task name: a reused pid usually has another, and is then another entry).
type Key<T> = (u32, T);

/// A process's arguments, joined by spaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine {
    line: String,
    /// Where the program's name starts: after the directory of the first argument.
    name_at: usize,
}

impl CommandLine {
    /// `None` for no arguments (a kernel thread, a zombie).
    pub fn new(args: &[String]) -> Option<CommandLine> {
        let program = args.first()?;
        let name_at = program.rfind('/').map_or(0, |i| i + 1);
        Some(CommandLine {
            line: args.join(" "),
            name_at,
        })
    }

    pub fn full(&self) -> &str {
        &self.line
    }

    /// Without the program's directory: `python3 app.py` for `/usr/bin/python3 app.py`.
    pub fn short(&self) -> &str {
        &self.line[self.name_at..]
    }
}

/// What is known of one process's command line.
#[derive(Default)]
struct Known {
    /// `None` until read, or when there was none to read (the process exited, or is a kernel
    /// thread or a zombie).
    line: Option<CommandLine>,
    /// When `line` was read.
    read: Option<Instant>,
    /// A question is out.
    asking: bool,
}

pub struct Cmdlines<T> {
    known: HashMap<Key<T>, Known>,
    ask: Sender<Key<T>>,
    answers: Receiver<(Key<T>, Option<CommandLine>)>,
}

impl<T: Copy + Eq + Hash + Send + 'static> Cmdlines<T> {
    /// Starts the reading thread. It ends when this is dropped (or, stuck in a read, with the
    /// program).
    pub fn new() -> std::io::Result<Cmdlines<T>> {
        let (ask, questions) = channel::<Key<T>>();
        let (tell, answers) = channel();
        std::thread::Builder::new()
            .name("cmdline".into())
            .spawn(move || {
                for key in questions {
                    let line = cmdline(key.0).and_then(|args| CommandLine::new(&args));
                    if tell.send((key, line)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Cmdlines {
            known: HashMap::new(),
            ask,
            answers,
        })
    }

    /// Asks for the command line of each process not known (or known for too long); keeps
    /// only these processes, so the cache is as large as the screen.
    pub fn want(&mut self, processes: impl IntoIterator<Item = Key<T>>) {
        let mut keep = HashMap::with_capacity(self.known.len());
        for key in processes {
            let mut known = self.known.remove(&key).unwrap_or_default();
            // A stale line is shown until the new one comes.
            let fresh = if known.line.is_some() {
                FRESH
            } else {
                FRESH_NONE
            };
            let stale = known.read.is_none_or(|at| at.elapsed() >= fresh);
            if stale && !known.asking && self.ask.send(key).is_ok() {
                known.asking = true;
            }
            keep.insert(key, known);
        }
        self.known = keep;
    }

    /// Takes the answers that came; true when one of them changes what a screen shows.
    pub fn collect(&mut self) -> bool {
        let mut changed = false;
        while let Ok((key, line)) = self.answers.try_recv() {
            if let Some(k) = self.known.get_mut(&key) {
                changed |= k.line != line;
                *k = Known {
                    line,
                    read: Some(Instant::now()),
                    asking: false,
                };
            }
        }
        changed
    }

    /// The command line of a process, when read and not empty.
    pub fn get(&self, pid: u32, tag: T) -> Option<&CommandLine> {
        self.known.get(&(pid, tag))?.line.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    /// Tags: the task names, as the tables give them.
    type Cmd = Cmdlines<&'static str>;

    /// Collects until `done` says so, for at most 5 s.
    fn until(c: &mut Cmd, done: impl Fn(&Cmd) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(c) {
            assert!(Instant::now() < deadline, "no answer within 5 s");
            c.collect();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn reads_a_live_process_and_keeps_nothing_for_a_gone_one() {
        let mut child = Command::new("sleep")
            // GNU sleep sleeps for the sum: 31 s.
            .args(["30", "1"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Until execve has mapped the new arguments the line reads empty (see FRESH_NONE).
        let deadline = Instant::now() + Duration::from_secs(5);
        while cmdline(pid).is_none_or(|a| a.is_empty()) {
            assert!(Instant::now() < deadline, "sleep never had its arguments");
            std::thread::sleep(Duration::from_millis(1));
        }
        let gone = u32::try_from(i32::MAX).unwrap();
        let mut c = Cmd::new().unwrap();
        c.want([(pid, "sleep"), (gone, "python3")]);
        // Answers are taken only by `collect`.
        assert_eq!(c.get(pid, "sleep"), None);
        until(&mut c, |c| c.get(pid, "sleep").is_some());
        let line = c.get(pid, "sleep").unwrap();
        assert_eq!(line.full(), "sleep 30 1");
        until(&mut c, |c| {
            c.known
                .get(&(gone, "python3"))
                .is_some_and(|k| k.read.is_some())
        });
        assert_eq!(c.get(gone, "python3"), None);
        // Asked again after FRESH_NONE, not after FRESH.
        let again = |c: &Cmd| c.known[&(gone, "python3")].asking;
        c.want([(gone, "python3")]);
        assert!(!again(&c));
        std::thread::sleep(FRESH_NONE);
        c.want([(gone, "python3")]);
        assert!(again(&c));
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn the_short_form_leaves_out_the_program_directory() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let l = CommandLine::new(&args(&["/usr/bin/python3", "/srv/app.py", "-v"])).unwrap();
        assert_eq!(l.full(), "/usr/bin/python3 /srv/app.py -v");
        assert_eq!(l.short(), "python3 /srv/app.py -v");
        // A line the process rewrote (one argument, spaces in it) and a bare name stay whole.
        let l = CommandLine::new(&args(&["nginx: worker process"])).unwrap();
        assert_eq!(l.short(), "nginx: worker process");
        assert_eq!(CommandLine::new(&[]), None);
    }

    #[test]
    fn keeps_only_the_processes_still_wanted_and_asks_once() {
        let me = std::process::id();
        let mut c = Cmd::new().unwrap();
        let key = (me, "tcptrace");
        c.want([key]);
        c.want([key]);
        until(&mut c, |c| c.get(me, key.1).is_some());
        // One question, one answer: nothing more comes.
        std::thread::sleep(Duration::from_millis(50));
        assert!(!c.collect());
        c.want([]);
        assert!(c.known.is_empty());
        assert_eq!(c.get(me, key.1), None);
    }
}
