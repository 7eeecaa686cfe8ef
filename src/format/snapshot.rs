//! Snapshot objects: the byte format of snapshot metadata, chunk-manifest pieces and
//! coverage archive shards (`spec/format.md`, "Snapshots").
//!
//! A snapshot is the fold's CRDT state, not a rendering of it: stamps of every live
//! register entry, tombstones of deleted incarnations, unresolved conflicts and the
//! exact set of changes it covers. A change that arrives later merges onto it as it
//! would have merged onto the full history.
//!
//! Every object is `magic (4) | version (1) | msgpack body`, content-addressed by
//! blake3 of those bytes, and decoded strictly: a bad object is refused with its key.

pub use crate::error::format::SnapshotError;
use crate::error::{CorruptKind, Error, Result};
use crate::format::change::{ChunkReference, Frame};
use crate::format::ids::{ActorId, BlobHash, ChangeHash, Hlc, ObjectHash, RepoId};
use crate::format::layout::SnapshotName;
pub use crate::format::limits::{
    ARCHIVE_SHARDS, MAX_META_BYTES, MAX_PIECE_BYTES, MAX_SHARD_BYTES, PIECE_ENTRIES,
    PIECE_TARGET_BYTES,
};
use serde::{Deserialize, Serialize};

/// Version of the snapshot object format of objects that hold no object register.
pub const SNAPSHOT_VERSION: u8 = 1;
/// Snapshot metadata version of metadata holding objects: 2 is 1 plus
/// [`SnapshotMeta::objects`] and [`RegKey::Object`].
pub const SNAPSHOT_META_OBJECTS_VERSION: u8 = 2;
/// Snapshot metadata version 3 is 2 plus [`PieceRef::first_key`] (pieces that start
/// between two keys of equal coordinates).
pub const SNAPSHOT_META_FIRST_KEY_VERSION: u8 = 3;
/// Newest snapshot metadata version: 4 is 3 plus [`SnapNode::fields`] and
/// [`RegKey::Field`] (array metadata field registers). Metadata is written in the
/// oldest version that holds it ([`SnapshotMeta::format_version`]).
pub const SNAPSHOT_META_VERSION: u8 = 4;
/// Newest manifest piece version: 2 is 1 plus [`SnapChunk::Reference`]. A piece without
/// references is written as version 1 ([`SNAPSHOT_VERSION`]).
pub const PIECE_VERSION: u8 = 2;
const META_MAGIC: &[u8; 4] = b"CRZS";
const PIECE_MAGIC: &[u8; 4] = b"CRZM";
const SHARD_MAGIC: &[u8; 4] = b"CRZA";

/// A change the snapshot covers, with what merging needs of it once its file is gone:
/// its stamp order and op count (to validate later references and clocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoveredChange {
    /// Its hash.
    pub hash: ChangeHash,
    /// Writer.
    pub actor: ActorId,
    /// Writer's sequence number.
    pub seq: u64,
    /// Clock stamp.
    pub hlc: Hlc,
    /// Number of ops.
    pub ops: u32,
}

impl CoveredChange {
    /// The archive shard this change belongs in.
    pub fn shard(hash: &ChangeHash) -> usize {
        (hash.0[0] >> 4) as usize
    }
}

/// A stamp inside a snapshot object: index into that object's change table, op number.
pub type SnapStamp = (u32, u32);

/// The live entries of one attribute register.
pub type AttrRegister = Vec<(SnapStamp, Option<String>)>;

/// What a node incarnation is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapKind {
    /// A group.
    #[serde(rename = "g")]
    Group,
    /// An array, with its stored metadata (canonical JSON without shape variability).
    #[serde(rename = "a")]
    Array(String),
}

/// Where one piece of an array's chunk manifest is, and which keys it holds: from
/// `(first, first_key)` (inclusive) up to the next piece's start, keys ordered by
/// (coordinates, key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceRef {
    /// First chunk coordinates this piece covers.
    pub first: Vec<u64>,
    /// The piece object.
    pub hash: ObjectHash,
    /// Number of chunk keys in it.
    pub keys: u32,
    /// Its size in bytes.
    pub bytes: u64,
    /// First chunk key, among keys with coordinates `first`, this piece covers; `""`
    /// (every key) unless the piece starts between two keys of equal coordinates, such
    /// as keys without grid coordinates. Metadata version 3 only; absent when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub first_key: String,
}

impl PieceRef {
    /// Where this piece's range starts: (coordinates, key).
    pub fn start(&self) -> (&[u64], &str) {
        (&self.first, &self.first_key)
    }
}

