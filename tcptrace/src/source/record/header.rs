//! The file header: magic, format version, flags, and the session's metadata as JSON.
//!
//! ```text
//! offset  size  field
//!      0    12  magic "TCPTRACE\0REC"
//!     12     2  format major version (u16 LE)
//!     14     2  format minor version (u16 LE)
//!     16     4  flags (u32 LE), must-understand bits; none defined in 1.0
//!     20     4  metadata length M (u32 LE), at most MAX_METADATA_LEN
//!     24     M  metadata: a UTF-8 JSON object (see `Header`)
//! ```

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::clock::WallClock;

use super::error::{RecordError, TruncatedAt};
use super::io::read_full;

pub const MAGIC: [u8; 12] = *b"TCPTRACE\0REC";
/// Readers reject a file with a newer major version: its records may mean something else.
pub const FORMAT_MAJOR: u16 = 1;
/// A newer minor version of the same major only adds: metadata keys, bytes at the end of
/// fixed-size records, and new record types. Readers of an older minor skip and ignore those.
///
/// 1.1 added two loss counters (`timewait_hook_missed`, `port_filter_forgot`) to Loss and End.
/// 1.2 added Summary records (behind the [`FLAG_SUMMARIES`] must-understand flag) and four loss
/// counters (`followed`, `repaired`, `storage_failed`, `summary_ring_full`).
/// 1.3 added Receive-clock parts after every snapshot (the `tcp_info` receive clocks of its
/// CLOSE_WAIT sockets), and gave two bytes of the Event record's padding to `err` and bit 3 of
/// its flags to "no local port" (SYN_SENT -> CLOSE only; 0 in older files, as padding was),
/// and the `socket_key` metadata key.
/// 1.4 gave bit 6 of the Event record's flags and bit 14 of the Summary record's to "no timewait
/// socket" (a FIN_WAIT2 / CLOSING -> CLOSE at the `tcp_max_tw_buckets` cap; 0 in older files,
/// read as before: a timewait socket is inferred).
pub const FORMAT_MINOR: u16 = 4;
/// Header flag: the file holds Summary records (a session in summary mode). A reader that does
/// not know them must refuse the file: skipping them would drop every close.
pub const FLAG_SUMMARIES: u32 = 1 << 0;
/// Flag bits this build understands. A file that sets any other bit is rejected.
pub const KNOWN_FLAGS: u32 = FLAG_SUMMARIES;
/// Bytes before the metadata.
pub const FIXED_LEN: usize = 24;
/// The metadata is a few hundred bytes; the cap keeps a corrupt length from costing memory.
pub const MAX_METADATA_LEN: u32 = 1 << 20;

/// A format version as `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FormatVersion {
    pub major: u16,
    pub minor: u16,
}

impl FormatVersion {
    pub const CURRENT: FormatVersion = FormatVersion {
        major: FORMAT_MAJOR,
        minor: FORMAT_MINOR,
    };
}

/// What a recording says about the session and the host it ran on: everything replay and
/// `diagnose --from` need besides the records.
///
/// Stored as a JSON object. Keys a reader does not know are ignored; `Option` keys may be
/// missing; every other key is required.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The tcptrace version that wrote the file.
    pub tcptrace_version: String,
    /// `uname -r` of the recording host.
    pub kernel_release: String,
    pub hostname: String,
    /// Wall-clock nanoseconds since the Unix epoch when recording started.
    pub start_wall_ns: u64,
    /// CLOCK_MONOTONIC nanoseconds at the same moment: events carry monotonic timestamps, and
    /// `start_wall_ns - start_mono_ns` converts them to wall-clock time.
    pub start_mono_ns: u64,
    /// The kernel hook that delivered the transitions: "tp_btf" or "tracepoint".
    pub hook: String,
    /// How TIME_WAIT entries were learned (e.g. "inferred").
    pub timewait_method: String,
    /// How the kernel programs named sockets: "cookie" or "address" (1.2; absent before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_key: Option<String>,
    /// `net.ipv4.ip_local_port_range` of the host: `[low, high]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_local_port_range: Option<[u16; 2]>,
    /// `net.ipv4.tcp_fin_timeout` of the host, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_fin_timeout_s: Option<u32>,
    /// The tcptrace command line that made the recording, one argument per string.
    pub command_line: Vec<String>,
    /// The file holds Summary records: the header's `FLAG_SUMMARIES`, not a metadata key.
    #[serde(skip)]
    pub summaries: bool,
}

