//! The bucket layout. Every key crzarr reads or writes in the object store is built here.
//!
//! ```text
//! <prefix>/.crdt/repo.json                         marker: format version + repo id
//! <prefix>/.crdt/ops/<hash>-<actor>-<seq>.change   one immutable change file each
//! <prefix>/.crdt/blobs/<hash>                      content-addressed chunk bytes
//! <prefix>/.crdt/snapshots/...                     reserved for snapshots
//! ```

use crate::ids::{ActorId, BlobHash, ChangeHash};
use object_store::path::Path;

const CRDT: &str = ".crdt";
const OPS: &str = "ops";
const BLOBS: &str = "blobs";
const SNAPSHOTS: &str = "snapshots";
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

    /// The directory reserved for snapshots.
    pub fn snapshots_dir(&self) -> Path {
        self.crdt().join(SNAPSHOTS)
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
