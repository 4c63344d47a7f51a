//! What a command attaches to a session. A sink reads what the session applied; it never drives
//! the probe or the source.

use crate::{event::Event, lifecycle::Applied};

use super::Session;

/// Whether the session goes on after a sink has seen a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The sink has what it wanted (`top --iterations`, `q`): the session shuts down.
    Stop,
}

/// A consumer of the session: trace lines, the top screen, the report, the diagnosis, the
/// metrics server. Every method has a default that does nothing, so a sink implements only what
/// it uses.
pub trait Sink {
    /// The session has started: a live one has attached its programs and loaded the sockets
    /// that existed already (a replay: before its first record).
    fn started(&mut self, _s: &mut Session) -> anyhow::Result<()> {
        Ok(())
    }

    /// One event the session just applied, with what the socket table made of it
    /// (`applied.is_duplicate()` for a copy the table dropped).
    fn event(&mut self, _ev: &Event, _applied: &Applied) {}

    /// After each batch has been applied and the session's timer work done. `ended`: no more
    /// events will come (the user stopped, the duration ran out, or the replay is over); this is
    /// then the last call before [`Sink::finish`], made after the final reconciliation.
    fn batch(&mut self, _s: &mut Session, _ended: bool) -> anyhow::Result<Flow> {
        Ok(Flow::Continue)
    }

    /// The session is over: the ring was drained, the kernel table checked a last time, and the
    /// recording (if any) finished with its End record. `end_ns` is the session's last moment.
    fn finish(&mut self, _s: &mut Session, _end_ns: u64) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A session with nothing attached but its recording (`tcptrace record`).
pub struct NoSink;

impl Sink for NoSink {}

/// A question from outside the event loop (an HTTP scrape), answered on it with everything the
/// kernel has delivered up to that moment applied. The closure answers through its own channel.
pub type Query = Box<dyn FnOnce(&mut Session) + Send>;
