//! One tracked socket, packed: 80 bytes (asserted below).

use tcptrace_common::TcpState;

use super::addr::Tuple;
use super::owner::OwnerRef;

/// A timestamp field that is not known.
pub(super) const UNKNOWN_NS: u64 = u64::MAX;

/// Bits of [`Entry::flags`].
pub(super) mod flag {
    /// The kernel's timewait mini-socket (TIME_WAIT, or the FIN_WAIT2 substate of an orphan whose
    /// peer has not closed): the full socket is gone, no more transitions come for it.
    pub const MINI: u16 = 1 << 0;
    /// A RST was received or sent since the last transition: the next ->CLOSE is a reset close.
    pub const RESET: u16 = 1 << 1;
    pub const LISTENER: u16 = 1 << 2;
    /// Indexed by (netns, cookie) in the identity index.
    pub const ID_COOKIE: u16 = 1 << 3;
    /// Indexed by (netns, skaddr) in the identity index (classic tracepoint path).
    pub const ID_SKADDR: u16 = 1 << 4;
    /// In the 4-tuple index.
    pub const IN_TUPLE: u16 = 1 << 5;
    /// Learned from the kernel table and not yet tied to an event: the first event whose identity
    /// is unknown but whose 4-tuple matches adopts this entry.
    pub const UNBOUND: u16 = 1 << 6;
    /// Reconciliation scratch: matched by the current snapshot.
    pub const SEEN: u16 = 1 << 7;
    /// The closer was the task current at a syscall-driven close (exact).
    pub const CLOSER_EXACT: u16 = 1 << 8;
    /// Accepted from a listener (passive open).
    pub const PASSIVE: u16 = 1 << 9;
    /// `tcp_time_wait` fired for this full socket (fentry hook): its next ->CLOSE hands it to
    /// a timewait socket in the substate `TW_FIN_WAIT2` says, exactly. On a timewait socket:
    /// its end comes from `inet_twsk_free`.
    pub const TW_HOOKED: u16 = 1 << 10;
    /// With `TW_HOOKED`: the substate is FIN_WAIT2 (else TIME_WAIT).
    pub const TW_FIN_WAIT2: u16 = 1 << 11;
    /// `since_ns` is an estimate from the kernel's clocks, not a transition seen: a CLOSE_WAIT
    /// socket older than tracing, dated by the time since the peer's last segment (a lower
    /// bound of its age). Shown as an age, never used as a dwell time.
    pub const SINCE_ESTIMATED: u16 = 1 << 12;
    /// Two bits: the [`super::LeakCause`] of a CLOSE_WAIT socket from its receive queue at the
    /// last snapshot (0: not seen in one since it entered CLOSE_WAIT).
    pub const CAUSE_SHIFT: u16 = 13;
    pub const CAUSE: u16 = 3 << CAUSE_SHIFT;
    /// Cleared by every change of state.
    pub const PER_STATE: u16 = SINCE_ESTIMATED | CAUSE;
}

#[derive(Clone, Debug)]
pub(super) struct Entry {
    /// Socket cookie, 0 when unknown. While the slot is free: the next free slot.
    pub cookie: u64,
    /// Kernel address of the full socket, 0 when unknown.
    pub skaddr: u64,
    /// When the socket entered `state`, [`UNKNOWN_NS`] when not seen.
    pub since_ns: u64,
    /// When the connection began (SYN_SENT, SYN_RECV or LISTEN), [`UNKNOWN_NS`] if before us.
    pub created_ns: u64,
    /// Time of the last event or snapshot that told us something; for a timewait socket, when the
    /// kernel created it (its timer counts from there).
    pub last_ns: u64,
    pub netns: u32,
    /// Socket file inode (from the kernel table), 0 when unknown or none. Socket inodes come from
    /// `get_next_ino()` in `sock_alloc`, an `unsigned int`
    /// (<https://github.com/torvalds/linux/blob/v6.1/net/socket.c>).
    pub inode: u32,
    pub owner: OwnerRef,
    /// Who closed this socket (who called close() or shutdown()): TIME_WAIT belongs to them.
    pub closer: OwnerRef,
    pub tuple: Tuple,
    pub flags: u16,
    /// `TcpState as u8`; 0 marks a free slot.
    pub state: u8,
    /// The last transition applied, for dropping duplicates from the backup program.
    pub last_old: u8,
    pub last_new: u8,
    /// `Attribution::to_u8`, 0 when there is no owner.
    pub attribution: u8,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 80);

impl Entry {
    pub fn new(netns: u32) -> Entry {
        Entry {
            cookie: 0,
            skaddr: 0,
            inode: 0,
            since_ns: UNKNOWN_NS,
            created_ns: UNKNOWN_NS,
            last_ns: 0,
            netns,
            owner: 0,
            closer: 0,
            tuple: Tuple::default(),
            flags: 0,
            state: 0,
            last_old: 0,
            last_new: 0,
            attribution: 0,
        }
    }

    pub fn is_free(&self) -> bool {
        self.state == 0
    }

    pub fn state(&self) -> TcpState {
        TcpState::from_u8(self.state).unwrap_or(TcpState::Close)
    }

    pub fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }

    pub fn is_mini(&self) -> bool {
        self.has(flag::MINI)
    }

    pub fn is_listener(&self) -> bool {
        self.has(flag::LISTENER)
    }

    /// When the socket entered its state, if that was seen (or inferred from an exact timer).
    pub fn since(&self) -> Option<u64> {
        (self.since_ns != UNKNOWN_NS && !self.has(flag::SINCE_ESTIMATED)).then_some(self.since_ns)
    }

    /// An estimate of when the socket entered its state, where only the kernel's clocks date it.
    pub fn estimated_since(&self) -> Option<u64> {
        (self.since_ns != UNKNOWN_NS && self.has(flag::SINCE_ESTIMATED)).then_some(self.since_ns)
    }

    pub fn leak_cause(&self) -> Option<super::LeakCause> {
        super::LeakCause::from_bits((self.flags & flag::CAUSE) >> flag::CAUSE_SHIFT)
    }

    pub fn created(&self) -> Option<u64> {
        (self.created_ns != UNKNOWN_NS).then_some(self.created_ns)
    }

    /// Time spent in the current state up to `ts`, when its start is known.
    pub fn dwell_until(&self, ts: u64) -> Option<u64> {
        self.since().map(|s| ts.saturating_sub(s))
    }
}
