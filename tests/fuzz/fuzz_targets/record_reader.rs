//! The recorded-session reader: any file contents read or fail with an error, never a panic
//! or an allocation sized by a corrupt length field.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tcptrace::source::record::read_all_from_bytes(data);
});
