//! See the crate docs for where this stage sits in the data flow.
//!
//! Attribution helpers that read the host: socket inode -> processes (`fdscan`), facts about one
//! process (`process`), and cgroup id -> path -> container (`cgroup`).

pub mod cgroup;
pub mod fdscan;
pub mod process;
