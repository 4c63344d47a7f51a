//! Offsets of the `struct sock` fields the tp_btf programs read, from the running kernel's BTF.
//!
//! Rust eBPF programs get no CO-RE relocations, so the kernel side reads each field at an offset
//! userspace supplies at load time (in frozen `.rodata`, so the verifier sees constants and allows
//! direct loads through the typed socket pointer of tp_btf and fentry programs). They come
//! from raw BTF (`/sys/kernel/btf/vmlinux`, format: <https://docs.kernel.org/bpf/btf.html>): a
//! header, a type section and a string section. The parser below reads only what it needs and
//! bounds-checks every read, so a malformed file is an error, never a panic.
//!
//! aya-obj 0.3 (what aya 0.14 uses) parses BTF too, but keeps member offsets `pub(crate)`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use tcptrace_common::config::{SOCK_COMMON_HEAD, SockOffsets, TwLookupConfig};

/// Where the kernel exposes its own BTF (CONFIG_DEBUG_INFO_BTF).
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Clone, Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "no kernel BTF at {path}: the kernel was built without CONFIG_DEBUG_INFO_BTF, \
         so the tp_btf probe cannot be used (the classic tracepoint is used instead)"
    )]
    Absent { path: PathBuf },
    #[error("cannot read BTF from {path}: {source}")]
    Read {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("BTF has no struct `{0}`")]
    MissingType(String),
    #[error("BTF struct `{ty}` has no member `{member}`")]
    MissingMember { ty: String, member: String },
    #[error("`{ty}.{member}` is a {bits}-bit bitfield at bit {bit_offset}, not byte aligned")]
    UnalignedBitfield {
        ty: String,
        member: String,
        bits: u32,
        bit_offset: u32,
    },
    #[error("`{ty}.{member}` is {actual} bytes, tcptrace expects {expected}")]
    UnexpectedSize {
        ty: String,
        member: String,
        actual: u32,
        expected: &'static str,
    },
}

/// Offsets of the fields tcptrace reads, from the running kernel's BTF.
pub fn sock_offsets() -> Result<SockOffsets, BtfError> {
    vmlinux()?.sock.clone()
}

/// What start-up takes from the running kernel's BTF, read and parsed once per process: it is
/// asked for several times, and one parse of the ~5 MB file takes ~150 ms in a debug build, which
/// became tens of seconds per tracer under emulation (the VM tests).
struct Layout {
    sock: Result<SockOffsets, BtfError>,
    timewait_shares_sock_common: Result<bool, BtfError>,
    timewait_timer: Result<(u32, u32), BtfError>,
    timewait_lookup: Result<TwLookupConfig, BtfError>,
}

fn vmlinux() -> Result<&'static Layout, BtfError> {
    static LAYOUT: std::sync::OnceLock<Layout> = std::sync::OnceLock::new();
    if let Some(l) = LAYOUT.get() {
        return Ok(l);
    }
    let bytes = read(Path::new(VMLINUX_BTF))?;
    let btf = Btf::parse(&bytes)?;
    let layout = Layout {
        sock: sock_offsets_in(&btf),
        timewait_shares_sock_common: timewait_shares_sock_common_in(&btf),
        timewait_timer: timewait_timer_offsets_in(&btf),
        timewait_lookup: timewait_lookup_in(&btf),
    };
    Ok(LAYOUT.get_or_init(|| layout))
}

fn read(path: &Path) -> Result<Vec<u8>, BtfError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            BtfError::Absent {
                path: path.to_owned(),
            }
        } else {
            BtfError::Read {
                path: path.to_owned(),
                source: Arc::new(source),
            }
        }
    })
}

/// Offsets of the fields tcptrace reads, from the raw BTF file at `path`.
pub fn sock_offsets_from_file(path: &Path) -> Result<SockOffsets, BtfError> {
    sock_offsets_from_bytes(&read(path)?)
}

/// Offsets of the fields tcptrace reads, from raw BTF bytes.
pub fn sock_offsets_from_bytes(bytes: &[u8]) -> Result<SockOffsets, BtfError> {
    sock_offsets_in(&Btf::parse(bytes)?)
}

fn sock_offsets_in(btf: &Btf<'_>) -> Result<SockOffsets, BtfError> {
    // Paths start at `struct sock`, so `sock_common` fields include the offset of `__sk_common`
    // (its first member today, but nothing here assumes that).
    let common = |name: &str| btf.field("sock", &["__sk_common", name]);
    let exact = |f: Field, bytes: u32| f.plain_bytes(bytes);
    let (sk_protocol, sk_protocol_size) = sk_protocol(btf)?;
    Ok(SockOffsets {
        skc_daddr: exact(common("skc_daddr")?, 4)?,
        skc_rcv_saddr: exact(common("skc_rcv_saddr")?, 4)?,
        skc_dport: exact(common("skc_dport")?, 2)?,
        skc_num: exact(common("skc_num")?, 2)?,
        skc_family: exact(common("skc_family")?, 2)?,
        skc_v6_daddr: exact(common("skc_v6_daddr")?, 16)?,
        skc_v6_rcv_saddr: exact(common("skc_v6_rcv_saddr")?, 16)?,
        // `possible_net_t` wraps the `struct net *`; it is empty without CONFIG_NET_NS, and the
        // size check turns that into an error instead of a read of the next field.
        skc_net: exact(common("skc_net")?, 8)?,
        net_ns_inum: exact(btf.field("net", &["ns", "inum"])?, 4)?,
        sk_protocol,
        sk_protocol_size,
        // Why a connect failed; optional (0: not read), as older layouts are not checked.
        sk_err: btf
            .field("sock", &["sk_err"])
            .and_then(|f| exact(f, 4))
            .unwrap_or(0),
        // Whether a failed connect had a local port; optional like `sk_err`. `struct inet_sock`
        // starts with its `struct sock`, so the offset is from the socket's address.
        inet_sport: btf
            .field("inet_sock", &["inet_sport"])
            .and_then(|f| exact(f, 2))
            .unwrap_or(0),
        // The substate a FIN_WAIT2 -> CLOSE hands over (SOCK_DONE); optional.
        // `sk_flags` is `__sk_common.skc_flags` (a define), in a union.
        sk_flags: btf
            .field("sock", &["__sk_common", "skc_flags"])
            .and_then(|f| exact(f, 8))
            .unwrap_or(0),
    })
}

