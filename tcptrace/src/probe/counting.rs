//! Counting mode: under overload the kernel counts transitions per (old, new) state instead of
//! sending them (see the session's overload guard). What it counted is reported here.

use std::collections::BTreeMap;

use tcptrace_common::{TcpState, counter::RESET_TRANSITION};

use super::Probe;

/// The overload guard's record, shown in every view once it has acted.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Overload {
    /// `--max-event-rate`: events per second above which the kernel counts instead of sends.
    pub budget_per_s: u64,
    /// The kernel is counting now.
    pub counting: bool,
    /// Times the guard switched to counting.
    pub switches: u64,
    /// Events counted in the kernel instead of sent (not lost: counted).
    pub counted_events: u64,
    /// Counted events by transition, "OLD->NEW" ("RESET" for resets).
    pub counted: BTreeMap<String, u64>,
}

impl Overload {
    /// Fills the counts from the kernel's counting maps. In summary mode the kernel counts
    /// records, not transitions, instead of sending them: no per-transition split then.
    pub fn read_counts(&mut self, probe: &Probe) {
        self.counted_events = probe.counted();
        self.counted.clear();
        if probe.summary {
            return;
        }
        for ((old, new), n) in probe.counted_transitions() {
            let name = |v: u8| TcpState::from_u8(v).map(|s| s.name()).unwrap_or("?");
            let key = if (old, new) == RESET_TRANSITION {
                "RESET".to_string()
            } else {
                format!("{}->{}", name(old), name(new))
            };
            self.counted.insert(key, n);
        }
    }
}
