//! Allocation-free formatting into a reused byte buffer, for views that print a line per event
//! (`trace`). Every function writes exactly what the matching `std::fmt` or `serde_json` code
//! writes; the tests below check each against it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `{n}` for an unsigned integer.
#[inline]
pub fn push_u64(buf: &mut Vec<u8>, n: u64) {
    let mut b = itoa::Buffer::new();
    buf.extend_from_slice(b.format(n).as_bytes());
}

/// `{s:<width$}`: `s`, then spaces up to `width` characters (not bytes).
#[inline]
pub fn push_left(buf: &mut Vec<u8>, s: &str, width: usize) {
    buf.extend_from_slice(s.as_bytes());
    push_spaces(buf, width.saturating_sub(char_count(s)));
}

/// `{s:>width$}`: spaces up to `width` characters, then `s`.
#[inline]
pub fn push_right(buf: &mut Vec<u8>, s: &str, width: usize) {
    push_spaces(buf, width.saturating_sub(char_count(s)));
    buf.extend_from_slice(s.as_bytes());
}

/// [`push_left`] for text that usually fits in `N` bytes of ASCII: one fixed-size copy.
#[inline]
pub fn push_left_fixed<const N: usize>(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if bytes.len() <= N && s.is_ascii() {
        let mut a = [b' '; N];
        a[..bytes.len()].copy_from_slice(bytes);
        buf.extend_from_slice(&a);
    } else {
        push_left(buf, s, N);
    }
}

/// [`push_left_fixed`] for text a process chose (its comm), at most 16 columns: characters a
/// terminal would act on become `?` (see [`super::sanitize`]). The usual name, printable ASCII
/// that fits, is checked as one 128-bit word (no loop over its bytes) in the same padded copy
/// that is appended, so this costs what `push_left_fixed` does.
#[inline]
pub fn push_printable_left_fixed<const N: usize>(buf: &mut Vec<u8>, s: &str) {
    const { assert!(N <= 16) };
    let bytes = s.as_bytes();
    if bytes.len() <= N {
        let mut a = [b' '; 16];
        a[..bytes.len()].copy_from_slice(bytes);
        if all_printable_ascii(u128::from_ne_bytes(a)) {
            buf.extend_from_slice(&a[..N]);
            return;
        }
    }
    push_left(buf, &super::sanitize::printable(s), N);
}

/// Every byte of `x` is printable ASCII (0x20..=0x7e). Bit tricks from "Bit Twiddling Hacks"
/// (`hasless`, `hasmore`), exact as a yes/no answer for these bounds: a byte below 0x20 borrows
/// into its own high bit, a byte above 0x7e (or with its high bit set) carries into or has it.
#[inline]
fn all_printable_ascii(x: u128) -> bool {
    const ONES: u128 = u128::MAX / 255;
    const HIGH: u128 = ONES * 0x80;
    let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    // 0x7f - 0x7e = 1 per byte.
    let above_tilde = (x.wrapping_add(ONES) | x) & HIGH;
    below_space | above_tilde == 0
}

#[inline]
fn char_count(s: &str) -> usize {
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    }
}

#[inline]
pub fn push_spaces(buf: &mut Vec<u8>, n: usize) {
    const SPACES: [u8; 64] = [b' '; 64];
    let mut n = n;
    while n > 0 {
        let k = n.min(SPACES.len());
        buf.extend_from_slice(&SPACES[..k]);
        n -= k;
    }
}

/// `{n:0width$}` for an unsigned integer.
#[inline]
pub fn push_zero_padded(buf: &mut Vec<u8>, n: u64, width: usize) {
    let mut b = itoa::Buffer::new();
    let s = b.format(n);
    for _ in s.len()..width {
        buf.push(b'0');
    }
    buf.extend_from_slice(s.as_bytes());
}

/// `{:.3}` of `ns as f64 / 1e6` (milliseconds with three decimals), without the float
/// formatter. Rounding `ns / 1e6` to three decimals is rounding `ns` to whole microseconds; the
/// float quotient is off by less than 2^-53 of itself, which cannot cross a rounding boundary
/// unless the exact value sits on one (`ns % 1000 == 500`) or is too large for that bound. Those
/// cases, and only those, go through the float formatter.
pub fn push_ms3(buf: &mut Vec<u8>, ns: u64) {
    if ns % 1000 == 500 || ns >= 1 << 50 {
        use std::io::Write;
        let _ = write!(buf, "{:.3}", ns as f64 / 1e6);
        return;
    }
    let us = (ns + 500) / 1000;
    push_u64(buf, us / 1000);
    buf.push(b'.');
    push_zero_padded(buf, us % 1000, 3);
}

