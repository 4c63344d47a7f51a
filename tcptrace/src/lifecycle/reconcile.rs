//! Correcting the table from the kernel's own socket table (NETLINK_SOCK_DIAG), and
//! attributing sockets from an fd scan (`/proc/*/fd` inode -> processes).

use std::collections::HashSet;

use tcptrace_common::TcpState;

use super::addr;
use super::entry::{UNKNOWN_NS, flag};
use super::owner::{Attribution, Comm, Owner};
use super::stats::{FdScanStats, ReconcileStats};
use super::table::{IdKind, SocketTable};
pub use crate::owner::fdscan::FdHolders;
use crate::source::snapshot::{KernelSocket, Snapshot};

/// Tombstones kept around a dump for how long before it was taken (a duplicate close arrives
/// within microseconds of the original), and at least for how long beyond the usual bound
/// (see `SocketTable::tombstone_keep_ns`).
pub(super) const TOMBSTONE_KEEP_NS: u64 = 1_000_000_000;

/// A dumped socket that is a timewait socket: TIME_WAIT, or the FIN_WAIT2 substate (no inode:
/// the full socket and its file are gone).
fn is_timewait_substate(ks: &KernelSocket) -> bool {
    ks.state == TcpState::TimeWait || (ks.state == TcpState::FinWait2 && ks.inode == 0)
}

/// Socket inodes fit in 32 bits (see `Entry::inode`); anything else is treated as unknown.
fn inode32(i: u64) -> u32 {
    u32::try_from(i).unwrap_or(0)
}

/// Sockets (dumped or in the table) handled between two calls of a reconcile's `keep_up`:
/// about 3 ms of work at the ~0.6 µs per socket measured at the cap.
pub const KEEP_UP_EVERY: u32 = 4096;

/// Calls `keep_up` every [`KEEP_UP_EVERY`] steps.
struct Paced<'a> {
    keep_up: &'a mut dyn FnMut(),
    steps: u32,
}

impl<'a> Paced<'a> {
    fn new(keep_up: &'a mut dyn FnMut()) -> Paced<'a> {
        Paced { keep_up, steps: 0 }
    }

    fn step(&mut self) {
        self.steps += 1;
        if self.steps == KEEP_UP_EVERY {
            self.steps = 0;
            (self.keep_up)();
        }
    }
}

impl SocketTable {
    /// Makes the table agree with a dump of the kernel's socket table, which is the truth.
    ///
    /// Sockets are matched by (netns, cookie), else by (netns, 4-tuple). Sockets the kernel has
    /// and we lack are added; states that differ are corrected; ours that the kernel lacks are
    /// removed. The table churns while the dump runs, so a socket whose last event is at or after
    /// `snap.taken_ns` is left alone, and a socket the dump shows but that closed after it was
    /// taken is not brought back. Only namespaces present in the dump are pruned.
    ///
    /// `fd_owners` (taken with the dump) attributes the sockets it knows by inode: added ones
    /// with [`Attribution::Snapshot`], the others with [`Attribution::FdScan`]. This is how
    /// CLOSE_WAIT leaks older than tcptrace are counted and named at startup.
    pub fn reconcile(&mut self, snap: &Snapshot, fd_owners: Option<&FdHolders>) -> ReconcileStats {
        self.reconcile_keeping_up(snap, fd_owners, &mut || {})
    }

