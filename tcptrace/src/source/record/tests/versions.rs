//! What the reader accepts by its header: other files, format versions (1.0 files, newer
//! minor and major versions), flags and metadata.

use super::*;

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

/// Rewrites a file of this build as format `1.minor` wrote it: that minor version, and Loss and
/// End without the loss counters later versions appended. `loss_at` is where the one Loss record
/// starts.
fn as_format(bytes: &[u8], loss_at: usize, minor: u16) -> Vec<u8> {
    let mut old = bytes.to_vec();
    old[14..16].copy_from_slice(&minor.to_le_bytes());
    let extra = payload::LOSS_LEN - payload::loss_and_end_len(minor).0;
    let end_at = old.len() - FRAME_LEN - payload::END_LEN;
    let shorten = |old: &mut Vec<u8>, at: usize, len: usize| {
        let cut = at + FRAME_LEN + len - extra;
        old.drain(cut..cut + extra);
        old[at + 1..at + 5].copy_from_slice(&((len - extra) as u32).to_le_bytes());
    };
    // The later record first, so the earlier offset stays valid.
    shorten(&mut old, end_at, payload::END_LEN);
    shorten(&mut old, loss_at, payload::LOSS_LEN);
    old
}

/// Files from formats 1.0 and 1.1 still read: their Loss and End records are shorter, and the
/// counters later versions added read as 0. Another version's lengths are corruption.
#[test]
fn older_files_read_with_the_newer_loss_counters_at_zero() {
    let mut w = RecordWriter::new(Vec::new(), &header()).unwrap();
    w.write_event(&event(1, false)).unwrap();
    let loss_at = w.position() as usize;
    w.write_loss(&loss(), 5).unwrap();
    let bytes = w.finish(&loss(), 6).unwrap();
    for minor in [0, 1] {
        let old = as_format(&bytes, loss_at, minor);
        let counters_then = if minor == 0 { 8 } else { 10 };
        assert_eq!(old.len(), bytes.len() - 2 * 8 * (14 - counters_then));
        let mut r = RecordReader::from_reader(old.as_slice()).unwrap();
        assert_eq!(r.version(), FormatVersion { major: 1, minor });
        let mut then = LossReport {
            followed: 0,
            repaired: 0,
            storage_failed: 0,
            summary_ring_full: 0,
            ..loss()
        };
        if minor == 0 {
            then.timewait_hook_missed = 0;
            then.port_filter_forgot = 0;
        }
        assert!(matches!(r.next().unwrap(), Some(Record::Event(_))));
        assert_eq!(
            r.next().unwrap(),
            Some(Record::Loss {
                ts_ns: 5,
                loss: then
            })
        );
        assert!(matches!(r.next().unwrap(), Some(Record::End(End { loss, .. })) if loss == then));
    }
    let old = as_format(&bytes, loss_at, 0);
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

/// Format 1.3 follows every snapshot with its receive clocks (parts of their own tag, counted
/// in End's records one by one, as a 1.2 reader that skips them counts them). A 1.2 file has
/// none, and its sockets read without a clock; a 1.3 snapshot without them is corrupt.
#[test]
fn receive_clocks_follow_snapshots_from_1_3_and_older_files_read_without() {
    let mut w = RecordWriter::new(Vec::new(), &header()).unwrap();
    let snap_at = w.position() as usize;
    w.write_snapshot(&snapshot()).unwrap();
    let after = w.position() as usize;
    let bytes = w.finish(&loss(), 6).unwrap();
    let got = read_all_from_bytes(&bytes).unwrap();
    let Record::Snapshot(s) = &got[0] else {
        panic!("{got:?}")
    };
    let clocked: Vec<_> = s.sockets.iter().filter_map(|k| k.last_recv_ms).collect();
    assert_eq!(clocked, vec![1005]);
    assert!(matches!(got[1], Record::End(End { records: 2, .. })));

    // The same file as 1.2 wrote it: no clock part, one record fewer in End.
    let snap_len = u32::from_le_bytes(bytes[snap_at + 1..snap_at + 5].try_into().unwrap());
    let clocks_at = snap_at + FRAME_LEN + snap_len as usize;
    assert_eq!(bytes[clocks_at], tag::RECEIVE_CLOCKS);
    let mut old = bytes.clone();
    old.drain(clocks_at..after);
    old[14..16].copy_from_slice(&2u16.to_le_bytes());
    let end_records = old.len() - payload::END_LEN + 16;
    old[end_records..end_records + 8].copy_from_slice(&1u64.to_le_bytes());
    let got = read_all_from_bytes(&old).unwrap();
    let Record::Snapshot(s) = &got[0] else {
        panic!("{got:?}")
    };
    assert!(s.sockets.iter().all(|k| k.last_recv_ms.is_none()));
    assert_eq!(s.sockets.len(), snapshot().sockets.len());

    // A 1.3 file whose snapshot lacks its clocks is corrupt at the frame that follows.
    let mut cut = old.clone();
    cut[14..16].copy_from_slice(&FORMAT_MINOR.to_le_bytes());
    let (offset, _, what) = corrupt_at(&cut);
    assert_eq!(offset, clocks_at as u64);
    assert!(
        matches!(what, Corruption::BrokenContinuation { .. }),
        "{what:?}"
    );
    // And in a 1.2 file the tag is not known at all.
    let mut stray = bytes.clone();
    stray[14..16].copy_from_slice(&2u16.to_le_bytes());
    let (offset, _, what) = corrupt_at(&stray);
    assert_eq!(offset, clocks_at as u64);
    assert!(matches!(what, Corruption::UnknownType(8)), "{what:?}");
}
