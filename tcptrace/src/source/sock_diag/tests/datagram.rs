//! Parsing of dump replies built by hand: no kernel involved.

use super::super::*;

struct Row {
    family: u8,
    state: u8,
    timer: u8,
    cookie: [u32; 2],
    expires: u32,
    inode: u32,
    attrs: Vec<u8>,
}

impl Row {
    fn v4(state: TcpState) -> Row {
        Row {
            family: 2,
            state: state as u8,
            timer: 0,
            cookie: [7, 0],
            expires: 0,
            inode: 99,
            attrs: vec![],
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut p = vec![0u8; INET_DIAG_MSG_LEN];
        p[0] = self.family;
        p[1] = self.state;
        p[2] = self.timer;
        p[4..6].copy_from_slice(&8080u16.to_be_bytes());
        p[6..8].copy_from_slice(&40000u16.to_be_bytes());
        p[8..12].copy_from_slice(&[127, 0, 0, 1]);
        p[24..28].copy_from_slice(&[10, 1, 2, 3]);
        p[44..48].copy_from_slice(&self.cookie[0].to_ne_bytes());
        p[48..52].copy_from_slice(&self.cookie[1].to_ne_bytes());
        p[52..56].copy_from_slice(&self.expires.to_ne_bytes());
        p[56..60].copy_from_slice(&3u32.to_ne_bytes());
        p[60..64].copy_from_slice(&4u32.to_ne_bytes());
        p[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        p[68..72].copy_from_slice(&self.inode.to_ne_bytes());
        p.extend_from_slice(&self.attrs);
        p
    }
}

fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&2u16.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    while m.len() % 4 != 0 {
        m.push(0);
    }
    m
}

fn nlattr(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(value);
    while a.len() % 4 != 0 {
        a.push(0);
    }
    a
}

fn parse(data: &[u8]) -> (Result<Flow, SockDiagError>, Vec<KernelSocket>) {
    let mut out = Vec::new();
    let flow = parse_datagram(data, 1, 42, &mut out);
    (flow, out)
}

#[test]
fn cookie_joins_low_half_first() {
    let mut row = Row::v4(TcpState::Established);
    row.cookie = [0x1122_3344, 0x5566_7788];
    let (flow, out) = parse(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &row.bytes()));
    assert_eq!(flow.unwrap(), Flow::More);
    assert_eq!(out[0].cookie, 0x5566_7788_1122_3344);
}

#[test]
fn row_fields_decode_with_network_order_ports() {
    let mut row = Row::v4(TcpState::CloseWait);
    row.timer = 2;
    row.expires = 7200;
    row.attrs = [
        nlattr(8, &[0]),
        nlattr(INET_DIAG_CGROUP_ID, &0xabcdu64.to_ne_bytes()),
    ]
    .concat();
    let (_, out) = parse(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &row.bytes()));
    let s = &out[0];
    assert_eq!(s.netns, 42);
    assert_eq!(s.state, TcpState::CloseWait);
    assert_eq!(s.local, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(s.remote, "10.1.2.3:40000".parse().unwrap());
    assert_eq!((s.rqueue, s.wqueue, s.uid, s.inode), (3, 4, 1000, 99));
    assert_eq!(s.timer_ms, Some(7200));
    assert_eq!(s.cgroup_id, 0xabcd);
}

#[test]
fn timewait_row_keeps_its_expiry_and_unarmed_timer_is_none() {
    let mut tw = Row::v4(TcpState::TimeWait);
    tw.timer = 3;
    tw.expires = 59_000;
    tw.inode = 0;
    let idle = Row::v4(TcpState::Established);
    let data = [
        nlmsg(SOCK_DIAG_BY_FAMILY, 1, &tw.bytes()),
        nlmsg(SOCK_DIAG_BY_FAMILY, 1, &idle.bytes()),
    ]
    .concat();
    let (_, out) = parse(&data);
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].state, out[0].timer_ms, out[0].inode),
        (TcpState::TimeWait, Some(59_000), 0)
    );
    assert_eq!(out[1].timer_ms, None);
}

#[test]
fn done_ends_the_dump_and_other_sequences_are_skipped() {
    let data = [
        nlmsg(SOCK_DIAG_BY_FAMILY, 9, &Row::v4(TcpState::Listen).bytes()),
        nlmsg(SOCK_DIAG_BY_FAMILY, 1, &Row::v4(TcpState::Listen).bytes()),
        nlmsg(NLMSG_DONE, 1, &0i32.to_ne_bytes()),
        nlmsg(SOCK_DIAG_BY_FAMILY, 1, &Row::v4(TcpState::Listen).bytes()),
    ]
    .concat();
    let (flow, out) = parse(&data);
    assert_eq!(flow.unwrap(), Flow::Done);
    assert_eq!(out.len(), 1);
}

#[test]
fn kernel_errors_surface_with_their_errno() {
    let mut err = (-libc::EPERM).to_ne_bytes().to_vec();
    err.extend_from_slice(&[0u8; 16]);
    let (flow, _) = parse(&nlmsg(NLMSG_ERROR, 1, &err));
    match flow {
        Err(SockDiagError::Kernel(e)) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
        other => panic!("expected a kernel error, got {other:?}"),
    }
    let (flow, _) = parse(&nlmsg(NLMSG_DONE, 1, &(-libc::EINTR).to_ne_bytes()));
    match flow {
        Err(SockDiagError::Kernel(e)) => assert_eq!(e.raw_os_error(), Some(libc::EINTR)),
        other => panic!("expected a kernel error, got {other:?}"),
    }
}

