//! Why a CLOSE_WAIT socket is stuck, read from its receive queue.
//!
//! For a CLOSE_WAIT socket `idiag_rqueue` is `rcv_nxt - copied_seq`, and the peer's FIN takes
//! one byte of sequence space (`tcp_fin` advances `rcv_nxt` past it; `tcp_recvmsg` moves
//! `copied_seq` over it only when the application reads the EOF):
//! <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_diag.c#L22>,
//! <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp.c#L2531>.

/// What the receive queue says the application did with the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeakCause {
    /// Recv-Q 1: only the FIN is queued; nobody ever read this socket since the peer closed (an
    /// idle pooled connection the pool never checks, a handler that never reads).
    NeverReadEof,
    /// Recv-Q 0: the application read EOF (`recv()` returned 0) and still did not `close()`: a
    /// missing close on the EOF or error path.
    ReadEofNotClosed,
    /// Recv-Q > 1: data the application never read, then the FIN: the reader stopped (stuck,
    /// blocked, or gave up on the connection without closing it).
    StoppedReading,
}

impl LeakCause {
    pub const ALL: [LeakCause; 3] = [
        LeakCause::NeverReadEof,
        LeakCause::ReadEofNotClosed,
        LeakCause::StoppedReading,
    ];

    /// The cause of a CLOSE_WAIT socket with `rqueue` bytes in its receive queue.
    pub fn of_rqueue(rqueue: u32) -> LeakCause {
        match rqueue {
            0 => LeakCause::ReadEofNotClosed,
            1 => LeakCause::NeverReadEof,
            _ => LeakCause::StoppedReading,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LeakCause::NeverReadEof => "never_read_eof",
            LeakCause::ReadEofNotClosed => "read_eof_not_closed",
            LeakCause::StoppedReading => "stopped_reading",
        }
    }

    /// Two bits of an entry's flags (0: unknown).
    pub(super) fn to_bits(self) -> u16 {
        match self {
            LeakCause::NeverReadEof => 1,
            LeakCause::ReadEofNotClosed => 2,
            LeakCause::StoppedReading => 3,
        }
    }

    pub(super) fn from_bits(b: u16) -> Option<LeakCause> {
        match b & 3 {
            1 => Some(LeakCause::NeverReadEof),
            2 => Some(LeakCause::ReadEofNotClosed),
            3 => Some(LeakCause::StoppedReading),
            _ => None,
        }
    }
}

/// CLOSE_WAIT sockets per cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CauseCounts {
    pub never_read_eof: u64,
    pub read_eof_not_closed: u64,
    pub stopped_reading: u64,
    /// Not yet in a snapshot of the kernel's table since entering CLOSE_WAIT.
    pub unknown: u64,
}

impl CauseCounts {
    pub fn add(&mut self, c: Option<LeakCause>) {
        match c {
            Some(LeakCause::NeverReadEof) => self.never_read_eof += 1,
            Some(LeakCause::ReadEofNotClosed) => self.read_eof_not_closed += 1,
            Some(LeakCause::StoppedReading) => self.stopped_reading += 1,
            None => self.unknown += 1,
        }
    }

    pub fn get(&self, c: LeakCause) -> u64 {
        match c {
            LeakCause::NeverReadEof => self.never_read_eof,
            LeakCause::ReadEofNotClosed => self.read_eof_not_closed,
            LeakCause::StoppedReading => self.stopped_reading,
        }
    }

    pub fn known(&self) -> u64 {
        self.never_read_eof + self.read_eof_not_closed + self.stopped_reading
    }

    /// The cause most sockets have (ties: the order of [`LeakCause::ALL`]); None when no cause
    /// is known.
    pub fn dominant(&self) -> Option<LeakCause> {
        let mut best: Option<(LeakCause, u64)> = None;
        for c in LeakCause::ALL {
            let n = self.get(c);
            if n > 0 && best.is_none_or(|(_, m)| n > m) {
                best = Some((c, n));
            }
        }
        best.map(|b| b.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fin_is_one_byte_of_the_receive_queue() {
        assert_eq!(LeakCause::of_rqueue(1), LeakCause::NeverReadEof);
        assert_eq!(LeakCause::of_rqueue(0), LeakCause::ReadEofNotClosed);
        assert_eq!(LeakCause::of_rqueue(51), LeakCause::StoppedReading);
        for c in LeakCause::ALL {
            assert_eq!(LeakCause::from_bits(c.to_bits()), Some(c));
        }
        assert_eq!(LeakCause::from_bits(0), None);
    }

    #[test]
    fn dominant_is_the_most_common_known_cause() {
        let mut c = CauseCounts::default();
        assert_eq!(c.dominant(), None);
        c.add(None);
        c.add(None);
        c.add(Some(LeakCause::StoppedReading));
        c.add(Some(LeakCause::NeverReadEof));
        c.add(Some(LeakCause::NeverReadEof));
        assert_eq!(c.dominant(), Some(LeakCause::NeverReadEof));
        assert_eq!((c.known(), c.unknown), (3, 2));
    }
}
