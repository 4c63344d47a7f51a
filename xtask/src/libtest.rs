//! Counting test results from libtest's summary lines.

use std::fmt;
use std::ops::AddAssign;

/// Passed and failed tests, summed over any number of test binaries and runs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

impl Tally {
    /// Reads `test result: ok. 3 passed; 1 failed; ...` anywhere in `line`.
    ///
    /// The VM console can prefix a line with kernel output, so the match is not anchored.
    pub fn from_result_line(line: &str) -> Option<Tally> {
        let rest = &line[line.find("test result: ")? + "test result: ".len()..];
        let counts = rest.split_once(". ")?.1;
        let mut tally = Tally::default();
        let mut seen = false;
        for part in counts.split(';') {
            let mut words = part.split_whitespace();
            let (Some(number), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = number.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => (tally.passed, seen) = (n, true),
                "failed" => tally.failed = n,
                _ => {}
            }
        }
        seen.then_some(tally)
    }

    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

impl AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_passing_summary() {
        let line = "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; \
                    finished in 0.31s";
        assert_eq!(
            Tally::from_result_line(line),
            Some(Tally {
                passed: 12,
                failed: 0
            })
        );
    }

    #[test]
    fn reads_a_failing_summary_behind_kernel_noise() {
        let line = "[   12.5] random: crng init done\rtest result: FAILED. 3 passed; 2 failed; \
                    0 ignored; 0 measured; 0 filtered out; finished in 4.02s";
        assert_eq!(
            Tally::from_result_line(line),
            Some(Tally {
                passed: 3,
                failed: 2
            })
        );
    }

    #[test]
    fn ignores_other_lines() {
        assert_eq!(
            Tally::from_result_line("test close_wait_owner ... ok"),
            None
        );
        assert_eq!(Tally::from_result_line("test result: garbled"), None);
    }

    #[test]
    fn sums_runs() {
        let mut total = Tally {
            passed: 1,
            failed: 0,
        };
        total += Tally {
            passed: 2,
            failed: 3,
        };
        assert_eq!(total.to_string(), "3 passed, 3 failed");
        assert!(!total.ok());
    }
}
