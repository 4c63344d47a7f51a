//! Reading the guest's serial console: the marker lines /init prints and libtest's summaries.
//!
//! Markers are matched anywhere in a line, because kernel messages can share a console line
//! with test output.

use crate::libtest::Tally;

/// Printed by /init once the filesystems are mounted, followed by `uname -r`.
pub const INIT: &str = "@@xtask-init";
/// Printed before a test binary runs, followed by its name.
pub const TEST_BEGIN: &str = "@@xtask-test-begin";
/// Printed after a test binary exits: `<marker> <name> exit=<code>`.
pub const TEST_END: &str = "@@xtask-test-end";
/// Printed after the last test binary, just before `poweroff -f`.
pub const ALL_DONE: &str = "@@xtask-all-done";

/// What one test binary did in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryOutcome {
    pub name: String,
    pub tally: Tally,
    /// `None` while it runs, or when the guest stopped before it exited.
    pub exit: Option<i32>,
}

/// The state of a guest run, fed line by line.
#[derive(Debug, Default)]
pub struct Console {
    /// `uname -r` of the guest once /init started.
    pub kernel_release: Option<String>,
    pub finished: Vec<BinaryOutcome>,
    pub running: Option<BinaryOutcome>,
    pub all_done: bool,
    /// The guest kernel oopsed on a breakpoint trap in its own text (`Oops: int3`): the
    /// signature of live code patching (`text_poke_bp`, as static keys flip when programs
    /// attach) racing another vCPU under QEMU's emulation, seen once in the 6.12 guest in
    /// `get_random_u32` while a test ran `stat()`.
    pub int3_oops: bool,
}

impl Console {
    pub fn feed(&mut self, line: &str) {
        if line.contains("Oops: int3") {
            self.int3_oops = true;
        }
        if let Some(rest) = after(line, INIT) {
            self.kernel_release = Some(rest.trim().to_string());
        } else if let Some(rest) = after(line, TEST_BEGIN) {
            self.close_running();
            let name = rest.trim().to_string();
            self.running = Some(BinaryOutcome {
                name,
                tally: Tally::default(),
                exit: None,
            });
        } else if let Some(rest) = after(line, TEST_END) {
            let code = rest
                .rsplit_once("exit=")
                .and_then(|(_, c)| c.trim().parse().ok());
            if let Some(mut outcome) = self.running.take() {
                // A garbled exit code still counts as a failure: only 0 passes.
                outcome.exit = Some(code.unwrap_or(-1));
                self.finished.push(outcome);
            }
        } else if line.contains(ALL_DONE) {
            self.close_running();
            self.all_done = true;
        } else if let Some(tally) = Tally::from_result_line(line)
            && let Some(running) = &mut self.running
        {
            running.tally += tally;
        }
    }

    /// A begin marker without an end marker: the binary never reported its exit.
    fn close_running(&mut self) {
        if let Some(outcome) = self.running.take() {
            self.finished.push(outcome);
        }
    }

    /// Passed and failed tests. A binary that failed without a failing test in its summary
    /// (crash, abort, lost marker) counts as one failure, and so does a guest that stopped early.
    pub fn tally(&self) -> Tally {
        let mut total = Tally::default();
        for outcome in self.finished.iter().chain(&self.running) {
            total += outcome.tally;
            if outcome.exit != Some(0) && outcome.tally.failed == 0 {
                total.failed += 1;
            }
        }
        if !self.all_done && self.running.is_none() {
            total.failed += 1;
        }
        total
    }

    /// One sentence per thing that went wrong outside a failing test's own report.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.kernel_release.is_none() {
            problems.push("the guest never reached /init (see the console log)".to_string());
        }
        for outcome in self.finished.iter().chain(&self.running) {
            match outcome.exit {
                None => problems.push(format!("{} did not finish", outcome.name)),
                Some(0) => {}
                Some(code) if outcome.tally.failed == 0 => problems.push(format!(
                    "{} exited with {code} without reporting a failed test",
                    outcome.name
                )),
                Some(_) => {}
            }
        }
        if !self.all_done && self.kernel_release.is_some() {
            problems.push("the guest stopped before all test binaries ran".to_string());
        }
        problems
    }
}

