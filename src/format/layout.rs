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
//! <prefix>/.crdt/config.json                       settings: the minimum GC window
//! <prefix>/.crdt/quarantine/<relative key>         objects `verify --quarantine` moved aside
//! ```

use serde::Serialize;

use crate::format::ids::{ActorId, BlobHash, ChangeHash, ObjectHash};
use object_store::path::Path;

const CRDT: &str = ".crdt";
const OPS: &str = "ops";
const BLOBS: &str = "blobs";
const SNAPSHOTS: &str = "snapshots";
const MANIFESTS: &str = "manifests";
const ARCHIVE: &str = "archive";
const LATEST: &str = "latest";
const CLOCK: &str = "clock";
const CONFIG: &str = "config.json";
const QUARANTINE: &str = "quarantine";
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

/// The kinds of object crzarr writes under `.crdt/`: the one list of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// `.crdt/ops/` change files.
    Change,
    /// `.crdt/blobs/` chunk bytes.
    Blob,
    /// `.crdt/snapshots/` metadata.
    Snapshot,
    /// `.crdt/manifests/` chunk-manifest pieces.
    Manifest,
    /// `.crdt/archive/` coverage shards.
    Archive,
}

impl ObjectKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [ObjectKind; 5] = [
        ObjectKind::Change,
        ObjectKind::Blob,
        ObjectKind::Snapshot,
        ObjectKind::Manifest,
        ObjectKind::Archive,
    ];
}

/// What a key under `.crdt/` is, by its name alone ([`Layout::parse_key`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketKey {
    /// `.crdt/repo.json`.
    Marker,
    /// `.crdt/latest`.
    LatestHint,
    /// `.crdt/clock`.
    ClockProbe,
    /// `.crdt/config.json`.
    Config,
    /// A change file under `.crdt/ops/`.
    Change(ChangeName),
    /// A blob under `.crdt/blobs/`.
    Blob(BlobHash),
    /// Snapshot metadata under `.crdt/snapshots/`.
    Snapshot(SnapshotName),
    /// A chunk-manifest piece under `.crdt/manifests/`.
    Manifest(ObjectHash),
    /// A coverage archive shard under `.crdt/archive/`.
    Archive(ObjectHash),
    /// Anything under `.crdt/quarantine/`, moved aside by `verify --quarantine`.
    Quarantined,
}

impl Layout {
    /// The folder holding objects of `kind`.
    pub fn dir(&self, kind: ObjectKind) -> Path {
        match kind {
            ObjectKind::Change => self.ops_dir(),
            ObjectKind::Blob => self.blobs_dir(),
            ObjectKind::Snapshot => self.snapshots_dir(),
            ObjectKind::Manifest => self.manifests_dir(),
            ObjectKind::Archive => self.archive_dir(),
        }
    }

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

