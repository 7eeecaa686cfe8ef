//! Compact storage for the chunk registers of one array incarnation.
//!
//! Arrays hold millions of chunks, so the layout matters: entries sit densely in
//! fixed-size segments and a table of 4-byte slot numbers indexes them. Keys of up to
//! 22 bytes (all ordinary chunk keys) are stored inline, so a chunk costs no heap
//! allocation of its own, and growth never copies or doubles the entries.

use std::hash::{BuildHasher, RandomState};

const INLINE: usize = 22;

/// A string stored inline when short: 24 bytes, no heap allocation for chunk keys.
#[derive(Clone)]
pub(crate) enum SmallStr {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<str>),
}

impl SmallStr {
    pub(crate) fn new(s: &str) -> Self {
        if s.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            SmallStr::Inline {
                len: s.len() as u8,
                buf,
            }
        } else {
            SmallStr::Heap(s.into())
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // SAFETY: `buf[..len]` was copied from a `&str` in `new` and is never
            // modified, so it is valid UTF-8. Checking it again on every comparison
            // and hash cost a third of the fold's time.
            SmallStr::Inline { len, buf } => unsafe {
                std::str::from_utf8_unchecked(&buf[..*len as usize])
            },
            SmallStr::Heap(s) => s,
        }
    }
}

impl std::fmt::Debug for SmallStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Entries per storage segment. Segments never move, so growing the map never
/// copies entries and never holds two copies at once (that was the memory peak).
const SEGMENT: usize = 4096;

/// A map from chunk key to value. Entries (key inline, value) live in fixed-size
/// segments; a raw hash table of 4-byte slot numbers indexes them. Keys are hashed
/// with std's keyed hasher, since chunk keys come from untrusted change files.
#[derive(Clone)]
pub(crate) struct ChunkMap<V> {
    index: hashbrown::HashTable<u32>,
    segments: Vec<Vec<(SmallStr, V)>>,
    free: Vec<u32>,
    hasher: RandomState,
}

impl<V: std::fmt::Debug> std::fmt::Debug for ChunkMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> Default for ChunkMap<V> {
    fn default() -> Self {
        ChunkMap {
            index: hashbrown::HashTable::new(),
            segments: Vec::new(),
            free: Vec::new(),
            hasher: RandomState::new(),
        }
    }
}

fn entry_at<V>(segments: &[Vec<(SmallStr, V)>], slot: u32) -> &(SmallStr, V) {
    let slot = slot as usize;
    &segments[slot / SEGMENT][slot % SEGMENT]
}

impl<V> ChunkMap<V> {
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn slot_of(&self, key: &str) -> Option<u32> {
        let segments = &self.segments;
        self.index
            .find(self.hash(key), |&s| entry_at(segments, s).0.as_str() == key)
            .copied()
    }

    /// The value at `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&V> {
        self.slot_of(key).map(|s| &entry_at(&self.segments, s).1)
    }

    /// A mutable reference to the value at `key`.
    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let s = self.slot_of(key)? as usize;
        Some(&mut self.segments[s / SEGMENT][s % SEGMENT].1)
    }

    /// Stores an entry in a free slot or at the end; returns its slot number.
    fn store(&mut self, key: &str, value: V) -> u32 {
        if let Some(s) = self.free.pop() {
            let i = s as usize;
            self.segments[i / SEGMENT][i % SEGMENT] = (SmallStr::new(key), value);
            return s;
        }
        if self.segments.last().is_none_or(|seg| seg.len() == SEGMENT) {
            self.segments.push(Vec::with_capacity(SEGMENT));
        }
        let n = self.segments.len() - 1;
        let seg = &mut self.segments[n];
        seg.push((SmallStr::new(key), value));
        (n * SEGMENT + seg.len() - 1) as u32
    }

    /// Updates the value at `key` with `update(value, arg)`, or inserts `insert(arg)`:
    /// one hash and one probe when the key exists.
    pub(crate) fn upsert<T>(
        &mut self,
        key: &str,
        arg: T,
        update: impl FnOnce(&mut V, T),
        insert: impl FnOnce(T) -> V,
    ) {
        let hash = self.hash(key);
        let found = {
            let segments = &self.segments;
            self.index
                .find(hash, |&s| entry_at(segments, s).0.as_str() == key)
                .copied()
        };
        match found {
            Some(s) => {
                let i = s as usize;
                update(&mut self.segments[i / SEGMENT][i % SEGMENT].1, arg);
            }
            None => {
                let slot = self.store(key, insert(arg));
                let (segments, hasher) = (&self.segments, &self.hasher);
                self.index.insert_unique(hash, slot, |&s| {
                    hasher.hash_one(entry_at(segments, s).0.as_str())
                });
            }
        }
    }

    /// Removes the value at `key`; its slot keeps a stale value until reused.
    pub(crate) fn remove(&mut self, key: &str) -> bool {
        let hash = self.hash(key);
        let segments = &self.segments;
        match self
            .index
            .find_entry(hash, |&s| entry_at(segments, s).0.as_str() == key)
        {
            Ok(e) => {
                let (slot, _) = e.remove();
                self.free.push(slot);
                true
            }
            Err(_) => false,
        }
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// All entries, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.index.iter().map(|&s| {
            let (k, v) = entry_at(&self.segments, s);
            (k.as_str(), v)
        })
    }

    /// All keys, in no particular order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_str_inline_and_heap() {
        assert!(matches!(SmallStr::new("c/1/2/3"), SmallStr::Inline { .. }));
        let long = "c/".repeat(20);
        assert!(matches!(SmallStr::new(&long), SmallStr::Heap(_)));
        assert_eq!(SmallStr::new(&long).as_str(), long);
        assert_eq!(std::mem::size_of::<SmallStr>(), 24);
    }

    #[test]
    fn map_behaves_like_a_map_with_slot_reuse() {
        let mut m = ChunkMap::default();
        let mut reference = std::collections::BTreeMap::new();
        for i in 0..5000u32 {
            let k = format!("c/{}/{}", i % 97, i / 97);
            m.upsert(&k, (), |v, ()| *v += 1, |()| 0u32);
            *reference.entry(k).or_insert(0u32) += 0;
            if i % 7 == 0 {
                let k = format!("c/{}/{}", (i * 3) % 97, (i * 3) / 97);
                assert_eq!(m.remove(&k), reference.remove(&k).is_some());
            }
        }
        assert_eq!(m.len(), reference.len());
        let mut keys: Vec<&str> = m.keys().collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            reference.keys().map(String::as_str).collect::<Vec<_>>()
        );
        for k in reference.keys() {
            assert!(m.get(k).is_some());
        }
    }
}
