//! Counters the socket table keeps about itself.

use serde::ser::SerializeMap;
use tcptrace_common::TcpState;

/// Sockets per state, as `ss` would count them (a timewait socket counts as TIME_WAIT, or as
/// FIN_WAIT2 while it waits for its peer's FIN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StateCounts([u64; 13]);

impl StateCounts {
    /// States a tracked socket can be in: all but CLOSE (a closed socket leaves the table) and
    /// NEW_SYN_RECV (request sockets never reach the tracepoint).
    pub const STATES: [TcpState; 10] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
    ];

    pub(super) fn from_array(a: [u64; 13]) -> StateCounts {
        StateCounts(a)
    }

    pub fn get(&self, s: TcpState) -> u64 {
        self.0[s as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (TcpState, u64)> + '_ {
        Self::STATES.iter().map(|&s| (s, self.get(s)))
    }
}

/// Serialized as `{"ESTABLISHED": n, ...}` with every trackable state present.
impl serde::Serialize for StateCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(Self::STATES.len()))?;
        for (st, n) in self.iter() {
            m.serialize_entry(st.name(), &n)?;
        }
        m.end()
    }
}

/// What one reconciliation with the kernel table corrected. Also kept as a running total.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub struct ReconcileStats {
    /// Sockets the kernel had and we did not (predating us, or their events were lost).
    pub added: u64,
    /// Sockets we had that the kernel no longer has (a lost close, or a timewait socket killed
    /// early: by a RST, or by `tcp_max_tw_buckets`).
    pub removed: u64,
    /// Sockets whose state we had wrong in a way only an undelivered transition explains: the
    /// tracepoint reports every change of a full socket's state, so the event stream missed at
    /// least one (a counted loss, or a run the kernel skipped without counting it).
    pub state_fixed: u64,
    /// The transitions those fixes need at the least: from our state to the kernel's by the
    /// fewest transitions TCP allows (a client we held in FIN_WAIT1 that the kernel holds in
    /// TIME_WAIT made two). What was lost, counted or not, is at least this many.
    pub transitions_missed: u64,
    /// Timewait sockets whose substate (FIN_WAIT2 or TIME_WAIT) we had wrong. The kernel reports
    /// no event when one turns TIME_WAIT (the peer's FIN reaches it); it is inferred from the
    /// local peer's close, which fails when the peer was not known yet (e.g. at start-up).
    pub substate_fixed: u64,
    /// Sockets whose addresses we had incomplete or wrong (e.g. a connect still in SYN_SENT,
    /// whose local port the kernel picks after the transition).
    pub tuple_fixed: u64,
    /// Sockets missing from or different in the dump but with events newer than it: kept as is.
    pub kept_newer: u64,
    /// Sockets in the dump that closed after it was taken: not brought back.
    pub skipped_closed: u64,
    /// Half-open sockets in the dump (SYN_RECV, not yet accepted): too short-lived to add.
    pub skipped_transient: u64,
    /// Sockets whose inode we learned (needed to attribute them by fd scan).
    pub inode_learned: u64,
    /// Sockets whose cookie we learned (classic tracepoint path).
    pub cookie_learned: u64,
    /// Summary mode: sockets in states followed only through the kernel's table (ESTABLISHED,
    /// SYN_SENT, FIN_WAIT1, ...), added or moved to the state the dump showed. Not corrections.
    #[serde(skip_serializing_if = "is_zero")]
    pub learned: u64,
    /// CLOSE_WAIT sockets older than tracing dated from the kernel's receive clocks
    /// (`tcp_info`): their ages are estimates (lower bounds). Not corrections.
    #[serde(skip_serializing_if = "is_zero")]
    pub close_wait_dated: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl ReconcileStats {
    pub(super) fn add(&mut self, o: &ReconcileStats) {
        self.added += o.added;
        self.removed += o.removed;
        self.state_fixed += o.state_fixed;
        self.transitions_missed += o.transitions_missed;
        self.substate_fixed += o.substate_fixed;
        self.tuple_fixed += o.tuple_fixed;
        self.kept_newer += o.kept_newer;
        self.skipped_closed += o.skipped_closed;
        self.skipped_transient += o.skipped_transient;
        self.inode_learned += o.inode_learned;
        self.cookie_learned += o.cookie_learned;
        self.learned += o.learned;
        self.close_wait_dated += o.close_wait_dated;
    }
}

