//! Where events come from: the live kernel probe and the kernel's socket table.

pub mod netns;
pub mod snapshot;
pub mod sock_diag;
