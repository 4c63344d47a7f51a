//! TCP states as the kernel numbers them, and which transitions run in the socket owner's process.
//!
//! Numbering: <https://github.com/torvalds/linux/blob/v6.1/include/net/tcp_states.h>

/// A TCP state, numbered as in the kernel's `enum { TCP_ESTABLISHED = 1, ... }`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

impl TcpState {
    /// Every state, in kernel order.
    pub const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    pub const fn from_u8(v: u8) -> Option<TcpState> {
        if v >= 1 && v <= 12 {
            Some(Self::ALL[(v - 1) as usize])
        } else {
            None
        }
    }

    /// The kernel's name without the `TCP_` prefix, as `tcpstates` and `/proc/net/tcp` tooling print it.
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
        }
    }

    /// Parses a state name as users type it: `TIME_WAIT`, `time-wait`, `timewait`, `TCP_TIME_WAIT`.
    pub fn parse(s: &str) -> Option<TcpState> {
        let s = s.trim();
        let s = s
            .strip_prefix("TCP_")
            .or_else(|| s.strip_prefix("tcp_"))
            .unwrap_or(s);
        let mut norm = [0u8; 16];
        let mut n = 0;
        for b in s.bytes() {
            if b == b'_' || b == b'-' {
                continue;
            }
            if n == norm.len() {
                return None;
            }
            norm[n] = b.to_ascii_uppercase();
            n += 1;
        }
        let norm = &norm[..n];
        Self::ALL.into_iter().find(|st| {
            let name = st.name().as_bytes();
            let mut i = 0;
            for &b in name {
                if b == b'_' {
                    continue;
                }
                if i >= norm.len() || norm[i] != b {
                    return false;
                }
                i += 1;
            }
            i == norm.len()
        })
    }
}

/// Whether the task that is current when the kernel makes this transition is the socket's own
/// process.
///
/// Only transitions driven by a system call on the socket qualify: `connect()` (CLOSE->SYN_SENT),
/// `listen()` (CLOSE->LISTEN), `close()`/`shutdown()` (ESTABLISHED->FIN_WAIT1,
/// SYN_RECV->FIN_WAIT1, CLOSE_WAIT->LAST_ACK, LISTEN->CLOSE). Everything else is driven by an
/// incoming segment or a timer and runs in softirq, where `current` is `swapper/N` or whatever task
/// the interrupt landed on (on loopback, often the peer). See `tcp_close()` and
/// `tcp_rcv_state_process()` in
/// <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp.c> and
/// <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_input.c>.
pub const fn runs_in_owner_context(old: u8, new: u8) -> bool {
    const CLOSE: u8 = TcpState::Close as u8;
    const SYN_SENT: u8 = TcpState::SynSent as u8;
    const LISTEN: u8 = TcpState::Listen as u8;
    const ESTABLISHED: u8 = TcpState::Established as u8;
    const SYN_RECV: u8 = TcpState::SynRecv as u8;
    const FIN_WAIT1: u8 = TcpState::FinWait1 as u8;
    const CLOSE_WAIT: u8 = TcpState::CloseWait as u8;
    const LAST_ACK: u8 = TcpState::LastAck as u8;
    matches!(
        (old, new),
        (CLOSE, SYN_SENT)
            | (CLOSE, LISTEN)
            | (LISTEN, CLOSE)
            | (ESTABLISHED, FIN_WAIT1)
            | (SYN_RECV, FIN_WAIT1)
            | (CLOSE_WAIT, LAST_ACK)
    )
}
