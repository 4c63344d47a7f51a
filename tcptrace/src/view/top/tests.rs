use super::*;

#[test]
fn keys_switch_grouping_and_sort_and_quit() {
    let mut st = TopState {
        by: GroupBy::Pid,
        sort: SortBy::CloseWait,
        rows: 10,
    };
    assert!(st.key('e'));
    assert_eq!(st.by, GroupBy::Peer);
    assert!(st.key('t'));
    assert_eq!(st.sort, SortBy::TimeWait);
    assert!(st.key('o'));
    assert_eq!(st.by, GroupBy::Port);
    assert!(!st.key('q'));
}

/// A host as the tables see it: processes holding CLOSE_WAIT sockets (connected from their
/// own context, closed by the peer) and TIME_WAIT sockets of a client, some to IPv6 peers.
pub(super) mod host {
    use tcptrace_common::TcpState::{self, *};

    use crate::aggregate::{AggLimits, Aggregates, Summary, SummaryInput, summary};
    use crate::lifecycle::fixtures::*;
    use crate::lifecycle::{Limits, SocketTable};

    /// The table and the aggregates, fed together as the session does.
    struct Rig {
        table: SocketTable,
        agg: Aggregates,
    }

    impl Sink for Rig {
        fn apply(&mut self, ev: &crate::event::Event) -> crate::lifecycle::Applied {
            let a = self.table.apply(ev);
            self.agg.observe_applied(&a, ev.ts_ns);
            a
        }
    }

    pub struct Host {
        fx: Fx,
        rig: Rig,
        port: u16,
    }

    impl Host {
        pub fn new() -> Host {
            let fx = Fx::new();
            Host {
                rig: Rig {
                    table: SocketTable::new(Limits::default()),
                    agg: Aggregates::new(fx.ts, AggLimits::default()),
                },
                fx,
                port: 40000,
            }
        }

        /// One transition of `sk`, a millisecond after the last.
        fn step(&mut self, sk: &Sk, old: TcpState, new: TcpState, ctx: &Ctx) {
            self.fx.step(MS);
            let ev = self.fx.tr(sk, old, new, ctx);
            self.rig.apply(&ev);
        }

        /// `pid` connects to `remote` (from an address of the same family); returns the
        /// socket, the process's context and the softirq's.
        fn connect(&mut self, pid: u32, comm: &'static str, remote: &str) -> (Sk, Ctx, Ctx) {
            self.port += 1;
            let ip = if remote.starts_with('[') {
                "[fd00::1]"
            } else {
                "127.0.0.1"
            };
            let sk = self.fx.sock(&format!("{ip}:{}", self.port), remote);
            // connect(): the local port is picked after the state change.
            let mut syn = sk.clone();
            syn.local.set_port(0);
            let (me, soft) = (Ctx::Owner(pid, comm), Ctx::Softirq(pid, comm));
            self.step(&syn, Close, SynSent, &me);
            self.step(&sk, SynSent, Established, &soft);
            (sk, me, soft)
        }

        /// `pid` connects and the peer closes: CLOSE_WAIT (`closes`: then the process closes
        /// too, and the peer's last ACK ends it).
        pub fn connection(&mut self, pid: u32, comm: &'static str, remote: &str, closes: bool) {
            let (sk, me, soft) = self.connect(pid, comm, remote);
            self.step(&sk, Established, CloseWait, &soft);
            if closes {
                self.step(&sk, CloseWait, LastAck, &me);
                self.step(&sk, LastAck, Close, &soft);
            }
        }

        /// `pid` connects and closes first: its socket goes to TIME_WAIT.
        pub fn time_wait(&mut self, pid: u32, comm: &'static str, remote: &str) {
            let (sk, me, soft) = self.connect(pid, comm, remote);
            self.step(&sk, Established, FinWait1, &me);
            self.step(&sk, FinWait1, FinWait2, &soft);
            self.step(&sk, FinWait2, TimeWait, &soft);
        }

        /// `pid` accepts `n` connections on 127.0.0.1:8080 that the clients close and it never
        /// does: CLOSE_WAIT on its local port, TIME_WAIT at the clients.
        pub fn inbound(&mut self, pid: u32, comm: &'static str, n: u16) {
            let lb = Loopback::new(&mut self.fx, 0);
            let server = Ctx::Owner(pid, comm);
            self.step(&lb.listener, Close, Listen, &server);
            for _ in 0..n {
                self.port += 1;
                let mut c = Loopback::new(&mut self.fx, self.port);
                c.listener = lb.listener.clone();
                c.server_ctx = server.clone();
                c.connect(&mut self.fx, &mut self.rig);
                c.client_closes(&mut self.fx, &mut self.rig);
            }
        }

