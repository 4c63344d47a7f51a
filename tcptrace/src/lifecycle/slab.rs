//! Entry storage that grows in fixed chunks, so its spare capacity stays under one chunk
//! (a doubling `Vec` would hold up to twice the live entries right after it grows).

use std::ops::{Index, IndexMut};

use super::entry::Entry;

const CHUNK_BITS: u32 = 10;
const CHUNK: usize = 1 << CHUNK_BITS;

#[derive(Default)]
pub(super) struct Slab {
    chunks: Vec<Vec<Entry>>,
    len: usize,
}

impl Slab {
    pub fn new() -> Slab {
        Slab::default()
    }

    /// Slots ever used (live or free).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn push(&mut self, e: Entry) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks.last_mut().expect("a chunk with room").push(e);
        self.len += 1;
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.chunks.iter().flatten()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.chunks.iter_mut().flatten()
    }

    pub fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Vec<Entry>>()
            + self.chunks.iter().map(|c| c.capacity()).sum::<usize>() * std::mem::size_of::<Entry>()
    }
}

impl Index<usize> for Slab {
    type Output = Entry;
    fn index(&self, i: usize) -> &Entry {
        &self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)]
    }
}

impl IndexMut<usize> for Slab {
    fn index_mut(&mut self, i: usize) -> &mut Entry {
        &mut self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)]
    }
}
