use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use tcptrace_common::TcpState;
use tcptrace_common::event::RAW_EVENT_SIZE;

use super::writer::raw_would_decode;
use super::*;
use crate::event::{Event, SockId, Task, What, decode, encode, raw_bytes};
use crate::owner::process::ProcessRef;
use crate::probe::LossReport;
use crate::source::snapshot::{KernelSocket, Snapshot};

fn header() -> Header {
    Header {
        kernel_release: "6.18.0-test".into(),
        hostname: "db-1".into(),
        start_wall_ns: 1_763_000_000_123_456_789,
        start_mono_ns: 5_000_000_000,
        hook: "tp_btf".into(),
        timewait_method: "inferred".into(),
        ip_local_port_range: Some([32768, 60999]),
        tcp_fin_timeout_s: Some(60),
        command_line: vec![
            "tcptrace".into(),
            "record".into(),
            "-o".into(),
            "x.rec".into(),
        ],
        ..Header::default()
    }
}

fn event(i: u64, v6: bool) -> Event {
    let (local, remote): (SocketAddr, SocketAddr) = if v6 {
        (
            "[2001:db8::1]:40000".parse().unwrap(),
            "[fe80::2]:443".parse().unwrap(),
        )
    } else {
        (
            "127.0.0.1:40000".parse().unwrap(),
            "10.1.2.3:8080".parse().unwrap(),
        )
    };
    Event {
        ts_ns: 5_000_000_000 + i * 1000,
        sock: SockId {
            cookie: 100 + i,
            skaddr: 0xffff_8880_0000_0000 + i * 64,
        },
        netns: 4026531840,
        local,
        remote,
        what: What::Transition {
            old: TcpState::Established,
            new: TcpState::CloseWait,
        },
        task: Task {
            pid: 0,
            tid: 0,
            comm: "swapper/1".into(),
            cgroup_id: 1,
        },
        owner_context: false,
        from_backup: i % 7 == 3,
    }
}

fn socket(i: u32, state: TcpState, v6: bool) -> KernelSocket {
    let (local, remote): (SocketAddr, SocketAddr) = if v6 {
        (
            format!("[::1]:{}", 1000 + i % 60000).parse().unwrap(),
            "[::ffff:10.0.0.9]:5432".parse().unwrap(),
        )
    } else {
        (
            format!("127.0.0.1:{}", 1000 + i % 60000).parse().unwrap(),
            "10.0.0.9:5432".parse().unwrap(),
        )
    };
    let timewait = state == TcpState::TimeWait;
    KernelSocket {
        netns: 4026531840,
        state,
        local,
        remote,
        cookie: 0x1000 + u64::from(i),
        inode: if timewait { 0 } else { 90_000 + u64::from(i) },
        uid: if timewait { 0 } else { 1000 },
        cgroup_id: if timewait { 0 } else { 77 },
        timer_ms: timewait.then_some(59_000 - i % 1000),
        rqueue: i % 3,
        wqueue: i % 5,
    }
}

fn snapshot() -> Snapshot {
    Snapshot {
        taken_ns: 5_000_000_500,
        sockets: vec![
            socket(1, TcpState::Listen, false),
            socket(2, TcpState::TimeWait, false),
            socket(3, TcpState::TimeWait, true),
            socket(4, TcpState::FinWait2, true),
            socket(5, TcpState::CloseWait, false),
        ],
    }
}

fn owners() -> HashMap<u64, Vec<ProcessRef>> {
    let p = |pid: u32, comm: &str| ProcessRef {
        pid,
        comm: comm.into(),
    };
    HashMap::from([
        (90_001, vec![p(10, "nginx"), p(11, "nginx"), p(12, "nginx")]),
        (90_005, vec![p(20, "java")]),
        (90_006, vec![p(21, "naïve-名前")]),
    ])
}

fn loss() -> LossReport {
    LossReport {
        ring_full: 1,
        primary_skipped: 2,
        recovered: 3,
        reset_skipped: 4,
        duplicates: 5,
        undecodable: 6,
        backup_ring_full: 7,
        reset_ring_full: 8,
        timewait_hook_missed: 9,
        port_filter_forgot: 10,
    }
}

