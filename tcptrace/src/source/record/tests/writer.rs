//! The writer's refusals and failures: raw events the decoder would reject, and a full disk.

use std::io::{self, Write};

use super::super::writer::raw_would_decode;
use super::*;
use crate::event::decode;

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
