//! The ring buffer record decoder: any bytes decode or fail cleanly, and what decodes
//! re-encodes to a record that decodes to the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcptrace::event::{decode, encode, raw_bytes};

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = decode(data) {
        // comm is cut at 15 bytes and may have gained U+FFFD; everything else round-trips.
        let again = decode(raw_bytes(&encode(&ev))).expect("an encoded event decodes");
        assert_eq!(
            (again.ts_ns, again.sock, again.local, again.remote),
            (ev.ts_ns, ev.sock, ev.local, ev.remote)
        );
        assert_eq!(again.what, ev.what);
    }
});
