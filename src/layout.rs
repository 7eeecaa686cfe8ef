//! The bucket layout. Every key crzarr reads or writes in the object store is built here.
//!
//! ```text
//! <prefix>/.crdt/repo.json                         marker: format version + repo id
//! <prefix>/.crdt/ops/<hash>-<actor>-<seq>.change   one immutable change file each
//! <prefix>/.crdt/blobs/<hash>                      content-addressed chunk bytes
//! <prefix>/.crdt/snapshots/<count>-<hash>.snap      immutable snapshot metadata
//! <prefix>/.crdt/manifests/<hash>                  chunk-manifest pieces
//! <prefix>/.crdt/archive/<hash>                    coverage archive shards
//! <prefix>/.crdt/latest                            hint: copy of the newest metadata
//! <prefix>/.crdt/clock                             probe GC writes to read the store's time
//! ```

use crate::ids::{ActorId, BlobHash, ChangeHash, ObjectHash};
use object_store::path::Path;

const CRDT: &str = ".crdt";
const OPS: &str = "ops";
const BLOBS: &str = "blobs";
const SNAPSHOTS: &str = "snapshots";
const MANIFESTS: &str = "manifests";
const ARCHIVE: &str = "archive";
const LATEST: &str = "latest";
const CLOCK: &str = "clock";
const SNAPSHOT_SUFFIX: &str = ".snap";
const MARKER: &str = "repo.json";
const CHANGE_SUFFIX: &str = ".change";

/// Where a repository lives inside an object store.
#[derive(Clone, Debug)]
pub struct Layout {
    root: Path,
}

/// What a change file's name says about the change, known without fetching it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChangeName {
    /// blake3 of the file's bytes.
    pub hash: ChangeHash,
    /// The writer.
    pub actor: ActorId,
    /// The writer's sequence number (1-based).
    pub seq: u64,
}

impl ChangeName {
    /// The file name: `<hash>-<actor>-<seq>.change`.
    pub fn file_name(&self) -> String {
        format!("{}-{}-{}{CHANGE_SUFFIX}", self.hash, self.actor, self.seq)
    }

    /// Parses a file name; `None` unless it is exactly in canonical form.
    pub fn parse(name: &str) -> Option<ChangeName> {
        let stem = name.strip_suffix(CHANGE_SUFFIX)?;
        let mut parts = stem.split('-');
        let hash = ChangeHash::from_hex(parts.next()?)?;
        let actor_text = parts.next()?;
        let seq_text = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let actor: ActorId = actor_text.parse().ok()?;
        let seq: u64 = seq_text.parse().ok()?;
        // One canonical spelling per change: no leading zeros, upper-case ULID.
        if seq == 0 || seq.to_string() != seq_text || actor.to_string() != actor_text {
            return None;
        }
        Some(ChangeName { hash, actor, seq })
    }
}

/// What a snapshot's file name says: how many changes it covers, and its hash.
/// Readers open from the greatest name (most changes covered, then hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotName {
    /// Number of changes the snapshot covers.
    pub covered: u64,
    /// blake3 of the metadata object's bytes.
    pub hash: ObjectHash,
}

impl SnapshotName {
    /// The file name: `<covered, 20 digits>-<hash>.snap`.
    pub fn file_name(&self) -> String {
        format!("{:020}-{}{SNAPSHOT_SUFFIX}", self.covered, self.hash)
    }

    /// Parses a file name; `None` unless it is exactly in canonical form.
    pub fn parse(name: &str) -> Option<SnapshotName> {
        let stem = name.strip_suffix(SNAPSHOT_SUFFIX)?;
        let (count, hash) = stem.split_once('-')?;
        if count.len() != 20 || !count.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let covered: u64 = count.parse().ok()?;
        let hash = ObjectHash::from_hex(hash)?;
        let n = SnapshotName { covered, hash };
        (n.file_name() == name).then_some(n)
    }
}

impl Layout {
    /// A layout rooted at `prefix` (may be empty) inside the store.
    pub fn new(prefix: &str) -> Self {
        let prefix = prefix.trim_matches('/');
        Layout {
            root: Path::from_iter(prefix.split('/').filter(|s| !s.is_empty())),
        }
    }