/// Refuses to write an object that readers would refuse as too large: writers call
/// this with the same limit readers read with (`what` and `key` name it).
pub(crate) fn check_write_size(what: &str, key: &str, len: usize, limit: u64) -> Result<()> {
    if len as u64 > limit {
        return Err(Error::Limit(format!(
            "{what} {key} would be {len} bytes, over the {limit} bytes readers accept: not written"
        )));
    }
    Ok(())
}

/// One node incarnation, live or deleted (a tombstone keeps path and kind so later
/// edits to it are still recognized and validated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapNode {
    /// The op that created it.
    pub stamp: SnapStamp,
    /// Node path.
    pub path: String,
    /// Group or array.
    pub kind: SnapKind,
    /// Whether it was deleted.
    pub deleted: bool,
    /// Attribute registers: name and live entries (value `None` = deleted).
    pub attrs: Vec<(String, AttrRegister)>,
    /// Dimension registers (arrays).
    pub dims: Vec<Option<Vec<(SnapStamp, u64)>>>,
    /// Chunk manifest pieces (arrays), ascending by `first`.
    pub pieces: Vec<PieceRef>,
    /// Array metadata field registers: name and live entries (value `None` =
    /// removed), ascending by name (metadata version 4; absent when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<(String, AttrRegister)>,
}

/// Which register a superseded-entry record is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RegKey {
    /// An attribute.
    #[serde(rename = "a")]
    Attr(Box<str>),
    /// An array dimension.
    #[serde(rename = "d")]
    Dim(u32),
    /// A chunk.
    #[serde(rename = "c")]
    Chunk(Box<str>),
    /// An object, by store key (its records have path `""`; metadata version 2 only).
    #[serde(rename = "o")]
    Object(Box<str>),
    /// An array metadata field register (metadata version 4 only).
    #[serde(rename = "f")]
    Field(Box<str>),
}

/// Entries named in an `observed` list whose change was not applied yet: if the
/// entry ever arrives at this path and register, it is already superseded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superseded {
    /// Node path.
    pub path: String,
    /// Register.
    pub reg: RegKey,
    /// The entry: change and op.
    pub entry: (ChangeHash, u32),
}

/// A fork recorded by a compactor (same writer and seq, different changes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapFork {
    /// Writer.
    pub actor: ActorId,
    /// Sequence number.
    pub seq: u64,
    /// The distinct changes, ascending.
    pub changes: Vec<ChangeHash>,
}

/// Snapshot metadata: everything but chunk manifests and archived coverage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Repository.
    pub repo: RepoId,
    /// Number of changes covered (the name's count).
    pub covered: u64,
    /// Greatest clock stamp of any covered change.
    pub max_hlc: Hlc,
    /// Covered changes with no covered successor, ascending.
    pub heads: Vec<ChangeHash>,
    /// Covered changes whose files were listed when it was written, the heads, and
    /// changes its stamps refer to, ascending by hash; stamps index this table.
    pub changes: Vec<CoveredChange>,
    /// Every incarnation, live and deleted.
    pub nodes: Vec<SnapNode>,
    /// Records of entries superseded before they arrived.
    pub superseded: Vec<Superseded>,
    /// Coverage archive shards, [`ARCHIVE_SHARDS`] of them (`None` = empty).
    pub archive: Vec<Option<ObjectHash>>,
    /// Forks known when the snapshot was written.
    pub forks: Vec<SnapFork>,
    /// Snapshot names this one covers entirely (may be deleted by GC).
    pub supersedes: Vec<String>,
    /// Writer's wall clock when written (for humans; never used for decisions).
    pub written_ms: u64,
    /// Object registers: store key and live entries, ascending by key (version 2;
    /// absent from the encoding when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectRegister>,
}

/// One object register in a snapshot: its store key and live entries, ascending by
/// stamp order. Values are blobs, inline bytes or tombstones, never references.
pub type ObjectRegister = (String, Vec<(SnapStamp, SnapChunk)>);

/// A chunk value in a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapChunk {
    /// A blob.
    #[serde(rename = "b")]
    Blob {
        /// blake3 of the bytes.
        hash: BlobHash,
        /// Length.
        len: u64,
    },
    /// Inline bytes.
    #[serde(rename = "i")]
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    /// An object adopted in place (piece version 2 only).
    #[serde(rename = "r")]
    Reference(ChunkReference),
    /// Deleted (a tombstone that still wins over older concurrent writes).
    #[serde(rename = "d")]
    Deleted,
}

/// One piece of a chunk manifest: its own change table and the chunk registers of a
/// range of keys, ascending by (coordinates, key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPiece {
    /// Changes the entries' stamps refer to.
    pub changes: Vec<CoveredChange>,
    /// Chunk key and its live register entries.
    pub entries: Vec<(String, Vec<(SnapStamp, SnapChunk)>)>,
}

