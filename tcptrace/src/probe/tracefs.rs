//! Record layouts of the classic tracepoints, read from tracefs `format` files.
//!
//! The classic tracepoint fallback receives the raw trace record, whose layout the kernel
//! describes in `events/<system>/<event>/format`. The layout changed across kernels (the
//! `protocol` field of `inet_sock_set_state` went from `__u8` to `__u16` in 5.6; `tcp_send_reset`
//! switched to sockaddr images in 6.10), so it is read at load time, never assumed.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tcptrace_common::config::{
    RESET_TP_HAS_FAMILY, RESET_TP_HAS_SOCK_COOKIE, RESET_TP_SOCKADDR, ResetTpLayout,
    SetStateTpLayout,
};

/// Where tcptrace mounts tracefs when nothing has (the kernel's documented mount point).
pub const TRACEFS_MOUNT_POINT: &str = "/sys/kernel/tracing";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("cannot read /proc/mounts: {0}")]
    Mounts(#[source] io::Error),
    #[error("tracefs is not mounted and mounting it at {path} failed: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}, line {line}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: no field `{field}`")]
    MissingField { path: PathBuf, field: String },
    #[error("{path}: field `{field}` is {size} bytes at offset {offset}, expected {expected}")]
    FieldShape {
        path: PathBuf,
        field: String,
        offset: u32,
        size: u32,
        expected: &'static str,
    },
}

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventField {
    pub name: String,
    /// The C declaration as written, e.g. `__u8 saddr[4]`.
    pub decl: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
    /// Element count of a fixed array (`saddr[4]` gives 4).
    pub array_len: Option<u32>,
}

/// A parsed `format` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFormat {
    /// The file it came from, for error messages.
    pub path: PathBuf,
    pub name: String,
    pub id: Option<u32>,
    pub fields: Vec<EventField>,
}

impl EventFormat {
    pub fn field(&self, name: &str) -> Option<&EventField> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Parses the text of a format file; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TracefsError> {
        let mut name = None;
        let mut id = None;
        let mut fields = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let err = |reason: String| TracefsError::Parse {
                path: path.to_owned(),
                line: i + 1,
                reason,
            };
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("name:") {
                name = Some(rest.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("ID:") {
                id = Some(
                    rest.trim()
                        .parse()
                        .map_err(|_| err(format!("bad ID `{rest}`")))?,
                );
            } else if line.starts_with("field:") {
                fields.push(parse_field(line).map_err(err)?);
            } else if line.starts_with("print fmt:") {
                break;
            }
        }
        let missing = |what: &str| TracefsError::Parse {
            path: path.to_owned(),
            line: 0,
            reason: format!("no {what}"),
        };
        Ok(EventFormat {
            path: path.to_owned(),
            name: name.ok_or_else(|| missing("`name:` line"))?,
            id,
            fields: if fields.is_empty() {
                return Err(missing("`field:` lines"));
            } else {
                fields
            },
        })
    }

    /// Offset of `name` after checking its size against `sizes`.
    fn offset_of(
        &self,
        name: &str,
        sizes: &[u32],
        expected: &'static str,
    ) -> Result<u16, TracefsError> {
        let f = self.field(name).ok_or_else(|| TracefsError::MissingField {
            path: self.path.clone(),
            field: name.to_owned(),
        })?;
        let shape_err = || TracefsError::FieldShape {
            path: self.path.clone(),
            field: name.to_owned(),
            offset: f.offset,
            size: f.size,
            expected,
        };
        if !sizes.contains(&f.size) {
            return Err(shape_err());
        }
        // The kernel program reads at record + offset, with offsets passed as u16.
        u16::try_from(f.offset).map_err(|_| shape_err())
    }
}

/// Parses `field:__u8 saddr[4];<TAB>offset:32;<TAB>size:4;<TAB>signed:0;`.
fn parse_field(line: &str) -> Result<EventField, String> {
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, None);
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once(':')
            .ok_or_else(|| format!("`{part}` is not key:value"))?;
        let number = || {
            value
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("bad {key} `{value}`"))
        };
        match key {
            "field" => decl = Some(value.trim().to_owned()),
            "offset" => offset = Some(number()?),
            "size" => size = Some(number()?),
            "signed" => signed = Some(number()? != 0),
            _ => {} // Newer kernels may add keys; they do not move fields.
        }
    }
    let decl = decl.ok_or("no declaration")?;
    // The name is the last word of the declaration, e.g. `const void * skaddr`, `saddr[4]`.
    let last = decl
        .rsplit(|c: char| c.is_whitespace() || c == '*')
        .next()
        .filter(|w| !w.is_empty())
        .ok_or_else(|| format!("no field name in `{decl}`"))?;
    let (name, array_len) = match last.split_once('[') {
        Some((name, rest)) => (name, rest.strip_suffix(']').and_then(|n| n.parse().ok())),
        None => (last, None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("bad field name in `{decl}`"));
    }
    Ok(EventField {
        name: name.to_owned(),
        offset: offset.ok_or_else(|| format!("`{name}` has no offset"))?,
        size: size.ok_or_else(|| format!("`{name}` has no size"))?,
        // Kernels before 2.6.32 omitted it; no field tcptrace reads is signed-dependent.
        signed: signed.unwrap_or(false),
        array_len,
        decl,
    })
}

