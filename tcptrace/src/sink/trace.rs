//! The trace lines: every transition with its owner and the time spent in the previous state,
//! printed as text columns or JSON lines.
//!
//! Lines wait before printing, because later events complete them: a RST sent by close() is
//! reported just after the socket's ->CLOSE transition, and an accepted socket's first event
//! lacks its cookie and peer (see [`TraceLines::event`]). Holding by event time, not by batch,
//! makes a replay print exactly what the live session printed.

use std::{collections::VecDeque, io::Write};

use hashbrown::HashMap;

use tcptrace_common::TcpState;

use crate::{
    clock::WallClock,
    event::{Event, What},
    filter::{Filters, OwnerView},
    lifecycle::{Applied, Change},
    owner::container::ContainerNames,
    session::{Flow, Session, Sink},
    view::trace::{TextWriter, TraceLine, push_json},
};

/// The `trace` sink: lines held until complete, then written to `W`.
pub struct TraceLines<W: Write> {
    out: Out<W>,
    pending: Pending,
}

impl<W: Write> TraceLines<W> {
    /// Writes the text header at once (JSON lines have none).
    pub fn new(w: W, json: bool, clock: WallClock) -> std::io::Result<Self> {
        let mut out = Out::new(w, json, clock);
        out.header()?;
        Ok(TraceLines {
            out,
            pending: Pending::default(),
        })
    }
}

impl<W: Write> Sink for TraceLines<W> {
    /// Appends the event's line. Lines still pending learn what only later events tell: that
    /// a RST closed the socket (the kernel reports a RST sent by close() just after the ->CLOSE
    /// transition), and, for an accepted socket's first event, its cookie, peer and owner (up to
    /// at least 6.1 the kernel reports LISTEN->SYN_RECV before it fills them in).
    fn event(&mut self, ev: &Event, applied: &Applied) {
        let pending = &mut self.pending;
        pending.newest_ns = pending.newest_ns.max(ev.ts_ns);
        if applied.is_duplicate() {
            log::debug!("dropped as a duplicate: {ev:?}");
            return;
        }
        match ev.what {
            // Only a RST sent by close() comes after the ->CLOSE it belongs to; a received RST
            // comes before its socket's ->CLOSE (tcp_reset() then tcp_done()), which says so
            // itself. Keyed by address (before 5.12), a received RST found the line of the
            // socket that last had the address: a refused connect's ECONNREFUSED note became
            // "reset" on 5.10.
            What::ResetReceived => {}
            What::ResetSent => {
                if let Some(l) =
                    pending.get_mut(pending.closes.get(&(ev.netns, ev.sock.key())).copied())
                {
                    l.note = Some("reset");
                }
            }
            // The timewait hooks only make the table exact; `trace` prints transitions.
            What::TimeWaitEnter { .. } | What::TimeWaitEnd => {}
            // A replayed summary recording has only the transitions its records end with.
            What::Transition { old, new } | What::Summary { old, new, .. } => {
                let (netns, sock) = (ev.netns, ev.sock);
                let line = trace_line(ev.clone(), old, new, applied, &mut pending.spare);
                // Where events carry no cookie (the classic tracepoint, tp_btf before 5.12),
                // the first line still lacks the peer and the owner.
                if old == TcpState::SynRecv {
                    let first = pending.clones.remove(&(netns, sock.skaddr));
                    if let Some(l) = pending.get_mut(first) {
                        if sock.cookie != 0 {
                            l.event.sock.cookie = sock.cookie;
                        }
                        if l.remote.port() == 0 {
                            l.remote = line.remote;
                        }
                        if l.owner.is_none() {
                            l.owner.clone_from(&line.owner);
                            l.owner_method = line.owner_method;
                        }
                    }
                }
                pending.push(line);
            }
        }
    }