    /// The repository root inside the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn crdt(&self) -> Path {
        self.root.clone().join(CRDT)
    }

    /// The marker written by `init`.
    pub fn marker(&self) -> Path {
        self.crdt().join(MARKER)
    }

    /// The directory of change files (one LIST enumerates all changes).
    pub fn ops_dir(&self) -> Path {
        self.crdt().join(OPS)
    }

    /// The key of a change file.
    pub fn change(&self, name: &ChangeName) -> Path {
        self.ops_dir().join(name.file_name())
    }

    /// The directory of blobs.
    pub fn blobs_dir(&self) -> Path {
        self.crdt().join(BLOBS)
    }

    /// The key of a blob.
    pub fn blob(&self, hash: &BlobHash) -> Path {
        self.blobs_dir().join(hash.to_hex())
    }

    /// The directory of snapshot metadata objects.
    pub fn snapshots_dir(&self) -> Path {
        self.crdt().join(SNAPSHOTS)
    }

    /// The key of a snapshot metadata object.
    pub fn snapshot(&self, name: &SnapshotName) -> Path {
        self.snapshots_dir().join(name.file_name())
    }

    /// The directory of chunk-manifest pieces.
    pub fn manifests_dir(&self) -> Path {
        self.crdt().join(MANIFESTS)
    }

    /// The key of a chunk-manifest piece.
    pub fn manifest(&self, hash: &ObjectHash) -> Path {
        self.manifests_dir().join(hash.to_hex())
    }

    /// The directory of coverage archive shards.
    pub fn archive_dir(&self) -> Path {
        self.crdt().join(ARCHIVE)
    }

    /// The key of a coverage archive shard.
    pub fn archive_shard(&self, hash: &ObjectHash) -> Path {
        self.archive_dir().join(hash.to_hex())
    }

    /// The "latest snapshot" hint: a copy of the newest metadata, only ever a hint.
    pub fn latest_hint(&self) -> Path {
        self.crdt().join(LATEST)
    }

    /// The object garbage collection writes to learn the store's current time.
    pub fn clock_probe(&self) -> Path {
        self.crdt().join(CLOCK)
    }

    /// Parses a listed key under `snapshots_dir`.
    pub fn parse_snapshot_key(&self, key: &Path) -> Result<SnapshotName, &'static str> {
        let mut rest = key
            .prefix_match(&self.snapshots_dir())
            .ok_or("not under .crdt/snapshots/")?;
        let file = rest.next().ok_or("not a file")?;
        if rest.next().is_some() {
            return Err("nested directory under .crdt/snapshots/");
        }
        SnapshotName::parse(file.as_ref()).ok_or("file name is not <count>-<hash>.snap")
    }

    /// Parses a listed key under a content-addressed directory (`dir`) into its hash.
    pub fn parse_object_key(&self, dir: &Path, key: &Path) -> Option<ObjectHash> {
        let mut rest = key.prefix_match(dir)?;
        let file = rest.next()?;
        if rest.next().is_some() {
            return None;
        }
        ObjectHash::from_hex(file.as_ref())
    }

    /// Parses a listed key under `ops_dir`: `Ok(name)` for a change file, `Err` with
    /// the reason for anything else found there.
    pub fn parse_change_key(&self, key: &Path) -> Result<ChangeName, &'static str> {
        let ops = self.ops_dir();
        let mut rest = key.prefix_match(&ops).ok_or("not under .crdt/ops/")?;
        let file = rest.next().ok_or("not a file")?;
        if rest.next().is_some() {
            return Err("nested directory under .crdt/ops/");
        }
        ChangeName::parse(file.as_ref()).ok_or("file name is not <hash>-<actor>-<seq>.change")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_names_round_trip_and_reject_variants() {
        let n = ChangeName {
            hash: ChangeHash::of(b"x"),
            actor: ActorId::generate(),
            seq: 42,
        };
        assert_eq!(ChangeName::parse(&n.file_name()), Some(n));
        let f = n.file_name();
        assert_eq!(ChangeName::parse(&f.replace("-42.", "-042.")), None);
        assert_eq!(ChangeName::parse(&f.replace(".change", ".chg")), None);
        assert_eq!(ChangeName::parse(&f.to_lowercase()), None);
        assert_eq!(ChangeName::parse(&f.replace("-42.", "-0.")), None);
        assert_eq!(ChangeName::parse("garbage"), None);
    }

    #[test]
    fn keys_live_under_prefix() {
        let l = Layout::new("/data/set/");
        assert_eq!(l.marker().as_ref(), "data/set/.crdt/repo.json");
        let h = BlobHash::of(b"b");
        assert_eq!(l.blob(&h).as_ref(), format!("data/set/.crdt/blobs/{h}"));
        let n = ChangeName {
            hash: ChangeHash::of(b"c"),
            actor: ActorId::generate(),
            seq: 1,
        };
        assert_eq!(l.parse_change_key(&l.change(&n)), Ok(n));
        assert!(
            l.parse_change_key(&l.ops_dir().join("x").join("y"))
                .is_err()
        );
        assert_eq!(Layout::new("").marker().as_ref(), ".crdt/repo.json");
    }
}
