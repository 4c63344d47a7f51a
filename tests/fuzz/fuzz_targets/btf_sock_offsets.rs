//! The kernel BTF reader (`probe::btf`), which tcptrace runs on /sys/kernel/btf/vmlinux to find
//! the `struct sock` fields its kernel programs read: any bytes give offsets or an error, never
//! a panic, a hang or an allocation the input does not pay for. Seeds: the unit tests'
//! synthetic kernel BTF, little- and big-endian (tests/fuzz/seeds/btf_sock_offsets).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcptrace::probe::btf::sock_offsets_from_bytes;

fuzz_target!(|data: &[u8]| {
    if let Ok(o) = sock_offsets_from_bytes(data) {
        // What is handed to the kernel program is checked: the protocol field is 1 or 2 bytes.
        assert!(matches!(o.sk_protocol_size, 1 | 2), "{o:?}");
    }
});
