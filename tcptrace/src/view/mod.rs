//! Views: how results reach the user. They render; they never reach back into the probe.

pub mod diagnose;
pub mod fastfmt;
pub mod loss;
pub mod report;
pub mod sanitize;
pub mod table;
pub mod top;
pub mod trace;