/// Reads `events/<system>/<event>/format` under the tracefs root.
pub fn event_format(root: &Path, system: &str, event: &str) -> Result<EventFormat, TracefsError> {
    let path = root.join("events").join(system).join(event).join("format");
    let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Read {
        path: path.clone(),
        source,
    })?;
    EventFormat::parse(&text, &path)
}

/// Layout of `sock:inet_sock_set_state`
/// (<https://github.com/torvalds/linux/blob/v6.1/include/trace/events/sock.h>).
pub fn set_state_layout(format: &EventFormat) -> Result<SetStateTpLayout, TracefsError> {
    let protocol = format.offset_of("protocol", &[1, 2], "1 or 2")?;
    // offset_of checked the size: 1 or 2.
    let protocol_size = format.field("protocol").map_or(0, |f| f.size as u16);
    Ok(SetStateTpLayout {
        skaddr: format.offset_of("skaddr", &[8], "8")?,
        oldstate: format.offset_of("oldstate", &[4], "4")?,
        newstate: format.offset_of("newstate", &[4], "4")?,
        sport: format.offset_of("sport", &[2], "2")?,
        dport: format.offset_of("dport", &[2], "2")?,
        family: format.offset_of("family", &[2], "2")?,
        protocol,
        protocol_size,
        saddr: format.offset_of("saddr", &[4], "4")?,
        daddr: format.offset_of("daddr", &[4], "4")?,
        saddr_v6: format.offset_of("saddr_v6", &[16], "16")?,
        daddr_v6: format.offset_of("daddr_v6", &[16], "16")?,
        validated: 1,
        _pad: 0,
    })
}

/// Size of `struct sockaddr_in6`, the image `tcp_send_reset` stores since 6.10.
const SOCKADDR_IN6_LEN: u32 = 28;

