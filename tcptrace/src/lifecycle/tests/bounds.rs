//! The table stays within its bound.

use tcptrace_common::TcpState::*;

use super::super::fixtures::*;
use super::super::table::{Limits, SocketTable};
use super::{check_counts, established, state_of, time_wait};

#[test]
fn full_table_evicts_oldest_time_wait_first_then_least_recently_active() {
    let mut fx = Fx::new();
    let mut t = SocketTable::new(Limits {
        max_sockets: 4,
        ..Limits::default()
    });
    let tw1 = fx.sock("10.0.0.1:40001", "10.0.0.2:443");
    let tw2 = fx.sock("10.0.0.1:40002", "10.0.0.2:443");
    let old = fx.sock("10.0.0.1:40003", "10.0.0.2:443");
    let recent = fx.sock("10.0.0.1:40004", "10.0.0.2:443");
    established(&mut fx, &mut t, &old);
    time_wait(&mut fx, &mut t, &tw1);
    time_wait(&mut fx, &mut t, &tw2);
    established(&mut fx, &mut t, &recent);
    assert_eq!(t.len(), 4);

    let n1 = fx.sock("10.0.0.1:40005", "10.0.0.2:443");
    established(&mut fx, &mut t, &n1);
    assert_eq!(state_of(&t, &tw1), None, "oldest TIME_WAIT goes first");
    assert_eq!(state_of(&t, &tw2), Some(TimeWait));
    let n2 = fx.sock("10.0.0.1:40006", "10.0.0.2:443");
    established(&mut fx, &mut t, &n2);
    assert_eq!(state_of(&t, &tw2), None);
    let n3 = fx.sock("10.0.0.1:40007", "10.0.0.2:443");
    established(&mut fx, &mut t, &n3);
    assert_eq!(state_of(&t, &old), None, "then the least recently active");
    assert_eq!(state_of(&t, &recent), Some(Established));
    assert_eq!(t.len(), 4);
    assert_eq!(t.stats().evictions, 3);
    check_counts(&t);
}

#[test]
fn table_never_exceeds_its_bound_under_churn() {
    let mut fx = Fx::new();
    let max = 512;
    let mut t = SocketTable::new(Limits {
        max_sockets: max,
        max_tombstones: 64,
        ..Limits::default()
    });
    for i in 0..5_000u32 {
        let sk = fx.sock(
            &format!(
                "10.{}.{}.1:{}",
                i >> 16,
                (i >> 8) & 255,
                1024 + (i & 0x7fff)
            ),
            "10.0.0.2:443",
        );
        if i % 3 == 0 {
            time_wait(&mut fx, &mut t, &sk);
        } else {
            established(&mut fx, &mut t, &sk);
        }
        assert!(t.len() <= max);
    }
    assert_eq!(t.len() as u64 + t.stats().evictions, 5_000);
    check_counts(&t);
    // Owners are interned: one process, one copy.
    assert_eq!(t.interned(), (1, 0));
}