    /// As [`Self::reconcile`], calling `keep_up` every [`KEEP_UP_EVERY`] sockets: a live
    /// session reads its rings there (into memory, applying nothing), since a dump at the
    /// TIME_WAIT cap holds 131,072 sockets and takes tens of milliseconds to apply.
    pub fn reconcile_keeping_up(
        &mut self,
        snap: &Snapshot,
        fd_owners: Option<&FdHolders>,
        keep_up: &mut dyn FnMut(),
    ) -> ReconcileStats {
        let mut st = ReconcileStats::default();
        let mut paced = Paced::new(keep_up);
        let taken = snap.taken_ns;

        // Sockets without a complete 4-tuple (a connect still in SYN_SENT on the classic path)
        // can be matched only loosely.
        let mut loose = Vec::new();
        for (i, e) in self.slab.iter_mut().enumerate() {
            paced.step();
            if e.is_free() {
                continue;
            }
            e.flags &= !flag::SEEN;
            if !e.has(flag::IN_TUPLE) && !e.is_listener() && !e.is_mini() {
                loose.push(i as u32);
            }
        }
        let (closed_cookies, closed_tuples) = self.closed_since(taken);

        let mut added = Vec::new();
        // Listeners first, so the accepted sockets added after them inherit their owner.
        for listeners in [true, false] {
            for ks in snap
                .sockets
                .iter()
                .filter(|k| (k.state == TcpState::Listen) == listeners)
            {
                paced.step();
                if let Some(s) = self.match_kernel(ks, &loose) {
                    self.correct(s, ks, taken, &mut st);
                    self.close_wait_clues(s, ks, taken, &mut st);
                    continue;
                }
                if matches!(ks.state, TcpState::SynRecv | TcpState::NewSynRecv) {
                    st.skipped_transient += 1;
                    continue;
                }
                let gone = (ks.cookie != 0 && closed_cookies.contains(&(ks.netns, ks.cookie)))
                    || closed_tuples
                        .contains(&self.stable_tuple_hash(ks.netns, &ks.local, &ks.remote));
                if gone {
                    st.skipped_closed += 1;
                    continue;
                }
                let s = self.add_kernel(ks, taken);
                self.close_wait_clues(s, ks, taken, &mut st);
                if let Some(fd) = fd_owners {
                    // Now, so that sockets accepted from this listener can inherit its owner.
                    self.attribute_by_fd(s, fd, Attribution::Snapshot);
                }
                added.push(s);
                if self.unreported(ks) {
                    st.learned += 1;
                } else {
                    st.added += 1;
                }
            }
        }

        let dumped: HashSet<u32> = snap.sockets.iter().map(|k| k.netns).collect();
        for slot in 0..self.slab.len() as u32 {
            paced.step();
            let e = &self.slab[slot as usize];
            if e.is_free() || e.has(flag::SEEN) || !dumped.contains(&e.netns) {
                continue;
            }
            if e.last_ns < taken {
                st.removed += 1;
                self.free(slot);
            } else {
                st.kept_newer += 1;
            }
        }

        if let Some(fd) = fd_owners {
            let added: HashSet<u32> = added.into_iter().collect();
            self.fd_scan(fd, Attribution::FdScan, |s| !added.contains(&s));
        }
        // The next dump will likely take as long to arrive: closes that recent must be
        // remembered past the usual bound (see `bury`). The newest close stands for now.
        let lag = self
            .tombstones
            .back()
            .map_or(0, |t| t.ts.saturating_sub(taken));
        self.tombstone_keep_ns = lag.saturating_mul(2).max(TOMBSTONE_KEEP_NS);
        self.tombstones
            .retain(|t| t.ts.saturating_add(TOMBSTONE_KEEP_NS) >= taken);
        self.stats.corrections.add(&st);
        st
    }

    /// Sets or confirms the owners of sockets known by inode from a `/proc/*/fd` scan. Exact for
    /// CLOSE_WAIT leaks: the leaking process still holds the fd.
    pub fn apply_fd_scan(&mut self, fd_owners: &FdHolders) -> FdScanStats {
        self.fd_scan(fd_owners, Attribution::FdScan, |_| true)
    }

    fn fd_scan(
        &mut self,
        fd: &FdHolders,
        how: Attribution,
        want: impl Fn(u32) -> bool,
    ) -> FdScanStats {
        let mut st = FdScanStats::default();
        for slot in 0..self.slab.len() as u32 {
            let e = &self.slab[slot as usize];
            if e.is_free() || e.inode == 0 || !want(slot) {
                continue;
            }
            match self.attribute_by_fd(slot, fd, how) {
                Some(true) => st.assigned += 1,
                Some(false) => st.confirmed += 1,
                None => {}
            }
        }
        self.stats.fd_scans.confirmed += st.confirmed;
        self.stats.fd_scans.assigned += st.assigned;
        st
    }

    /// Some(true): owner set or changed; Some(false): confirmed; None: the scan does not know
    /// the socket.
    fn attribute_by_fd(&mut self, slot: u32, fd: &FdHolders, how: Attribution) -> Option<bool> {
        let e = &self.slab[slot as usize];
        let holders = fd.get(&(e.inode as u64)).filter(|h| !h.is_empty())?;
        if let Some(cur) = self.owners.get(e.owner)
            && holders.iter().any(|p| p.pid == cur.pid)
        {
            // A guess the scan confirms becomes a fact; an exact kernel-context owner stays.
            if Attribution::from_u8(e.attribution) == Some(Attribution::Listener) {
                self.slab[slot as usize].attribution = how.to_u8();
            }
            return Some(false);
        }
        // Several holders (fork, fd passing): the lowest pid, usually the parent.
        let holder = holders
            .iter()
            .filter(|p| p.pid != 0)
            .min_by_key(|p| p.pid)?;
        let owner = Owner {
            pid: holder.pid,
            comm: Comm::new(&holder.comm),
            cgroup_id: 0,
        };
        self.set_owner(slot, &owner, how);
        Some(true)
    }