    /// The directory holding everything crzarr writes: `<prefix>/.crdt`.
    pub fn crdt_dir(&self) -> Path {
        self.crdt()
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

    /// The repository's settings (`RepoConfig`): the one mutable object crzarr keeps
    /// besides the hint and the probe.
    pub fn config(&self) -> Path {
        self.crdt().join(CONFIG)
    }

    /// The directory `verify --quarantine` moves corrupt objects into. Readers, GC,
    /// status and sync never list it.
    pub fn quarantine_dir(&self) -> Path {
        self.crdt().join(QUARANTINE)
    }

    /// Where `verify --quarantine` moves `key`: `.crdt/quarantine/<key relative to
    /// .crdt/>`. `None` for a key outside `.crdt/`, already in quarantine, or `.crdt`
    /// itself.
    pub fn quarantine(&self, key: &Path) -> Option<Path> {
        let rest: Vec<_> = key.prefix_match(&self.crdt())?.collect();
        if rest.is_empty() || rest[0].as_ref() == QUARANTINE {
            return None;
        }
        let mut to = self.quarantine_dir();
        for part in rest {
            to = to.join(part);
        }
        Some(to)
    }

    /// Classifies a listed key under `.crdt/` by its name: `Ok` for every name this
    /// layout defines, `Err` with the reason for anything else (an unknown file).
    pub fn parse_key(&self, key: &Path) -> Result<BucketKey, &'static str> {
        let rest: Vec<_> = key
            .prefix_match(&self.crdt())
            .ok_or("not under .crdt/")?
            .collect();
        let object = |nested: &'static str| {
            if rest.len() != 2 {
                return Err(nested);
            }
            ObjectHash::from_hex(rest[1].as_ref())
                .ok_or("file name is not a 64-digit lower-case hex hash")
        };
        match rest.first().map(|p| p.as_ref()) {
            None => Err("not a file"),
            Some(MARKER) if rest.len() == 1 => Ok(BucketKey::Marker),
            Some(LATEST) if rest.len() == 1 => Ok(BucketKey::LatestHint),
            Some(CLOCK) if rest.len() == 1 => Ok(BucketKey::ClockProbe),
            Some(CONFIG) if rest.len() == 1 => Ok(BucketKey::Config),
            Some(OPS) => self.parse_change_key(key).map(BucketKey::Change),
            Some(SNAPSHOTS) => self.parse_snapshot_key(key).map(BucketKey::Snapshot),
            Some(BLOBS) => object("nested directory under .crdt/blobs/")
                .map(|h| BucketKey::Blob(BlobHash(h.0))),
            Some(MANIFESTS) => {
                object("nested directory under .crdt/manifests/").map(BucketKey::Manifest)
            }
            Some(ARCHIVE) => {
                object("nested directory under .crdt/archive/").map(BucketKey::Archive)
            }
            Some(QUARANTINE) if rest.len() > 1 => Ok(BucketKey::Quarantined),
            Some(_) => Err("not a name crzarr uses under .crdt/"),
        }
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

    #[test]
    fn every_key_the_layout_builds_parses_back_and_nothing_else_does() {
        let l = Layout::new("p");
        let h = ObjectHash::of(b"o");
        let b = BlobHash::of(b"b");
        let c = ChangeName {
            hash: ChangeHash::of(b"c"),
            actor: ActorId::generate(),
            seq: 3,
        };
        let s = SnapshotName {
            covered: 7,
            hash: h,
        };
        assert_eq!(l.parse_key(&l.marker()), Ok(BucketKey::Marker));
        assert_eq!(l.parse_key(&l.latest_hint()), Ok(BucketKey::LatestHint));
        assert_eq!(l.parse_key(&l.clock_probe()), Ok(BucketKey::ClockProbe));
        assert_eq!(l.parse_key(&l.config()), Ok(BucketKey::Config));
        assert_eq!(l.parse_key(&l.change(&c)), Ok(BucketKey::Change(c)));
        assert_eq!(l.parse_key(&l.blob(&b)), Ok(BucketKey::Blob(b)));
        assert_eq!(l.parse_key(&l.snapshot(&s)), Ok(BucketKey::Snapshot(s)));
        assert_eq!(l.parse_key(&l.manifest(&h)), Ok(BucketKey::Manifest(h)));
        assert_eq!(l.parse_key(&l.archive_shard(&h)), Ok(BucketKey::Archive(h)));
        let moved = l.quarantine(&l.change(&c)).unwrap();
        assert_eq!(
            moved.as_ref(),
            format!("p/.crdt/quarantine/ops/{}", c.file_name())
        );
        assert_eq!(l.parse_key(&moved), Ok(BucketKey::Quarantined));
        assert_eq!(l.quarantine(&moved), None, "never quarantined twice");
        assert_eq!(l.quarantine(&Path::from("p/zarr.json")), None);
        for bad in [
            "p/.crdt/notes.txt",
            "p/.crdt/blobs/xyz",
            "p/.crdt/blobs/a/b",
            "p/.crdt/manifests/ABC",
            "p/.crdt/archive/x/y",
            "p/.crdt/ops/x.change",
            "p/.crdt/snapshots/1.snap",
            "p/.crdt/repo.json/x",
            "p/.crdt/other/x",
            "p/.crdt/quarantine",
            "p/zarr.json",
        ] {
            assert!(l.parse_key(&Path::from(bad)).is_err(), "{bad}");
        }
        assert_eq!(
            l.parse_key(&l.blobs_dir().join(h.to_hex().to_uppercase())),
            Err("file name is not a 64-digit lower-case hex hash")
        );
    }
}
