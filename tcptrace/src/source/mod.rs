//! Where events come from: the live kernel probe, the kernel's socket table, and recorded sessions.

pub mod record;
pub mod snapshot;
pub mod sock_diag;
