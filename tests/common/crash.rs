//! Helpers shared by the crash tests (`tests/crash.rs`, `tests/sync_crash.rs`): a seeded
//! RNG, local stores, and which changes a replica holds or covers.

use crzarr::bucket::Bucket;
use crzarr::ids::ChangeHash;
use crzarr::snapshot::{ArchiveShard, SnapshotMeta};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

/// xorshift64*: small, seeded, good enough to pick moments and sizes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

pub fn local_store(root: &Path) -> Arc<dyn ObjectStore> {
    Arc::new(LocalFileSystem::new_with_prefix(root).expect("local store"))
}

/// Changes present at a side: listed as files, or covered by its newest snapshot
/// (its change table and its archive shards).
pub async fn present_or_covered(root: &Path) -> HashSet<ChangeHash> {
    let bucket = Bucket::new(local_store(root), "");
    let (listed, _) = bucket.list_changes().await.unwrap();
    let mut out: HashSet<ChangeHash> = listed.iter().map(|c| c.name.hash).collect();
    let (snaps, _) = bucket.list_snapshots().await.unwrap();
    if let Some(newest) = snaps.first() {
        let bytes = bucket.get(&newest.key, u64::MAX).await.unwrap().unwrap();
        let meta = SnapshotMeta::decode(newest.key.as_ref(), &bytes, &newest.name.hash).unwrap();
        out.extend(meta.changes.iter().map(|c| c.hash));
        for h in meta.archive.iter().flatten() {
            let key = bucket.layout().archive_shard(h);
            let b = bucket.get(&key, u64::MAX).await.unwrap().unwrap();
            let shard = ArchiveShard::decode(key.as_ref(), &b, h).unwrap();
            out.extend(shard.changes.iter().map(|c| c.hash));
        }
    }
    out
}
