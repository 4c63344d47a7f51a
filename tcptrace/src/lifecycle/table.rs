//! The socket table: storage, indexes and bookkeeping shared by `apply`, `reconcile`, `expire`.
//!
//! Memory: entries live in one slab (80 bytes each, grown in fixed chunks, free slots chained
//! through the entry). The identity and 4-tuple indexes are `HashTable<u32>` holding only slot numbers and
//! hashing through the slab, so each index costs 5 bytes per bucket. Owners and IPv6 addresses
//! are interned. Timewait sockets' deadlines wait in a min-heap (16 bytes each). See
//! `tests/perf.rs` for the measured bytes per socket.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::BuildHasher;
use std::net::SocketAddr;

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use tcptrace_common::TcpState;

use super::addr::{self, Tuple, V6Pool};
use super::change::SockInfo;
use super::entry::{Entry, UNKNOWN_NS, flag};
use super::owner::{Attribution, Owner, OwnerPool};
use super::slab::Slab;
use super::stats::{StateCounts, TableStats};

/// `TCP_TIMEWAIT_LEN`: how long a timewait socket lives in TIME_WAIT.
/// <https://github.com/torvalds/linux/blob/v6.1/include/net/tcp.h>
pub const TIMEWAIT_LEN_NS: u64 = 60_000_000_000;

/// Bounds and kernel timings the table works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most sockets tracked at once (full and timewait). Beyond it the oldest timewait sockets,
    /// then the least recently active sockets, are evicted.
    pub max_sockets: usize,
    /// TIME_WAIT duration (`TCP_TIMEWAIT_LEN`, not tunable in Linux).
    pub timewait_len_ns: u64,
    /// Lifetime of an orphaned FIN_WAIT2 timewait socket: `net.ipv4.tcp_fin_timeout` (the caller
    /// reads /proc/sys/net/ipv4/tcp_fin_timeout).
    pub fin_timeout_ns: u64,
    /// Recently closed sockets remembered, so a kernel dump taken before they closed does not
    /// bring them back, and a duplicate close is recognised. More are kept while they are
    /// younger than the last dump took to arrive (see `SocketTable::tombstone_keep_ns`).
    pub max_tombstones: usize,
}

/// Tombstones kept in any case, whatever their age: 40 MB.
const MAX_TOMBSTONES_KEPT: usize = 1 << 20;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_sockets: 1 << 20,
            timewait_len_ns: TIMEWAIT_LEN_NS,
            fin_timeout_ns: 60_000_000_000,
            max_tombstones: 1 << 15,
        }
    }
}

/// Which kernel identity an event or entry is indexed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IdKind {
    Cookie,
    Skaddr,
}

/// A socket that left the table: enough to recognise it in a kernel dump taken before it left,
/// and to recognise a duplicate of its last transition.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tombstone {
    pub netns: u32,
    pub old: u8,
    pub new: u8,
    /// Identity the events used (cookie or skaddr).
    pub key: u64,
    pub cookie: u64,
    /// [`SocketTable::stable_tuple_hash`] of its addresses.
    pub tuple_hash: u64,
    pub ts: u64,
}

/// One socket, as iteration shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketView {
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The state `ss` would show: TIME_WAIT or FIN_WAIT2 for a timewait socket.
    pub state: TcpState,
    /// The full socket is gone; this is the kernel's timewait mini-socket.
    pub timewait_socket: bool,
    /// When the socket entered `state`, when seen.
    pub since_ns: Option<u64>,
    /// When `since_ns` is unknown: an estimate from the kernel's clocks (CLOSE_WAIT sockets
    /// older than tracing; a lower bound of the age).
    pub estimated_since_ns: Option<u64>,
    /// CLOSE_WAIT: why it is stuck, from its receive queue at the last snapshot.
    pub leak_cause: Option<super::LeakCause>,
    pub created_ns: Option<u64>,
    pub last_event_ns: u64,
    pub owner: Option<Owner>,
    pub attribution: Option<Attribution>,
    pub closer: Option<Owner>,
    pub reset: bool,
    pub listener: bool,
    /// Accepted from a listener (inbound connection).
    pub passive: bool,
    pub inode: u64,
    pub cookie: u64,
}

