//! See the crate docs for where this stage sits in the data flow.
//!
//! Attribution helpers that read the host: socket inode -> processes (`fdscan`), facts about one
//! process (`process`), command lines read off the event loop (`cmdline`), cgroup id -> path ->
//! container (`cgroup`), and the container of a process as the views name it (`container`).

pub mod cgroup;
pub mod cmdline;
pub mod container;
pub mod fdscan;
pub mod process;
