//! Commands: each wires a source to the pipeline and a view.

pub mod diagnose;
pub mod live;
pub mod report;
pub mod top;
pub mod trace;
