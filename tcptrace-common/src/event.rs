//! The records the kernel programs write into the ring buffer: [`RawEvent`], one per event
//! (every transition when tracing, listeners and resets always), and [`SockSummary`], one per
//! CLOSE_WAIT entry and per close of a socket followed in socket-local storage. A record's
//! length tells which it is.

/// What a [`RawEvent`] reports.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `sock:inet_sock_set_state`: `oldstate` -> `newstate`.
    StateChange = 1,
    /// `tcp:tcp_receive_reset`: a RST arrived on this socket (it is about to go to CLOSE).
    ResetReceived = 2,
    /// `tcp:tcp_send_reset`: this socket sent a RST.
    ResetSent = 3,
    /// fentry `tcp_time_wait(sk, state, timeo)`: the full socket hands over to a timewait socket
    /// in substate `newstate` (TIME_WAIT or FIN_WAIT2); its ->CLOSE transition follows.
    TimeWaitEnter = 4,
    /// fentry `inet_twsk_free(tw)`: the timewait socket (cookie of its full socket) is freed.
    TimeWaitEnd = 5,
}

impl EventKind {
    pub const fn from_u8(v: u8) -> Option<EventKind> {
        match v {
            1 => Some(EventKind::StateChange),
            2 => Some(EventKind::ResetReceived),
            3 => Some(EventKind::ResetSent),
            4 => Some(EventKind::TimeWaitEnter),
            5 => Some(EventKind::TimeWaitEnd),
            _ => None,
        }
    }
}

/// The current task is the socket's own process (see [`crate::state::runs_in_owner_context`]).
pub const FLAG_OWNER_CONTEXT: u8 = 1 << 0;
/// Emitted by the backup program, because the primary one was already running on this CPU when
/// this transition happened (the kernel would otherwise have skipped it as a recursion miss).
pub const FLAG_FROM_BACKUP: u8 = 1 << 1;
/// `cookie` is the kernel's socket cookie (tp_btf path). Without it, `skaddr` is the identity.
pub const FLAG_HAS_COOKIE: u8 = 1 << 2;
/// SYN_SENT -> CLOSE of a socket that never had a local port (`inet_sport` 0): `connect()` could
/// not pick one (EADDRNOTAVAIL). Set only where the kernel offsets name `inet_sport`.
pub const FLAG_NO_LOCAL_PORT: u8 = 1 << 3;
/// FIN_WAIT2 -> CLOSE: the substate of the timewait socket it made was read from `SOCK_DONE` in
/// `sk_flags` (TIME_WAIT when the peer's FIN had arrived, else FIN_WAIT2 with
/// [`FLAG_TW_FIN_WAIT2`]). Set only where the kernel offsets name `sk_flags`.
pub const FLAG_TW_SUBSTATE: u8 = 1 << 4;
/// With [`FLAG_TW_SUBSTATE`]: the substate is FIN_WAIT2 (an orphan whose peer has not closed).
pub const FLAG_TW_FIN_WAIT2: u8 = 1 << 5;
/// FIN_WAIT2 / CLOSING -> CLOSE that handed the connection to no timewait socket: none with
/// the socket's hash, remote port and namespace was in its chain of the established hash, so
/// `tcp_time_wait` made none (the kernel's TIME_WAIT table was full, `tcp_max_tw_buckets`,
/// counted by the kernel as `TcpExt: TCPTimeWaitOverflow`), or the kernel aborted the
/// connection. Set only where BTF located the established hash (`TwLookupConfig`).
pub const FLAG_NO_TIMEWAIT: u8 = 1 << 6;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// One TCP event as the kernel saw it. 104 bytes, no implicit padding.
///
/// Ports are in host byte order. Addresses are in network byte order; IPv4 addresses use the first
/// four bytes of the 16.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, nanoseconds.
    pub ts_ns: u64,
    /// Socket cookie (`bpf_get_socket_cookie`), 0 when not available.
    pub cookie: u64,
    /// Kernel address of the `struct sock`.
    pub skaddr: u64,
    /// cgroup v2 id of the current task.
    pub cgroup_id: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// `comm` of the current task.
    pub comm: [u8; 16],
    /// Thread group id (the "pid" users know) of the current task.
    pub pid: u32,
    /// Thread id of the current task.
    pub tid: u32,
    /// Inode number of the socket's network namespace, 0 when unknown.
    pub netns: u32,
    /// Local port.
    pub sport: u16,
    /// Remote port.
    pub dport: u16,
    pub family: u16,
    /// An [`EventKind`].
    pub kind: u8,
    pub oldstate: u8,
    pub newstate: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// `sk_err` at SYN_SENT -> CLOSE (why a connect failed: ECONNREFUSED, ETIMEDOUT, ...), 0
    /// otherwise or when the offset is unknown. Was padding before format 1.3 (always 0).
    pub err: u16,
}

