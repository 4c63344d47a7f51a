//! The one record the kernel programs write into the ring buffer.

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
    pub _pad: [u8; 2],
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
            _pad: [0; 2],
        }
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for RawEvent {}