    /// Prints the lines that are due (all of them at the end).
    fn batch(&mut self, s: &mut Session, ended: bool) -> anyhow::Result<Flow> {
        let now = s.now_ns();
        while let Some(l) = self.pending.pop_due(now, ended) {
            if wanted(&s.filters, &l) && in_container(&s.filters, &l, &mut s.containers) {
                self.out.line(&l)?;
            } else {
                log::debug!(
                    "filtered out: {} -> {} {} {} {:?}",
                    l.old.name(),
                    l.new.name(),
                    l.local,
                    l.remote,
                    l.event
                );
            }
            self.pending.recycle(l);
        }
        self.out.flush()?;
        Ok(Flow::Continue)
    }
}

/// Output buffer: a storm prints ~20 MB/s, so fewer, larger writes.
pub const OUT_BUFFER: usize = 64 * 1024;

/// Owner-name strings kept for reuse: more than the lines of one batch rarely wait at once.
const SPARE_NAMES: usize = 4096;

/// How long a line waits for later events that complete it, in event time: until an event this
/// much newer has been applied. Event time, not the reader's clock, because the CPU that owes
/// the completing event can stall between the two (a vCPU on a busy host does, for tens of ms)
/// while the reader runs on: then no newer event of that CPU exists either.
const HOLD_NS: u64 = 20_000_000;

/// When no newer event comes (a quiet stream), how long a line waits on the clock instead.
const IDLE_HOLD_NS: u64 = 250_000_000;

/// Lines waiting to be printed, with indexes to the ones later events complete, so each event
/// costs O(1) however many lines wait (a connection storm keeps thousands pending).
#[derive(Default)]
struct Pending {
    lines: VecDeque<TraceLine>,
    /// Sequence number of `lines[0]`.
    base: u64,
    /// The newest event time applied: event time has passed up to here.
    newest_ns: u64,
    /// Accepted sockets' first lines still without a cookie, by (netns, skaddr).
    clones: HashMap<(u32, u64), u64>,
    /// Lines of transitions to CLOSE, by (netns, socket id): a RST may follow.
    closes: HashMap<(u32, u64), u64>,
    /// Owner names of printed lines, kept for the next lines: no allocation per line.
    spare: Vec<String>,
}

impl Pending {
    fn push(&mut self, l: TraceLine) {
        let seq = self.base + self.lines.len() as u64;
        let key = (l.event.netns, l.event.sock.key());
        if l.new == TcpState::Close {
            self.closes.insert(key, seq);
        }
        if l.old == TcpState::Listen && l.new == TcpState::SynRecv && l.event.sock.cookie == 0 {
            self.clones
                .insert((l.event.netns, l.event.sock.skaddr), seq);
        }
        self.lines.push_back(l);
    }

    fn get_mut(&mut self, seq: Option<u64>) -> Option<&mut TraceLine> {
        let i = seq?.checked_sub(self.base)?;
        self.lines.get_mut(i as usize)
    }

    /// The oldest line, once HOLD_NS of event time or IDLE_HOLD_NS of the clock (`now`) has
    /// passed, or the stream is over.
    fn pop_due(&mut self, now: u64, finished: bool) -> Option<TraceLine> {
        let ts = self.lines.front()?.event.ts_ns;
        let due = finished
            || ts.saturating_add(HOLD_NS) <= self.newest_ns
            || ts.saturating_add(IDLE_HOLD_NS) <= now;
        if !due {
            return None;
        }
        let l = self.lines.pop_front()?;
        let seq = self.base;
        self.base += 1;
        // Only the lines `push` indexed can be in the indexes (`new` and `old` never change).
        if l.new == TcpState::Close {
            let key = (l.event.netns, l.event.sock.key());
            if self.closes.get(&key) == Some(&seq) {
                self.closes.remove(&key);
            }
        }
        if l.old == TcpState::Listen && l.new == TcpState::SynRecv {
            let clone = (l.event.netns, l.event.sock.skaddr);
            if self.clones.get(&clone) == Some(&seq) {
                self.clones.remove(&clone);
            }
        }
        Some(l)
    }

