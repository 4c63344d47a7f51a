//! Transitions by old and new state, and resets, counted from the event stream since the
//! session started (the exporter's `tcptrace_transitions_total`, which starts at zero with
//! `serve`, as Prometheus counters do).

use tcptrace_common::TcpState;

use crate::event::{Event, What};

/// States are numbered 1..=12 (`TCP_ESTABLISHED` .. `TCP_NEW_SYN_RECV`); index 0 is unused.
const N: usize = 13;

#[derive(Clone, Debug)]
pub struct TransitionCounts {
    transitions: [[u64; N]; N],
    pub resets_received: u64,
    pub resets_sent: u64,
}

impl Default for TransitionCounts {
    fn default() -> Self {
        TransitionCounts {
            transitions: [[0; N]; N],
            resets_received: 0,
            resets_sent: 0,
        }
    }
}

impl TransitionCounts {
    pub fn observe(&mut self, ev: &Event) {
        match ev.what {
            What::Transition { old, new } => {
                self.transitions[old as usize % N][new as usize % N] += 1;
            }
            What::ResetReceived => self.resets_received += 1,
            What::ResetSent => self.resets_sent += 1,
            // Not transitions; the table's TIME_WAIT gauges carry what they tell.
            What::TimeWaitEnter { .. } | What::TimeWaitEnd => {}
            // Summary mode counts every transition in the kernel (`TRANSITIONS`), these included:
            // see `Session::transition_totals`.
            What::Summary { .. } => {}
        }
    }

    /// Adds `n` transitions `old -> new` counted elsewhere (the kernel, in summary mode).
    pub fn add(&mut self, old: TcpState, new: TcpState, n: u64) {
        self.transitions[old as usize % N][new as usize % N] += n;
    }

    /// Every transition counted.
    pub fn total(&self) -> u64 {
        self.transitions.iter().flatten().sum()
    }

    /// Transitions seen at least once: (old, new, count), in state order.
    pub fn transitions(&self) -> impl Iterator<Item = (TcpState, TcpState, u64)> + '_ {
        TcpState::ALL.iter().flat_map(move |&old| {
            TcpState::ALL.iter().filter_map(move |&new| {
                let n = self.transitions[old as usize % N][new as usize % N];
                (n > 0).then_some((old, new, n))
            })
        })
    }
}