/// One coverage archive shard: covered changes whose files are no longer listed,
/// ascending by hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveShard {
    /// The changes.
    pub changes: Vec<CoveredChange>,
}

const META_FRAME: Frame = Frame {
    magic: META_MAGIC,
    version: SNAPSHOT_META_VERSION,
    oldest: SNAPSHOT_VERSION,
    file: "snapshot",
    body: "snapshot",
};
const PIECE_FRAME: Frame = Frame {
    magic: PIECE_MAGIC,
    version: PIECE_VERSION,
    oldest: SNAPSHOT_VERSION,
    file: "manifest piece",
    body: "manifest piece",
};
const SHARD_FRAME: Frame = Frame {
    magic: SHARD_MAGIC,
    version: SNAPSHOT_VERSION,
    oldest: SNAPSHOT_VERSION,
    file: "archive shard",
    body: "archive shard",
};

/// Whether `bytes` is the envelope every snapshot metadata object keeps in every
/// format version (format.md §8.7): the `CRZS` magic, then a MessagePack array whose
/// first two elements are the repository id and the covered count. Only such an
/// object with an unknown version byte is reported as a newer format; the content
/// hash is checked by the caller's decoder first.
pub(crate) fn is_snapshot_envelope(bytes: &[u8], repo: RepoId, covered: u64) -> bool {
    let Some(body) = bytes.strip_prefix(META_MAGIC).and_then(|b| b.get(1..)) else {
        return false;
    };
    // The array header: fixarray, array 16 or array 32, with at least two elements.
    let (len, rest) = match body.first() {
        Some(&b) if (0x90..=0x9f).contains(&b) => (u32::from(b & 0x0f), &body[1..]),
        Some(0xdc) if body.len() >= 3 => (
            u32::from(u16::from_be_bytes([body[1], body[2]])),
            &body[3..],
        ),
        Some(0xdd) if body.len() >= 5 => (
            u32::from_be_bytes([body[1], body[2], body[3], body[4]]),
            &body[5..],
        ),
        _ => return false,
    };
    if len < 2 {
        return false;
    }
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(rest));
    let id = RepoId::deserialize(&mut de);
    let count = u64::deserialize(&mut de);
    matches!((id, count), (Ok(id), Ok(c)) if id == repo && c == covered)
}

/// Checks the content hash, then decodes the frame.
fn decode<T: for<'de> Deserialize<'de> + Serialize>(
    frame: &Frame,
    key: &str,
    bytes: &[u8],
    hash: &ObjectHash,
) -> Result<T> {
    if ObjectHash::of(bytes) != *hash {
        return Err(Error::corrupt(
            key,
            CorruptKind::HashMismatch(format!(
                "{} content does not match its hash (truncated or altered)",
                frame.file
            )),
        ));
    }
    frame.decode(key, bytes)
}

impl SnapshotMeta {
    /// The object's bytes.
    pub fn encode(&self) -> Vec<u8> {
        META_FRAME.encode_as(self, self.format_version())
    }