pub const RAW_EVENT_SIZE: usize = 104;
const _: () = assert!(core::mem::size_of::<RawEvent>() == RAW_EVENT_SIZE);
const _: () = assert!(core::mem::align_of::<RawEvent>() == 8);

impl RawEvent {
    pub const fn zeroed() -> RawEvent {
        RawEvent {
            ts_ns: 0,
            cookie: 0,
            skaddr: 0,
            cgroup_id: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            comm: [0; 16],
            pid: 0,
            tid: 0,
            netns: 0,
            sport: 0,
            dport: 0,
            family: 0,
            kind: 0,
            oldstate: 0,
            newstate: 0,
            flags: 0,
            err: 0,
        }
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for RawEvent {}

/// Number of TCP states (`TCP_ESTABLISHED` = 1 .. `TCP_NEW_SYN_RECV` = 12), plus the unused 0:
/// the index of a per-state array is the state number.
pub const STATE_SLOTS: usize = 13;

/// [`SockSummary::flags`]: the owner fields (pid, comm, cgroup) hold the task seen at the socket's
/// last syscall-driven transition (connect, listen, close): its process.
pub const SUMMARY_OWNER: u16 = 1 << 0;
/// The close was done by that task in a syscall (ESTABLISHED -> FIN_WAIT1 or
/// CLOSE_WAIT -> LAST_ACK): it is the socket's closer, whom TIME_WAIT belongs to.
pub const SUMMARY_CLOSER: u16 = 1 << 1;
/// The 4-tuple is known (ports and addresses were read while the socket held them).
pub const SUMMARY_TUPLE: u16 = 1 << 2;
/// A RST arrived on the socket before this record (`tcp_receive_reset`).
pub const SUMMARY_RESET: u16 = 1 << 3;
/// The socket was first seen mid-life (it existed before tracing, or its storage could not be
/// created at its birth): `born_ns` is unknown.
pub const SUMMARY_BORN_UNSEEN: u16 = 1 << 4;
/// A transition of this socket was skipped by the kernel (a nested run) and repaired at a later
/// one: the stays around it have no exact time (their bits are missing from `known`).
pub const SUMMARY_REPAIRED: u16 = 1 << 5;
/// `cookie` is the kernel's socket cookie.
pub const SUMMARY_HAS_COOKIE: u16 = 1 << 6;
/// The transition ran in the socket owner's syscall (connect() failing with no local port left
/// ends SYN_SENT -> CLOSE in the caller).
pub const SUMMARY_OWNER_CONTEXT: u16 = 1 << 7;
/// The socket was accepted from a listener (inbound): its local port is the service's.
pub const SUMMARY_PASSIVE: u16 = 1 << 8;
/// `tcp_time_wait` handed the connection to a timewait socket just before this close (the
/// fentry hook saw it and marked the storage instead of sending an event): TIME_WAIT, or
/// FIN_WAIT2 with [`SUMMARY_TW_FIN_WAIT2`]; exact, where userspace otherwise infers it.
pub const SUMMARY_TW_HOOKED: u16 = 1 << 9;
/// With [`SUMMARY_TW_HOOKED`]: the timewait socket's substate is FIN_WAIT2 (an orphan whose peer
/// has not sent its FIN yet).
pub const SUMMARY_TW_FIN_WAIT2: u16 = 1 << 10;
/// SYN_SENT -> CLOSE of a socket that never had a local port (`inet_sport` 0): `connect()`
/// could not pick one (EADDRNOTAVAIL). Set only where the kernel offsets name `inet_sport`.
pub const SUMMARY_NO_LOCAL_PORT: u16 = 1 << 11;
/// A FIN_WAIT2 -> CLOSE without the fentry hook: the substate of the timewait socket it made
/// was read from `SOCK_DONE` in `sk_flags` (TIME_WAIT when the peer's FIN had arrived, else
/// FIN_WAIT2 with [`SUMMARY_TW_FIN_WAIT2`]: an orphan handed over before its peer closed).
/// Exact, where userspace otherwise infers it from the peer's state, which a summary reports
/// late.
pub const SUMMARY_TW_SUBSTATE: u16 = 1 << 15;
/// A FIN_WAIT2 / CLOSING -> CLOSE that left no timewait socket (see [`FLAG_NO_TIMEWAIT`]),
/// whatever the fentry hook on `tcp_time_wait`, which runs before the kernel tries to make
/// one, said. (Bits 12 to 14 are the kernel storage's own flags, never sent; this one is set
/// in the record only.)
pub const SUMMARY_NO_TIMEWAIT: u16 = 1 << 14;

/// What a socket did since its last record, sent when it enters CLOSE_WAIT and when it closes:
/// one record where a trace needs five. Kept by the kernel in socket-local storage
/// (`BPF_MAP_TYPE_SK_STORAGE`) from the socket's first transition.
///
/// Ports are in host byte order, addresses in network byte order (IPv4 in the first four bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockSummary {
    /// This transition, CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    /// When the socket was born (CLOSE -> SYN_SENT or LISTEN -> SYN_RECV); 0 when unseen.
    pub born_ns: u64,
    pub cookie: u64,
    /// Kernel address of the `struct sock`.
    pub skaddr: u64,
    /// The owner's cgroup v2 id (with `SUMMARY_OWNER`).
    pub cgroup_id: u64,
    /// Nanoseconds spent in each state (index: state number) left since the last record.
    pub dwell_ns: [u64; STATE_SLOTS],
    pub comm: [u8; 16],
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub netns: u32,
    /// The owner's thread group id (with `SUMMARY_OWNER`).
    pub pid: u32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    /// Bit per state left since the last record.
    pub visited: u16,
    /// Of `visited`, the states whose `dwell_ns` is exact.
    pub known: u16,
    /// `SUMMARY_*` bits.
    pub flags: u16,
    /// `sk_err` at the close (why a connect failed).
    pub err: u16,
    pub oldstate: u8,
    pub newstate: u8,
    /// Explicit: no implicit padding in a record copied byte for byte.
    pub _pad: [u8; 8],
}

pub const SUMMARY_SIZE: usize = 224;
const _: () = assert!(core::mem::size_of::<SockSummary>() == SUMMARY_SIZE);
const _: () = assert!(core::mem::align_of::<SockSummary>() == 8);
const _: () = assert!(SUMMARY_SIZE != RAW_EVENT_SIZE);
// Every record starts with its time: the kernel stamps it there after the reservation and
// userspace's merge of the per-CPU rings sorts by it without decoding.
const _: () = assert!(core::mem::offset_of!(RawEvent, ts_ns) == 0);
const _: () = assert!(core::mem::offset_of!(SockSummary, ts_ns) == 0);

#[cfg(feature = "user")]
unsafe impl aya::Pod for SockSummary {}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    /// The layout `docs/record-format.md` documents for Summary records.
    #[test]
    fn summary_layout_is_the_documented_one() {
        assert_eq!(offset_of!(SockSummary, dwell_ns), 40);
        assert_eq!(offset_of!(SockSummary, comm), 144);
        assert_eq!(offset_of!(SockSummary, netns), 192);
        assert_eq!(offset_of!(SockSummary, visited), 206);
        assert_eq!(offset_of!(SockSummary, flags), 210);
        assert_eq!(offset_of!(SockSummary, err), 212);
        assert_eq!(offset_of!(SockSummary, oldstate), 214);
        assert_eq!(offset_of!(SockSummary, _pad), 216);
    }
}