/// Every TCP socket tcptrace knows about, keyed by (netns, cookie or skaddr).
pub struct SocketTable {
    pub(super) slab: Slab,
    /// Head of the free-slot chain (through `Entry::cookie`), `u32::MAX` when empty.
    pub(super) free_head: u32,
    pub(super) len: usize,
    /// Slots by (netns, cookie) or (netns, skaddr).
    pub(super) ids: HashTable<u32>,
    /// Slots by (netns, 4-tuple); several per key are allowed (SO_REUSEPORT listeners).
    pub(super) tuples: HashTable<u32>,
    /// Listener slots by (netns, local port), for accepted sockets to inherit their owner.
    /// hashbrown's default hasher (foldhash), as for the other indexes: std's SipHash cost
    /// more than the rest of an accepted socket's first event.
    pub(super) listeners: HashMap<(u32, u16), Vec<u32>>,
    pub(super) owners: OwnerPool,
    pub(super) v6: V6Pool,
    pub(super) hasher: DefaultHashBuilder,
    pub(super) counts: [u64; 13],
    pub(super) stats: TableStats,
    pub(super) limits: Limits,
    pub(super) tombstones: VecDeque<Tombstone>,
    /// Beyond `Limits::max_tombstones`, tombstones younger than this are kept: twice the time
    /// between the last dump's start and its application, which a close must be remembered
    /// for (see `reconcile`), and at least a second. Learned from the dumps applied, so a
    /// replay keeps the same ones.
    pub(super) tombstone_keep_ns: u64,
    /// When timewait sockets expire: (deadline, slot), earliest first, pushed wherever a
    /// timewait socket's deadline is set or changed (`schedule_expiry`). `expire` pops only what
    /// is due, so its cost follows what expires, not the table's size: a linear scan of the
    /// whole table every 250 ms (~131,000 TIME_WAIT sockets at 40k conn/s) was the tracer's
    /// steady-state cost once they began to expire. An entry is stale when its slot was retired
    /// (an exact end event, a reuse, a reset), reused, or its deadline changed since: `expire`
    /// drops it when the slot's deadline is no longer the one it carries, so the heap holds
    /// about one entry per timewait socket of the last `TIMEWAIT_LEN` and grace.
    pub(super) expiries: BinaryHeap<Reverse<(u64, u32)>>,
    /// Timewait ends come as events for every timewait socket, not only `TW_HOOKED` ones.
    pub(super) exact_timewait_end: bool,
    /// Summary mode: the kernel sends records for CLOSE_WAIT entries and closes only (see
    /// `summary.rs`); other states come from the kernel's table.
    pub(super) summary: bool,
}

impl SocketTable {
    pub fn new(limits: Limits) -> SocketTable {
        SocketTable {
            slab: Slab::new(),
            free_head: u32::MAX,
            len: 0,
            ids: HashTable::new(),
            tuples: HashTable::new(),
            listeners: HashMap::new(),
            owners: OwnerPool::new(),
            v6: V6Pool::new(),
            hasher: DefaultHashBuilder::default(),
            counts: [0; 13],
            stats: TableStats::default(),
            limits,
            tombstones: VecDeque::new(),
            tombstone_keep_ns: super::reconcile::TOMBSTONE_KEEP_NS,
            expiries: BinaryHeap::new(),
            exact_timewait_end: false,
            summary: false,
        }
    }

    /// Timewait sockets whose timer runs out are ended by an event (the fentry hook on
    /// `inet_twsk_free`, or `timer:timer_expire_entry`): the inferred expiry then only retires
    /// those whose event was lost, `EXACT_END_GRACE_NS` after their deadline.
    /// Summary mode (see `lifecycle::summary`): reconciliation takes the states the records do
    /// not report from the kernel's table without counting them as corrections.
    pub fn set_summary_mode(&mut self, on: bool) {
        self.summary = on;
    }

