//! The contract between tcptrace's kernel programs and its userspace: the records they exchange
//! (`event`), the load-time configuration (`config`), the counters (`counter`), the names of
//! maps and programs (`names`), and TCP's states (`state`).
//!
//! Everything here is `#[repr(C)]` and `no_std`: the kernel side writes these bytes into the ring
//! buffer and userspace reads the very same layout back. The `user` feature adds `aya::Pod` so the
//! records can also be read out of maps.
#![no_std]

pub mod config;
pub mod counter;
pub mod event;
pub mod names;
pub mod pending;
pub mod state;

pub use event::{EventKind, RawEvent};
pub use state::TcpState;