/// `line` without terminal control sequences: SeaBIOS clears and resets the screen (`ESC c`),
/// which would wipe the user's terminal.
pub fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, ending in a letter. Other escapes are two characters.
            if chars.next_if_eq(&'[').is_some() {
                while chars.next().is_some_and(|c| !c.is_ascii_alphabetic()) {}
            } else {
                chars.next();
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|at| &line[at + marker.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> Console {
        let mut console = Console::default();
        for line in lines {
            console.feed(line);
        }
        console
    }

    #[test]
    fn an_int3_oops_of_the_guest_kernel_is_recognised() {
        let c = feed(&[
            "@@xtask-init 6.12.118+deb12-cloud-amd64",
            "@@xtask-test-begin containers",
            "test a_docker_container_shows_in_every_view ... [   13.447895] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
            "[   13.452385] Kernel panic - not syncing: Fatal exception in interrupt",
        ]);
        assert!(c.int3_oops && !c.all_done);
        assert!(!feed(&["[ 1.0] Oops: general protection fault"]).int3_oops);
    }

    #[test]
    fn a_clean_run_sums_every_binary() {
        let console = feed(&[
            "@@xtask-init 6.1.0-56-cloud-amd64",
            "@@xtask-test-begin close_wait",
            "test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            "@@xtask-test-end close_wait exit=0",
            "@@xtask-test-begin time_wait",
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
            "@@xtask-test-end time_wait exit=101",
            "@@xtask-all-done",
        ]);
        assert_eq!(
            console.kernel_release.as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            console.tally(),
            Tally {
                passed: 6,
                failed: 1
            }
        );
        assert!(console.problems().is_empty(), "{:?}", console.problems());
    }

    #[test]
    fn a_crash_without_summary_is_a_failure() {
        let console = feed(&[
            "@@xtask-init 6.1.0-56-cloud-amd64",
            "@@xtask-test-begin owner",
            "@@xtask-test-end owner exit=139",
            "@@xtask-all-done",
        ]);
        assert_eq!(
            console.tally(),
            Tally {
                passed: 0,
                failed: 1
            }
        );
        assert_eq!(console.problems().len(), 1);
    }

    #[test]
    fn a_guest_that_stops_mid_binary_fails_that_binary() {
        let console = feed(&[
            "@@xtask-init 6.1.0-56-cloud-amd64",
            "@@xtask-test-begin owner",
            "test owner::attributes_connect ... ok",
        ]);
        assert_eq!(
            console.tally(),
            Tally {
                passed: 0,
                failed: 1
            }
        );
        assert!(
            console
                .problems()
                .iter()
                .any(|p| p.contains("owner did not finish"))
        );
    }

    #[test]
    fn a_guest_that_never_boots_is_a_failure() {
        let console = feed(&["Kernel panic - not syncing: VFS: Unable to mount root fs"]);
        assert_eq!(
            console.tally(),
            Tally {
                passed: 0,
                failed: 1
            }
        );
        assert!(console.problems()[0].contains("never reached /init"));
    }

    #[test]
    fn printable_drops_terminal_resets_and_csi() {
        assert_eq!(
            printable("\x1bc\x1b[?7l\x1b[2JSeaBIOS (version 1.16)"),
            "SeaBIOS (version 1.16)"
        );
        assert_eq!(printable("a\x1b[0mb\rc"), "abc");
    }

    #[test]
    fn markers_are_found_behind_kernel_noise() {
        let console = feed(&[
            "[    3.1] random: crng init done@@xtask-init 6.1.0-56-cloud-amd64",
            "@@xtask-test-begin a",
            "[    9.9] x test result: ok. 1 passed; 0 failed; 0 ignored",
            "@@xtask-test-end a exit=0",
            "@@xtask-all-done",
        ]);
        assert_eq!(
            console.tally(),
            Tally {
                passed: 1,
                failed: 0
            }
        );
    }
}