    pub fn set_exact_timewait_end(&mut self, on: bool) {
        if self.exact_timewait_end == on {
            return;
        }
        self.exact_timewait_end = on;
        // Every timewait socket's deadline moved by the grace: scheduled again (once, when the
        // hooks are attached).
        self.expiries.clear();
        for slot in 0..self.slab.len() as u32 {
            let e = &self.slab[slot as usize];
            if !e.is_free() && e.is_mini() {
                let d = self.mini_deadline(slot);
                self.schedule_expiry(slot, d);
            }
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Sockets tracked (full and timewait).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a tracked socket still names this process as its owner or its closer.
    pub fn holds_owner(&self, owner: &Owner) -> bool {
        self.owners.contains(owner)
    }

    /// Sockets by the state `ss` would show, kept incrementally (O(1)).
    pub fn counts(&self) -> StateCounts {
        StateCounts::from_array(self.counts)
    }

    /// Counters: duplicates, mismatches, evictions, corrections.
    pub fn stats(&self) -> &TableStats {
        &self.stats
    }

    /// Transitions the event stream never delivered, at the least: those a socket's next event
    /// showed (it left a state we never saw it enter) and those the kernel-table check found.
    /// Less what the programs counted lost, these are the kernel's uncounted skips
    /// (`LossReport::uncounted`).
    pub fn transitions_missed(&self) -> u64 {
        self.stats.transitions_missed + self.stats.corrections.transitions_missed
    }

    /// Every tracked socket.
    pub fn iter(&self) -> impl Iterator<Item = SocketView> + '_ {
        self.slab
            .iter()
            .filter(|e| !e.is_free())
            .map(|e| self.view(e))
    }

    /// Tracked sockets in the states `keep` selects (cheaper than filtering [`Self::iter`]:
    /// views are built only for those).
    pub fn iter_where(&self, keep: impl Fn(TcpState) -> bool) -> impl Iterator<Item = SocketView> {
        self.slab
            .iter()
            .filter(move |e| !e.is_free() && keep(e.state()))
            .map(|e| self.view(e))
    }

    pub(super) fn view(&self, e: &Entry) -> SocketView {
        SocketView {
            netns: e.netns,
            local: addr::local(&self.v6, &e.tuple),
            remote: addr::remote(&self.v6, &e.tuple),
            state: e.state(),
            timewait_socket: e.is_mini(),
            since_ns: e.since(),
            estimated_since_ns: e.estimated_since(),
            leak_cause: e.leak_cause(),
            created_ns: e.created(),
            last_event_ns: e.last_ns,
            owner: self.owners.get(e.owner),
            attribution: Attribution::from_u8(e.attribution),
            closer: self.owners.get(e.closer),
            reset: e.has(flag::RESET),
            listener: e.is_listener(),
            passive: e.has(flag::PASSIVE),
            inode: e.inode as u64,
            cookie: e.cookie,
        }
    }

    pub(super) fn info(&self, slot: u32) -> SockInfo {
        let e = &self.slab[slot as usize];
        SockInfo {
            netns: e.netns,
            local: addr::local(&self.v6, &e.tuple),
            remote: addr::remote(&self.v6, &e.tuple),
            owner: self.owners.get(e.owner),
            attribution: Attribution::from_u8(e.attribution),
            listener: e.is_listener(),
            passive: e.has(flag::PASSIVE),
        }
    }

    // ---- hashing -------------------------------------------------------------------------

    fn id_hash(h: &DefaultHashBuilder, netns: u32, kind: IdKind, v: u64) -> u64 {
        h.hash_one((netns, kind as u8, v))
    }

    fn entry_id_hash(h: &DefaultHashBuilder, e: &Entry) -> u64 {
        if e.has(flag::ID_COOKIE) {
            Self::id_hash(h, e.netns, IdKind::Cookie, e.cookie)
        } else {
            Self::id_hash(h, e.netns, IdKind::Skaddr, e.skaddr)
        }
    }

    fn tuple_hash(h: &DefaultHashBuilder, netns: u32, t: &Tuple) -> u64 {
        h.hash_one((netns, t))
    }

    /// A hash of the full addresses, valid after the entry (and its interned IPv6 addresses) is
    /// gone: tombstones use it.
    pub(super) fn stable_tuple_hash(&self, netns: u32, l: &SocketAddr, r: &SocketAddr) -> u64 {
        self.hasher.hash_one((netns, l, r))
    }

    // ---- identity index ------------------------------------------------------------------

    pub(super) fn find_id(&self, netns: u32, kind: IdKind, v: u64) -> Option<u32> {
        if v == 0 {
            return None;
        }
        let h = Self::id_hash(&self.hasher, netns, kind, v);
        let slab = &self.slab;
        self.ids
            .find(h, |&s| {
                let e = &slab[s as usize];
                e.netns == netns
                    && match kind {
                        IdKind::Cookie => e.has(flag::ID_COOKIE) && e.cookie == v,
                        IdKind::Skaddr => e.has(flag::ID_SKADDR) && e.skaddr == v,
                    }
            })
            .copied()
    }

    /// Indexes `slot` by its cookie or skaddr (already stored in the entry).
    pub(super) fn id_insert(&mut self, slot: u32, kind: IdKind) {
        self.id_remove(slot);
        let e = &mut self.slab[slot as usize];
        e.flags |= match kind {
            IdKind::Cookie => flag::ID_COOKIE,
            IdKind::Skaddr => flag::ID_SKADDR,
        };
        let h = Self::entry_id_hash(&self.hasher, e);
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.ids
            .insert_unique(h, slot, |&s| Self::entry_id_hash(hasher, &slab[s as usize]));
    }

    pub(super) fn id_remove(&mut self, slot: u32) {
        let e = &self.slab[slot as usize];
        if !e.has(flag::ID_COOKIE | flag::ID_SKADDR) {
            return;
        }
        let h = Self::entry_id_hash(&self.hasher, e);
        if let Ok(found) = self.ids.find_entry(h, |&s| s == slot) {
            found.remove();
        }
        self.slab[slot as usize].flags &= !(flag::ID_COOKIE | flag::ID_SKADDR);
    }

    // ---- 4-tuple index -------------------------------------------------------------------

    /// Slots whose (netns, 4-tuple) is exactly this.
    pub(super) fn tuple_slots(&self, netns: u32, t: &Tuple) -> impl Iterator<Item = u32> + '_ {
        let h = Self::tuple_hash(&self.hasher, netns, t);
        let t = *t;
        self.tuples.iter_hash(h).copied().filter(move |&s| {
            let e = &self.slab[s as usize];
            e.netns == netns && e.tuple == t
        })
    }