/// `{:>width$}` of [`push_ms3`]'s text.
pub fn push_ms3_right(buf: &mut Vec<u8>, ns: u64, width: usize) {
    let mut tmp = [0u8; 48];
    let mut v = Vec::new();
    // The common case fits on the stack: format there, then pad.
    let s: &[u8] = if ns < 1 << 50 && ns % 1000 != 500 {
        let us = (ns + 500) / 1000;
        let mut ib = itoa::Buffer::new();
        let int = ib.format(us / 1000).as_bytes();
        let frac = us % 1000;
        let n = int.len() + 4;
        tmp[..int.len()].copy_from_slice(int);
        tmp[int.len()] = b'.';
        tmp[int.len() + 1] = b'0' + (frac / 100) as u8;
        tmp[int.len() + 2] = b'0' + (frac / 10 % 10) as u8;
        tmp[int.len() + 3] = b'0' + (frac % 10) as u8;
        &tmp[..n]
    } else {
        push_ms3(&mut v, ns);
        &v
    };
    push_spaces(buf, width.saturating_sub(s.len()));
    buf.extend_from_slice(s);
}

/// `{}` of an IPv4 address.
#[inline]
pub fn push_ipv4(buf: &mut Vec<u8>, ip: &Ipv4Addr) {
    let mut t = [0u8; 15];
    let n = put_ipv4(&mut t, 0, ip);
    buf.extend_from_slice(&t[..n]);
}

/// Writes `{}` of `ip` into `t` at `at` (which leaves room for 15 bytes); returns the end.
#[inline]
fn put_ipv4(t: &mut [u8], at: usize, ip: &Ipv4Addr) -> usize {
    let mut n = at;
    for (i, o) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            t[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            t[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            t[n] = b'0' + o / 10 % 10;
            n += 1;
        }
        t[n] = b'0' + o % 10;
        n += 1;
    }
    n
}

/// `{:x}` of a u16.
#[inline]
fn push_hex16(buf: &mut Vec<u8>, n: u16) {
    push_hex(buf, n as u64);
}

