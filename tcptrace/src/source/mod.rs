//! Where events come from: the live kernel probe and the kernel's socket table.

pub mod snapshot;
pub mod sock_diag;
