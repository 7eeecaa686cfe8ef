//! Compact storage for the chunk registers of one array incarnation.
//!
//! Arrays hold millions of chunks, so the layout matters: registers sit densely in a
//! vector and a hash index maps keys to slots. Keys of up to 22 bytes (all ordinary
//! chunk keys) are stored inline, so a chunk costs no heap allocation of its own.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

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

impl PartialEq for SmallStr {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for SmallStr {}
impl Hash for SmallStr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}
impl Borrow<str> for SmallStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}
impl std::fmt::Debug for SmallStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A map from chunk key to value: values packed densely in a vector, and a hash index
/// of inline keys to their slot. Removed slots are reused.
#[derive(Clone, Debug)]
pub(crate) struct ChunkMap<V> {
    index: HashMap<SmallStr, u32>,
    slots: Vec<V>,
    free: Vec<u32>,
}

impl<V> Default for ChunkMap<V> {
    fn default() -> Self {
        ChunkMap {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<V> ChunkMap<V> {
    /// The value at `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&V> {
        self.index.get(key).map(|&i| &self.slots[i as usize])
    }

    /// A mutable reference to the value at `key`.
    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.index.get(key).map(|&i| &mut self.slots[i as usize])
    }

    /// Updates the value at `key` with `update(value, arg)`, or inserts `insert(arg)`:
    /// one hash probe either way.
    pub(crate) fn upsert<T>(
        &mut self,
        key: &str,
        arg: T,
        update: impl FnOnce(&mut V, T),
        insert: impl FnOnce(T) -> V,
    ) {
        use std::collections::hash_map::Entry;
        match self.index.entry(SmallStr::new(key)) {
            Entry::Occupied(e) => update(&mut self.slots[*e.get() as usize], arg),
            Entry::Vacant(e) => {
                let value = insert(arg);
                let slot = match self.free.pop() {
                    Some(i) => {
                        self.slots[i as usize] = value;
                        i
                    }
                    None => {
                        self.slots.push(value);
                        (self.slots.len() - 1) as u32
                    }
                };
                e.insert(slot);
            }
        }
    }

    /// Removes the value at `key`; its slot keeps a stale value until reused.
    pub(crate) fn remove(&mut self, key: &str) -> bool {
        match self.index.remove(key) {
            Some(i) => {
                self.free.push(i);
                true
            }
            None => false,
        }
    }

    /// Releases spare capacity after a batch of inserts.
    pub(crate) fn shrink(&mut self) {
        self.slots.shrink_to_fit();
        self.index.shrink_to_fit();
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// All entries, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.index
            .iter()
            .map(|(k, &i)| (k.as_str(), &self.slots[i as usize]))
    }

    /// All keys, in no particular order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(SmallStr::as_str)
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
