//! What the session hands to views: the loss picture, the summary, the report document and
//! the closing line.

use tcptrace_common::{TcpState, counter::RESET_TRANSITION};

use super::Session;
use crate::{
    aggregate::{Summary, SummaryInput, TransitionCounts, summary},
    clock::{WallClock, monotonic_ns},
    probe::LossReport,
    source::Source,
    view::{
        loss::{closing_line, counted_note},
        report::{ReportDoc, SCHEMA as REPORT_SCHEMA},
    },
};

impl Session {
    /// Transitions and resets since the start, by kind: what the session applied, plus, in
    /// summary mode, every transition the kernel followed without sending it.
    pub fn transition_totals(&self) -> TransitionCounts {
        let mut t = self.transitions.clone();
        if let Some(p) = self.probe().filter(|p| p.summary) {
            for ((old, new), n) in p.counted_transitions() {
                if let (Some(o), Some(nw)) = (TcpState::from_u8(old), TcpState::from_u8(new)) {
                    t.add(o, nw, n);
                }
            }
        }
        t
    }

    /// The loss picture: while live, the newest one the ring has been drained past (so it never
    /// claims what is still waiting in the ring); a replay's latest recorded counters.
    pub fn loss(&self) -> LossReport {
        match &self.source {
            Source::Kernel(_) => self.losses.settled(),
            Source::File(f) => f.loss,
        }
    }

    /// Transitions the kernel skipped without counting them, found in the event stream's gaps
    /// and by the kernel-table check.
    pub fn lost_uncounted(&self, loss: &LossReport) -> u64 {
        let counted = self.source.kernel().map_or(0, |k| k.probe.counted());
        loss.uncounted(self.table.transitions_missed(), counted)
    }

    /// The report document's core, as of now.
    pub fn summary(&self, top: usize) -> Summary {
        self.summary_at(top, self.now_ns())
    }

    pub fn summary_at(&self, top: usize, now_ns: u64) -> Summary {
        let loss = self.loss();
        summary(
            &self.table,
            &self.agg,
            &SummaryInput {
                now_ns,
                lost_events: loss.lost(),
                lost_uncounted: self.lost_uncounted(&loss),
                timewait_hook_missed: loss.timewait_hook_missed,
                port_filter_forgot: loss.port_filter_forgot,
                transitions_seen: loss.followed + self.transitions.total(),
                transitions_lost: loss.lost_transitions(),
                timewait_method: &self.origin.timewait_method,
                port_range: self.origin.port_range,
                top,
            },
        )
    }

    /// The summary with each process row's container named (from this host's cgroups, so
    /// only when live) and cut to `--container`.
    pub fn summary_named(&mut self, top: usize, now_ns: u64) -> Summary {
        let mut s = self.summary_at(top, now_ns);
        if self.is_live() {
            for r in &mut s.by_pid {
                r.container = self.containers.of(r.pid, r.cgroup_id);
            }
            let filters = &self.filters;
            s.by_pid
                .retain(|r| filters.matches_container(r.container.as_ref()));
        }
        s
    }

    /// The `report --json` document for `summary`, taken now.
    pub fn report_doc<'a>(&self, summary: &'a Summary) -> ReportDoc<'a> {
        ReportDoc {
            schema: REPORT_SCHEMA,
            generated_at: WallClock::now().unix_secs(monotonic_ns()),
            host: self.origin.host.clone(),
            kernel: self.origin.kernel.clone(),
            hook: self.origin.hook.clone(),
            socket_key: self.origin.socket_key.clone(),
            overload: self.overload(),
            recording_truncated: self.truncation().is_some(),
            summary,
            transitions: self
                .transition_totals()
                .transitions()
                .map(|(old, new, n)| (format!("{}->{}", old.name(), new.name()), n))
                .collect(),
        }
    }

    /// The closing line every command prints on stderr.
    pub fn closing_line(&self) -> String {
        let loss = self.loss();
        let line = closing_line(
            self.events,
            self.started.elapsed().as_secs_f64(),
            &loss,
            self.lost_uncounted(&loss),
        );
        line + &counted_note(self.counted_transitions())
    }

    /// Transitions the kernel counted instead of sending (the overload guard), resets apart:
    /// neither delivered nor lost, so the closing line names them and the books balance
    /// (delivered + lost + counted = generated). Not in summary mode, where the kernel's
    /// transition counters count every transition it follows.
    fn counted_transitions(&self) -> u64 {
        let Some(k) = self.source.kernel() else {
            return 0;
        };
        if k.probe.summary {
            return 0;
        }
        k.probe
            .counted_transitions()
            .iter()
            .filter(|(t, _)| *t != RESET_TRANSITION)
            .map(|(_, n)| n)
            .sum()
    }
}