/// `{:x}` of a u64.
#[inline]
pub fn push_hex(buf: &mut Vec<u8>, n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    let mut n = n;
    loop {
        i -= 1;
        tmp[i] = DIGITS[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// `{}` of an IPv6 address, with std's rules: IPv4-mapped as `::ffff:a.b.c.d`, else the longest
/// run of two or more zero groups (the first of equals) as `::`.
pub fn push_ipv6(buf: &mut Vec<u8>, ip: &Ipv6Addr) {
    if let Some(v4) = ip.to_ipv4_mapped() {
        buf.extend_from_slice(b"::ffff:");
        push_ipv4(buf, &v4);
        return;
    }
    let seg = ip.segments();
    let (mut best_start, mut best_len) = (0, 0);
    let (mut cur_start, mut cur_len) = (0, 0);
    for (i, &s) in seg.iter().enumerate() {
        if s == 0 {
            if cur_len == 0 {
                cur_start = i;
            }
            cur_len += 1;
            if cur_len > best_len {
                (best_start, best_len) = (cur_start, cur_len);
            }
        } else {
            cur_len = 0;
        }
    }
    fn groups(buf: &mut Vec<u8>, chunk: &[u16]) {
        for (i, &s) in chunk.iter().enumerate() {
            if i > 0 {
                buf.push(b':');
            }
            push_hex16(buf, s);
        }
    }
    if best_len > 1 {
        groups(buf, &seg[..best_start]);
        buf.extend_from_slice(b"::");
        groups(buf, &seg[best_start + best_len..]);
    } else {
        groups(buf, &seg);
    }
}

/// `{}` of an IP address.
#[inline]
pub fn push_ip(buf: &mut Vec<u8>, ip: &IpAddr) {
    match ip {
        IpAddr::V4(v4) => push_ipv4(buf, v4),
        IpAddr::V6(v6) => push_ipv6(buf, v6),
    }
}

/// `{:<width$}` of a socket address, with `width` first grown to fit it; returns the width.
/// IPv4 is formatted on the stack and copied once.
#[inline]
pub fn push_socket_addr_left(buf: &mut Vec<u8>, a: &SocketAddr, width: usize) -> usize {
    if let SocketAddr::V4(v4) = a {
        // "255.255.255.255:65535" is 21 bytes; columns start at 21.
        let mut t = [b' '; 32];
        let mut n = put_ipv4(&mut t, 0, v4.ip());
        t[n] = b':';
        n += 1;
        let port = v4.port();
        let digits = match port {
            0..=9 => 1,
            10..=99 => 2,
            100..=999 => 3,
            1000..=9999 => 4,
            _ => 5,
        };
        let mut p = port;
        for i in (0..digits).rev() {
            t[n + i] = b'0' + (p % 10) as u8;
            p /= 10;
        }
        n += digits;
        let width = width.max(n);
        if width <= t.len() {
            buf.extend_from_slice(&t[..width]);
        } else {
            buf.extend_from_slice(&t[..n]);
            push_spaces(buf, width - n);
        }
        return width;
    }
    let start = buf.len();
    push_socket_addr(buf, a);
    // Endpoints are ASCII: bytes are characters.
    let len = buf.len() - start;
    let width = width.max(len);
    push_spaces(buf, width - len);
    width
}

/// `{}` of a socket address: `a.b.c.d:port`, `[v6]:port` or `[v6%scope]:port`.
#[inline]
pub fn push_socket_addr(buf: &mut Vec<u8>, a: &SocketAddr) {
    match a {
        SocketAddr::V4(a) => push_ipv4(buf, a.ip()),
        SocketAddr::V6(a) => {
            buf.push(b'[');
            push_ipv6(buf, a.ip());
            if a.scope_id() != 0 {
                buf.push(b'%');
                push_u64(buf, a.scope_id() as u64);
            }
            buf.push(b']');
        }
    }
    buf.push(b':');
    push_u64(buf, a.port() as u64);
}

/// A JSON string literal, escaped exactly as `serde_json` escapes it.
#[inline]
pub fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    if !s.bytes().any(|b| NEEDS_ESCAPE[b as usize]) {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

/// The bytes `serde_json` escapes: control characters, `"` and `\\`.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// A JSON string literal for text known to need no escaping (identifiers such as state names).
#[inline]
pub fn push_json_plain(buf: &mut Vec<u8>, s: &'static str) {
    debug_assert!(!s.bytes().any(|b| NEEDS_ESCAPE[b as usize]), "{s}");
    buf.push(b'"');
    buf.extend_from_slice(s.as_bytes());
    buf.push(b'"');
}

/// A JSON number for a finite f64, as `serde_json` writes it (`null` when not finite).
#[inline]
pub fn push_json_f64(buf: &mut Vec<u8>, v: f64) {
    use serde_json::ser::Formatter;
    if v.is_finite() {
        let _ = serde_json::ser::CompactFormatter.write_f64(buf, v);
    } else {
        buf.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).unwrap()
    }

    /// A small deterministic generator (xorshift), so the tests need no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn ms3_matches_float_formatting() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let check = |ns: u64| {
            let want = format!("{:.3}", ns as f64 / 1e6);
            assert_eq!(s(|b| push_ms3(b, ns)), want, "ns={ns}");
            assert_eq!(
                s(|b| push_ms3_right(b, ns, 10)),
                format!("{want:>10}"),
                "ns={ns}"
            );
        };
        for ns in 0..200_000 {
            check(ns);
        }
        for ns in [
            499,
            500,
            501,
            1_499,
            1_500,
            1_500_000,
            999_999_499,
            999_999_500,
            (1 << 50) - 1,
            1 << 50,
            (1 << 53) + 1,
            u64::MAX,
        ] {
            check(ns);
        }
        for _ in 0..200_000 {
            let x = r.next();
            check(x >> (x % 64));
            check((x % 1_000_000) * 1000 + 500);
        }
    }

    #[test]
    fn addresses_match_std() {
        let mut r = Rng(0x1234_5678_9abc_def1);
        let mut v6 = vec![
            Ipv6Addr::UNSPECIFIED,
            Ipv6Addr::LOCALHOST,
            "::ffff:10.1.2.3".parse().unwrap(),
            "::10.1.2.3".parse().unwrap(),
            "64:ff9b::1.2.3.4".parse().unwrap(),
            "fe80::1".parse().unwrap(),
            "1:0:0:1:0:0:0:1".parse().unwrap(),
            "1:0:0:1:0:0:1:1".parse().unwrap(),
            "1:0:1:1:1:1:1:1".parse().unwrap(),
            "0:0:1:1:1:1:0:0".parse().unwrap(),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
        ];
        for _ in 0..20_000 {
            // Segments that are often zero, so every placement of zero runs comes up.
            let mut seg = [0u16; 8];
            for x in &mut seg {
                let v = r.next();
                *x = if v.is_multiple_of(3) {
                    (v >> 8) as u16
                } else {
                    0
                };
            }
            v6.push(Ipv6Addr::from(seg));
        }
        for ip in &v6 {
            let ip = *ip;
            assert_eq!(s(|b| push_ipv6(b, &ip)), ip.to_string());
            for scope in [0, 3, u32::MAX] {
                let port = (r.next() % 65536) as u16;
                let a = SocketAddr::V6(std::net::SocketAddrV6::new(ip, port, 0, scope));
                assert_eq!(s(|b| push_socket_addr(b, &a)), a.to_string());
                assert_eq!(s(|b| push_ip(b, &a.ip())), a.ip().to_string());
                let want = format!("{:<21}", a.to_string());
                assert_eq!(
                    s(|b| assert_eq!(push_socket_addr_left(b, &a, 21), want.len())),
                    want
                );
            }
        }
        for _ in 0..50_000 {
            let x = r.next();
            let ip = Ipv4Addr::from((x >> 16) as u32);
            let a = SocketAddr::new(ip.into(), x as u16);
            assert_eq!(s(|b| push_socket_addr(b, &a)), a.to_string());
            for w in [0, 21, 30, 40] {
                let want = format!("{:<w$}", a.to_string(), w = w.max(a.to_string().len()));
                assert_eq!(
                    s(|b| assert_eq!(push_socket_addr_left(b, &a, w), want.len())),
                    want
                );
            }
            assert_eq!(s(|b| push_ip(b, &a.ip())), a.ip().to_string());
        }
        for a in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.0.1:9",
            "1.22.103.4:10000",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(s(|b| push_socket_addr(b, &a)), a.to_string());
            for w in [0, 9, 21, 31, 32, 33, 55] {
                let want = format!("{:<w$}", a.to_string(), w = w.max(a.to_string().len()));
                assert_eq!(
                    s(|b| assert_eq!(push_socket_addr_left(b, &a, w), want.len())),
                    want
                );
            }
        }
    }

    #[test]
    fn the_word_check_agrees_with_the_byte_check() {
        // Every byte value at every position, among printable neighbours.
        for pos in 0..16 {
            for b in 0..=255u8 {
                let mut a = [b'a'; 16];
                a[pos] = b;
                let want = a.iter().all(|c| (0x20..0x7f).contains(c));
                assert_eq!(
                    all_printable_ascii(u128::from_ne_bytes(a)),
                    want,
                    "{b:#x} at {pos}"
                );
            }
        }
        let mut v = Vec::new();
        push_printable_left_fixed::<15>(&mut v, "\x1b[2Jevil\x07");
        push_printable_left_fixed::<15>(&mut v, "nginx");
        assert_eq!(v, b"?[2Jevil?      nginx          ");
    }

    #[test]
    fn padding_and_numbers_match_std() {
        for t in [
            "",
            "-",
            "abc",
            "tcpstorm",
            "exactly15charsx",
            "längerer name",
            "日本語",
        ] {
            assert_eq!(s(|b| push_left(b, t, 15)), format!("{t:<15}"));
            assert_eq!(s(|b| push_left_fixed::<15>(b, t)), format!("{t:<15}"));
            assert_eq!(s(|b| push_left_fixed::<3>(b, t)), format!("{t:<3}"));
            assert_eq!(s(|b| push_right(b, t, 7)), format!("{t:>7}"));
        }
        for n in [0u64, 1, 9, 10, 999, 1000, 4_294_967_295, u64::MAX] {
            assert_eq!(s(|b| push_u64(b, n)), n.to_string());
            assert_eq!(s(|b| push_zero_padded(b, n, 2)), format!("{n:02}"));
            assert_eq!(s(|b| push_zero_padded(b, n, 3)), format!("{n:03}"));
            assert_eq!(s(|b| push_hex(b, n)), format!("{n:x}"));
        }
        assert_eq!(s(|b| push_spaces(b, 100)), " ".repeat(100));
    }

    #[test]
    fn json_strings_and_floats_match_serde_json() {
        for t in [
            "",
            "tcpstorm",
            "a\"b",
            "back\\slash",
            "nl\n\t\r\u{8}\u{c}\u{1}\u{1f}",
            "ümlaut",
            "\u{7f}",
            "evil\"\n{",
        ] {
            assert_eq!(
                s(|b| push_json_str(b, t)),
                serde_json::to_string(t).unwrap()
            );
        }
        for c in 0..=255u8 {
            let t = [b'a', c, b'z'];
            if let Ok(t) = std::str::from_utf8(&t) {
                assert_eq!(
                    s(|b| push_json_str(b, t)),
                    serde_json::to_string(t).unwrap()
                );
            }
        }
        assert_eq!(s(|b| push_json_plain(b, "CLOSE_WAIT")), "\"CLOSE_WAIT\"");
        for v in [
            0.0,
            -0.0,
            1.5,
            1795318975.2582233,
            0.001,
            1e-7,
            123456789.123,
            f64::MAX,
            f64::NAN,
            f64::INFINITY,
        ] {
            assert_eq!(
                s(|b| push_json_f64(b, v)),
                serde_json::to_string(&v).unwrap()
            );
        }
    }
}
