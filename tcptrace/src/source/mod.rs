//! Where events come from: the live kernel probe, the kernel's socket table (every network
//! namespace), and recorded sessions.

pub mod netns;
pub mod record;
pub mod snapshot;
pub mod sock_diag;