    /// Takes back a printed line's owner name for reuse.
    fn recycle(&mut self, l: TraceLine) {
        if let Some((_, mut comm)) = l.owner
            && self.spare.len() < SPARE_NAMES
        {
            comm.clear();
            self.spare.push(comm);
        }
    }
}

/// `--container`: the owner's container, from its cgroup (only looked up when asked for).
fn in_container(filters: &Filters, l: &TraceLine, names: &mut ContainerNames) -> bool {
    if filters.containers.is_empty() {
        return true;
    }
    // By the owner's cgroup id when the kernel reported it: cached, and still known after the
    // process exits (lines are printed up to HOLD_NS after their event).
    let c = l
        .owner
        .as_ref()
        .and_then(|(pid, _)| names.of(*pid, l.owner_cgroup));
    filters.matches_container(c.as_ref())
}

/// The user's filters, on what the line knows by the time it is printed.
///
/// A ->CLOSE line of a socket seen for the first time (its earlier events were lost) has no
/// local port: the kernel releases it before the event. Ports cannot decide that line; the
/// kernel's filter did, because it remembers the sockets it admitted. Judged here on ports, such
/// lines were dropped without a count (CI: received + lost came to one less than generated after
/// a ring overflow). A replay narrower than its recording keeps such a line too: it cannot be
/// told apart, and its port 0 shows it.
fn wanted(filters: &Filters, l: &TraceLine) -> bool {
    let port_gone = l.new == TcpState::Close && l.local.port() == 0;
    let endpoints = if port_gone {
        filters.matches_addresses(&l.local, &l.remote)
    } else {
        filters.matches_endpoints(&l.local, &l.remote)
    };
    filters.matches_states(l.old, l.new)
        && endpoints
        && filters.matches_owner(
            l.owner
                .as_ref()
                .map(|(pid, comm)| OwnerView { pid: *pid, comm }),
        )
}

fn trace_line(
    ev: Event,
    old: TcpState,
    new: TcpState,
    applied: &Applied,
    spare: &mut Vec<String>,
) -> TraceLine {
    let info = applied.sock.as_ref();
    let local = info
        .map(|s| s.local)
        .filter(|a| a.port() != 0 || ev.local.port() == 0)
        .unwrap_or(ev.local);
    let remote = info.map(|s| s.remote).unwrap_or(ev.remote);
    let owner = info.and_then(|s| s.owner);
    let mut note = None;
    for (who, change) in applied.changes() {
        if *who != crate::lifecycle::Subject::This {
            continue;
        }
        match change {
            Change::Entered {
                state: TcpState::TimeWait,
                ..
            } => note = Some("time_wait"),
            Change::HeldInFinWait2 { .. } => note = Some("fin_wait2_orphan"),
            Change::Closed { reset: true, .. } => note = Some("reset"),
            Change::ConnectFailed { errno } => {
                note = Some(crate::aggregate::connect_note(*errno));
            }
            _ => {}
        }
    }
    if note.is_none() && ev.timewait_read == Some(TcpState::Close) {
        // The kernel's TIME_WAIT table was full (`tcp_max_tw_buckets`): no timewait socket.
        note = Some("no_time_wait");
    }
    TraceLine {
        event: ev,
        old,
        new,
        local,
        remote,
        owner: owner.map(|o| {
            let mut comm = spare.pop().unwrap_or_default();
            comm.push_str(o.comm.as_str());
            (o.pid, comm)
        }),
        owner_cgroup: owner.map_or(0, |o| o.cgroup_id),
        owner_method: info.and_then(|s| s.attribution).map(|a| a.name()),
        dwell_ns: applied.dwell_ns,
        note,
    }
}

enum Out<W: Write> {
    Text(TextWriter<W>),
    /// The writer, the clock, and the buffer each line is built in.
    Json(W, WallClock, Vec<u8>),
}

impl<W: Write> Out<W> {
    fn new(w: W, json: bool, clock: WallClock) -> Self {
        if json {
            Out::Json(w, clock, Vec::with_capacity(512))
        } else {
            Out::Text(TextWriter::new(w, clock))
        }
    }