/// The fuzzer's find (tests/fuzz, sock_diag_datagram): negating this status overflowed.
#[test]
fn the_most_negative_status_is_an_error_not_an_overflow() {
    for kind in [NLMSG_DONE, NLMSG_ERROR] {
        let (flow, _) = parse(&nlmsg(kind, 1, &i32::MIN.to_ne_bytes()));
        match flow {
            Err(SockDiagError::Kernel(e)) => assert_eq!(e.raw_os_error(), Some(i32::MAX)),
            other => panic!("expected a kernel error, got {other:?}"),
        }
    }
}

#[test]
fn unknown_family_or_state_is_skipped_not_fatal() {
    let mut bad_family = Row::v4(TcpState::Listen);
    bad_family.family = 1;
    let mut bad_state = Row::v4(TcpState::Listen);
    bad_state.state = 13;
    let data = [
        nlmsg(SOCK_DIAG_BY_FAMILY, 1, &bad_family.bytes()),
        nlmsg(SOCK_DIAG_BY_FAMILY, 1, &bad_state.bytes()),
        nlmsg(SOCK_DIAG_BY_FAMILY, 1, &Row::v4(TcpState::Listen).bytes()),
    ]
    .concat();
    let (flow, out) = parse(&data);
    assert!(flow.is_ok());
    assert_eq!(out.len(), 1);
}

#[test]
fn lengths_that_overrun_the_datagram_are_errors() {
    let mut data = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &Row::v4(TcpState::Listen).bytes());
    data[0..4].copy_from_slice(&1000u32.to_ne_bytes());
    assert!(matches!(parse(&data).0, Err(SockDiagError::Malformed(_))));
    data[0..4].copy_from_slice(&8u32.to_ne_bytes());
    assert!(matches!(parse(&data).0, Err(SockDiagError::Malformed(_))));
    // A row cut short inside a well-formed message.
    let short = nlmsg(
        SOCK_DIAG_BY_FAMILY,
        1,
        &Row::v4(TcpState::Listen).bytes()[..40],
    );
    assert!(matches!(parse(&short).0, Err(SockDiagError::Malformed(_))));
}

#[test]
fn malformed_replies_never_panic() {
    let mut row = Row::v4(TcpState::Established);
    row.attrs = nlattr(INET_DIAG_CGROUP_ID, &5u64.to_ne_bytes());
    let good = [
        nlmsg(SOCK_DIAG_BY_FAMILY, 1, &row.bytes()),
        nlmsg(NLMSG_DONE, 1, &0i32.to_ne_bytes()),
    ]
    .concat();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..20_000 {
        let mut data = good.clone();
        let cut = (next() as usize) % (data.len() + 1);
        data.truncate(cut);
        for _ in 0..(next() % 4) {
            if data.is_empty() {
                break;
            }
            let at = (next() as usize) % data.len();
            data[at] = next() as u8;
        }
        let _ = parse(&data);
    }
}

/// A `tcp_info` whose receive clocks say `data` and `ack` ms.
fn tcp_info(data: u32, ack: u32) -> Vec<u8> {
    let mut info = vec![0u8; std::mem::size_of::<libc::tcp_info>()];
    info[TCPI_LAST_DATA_RECV..TCPI_LAST_DATA_RECV + 4].copy_from_slice(&data.to_ne_bytes());
    info[TCPI_LAST_ACK_RECV..TCPI_LAST_ACK_RECV + 4].copy_from_slice(&ack.to_ne_bytes());
    info
}

#[test]
fn close_wait_age_is_the_younger_receive_clock() {
    // An idle pooled connection: its last data came long ago, the FIN (an ACK) just now.
    let mut row = Row::v4(TcpState::CloseWait);
    row.attrs = nlattr(INET_DIAG_INFO, &tcp_info(3_600_000, 1_872));
    let (_, out) = parse(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &row.bytes()));
    assert_eq!(out[0].last_recv_ms, Some(1_872));
}

#[test]
fn receive_clocks_date_only_close_wait_and_need_the_whole_field() {
    let mut row = Row::v4(TcpState::Established);
    row.attrs = nlattr(INET_DIAG_INFO, &tcp_info(5, 5));
    let (_, out) = parse(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &row.bytes()));
    assert_eq!(out[0].last_recv_ms, None);
    // Cut short before tcpi_last_ack_recv: not read.
    let mut row = Row::v4(TcpState::CloseWait);
    row.attrs = nlattr(INET_DIAG_INFO, &tcp_info(5, 5)[..TCPI_LAST_ACK_RECV]);
    let (_, out) = parse(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &row.bytes()));
    assert_eq!(out[0].last_recv_ms, None);
}

#[test]
fn the_close_wait_dump_dates_the_rows_of_the_full_one_by_cookie() {
    let (_, mut all) = parse(
        &[
            nlmsg(
                SOCK_DIAG_BY_FAMILY,
                1,
                &Row::v4(TcpState::CloseWait).bytes(),
            ),
            nlmsg(SOCK_DIAG_BY_FAMILY, 1, &{
                let mut r = Row::v4(TcpState::CloseWait);
                r.cookie = [8, 0];
                r.bytes()
            }),
        ]
        .concat(),
    );
    let mut dated = Row::v4(TcpState::CloseWait);
    dated.attrs = nlattr(INET_DIAG_INFO, &tcp_info(900, 900));
    let (_, infos) = parse(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &dated.bytes()));
    merge_receive_clocks(&mut all, &infos);
    assert_eq!(all[0].last_recv_ms, Some(900));
    // Cookie 8 was not in the second dump (it left CLOSE_WAIT, or was not there yet).
    assert_eq!(all[1].last_recv_ms, None);
}
