//! What commands attach to a session: the trace lines, the top screen, the report and the
//! diagnosis. (The metrics server answers queries instead: see `export::answer`.) Sinks read
//! what the session applied and render it with the views; they never drive the probe.

pub mod diagnose;
pub mod report;
pub mod top;
pub mod trace;