/// A small recording with one record of every type, and the offset every record starts at
/// (the last offset is where End starts).
fn small_file() -> (Vec<u8>, Vec<u64>, Vec<Record>) {
    let mut w = RecordWriter::new(Vec::new(), &header()).unwrap();
    let mut starts = vec![w.position()];
    let mut expect = Vec::new();
    let ev4 = event(1, false);
    w.write_event(&ev4).unwrap();
    expect.push(Record::Event(ev4));
    starts.push(w.position());
    let ev6 = Event {
        what: What::ResetReceived,
        ..event(2, true)
    };
    w.write_raw(raw_bytes(&encode(&ev6))).unwrap();
    expect.push(Record::Event(ev6));
    starts.push(w.position());
    w.write_snapshot(&snapshot()).unwrap();
    expect.push(Record::Snapshot(snapshot()));
    starts.push(w.position());
    w.write_fd_owners(5_000_000_600, &owners()).unwrap();
    expect.push(Record::FdOwners(FdOwners {
        taken_ns: 5_000_000_600,
        owners: owners(),
    }));
    starts.push(w.position());
    w.write_loss(&loss(), 5_000_001_000).unwrap();
    expect.push(Record::Loss {
        ts_ns: 5_000_001_000,
        loss: loss(),
    });
    starts.push(w.position());
    w.write_mark(5_000_002_000).unwrap();
    expect.push(Record::Mark {
        ts_ns: 5_000_002_000,
    });
    starts.push(w.position());
    let final_loss = LossReport {
        ring_full: 9,
        ..loss()
    };
    let bytes = w.finish(&final_loss, 5_000_003_000).unwrap();
    expect.push(Record::End(End {
        ts_ns: 5_000_003_000,
        events: 2,
        records: 6,
        loss: final_loss,
    }));
    (bytes, starts, expect)
}

fn header_len() -> u64 {
    RecordWriter::new(Vec::new(), &header()).unwrap().position()
}

#[test]
fn every_record_type_round_trips() {
    let (bytes, _, expect) = small_file();
    let mut r = RecordReader::from_reader(bytes.as_slice()).unwrap();
    assert_eq!(r.header(), &header());
    assert_eq!(
        r.version(),
        FormatVersion {
            major: FORMAT_MAJOR,
            minor: FORMAT_MINOR
        }
    );
    let mut got = Vec::new();
    while let Some(rec) = r.next().unwrap() {
        got.push(rec);
    }
    assert_eq!(got, expect);
    assert_eq!(r.position(), bytes.len() as u64);
    // After End the reader stays finished.
    assert!(r.next().unwrap().is_none());
    assert_eq!(read_all_from_bytes(&bytes).unwrap(), expect);
}

#[test]
fn file_starts_with_magic_and_version_and_events_are_the_kernel_bytes() {
    let (bytes, starts, _) = small_file();
    assert_eq!(&bytes[..12], b"TCPTRACE\0REC");
    assert_eq!(&bytes[12..16], &[1, 0, FORMAT_MINOR as u8, 0]);
    let at = starts[0] as usize;
    assert_eq!(bytes[at], tag::EVENT);
    assert_eq!(
        &bytes[at + 1..at + 5],
        &(RAW_EVENT_SIZE as u32).to_le_bytes()
    );
    assert_eq!(
        &bytes[at + 5..at + 5 + RAW_EVENT_SIZE],
        raw_bytes(&encode(&event(1, false)))
    );
    assert_eq!(starts[1] - starts[0], (FRAME_LEN + RAW_EVENT_SIZE) as u64);
}

#[test]
fn header_gives_the_wall_clock_of_monotonic_timestamps() {
    let h = header();
    let secs = h.wall_clock().unix_secs(h.start_mono_ns + 2_000_000_000);
    assert!((secs - 1_763_000_002.123_457).abs() < 1e-6, "{secs}");
}

#[test]
fn large_snapshot_and_fd_owner_table_are_written_in_parts_and_joined() {
    let states = [
        TcpState::TimeWait,
        TcpState::Established,
        TcpState::CloseWait,
    ];
    let snap = Snapshot {
        taken_ns: 42,
        sockets: (0..20_000)
            .map(|i| socket(i, states[i as usize % 3], i % 2 == 0))
            .collect(),
    };
    // One listener shared by 6000 pre-forked workers: its owners alone span several parts.
    let long = "w".repeat(200);
    let mut table: HashMap<u64, Vec<ProcessRef>> = (0..3000u64)
        .map(|i| {
            (
                i,
                vec![ProcessRef {
                    pid: i as u32,
                    comm: "app".into(),
                }],
            )
        })
        .collect();
    table.insert(
        1_000_000,
        (0..6000)
            .map(|pid| ProcessRef {
                pid,
                comm: long.clone(),
            })
            .collect(),
    );
    table.insert(1_000_001, Vec::new());

    let mut w = RecordWriter::new(Vec::new(), &header()).unwrap();
    let before = w.position();
    w.write_snapshot(&snap).unwrap();
    let snap_bytes = w.position() - before;
    w.write_fd_owners(43, &table).unwrap();
    let bytes = w.finish(&LossReport::default(), 44).unwrap();
    assert!(
        snap_bytes > 10 * payload::CHUNK_TARGET as u64,
        "{snap_bytes}"
    );
    // Count the frames: a snapshot of 20k sockets takes several.
    let mut frames = 0;
    let mut at = before as usize;
    while bytes[at] == tag::SNAPSHOT {
        let len = u32::from_le_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        assert!(len <= payload::CHUNK_TARGET);
        at += FRAME_LEN + len;
        frames += 1;
    }
    assert!(frames >= 10, "{frames}");

    let got = read_all_from_bytes(&bytes).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], Record::Snapshot(snap));
    assert_eq!(
        got[1],
        Record::FdOwners(FdOwners {
            taken_ns: 43,
            owners: table
        })
    );
    assert!(matches!(
        got[2],
        Record::End(End {
            records: 2,
            events: 0,
            ..
        })
    ));
}