    pub(super) fn tuple_insert(&mut self, slot: u32) {
        let e = &mut self.slab[slot as usize];
        if e.has(flag::IN_TUPLE) {
            return;
        }
        e.flags |= flag::IN_TUPLE;
        let h = Self::tuple_hash(&self.hasher, e.netns, &e.tuple);
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.tuples.insert_unique(h, slot, |&s| {
            let e = &slab[s as usize];
            Self::tuple_hash(hasher, e.netns, &e.tuple)
        });
    }

    pub(super) fn tuple_remove(&mut self, slot: u32) {
        let e = &self.slab[slot as usize];
        if !e.has(flag::IN_TUPLE) {
            return;
        }
        let h = Self::tuple_hash(&self.hasher, e.netns, &e.tuple);
        if let Ok(found) = self.tuples.find_entry(h, |&s| s == slot) {
            found.remove();
        }
        self.slab[slot as usize].flags &= !flag::IN_TUPLE;
    }

    /// Replaces the stored addresses (and the 4-tuple index entry).
    pub(super) fn set_tuple(&mut self, slot: u32, local: &SocketAddr, remote: &SocketAddr) {
        self.tuple_remove(slot);
        let listener = self.slab[slot as usize].is_listener();
        if listener {
            self.listener_remove(slot);
        }
        let t = addr::acquire(&mut self.v6, local, remote);
        let old = std::mem::replace(&mut self.slab[slot as usize].tuple, t);
        addr::release(&mut self.v6, &old);
        if listener {
            self.listener_insert(slot);
        }
    }

