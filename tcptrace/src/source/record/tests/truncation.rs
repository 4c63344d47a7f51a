//! Files cut short: where the reader says the incomplete record starts, and what is usable.

use super::*;

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
