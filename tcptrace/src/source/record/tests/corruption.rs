//! Damaged files: bit flips and random garbage never panic, and each kind of damage is named
//! with its offset.

use super::*;

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
    // The frame after the snapshot's only part: its receive clocks (format 1.3).
    let len = u32::from_le_bytes(bytes[starts[2] as usize + 1..body].try_into().unwrap());
    assert_eq!(offset, starts[2] + (FRAME_LEN as u64) + u64::from(len));
    assert_eq!(bytes[offset as usize], super::super::tag::RECEIVE_CLOCKS);
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
