//! The flag value parsers: peer spec, state, port, duration, size. Any string gets a value or
//! an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcptrace::cli::{parse_duration, parse_size};
use tcptrace::filter::{PeerSpec, parse_port, parse_state};

fuzz_target!(|s: &str| {
    let _ = s.parse::<PeerSpec>();
    let _ = parse_state(s);
    let _ = parse_port(s);
    if let Ok(d) = parse_duration(s) {
        assert!(!d.is_zero(), "{s:?} parsed as a zero duration");
    }
    if let Ok(n) = parse_size(s) {
        assert!(n.is_power_of_two() && n >= 4096, "{s:?} -> {n}");
    }
});
