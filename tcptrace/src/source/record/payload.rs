//! Byte layouts of the record payloads other than events (which are the kernel's `RawEvent`).
//!
//! All integers are little-endian. Snapshots and fd-owner tables can be large, so the writer
//! splits them into parts of at most [`CHUNK_TARGET`] bytes; each part says whether more follow,
//! and the reader joins them. See `docs/record-format.md` for the tables.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tcptrace_common::TcpState;

use crate::owner::process::ProcessRef;
use crate::probe::LossReport;
use crate::source::snapshot::KernelSocket;

use super::End;
use super::header::FORMAT_MINOR;

/// Target size of one snapshot or fd-owner part. Small enough that a reader never holds a large
/// buffer; large enough that the 18 bytes of framing per part do not matter.
pub(super) const CHUNK_TARGET: usize = 64 * 1024;
/// `taken_ns`, `more`, `count`: the start of every snapshot and fd-owner part.
pub(super) const PART_HEAD_LEN: usize = 13;
/// Loss: `ts_ns` and the loss counters; End: `ts_ns`, `events`, `records` and the loss
/// counters. As this build writes them.
pub(super) const LOSS_LEN: usize = loss_and_end_len(FORMAT_MINOR).0;
pub(super) const END_LEN: usize = loss_and_end_len(FORMAT_MINOR).1;
pub(super) const MARK_LEN: usize = 8;

/// The payload length of Loss and End records in a file of format `1.minor` (this build's or
/// older; a newer minor may only be longer): 1.0 had eight loss counters, 1.1 added
/// `timewait_hook_missed` and `port_filter_forgot`, 1.2 the four of summary mode.
pub(super) const fn loss_and_end_len(minor: u16) -> (usize, usize) {
    let counters = match minor {
        0 => 8,
        1 => 10,
        _ => 14,
    };
    (8 + 8 * counters, 24 + 8 * counters)
}

const SOCK_LOCAL_V6: u8 = 1 << 0;
const SOCK_REMOTE_V6: u8 = 1 << 1;
const SOCK_TIMER: u8 = 1 << 2;
const SOCK_KNOWN: u8 = SOCK_LOCAL_V6 | SOCK_REMOTE_V6 | SOCK_TIMER;
/// A socket with two IPv4 addresses; each IPv6 address adds 12.
const SOCK_FIXED_LEN: usize = 50;
const SOCK_MAX_LEN: usize = SOCK_FIXED_LEN + 32;
/// Longest `comm` kept: the kernel's is 15 bytes, but `/proc` names can grow when made UTF-8.
const COMM_MAX: usize = u8::MAX as usize;
const OWNER_MAX_LEN: usize = 4 + 1 + COMM_MAX;
const ENTRY_HEAD_LEN: usize = 8 + 2;

/// Starts one part: `taken_ns`, then `more` and `count`, patched in by [`finish_part`].
fn begin_part(buf: &mut Vec<u8>, taken_ns: u64) {
    buf.clear();
    buf.extend_from_slice(&taken_ns.to_le_bytes());
    buf.push(0);
    buf.extend_from_slice(&0u32.to_le_bytes());
}

fn finish_part(buf: &mut [u8], more: bool, count: u32) {
    buf[8] = u8::from(more);
    buf[9..13].copy_from_slice(&count.to_le_bytes());
}

/// Encodes a snapshot as one or more parts and hands each to `emit`. An empty snapshot is one
/// part with no sockets.
pub(super) fn snapshot_parts(
    taken_ns: u64,
    sockets: &[KernelSocket],
    buf: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut rest = sockets;
    loop {
        begin_part(buf, taken_ns);
        let mut count = 0u32;
        while let Some((s, tail)) = rest.split_first() {
            if buf.len() + SOCK_MAX_LEN > CHUNK_TARGET {
                break;
            }
            put_socket(buf, s);
            count += 1;
            rest = tail;
        }
        let more = !rest.is_empty();
        finish_part(buf, more, count);
        emit(buf)?;
        if !more {
            return Ok(());
        }
    }
}

/// One receive-clock item: `cookie` (8), `last_recv_ms` (4).
const CLOCK_LEN: usize = 12;

/// Encodes the receive clocks of a snapshot's sockets (those that have one) as one or more
/// parts, at least one (an empty one when no socket has a clock), so a reader of 1.3 can expect
/// them after every snapshot.
pub(super) fn receive_clock_parts(
    taken_ns: u64,
    sockets: &[KernelSocket],
    buf: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut rest = sockets
        .iter()
        .filter_map(|s| Some((s.cookie, s.last_recv_ms?)))
        .peekable();
    let mut parts = 0;
    loop {
        begin_part(buf, taken_ns);
        let mut count = 0u32;
        while buf.len() + CLOCK_LEN <= CHUNK_TARGET {
            let Some((cookie, ms)) = rest.next() else {
                break;
            };
            buf.extend_from_slice(&cookie.to_le_bytes());
            buf.extend_from_slice(&ms.to_le_bytes());
            count += 1;
        }
        let more = rest.peek().is_some();
        finish_part(buf, more, count);
        emit(buf)?;
        parts += 1;
        if !more {
            return Ok(parts);
        }
    }
}