        pub fn summary(&mut self, after_ns: u64) -> Summary {
            self.fx.step(after_ns);
            summary(
                &self.rig.table,
                &self.rig.agg,
                &SummaryInput {
                    now_ns: self.fx.ts,
                    lost_events: 0,
                    lost_uncounted: 0,
                    timewait_hook_missed: 0,
                    port_filter_forgot: 0,
                    transitions_seen: 0,
                    transitions_lost: 0,
                    timewait_method: "inferred",
                    port_range: (32768, 60999),
                    top: usize::MAX,
                },
            )
        }
    }

    /// Two python3 leakers (IPv6 and IPv4 peers), a curl piling up TIME_WAIT, a quiet nginx.
    pub fn busy() -> Summary {
        let mut h = Host::new();
        for i in 0..3 {
            h.connection(
                4242,
                "python3",
                "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:8443",
                false,
            );
            h.connection(4243, "python3", &format!("10.1.2.{i}:5432"), false);
        }
        h.connection(4243, "python3", "10.1.2.9:5432", false);
        for _ in 0..5 {
            h.time_wait(777, "curl", "127.0.0.1:80");
        }
        h.connection(31337, "nginx", "127.0.0.1:9000", true);
        h.inbound(31337, "nginx", 2);
        h.summary(2 * SEC)
    }
}