#[test]
fn empty_snapshot_and_empty_fd_table_round_trip() {
    let mut w = RecordWriter::new(Vec::new(), &header()).unwrap();
    w.write_snapshot(&Snapshot {
        taken_ns: 7,
        sockets: vec![],
    })
    .unwrap();
    w.write_fd_owners(8, &HashMap::new()).unwrap();
    let bytes = w.finish(&LossReport::default(), 9).unwrap();
    let got = read_all_from_bytes(&bytes).unwrap();
    assert_eq!(
        got[0],
        Record::Snapshot(Snapshot {
            taken_ns: 7,
            sockets: vec![]
        })
    );
    assert_eq!(
        got[1],
        Record::FdOwners(FdOwners {
            taken_ns: 8,
            owners: HashMap::new()
        })
    );
}

/// Cutting the file anywhere gives `Truncated`, naming the first byte of the record that is
/// incomplete, and counting the complete records before it. A cut exactly between two records is
/// `TruncatedAt::MissingEnd` (the file has no End record), not a clean end.
#[test]
fn truncation_at_every_byte_offset_names_the_incomplete_record() {
    let (bytes, starts, expect) = small_file();
    let hlen = header_len();
    for cut in 0..bytes.len() {
        let part = &bytes[..cut];
        let mut got = Vec::new();
        let err = match RecordReader::from_reader(part) {
            Err(e) => e,
            Ok(mut r) => loop {
                match r.next() {
                    Ok(Some(rec)) => got.push(rec),
                    Ok(None) => panic!("cut at {cut}: clean end without End"),
                    Err(e) => break e,
                }
            },
        };
        let cut = cut as u64;
        let RecordError::Truncated {
            offset,
            end,
            records,
            at,
        } = err
        else {
            panic!("cut at {cut}: {err}");
        };
        assert_eq!(end, cut, "cut at {cut}");
        if cut < hlen {
            assert_eq!(
                (offset, records, at),
                (0, 0, TruncatedAt::Header),
                "cut at {cut}"
            );
            continue;
        }
        let n = starts.iter().filter(|&&s| s <= cut).count() - 1;
        let want_at = if starts[n] == cut {
            TruncatedAt::MissingEnd
        } else {
            TruncatedAt::Record
        };
        assert_eq!(
            (offset, records, at),
            (starts[n], n as u64, want_at),
            "cut at {cut}"
        );
        // Everything before the cut was handed out, intact.
        assert_eq!(got, expect[..n], "cut at {cut}");
    }
}

#[test]
fn truncated_multi_part_snapshot_is_reported_at_its_first_part() {
    let snap = Snapshot {
        taken_ns: 1,
        sockets: (0..5000)
            .map(|i| socket(i, TcpState::TimeWait, true))
            .collect(),
    };
    let mut w = RecordWriter::new(Vec::new(), &header()).unwrap();
    w.write_mark(1).unwrap();
    let start = w.position();
    w.write_snapshot(&snap).unwrap();
    let bytes = w.finish(&LossReport::default(), 2).unwrap();
    // The first part's end, exactly on a frame boundary inside the snapshot.
    let len0 = u32::from_le_bytes(
        bytes[start as usize + 1..start as usize + 5]
            .try_into()
            .unwrap(),
    );
    let boundary = start as usize + FRAME_LEN + len0 as usize;
    // The last cut leaves out the last byte of the last part (End follows it).
    let last_part_end = bytes.len() - FRAME_LEN - payload::END_LEN;
    for cut in [boundary, boundary + 3, boundary + 100, last_part_end - 1] {
        let err = read_all_from_bytes(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(err, RecordError::Truncated { offset, records: 1, at: TruncatedAt::Record, .. } if offset == start),
            "cut at {cut}: {err:?}"
        );
    }
}

#[test]
fn truncation_message_says_where_and_what_is_usable() {
    let (bytes, starts, _) = small_file();
    let err = read_all_from_bytes(&bytes[..starts[3] as usize + 10]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "file ends inside a record at byte offset {}",
            starts[3]
        )),
        "{msg}"
    );
    assert!(
        msg.contains("the recording was cut short (e.g. tcptrace was killed)"),
        "{msg}"
    );
    assert!(msg.contains("the 3 records before it are usable"), "{msg}");
    assert_eq!(err.offset(), starts[3]);
    assert_eq!(err.records_before(), 3);

    let err = read_all_from_bytes(&bytes[..starts[2] as usize]).unwrap_err();
    assert!(err.to_string().contains("without its End record"), "{err}");
}