/// Reads the `count` clocks of one receive-clock part into `out` (cookie -> ms); the payload
/// must hold exactly those.
pub(super) fn read_receive_clocks(
    c: &mut Cursor<'_>,
    count: u32,
    out: &mut HashMap<u64, u32>,
) -> Result<(), Malformed> {
    for _ in 0..count {
        let cookie = c.u64()?;
        let ms = c.u32()?;
        out.insert(cookie, ms);
    }
    if !c.is_empty() {
        return Err("it has bytes after its last clock");
    }
    Ok(())
}

fn put_socket(buf: &mut Vec<u8>, s: &KernelSocket) {
    let flags = if s.local.is_ipv6() { SOCK_LOCAL_V6 } else { 0 }
        | if s.remote.is_ipv6() {
            SOCK_REMOTE_V6
        } else {
            0
        }
        | if s.timer_ms.is_some() { SOCK_TIMER } else { 0 };
    buf.push(flags);
    buf.push(s.state as u8);
    buf.extend_from_slice(&s.netns.to_le_bytes());
    buf.extend_from_slice(&s.local.port().to_le_bytes());
    buf.extend_from_slice(&s.remote.port().to_le_bytes());
    buf.extend_from_slice(&s.cookie.to_le_bytes());
    buf.extend_from_slice(&s.inode.to_le_bytes());
    buf.extend_from_slice(&s.uid.to_le_bytes());
    buf.extend_from_slice(&s.cgroup_id.to_le_bytes());
    buf.extend_from_slice(&s.timer_ms.unwrap_or(0).to_le_bytes());
    buf.extend_from_slice(&s.rqueue.to_le_bytes());
    buf.extend_from_slice(&s.wqueue.to_le_bytes());
    for ip in [s.local.ip(), s.remote.ip()] {
        match ip {
            IpAddr::V4(a) => buf.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => buf.extend_from_slice(&a.octets()),
        }
    }
}

/// Encodes an fd-owner table, inodes in ascending order, as one or more parts. An inode whose
/// owners do not fit in one part continues in the next one, under the same inode.
pub(super) fn fd_owner_parts(
    taken_ns: u64,
    owners: &HashMap<u64, Vec<ProcessRef>>,
    buf: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut inodes: Vec<u64> = owners.keys().copied().collect();
    inodes.sort_unstable();
    begin_part(buf, taken_ns);
    let mut entries = 0u32;
    for inode in inodes {
        let mut procs = owners[&inode].as_slice();
        loop {
            if buf.len() + ENTRY_HEAD_LEN + OWNER_MAX_LEN > CHUNK_TARGET {
                finish_part(buf, true, entries);
                emit(buf)?;
                begin_part(buf, taken_ns);
                entries = 0;
            }
            let head = buf.len();
            buf.extend_from_slice(&inode.to_le_bytes());
            buf.extend_from_slice(&0u16.to_le_bytes());
            let mut n = 0u16;
            while let Some((p, tail)) = procs.split_first() {
                if n == u16::MAX || buf.len() + OWNER_MAX_LEN > CHUNK_TARGET {
                    break;
                }
                put_owner(buf, p);
                n += 1;
                procs = tail;
            }
            buf[head + 8..head + 10].copy_from_slice(&n.to_le_bytes());
            entries += 1;
            if procs.is_empty() {
                break;
            }
        }
    }
    finish_part(buf, false, entries);
    emit(buf)
}

fn put_owner(buf: &mut Vec<u8>, p: &ProcessRef) {
    let mut n = p.comm.len().min(COMM_MAX);
    while !p.comm.is_char_boundary(n) {
        n -= 1;
    }
    buf.extend_from_slice(&p.pid.to_le_bytes());
    buf.push(n as u8);
    buf.extend_from_slice(&p.comm.as_bytes()[..n]);
}

pub(super) fn loss_payload(ts_ns: u64, loss: &LossReport) -> [u8; LOSS_LEN] {
    let mut out = [0u8; LOSS_LEN];
    out[..8].copy_from_slice(&ts_ns.to_le_bytes());
    put_loss(&mut out[8..], loss);
    out
}

pub(super) fn end_payload(end: &End) -> [u8; END_LEN] {
    let mut out = [0u8; END_LEN];
    out[..8].copy_from_slice(&end.ts_ns.to_le_bytes());
    out[8..16].copy_from_slice(&end.events.to_le_bytes());
    out[16..24].copy_from_slice(&end.records.to_le_bytes());
    put_loss(&mut out[24..], &end.loss);
    out
}