    /// Our entry for a kernel socket: by cookie, by 4-tuple, or loosely for a socket whose local
    /// port we never learned.
    fn match_kernel(&self, ks: &KernelSocket, loose: &[u32]) -> Option<u32> {
        let unseen = |s: &u32| !self.slab[*s as usize].has(flag::SEEN);
        if let Some(s) = self
            .find_id(ks.netns, IdKind::Cookie, ks.cookie)
            .filter(unseen)
        {
            return Some(s);
        }
        let listener = ks.state == TcpState::Listen;
        let cookie_ok = |c: u64| c == 0 || ks.cookie == 0 || c == ks.cookie;
        if let Some(t) = addr::lookup(&self.v6, &ks.local, &ks.remote) {
            let found = self.tuple_slots(ks.netns, &t).find(|s| {
                let e = &self.slab[*s as usize];
                unseen(s) && e.is_listener() == listener && cookie_ok(e.cookie)
            });
            if found.is_some() {
                return found;
            }
        }
        if listener {
            return None;
        }
        loose.iter().copied().find(|s| {
            let e = &self.slab[*s as usize];
            let l = addr::local(&self.v6, &e.tuple);
            unseen(s)
                && !e.is_free()
                && e.netns == ks.netns
                && cookie_ok(e.cookie)
                && addr::remote(&self.v6, &e.tuple) == ks.remote
                && (l.port() == 0 || l.port() == ks.local.port())
                && (l.ip().is_unspecified() || l.ip() == ks.local.ip())
        })
    }

    /// Brings a matched entry in line with the kernel.
    fn correct(&mut self, slot: u32, ks: &KernelSocket, taken: u64, st: &mut ReconcileStats) {
        let e = &mut self.slab[slot as usize];
        e.flags |= flag::SEEN;
        let inode = inode32(ks.inode);
        if inode != 0 && e.inode != inode {
            e.inode = inode;
            st.inode_learned += 1;
        }
        if e.cookie == 0 && ks.cookie != 0 {
            e.cookie = ks.cookie;
            st.cookie_learned += 1;
        }
        let newer = e.last_ns >= taken;
        let complete = e.tuple.is_complete(e.is_listener());
        let same = addr::lookup(&self.v6, &ks.local, &ks.remote) == Some(e.tuple);
        if !same && (!newer || !complete) {
            self.set_tuple(slot, &ks.local, &ks.remote);
            if self.tuple_index_if_complete(slot) && !self.slab[slot as usize].is_listener() {
                let mut a = super::change::Applied::new(super::change::Outcome::Applied);
                self.displace(slot, taken, &mut a);
            }
            st.tuple_fixed += 1;
        }
        let e = &self.slab[slot as usize];
        if e.state() == ks.state {
            return;
        }
        if newer {
            st.kept_newer += 1;
            return;
        }
        if !e.is_mini() && self.unreported(ks) {
            // Summary mode: a transition the kernel follows without a record.
            self.set_state(slot, ks.state);
            let e = &mut self.slab[slot as usize];
            e.since_ns = UNKNOWN_NS;
            e.last_ns = taken;
            st.learned += 1;
            return;
        }
        // A timewait socket gets no more events; only its substate can change unseen.
        let substate = e.is_mini() && is_timewait_substate(ks);
        if substate {
            st.substate_fixed += 1;
        } else {
            st.state_fixed += 1;
            st.transitions_missed += super::gap::fewest_transitions(e.state(), ks.state);
        }
        log::debug!(
            "{} fixed: ours {} (last event {} us before the dump), the kernel's {}: {} -> {}",
            if substate { "substate" } else { "state" },
            e.state().name(),
            taken.saturating_sub(e.last_ns) / 1000,
            ks.state.name(),
            ks.local,
            ks.remote,
        );
        match ks.state {
            TcpState::TimeWait => {
                let since = self.timewait_since(ks, taken);
                if e.is_mini() {
                    self.set_state(slot, TcpState::TimeWait);
                    self.slab[slot as usize].since_ns = since;
                    self.slab[slot as usize].last_ns = taken;
                } else {
                    self.become_mini(slot, TcpState::TimeWait, since, taken);
                }
            }
            TcpState::FinWait2 if e.is_mini() || ks.inode == 0 => {
                // The orphan FIN_WAIT2 substate of a timewait socket.
                if !e.is_mini() {
                    self.become_mini(slot, TcpState::FinWait2, UNKNOWN_NS, taken);
                }
                self.set_state(slot, TcpState::FinWait2);
                let last = self.fin_wait2_born(ks, taken);
                let e = &mut self.slab[slot as usize];
                e.since_ns = UNKNOWN_NS;
                e.last_ns = last;
            }
            s => {
                self.set_state(slot, s);
                let e = &mut self.slab[slot as usize];
                e.flags &= !flag::MINI;
                e.since_ns = UNKNOWN_NS;
                e.last_ns = taken;
                if s == TcpState::Listen && !e.is_listener() {
                    e.flags |= flag::LISTENER;
                    self.listener_insert(slot);
                }
            }
        }
        let d = self.mini_deadline(slot);
        if self.slab[slot as usize].is_mini() {
            self.schedule_expiry(slot, d);
        }
    }