    fn header(&mut self) -> std::io::Result<()> {
        match self {
            Out::Text(t) => t.header(),
            Out::Json(..) => Ok(()),
        }
    }

    fn line(&mut self, l: &TraceLine) -> std::io::Result<()> {
        match self {
            Out::Text(t) => t.line(l),
            Out::Json(w, clock, buf) => {
                buf.clear();
                push_json(buf, l, clock);
                w.write_all(buf)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Text(t) => t.flush(),
            Out::Json(w, ..) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{SockId, Task};

    const MS: u64 = 1_000_000;

    fn close_line(ts_ns: u64) -> TraceLine {
        let local = "127.0.0.1:40000".parse().unwrap();
        let remote = "127.0.0.1:8080".parse().unwrap();
        TraceLine {
            event: Event {
                ts_ns,
                sock: SockId {
                    cookie: 7,
                    skaddr: 0x1000,
                },
                netns: 1,
                local,
                remote,
                what: What::Transition {
                    old: TcpState::Established,
                    new: TcpState::Close,
                },
                task: Task {
                    pid: 10,
                    tid: 10,
                    comm: "client".into(),
                    cgroup_id: 1,
                },
                owner_context: true,
                from_backup: false,
                connect_end: None,
                timewait_read: None,
            },
            old: TcpState::Established,
            new: TcpState::Close,
            local,
            remote,
            owner: None,
            owner_cgroup: 0,
            owner_method: None,
            dwell_ns: None,
            note: None,
        }
    }

    /// A ->CLOSE line at 1 s, just applied.
    fn holding_a_close() -> Pending {
        let mut p = Pending {
            newest_ns: 1_000 * MS,
            ..Default::default()
        };
        p.push(close_line(1_000 * MS));
        p
    }

    #[test]
    fn a_line_waits_for_event_time_not_the_clock() {
        let mut p = holding_a_close();
        // The reader's clock runs on while the CPU that owes the RST stalls: the line waits.
        assert!(p.pop_due(1_100 * MS, false).is_none());
        // So a RST that arrives late still finds it.
        assert!(p.get_mut(p.closes.get(&(1, 7)).copied()).is_some());
        // Any event HOLD_NS newer releases it.
        p.newest_ns = 1_000 * MS + HOLD_NS;
        assert!(p.pop_due(1_100 * MS, false).is_some());
        assert!(p.closes.is_empty(), "its index goes with it");
    }

    #[test]
    fn a_close_without_its_local_port_is_left_to_the_kernel_filter() {
        let port = Filters {
            ports: vec![8080],
            ..Default::default()
        };
        // An accepted socket first seen at LAST_ACK -> CLOSE: local port 0, the peer's port.
        let mut l = close_line(1);
        l.old = TcpState::LastAck;
        l.local = "127.0.0.1:0".parse().unwrap();
        l.remote = "127.0.0.1:40000".parse().unwrap();
        assert!(wanted(&port, &l));
        // Addresses still decide it.
        let v6 = Filters {
            family: Some(crate::filter::Family::V6),
            ..Default::default()
        };
        assert!(!wanted(&v6, &l));
        // With its local port known, ports decide.
        l.local = "127.0.0.1:9090".parse().unwrap();
        assert!(!wanted(&port, &l));
        l.local = "127.0.0.1:8080".parse().unwrap();
        assert!(wanted(&port, &l));
    }

    #[test]
    fn a_quiet_stream_releases_lines_on_the_clock() {
        let mut p = holding_a_close();
        assert!(p.pop_due(1_000 * MS + IDLE_HOLD_NS - 1, false).is_none());
        assert!(p.pop_due(1_000 * MS + IDLE_HOLD_NS, false).is_some());
        p.push(close_line(2_000 * MS));
        assert!(
            p.pop_due(2_000 * MS, true).is_some(),
            "the end releases all"
        );
    }
}
