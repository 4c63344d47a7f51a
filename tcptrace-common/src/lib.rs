//! Records and constants shared by tcptrace's kernel programs and its userspace.
//!
//! Everything here is `#[repr(C)]` and `no_std`: the kernel side writes these bytes into the ring
//! buffer and userspace reads the very same layout back. The `user` feature adds `aya::Pod` so the
//! records can also be read out of maps.
#![no_std]

pub mod event;
pub mod filter;
pub mod state;

pub use event::{EventKind, RawEvent};
pub use state::TcpState;
