//! Tests of recordings, by theme; the fixtures they share are here.

mod corruption;
mod round_trip;
mod truncation;
mod versions;
mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;

use tcptrace_common::TcpState;
use tcptrace_common::event::RAW_EVENT_SIZE;

use super::*;
use crate::event::{Event, SockId, Task, What, encode, raw_bytes};
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
        connect_end: None,
        timewait_read: None,
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
        last_recv_ms: (state == TcpState::CloseWait).then_some(1000 + i),
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
        followed: 11,
        repaired: 12,
        storage_failed: 13,
        summary_ring_full: 14,
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
        // Six records and the snapshot's receive-clock part.
        records: 7,
        loss: final_loss,
    }));
    (bytes, starts, expect)
}

fn header_len() -> u64 {
    RecordWriter::new(Vec::new(), &header()).unwrap().position()
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
