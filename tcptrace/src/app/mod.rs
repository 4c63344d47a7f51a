//! Commands: each wires a source to the pipeline and a view.

pub mod containers;
pub mod diagnose;
pub mod live;
pub mod record;
pub mod replay;
pub mod report;
pub mod serve;
pub mod top;
pub mod trace;
