//! Views: how results reach the user. They render; they never reach back into the probe.

pub mod diagnose;
pub mod fastfmt;
pub mod report;
pub mod table;
pub mod top;
pub mod trace;

use crate::aggregate::Summary;

/// What the text views append to a lost-event count: transitions the kernel skipped without
/// counting them (`Summary::lost_uncounted`), sockets the in-kernel port filter forgot, and
/// exact TIME_WAIT records that did not arrive. Each only when non-zero, so a healthy run reads
/// as just the count.
pub fn loss_suffix(s: &Summary) -> String {
    loss_words(
        s.lost_uncounted,
        s.port_filter_forgot,
        s.timewait_hook_missed,
    )
}

fn loss_words(uncounted: u64, port_filter_forgot: u64, timewait_hook_missed: u64) -> String {
    let mut out = String::new();
    if uncounted > 0 {
        out += &format!(" (+{uncounted} skipped by the kernel uncounted)");
    }
    if port_filter_forgot > 0 {
        out += &format!(" (port filter forgot {port_filter_forgot} sockets)");
    }
    if timewait_hook_missed > 0 {
        out += &format!(" ({timewait_hook_missed} TIME_WAIT records missed: times inferred)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::loss_words;

    #[test]
    fn loss_notes_are_named_only_when_there_are_some() {
        assert_eq!(loss_words(0, 0, 0), "");
        assert_eq!(loss_words(3, 0, 0), " (+3 skipped by the kernel uncounted)");
        assert_eq!(
            loss_words(0, 2, 5),
            " (port filter forgot 2 sockets) (5 TIME_WAIT records missed: times inferred)"
        );
    }
}
