//! One copy of each value shared by many socket entries, reference counted, referred to by a
//! 4-byte index: IPv6 addresses and owners. A socket entry stays small, and the pool never
//! holds more values than there are live references.
//!
//! Hand-rolled on `hashbrown::HashTable` rather than an interner crate because entries must be
//! freed when their last socket goes (a busy host's peers and processes come and go), and the
//! key may be a part of the value (an owner is found by pid and name; its cgroup id is learned
//! later and updated in place).

use std::hash::{BuildHasher, Hash};

use hashbrown::{DefaultHashBuilder, HashTable};

/// A value the pool can share.
pub(super) trait Interned: Copy {
    /// What two equal values have in common.
    type Key: Hash + Eq;
    fn key(&self) -> Self::Key;
    /// Takes in what a newly acquired equal value knows better (default: nothing).
    fn update(&mut self, _newer: &Self) {}
}

struct Slot<T> {
    value: T,
    /// References held; 0 means the slot is free.
    refs: u32,
}

pub(super) struct Pool<T: Interned> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    /// Slot indexes, hashed by key.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl<T: Interned> Pool<T> {
    pub fn new() -> Pool<T> {
        Pool {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
        }
    }

    /// The slot of the value with this key, if one is held.
    pub fn find(&self, key: &T::Key) -> Option<u32> {
        let h = self.hasher.hash_one(key);
        self.index
            .find(h, |&i| self.slots[i as usize].value.key() == *key)
            .copied()
    }

    /// Takes one reference to `value` (or to the equal value held, updated from it).
    pub fn acquire(&mut self, value: &T) -> u32 {
        if let Some(i) = self.find(&value.key()) {
            let s = &mut self.slots[i as usize];
            s.refs += 1;
            s.value.update(value);
            return i;
        }
        let slot = Slot {
            value: *value,
            refs: 1,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        let h = self.hasher.hash_one(value.key());
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(h, i, |&j| hasher.hash_one(slots[j as usize].value.key()));
        i
    }

    /// Takes one more reference to a value already held.
    pub fn retain(&mut self, i: u32) {
        self.slots[i as usize].refs += 1;
    }

    /// Drops one reference; the last one frees the slot.
    pub fn release(&mut self, i: u32) {
        let s = &mut self.slots[i as usize];
        s.refs -= 1;
        if s.refs == 0 {
            let h = self.hasher.hash_one(s.value.key());
            if let Ok(e) = self.index.find_entry(h, |&j| j == i) {
                e.remove();
            }
            self.free.push(i);
        }
    }

    pub fn get(&self, i: u32) -> T {
        self.slots[i as usize].value
    }

    /// Heap bytes held (capacity, not length).
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot<T>>()
            + self.free.capacity() * 4
            + self.index.allocation_size()
    }

    /// Values currently referenced.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}