impl Default for Header {
    fn default() -> Self {
        Header {
            tcptrace_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release: String::new(),
            hostname: String::new(),
            start_wall_ns: 0,
            start_mono_ns: 0,
            hook: String::new(),
            timewait_method: String::new(),
            socket_key: None,
            ip_local_port_range: None,
            tcp_fin_timeout_s: None,
            command_line: Vec::new(),
            summaries: false,
        }
    }
}

impl Header {
    /// Converts the recording's monotonic event timestamps to wall-clock time.
    pub fn wall_clock(&self) -> WallClock {
        WallClock::with_offset_ns(i128::from(self.start_wall_ns) - i128::from(self.start_mono_ns))
    }

    /// The header's bytes, ready to be written at offset 0.
    pub(super) fn encode(&self) -> std::io::Result<Vec<u8>> {
        let meta = serde_json::to_vec(self)?;
        let len = u32::try_from(meta.len())
            .ok()
            .filter(|&l| l <= MAX_METADATA_LEN)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "recording metadata is {} bytes, more than {MAX_METADATA_LEN}",
                        meta.len()
                    ),
                )
            })?;
        let mut out = Vec::with_capacity(FIXED_LEN + meta.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
        out.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
        let flags = if self.summaries { FLAG_SUMMARIES } else { 0 };
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&meta);
        Ok(out)
    }

    /// Reads and checks the header; returns it with the file's version and the header length.
    pub(super) fn read<R: Read>(r: &mut R) -> Result<(Header, FormatVersion, u64), RecordError> {
        let mut fixed = [0u8; FIXED_LEN];
        let have = read_full(r, &mut fixed, 0)?;
        // Check what is there before complaining that more is missing: a short file that is not
        // a recording is "not a recording", not "truncated".
        let magic_have = have.min(MAGIC.len());
        if fixed[..magic_have] != MAGIC[..magic_have] {
            return Err(RecordError::NotARecording {
                found: fixed[..magic_have].to_vec(),
            });
        }
        let truncated = |end: usize| RecordError::Truncated {
            offset: 0,
            end: end as u64,
            records: 0,
            at: TruncatedAt::Header,
        };
        if have < 16 {
            return Err(truncated(have));
        }
        let version = FormatVersion {
            major: u16::from_le_bytes([fixed[12], fixed[13]]),
            minor: u16::from_le_bytes([fixed[14], fixed[15]]),
        };
        if version.major > FORMAT_MAJOR {
            return Err(RecordError::NewerVersion {
                major: version.major,
                minor: version.minor,
            });
        }
        if version.major == 0 {
            return Err(RecordError::CorruptHeader {
                offset: 12,
                what: "format version 0, which no tcptrace writes".into(),
            });
        }
        if have < FIXED_LEN {
            return Err(truncated(have));
        }
        let flags = u32::from_le_bytes([fixed[16], fixed[17], fixed[18], fixed[19]]);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(RecordError::UnknownFlags { flags });
        }
        let meta_len = u32::from_le_bytes([fixed[20], fixed[21], fixed[22], fixed[23]]);
        if meta_len > MAX_METADATA_LEN {
            return Err(RecordError::CorruptHeader {
                offset: 20,
                what: format!("metadata length {meta_len} is over the {MAX_METADATA_LEN} cap"),
            });
        }
        let mut meta = vec![0u8; meta_len as usize];
        let got = read_full(r, &mut meta, FIXED_LEN as u64)?;
        if got < meta.len() {
            return Err(truncated(FIXED_LEN + got));
        }
        let mut header: Header =
            serde_json::from_slice(&meta).map_err(|e| RecordError::CorruptHeader {
                offset: FIXED_LEN as u64,
                what: format!("metadata: {e}"),
            })?;
        header.summaries = flags & FLAG_SUMMARIES != 0;
        Ok((header, version, (FIXED_LEN + meta.len()) as u64))
    }
}