/// A tiny deterministic generator, so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn check_does_not_panic_and_names_an_offset_inside(bytes: &[u8]) {
    if let Err(e) = read_all_from_bytes(bytes) {
        assert!(
            e.offset() <= bytes.len() as u64,
            "{e:?} in {} bytes",
            bytes.len()
        );
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn every_single_bit_flip_is_read_without_panic() {
    let (bytes, _, expect) = small_file();
    let mut changed = 0;
    for i in 0..bytes.len() * 8 {
        let mut b = bytes.clone();
        b[i / 8] ^= 1 << (i % 8);
        check_does_not_panic_and_names_an_offset_inside(&b);
        if read_all_from_bytes(&b).ok().as_ref() != Some(&expect) {
            changed += 1;
        }
    }
    // Most flips are caught or visible; a flip inside a timestamp simply reads as another value.
    assert!(changed > bytes.len() * 8 / 2, "{changed}");
}

#[test]
fn random_corruption_is_read_without_panic() {
    let (bytes, _, _) = small_file();
    let mut big = RecordWriter::new(Vec::new(), &header()).unwrap();
    big.write_snapshot(&Snapshot {
        taken_ns: 1,
        sockets: (0..3000)
            .map(|i| socket(i, TcpState::TimeWait, i % 2 == 1))
            .collect(),
    })
    .unwrap();
    big.write_fd_owners(2, &owners()).unwrap();
    let big = big.finish(&loss(), 3).unwrap();
    let hlen = header_len() as usize;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..3000 {
        let src = if round % 4 == 0 { &big } else { &bytes };
        let mut b = src.clone();
        match round % 3 {
            // Overwrite a few random bytes.
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(b.len());
                    b[i] = rng.next() as u8;
                }
            }
            // Random garbage after a valid header.
            1 => {
                b.truncate(hlen);
                b.extend((0..rng.below(600)).map(|_| rng.next() as u8));
            }
            // Garbage that looks like frames: plausible tags, lengths near the limits.
            _ => {
                let i = hlen + rng.below(b.len() - hlen);
                b.truncate(i);
                for _ in 0..1 + rng.below(5) {
                    b.push(1 + rng.below(8) as u8);
                    let len = [0, 13, 56, 104, MAX_PAYLOAD_LEN, u32::MAX][rng.below(6)];
                    b.extend_from_slice(&len.to_le_bytes());
                    b.extend((0..rng.below(200)).map(|_| rng.next() as u8));
                }
            }
        }
        check_does_not_panic_and_names_an_offset_inside(&b);
    }
}

