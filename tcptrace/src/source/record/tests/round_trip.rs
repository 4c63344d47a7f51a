//! What is written reads back the same: every record type, large multi-part records, the
//! file layout, short reads, files on disk, and a million events in constant memory.

use std::io::{self, Read};

use super::*;

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
    // Then the receive clocks of its CLOSE_WAIT sockets, in parts of their own.
    let mut clock_frames = 0;
    while bytes[at] == tag::RECEIVE_CLOCKS {
        let len = u32::from_le_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        assert!(len <= payload::CHUNK_TARGET);
        at += FRAME_LEN + len;
        clock_frames += 1;
    }
    let clocks = snap
        .sockets
        .iter()
        .filter(|s| s.last_recv_ms.is_some())
        .count();
    assert!(clocks > 6000, "{clocks}");
    assert!(clock_frames >= 2, "{clock_frames}");

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
    // Each receive-clock part counts in End's records, as a reader that skips them counts it.
    assert!(matches!(
        got[2],
        Record::End(End {
            records,
            events: 0,
            ..
        }) if records == 2 + clock_frames
    ));
    assert!(matches!(got[2], Record::End(End { events: 0, .. })));
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

/// A session in summary mode: its file says so in the header's must-understand flags, and its
/// summaries read back whole. A summary in a file without the flag is corruption.
#[test]
fn summaries_round_trip_in_files_that_say_they_hold_them() {
    use crate::event::Stays;
    let mut ev = event(3, true);
    let mut dwell_ns = [0; tcptrace_common::event::STATE_SLOTS];
    dwell_ns[TcpState::Established as usize] = 5_000_000;
    ev.what = What::Summary {
        old: TcpState::Established,
        new: TcpState::CloseWait,
        stays: Stays {
            dwell_ns,
            visited: 1 << 1,
            known: 1 << 1,
            born_ns: Some(1_000),
            closer: false,
            reset: false,
            repaired: false,
            passive: true,
            err: 0,
            timewait: None,
        },
    };
    let mut h = header();
    h.summaries = true;
    let mut w = RecordWriter::new(Vec::new(), &h).unwrap();
    let at = w.position() as usize;
    w.write_event(&ev).unwrap();
    w.write_event(&event(4, false)).unwrap();
    let bytes = w.finish(&loss(), 9).unwrap();
    assert_eq!(&bytes[16..20], &FLAG_SUMMARIES.to_le_bytes());
    assert_eq!(bytes[at], tag::SUMMARY);
    let recs = read_all_from_bytes(&bytes).unwrap();
    let Record::Event(back) = &recs[0] else {
        panic!("{recs:?}")
    };
    // The summary's task is its owner, which has no thread of its own.
    assert_eq!(back.what, ev.what);
    assert_eq!((back.local, back.remote), (ev.local, ev.remote));
    assert!(matches!(&recs[1], Record::Event(e) if e.what == event(4, false).what));

    let mut unflagged = bytes.clone();
    unflagged[16..20].copy_from_slice(&0u32.to_le_bytes());
    let err = read_all_from_bytes(&unflagged).unwrap_err();
    assert!(
        matches!(
            err,
            RecordError::Corrupt {
                what: Corruption::UnknownType(t),
                ..
            } if t == tag::SUMMARY
        ),
        "{err:?}"
    );
}