/// Layout of `tcp:tcp_receive_reset` or `tcp:tcp_send_reset`
/// (<https://github.com/torvalds/linux/blob/v6.1/include/trace/events/tcp.h>).
///
/// Two shapes exist. The classic one has `sport`, `dport`, `saddr[4]`, `daddr[4]`,
/// `saddr_v6[16]`, `daddr_v6[16]`, with `family` since 5.x and `sock_cookie` in
/// `tcp_receive_reset`. Since 6.10 `tcp_send_reset` stores `saddr[28]`/`daddr[28]` as
/// `sockaddr_in`/`sockaddr_in6` images (`TP_STORE_ADDR_PORTS`,
/// <https://github.com/torvalds/linux/blob/v6.10/include/trace/events/net_probe_common.h>);
/// the layout then points into those images and sets `RESET_TP_SOCKADDR`.
pub fn reset_layout(format: &EventFormat) -> Result<ResetTpLayout, TracefsError> {
    let skaddr = format.offset_of("skaddr", &[8], "8")?;
    let saddr = format.field("saddr").map(|f| f.size);
    let mut layout = if saddr == Some(SOCKADDR_IN6_LEN) && format.field("sport").is_none() {
        let s = format.offset_of("saddr", &[SOCKADDR_IN6_LEN], "28")?;
        let d = format.offset_of("daddr", &[SOCKADDR_IN6_LEN], "28")?;
        let at = |base: u16, plus: u16| {
            base.checked_add(plus)
                .ok_or_else(|| offset_overflow(format))
        };
        // sa_family @0, sin_port/sin6_port @2, sin_addr @4, sin6_addr @8.
        ResetTpLayout {
            skaddr,
            family: s,
            sport: at(s, 2)?,
            dport: at(d, 2)?,
            saddr: at(s, 4)?,
            daddr: at(d, 4)?,
            saddr_v6: at(s, 8)?,
            daddr_v6: at(d, 8)?,
            flags: RESET_TP_SOCKADDR | RESET_TP_HAS_FAMILY,
            ..ResetTpLayout::default()
        }
    } else {
        let mut l = ResetTpLayout {
            skaddr,
            sport: format.offset_of("sport", &[2], "2")?,
            dport: format.offset_of("dport", &[2], "2")?,
            saddr: format.offset_of("saddr", &[4], "4")?,
            daddr: format.offset_of("daddr", &[4], "4")?,
            saddr_v6: format.offset_of("saddr_v6", &[16], "16")?,
            daddr_v6: format.offset_of("daddr_v6", &[16], "16")?,
            ..ResetTpLayout::default()
        };
        if format.field("family").is_some() {
            l.family = format.offset_of("family", &[2], "2")?;
            l.flags |= RESET_TP_HAS_FAMILY;
        }
        l
    };
    if format.field("sock_cookie").is_some() {
        layout.sock_cookie = format.offset_of("sock_cookie", &[8], "8")?;
        layout.flags |= RESET_TP_HAS_SOCK_COOKIE;
    }
    layout.validated = 1;
    Ok(layout)
}

/// Record offsets of `void *timer` and `void *function` in `timer:timer_expire_entry`
/// (<https://github.com/torvalds/linux/blob/v6.1/include/trace/events/timer.h#L86>): the timer
/// being run and its handler, 8 bytes each.
pub fn timer_expire_layout(format: &EventFormat) -> Result<(u16, u16), TracefsError> {
    Ok((
        format.offset_of("timer", &[8], "8")?,
        format.offset_of("function", &[8], "8")?,
    ))
}

fn offset_overflow(format: &EventFormat) -> TracefsError {
    TracefsError::FieldShape {
        path: format.path.clone(),
        field: "saddr".to_owned(),
        offset: u32::from(u16::MAX),
        size: SOCKADDR_IN6_LEN,
        expected: "an offset below 65508",
    }
}

/// The tracefs root, mounting tracefs at [`TRACEFS_MOUNT_POINT`] if nothing has. Idempotent:
/// a second call finds the mount in /proc/mounts.
pub fn tracefs_root() -> Result<PathBuf, TracefsError> {
    // Serialises the check-then-mount, so concurrent callers do not stack two mounts.
    static MOUNTING: Mutex<()> = Mutex::new(());
    let _guard = MOUNTING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(TracefsError::Mounts)?;
    if let Some(root) = find_tracefs(&mounts, |p| p.join("events").is_dir()) {
        return Ok(root);
    }
    mount_tracefs(Path::new(TRACEFS_MOUNT_POINT))?;
    log::info!("tracefs was not mounted; mounted it at {TRACEFS_MOUNT_POINT}");
    Ok(PathBuf::from(TRACEFS_MOUNT_POINT))
}

