//! The socket table: every TCP socket's state, how long it has been there, who owns it, and the
//! states the tracepoint cannot show.
//!
//! Input is the decoded event stream ([`crate::event::Event`]) plus, periodically, a dump of the
//! kernel's socket table ([`crate::source::snapshot::Snapshot`]) and an fd scan. Output is, per
//! event, an [`Applied`] with the dwell in the previous state and the lifecycle [`Change`]s the
//! aggregates and views consume.
//!
//! What the table infers, because `sock:inet_sock_set_state` never shows it:
//! - TIME_WAIT: FIN_WAIT2 -> CLOSE or CLOSING -> CLOSE without a preceding RST means a timewait
//!   socket took over. If the local peer (the reverse 4-tuple) is still in CLOSE_WAIT, the
//!   timewait socket is in its FIN_WAIT2 substate until the peer closes, then TIME_WAIT.
//! - The end of TIME_WAIT: 60 s later ([`SocketTable::expire`]), a new connection on the same
//!   4-tuple, or a RST.
//!
//! Where the kernel allows fentry, `TimeWaitEnter`/`TimeWaitEnd` events say both exactly, and
//! the table uses them instead (`timewait_hooks`).
//! - Owners: only syscall-driven transitions name the owner; accepted sockets inherit the
//!   listener's; the fd scan confirms or corrects.

mod addr;
mod apply;
mod cause;
mod change;
mod entry;
mod evict;
mod gap;
mod intern;
mod owner;
mod reconcile;
mod slab;
mod stats;
mod summary;
mod table;
mod timewait;
mod timewait_hooks;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;

pub use cause::{CauseCounts, LeakCause};
pub use change::{Applied, Change, LeaveReason, Outcome, SockChange, SockInfo, Subject};
pub use owner::{Attribution, Comm, Owner};
pub use reconcile::FdHolders;
pub use stats::{FdScanStats, ReconcileStats, StateCounts, TableStats};
pub use table::{Limits, SocketTable, SocketView, TIMEWAIT_LEN_NS};
