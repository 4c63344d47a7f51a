//! Commands: each builds a session from its arguments, attaches its sink, and runs it.

pub mod diagnose;
pub mod record;
pub mod report;
pub mod serve;
pub mod top;
pub mod trace;