    /// Indexes the entry's 4-tuple if it is complete enough; true if it was newly indexed.
    pub(super) fn tuple_index_if_complete(&mut self, slot: u32) -> bool {
        let e = &self.slab[slot as usize];
        if e.has(flag::IN_TUPLE) || !e.tuple.is_complete(e.is_listener()) {
            return false;
        }
        self.tuple_insert(slot);
        true
    }

    // ---- listeners -----------------------------------------------------------------------

    pub(super) fn listener_insert(&mut self, slot: u32) {
        let e = &self.slab[slot as usize];
        let v = self.listeners.entry((e.netns, e.tuple.lport)).or_default();
        if !v.contains(&slot) {
            v.push(slot);
        }
    }

    pub(super) fn listener_remove(&mut self, slot: u32) {
        let e = &self.slab[slot as usize];
        let key = (e.netns, e.tuple.lport);
        if let Some(v) = self.listeners.get_mut(&key) {
            v.retain(|&s| s != slot);
            if v.is_empty() {
                self.listeners.remove(&key);
            }
        }
    }

    /// The listener a socket with this local address was accepted from: same netns and port,
    /// same address or a wildcard (0.0.0.0, ::) one.
    pub(super) fn listener_for(&self, netns: u32, local: &SocketAddr) -> Option<u32> {
        let slots = self.listeners.get(&(netns, local.port()))?;
        let mut wildcard = None;
        for &s in slots {
            let ip = addr::ip(
                &self.v6,
                self.slab[s as usize].tuple.v6,
                self.slab[s as usize].tuple.lip,
            );
            if ip == local.ip() {
                return Some(s);
            }
            if ip.is_unspecified() && ip.is_ipv6() == local.is_ipv6() {
                wildcard.get_or_insert(s);
            }
        }
        wildcard
    }

    // ---- slots ---------------------------------------------------------------------------

    /// Stores a new entry (state already set in it) and returns its slot. Makes room first.
    pub(super) fn alloc(&mut self, e: Entry, local: &SocketAddr, remote: &SocketAddr) -> u32 {
        if self.len >= self.limits.max_sockets {
            self.evict_for_room();
        }
        let mut e = e;
        e.tuple = addr::acquire(&mut self.v6, local, remote);
        self.counts[e.state as usize] += 1;
        self.len += 1;
        if self.free_head != u32::MAX {
            let slot = self.free_head;
            self.free_head = self.slab[slot as usize].cookie as u32;
            self.slab[slot as usize] = e;
            slot
        } else {
            self.slab.push(e);
            (self.slab.len() - 1) as u32
        }
    }

    /// Forgets a socket entirely.
    pub(super) fn free(&mut self, slot: u32) {
        self.id_remove(slot);
        self.tuple_remove(slot);
        if self.slab[slot as usize].is_listener() {
            self.listener_remove(slot);
        }
        let e = &mut self.slab[slot as usize];
        let (owner, closer, tuple, state) = (e.owner, e.closer, e.tuple, e.state);
        *e = Entry::new(0);
        e.cookie = self.free_head as u64;
        self.free_head = slot;
        self.owners.release(owner);
        self.owners.release(closer);
        addr::release(&mut self.v6, &tuple);
        self.counts[state as usize] -= 1;
        self.len -= 1;
    }

    /// Forgets a socket that the kernel just destroyed, remembering it as a tombstone.
    pub(super) fn retire(&mut self, slot: u32, ts: u64) {
        self.bury(slot, ts);
        self.free(slot);
    }

    /// Remembers a socket's identity and last transition (it closed, or its full socket did).
    pub(super) fn bury(&mut self, slot: u32, ts: u64) {
        if self.limits.max_tombstones == 0 {
            return;
        }
        let e = &self.slab[slot as usize];
        let l = addr::local(&self.v6, &e.tuple);
        let r = addr::remote(&self.v6, &e.tuple);
        let t = Tombstone {
            netns: e.netns,
            old: e.last_old,
            new: e.last_new,
            key: if e.skaddr != 0 && e.has(flag::ID_SKADDR) {
                e.skaddr
            } else {
                e.cookie
            },
            cookie: e.cookie,
            tuple_hash: self.stable_tuple_hash(e.netns, &l, &r),
            ts,
        };
        // At 40k conn/s a dump of 131,072 sockets arrived 0.3-0.5 s after it began, and one of
        // 527,636 later still, while 80,000 sockets closed per second: the fixed bound alone
        // (32,768) forgot closes the dump still showed, and the check brought 12,718 of them
        // back until the next one removed them.
        let keep_from = ts.saturating_sub(self.tombstone_keep_ns);
        while self.tombstones.len() >= self.limits.max_tombstones
            && self
                .tombstones
                .front()
                .is_some_and(|f| f.ts < keep_from || self.tombstones.len() >= MAX_TOMBSTONES_KEPT)
        {
            self.tombstones.pop_front();
        }
        self.tombstones.push_back(t);
    }