fn put_loss(out: &mut [u8], l: &LossReport) {
    let fields = [
        l.ring_full,
        l.primary_skipped,
        l.recovered,
        l.reset_skipped,
        l.duplicates,
        l.undecodable,
        l.backup_ring_full,
        l.reset_ring_full,
        l.timewait_hook_missed,
        l.port_filter_forgot,
        l.followed,
        l.repaired,
        l.storage_failed,
        l.summary_ring_full,
    ];
    for (dst, v) in out.chunks_exact_mut(8).zip(fields) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

/// Why a payload did not parse; the reader adds the record type and offset.
pub(super) type Malformed = &'static str;

/// Reads little-endian fields off the front of a payload, never past its end.
pub(super) struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { rest: bytes }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or("it ends inside a field")?;
        self.rest = tail;
        Ok(*head)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let (head, tail) = self
            .rest
            .split_at_checked(n)
            .ok_or("it ends inside a field")?;
        self.rest = tail;
        Ok(head)
    }

    pub(super) fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, Malformed> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    pub(super) fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    pub(super) fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    fn ip(&mut self, v6: bool) -> Result<IpAddr, Malformed> {
        Ok(if v6 {
            IpAddr::V6(Ipv6Addr::from(self.take::<16>()?))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.take::<4>()?))
        })
    }
}

/// The head every snapshot and fd-owner part starts with.
pub(super) struct PartHead {
    pub taken_ns: u64,
    pub more: bool,
    pub count: u32,
}

pub(super) fn part_head(c: &mut Cursor<'_>) -> Result<PartHead, Malformed> {
    let taken_ns = c.u64()?;
    let more = match c.u8()? {
        0 => false,
        1 => true,
        _ => return Err("its continuation byte is neither 0 nor 1"),
    };
    Ok(PartHead {
        taken_ns,
        more,
        count: c.u32()?,
    })
}

/// Appends the `count` sockets of one snapshot part; the payload must hold exactly those.
pub(super) fn read_sockets(
    c: &mut Cursor<'_>,
    count: u32,
    out: &mut Vec<KernelSocket>,
) -> Result<(), Malformed> {
    for _ in 0..count {
        out.push(read_socket(c)?);
    }
    if !c.is_empty() {
        return Err("it has bytes after its last socket");
    }
    Ok(())
}

fn read_socket(c: &mut Cursor<'_>) -> Result<KernelSocket, Malformed> {
    let flags = c.u8()?;
    if flags & !SOCK_KNOWN != 0 {
        return Err("a socket has unknown flag bits");
    }
    let state = TcpState::from_u8(c.u8()?).ok_or("a socket has an unknown TCP state")?;
    let netns = c.u32()?;
    let lport = c.u16()?;
    let rport = c.u16()?;
    let cookie = c.u64()?;
    let inode = c.u64()?;
    let uid = c.u32()?;
    let cgroup_id = c.u64()?;
    let timer = c.u32()?;
    let rqueue = c.u32()?;
    let wqueue = c.u32()?;
    let local = SocketAddr::new(c.ip(flags & SOCK_LOCAL_V6 != 0)?, lport);
    let remote = SocketAddr::new(c.ip(flags & SOCK_REMOTE_V6 != 0)?, rport);
    Ok(KernelSocket {
        netns,
        state,
        local,
        remote,
        cookie,
        inode,
        uid,
        cgroup_id,
        timer_ms: (flags & SOCK_TIMER != 0).then_some(timer),
        rqueue,
        wqueue,
        // From the receive-clock parts that follow the snapshot (1.3).
        last_recv_ms: None,
    })
}

/// Adds the `count` entries of one fd-owner part to `out`; the payload must hold exactly those.
pub(super) fn read_fd_owners(
    c: &mut Cursor<'_>,
    count: u32,
    out: &mut HashMap<u64, Vec<ProcessRef>>,
) -> Result<(), Malformed> {
    for _ in 0..count {
        let inode = c.u64()?;
        let n = c.u16()?;
        let procs = out.entry(inode).or_default();
        for _ in 0..n {
            let pid = c.u32()?;
            let len = c.u8()?;
            let comm = std::str::from_utf8(c.bytes(usize::from(len))?)
                .map_err(|_| "a process name is not UTF-8")?;
            procs.push(ProcessRef {
                pid,
                comm: comm.to_string(),
            });
        }
    }
    if !c.is_empty() {
        return Err("it has bytes after its last entry");
    }
    Ok(())
}

/// Reads the loss counters of a file of format `1.minor`; counters that version did not have
/// read as 0. (The reader has checked the payload's length for that version already.)
pub(super) fn read_loss(c: &mut Cursor<'_>, minor: u16) -> Result<LossReport, Malformed> {
    let mut l = LossReport {
        ring_full: c.u64()?,
        primary_skipped: c.u64()?,
        recovered: c.u64()?,
        reset_skipped: c.u64()?,
        duplicates: c.u64()?,
        undecodable: c.u64()?,
        backup_ring_full: c.u64()?,
        reset_ring_full: c.u64()?,
        ..LossReport::default()
    };
    if minor >= 1 {
        l.timewait_hook_missed = c.u64()?;
        l.port_filter_forgot = c.u64()?;
    }
    if minor >= 2 {
        l.followed = c.u64()?;
        l.repaired = c.u64()?;
        l.storage_failed = c.u64()?;
        l.summary_ring_full = c.u64()?;
    }
    Ok(l)
}
