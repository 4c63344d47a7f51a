//! Every sentence tcptrace says about lost events: the closing line of every command, the
//! progress lines while it runs, and the notes the text views append to a lost count. One
//! module, so the same loss is said the same way everywhere.

use crate::{aggregate::Summary, probe::LossReport};

/// The closing line every command prints on stderr. `uncounted`: transitions the kernel skipped
/// without counting them, found by reconciliation.
pub fn closing_line(events: u64, elapsed_s: f64, loss: &LossReport, uncounted: u64) -> String {
    let followed = if loss.followed > 0 {
        format!(" ({} transitions followed in the kernel)", loss.followed)
    } else {
        String::new()
    };
    format!(
        "tcptrace: {events} events in {elapsed_s:.1}s{followed}; lost {} events ({} transitions, \
         {} resets; ring full {}, nested runs skipped {}, recovered by the backup program {}, \
         duplicates dropped {}){}{}{}{}",
        loss.lost(),
        loss.lost_transitions(),
        loss.lost_resets(),
        loss.ring_full,
        loss.primary_skipped,
        loss.recovered,
        loss.duplicates,
        summary_note(loss),
        uncounted_note(uncounted),
        port_filter_note(loss.port_filter_forgot),
        timewait_hook_note(loss.timewait_hook_missed),
    )
}

/// The line printed while running when events were lost since the last one (`new` of them).
///
/// Its kernel counters were read one poll earlier than the recovered copies were counted (so
/// that no copy still in the ring is taken for a loss), so copies of runs skipped since can
/// make "recovered" exceed "skipped" ("skipped 308 of which 312 recovered", seen under a
/// storm). The line shows the recoveries its total counted, at most the runs skipped.
pub fn progress_line(new: u64, loss: &LossReport) -> String {
    format!(
        "tcptrace: lost {new} events (total {}: ring full {}, nested runs skipped {} of which {} \
         recovered, resets skipped {})",
        loss.lost(),
        loss.ring_full,
        loss.primary_skipped,
        loss.recovered.min(loss.primary_skipped),
        loss.reset_skipped
    )
}

/// What the text views append to a lost-event count: transitions the kernel skipped without
/// counting them (`Summary::lost_uncounted`), sockets the in-kernel port filter forgot, and
/// exact TIME_WAIT records that did not arrive. Each only when non-zero, so a healthy run reads
/// as just the count.
pub fn suffix(s: &Summary) -> String {
    suffix_words(
        s.lost_uncounted,
        s.port_filter_forgot,
        s.timewait_hook_missed,
    )
}

fn suffix_words(uncounted: u64, port_filter_forgot: u64, timewait_hook_missed: u64) -> String {
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

/// Summary mode's own counts, when they are not zero: gaps repaired from a socket's next
/// transition, storage that could not be created, summaries the full ring refused.
fn summary_note(l: &LossReport) -> String {
    let mut out = String::new();
    if l.repaired > 0 {
        out += &format!(
            "; {} of those lost were repaired from the socket's next transition (state right, \
             those stays untimed)",
            l.repaired
        );
    }
    if l.storage_failed > 0 {
        out += &format!("; {} for want of socket-local storage", l.storage_failed);
    }
    if l.summary_ring_full > 0 {
        out += &format!(
            "; {} summaries refused by the full ring (CLOSE_WAIT entries or closes)",
            l.summary_ring_full
        );
    }
    out
}

/// Sockets the kernel's port filter admitted but could not remember (a map update failed):
/// each one's close will be filtered out, so it may be a lost event. Never seen so far; shown
/// if it happens rather than hidden.
fn port_filter_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("; the port filter could not remember {n} sockets: their closes may be missing too")
    }
}

/// Exact timewait records that never arrived: not lost transitions, but those sockets' TIME_WAIT
/// times are inferred, so say so.
fn timewait_hook_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(
            "; {n} exact TIME_WAIT records missed (ring full or skipped): those sockets' TIME_WAIT \
             entry or end was inferred instead"
        )
    }
}

/// The closing line's note on transitions the overload guard counted in the kernel.
pub fn counted_note(counted: u64) -> String {
    if counted == 0 {
        String::new()
    } else {
        format!("; {counted} transitions counted in the kernel instead of sent (overload guard)")
    }
}

/// The closing line's words for transitions the kernel skipped without counting them (the text
/// views use the short [`suffix`]); empty when there are none.
fn uncounted_note(uncounted: u64) -> String {
    if uncounted == 0 {
        String::new()
    } else {
        format!(
            "; at least {uncounted} more transitions skipped by the kernel without being counted \
             (found where a socket's next event or the kernel-table check showed states the \
             events never reported)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_notes_are_named_only_when_there_are_some() {
        assert_eq!(suffix_words(0, 0, 0), "");
        assert_eq!(
            suffix_words(3, 0, 0),
            " (+3 skipped by the kernel uncounted)"
        );
        assert_eq!(
            suffix_words(0, 2, 5),
            " (port filter forgot 2 sockets) (5 TIME_WAIT records missed: times inferred)"
        );
    }

    #[test]
    fn a_progress_line_never_recovers_more_runs_than_were_skipped() {
        let loss = LossReport {
            ring_full: 5,
            primary_skipped: 308,
            recovered: 312,
            ..LossReport::default()
        };
        assert!(
            progress_line(5, &loss).contains("nested runs skipped 308 of which 308 recovered"),
            "{}",
            progress_line(5, &loss)
        );
    }

    #[test]
    fn a_clean_closing_line_has_no_notes() {
        let line = closing_line(12, 1.0, &LossReport::default(), 0);
        assert_eq!(
            line,
            "tcptrace: 12 events in 1.0s; lost 0 events (0 transitions, 0 resets; ring full 0, \
             nested runs skipped 0, recovered by the backup program 0, duplicates dropped 0)"
        );
        assert_eq!(counted_note(0), "");
        assert_eq!(
            counted_note(7),
            "; 7 transitions counted in the kernel instead of sent (overload guard)"
        );
        let line = closing_line(12, 1.0, &LossReport::default(), 4);
        assert!(line.ends_with(
            "; at least 4 more transitions skipped by the kernel without being counted (found \
             where a socket's next event or the kernel-table check showed states the events \
             never reported)"
        ));
    }
}