    /// What the kernel's table tells about a CLOSE_WAIT socket that no event can: why it is
    /// stuck (its receive queue, every snapshot) and, when its entry was not seen, about when
    /// it entered CLOSE_WAIT (the time since the peer's last segment, its FIN).
    fn close_wait_clues(
        &mut self,
        slot: u32,
        ks: &KernelSocket,
        taken: u64,
        st: &mut ReconcileStats,
    ) {
        let e = &mut self.slab[slot as usize];
        if ks.state != TcpState::CloseWait || e.state() != TcpState::CloseWait || e.is_mini() {
            return;
        }
        let cause = super::LeakCause::of_rqueue(ks.rqueue).to_bits();
        e.flags = (e.flags & !flag::CAUSE) | (cause << flag::CAUSE_SHIFT);
        let Some(ms) = ks.last_recv_ms else {
            return;
        };
        let estimate = taken.saturating_sub(u64::from(ms) * 1_000_000);
        if e.since_ns == UNKNOWN_NS {
            e.since_ns = estimate;
            e.flags |= flag::SINCE_ESTIMATED;
            st.close_wait_dated += 1;
        } else if e.has(flag::SINCE_ESTIMATED) {
            // A later segment from the peer (a keepalive's ACK) only makes the clock younger.
            e.since_ns = e.since_ns.min(estimate);
        }
    }

    /// A state summary mode reports no record for: only the kernel's table shows it.
    fn unreported(&self, ks: &KernelSocket) -> bool {
        self.summary && !is_timewait_substate(ks) && !super::summary::followed(ks.state)
    }

    /// TIME_WAIT started `TCP_TIMEWAIT_LEN - timer` before the dump.
    fn timewait_since(&self, ks: &KernelSocket, taken: u64) -> u64 {
        match ks.timer_ms {
            Some(ms) => {
                let left = (ms as u64 * 1_000_000).min(self.limits.timewait_len_ns);
                taken.saturating_sub(self.limits.timewait_len_ns - left)
            }
            None => UNKNOWN_NS,
        }
    }

    /// When a FIN_WAIT2 timewait socket was created: `tcp_fin_timeout - timer` before the dump.
    fn fin_wait2_born(&self, ks: &KernelSocket, taken: u64) -> u64 {
        match ks.timer_ms {
            Some(ms) => {
                let left = (ms as u64 * 1_000_000).min(self.limits.fin_timeout_ns);
                taken.saturating_sub(self.limits.fin_timeout_ns - left)
            }
            None => taken,
        }
    }

    /// Adds a socket only the kernel knew.
    fn add_kernel(&mut self, ks: &KernelSocket, taken: u64) -> u32 {
        let mini = is_timewait_substate(ks);
        let listener = ks.state == TcpState::Listen;
        let mut e = Self::blank(ks.netns, ks.state, taken);
        e.cookie = ks.cookie;
        e.inode = inode32(ks.inode);
        e.flags |= flag::UNBOUND | flag::SEEN;
        if mini {
            e.flags |= flag::MINI;
            if ks.state == TcpState::TimeWait {
                e.since_ns = self.timewait_since(ks, taken);
            } else {
                e.last_ns = self.fin_wait2_born(ks, taken);
            }
        }
        if listener {
            e.flags |= flag::LISTENER;
        }
        let slot = self.alloc(e, &ks.local, &ks.remote);
        if ks.cookie != 0 {
            self.id_insert(slot, IdKind::Cookie);
        }
        self.tuple_index_if_complete(slot);
        if listener {
            self.listener_insert(slot);
        } else if let Some(l) = self.listener_for(ks.netns, &ks.local) {
            self.copy_owner(slot, l, Attribution::Listener);
            self.slab[slot as usize].flags |= flag::PASSIVE;
        }
        if mini {
            let d = self.mini_deadline(slot);
            self.schedule_expiry(slot, d);
        }
        slot
    }

    /// Cookies and 4-tuples of sockets that left the table at or after `taken`.
    fn closed_since(&self, taken: u64) -> (HashSet<(u32, u64)>, HashSet<u64>) {
        let mut cookies = HashSet::new();
        let mut tuples = HashSet::new();
        for t in self.tombstones.iter().filter(|t| t.ts >= taken) {
            if t.cookie != 0 {
                cookies.insert((t.netns, t.cookie));
            }
            tuples.insert(t.tuple_hash);
        }
        (cookies, tuples)
    }
}
