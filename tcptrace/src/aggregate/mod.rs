//! Group-by tables and dwell distributions, and the report document built from them.
//!
//! Two sources, kept apart so each is exact for what it answers:
//! - History ([`Aggregates`]): fed with every lifecycle change — entries into TIME_WAIT and
//!   CLOSE_WAIT, completed stays (dwell), connection lifetimes — per process, local port, peer
//!   address, peer (address, port) and process x peer, in bounded tables.
//! - The present: current TIME_WAIT / CLOSE_WAIT counts and CLOSE_WAIT ages are computed from
//!   the socket table when the report is built, so they always equal it.
//!
//! - Counts of transitions by kind ([`TransitionCounts`]), for the exporter.
//!
//! [`summary`] joins both into [`Summary`], the `report --json` document.

mod aggregates;
mod connects;
mod current;
mod dwell;
mod group;
mod history;
mod pressure;
mod summary;
mod transitions;

#[cfg(test)]
mod tests;

pub use aggregates::{AggLimits, Aggregates, IDLE_BEFORE_FOLD_NS, Peer};
pub use connects::{
    ConnectFailureKey, ConnectFailureRow, ConnectFailures, connect_note, errno_name,
};
pub use current::{Current, CurrentGroups};
pub use dwell::{Dwell, DwellMs};
pub use group::{GroupStats, GroupTable};
pub use history::{LeakHistory, history};
pub use pressure::{PortPressure, port_pressure};
pub use summary::{
    Attributions, Evictions, GroupCounts, NetnsRow, PeerAddrRow, PeerRow, PidPeerRow, PidRow,
    PortRow, Summary, SummaryInput, Unattributed, summary,
};
pub use transitions::TransitionCounts;