    /// Blobs the object registers hold: hash and length.
    pub fn object_blobs(&self) -> impl Iterator<Item = (BlobHash, u64)> + '_ {
        self.objects
            .iter()
            .flat_map(|(_, es)| es)
            .filter_map(|(_, v)| match v {
                SnapChunk::Blob { hash, len } => Some((*hash, *len)),
                _ => None,
            })
    }

    /// The one version this metadata is written in: 4 when it holds metadata field
    /// registers or records about them, else 3 when a piece starts inside a run of
    /// equal coordinates (older readers would route lookups by `first` alone), else 2
    /// when it holds object registers or records about them, else 1.
    pub fn format_version(&self) -> u8 {
        let fields = self.nodes.iter().any(|n| !n.fields.is_empty())
            || self
                .superseded
                .iter()
                .any(|r| matches!(r.reg, RegKey::Field(_)));
        let first_keys = self
            .nodes
            .iter()
            .flat_map(|n| &n.pieces)
            .any(|p| !p.first_key.is_empty());
        let objects = !self.objects.is_empty()
            || self
                .superseded
                .iter()
                .any(|r| matches!(r.reg, RegKey::Object(_)));
        if fields {
            SNAPSHOT_META_VERSION
        } else if first_keys {
            SNAPSHOT_META_FIRST_KEY_VERSION
        } else if objects {
            SNAPSHOT_META_OBJECTS_VERSION
        } else {
            SNAPSHOT_VERSION
        }
    }

    /// Decodes metadata found under `name` and checks it against the name and the
    /// repository.
    ///
    /// A version byte this build does not know is reported as a newer format (which
    /// stops the reader: reading around it could misread) only when the object is a
    /// plausible snapshot of this repository: its content matches the hash in its name
    /// and its body opens with this repository's id and the name's covered count
    /// (format.md §8.7). Anything else is junk: an error readers skip and report, so one
    /// stray object cannot stop every command.
    pub fn decode_named(
        key: &str,
        bytes: &[u8],
        name: SnapshotName,
        repo: RepoId,
    ) -> Result<SnapshotMeta> {
        let meta = match SnapshotMeta::decode(key, bytes, &name.hash) {
            Err(Error::UnsupportedVersion { found, .. })
                if !is_snapshot_envelope(bytes, repo, name.covered) =>
            {
                return Err(Error::corrupt(
                    key,
                    format!(
                        "junk: version byte {found}, but not the envelope of a snapshot of this \
                         repository (format.md §8.7)"
                    ),
                ));
            }
            other => other?,
        };
        if meta.covered != name.covered {
            return Err(Error::corrupt(key, "covered count differs from the name"));
        }
        if meta.repo != repo {
            return Err(Error::ForeignRepo {
                key: key.to_string(),
                found: meta.repo.to_string(),
                expected: repo.to_string(),
            });
        }
        Ok(meta)
    }

    /// Decodes and checks a metadata object against the hash its name claims.
    pub fn decode(key: &str, bytes: &[u8], hash: &ObjectHash) -> Result<SnapshotMeta> {
        let m: SnapshotMeta = decode(&META_FRAME, key, bytes, hash)?;
        if bytes[4] != m.format_version() {
            return Err(Error::corrupt(
                key,
                CorruptKind::VersionMismatch {
                    what: "snapshot",
                    found: bytes[4],
                    written: m.format_version(),
                },
            ));
        }
        m.check().map_err(|r| Error::corrupt(key, r))?;
        Ok(m)
    }

    /// Structural checks (indices in range, sizes consistent).
    fn check(&self) -> std::result::Result<(), SnapshotError> {
        use SnapshotError as E;
        let n = self.changes.len() as u32;
        let stamp_ok = |s: &SnapStamp| s.0 < n;
        if self.archive.len() != ARCHIVE_SHARDS {
            return Err(E::ArchiveShards(self.archive.len()));
        }
        for node in &self.nodes {
            if !stamp_ok(&node.stamp)
                || node
                    .attrs
                    .iter()
                    .chain(&node.fields)
                    .flat_map(|a| &a.1)
                    .any(|e| !stamp_ok(&e.0))
                || node
                    .dims
                    .iter()
                    .flatten()
                    .flatten()
                    .any(|e| !stamp_ok(&e.0))
            {
                return Err(E::NodeStamp(node.path.clone()));
            }
            if node
                .attrs
                .iter()
                .chain(&node.fields)
                .any(|a| a.1.is_empty())
                || node.dims.iter().flatten().any(|d| d.is_empty())
            {
                return Err(E::EmptyRegister(node.path.clone()));
            }
            if !node.pieces.windows(2).all(|w| w[0].start() < w[1].start()) {
                return Err(E::PiecesOrder(node.path.clone()));
            }
            if !node.attrs.windows(2).all(|w| w[0].0 < w[1].0) {
                return Err(E::AttributesOrder(node.path.clone()));
            }
            if !node.fields.windows(2).all(|w| w[0].0 < w[1].0) {
                return Err(E::FieldsOrder(node.path.clone()));
            }
            // Only arrays have metadata fields, and only register fields are kept.
            let array = matches!(node.kind, SnapKind::Array(_));
            for (name, reg) in &node.fields {
                if !array || !crate::zarr::meta::is_field_register(name) {
                    return Err(E::Field(node.path.clone(), name.clone()));
                }
                for (_, v) in reg {
                    let value = match v {
                        Some(text) => Some(
                            serde_json::from_str::<serde_json::Value>(text)
                                .map_err(|_| E::Field(node.path.clone(), name.clone()))?,
                        ),
                        None => None,
                    };
                    crate::zarr::meta::check_field(name, value.as_ref(), None)
                        .map_err(|_| E::Field(node.path.clone(), name.clone()))?;
                }
            }
        }
        if !self.changes.windows(2).all(|w| w[0].hash < w[1].hash) {
            return Err(E::ChangesOrder);
        }
        // The order a writer produces is part of the canonical form (one state, one
        // encoding); anything else is damage or a foreign writer.
        if !self.heads.windows(2).all(|w| w[0] < w[1]) {
            return Err(E::HeadsOrder);
        }
        if !self
            .nodes
            .windows(2)
            .all(|w| (&w[0].path, w[0].stamp) < (&w[1].path, w[1].stamp))
        {
            return Err(E::NodesOrder);
        }
        if !self
            .superseded
            .windows(2)
            .all(|w| (&w[0].path, &w[0].reg, w[0].entry) < (&w[1].path, &w[1].reg, w[1].entry))
        {
            return Err(E::SupersededOrder);
        }
        if !self.objects.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(E::ObjectsOrder);
        }
        for (k, es) in &self.objects {
            crate::zarr::key::check_object_key(k)?;
            if es.is_empty() || es.iter().any(|e| !stamp_ok(&e.0)) {
                return Err(E::ObjectRegister(k.clone()));
            }
            if es.iter().any(|e| match &e.1 {
                SnapChunk::Reference(_) => true,
                SnapChunk::Inline(b) => b.len() > crate::format::change::INLINE_MAX,
                _ => false,
            }) {
                return Err(E::ObjectValue(k.clone()));
            }
        }
        if self
            .superseded
            .iter()
            .any(|r| matches!(r.reg, RegKey::Object(_)) && !r.path.is_empty())
        {
            return Err(E::ObjectRecordPath);
        }
        if !self.supersedes.windows(2).all(|w| w[0] < w[1]) {
            return Err(E::SupersedesOrder);
        }
        if self
            .heads
            .iter()
            .any(|h| self.changes.binary_search_by(|c| c.hash.cmp(h)).is_err())
        {
            return Err(E::HeadMissing);
        }
        Ok(())
    }
}

