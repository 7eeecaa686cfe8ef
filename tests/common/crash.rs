//! Helpers shared by the crash tests (`tests/crash.rs`, `tests/sync_crash.rs`): a seeded
//! RNG, running a command that may be SIGKILLed, local stores, and which changes a
//! replica holds or covers.

use crzarr::format::ids::ChangeHash;
use crzarr::format::snapshot::{ArchiveShard, SnapshotMeta};
use crzarr::io::store::RepoStore;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIGKILL: i32 = 9;

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

/// How a run of a command ended.
pub struct Finished {
    pub status: ExitStatus,
    /// From spawn to exit (to the kill, when killed).
    pub took: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn killed(&self) -> bool {
        self.status.signal() == Some(SIGKILL)
    }
}

/// Runs `cmd` (its stdout and stderr piped); SIGKILLs it after `kill_after` unless it
/// finished first, looking at most every `poll` whether it has (to learn how long a
/// run takes).
pub fn run_killing(cmd: &mut Command, kill_after: Option<Duration>, poll: Duration) -> Finished {
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let mut took = None;
    if let Some(d) = kill_after {
        while started.elapsed() < d {
            if child.try_wait().unwrap().is_some() {
                took = Some(started.elapsed());
                break;
            }
            std::thread::sleep((d - started.elapsed().min(d)).min(poll));
        }
        if took.is_none() {
            took = Some(started.elapsed());
            // SIGKILL on Unix; harmless when it exited since the last look.
            child.kill().unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    Finished {
        status: out.status,
        took: took.unwrap_or_else(|| started.elapsed()),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn local_store(root: &Path) -> Arc<dyn ObjectStore> {
    Arc::new(LocalFileSystem::new_with_prefix(root).expect("local store"))
}

/// Changes present at a side: listed as files, or covered by its newest snapshot
/// (its change table and its archive shards).
pub async fn present_or_covered(root: &Path) -> HashSet<ChangeHash> {
    let bucket = RepoStore::new(local_store(root), "");
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