/// Whether a timewait socket can be read with the `sock_common` offsets of [`SockOffsets`]
/// (which are offsets within `struct sock`): true when `sock.__sk_common` and
/// `inet_timewait_sock.__tw_common` both start at byte 0, as they do on every kernel so far
/// (<https://github.com/torvalds/linux/blob/v6.1/include/net/inet_timewait_sock.h#L33>).
pub fn timewait_shares_sock_common() -> Result<bool, BtfError> {
    vmlinux()?.timewait_shares_sock_common.clone()
}

fn timewait_shares_sock_common_in(btf: &Btf<'_>) -> Result<bool, BtfError> {
    let sk = btf.field("sock", &["__sk_common"])?;
    let tw = btf.field("inet_timewait_sock", &["__tw_common"])?;
    Ok(sk.bit_offset == 0 && tw.bit_offset == 0)
}

/// `offsetof(struct inet_timewait_sock, tw_timer)` and of its `__tw_common.skc_cookie`, for the
/// `timer:timer_expire_entry` hook, which gets `&tw->tw_timer` and must step back to the socket
/// (<https://github.com/torvalds/linux/blob/v6.1/include/net/inet_timewait_sock.h#L70>).
/// `tw_timer` must be a whole `struct timer_list` and the cookie 8 bytes; anything else is an
/// error, so a changed layout turns the hook off instead of reading the wrong memory.
pub fn timewait_timer_offsets() -> Result<(u32, u32), BtfError> {
    vmlinux()?.timewait_timer.clone()
}

fn timewait_timer_offsets_in(btf: &Btf<'_>) -> Result<(u32, u32), BtfError> {
    let timer_list = btf
        .structs_named("timer_list")?
        .first()
        .copied()
        .ok_or_else(|| BtfError::MissingType("timer_list".to_owned()))?;
    let timer_list_size = btf.size_of(timer_list, 0)?;
    let tw_timer = btf.field("inet_timewait_sock", &["tw_timer"])?;
    let (_, member_type) = btf.strip(tw_timer.type_id)?;
    if member_type.kind != KIND_STRUCT || btf.name(member_type.name_off)? != "timer_list" {
        return Err(BtfError::UnexpectedSize {
            ty: tw_timer.ty,
            member: tw_timer.member,
            actual: tw_timer.bytes,
            expected: "a struct timer_list",
        });
    }
    let tw_timer = tw_timer.plain_bytes(timer_list_size)?;
    let cookie = btf
        .field("inet_timewait_sock", &["__tw_common", "skc_cookie"])?
        .plain_bytes(8)?;
    Ok((tw_timer, cookie))
}

/// Where a close's timewait socket would be in the established hash (see [`TwLookupConfig`]).
pub fn timewait_lookup() -> Result<TwLookupConfig, BtfError> {
    vmlinux()?.timewait_lookup.clone()
}

fn timewait_lookup_in(btf: &Btf<'_>) -> Result<TwLookupConfig, BtfError> {
    let death_row = btf.field("net", &["ipv4", "tcp_death_row"])?;
    let (_, death_row_type) = btf.strip(death_row.type_id)?;
    let death_row_is_pointer = death_row_type.kind == KIND_PTR;
    let net_death_row = if death_row_is_pointer {
        death_row.plain_bytes(8)?
    } else {
        let bytes = death_row.bytes;
        death_row.plain_bytes(bytes)?
    };
    let bucket = btf
        .structs_named("inet_ehash_bucket")?
        .first()
        .copied()
        .ok_or_else(|| BtfError::MissingType("inet_ehash_bucket".to_owned()))?;
    let head = |name: &str, bytes: u32| -> Result<u32, BtfError> {
        let off = btf
            .field("sock", &["__sk_common", name])?
            .plain_bytes(bytes)?;
        if off + bytes > SOCK_COMMON_HEAD {
            // The program reads the head of a chained socket in one piece.
            return Err(BtfError::Malformed(format!(
                "`sock.__sk_common.{name}` at byte {off}, past the {SOCK_COMMON_HEAD} bytes the \
                 timewait lookup reads"
            )));
        }
        Ok(off)
    };
    for (name, bytes) in [("skc_dport", 2), ("skc_net", 8)] {
        head(name, bytes)?;
    }
    let nulls_node = btf.field("sock", &["__sk_common", "skc_nulls_node"])?;
    let nulls_node_bytes = nulls_node.bytes;
    Ok(TwLookupConfig {
        net_death_row,
        death_row_hashinfo: btf
            .field("inet_timewait_death_row", &["hashinfo"])?
            .plain_bytes(8)?,
        hashinfo_ehash: btf.field("inet_hashinfo", &["ehash"])?.plain_bytes(8)?,
        hashinfo_ehash_mask: btf
            .field("inet_hashinfo", &["ehash_mask"])?
            .plain_bytes(4)?,
        bucket_size: btf.size_of(bucket, 0)?,
        skc_hash: head("skc_hash", 4)?,
        skc_state: head("skc_state", 1)?,
        skc_nulls_node: nulls_node.plain_bytes(nulls_node_bytes)?,
        death_row_is_pointer: u8::from(death_row_is_pointer),
        validated: 1,
        _pad: [0; 6],
    })
}