impl ManifestPiece {
    /// The object's bytes.
    pub fn encode(&self) -> Vec<u8> {
        PIECE_FRAME.encode_as(self, self.format_version())
    }

    /// The one version this piece is written in: 2 when it holds a reference.
    pub fn format_version(&self) -> u8 {
        let refs = self
            .entries
            .iter()
            .flat_map(|(_, es)| es)
            .any(|(_, v)| matches!(v, SnapChunk::Reference(_)));
        if refs {
            PIECE_VERSION
        } else {
            SNAPSHOT_VERSION
        }
    }

    /// Decodes and checks a piece against its hash.
    pub fn decode(key: &str, bytes: &[u8], hash: &ObjectHash) -> Result<ManifestPiece> {
        let p: ManifestPiece = decode(&PIECE_FRAME, key, bytes, hash)?;
        if bytes[4] != p.format_version() {
            return Err(Error::corrupt(
                key,
                CorruptKind::VersionMismatch {
                    what: "piece",
                    found: bytes[4],
                    written: p.format_version(),
                },
            ));
        }
        let bad = |e: SnapshotError| Error::corrupt(key, e);
        if let Some(r) = p
            .entries
            .iter()
            .flat_map(|(_, es)| es)
            .find_map(|(_, v)| match v {
                SnapChunk::Reference(r) => r.check().err(),
                _ => None,
            })
        {
            return Err(bad(r.into()));
        }
        if !p.changes.windows(2).all(|w| w[0].hash < w[1].hash) {
            return Err(bad(SnapshotError::PieceChangesOrder));
        }
        // Entries are ordered by grid coordinates, which need the array's metadata;
        // here only uniqueness is checked, so no key has two registers to choose from.
        let mut keys: Vec<&str> = p.entries.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(SnapshotError::PieceDuplicateKey(w[0].to_string())));
        }
        let n = p.changes.len() as u32;
        if p.entries
            .iter()
            .any(|(_, es)| es.is_empty() || es.iter().any(|(s, _)| s.0 >= n))
        {
            return Err(bad(SnapshotError::PieceEntry));
        }
        Ok(p)
    }
}

impl ArchiveShard {
    /// The object's bytes.
    pub fn encode(&self) -> Vec<u8> {
        SHARD_FRAME.encode(self)
    }

    /// Decodes and checks a shard against its hash.
    pub fn decode(key: &str, bytes: &[u8], hash: &ObjectHash) -> Result<ArchiveShard> {
        let s: ArchiveShard = decode(&SHARD_FRAME, key, bytes, hash)?;
        if !s.changes.windows(2).all(|w| w[0].hash < w[1].hash) {
            return Err(Error::corrupt(key, SnapshotError::ShardOrder));
        }
        Ok(s)
    }

    /// The covered change with this hash, if archived here.
    pub fn find(&self, hash: &ChangeHash) -> Option<&CoveredChange> {
        self.changes
            .binary_search_by(|c| c.hash.cmp(hash))
            .ok()
            .map(|i| &self.changes[i])
    }
}
