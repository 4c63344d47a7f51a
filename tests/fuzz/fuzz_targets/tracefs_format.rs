//! The tracefs `format` file reader (`probe::tracefs::EventFormat::parse`) and the record layouts
//! tcptrace derives from it for the classic tracepoints: any text gives a format or an error,
//! and any format gives a layout or an error, never a panic. Seeds: the format files of
//! sock:inet_sock_set_state, tcp:tcp_receive_reset and tcp:tcp_send_reset from kernel 6.18
//! (tests/fuzz/seeds/tracefs_format).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tcptrace::probe::tracefs::{EventFormat, reset_layout, set_state_layout, timer_expire_layout};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(f) = EventFormat::parse(text, Path::new("format")) {
        let _ = set_state_layout(&f);
        let _ = reset_layout(&f);
        let _ = timer_expire_layout(&f);
    }
});
