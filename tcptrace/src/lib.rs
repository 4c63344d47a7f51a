//! tcptrace: TCP state tracing that answers who leaks CLOSE_WAIT and who piles up TIME_WAIT.
//!
//! Data flows one way, one module per stage:
//!
//! ```text
//! probe (kernel programs, ring buffer) ─┐
//! source::sock_diag (kernel table) ─────┼─▶ event ─▶ lifecycle ─▶ aggregate ─▶ view
//!                                        │              ▲
//!                                        └── owner ─────┘
//! ```

pub mod aggregate;
pub mod cli;
pub mod clock;
pub mod command;
pub mod diagnose;
pub mod event;
pub mod export;
pub mod filter;
pub mod host;
pub mod lifecycle;
pub mod owner;
pub mod probe;
pub mod session;
pub mod sink;
pub mod source;
pub mod view;