fn corrupt_at(bytes: &[u8]) -> (u64, u64, Corruption) {
    match read_all_from_bytes(bytes) {
        Err(RecordError::Corrupt {
            offset,
            records,
            what,
        }) => (offset, records, what),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn unknown_type_is_corrupt_at_its_offset() {
    let (bytes, starts, _) = small_file();
    for t in [0u8, 7, 0x80, 0xff] {
        let mut b = bytes.clone();
        b[starts[4] as usize] = t;
        let (offset, records, what) = corrupt_at(&b);
        assert_eq!((offset, records), (starts[4], 4));
        assert!(matches!(what, Corruption::UnknownType(x) if x == t));
        let msg = RecordError::Corrupt {
            offset,
            records,
            what,
        }
        .to_string();
        assert!(
            msg.contains(&format!(
                "record at byte offset {} has unknown type {t}",
                starts[4]
            )),
            "{msg}"
        );
    }
}

#[test]
fn bad_lengths_are_corrupt_and_allocate_nothing_big() {
    let (bytes, starts, _) = small_file();
    let set_len = |at: u64, len: u32| {
        let mut b = bytes.clone();
        b[at as usize + 1..at as usize + 5].copy_from_slice(&len.to_le_bytes());
        b
    };
    // An event is exactly 104 bytes; a mark exactly 8.
    for (at, len) in [
        (starts[0], 103),
        (starts[0], 105),
        (starts[5], 9),
        (starts[4], 0),
    ] {
        let (offset, _, what) = corrupt_at(&set_len(at, len));
        assert_eq!(offset, at);
        assert!(
            matches!(what, Corruption::BadLength { len: l, .. } if l == len),
            "{what:?}"
        );
    }
    // A snapshot length over the cap is refused before anything is read or allocated.
    for len in [MAX_PAYLOAD_LEN + 1, u32::MAX, 12] {
        let (offset, _, what) = corrupt_at(&set_len(starts[2], len));
        assert_eq!(offset, starts[2]);
        assert!(
            matches!(
                what,
                Corruption::BadLength {
                    tag: tag::SNAPSHOT,
                    ..
                }
            ),
            "{what:?}"
        );
    }
    // Within the cap, a length past the end of the file is a truncation at that record.
    let err = read_all_from_bytes(&set_len(starts[2], MAX_PAYLOAD_LEN)).unwrap_err();
    assert!(
        matches!(err, RecordError::Truncated { offset, at: TruncatedAt::Record, .. } if offset == starts[2])
    );
}

#[test]
fn undecodable_event_is_corrupt_with_the_decoder_reason() {
    let (bytes, starts, _) = small_file();
    let mut b = bytes.clone();
    let kind_at =
        starts[1] as usize + FRAME_LEN + std::mem::offset_of!(tcptrace_common::RawEvent, kind);
    b[kind_at] = 9;
    let (offset, records, what) = corrupt_at(&b);
    assert_eq!((offset, records), (starts[1], 1));
    assert!(matches!(
        what,
        Corruption::Event(crate::event::DecodeError::Kind(9))
    ));
    let msg = RecordError::Corrupt {
        offset,
        records,
        what,
    }
    .to_string();
    assert!(
        msg.contains("undecodable event: unknown event kind 9"),
        "{msg}"
    );
}

#[test]
fn malformed_snapshot_payload_is_corrupt() {
    let (bytes, starts, _) = small_file();
    let body = starts[2] as usize + FRAME_LEN;
    // The continuation byte may only be 0 or 1.
    let mut b = bytes.clone();
    b[body + 8] = 2;
    assert_eq!(corrupt_at(&b).0, starts[2]);
    // A socket count larger than the payload holds.
    let mut b = bytes.clone();
    b[body + 9..body + 13].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        corrupt_at(&b).2,
        Corruption::Payload {
            record: "snapshot",
            ..
        }
    ));
    // A TCP state the kernel does not have.
    let mut b = bytes.clone();
    b[body + payload::PART_HEAD_LEN + 1] = 13;
    assert!(matches!(
        corrupt_at(&b).2,
        Corruption::Payload {
            record: "snapshot",
            ..
        }
    ));
    // A "more parts follow" snapshot followed by something else.
    let mut b = bytes.clone();
    b[body + 8] = 1;
    let (offset, _, what) = corrupt_at(&b);
    assert_eq!(offset, starts[3]);
    assert!(matches!(what, Corruption::BrokenContinuation { started, .. } if started == starts[2]));
}

#[test]
fn end_counts_must_match_and_nothing_may_follow_end() {
    let (bytes, starts, _) = small_file();
    let end = starts[6] as usize + FRAME_LEN;
    let mut b = bytes.clone();
    b[end + 8] = 3; // events: 3, but the file holds 2
    let (offset, _, what) = corrupt_at(&b);
    assert_eq!(offset, starts[6]);
    assert!(matches!(
        what,
        Corruption::CountMismatch {
            what: "events",
            claimed: 3,
            found: 2
        }
    ));

    let mut b = bytes.clone();
    b.push(0);
    let (offset, records, what) = corrupt_at(&b);
    assert_eq!((offset, records), (bytes.len() as u64, 6));
    assert!(matches!(what, Corruption::AfterEnd));
}

#[test]
fn newer_major_version_is_refused_with_upgrade_advice() {
    let (mut bytes, _, _) = small_file();
    bytes[12..14].copy_from_slice(&2u16.to_le_bytes());
    let err = read_all_from_bytes(&bytes).unwrap_err();
    assert!(matches!(
        err,
        RecordError::NewerVersion {
            major: 2,
            minor: FORMAT_MINOR
        }
    ));
    let msg = err.to_string();
    assert!(
        msg.contains("recorded by a newer tcptrace (format version 2"),
        "{msg}"
    );
    assert!(
        msg.contains("this build reads version 1: upgrade tcptrace"),
        "{msg}"
    );
    // The version is checked as soon as it is there, even if the rest is missing.
    assert!(matches!(
        read_all_from_bytes(&bytes[..16]),
        Err(RecordError::NewerVersion { .. })
    ));
}

#[test]
fn version_zero_and_unknown_flags_are_refused() {
    let (bytes, _, _) = small_file();
    let mut b = bytes.clone();
    b[12] = 0;
    assert!(matches!(
        read_all_from_bytes(&b),
        Err(RecordError::CorruptHeader { offset: 12, .. })
    ));
    let mut b = bytes.clone();
    b[16] = 0x4;
    let err = read_all_from_bytes(&b).unwrap_err();
    assert!(matches!(err, RecordError::UnknownFlags { flags: 4 }));
    assert!(err.to_string().contains("upgrade tcptrace"));
}

