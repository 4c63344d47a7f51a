//! One datagram of a NETLINK_SOCK_DIAG dump reply (`source::sock_diag::parse_datagram`), as the
//! kernel sends it for the socket table snapshot: any bytes give sockets, the end of the dump,
//! or an error, never a panic. The sequence number is taken from the first message, so that
//! mutated replies are parsed rather than skipped as another dump's. Seeds: a real IPv4 dump
//! datagram and the NLMSG_DONE ends of IPv4 and IPv6 dumps from kernel 6.18
//! (tests/fuzz/seeds/sock_diag_datagram).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcptrace::source::sock_diag::parse_datagram;

/// `struct nlmsghdr`: length, type, flags, sequence, port id.
const NLMSG_HDRLEN: usize = 16;

fuzz_target!(|data: &[u8]| {
    let seq = data
        .get(8..12)
        .map_or(0, |b| u32::from_ne_bytes(b.try_into().unwrap()));
    let mut out = Vec::new();
    let _ = parse_datagram(data, seq, 4026531840, &mut out);
    // Each socket comes from a message of its own.
    assert!(
        out.len() <= data.len() / NLMSG_HDRLEN,
        "{} sockets",
        out.len()
    );
});