/// What an fd scan changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub struct FdScanStats {
    /// Sockets whose owner the scan confirmed (it holds the fd).
    pub confirmed: u64,
    /// Sockets that got an owner, or a different one, from the scan.
    pub assigned: u64,
}

/// Running counters of the socket table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub struct TableStats {
    /// Events dropped because they repeated the socket's last transition (the backup kernel
    /// program's duplicates). Subtract from the backup program's count in lost-event math.
    pub duplicates: u64,
    /// Events whose `old` state was not the tracked one (a lost or reordered event).
    pub state_mismatches: u64,
    /// Of those, events older than what we already knew (reordered across CPUs): dropped.
    pub stale: u64,
    /// The transitions the other mismatches show were made unseen, at the least: a socket's
    /// event left a state we never saw it enter (a server socket we held in ESTABLISHED whose
    /// next event is CLOSE_WAIT->LAST_ACK made ESTABLISHED->CLOSE_WAIT). Like the kernel-table
    /// check's `corrections.transitions_missed`, what was lost, counted or not, is at least
    /// this many; the two never count one gap twice (the table adopts the event's state). A
    /// stale event (one of the gap's, arriving late) takes its transition back out.
    pub transitions_missed: u64,
    /// Entries replaced because a new socket took their identity or 4-tuple (their close was
    /// never seen).
    pub superseded: u64,
    /// Events about unknown sockets that needed nothing tracked (an unknown socket closing).
    pub ignored: u64,
    /// Sockets dropped to stay within `max_sockets`.
    pub evictions: u64,
    /// Closes caused by a RST (no TIME_WAIT follows).
    pub reset_closes: u64,
    /// TIME_WAIT entries inferred from FIN_WAIT2/CLOSING -> CLOSE.
    pub timewait_inferred: u64,
    /// Timewait sockets (TIME_WAIT, or the FIN_WAIT2 substate) whose start and substate the
    /// fentry hook on `tcp_time_wait` reported exactly.
    pub timewait_exact: u64,
    /// FIN_WAIT2 / CLOSING -> CLOSE without a RST that left no timewait socket, as the kernel
    /// read at the close: its TIME_WAIT table was full (`net.ipv4.tcp_max_tw_buckets`; the
    /// kernel counts these as `TcpExt: TCPTimeWaitOverflow`), or it aborted the connection.
    /// No TIME_WAIT follows: those connections' 4-tuples are free again at once.
    pub timewait_skipped: u64,
    /// Timewait sockets ended by a new connection on their 4-tuple.
    pub timewait_reused: u64,
    /// Timewait sockets whose timer ran out.
    pub timewait_expired: u64,
    /// Of those, the ones a kernel event ended (`inet_twsk_free`, or `timer_expire_entry` on
    /// their `tw_timer`) rather than the inferred 60 s.
    pub timewait_end_exact: u64,
    /// Summary mode: records that said a transition of their socket had been skipped by the
    /// kernel and repaired from the next one (its stays' times are unknown).
    #[serde(skip_serializing_if = "is_zero")]
    pub repaired: u64,
    /// Sum of every reconciliation.
    pub corrections: ReconcileStats,
    /// Sum of every fd scan.
    pub fd_scans: FdScanStats,
    /// Connects that failed (SYN_SENT -> CLOSE with an error: refused, no local port, timed
    /// out, ...); by process, destination and errno in the report's `connect_failures`.
    pub connect_failures: u64,
}