/// `sock.sk_protocol`: a u16 since 5.6, an 8-bit bitfield next to `sk_type` before
/// (<https://github.com/torvalds/linux/commit/bf9765145b856fa2e2ac4de4f2b91cd8b4d9a2ff>).
fn sk_protocol(btf: &Btf<'_>) -> Result<(u32, u32), BtfError> {
    let f = btf.field("sock", &["sk_protocol"])?;
    let (bits, bit_offset) = match f.bitfield_bits {
        Some(bits) => (bits, f.bit_offset),
        None => (f.bytes.saturating_mul(8), f.bit_offset),
    };
    if !bit_offset.is_multiple_of(8) {
        return Err(BtfError::UnalignedBitfield {
            ty: f.ty,
            member: f.member,
            bits,
            bit_offset,
        });
    }
    match bits {
        8 | 16 => Ok((bit_offset / 8, bits / 8)),
        _ => Err(BtfError::UnexpectedSize {
            ty: f.ty,
            member: f.member,
            actual: bits / 8,
            expected: "1 or 2",
        }),
    }
}

/// A member located by path: total offset from the start of the outer struct.
#[derive(Debug)]
struct Field {
    ty: String,
    member: String,
    bit_offset: u32,
    /// Width when the member is a bitfield.
    bitfield_bits: Option<u32>,
    /// Size of the member's type in bytes.
    bytes: u32,
    /// The member's type id (typedefs and qualifiers not yet stripped).
    type_id: u32,
}

impl Field {
    /// Byte offset of a whole (non-bitfield) member of exactly `bytes` bytes.
    fn plain_bytes(self, bytes: u32) -> Result<u32, BtfError> {
        if let Some(bits) = self.bitfield_bits {
            return Err(BtfError::UnalignedBitfield {
                ty: self.ty,
                member: self.member,
                bits,
                bit_offset: self.bit_offset,
            });
        }
        if !self.bit_offset.is_multiple_of(8) {
            return Err(BtfError::Malformed(format!(
                "`{}.{}` starts at bit {}",
                self.ty, self.member, self.bit_offset
            )));
        }
        if self.bytes != bytes {
            return Err(BtfError::UnexpectedSize {
                ty: self.ty,
                member: self.member,
                actual: self.bytes,
                expected: match bytes {
                    2 => "2",
                    4 => "4",
                    8 => "8",
                    16 => "16",
                    _ => "another size",
                },
            });
        }
        Ok(self.bit_offset / 8)
    }
}

// Kinds, from include/uapi/linux/btf.h
// (https://github.com/torvalds/linux/blob/v6.1/include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
const TYPE_LEN: usize = 12;
const MEMBER_LEN: usize = 12;
/// Bound on typedef chains and anonymous-member nesting, so a cyclic file cannot loop forever.
const MAX_DEPTH: u32 = 32;

/// One entry of the type section. Its trailing data (members, array info...) starts at `data`.
#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    vlen: u32,
    /// `size` for INT/ENUM/STRUCT/UNION/FLOAT, `type` for PTR/TYPEDEF/modifiers.
    size_or_type: u32,
    data: usize,
}

#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
    /// Non-zero only with the kind_flag encoding.
    bitfield_bits: u32,
}

struct Btf<'a> {
    big_endian: bool,
    types: &'a [u8],
    strings: &'a [u8],
    /// Index is the type id; entry 0 stands for `void`.
    entries: Vec<Type>,
}

