//! Tests of the inet_diag dump, by theme.

mod datagram;
mod loopback;