/// Picks a usable tracefs root from the text of /proc/mounts: a tracefs mount, else the
/// `tracing` directory of a debugfs mount (where older setups reach tracefs). `usable` says
/// whether a candidate has an `events` directory.
pub fn find_tracefs(mounts: &str, usable: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let entries: Vec<(&str, PathBuf)> = mounts
        .lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let (_dev, point, fstype) = (cols.next()?, cols.next()?, cols.next()?);
            Some((fstype, PathBuf::from(unescape_mount_path(point))))
        })
        .collect();
    let tracefs = entries
        .iter()
        .filter(|(t, _)| *t == "tracefs")
        .map(|(_, p)| p.clone());
    let debugfs = entries
        .iter()
        .filter(|(t, _)| *t == "debugfs")
        .map(|(_, p)| p.join("tracing"));
    tracefs.chain(debugfs).find(|p| usable(p))
}

/// /proc/mounts writes space, tab, newline and backslash in paths as `\ooo` octal escapes.
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(v as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mount_tracefs(point: &Path) -> Result<(), TracefsError> {
    let err = |source| TracefsError::Mount {
        path: point.to_owned(),
        source,
    };
    let target = CString::new(point.as_os_str().as_encoded_bytes())
        .map_err(|_| err(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: every pointer is a valid NUL-terminated string or null (no mount data).
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
";

    fn format(name: &str, body: &str) -> String {
        format!("name: {name}\nID: 1234\nformat:\n{HEADER}\n{body}\nprint fmt: \"x=%d\", REC->x\n")
    }

    /// `inet_sock_set_state` before `protocol` became `__u16` (4.16 .. 5.5): a `__u8` at 30,
    /// which shifts every address one byte.
    fn old_set_state() -> String {
        format(
            "inet_sock_set_state",
            "\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u8 protocol;\toffset:30;\tsize:1;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:31;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:35;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:39;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:55;\tsize:16;\tsigned:0;",
        )
    }

    fn parse(text: &str) -> Result<EventFormat, TracefsError> {
        EventFormat::parse(text, Path::new("/fixture/format"))
    }

    #[test]
    fn parses_fields_with_arrays_pointers_and_signedness() {
        let f = parse(&old_set_state()).unwrap();
        assert_eq!((f.name.as_str(), f.id), ("inet_sock_set_state", Some(1234)));
        assert_eq!(f.fields.len(), 15);
        let saddr = f.field("saddr").unwrap();
        assert_eq!(
            (saddr.offset, saddr.size, saddr.signed, saddr.array_len),
            (31, 4, false, Some(4))
        );
        assert_eq!(saddr.decl, "__u8 saddr[4]");
        let skaddr = f.field("skaddr").unwrap();
        assert_eq!((skaddr.offset, skaddr.size, skaddr.array_len), (8, 8, None));
        assert!(f.field("oldstate").unwrap().signed);
        assert!(f.field("common_pid").unwrap().signed);
        assert!(f.field("nonexistent").is_none());
    }

    #[test]
    fn old_u8_protocol_layout() {
        let l = set_state_layout(&parse(&old_set_state()).unwrap()).unwrap();
        assert_eq!((l.protocol, l.protocol_size), (30, 1));
        assert_eq!((l.saddr, l.daddr, l.saddr_v6, l.daddr_v6), (31, 35, 39, 55));
        assert_eq!(
            (l.skaddr, l.oldstate, l.newstate, l.validated),
            (8, 16, 20, 1)
        );
    }

    #[test]
    fn dynamic_arrays_and_unknown_keys_parse() {
        let text = format(
            "x",
            "\tfield:__data_loc char[] name;\toffset:8;\tsize:4;\tsigned:0;\tfuture:1;
\tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;",
        );
        let f = parse(&text).unwrap();
        assert_eq!(f.field("name").unwrap().array_len, None);
        assert_eq!(f.field("comm").unwrap().array_len, Some(16));
    }

    #[test]
    fn wrong_size_names_file_and_field() {
        let text = old_set_state().replace(
            "int oldstate;\toffset:16;\tsize:4",
            "long oldstate;\toffset:16;\tsize:8",
        );
        let err = set_state_layout(&parse(&text).unwrap()).unwrap_err();
        assert!(
            matches!(&err, TracefsError::FieldShape { field, size: 8, .. } if field == "oldstate"),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("/fixture/format") && msg.contains("oldstate"),
            "{msg}"
        );
    }

    #[test]
    fn missing_field_names_file_and_field() {
        let text = old_set_state().replace("__u16 dport", "__u16 dport_renamed");
        let err = set_state_layout(&parse(&text).unwrap()).unwrap_err();
        assert!(
            matches!(&err, TracefsError::MissingField { field, .. } if field == "dport"),
            "{err:?}"
        );
        assert!(err.to_string().contains("/fixture/format"), "{err}");
    }

    #[test]
    fn malformed_input_is_an_error() {
        let good = old_set_state();
        let cases = [
            ("empty", String::new()),
            ("no fields", "name: x\nID: 1\nformat:\n".to_owned()),
            ("no name", good.replace("name: inet_sock_set_state\n", "")),
            (
                "bad offset",
                good.replace("offset:26;", "offset:twenty-six;"),
            ),
            (
                "negative size",
                good.replace("offset:26;\tsize:2;", "offset:26;\tsize:-2;"),
            ),
            (
                "missing size",
                good.replace("offset:26;\tsize:2;", "offset:26;"),
            ),
            ("missing offset", good.replace("\toffset:26;", "")),
            ("no name in decl", good.replace("__u16 dport;", "  ;")),
            (
                "not key:value",
                good.replace(
                    "signed:0;\n\tfield:__u16 family",
                    "garbage;\n\tfield:__u16 family",
                ),
            ),
            ("bad ID", good.replace("ID: 1234", "ID: x")),
            (
                "offset too large",
                good.replace("offset:26;", "offset:70000;"),
            ),
        ];
        for (what, text) in cases {
            let result = parse(&text).and_then(|f| set_state_layout(&f));
            assert!(result.is_err(), "{what}: parsed to {result:?}");
        }
        // Every prefix of a good file either parses or errors, never panics; a prefix that
        // cuts a field line short is an error.
        for cut in 0..good.len() {
            let prefix = &good[..cut];
            if prefix.ends_with("\tsize:") {
                assert!(parse(prefix).is_err(), "prefix of {cut} parsed");
            }
            let _ = parse(prefix).and_then(|f| set_state_layout(&f));
        }
    }

    #[test]
    fn classic_reset_layout_without_family_or_cookie() {
        // tcp_send_reset up to 5.x: tcp_event_sk_skb, no family.
        let text = format(
            "tcp_send_reset",
            "\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;",
        );
        let l = reset_layout(&parse(&text).unwrap()).unwrap();
        assert_eq!(
            (l.skaddr, l.sport, l.dport, l.saddr, l.daddr),
            (16, 28, 30, 32, 36)
        );
        assert_eq!((l.saddr_v6, l.daddr_v6), (40, 56));
        assert_eq!((l.flags, l.validated), (0, 1));
    }

    #[test]
    fn sockaddr_reset_layout_points_into_the_images() {
        // tcp_send_reset since 6.10 (the layout this host's 6.18 has).
        let text = format(
            "tcp_send_reset",
            "\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;",
        );
        let l = reset_layout(&parse(&text).unwrap()).unwrap();
        assert_eq!(l.flags, RESET_TP_SOCKADDR | RESET_TP_HAS_FAMILY);
        assert_eq!((l.family, l.sport, l.saddr, l.saddr_v6), (32, 34, 36, 40));
        assert_eq!((l.dport, l.daddr, l.daddr_v6), (62, 64, 68));
    }

    #[test]
    fn mounts_prefer_tracefs_then_debugfs_tracing() {
        let mounts = "sysfs /sys sysfs rw 0 0\n\
                      debugfs /sys/kernel/debug debugfs rw 0 0\n\
                      nodev /mnt/trace\\040fs tracefs rw 0 0\n";
        let all = |_: &Path| true;
        assert_eq!(
            find_tracefs(mounts, all),
            Some(PathBuf::from("/mnt/trace fs"))
        );
        let no_tracefs = |p: &Path| !p.starts_with("/mnt");
        assert_eq!(
            find_tracefs(mounts, no_tracefs),
            Some(PathBuf::from("/sys/kernel/debug/tracing"))
        );
        assert_eq!(find_tracefs(mounts, |_| false), None);
        assert_eq!(find_tracefs("proc /proc proc rw 0 0\n", all), None);
    }

    #[test]
    fn mount_path_escapes() {
        assert_eq!(unescape_mount_path(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mount_path(r"/trailing\04"), r"/trailing\04");
        assert_eq!(unescape_mount_path(r"/x\0999"), r"/x\0999");
    }

    /// On this host tracefs starts unmounted: the first call mounts it, later calls find it.
    #[test]
    fn running_kernel_formats() {
        let root = tracefs_root().expect("tracefs root (run as root)");
        assert_eq!(
            tracefs_root().unwrap(),
            root,
            "second call must find the same root"
        );
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let count = mounts
            .lines()
            .filter(|l| l.split_whitespace().nth(2) == Some("tracefs"))
            .count();
        let again = tracefs_root().unwrap();
        let count_after = std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .filter(|l| l.split_whitespace().nth(2) == Some("tracefs"))
            .count();
        assert_eq!(
            (again, count_after),
            (root.clone(), count),
            "tracefs_root mounted twice"
        );

        let set_state = event_format(&root, "sock", "inet_sock_set_state").unwrap();
        let l = set_state_layout(&set_state).unwrap();
        // Every field sits after the 8-byte common header and inside the record, no two overlap.
        let mut spans: Vec<(u16, u16)> = vec![
            (l.skaddr, 8),
            (l.oldstate, 4),
            (l.newstate, 4),
            (l.sport, 2),
            (l.dport, 2),
            (l.family, 2),
            (l.protocol, l.protocol_size),
            (l.saddr, 4),
            (l.daddr, 4),
            (l.saddr_v6, 16),
            (l.daddr_v6, 16),
        ];
        spans.sort();
        assert!(spans[0].0 >= 8, "{spans:?}");
        assert!(
            spans.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0),
            "overlap: {spans:?}"
        );
        assert_eq!(l.protocol_size, 2, "6.18 has a __u16 protocol");

        for event in ["tcp_receive_reset", "tcp_send_reset"] {
            let f = event_format(&root, "tcp", event).unwrap();
            let r = reset_layout(&f).unwrap();
            assert_eq!(r.validated, 1);
            assert_eq!(r.skaddr as u32, f.field("skaddr").unwrap().offset);
            assert!(r.flags & RESET_TP_HAS_FAMILY != 0, "{event}: {r:?}");
            if event == "tcp_receive_reset" {
                assert_eq!(r.flags & RESET_TP_HAS_SOCK_COOKIE, RESET_TP_HAS_SOCK_COOKIE);
                assert_eq!(r.sock_cookie as u32, f.field("sock_cookie").unwrap().offset);
            }
        }
        let f = event_format(&root, "timer", "timer_expire_entry").unwrap();
        let (timer, function) = timer_expire_layout(&f).unwrap();
        assert!(timer >= 8 && function >= 8 && timer != function, "{f:?}");

        let err = event_format(&root, "sock", "no_such_event").unwrap_err();
        assert!(
            err.to_string().contains("events/sock/no_such_event/format"),
            "{err}"
        );
    }
}