fn malformed(msg: impl Into<String>) -> BtfError {
    BtfError::Malformed(msg.into())
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let big_endian = match data.get(..2) {
            Some([lo, hi]) if u16::from_le_bytes([*lo, *hi]) == MAGIC => false,
            Some([lo, hi]) if u16::from_be_bytes([*lo, *hi]) == MAGIC => true,
            Some(_) => return Err(malformed("bad magic (not a BTF file)")),
            None => return Err(malformed("file shorter than the BTF magic")),
        };
        let rd = |off: usize| {
            read_u32(data, off, big_endian).ok_or_else(|| malformed("truncated header"))
        };
        if data.get(2) != Some(&1) {
            return Err(malformed(format!("unsupported version {:?}", data.get(2))));
        }
        let hdr_len = rd(4)? as usize;
        if hdr_len < HEADER_LEN || hdr_len > data.len() {
            return Err(malformed(format!("header length {hdr_len} out of range")));
        }
        let section = |off_at: usize, name: &str| -> Result<&'a [u8], BtfError> {
            let (off, len) = (rd(off_at)? as usize, rd(off_at + 4)? as usize);
            hdr_len
                .checked_add(off)
                .and_then(|start| Some(start..start.checked_add(len)?))
                .and_then(|range| data.get(range))
                .ok_or_else(|| malformed(format!("{name} section ({off}+{len}) past end of file")))
        };
        let types = section(8, "type")?;
        let strings = section(16, "string")?;
        let mut btf = Btf {
            big_endian,
            types,
            strings,
            entries: vec![Type {
                name_off: 0,
                kind: 0,
                kind_flag: false,
                vlen: 0,
                size_or_type: 0,
                data: 0,
            }],
        };
        btf.scan_types()?;
        Ok(btf)
    }

    fn scan_types(&mut self) -> Result<(), BtfError> {
        let mut pos = 0;
        while pos < self.types.len() {
            let id = self.entries.len();
            let trunc = || malformed(format!("type {id} at byte {pos} truncated"));
            let name_off = self.u32_at(pos).ok_or_else(trunc)?;
            let info = self.u32_at(pos + 4).ok_or_else(trunc)?;
            let size_or_type = self.u32_at(pos + 8).ok_or_else(trunc)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let per_item = match kind {
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12,
                KIND_ENUM | KIND_FUNC_PROTO => 8,
                _ => 0,
            };
            let fixed = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_FUNC_PROTO | KIND_DATASEC
                | KIND_ENUM64 => 0,
                _ => return Err(malformed(format!("type {id}: unknown kind {kind}"))),
            };
            let data = pos + TYPE_LEN;
            let end = data + fixed + per_item * vlen as usize;
            if end > self.types.len() {
                return Err(trunc());
            }
            self.entries.push(Type {
                name_off,
                kind,
                kind_flag: info >> 31 == 1,
                vlen,
                size_or_type,
                data,
            });
            pos = end;
        }
        Ok(())
    }

    fn u32_at(&self, off: usize) -> Option<u32> {
        read_u32(self.types, off, self.big_endian)
    }

    fn ty(&self, id: u32) -> Result<Type, BtfError> {
        self.entries
            .get(id as usize)
            .copied()
            .ok_or_else(|| malformed(format!("reference to type {id}, past the last type")))
    }

    fn name(&self, off: u32) -> Result<&'a str, BtfError> {
        let tail = self
            .strings
            .get(off as usize..)
            .ok_or_else(|| malformed(format!("name offset {off} past the string section")))?;
        let len = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed(format!("name at {off} is not NUL-terminated")))?;
        std::str::from_utf8(&tail[..len])
            .map_err(|_| malformed(format!("name at {off} is not UTF-8")))
    }

    fn member(&self, t: Type, index: u32) -> Result<Member, BtfError> {
        let at = t.data + index as usize * MEMBER_LEN;
        let rd = |off| {
            self.u32_at(off)
                .ok_or_else(|| malformed("member past the type section"))
        };
        let (name_off, type_id, offset) = (rd(at)?, rd(at + 4)?, rd(at + 8)?);
        // With kind_flag set, the top 8 bits hold the bitfield width (btf.rst, "BTF_KIND_STRUCT").
        let (bit_offset, bitfield_bits) = if t.kind_flag {
            (offset & 0x00ff_ffff, offset >> 24)
        } else {
            (offset, 0)
        };
        Ok(Member {
            name_off,
            type_id,
            bit_offset,
            bitfield_bits,
        })
    }

    /// Follows typedefs and qualifiers to the type that has a layout.
    fn strip(&self, mut id: u32) -> Result<(u32, Type), BtfError> {
        for _ in 0..MAX_DEPTH {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Ok((id, t)),
            }
        }
        Err(malformed(format!(
            "typedef chain from type {id} too long or cyclic"
        )))
    }

    fn size_of(&self, id: u32, depth: u32) -> Result<u32, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed(format!("type {id} nests too deep")));
        }
        let (id, t) = self.strip(id)?;
        match t.kind {
            KIND_INT | KIND_ENUM | KIND_ENUM64 | KIND_STRUCT | KIND_UNION | KIND_FLOAT => {
                Ok(t.size_or_type)
            }
            // Kernel pointers have the width of the host's: tcptrace runs native.
            KIND_PTR => Ok(std::mem::size_of::<usize>() as u32),
            KIND_ARRAY => {
                let elem = self
                    .u32_at(t.data)
                    .ok_or_else(|| malformed("array truncated"))?;
                let n = self
                    .u32_at(t.data + 8)
                    .ok_or_else(|| malformed("array truncated"))?;
                self.size_of(elem, depth + 1)?
                    .checked_mul(n)
                    .ok_or_else(|| malformed(format!("array type {id} overflows")))
            }
            kind => Err(malformed(format!("type {id} of kind {kind} has no size"))),
        }
    }

    /// Ids of the structs named `name` (usually one; the format allows several).
    fn structs_named(&self, name: &str) -> Result<Vec<u32>, BtfError> {
        let mut ids = Vec::new();
        for (id, t) in self.entries.iter().enumerate().skip(1) {
            if t.kind == KIND_STRUCT && self.name(t.name_off)? == name {
                ids.push(id as u32);
            }
        }
        Ok(ids)
    }

    /// Finds `name` among the members of struct/union `id`, looking through anonymous members
    /// (C lets their members be named as if they were the parent's). The offset is from `id`.
    fn find_member(&self, id: u32, name: &str, depth: u32) -> Result<Option<Member>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed(format!(
                "anonymous members nest too deep at type {id}"
            )));
        }
        let t = self.ty(id)?;
        for i in 0..t.vlen {
            let m = self.member(t, i)?;
            let member_name = self.name(m.name_off)?;
            if member_name == name {
                return Ok(Some(m));
            }
            if member_name.is_empty() {
                let (inner, it) = self.strip(m.type_id)?;
                if matches!(it.kind, KIND_STRUCT | KIND_UNION)
                    && let Some(found) = self.find_member(inner, name, depth + 1)?
                {
                    let bit_offset = m.bit_offset.checked_add(found.bit_offset);
                    return Ok(Some(Member {
                        bit_offset: bit_offset
                            .ok_or_else(|| malformed(format!("offset of `{name}` overflows")))?,
                        ..found
                    }));
                }
            }
        }
        Ok(None)
    }

    /// Locates `path` (member names, one per nesting level) from struct `ty`.
    fn field(&self, ty: &str, path: &[&str]) -> Result<Field, BtfError> {
        let candidates = self.structs_named(ty)?;
        if candidates.is_empty() {
            return Err(BtfError::MissingType(ty.to_owned()));
        }
        let mut missing = None;
        for id in candidates {
            match self.field_in(id, ty, path)? {
                Ok(field) => return Ok(field),
                Err(e) => missing = missing.or(Some(e)),
            }
        }
        Err(missing.unwrap_or_else(|| BtfError::MissingType(ty.to_owned())))
    }

    /// Outer `Err` for a malformed file, inner `Err` for a member this struct lacks.
    fn field_in(
        &self,
        mut id: u32,
        ty: &str,
        path: &[&str],
    ) -> Result<Result<Field, BtfError>, BtfError> {
        let mut bit_offset = 0u32;
        let mut walked = String::from(ty);
        let mut last = None;
        for (i, name) in path.iter().enumerate() {
            if i > 0 {
                let (inner, it) = self.strip(id)?;
                if !matches!(it.kind, KIND_STRUCT | KIND_UNION) {
                    return Ok(Err(BtfError::MissingMember {
                        ty: walked,
                        member: (*name).to_owned(),
                    }));
                }
                id = inner;
            }
            let Some(m) = self.find_member(id, name, 0)? else {
                return Ok(Err(BtfError::MissingMember {
                    ty: walked,
                    member: (*name).to_owned(),
                }));
            };
            bit_offset = bit_offset.checked_add(m.bit_offset).ok_or_else(|| {
                malformed(format!("offset of `{ty}.{}` overflows", path.join(".")))
            })?;
            walked = format!("{walked}.{name}");
            id = m.type_id;
            last = Some(m);
        }
        let Some(m) = last else {
            return Err(malformed("empty member path"));
        };
        let (bitfield_bits, extra) = self.bitfield(m)?;
        Ok(Ok(Field {
            ty: ty.to_owned(),
            member: path.join("."),
            bit_offset: bit_offset
                .checked_add(extra)
                .ok_or_else(|| malformed("bitfield offset overflows"))?,
            bitfield_bits,
            bytes: self.size_of(m.type_id, 0)?,
            type_id: m.type_id,
        }))
    }

    /// Width of a bitfield member and any extra bit offset. Without kind_flag, the width lives
    /// in the member's INT type (`BTF_INT_BITS`, `BTF_INT_OFFSET`).
    fn bitfield(&self, m: Member) -> Result<(Option<u32>, u32), BtfError> {
        if m.bitfield_bits != 0 {
            return Ok((Some(m.bitfield_bits), 0));
        }
        let (_, t) = self.strip(m.type_id)?;
        if t.kind != KIND_INT {
            return Ok((None, 0));
        }
        let enc = self
            .u32_at(t.data)
            .ok_or_else(|| malformed("int type truncated"))?;
        let (bits, offset) = (enc & 0xff, (enc >> 16) & 0xff);
        if offset != 0 || u64::from(bits) != u64::from(t.size_or_type) * 8 {
            Ok((Some(bits), offset))
        } else {
            Ok((None, 0))
        }
    }
}