    pub(super) fn set_state(&mut self, slot: u32, s: TcpState) {
        let e = &mut self.slab[slot as usize];
        self.counts[e.state as usize] -= 1;
        if e.state != s as u8 {
            e.flags &= !flag::PER_STATE;
        }
        e.state = s as u8;
        self.counts[s as usize] += 1;
    }

    /// Sets the owner, replacing a weaker attribution (or any, when `force`).
    pub(super) fn set_owner(&mut self, slot: u32, owner: &Owner, how: Attribution) {
        let r = self.owners.acquire(owner);
        let e = &mut self.slab[slot as usize];
        let old = std::mem::replace(&mut e.owner, r);
        e.attribution = how.to_u8();
        self.owners.release(old);
    }

    /// Shares another entry's owner (listener inheritance).
    pub(super) fn copy_owner(&mut self, slot: u32, from: u32, how: Attribution) {
        let r = self.owners.retain(self.slab[from as usize].owner);
        if r == 0 {
            return;
        }
        let e = &mut self.slab[slot as usize];
        let old = std::mem::replace(&mut e.owner, r);
        e.attribution = how.to_u8();
        self.owners.release(old);
    }

    /// Records the socket's current owner as its closer; `exact` when the owner was just set
    /// from the task current at the close (else it is whoever owned the socket before).
    /// Shares the owner's pool reference: no second lookup of the same process.
    pub(super) fn set_closer(&mut self, slot: u32, exact: bool) {
        let r = self.owners.retain(self.slab[slot as usize].owner);
        let e = &mut self.slab[slot as usize];
        let old = std::mem::replace(&mut e.closer, r);
        if exact {
            e.flags |= flag::CLOSER_EXACT;
        } else {
            e.flags &= !flag::CLOSER_EXACT;
        }
        self.owners.release(old);
    }

    /// Marks an entry as new (no state yet): it has `UNKNOWN_NS` times and no owner.
    pub(super) fn blank(netns: u32, state: TcpState, last_ns: u64) -> Entry {
        let mut e = Entry::new(netns);
        e.state = state as u8;
        e.last_ns = last_ns;
        e.since_ns = UNKNOWN_NS;
        e
    }

    /// Heap bytes the table holds, from capacities (allocator overhead aside): for a self-metric
    /// and for the bytes-per-socket measurement.
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let listeners = self.listeners.capacity() * (size_of::<((u32, u16), Vec<u32>)>() + 1)
            + self
                .listeners
                .values()
                .map(|v| v.capacity() * 4)
                .sum::<usize>();
        self.slab.heap_bytes()
            + self.ids.allocation_size()
            + self.tuples.allocation_size()
            + listeners
            + self.owners.heap_bytes()
            + self.v6.heap_bytes()
            + self.tombstones.capacity() * size_of::<Tombstone>()
            + self.expiries.capacity() * size_of::<Reverse<(u64, u32)>>()
    }

    /// The timewait socket in `slot` expires at `deadline` (its `mini_deadline` now): called
    /// wherever that is set or changes, which `expire` relies on (see `expiries`).
    pub(super) fn schedule_expiry(&mut self, slot: u32, deadline: u64) {
        self.expiries.push(Reverse((deadline, slot)));
    }

    /// Interned owners and IPv6 addresses (memory accounting and tests).
    pub fn interned(&self) -> (usize, usize) {
        (self.owners.len(), self.v6.len())
    }
}
