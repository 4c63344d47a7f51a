//! What the socket table reports back for each event: the facts the views and aggregates need.

use std::net::SocketAddr;

use tcptrace_common::TcpState;

use super::owner::{Attribution, Owner};

/// A socket as the views see it at the moment of a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockInfo {
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The owner as now known (for a timewait socket: its closer).
    pub owner: Option<Owner>,
    pub attribution: Option<Attribution>,
    pub listener: bool,
    /// Accepted from a listener (inbound): the remote port is the peer's ephemeral port and the
    /// local port is the service's.
    pub passive: bool,
}

/// Why a socket left a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// An ordinary transition.
    Transition,
    /// The event's `old` state was not the one we tracked (a lost event): when the tracked state
    /// ended is unknown.
    Mismatch,
    /// A new connection on the same 4-tuple replaced the timewait socket.
    Reused,
    /// The timewait socket's timer ran out (TIME_WAIT after 60 s, orphaned FIN_WAIT2 after
    /// tcp_fin_timeout).
    Expired,
    /// A RST killed the socket (or its peer aborted, which resets our timewait socket).
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The socket entered `state` at `at_ns`. TIME_WAIT is reported here when inferred from
    /// FIN_WAIT2/CLOSING -> CLOSE or from the peer's close of a held FIN_WAIT2.
    Entered { state: TcpState, at_ns: u64 },
    /// The socket left `state` after `dwell_ns` (None when its entry time is unknown).
    Left {
        state: TcpState,
        dwell_ns: Option<u64>,
        reason: LeaveReason,
    },
    /// The full socket closed in FIN_WAIT2 while its local peer still sits in CLOSE_WAIT: it
    /// lives on as a timewait socket in the FIN_WAIT2 substate (`ss`: FIN-WAIT-2) until the peer
    /// closes. Its FIN_WAIT2 dwell continues.
    HeldInFinWait2 { at_ns: u64 },
    /// The full socket reached CLOSE. `lifetime_ns` runs from SYN_SENT/SYN_RECV/LISTEN, when
    /// known. `reset`: the close was caused by a RST (no TIME_WAIT follows).
    Closed {
        lifetime_ns: Option<u64>,
        reset: bool,
    },
    /// A connect failed (SYN_SENT -> CLOSE): `errno` is what `connect()` (or the first use of a
    /// non-blocking socket) got: ECONNREFUSED, EADDRNOTAVAIL, ETIMEDOUT, ...
    ConnectFailed { errno: u16 },
    /// A FIN_WAIT2 / CLOSING -> CLOSE asked for TIME_WAIT and got none: the kernel's TIME_WAIT
    /// table was full (`tcp_max_tw_buckets`). Counted against the closer, whom the TIME_WAIT
    /// would have belonged to.
    TimeWaitRefused,
}

/// Which socket of an [`Applied`] a change is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// The event's socket.
    This,
    /// Another socket the event affected: the local peer of a held FIN_WAIT2, or a timewait
    /// socket whose 4-tuple the event's socket took over.
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The event changed the table.
    Applied,
    /// The same transition as the socket's last one, delivered twice (backup program): dropped.
    Duplicate,
    /// Older than what the table already knows about the socket (out of order): dropped.
    Stale,
    /// Nothing to track (an unknown socket closing).
    Ignored,
}

/// The worst case: a summary's earlier stays (up to seven), a mismatch, the stay it ends,
/// its close and TIME_WAIT entry, and a peer's two changes.
const MAX_CHANGES: usize = 16;

/// What one event did.
#[derive(Clone, Debug)]
pub struct Applied {
    pub outcome: Outcome,
    /// The event's socket after the event; None when ignored.
    pub sock: Option<SockInfo>,
    /// The other socket changes refer to, if any.
    pub other: Option<SockInfo>,
    /// Time the socket spent in the event's `old` state, when known.
    pub dwell_ns: Option<u64>,
    /// The state `ss` would now show for the socket (TIME_WAIT for an inferred timewait socket),
    /// None when it is gone.
    pub state: Option<TcpState>,
    /// The event's `old` was not the tracked state; the event was adopted.
    pub mismatch: bool,
    changes: [(Subject, Change); MAX_CHANGES],
    len: u8,
}

/// An empty result (nothing applied yet), for a buffer that [`super::SocketTable::apply_into`]
/// fills.
impl Default for Applied {
    fn default() -> Applied {
        Applied::new(Outcome::Ignored)
    }
}

impl Applied {
    pub(super) fn new(outcome: Outcome) -> Applied {
        Applied {
            outcome,
            sock: None,
            other: None,
            dwell_ns: None,
            state: None,
            mismatch: false,
            changes: [(
                Subject::This,
                Change::Closed {
                    lifetime_ns: None,
                    reset: false,
                },
            ); MAX_CHANGES],
            len: 0,
        }
    }

    /// Empties a result for reuse, as [`Self::new`] would build it, without rewriting the
    /// change slots past `len`, which nothing reads. Destructured so that a new field cannot be
    /// left out.
    pub(super) fn reset(&mut self, new_outcome: Outcome) {
        let Applied {
            outcome,
            sock,
            other,
            dwell_ns,
            state,
            mismatch,
            changes: _,
            len,
        } = self;
        *outcome = new_outcome;
        *sock = None;
        *other = None;
        *dwell_ns = None;
        *state = None;
        *mismatch = false;
        *len = 0;
    }

    /// An empty result, for test sinks that record events instead of applying them.
    #[cfg(test)]
    pub(crate) fn new_for_tests() -> Applied {
        Applied::new(Outcome::Ignored)
    }

    pub(super) fn push(&mut self, who: Subject, c: Change) {
        // Capacity covers the worst case (mismatch + close + a peer's two changes); a logic
        // error here must not take the tracer down, so extra changes are dropped.
        debug_assert!((self.len as usize) < MAX_CHANGES);
        if (self.len as usize) < MAX_CHANGES {
            self.changes[self.len as usize] = (who, c);
            self.len += 1;
        }
    }

    pub fn changes(&self) -> &[(Subject, Change)] {
        &self.changes[..self.len as usize]
    }

    /// Changes with the socket they are about.
    pub fn socket_changes(&self) -> impl Iterator<Item = (&SockInfo, &Change)> {
        self.changes().iter().filter_map(|(who, c)| {
            let s = match who {
                Subject::This => self.sock.as_ref(),
                Subject::Other => self.other.as_ref(),
            };
            s.map(|s| (s, c))
        })
    }

    pub fn is_duplicate(&self) -> bool {
        self.outcome == Outcome::Duplicate
    }
}

/// A change found outside of an event (timer expiry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockChange {
    pub sock: SockInfo,
    pub change: Change,
}