fn read_u32(data: &[u8], off: usize, big_endian: bool) -> Option<u32> {
    let bytes: [u8; 4] = data.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(if big_endian {
        u32::from_be_bytes(bytes)
    } else {
        u32::from_le_bytes(bytes)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::process::Command;

    use super::*;

    /// Writes BTF the way pahole does, for kernels this host does not run.
    struct Builder {
        big_endian: bool,
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new(big_endian: bool) -> Self {
            Builder {
                big_endian,
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn word(&self, v: u32) -> [u8; 4] {
            if self.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        }

        fn name(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn raw(
            &mut self,
            name: &str,
            kind: u32,
            flag: bool,
            vlen: u32,
            st: u32,
            extra: &[u32],
        ) -> u32 {
            let name_off = self.name(name);
            let info = (u32::from(flag) << 31) | (kind << 24) | vlen;
            for w in [name_off, info, st].iter().chain(extra) {
                let bytes = self.word(*w);
                self.types.extend_from_slice(&bytes);
            }
            self.next_id += 1;
            self.next_id - 1
        }

        fn int(&mut self, name: &str, size: u32, bits: u32) -> u32 {
            self.raw(name, KIND_INT, false, 0, size, &[bits])
        }

        fn ptr(&mut self, to: u32) -> u32 {
            self.raw("", KIND_PTR, false, 0, to, &[])
        }

        fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.raw(name, KIND_TYPEDEF, false, 0, to, &[])
        }

        fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
            self.raw("", KIND_ARRAY, false, 0, 0, &[elem, index, n])
        }

        /// Members are (name, type, offset word as stored: bits, plus width << 24 with `flag`).
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            flag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut extra = Vec::new();
            for (n, t, off) in members {
                extra.extend([self.name(n), *t, *off]);
            }
            self.raw(name, kind, flag, members.len() as u32, size, &extra)
        }

        /// The id the next type will get (for a type that refers to itself).
        fn next(&self) -> u32 {
            self.next_id
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            let magic = if self.big_endian {
                MAGIC.to_be_bytes()
            } else {
                MAGIC.to_le_bytes()
            };
            out.extend_from_slice(&magic);
            out.extend_from_slice(&[1, 0]);
            let tl = self.types.len() as u32;
            for w in [HEADER_LEN as u32, 0, tl, tl, self.strings.len() as u32] {
                out.extend_from_slice(&self.word(w));
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// How `sock.sk_protocol` is declared in the synthetic kernel.
    #[derive(Clone, Copy)]
    enum Protocol {
        /// `u16 sk_protocol;` (5.6+) at this byte.
        U16(u32),
        /// `unsigned int ... sk_protocol:8 ...` with kind_flag set, at this bit.
        KindFlagBitfield(u32),
        /// The same, encoded pre-kind_flag: an INT type whose `BTF_INT_BITS` is 8.
        IntBitfield(u32),
    }

    struct Kernel {
        big_endian: bool,
        protocol: Protocol,
        with_v6: bool,
        with_net: bool,
    }

    impl Default for Kernel {
        fn default() -> Self {
            Kernel {
                big_endian: false,
                protocol: Protocol::U16(500),
                with_v6: true,
                with_net: true,
            }
        }
    }

    /// Where the synthetic kernel puts `__sk_common` inside `struct sock` (bytes). Real kernels
    /// put it first; a non-zero offset shows it is added.
    const SK_COMMON_AT: u32 = 16;

    /// A small BTF shaped like the kernel's: the fields sit in anonymous unions and structs.
    fn kernel(k: Kernel) -> Vec<u8> {
        let mut b = Builder::new(k.big_endian);
        let u8_ = b.int("unsigned char", 1, 8);
        let u16_ = b.int("unsigned short", 2, 16);
        let u32_ = b.int("unsigned int", 4, 32);
        let u64_ = b.int("long long unsigned int", 8, 64);
        let be32 = b.typedef("__be32", u32_);
        let be16 = b.typedef("__be16", u16_);
        let arr16 = b.array(u8_, u32_, 16);
        // struct in6_addr { union { __u8 u6_addr8[16]; } in6_u; }
        let in6_u = b.composite(KIND_UNION, "", 16, false, &[("u6_addr8", arr16, 0)]);
        let in6 = b.composite(KIND_STRUCT, "in6_addr", 16, false, &[("in6_u", in6_u, 0)]);
        let ns = b.composite(
            KIND_STRUCT,
            "ns_common",
            24,
            false,
            &[("stashed", u64_, 0), ("inum", u32_, 128)],
        );
        let net_id = if k.with_net {
            b.composite(
                KIND_STRUCT,
                "net",
                200,
                false,
                &[("passive", u32_, 0), ("ns", ns, 8 * 40)],
            )
        } else {
            b.raw("net", KIND_FWD, false, 0, 0, &[])
        };
        let net_ptr = b.ptr(net_id);
        let pnet_s = b.composite(KIND_STRUCT, "", 8, false, &[("net", net_ptr, 0)]);
        let pnet = b.typedef("possible_net_t", pnet_s);
        let addrs = b.composite(
            KIND_STRUCT,
            "",
            8,
            false,
            &[("skc_daddr", be32, 0), ("skc_rcv_saddr", be32, 32)],
        );
        let addr_u = b.composite(
            KIND_UNION,
            "",
            8,
            false,
            &[("skc_addrpair", u64_, 0), ("", addrs, 0)],
        );
        let ports = b.composite(
            KIND_STRUCT,
            "",
            4,
            false,
            &[("skc_dport", be16, 0), ("skc_num", u16_, 16)],
        );
        let port_u = b.composite(
            KIND_UNION,
            "",
            4,
            false,
            &[("skc_portpair", u32_, 0), ("", ports, 0)],
        );
        let mut common = vec![
            ("", addr_u, 0),
            ("skc_hash", u32_, 64),
            ("", port_u, 96),
            ("skc_family", u16_, 128),
            ("skc_net", pnet, 384),
        ];
        if k.with_v6 {
            common.extend([("skc_v6_daddr", in6, 448), ("skc_v6_rcv_saddr", in6, 576)]);
        }
        let sock_common = b.composite(KIND_STRUCT, "sock_common", 136, false, &common);
        let at = SK_COMMON_AT * 8;
        match k.protocol {
            Protocol::U16(byte) => {
                let m = [
                    ("sk_pad", u64_, 0),
                    ("__sk_common", sock_common, at),
                    ("sk_protocol", u16_, byte * 8),
                ];
                b.composite(KIND_STRUCT, "sock", 800, false, &m);
            }
            Protocol::KindFlagBitfield(bit) => {
                let m = [
                    ("sk_pad", u64_, 0),
                    ("__sk_common", sock_common, at),
                    ("sk_userlocks", u32_, (4 << 24) | (bit - 4)),
                    ("sk_protocol", u32_, (8 << 24) | bit),
                    ("sk_type", u32_, (16 << 24) | (bit + 8)),
                ];
                b.composite(KIND_STRUCT, "sock", 800, true, &m);
            }
            Protocol::IntBitfield(bit) => {
                let bits8 = b.int("unsigned int", 4, 8);
                let bits16 = b.int("unsigned int", 4, 16);
                let m = [
                    ("sk_pad", u64_, 0),
                    ("__sk_common", sock_common, at),
                    ("sk_protocol", bits8, bit),
                    ("sk_type", bits16, bit + 8),
                ];
                b.composite(KIND_STRUCT, "sock", 800, false, &m);
            }
        }
        b.build()
    }

    fn expected(protocol: u32, size: u32) -> SockOffsets {
        let c = SK_COMMON_AT;
        SockOffsets {
            skc_daddr: c,
            skc_rcv_saddr: c + 4,
            skc_dport: c + 12,
            skc_num: c + 14,
            skc_family: c + 16,
            skc_v6_daddr: c + 56,
            skc_v6_rcv_saddr: c + 72,
            skc_net: c + 48,
            net_ns_inum: 40 + 16,
            sk_protocol: protocol,
            sk_protocol_size: size,
            sk_err: 0,
            inet_sport: 0,
            sk_flags: 0,
        }
    }

    #[test]
    fn u16_sk_protocol_and_members_inside_anonymous_unions() {
        let got = sock_offsets_from_bytes(&kernel(Kernel::default())).unwrap();
        assert_eq!(got, expected(500, 2));
    }

    #[test]
    fn big_endian_btf_reads_the_same() {
        let k = Kernel {
            big_endian: true,
            ..Kernel::default()
        };
        assert_eq!(
            sock_offsets_from_bytes(&kernel(k)).unwrap(),
            expected(500, 2)
        );
    }

    #[test]
    fn old_kernel_bitfield_sk_protocol_with_kind_flag() {
        let k = Kernel {
            protocol: Protocol::KindFlagBitfield(4104),
            ..Kernel::default()
        };
        assert_eq!(
            sock_offsets_from_bytes(&kernel(k)).unwrap(),
            expected(513, 1)
        );
    }

    #[test]
    fn old_kernel_bitfield_sk_protocol_in_int_encoding() {
        let k = Kernel {
            protocol: Protocol::IntBitfield(4104),
            ..Kernel::default()
        };
        assert_eq!(
            sock_offsets_from_bytes(&kernel(k)).unwrap(),
            expected(513, 1)
        );
    }

    #[test]
    fn unaligned_sk_protocol_bitfield_is_an_error() {
        let k = Kernel {
            protocol: Protocol::KindFlagBitfield(4100),
            ..Kernel::default()
        };
        match sock_offsets_from_bytes(&kernel(k)) {
            Err(BtfError::UnalignedBitfield {
                member,
                bits: 8,
                bit_offset: 4100,
                ..
            }) => {
                assert_eq!(member, "sk_protocol")
            }
            other => panic!("expected UnalignedBitfield, got {other:?}"),
        }
    }

    #[test]
    fn missing_member_names_the_member_and_its_parent() {
        let k = Kernel {
            with_v6: false,
            ..Kernel::default()
        };
        let err = sock_offsets_from_bytes(&kernel(k)).unwrap_err();
        match &err {
            BtfError::MissingMember { ty, member } => {
                assert_eq!(
                    (ty.as_str(), member.as_str()),
                    ("sock.__sk_common", "skc_v6_daddr")
                )
            }
            other => panic!("expected MissingMember, got {other:?}"),
        }
        assert!(err.to_string().contains("skc_v6_daddr"), "{err}");
    }

    #[test]
    fn missing_struct_names_it() {
        // Only a forward declaration of `struct net`: no layout to read `ns.inum` from.
        let k = Kernel {
            with_net: false,
            ..Kernel::default()
        };
        match sock_offsets_from_bytes(&kernel(k)) {
            Err(BtfError::MissingType(t)) => assert_eq!(t, "net"),
            other => panic!("expected MissingType, got {other:?}"),
        }
    }

    #[test]
    fn absent_btf_says_the_kernel_lacks_it() {
        let err = sock_offsets_from_file(Path::new("/nonexistent/btf/vmlinux")).unwrap_err();
        assert!(matches!(err, BtfError::Absent { .. }), "{err:?}");
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }

    #[test]
    fn header_errors() {
        let good = kernel(Kernel::default());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("magic only", good[..2].to_vec()),
            ("short header", good[..20].to_vec()),
            ("bad magic", [&[0u8, 0][..], &good[2..]].concat()),
            ("version 2", [&good[..2], &[2u8][..], &good[3..]].concat()),
            ("header length past end", {
                let mut v = good.clone();
                v[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
                v
            }),
            ("string section past end", {
                let mut v = good.clone();
                v[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
                v
            }),
        ];
        for (what, bytes) in cases {
            match sock_offsets_from_bytes(&bytes) {
                Err(BtfError::Malformed(_)) => {}
                other => panic!("{what}: expected Malformed, got {other:?}"),
            }
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let good = kernel(Kernel::default());
        for len in 0..good.len() {
            assert!(
                sock_offsets_from_bytes(&good[..len]).is_err(),
                "prefix of {len} bytes parsed"
            );
        }
    }

    #[test]
    fn every_corrupted_byte_errors_or_parses_without_panic() {
        let good = kernel(Kernel::default());
        let mut errors = 0;
        for i in 0..good.len() {
            for v in [0x00, 0xff, 0x7f, 0x80, good[i] ^ 0x01] {
                let mut bad = good.clone();
                bad[i] = v;
                errors += usize::from(sock_offsets_from_bytes(&bad).is_err());
            }
        }
        // Most corruptions of a file this dense must be caught (names, kinds, offsets, sizes).
        assert!(
            errors > good.len(),
            "only {errors} of {} corruptions detected",
            good.len() * 5
        );
    }

    #[test]
    fn cyclic_types_are_errors_not_hangs() {
        // `self_union`: an anonymous union that contains itself, searched for skc_daddr.
        // Otherwise: skc_daddr's type is a typedef naming itself, so its size never resolves.
        for self_union in [true, false] {
            let mut b = Builder::new(false);
            let u16_ = b.int("unsigned short", 2, 16);
            let looped = b.next();
            if self_union {
                b.composite(KIND_UNION, "", 4, false, &[("", looped, 0)]);
            } else {
                b.typedef("loop_t", looped);
            }
            let member = if self_union { "" } else { "skc_daddr" };
            let common = b.composite(KIND_STRUCT, "sock_common", 8, false, &[(member, looped, 0)]);
            let m = [("__sk_common", common, 0), ("sk_protocol", u16_, 64)];
            b.composite(KIND_STRUCT, "sock", 16, false, &m);
            match sock_offsets_from_bytes(&b.build()) {
                Err(BtfError::Malformed(msg)) => {
                    assert!(msg.contains("deep") || msg.contains("cyclic"), "{msg}")
                }
                other => panic!("self_union={self_union}: expected Malformed, got {other:?}"),
            }
        }
    }

    #[test]
    fn real_vmlinux_truncated_is_an_error() {
        // The test machines (host and CI) have kernel BTF; its absence is a failure, not a skip.
        let full = std::fs::read(VMLINUX_BTF).expect("the test machine's kernel BTF");
        for len in [0, 3, 23, 24, 25, 4096, full.len() / 2, full.len() - 1] {
            assert!(
                sock_offsets_from_bytes(&full[..len]).is_err(),
                "prefix of {len} parsed"
            );
        }
    }

    #[test]
    fn real_vmlinux_timewait_socket_starts_with_sock_common() {
        let full = std::fs::read(VMLINUX_BTF).expect("the test machine's kernel BTF");
        assert!(timewait_shares_sock_common_in(&Btf::parse(&full).unwrap()).unwrap());
        // A BTF without `inet_timewait_sock` says so instead of guessing.
        assert!(matches!(
            timewait_shares_sock_common_in(&Btf::parse(&kernel(Kernel::default())).unwrap()),
            Err(BtfError::MissingType(t)) if t == "inet_timewait_sock"
        ));
    }

    #[test]
    fn real_vmlinux_timewait_timer_offsets() {
        let full = std::fs::read(VMLINUX_BTF).expect("the test machine's kernel BTF");
        let (tw_timer, cookie) = timewait_timer_offsets_in(&Btf::parse(&full).unwrap()).unwrap();
        // `tw_timer` follows the 0-based `__tw_common` and the tw_* fields; the cookie is
        // inside `__tw_common`, whose size bounds it.
        let common = Btf::parse(&full)
            .unwrap()
            .field("inet_timewait_sock", &["__tw_common"])
            .unwrap()
            .bytes;
        assert!(
            tw_timer >= common,
            "tw_timer at {tw_timer}, sock_common is {common} bytes"
        );
        assert!(cookie + 8 <= common, "cookie at {cookie}");
        assert_eq!(cookie % 8, 0);
        assert!(matches!(
            timewait_timer_offsets_in(&Btf::parse(&kernel(Kernel::default())).unwrap()),
            Err(BtfError::MissingType(_))
        ));
    }

    // --- cross-check against bpftool on the running kernel ---

    #[derive(Default)]
    struct RawType {
        kind: String,
        type_id: u32,
        size: u32,
        /// (name, type_id, bits_offset, bitfield_size)
        members: Vec<(String, u32, u32, Option<u32>)>,
    }

    fn kv(tokens: &[&str], key: &str) -> Option<u32> {
        tokens
            .iter()
            .find_map(|t| t.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    }

    /// Parses `bpftool btf dump ... format raw`: `[id] KIND 'name' k=v...` lines, and member
    /// lines `\t'name' type_id=N bits_offset=M [bitfield_size=K]`.
    fn bpftool_types(dump: &str) -> (HashMap<u32, RawType>, HashMap<String, u32>) {
        let mut types: HashMap<u32, RawType> = HashMap::new();
        let mut structs = HashMap::new();
        let mut current = 0;
        for line in dump.lines() {
            if let Some(rest) = line.strip_prefix('[') {
                let (id, rest) = rest.split_once("] ").unwrap();
                current = id.parse().unwrap();
                let (kind, rest) = rest.split_once(' ').unwrap();
                let name = rest.split('\'').nth(1).unwrap_or_default();
                let tokens: Vec<&str> = rest.split_whitespace().collect();
                if kind == "STRUCT" && !structs.contains_key(name) {
                    structs.insert(name.to_owned(), current);
                }
                types.insert(
                    current,
                    RawType {
                        kind: kind.to_owned(),
                        type_id: kv(&tokens, "type_id").unwrap_or(0),
                        size: kv(&tokens, "size").unwrap_or(0),
                        members: Vec::new(),
                    },
                );
            } else if let Some(rest) = line.strip_prefix('\t') {
                let name = rest.split('\'').nth(1).unwrap_or_default();
                let tokens: Vec<&str> = rest.split_whitespace().collect();
                if let (Some(t), Some(off)) = (kv(&tokens, "type_id"), kv(&tokens, "bits_offset")) {
                    let member = (name.to_owned(), t, off, kv(&tokens, "bitfield_size"));
                    types.get_mut(&current).unwrap().members.push(member);
                }
            }
        }
        (types, structs)
    }

    fn skip_typedefs(types: &HashMap<u32, RawType>, mut id: u32) -> u32 {
        while matches!(
            types[&id].kind.as_str(),
            "TYPEDEF" | "CONST" | "VOLATILE" | "TYPE_TAG"
        ) {
            id = types[&id].type_id;
        }
        id
    }

    /// (bits_offset, type_id, bitfield_size) of `name` in `id`, through '(anon)' members.
    fn bpftool_member(
        types: &HashMap<u32, RawType>,
        id: u32,
        name: &str,
    ) -> Option<(u32, u32, Option<u32>)> {
        for (n, t, off, bf) in &types[&id].members {
            if n == name {
                return Some((*off, *t, *bf));
            }
            let inner = skip_typedefs(types, *t);
            if n == "(anon)"
                && matches!(types[&inner].kind.as_str(), "STRUCT" | "UNION")
                && let Some((o, t, bf)) = bpftool_member(types, inner, name)
            {
                return Some((off + o, t, bf));
            }
        }
        None
    }

    fn bpftool_path(
        types: &HashMap<u32, RawType>,
        structs: &HashMap<String, u32>,
        ty: &str,
        path: &[&str],
    ) -> (u32, u32, Option<u32>) {
        let mut id = structs[ty];
        let mut total = 0;
        let mut last = (0, 0, None);
        for name in path {
            id = skip_typedefs(types, id);
            last = bpftool_member(types, id, name)
                .unwrap_or_else(|| panic!("bpftool: no {ty}.{name}"));
            total += last.0;
            id = last.1;
        }
        (total, last.1, last.2)
    }

    #[test]
    fn running_kernel_offsets_match_bpftool() {
        assert!(
            Path::new(VMLINUX_BTF).exists(),
            "the test machine has kernel BTF"
        );
        let ours = sock_offsets().expect("offsets from the running kernel's BTF");
        let out = match Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
            .output()
        {
            Ok(out) if out.status.success() => out,
            // `cargo xtask setup` installs bpftool; without it this check cannot run, so fail.
            other => panic!("bpftool unavailable ({other:?}): run `cargo xtask setup`"),
        };
        let dump = String::from_utf8(out.stdout).unwrap();
        let (types, structs) = bpftool_types(&dump);
        let byte = |ty: &str, path: &[&str]| {
            let (bits, _, bf) = bpftool_path(&types, &structs, ty, path);
            assert_eq!(bits % 8, 0, "{ty}.{path:?}");
            assert!(
                bf.is_none() || path == ["sk_protocol"],
                "{ty}.{path:?} is a bitfield"
            );
            bits / 8
        };
        let common = |name| byte("sock", &["__sk_common", name]);
        let (proto_bits, proto_type, proto_bf) =
            bpftool_path(&types, &structs, "sock", &["sk_protocol"]);
        let proto_size = match proto_bf {
            Some(bits) => bits / 8,
            None => types[&skip_typedefs(&types, proto_type)].size,
        };
        let theirs = SockOffsets {
            skc_daddr: common("skc_daddr"),
            skc_rcv_saddr: common("skc_rcv_saddr"),
            skc_dport: common("skc_dport"),
            skc_num: common("skc_num"),
            skc_family: common("skc_family"),
            skc_v6_daddr: common("skc_v6_daddr"),
            skc_v6_rcv_saddr: common("skc_v6_rcv_saddr"),
            skc_net: common("skc_net"),
            net_ns_inum: byte("net", &["ns", "inum"]),
            sk_protocol: proto_bits / 8,
            sk_protocol_size: proto_size,
            sk_err: byte("sock", &["sk_err"]),
            inet_sport: byte("inet_sock", &["inet_sport"]),
            sk_flags: common("skc_flags"),
        };
        assert_eq!(ours, theirs);
        // Fields that share a word are distinct: the lookup did not stop at the union itself.
        assert_ne!(ours.skc_daddr, ours.skc_rcv_saddr);
        assert_ne!(ours.skc_dport, ours.skc_num);

        // The timer_expire_entry hook's offsets.
        let tw = timewait_timer_offsets().expect("tw_timer offsets from the running kernel");
        assert_eq!(
            tw,
            (
                byte("inet_timewait_sock", &["tw_timer"]),
                byte("inet_timewait_sock", &["__tw_common", "skc_cookie"]),
            )
        );
    }
}
