//! Where events come from: the live kernel (its programs' event stream, and its own socket
//! table in every network namespace), or a recorded session. Both yield the same typed events;
//! the session drives either through [`Source`].

pub mod file;
pub mod kernel;
pub mod netns;
pub mod record;
pub mod snapshot;
pub mod sock_diag;

use crate::{event::Event, probe::LossReport};

use file::{FileSource, Step};
use kernel::KernelSource;

/// The session's input.
pub enum Source {
    Kernel(Box<KernelSource>),
    File(Box<FileSource>),
}

impl Source {
    pub fn is_live(&self) -> bool {
        matches!(self, Source::Kernel(_))
    }

    pub fn kernel(&self) -> Option<&KernelSource> {
        match self {
            Source::Kernel(k) => Some(k),
            Source::File(_) => None,
        }
    }

    pub fn file(&self) -> Option<&FileSource> {
        match self {
            Source::File(f) => Some(f),
            Source::Kernel(_) => None,
        }
    }

    /// Waits for the next events and appends them; returns how many. A replay hands out the
    /// events up to its next step (see [`Source::take_step`]).
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> anyhow::Result<usize> {
        match self {
            Source::Kernel(k) => Ok(k.next_batch(out).await),
            Source::File(f) => f.next_batch(out).await,
        }
    }

    /// Appends what is waiting, without waiting (a replay has nothing waiting: its batches are
    /// cut by steps, not by time).
    pub fn drain(&mut self, out: &mut Vec<Event>) -> usize {
        match self {
            Source::Kernel(k) => k.drain(out),
            Source::File(_) => 0,
        }
    }

    /// Appends everything waiting, without waiting: the end of a session (see
    /// `KernelSource::drain_all`).
    pub fn drain_all(&mut self, out: &mut Vec<Event>) -> usize {
        match self {
            Source::Kernel(k) => k.drain_all(out),
            Source::File(_) => 0,
        }
    }

    /// Reads what the rings hold into memory, handing nothing out: called during long work
    /// between batches so the kernel's rings never wait on it (see `EventReader::keep_up`).
    pub fn keep_up(&mut self) {
        if let Source::Kernel(k) = self {
            k.reader.keep_up();
        }
    }

    /// Every event stamped before this has been handed out (CLOCK_MONOTONIC ns); a replay
    /// hands out everything in file order, so `u64::MAX`.
    pub fn handed_out_ns(&self) -> u64 {
        match self {
            Source::Kernel(k) => k.reader.handed_out_ns(),
            Source::File(_) => u64::MAX,
        }
    }

    /// A replay's next step (a recorded dump, tick or the end), due before any more events.
    pub fn take_step(&mut self) -> Option<Step> {
        match self {
            Source::File(f) => f.take_step(),
            Source::Kernel(_) => None,
        }
    }

    /// True once a replay has been read to its end (never for the kernel).
    pub fn is_done(&self) -> bool {
        matches!(self, Source::File(f) if f.finished())
    }

    /// The source's clock: CLOCK_MONOTONIC when live, the latest recorded time when replaying.
    pub fn now_ns(&self) -> u64 {
        match self {
            Source::Kernel(_) => crate::clock::monotonic_ns(),
            Source::File(f) => f.now_ns,
        }
    }

    /// The loss picture now (a replay: the latest recorded counters).
    pub fn loss(&self) -> LossReport {
        match self {
            Source::Kernel(k) => k.loss(),
            Source::File(f) => f.loss,
        }
    }
}