#[test]
fn other_files_are_not_recordings() {
    let pcap = [0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for b in [
        &pcap[..],
        b"hello world, this is text\n",
        b"TCPTRACE\0RED-----------------",
        b"X",
    ] {
        let err = read_all_from_bytes(b).unwrap_err();
        assert!(matches!(err, RecordError::NotARecording { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("not a tcptrace recording"),
            "{err}"
        );
    }
    // An empty file (tcptrace killed before the header was flushed) is a truncated header.
    assert!(matches!(
        read_all_from_bytes(b""),
        Err(RecordError::Truncated {
            offset: 0,
            end: 0,
            at: TruncatedAt::Header,
            ..
        })
    ));
    let missing = std::env::temp_dir().join("tcptrace-no-such-recording.rec");
    let err = RecordReader::open(&missing).err().unwrap();
    assert!(matches!(err, RecordError::Open { .. }));
    assert!(
        err.to_string().contains("tcptrace-no-such-recording.rec"),
        "{err}"
    );
}

fn with_metadata(json: &str) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&(json.len() as u32).to_le_bytes());
    b.extend_from_slice(json.as_bytes());
    b
}

#[test]
fn unknown_metadata_keys_are_ignored_and_required_ones_checked() {
    let mut json: serde_json::Value = serde_json::to_value(header()).unwrap();
    json["future_key"] = serde_json::json!({"nested": [1, 2]});
    json.as_object_mut().unwrap().remove("tcp_fin_timeout_s");
    let b = with_metadata(&json.to_string());
    let r = RecordReader::from_reader(b.as_slice()).unwrap();
    assert_eq!(
        r.header(),
        &Header {
            tcp_fin_timeout_s: None,
            ..header()
        }
    );

    json.as_object_mut().unwrap().remove("start_mono_ns");
    let b = with_metadata(&json.to_string());
    let err = RecordReader::from_reader(b.as_slice()).err().unwrap();
    assert!(
        matches!(err, RecordError::CorruptHeader { offset: 24, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("start_mono_ns"), "{err}");

    let b = with_metadata("[1,2]");
    assert!(matches!(
        RecordReader::from_reader(b.as_slice()),
        Err(RecordError::CorruptHeader { .. })
    ));
}

/// A newer minor version may add record types and append fields to fixed-size records: this
/// build skips and ignores those. In a file of our own minor version the same bytes are corrupt.
#[test]
fn newer_minor_version_additions_are_skipped_but_not_in_our_own() {
    let mut w = RecordWriter::new(Vec::new(), &header()).unwrap();
    w.write_event(&event(1, false)).unwrap();
    let mut bytes = w.finish(&LossReport::default(), 1).unwrap();
    let end_at = bytes.len() - FRAME_LEN - payload::END_LEN;
    let end = bytes.split_off(end_at);
    // A record type from the future, then a mark with 8 extra bytes, then the End.
    bytes.push(0x40);
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(b"new");
    let mark_at = bytes.len() as u64;
    bytes.push(tag::MARK);
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&77u64.to_le_bytes());
    bytes.extend_from_slice(&[0xee; 8]);
    bytes.extend_from_slice(&end);
    // The End counts every record its writer wrote, including the type this build skips.
    let records_at = bytes.len() - payload::END_LEN + 16;
    bytes[records_at..records_at + 8].copy_from_slice(&3u64.to_le_bytes());

    let mut newer = bytes.clone();
    newer[14..16].copy_from_slice(&(FORMAT_MINOR + 1).to_le_bytes());
    let mut r = RecordReader::from_reader(newer.as_slice()).unwrap();
    assert_eq!(
        r.version(),
        FormatVersion {
            major: 1,
            minor: FORMAT_MINOR + 1
        }
    );
    assert!(matches!(r.next().unwrap(), Some(Record::Event(_))));
    assert_eq!(r.next().unwrap(), Some(Record::Mark { ts_ns: 77 }));
    assert!(matches!(r.next().unwrap(), Some(Record::End(_))));
    assert_eq!(r.skipped(), 1);
    // Cut right after the skipped record: truncation is named where the file ends.
    let err = read_all_from_bytes(&newer[..mark_at as usize]).unwrap_err();
    assert!(
        matches!(err, RecordError::Truncated { offset, records: 1, at: TruncatedAt::MissingEnd, .. } if offset == mark_at),
        "{err:?}"
    );

    let (offset, _, what) = corrupt_at(&bytes);
    assert_eq!(offset, mark_at - 8);
    assert!(matches!(what, Corruption::UnknownType(0x40)));
}

/// Rewrites a file of this build as format 1.0 wrote it: minor version 0, and Loss and End
/// without the two loss counters 1.1 appended. `loss_at` is where the one Loss record starts.
fn as_format_1_0(bytes: &[u8], loss_at: usize) -> Vec<u8> {
    let mut old = bytes.to_vec();
    old[14..16].copy_from_slice(&0u16.to_le_bytes());
    let end_at = old.len() - FRAME_LEN - payload::END_LEN;
    let shorten = |old: &mut Vec<u8>, at: usize, len: usize| {
        let cut = at + FRAME_LEN + len - 16;
        old.drain(cut..cut + 16);
        old[at + 1..at + 5].copy_from_slice(&(len as u32 - 16).to_le_bytes());
    };
    // The later record first, so the earlier offset stays valid.
    shorten(&mut old, end_at, payload::END_LEN);
    shorten(&mut old, loss_at, payload::LOSS_LEN);
    old
}

/// Files from format 1.0 still read: their Loss and End records are 16 bytes shorter, and the
/// counters 1.1 added read as 0. The 1.1 lengths in a 1.0 file are corruption, as are the 1.0
/// lengths in a 1.1 file.
#[test]
fn format_1_0_files_read_with_the_newer_loss_counters_at_zero() {
    let mut w = RecordWriter::new(Vec::new(), &header()).unwrap();
    w.write_event(&event(1, false)).unwrap();
    let loss_at = w.position() as usize;
    w.write_loss(&loss(), 5).unwrap();
    let bytes = w.finish(&loss(), 6).unwrap();
    let old = as_format_1_0(&bytes, loss_at);
    assert_eq!(old.len(), bytes.len() - 32);

    let mut r = RecordReader::from_reader(old.as_slice()).unwrap();
    assert_eq!(r.version(), FormatVersion { major: 1, minor: 0 });
    let then = LossReport {
        timewait_hook_missed: 0,
        port_filter_forgot: 0,
        ..loss()
    };
    assert!(matches!(r.next().unwrap(), Some(Record::Event(_))));
    assert_eq!(
        r.next().unwrap(),
        Some(Record::Loss {
            ts_ns: 5,
            loss: then
        })
    );
    assert!(matches!(r.next().unwrap(), Some(Record::End(End { loss, .. })) if loss == then));

    let mut mixed = bytes.clone();
    mixed[14..16].copy_from_slice(&0u16.to_le_bytes());
    let (offset, _, what) = corrupt_at(&mixed);
    assert_eq!(offset, loss_at as u64);
    assert!(
        matches!(what, Corruption::BadLength { tag: tag::LOSS, .. }),
        "{what:?}"
    );
    let mut mixed = old.clone();
    mixed[14..16].copy_from_slice(&FORMAT_MINOR.to_le_bytes());
    let (offset, _, what) = corrupt_at(&mixed);
    assert_eq!(offset, loss_at as u64);
    assert!(
        matches!(what, Corruption::BadLength { tag: tag::LOSS, .. }),
        "{what:?}"
    );
}

#[test]
fn write_raw_refuses_what_the_decoder_would_reject() {
    let mut w = RecordWriter::new(Vec::new(), &header()).unwrap();
    let good = encode(&event(1, true));
    let mut bad = good;
    bad.family = 1;
    let before = w.position();
    let err = w.write_raw(raw_bytes(&bad)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(w.write_raw(&raw_bytes(&good)[..100]).is_err());
    assert_eq!((w.position(), w.events()), (before, 0));
    // The writer is still usable: refusing a record wrote nothing.
    w.write_raw(raw_bytes(&good)).unwrap();
    assert_eq!(w.events(), 1);
}

#[test]
fn raw_check_agrees_with_the_decoder() {
    let mut rng = XorShift(12345);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut b = [0u8; RAW_EVENT_SIZE];
        b.iter_mut().for_each(|x| *x = rng.next() as u8);
        let raw = encode(&event(0, false));
        let kind = std::mem::offset_of!(tcptrace_common::RawEvent, kind);
        let family = std::mem::offset_of!(tcptrace_common::RawEvent, family);
        b[kind] = rng.below(5) as u8;
        b[kind + 1] = rng.below(14) as u8;
        b[kind + 2] = rng.below(14) as u8;
        let fam = [0u16, 1, raw.family, 10, 0x0a00][rng.below(5)];
        b[family..family + 2].copy_from_slice(&fam.to_ne_bytes());
        let ok = decode(&b).is_ok();
        assert_eq!(raw_would_decode(&b), ok, "{b:?}");
        accepted += usize::from(ok);
    }
    assert!(accepted > 1000, "{accepted}");
}

/// Fails every write after `budget` bytes, like a full disk.
struct FullDisk {
    budget: usize,
    data: Vec<u8>,
}

impl Write for FullDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.budget == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let n = buf.len().min(self.budget);
        self.budget -= n;
        self.data.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn writer_stops_after_a_failed_write_and_what_was_written_reads_as_truncated() {
    let disk = FullDisk {
        budget: header_len() as usize + 150,
        data: Vec::new(),
    };
    let mut w = RecordWriter::new(disk, &header()).unwrap();
    w.write_event(&event(1, false)).unwrap();
    assert!(w.write_event(&event(2, false)).is_err());
    // Room again (the disk was cleaned up): the writer still refuses, the file ends mid-record.
    w.get_mut().budget = 1 << 20;
    let err = w.write_mark(3).unwrap_err();
    assert!(err.to_string().contains("earlier write"), "{err}");
    assert!(w.finish(&LossReport::default(), 4).is_err());
}

#[test]
fn writer_failure_leaves_a_readable_prefix() {
    let hlen = header_len() as usize;
    let disk = FullDisk {
        budget: hlen + 150,
        data: Vec::new(),
    };
    let mut w = RecordWriter::new(disk, &header()).unwrap();
    w.write_event(&event(1, false)).unwrap();
    let _ = w.write_event(&event(2, false));
    let data = std::mem::take(&mut w.get_mut().data);
    let err = read_all_from_bytes(&data).unwrap_err();
    assert!(
        matches!(
            err,
            RecordError::Truncated {
                records: 1,
                at: TruncatedAt::Record,
                ..
            }
        ),
        "{err:?}"
    );
}

/// Hands out one byte per `read`, as a pipe might.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match (self.0.split_first(), buf.first_mut()) {
            (Some((b, rest)), Some(dst)) => {
                *dst = *b;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

#[test]
fn short_reads_are_not_truncation() {
    let (bytes, _, expect) = small_file();
    let mut r = RecordReader::from_reader(Trickle(&bytes)).unwrap();
    let mut got = Vec::new();
    while let Some(rec) = r.next().unwrap() {
        got.push(rec);
    }
    assert_eq!(got, expect);
}

#[test]
fn file_round_trip_through_create_and_open() {
    let path =
        std::env::temp_dir().join(format!("tcptrace-record-test-{}.rec", std::process::id()));
    let mut w = RecordWriter::create(&path, &header()).unwrap();
    w.write_event(&event(1, true)).unwrap();
    w.write_snapshot(&snapshot()).unwrap();
    w.finish(&loss(), 9).unwrap();
    let mut r = RecordReader::open(&path).unwrap();
    assert_eq!(r.next().unwrap(), Some(Record::Event(event(1, true))));
    assert_eq!(r.next().unwrap(), Some(Record::Snapshot(snapshot())));
    assert!(matches!(
        r.next().unwrap(),
        Some(Record::End(End {
            ts_ns: 9,
            events: 1,
            ..
        }))
    ));
    assert_eq!(r.next().unwrap(), None);
    std::fs::remove_file(&path).unwrap();
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Run alone, in release: `cargo test --release -p tcptrace --lib million -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: a 110 MB file; run with --release --ignored --nocapture"]
fn million_events_write_and_read_in_constant_memory() {
    const N: u64 = 1_000_000;
    let path =
        std::env::temp_dir().join(format!("tcptrace-record-bench-{}.rec", std::process::id()));
    let events: Vec<Event> = (0..64).map(|i| event(i, i % 2 == 1)).collect();
    let raws: Vec<_> = events.iter().map(encode).collect();
    let rss_before = peak_rss_kib();

    let t = std::time::Instant::now();
    let mut w = RecordWriter::create(&path, &header()).unwrap();
    for i in 0..N {
        w.write_raw(raw_bytes(&raws[(i % 64) as usize])).unwrap();
        if i % 100_000 == 0 {
            w.write_mark(i).unwrap();
        }
    }
    w.finish(&LossReport::default(), N).unwrap();
    let write_s = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(&path).unwrap().len();

    let t = std::time::Instant::now();
    let mut r = RecordReader::open(&path).unwrap();
    let mut n = 0u64;
    while let Some(rec) = r.next().unwrap() {
        if let Record::Event(ev) = rec {
            assert_eq!(ev, events[(n % 64) as usize]);
            n += 1;
        }
    }
    let read_s = t.elapsed().as_secs_f64();
    let grew_kib = peak_rss_kib() - rss_before;
    std::fs::remove_file(&path).unwrap();

    assert_eq!(n, N);
    println!(
        "1M events: {size} bytes ({:.1} bytes/event); write {:.2} M events/s ({write_s:.3} s); \
         read+decode {:.2} M events/s ({read_s:.3} s); peak RSS grew {grew_kib} KiB",
        size as f64 / N as f64,
        N as f64 / write_s / 1e6,
        N as f64 / read_s / 1e6,
    );
    assert!(
        grew_kib < 16 * 1024,
        "reading {size} bytes grew the peak RSS by {grew_kib} KiB"
    );
}