/// The plain snapshot, byte for byte as scripts and tests read it (taken from the
/// renderer this one replaced, on the same fixture, with the root-cause columns).
#[test]
fn plain_snapshot_is_unchanged() {
    let s = host::busy();
    let st = |by, sort| TopState { by, sort, rows: 3 };
    let plain = |by, sort| Content::new(&s, &st(by, sort), 7, "12:34:56", None).plain();
    assert_eq!(
        plain(GroupBy::Pid, SortBy::CloseWait),
        "\
tcptrace top  12:34:56  up 2s  sockets 17  ESTABLISHED 0  CLOSE_WAIT 9  TIME_WAIT 5  lost events 7
by process, sorted by CLOSE_WAIT

  PID  COMM     CLOSE_WAIT  CW/s  HELD/s  OLDEST_CW  CW_CAUSE  TIME_WAIT  TW/s  TW_P50
 4243  python3           4   1.9     2.0       2.1s  -                 0     -       -
 4242  python3           3   1.5     1.5       2.1s  -                 0     -       -
31337  nginx             2   1.5     1.0       2.0s  -                 0     -       -
"
    );
    assert_eq!(
        plain(GroupBy::Peer, SortBy::TimeWait),
        "\
tcptrace top  12:34:56  up 2s  sockets 17  ESTABLISHED 0  CLOSE_WAIT 9  TIME_WAIT 5  lost events 7
by peer, sorted by TIME_WAIT

PEER                                           CLOSE_WAIT  CW/s  HELD/s  OLDEST_CW  CW_CAUSE  TIME_WAIT  TW/s  TW_P50
127.0.0.1:80                                            0     -       -          -  -                 5   2.4       -
[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:8443           3   1.5     1.5       2.1s  -                 0     -       -
127.0.0.1 (inbound)                                     2   1.0     1.0       2.0s  -                 0     -       -
"
    );
    assert!(plain(GroupBy::Port, SortBy::CloseWait).ends_with(
        "\
LOCAL_PORT  CLOSE_WAIT  CW/s  HELD/s  OLDEST_CW  CW_CAUSE  TIME_WAIT  TW/s  TW_P50
      8080           2   1.0     1.0       2.0s  -                 0     -       -
"
    ));
    let empty = host::Host::new().summary(0);
    let overload = Overload {
        budget_per_s: 500000,
        counting: true,
        switches: 1,
        counted_events: 42,
        counted: Default::default(),
    };
    let c = Content::new(
        &empty,
        &st(GroupBy::Pid, SortBy::CloseWait),
        0,
        "12:34:56",
        Some(&overload),
    );
    assert_eq!(
        c.plain(),
        "\
OVERLOAD: over 500000 events/s, the kernel counts transitions (42 so far); counts come from the kernel table
tcptrace top  12:34:56  up 0s  sockets 0  ESTABLISHED 0  CLOSE_WAIT 0  TIME_WAIT 0  lost events 0
by process, sorted by CLOSE_WAIT

PID  COMM  CLOSE_WAIT  CW/s  HELD/s  OLDEST_CW  CW_CAUSE  TIME_WAIT  TW/s  TW_P50
(no sockets in TIME_WAIT or CLOSE_WAIT)
"
    );
}

/// The rows are the busiest by the sort key, equals in summary order, cut to `rows`.
#[test]
fn rows_are_the_busiest_in_a_stable_order() {
    let s = host::busy();
    let pids = |sort, rows| -> Vec<u32> {
        let st = TopState {
            by: GroupBy::Pid,
            sort,
            rows,
        };
        Content::new(&s, &st, 0, "", None)
            .rows
            .iter()
            .map(|r| r.process.unwrap().0)
            .collect()
    };
    let all = pids(SortBy::CloseWait, usize::MAX);
    assert_eq!(all.len(), s.by_pid.len());
    assert_eq!(all[..3], [4243, 4242, 31337]);
    assert_eq!(pids(SortBy::CloseWait, 2), all[..2]);
    assert_eq!(pids(SortBy::TimeWait, 1), [777]);
    assert_eq!(pids(SortBy::CloseWait, 0), Vec::<u32>::new());
}

mod on_a_terminal {
    use std::collections::HashMap;

    use ratatui::{Terminal, backend::TestBackend};

    use super::super::fit::width;
    use super::super::terminal::{Commands, KEYS, draw, fitting};
    use super::*;
    use crate::owner::cmdline::CommandLine;

    struct Known(HashMap<u32, CommandLine>);

    impl Commands for Known {
        fn command(&self, pid: u32, _comm: Comm) -> Option<&CommandLine> {
            self.0.get(&pid)
        }
    }

    fn known(lines: &[(u32, &[&str])]) -> Known {
        Known(
            lines
                .iter()
                .map(|(pid, args)| {
                    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
                    (*pid, CommandLine::new(&args).unwrap())
                })
                .collect(),
        )
    }

    /// The two python3 leakers' command lines; nginx's is not known (yet, or it exited).
    fn commands() -> Known {
        known(&[
            (
                4242,
                &[
                    "/usr/bin/python3",
                    "/srv/app/worker.py",
                    "--queue",
                    "payments",
                ],
            ),
            (
                4243,
                &[
                    "/usr/bin/python3",
                    "/srv/app/worker.py",
                    "--queue",
                    "refunds",
                ],
            ),
        ])
    }

    fn state(by: GroupBy) -> TopState {
        TopState {
            by,
            sort: SortBy::CloseWait,
            rows: 20,
        }
    }

    /// The screen a `w` x `h` terminal shows, one string per line, trailing blanks cut.
    fn screen(c: &Content, w: u16, h: u16, commands: &Known) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, c, commands)).unwrap();
        let b = t.backend().buffer();
        (0..h)
            .map(|y| {
                let line: String = (0..w).map(|x| b[(x, y)].symbol()).collect();
                line.trim_end().to_string()
            })
            .collect()
    }

    fn find<'a>(lines: &'a [String], pat: &str) -> &'a str {
        lines
            .iter()
            .find(|l| l.contains(pat))
            .unwrap_or_else(|| panic!("no line with {pat:?}:\n{}", lines.join("\n")))
    }

    /// The cell of `line` under the right-aligned header `head`: what ends where it ends,
    /// back to the gap before it. (One cell per character: no wide ones here.)
    fn under(header: &str, line: &str, head: &str) -> String {
        let cells: Vec<char> = line.chars().collect();
        let at = header.find(head).expect(head);
        let end = header[..at].chars().count() + head.len();
        let text: String = cells[..end.min(cells.len())].iter().collect();
        let start = text.rfind("  ").map_or(0, |i| i + 2);
        text[start..].trim().to_string()
    }

    #[test]
    fn sixty_columns_cut_names_and_hide_columns_without_wrapping_a_line() {
        let s = host::busy();
        let c = Content::new(&s, &state(GroupBy::Pid), 7, "12:34:56", None);
        // Plain, the first line alone is wider than the terminal.
        assert!(c.plain().lines().any(|l| width(l) > 60));
        let lines = screen(&c, 60, 20, &commands());
        // Every status field is whole, the lost count included, on the lines it needs.
        assert!(find(&lines, "lost events").contains("lost events 7"));
        assert!(lines[0].starts_with("tcptrace top  12:34:56"), "{lines:?}");
        // The columns that give way are said, the others are whole.
        find(&lines, "(hidden, too narrow: TW_P50 TW/s CW/s HELD/s)");
        let header = find(&lines, "PID");
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            [
                "PID",
                "COMM",
                "CLOSE_WAIT",
                "OLDEST_CW",
                "CW_CAUSE",
                "TIME_WAIT"
            ],
            "{lines:?}"
        );
        // No room for command lines: the names alone, whole, with their counts.
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("COMMAND") || l.contains("worker.py"))
        );
        let row = find(&lines, "4243");
        assert_eq!(row.split_whitespace().nth(1), Some("python3"));
        assert_eq!(under(header, row, "CLOSE_WAIT"), "4");
        assert_eq!(under(header, row, "OLDEST_CW"), "2.1s");
        assert_eq!(lines.last().unwrap(), KEYS);
    }

    #[test]
    fn sixty_columns_cut_an_ipv6_peer_in_the_middle_and_keep_its_port() {
        let s = host::busy();
        let c = Content::new(&s, &state(GroupBy::Peer), 0, "12:34:56", None);
        let lines = screen(&c, 60, 20, &commands());
        let header = find(&lines, "PEER");
        let row = find(&lines, "]:8443");
        let peer = row.split("  ").next().unwrap();
        assert!(peer.starts_with("[2001:db8") && peer.contains('…'), "{row}");
        assert!(width(peer) < "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:8443".len());
        assert_eq!(under(header, row, "CLOSE_WAIT"), "3");
        assert_eq!(under(header, row, "TIME_WAIT"), "0");
        // The short peers are whole.
        find(&lines, "127.0.0.1 (inbound)");
    }

    #[test]
    fn command_lines_show_where_there_is_room_and_tell_two_python3_apart() {
        let s = host::busy();
        let c = Content::new(&s, &state(GroupBy::Pid), 0, "12:34:56", None);
        let cmds = commands();

        let wide = screen(&c, 158, 20, &cmds);
        let header = find(&wide, "PID");
        assert!(header.ends_with("COMMAND"), "{header}");
        let payments = find(&wide, "4242");
        let refunds = find(&wide, "4243");
        assert!(payments.ends_with("/usr/bin/python3 /srv/app/worker.py --queue payments"));
        assert!(refunds.ends_with("/usr/bin/python3 /srv/app/worker.py --queue refunds"));
        // Not known: the name stands in.
        assert!(find(&wide, "31337").ends_with("nginx"));

        // Less room: the program's directory goes first...
        let less = screen(&c, 138, 20, &cmds);
        assert!(find(&less, "4242").ends_with("  python3 /srv/app/worker.py --queue payments"));
        // ...then the line is cut in the middle, the distinguishing end kept.
        let mid = screen(&c, 118, 20, &cmds);
        let payments = find(&mid, "4242");
        assert!(
            payments.contains('…') && payments.ends_with("queue payments"),
            "{payments}"
        );
        assert!(find(&mid, "4243").ends_with("queue refunds"));
        assert!(mid.iter().all(|l| width(l) <= 118));

        // Too little room for a useful column: none.
        let narrow = screen(&c, 98, 20, &cmds);
        assert!(!narrow.iter().any(|l| l.contains("COMMAND")), "{narrow:?}");
        // Hidden columns come back before the command line shows.
        let header = find(&narrow, "PID");
        assert!(header.ends_with("TW_P50"), "{header}");
    }

    #[test]
    fn rows_stop_at_the_bottom_and_an_empty_table_says_so() {
        let s = host::busy();
        let c = Content::new(&s, &state(GroupBy::Pid), 0, "12:34:56", None);
        // 8 lines: status, title, blank, header, 3 rows, keys. At 7 the last row goes.
        let lines = screen(&c, 100, 8, &commands());
        assert_eq!(lines.len(), 8);
        find(&lines, "31337");
        let lines = screen(&c, 100, 7, &commands());
        assert!(!lines.iter().any(|l| l.contains("31337")), "{lines:?}");
        assert_eq!(lines.last().unwrap(), KEYS);
        // Rows a terminal cannot show are not even formatted.
        assert_eq!(fitting(&state(GroupBy::Pid), 7).rows, 7);
        assert_eq!(fitting(&state(GroupBy::Pid), 100).rows, 20);

        let empty = host::Host::new().summary(0);
        let c = Content::new(&empty, &state(GroupBy::Peer), 0, "12:34:56", None);
        let lines = screen(&c, 60, 10, &commands());
        find(&lines, EMPTY);
    }

    #[test]
    fn control_characters_in_a_command_line_are_neutralised() {
        let s = host::busy();
        let c = Content::new(&s, &state(GroupBy::Pid), 0, "12:34:56", None);
        let evil = known(&[(4242, &["python3", "\x1b[2J\x07evil"])]);
        let lines = screen(&c, 140, 20, &evil);
        assert!(find(&lines, "4242").ends_with("python3 ?[2J?evil"));
    }
}
