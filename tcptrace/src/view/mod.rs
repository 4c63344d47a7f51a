//! Views: how results reach the user. They render; they never reach back into the probe.

pub mod diagnose;
pub mod fastfmt;
pub mod report;
pub mod table;
pub mod top;
pub mod trace;

/// What the text views append to a lost-event count when reconciliation found transitions the
/// kernel skipped without counting them (`Summary::lost_uncounted`); empty when there are none.
pub fn uncounted_suffix(uncounted: u64) -> String {
    if uncounted == 0 {
        String::new()
    } else {
        format!(" (+{uncounted} skipped by the kernel uncounted)")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uncounted_losses_are_named_only_when_there_are_some() {
        assert_eq!(super::uncounted_suffix(0), "");
        assert_eq!(
            super::uncounted_suffix(3),
            " (+3 skipped by the kernel uncounted)"
        );
    }
}
