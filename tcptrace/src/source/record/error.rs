//! What can be wrong with a recording, always with the byte offset where it went wrong.

use std::io;
use std::path::PathBuf;

use crate::event::DecodeError;

use super::header::FORMAT_MAJOR;
use super::tag;

/// Why a recording could not be read (further).
///
/// Every variant names a byte offset from the start of the file. The records read before an error
/// stay valid: a reader hands them out one by one, so a caller keeps what it already has.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot open the recording {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot read the recording at byte offset {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },

    /// The first bytes are not the recording magic.
    #[error(
        "not a tcptrace recording: byte offset 0 holds {found:02x?}, expected the magic \
         \"TCPTRACE\\0REC\""
    )]
    NotARecording { found: Vec<u8> },

    /// The file was written by a tcptrace whose format this build does not know.
    #[error(
        "recorded by a newer tcptrace (format version {major}, at byte offset 12); this build \
         reads version {FORMAT_MAJOR}: upgrade tcptrace"
    )]
    NewerVersion { major: u16, minor: u16 },

    /// The header sets flag bits this build does not know: they would change how the file reads.
    #[error(
        "recorded with format features this build does not know (flags {flags:#010x} at byte \
         offset 16): upgrade tcptrace"
    )]
    UnknownFlags { flags: u32 },

    /// The file stops early. `offset` is where the unusable part starts: the first byte of the
    /// record (or header) that is incomplete, or the end of the file when it ends between records
    /// without an End record. The `records` records before it were read and are usable.
    #[error("{}", truncated_message(*.offset, *.end, *.records, *.at))]
    Truncated {
        offset: u64,
        end: u64,
        records: u64,
        at: TruncatedAt,
    },

    /// Bytes that no tcptrace writes. `offset` is the first byte of the bad record (or header
    /// field); the `records` records before it were read and are usable.
    #[error(
        "record at byte offset {offset} {what}; the recording is corrupt there ({})",
        usable(*.records)
    )]
    Corrupt {
        offset: u64,
        records: u64,
        what: Corruption,
    },

    /// The header has the magic and a known version, but a field no tcptrace writes.
    #[error("the recording's header is corrupt at byte offset {offset}: {what}")]
    CorruptHeader { offset: u64, what: String },
}

impl RecordError {
    /// The byte offset the error names (0 for errors about the file as a whole).
    pub fn offset(&self) -> u64 {
        match self {
            RecordError::Open { .. } | RecordError::NotARecording { .. } => 0,
            RecordError::NewerVersion { .. } => 12,
            RecordError::UnknownFlags { .. } => 16,
            RecordError::Io { offset, .. }
            | RecordError::Truncated { offset, .. }
            | RecordError::Corrupt { offset, .. }
            | RecordError::CorruptHeader { offset, .. } => *offset,
        }
    }

    /// Records read and usable before the error.
    pub fn records_before(&self) -> u64 {
        match self {
            RecordError::Truncated { records, .. } | RecordError::Corrupt { records, .. } => {
                *records
            }
            _ => 0,
        }
    }
}

/// Where a truncated file stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TruncatedAt {
    /// Inside the file header: nothing in the file is usable.
    Header,
    /// Inside a record (for a snapshot or fd-owner table written in several parts: before its
    /// last part).
    Record,
    /// Exactly between two records, with no End record: the writer stopped before it finished.
    MissingEnd,
}

fn truncated_message(offset: u64, end: u64, records: u64, at: TruncatedAt) -> String {
    let why = "the recording was cut short (e.g. tcptrace was killed)";
    match at {
        TruncatedAt::Header => {
            format!("file ends inside the header at byte offset {end}: {why}; it holds no records")
        }
        TruncatedAt::Record => format!(
            "file ends inside a record at byte offset {offset} (file length {end}): {why}; {}",
            usable(records)
        ),
        TruncatedAt::MissingEnd => format!(
            "file ends at byte offset {offset} without its End record: {why}, or is still being \
             written; {}",
            usable(records)
        ),
    }
}

fn usable(records: u64) -> String {
    match records {
        0 => "no record before it is usable".to_string(),
        1 => "the 1 record before it is usable".to_string(),
        n => format!("the {n} records before it are usable"),
    }
}

/// The name of a record type, for messages.
pub(super) fn type_name(tag: u8) -> &'static str {
    match tag {
        tag::EVENT => "Event",
        tag::SNAPSHOT => "Snapshot",
        tag::FD_OWNERS => "FdOwners",
        tag::LOSS => "Loss",
        tag::MARK => "Mark",
        tag::END => "End",
        tag::SUMMARY => "Summary",
        _ => "unknown",
    }
}

const ZERO_HINT: &str = " (zero bytes: the file was not fully written, e.g. the host crashed)";

/// What is wrong with a corrupt record.
#[derive(Debug, thiserror::Error)]
pub enum Corruption {
    #[error("has unknown type {0}{hint}", hint = if *.0 == 0 { ZERO_HINT } else { "" })]
    UnknownType(u8),
    #[error("has bad length {len} for its type {tag} ({})", type_name(*.tag))]
    BadLength { tag: u8, len: u32 },
    #[error("holds an undecodable event: {0}")]
    Event(#[source] DecodeError),
    #[error("holds a malformed {record}: {detail}")]
    Payload {
        record: &'static str,
        detail: &'static str,
    },
    #[error("is not the continuation of the {record} started at byte offset {started}")]
    BrokenContinuation { record: &'static str, started: u64 },
    #[error("is an End record that counts {claimed} {what}, but the file holds {found}")]
    CountMismatch {
        what: &'static str,
        claimed: u64,
        found: u64,
    },
    #[error("follows the End record")]
    AfterEnd,
}
