//! Changes: the immutable, content-addressed unit of the log, and their one canonical
//! encoding (a 5-byte prefix, then MessagePack by rmp-serde).
//!
//! Decoding is strict: size and count limits, re-encoding must reproduce the exact
//! input (so there is one encoding per change and no trailing bytes), and every
//! structural rule that does not depend on other changes is checked here.

use crate::error::CorruptKind;
pub use crate::error::format::{ChangeError, OpError, ReferenceError};
use crate::error::{Error, Result};
use crate::format::ids::{ActorId, BlobHash, ChangeHash, Hlc, RepoId};
use crate::format::layout::ChangeName;
pub use crate::format::limits::{
    INLINE_MAX, MAX_CHANGE_BYTES, MAX_DEPS, MAX_JSON_BYTES, MAX_MESSAGE_BYTES, MAX_OBSERVED,
    MAX_OPS, MAX_REFERENCE_TEXT, OBSERVED_PER_OP,
};
use crate::zarr::key::{self};
pub use crate::zarr::meta::MAX_NDIM;
use serde::{Deserialize, Serialize};

/// The framing every crzarr object shares: `magic (4) | version (1) | MessagePack`,
/// with exactly one encoding per value. Change files and snapshot objects use it.
pub(crate) struct Frame {
    /// First four bytes.
    pub(crate) magic: &'static [u8; 4],
    /// Newest version byte written and read by this build.
    pub(crate) version: u8,
    /// Oldest version byte read (formats only ever add: older bodies decode as newer).
    pub(crate) oldest: u8,
    /// What the object is, in the bad-magic message ("change file").
    pub(crate) file: &'static str,
    /// What the body is, in the malformed-body message ("change").
    pub(crate) body: &'static str,
}

impl Frame {
    /// The object's bytes.
    pub(crate) fn encode<T: Serialize>(&self, value: &T) -> Vec<u8> {
        self.encode_as(value, self.version)
    }

    /// The object's bytes with this version byte (the oldest that can hold `value`).
    pub(crate) fn encode_as<T: Serialize>(&self, value: &T, version: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(self.magic);
        out.push(version);
        // Plain owned data into a Vec cannot fail.
        let _ = rmp_serde::encode::write(&mut out, value);
        out
    }

    /// Checks magic and version, decodes the body and requires it to be the one
    /// canonical encoding (which also rejects trailing bytes).
    pub(crate) fn decode<T: for<'de> Deserialize<'de> + Serialize>(
        &self,
        key: &str,
        bytes: &[u8],
    ) -> Result<T> {
        self.decode_seed(key, bytes, |_| std::marker::PhantomData::<T>)
    }

    /// [`Frame::decode`] with a seed made from the body's length (for decoders that
    /// bound what a header may make them reserve by the bytes that could back it).
    pub(crate) fn decode_seed<T, S>(
        &self,
        key: &str,
        bytes: &[u8],
        seed: impl FnOnce(usize) -> S,
    ) -> Result<T>
    where
        T: Serialize,
        S: for<'de> serde::de::DeserializeSeed<'de, Value = T>,
    {
        if bytes.len() < 5 || &bytes[..4] != self.magic {
            return Err(Error::corrupt(key, CorruptKind::BadMagic(self.file)));
        }
        if !(self.oldest..=self.version).contains(&bytes[4]) {
            return Err(Error::UnsupportedVersion {
                key: key.into(),
                found: bytes[4] as u32,
                supported: self.version as u32,
            });
        }
        let body = &bytes[5..];
        let mut de = rmp_serde::Deserializer::from_read_ref(body);
        let value: T = seed(body.len()).deserialize(&mut de).map_err(|e| {
            Error::corrupt(
                key,
                CorruptKind::Malformed {
                    what: self.body,
                    detail: e.to_string(),
                },
            )
        })?;
        let mut again = Vec::with_capacity(body.len());
        let _ = rmp_serde::encode::write(&mut again, &value);
        if again != body {
            return Err(Error::corrupt(key, CorruptKind::NonCanonical));
        }
        Ok(value)
    }
}

const CHANGE_FRAME: Frame = Frame {
    magic: CHANGE_MAGIC,
    version: CHANGE_VERSION,
    oldest: CHANGE_VERSION_PLAIN,
    file: "change file",
    body: "change",
};

/// First four bytes of every change file.
pub const CHANGE_MAGIC: &[u8; 4] = b"CRZC";
/// Newest change format version written and read by this build. Version 2 is
/// version 1 plus [`ChunkData::Reference`]; version 3 is version 2 plus
/// [`Op::SetObject`] and [`Op::DeleteObject`]; version 4 is version 3 plus
/// [`Op::SetMetaField`] and [`Op::DeleteMetaField`]. A change is written in the oldest
/// version that holds it, so builds that read only older versions still read it.
pub const CHANGE_VERSION: u8 = 4;
/// The change format version of changes that hold object ops but no metadata field op.
pub const CHANGE_VERSION_OBJECTS: u8 = 3;
/// The change format version of changes that hold references but no object op.
pub const CHANGE_VERSION_REFERENCES: u8 = 2;
/// The change format version of changes that hold no reference and no object op.
pub const CHANGE_VERSION_PLAIN: u8 = 1;

/// A reference to an op: in this change (`Local`) or in an earlier one (`Change`).
/// Nodes are named by the op that created them (their *incarnation*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OpRef {
    /// Op number `n` of the change that holds this reference.
    #[serde(rename = "l")]
    Local(u32),
    /// Op number `n` of the change with this hash.
    #[serde(rename = "c")]
    Change(ChangeHash, u32),
}

/// Bytes of a chunk: a content-addressed blob, or inline for small chunks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkData {
    /// Stored at `.crdt/blobs/<hash>`.
    #[serde(rename = "b")]
    Blob {
        /// blake3 of the bytes.
        hash: BlobHash,
        /// Length in bytes.
        len: u64,
    },
    /// Held in the change file itself (at most [`INLINE_MAX`] bytes).
    #[serde(rename = "i")]
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    /// An object outside the repository, adopted in place (`import --by-reference`).
    /// Only change format 2 may hold it.
    #[serde(rename = "r")]
    Reference(ChunkReference),
}

/// A chunk kept where it is, in another store, with what that store reported for it
/// when it was adopted. A reader serves it only while the object still matches.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkReference {
    /// The store and prefix holding it, as a URL (`file:///abs/dir`, `s3://bucket/p`).
    pub source: String,
    /// Its key under `source`.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// The ETag the store reported, if it reports one.
    pub etag: Option<String>,
    /// Its last-modified time (ms since the Unix epoch) as the store reported it.
    pub modified_ms: u64,
}

impl ChunkReference {
    /// Checks its fields' limits (a URL and a key, both non-empty and bounded).
    pub(crate) fn check(&self) -> std::result::Result<(), ReferenceError> {
        if self.source.is_empty() || self.key.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let etag = self.etag.as_deref().map_or(0, str::len);
        if self.source.len().max(self.key.len()).max(etag) > MAX_REFERENCE_TEXT {
            return Err(ReferenceError::TooLong);
        }
        if self
            .key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(ReferenceError::NotPlainKey(self.key.clone()));
        }
        Ok(())
    }
}

/// New size of one array dimension, superseding the sizes the writer saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DimSize {
    /// Dimension index.
    pub dim: u32,
    /// New size.
    pub size: u64,
    /// Size entries this one supersedes.
    pub observed: Vec<OpRef>,
}

/// One operation. `observed` lists the register entries the writer saw and replaces;
/// entries it did not see stay live and are merged by the rules in `spec/merge.md`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create a group incarnation at `path`.
    #[serde(rename = "cg")]
    CreateGroup {
        /// Node path (`""` is the root).
        path: String,
        /// Initial attributes: key and JSON text.
        attributes: Vec<(String, String)>,
    },
    /// Create an array incarnation at `path`.
    #[serde(rename = "ca")]
    CreateArray {
        /// Node path.
        path: String,
        /// The array's `zarr.json` as canonical JSON, without `attributes`.
        metadata: String,
        /// Initial attributes: key and JSON text.
        attributes: Vec<(String, String)>,
    },
    /// Set one attribute of a node.
    #[serde(rename = "sa")]
    SetAttr {
        /// Target incarnation.
        node: OpRef,
        /// Attribute name.
        key: String,
        /// JSON text.
        value: String,
        /// Entries superseded.
        observed: Vec<OpRef>,
    },
    /// Delete one attribute of a node.
    #[serde(rename = "da")]
    DeleteAttr {
        /// Target incarnation.
        node: OpRef,
        /// Attribute name.
        key: String,
        /// Entries superseded.
        observed: Vec<OpRef>,
    },
    /// Resize an array, per dimension.
    #[serde(rename = "rs")]
    Resize {
        /// Target incarnation.
        node: OpRef,
        /// Changed dimensions, ascending and unique.
        dims: Vec<DimSize>,
    },
    /// Write one chunk.
    #[serde(rename = "sc")]
    SetChunk {
        /// Target array incarnation.
        node: OpRef,
        /// Chunk key relative to the array (`c/0/1`).
        key: String,
        /// The bytes.
        data: ChunkData,
        /// Entries superseded.
        observed: Vec<OpRef>,
    },
    /// Delete one chunk (reads then give the fill value).
    #[serde(rename = "dc")]
    DeleteChunk {
        /// Target array incarnation.
        node: OpRef,
        /// Chunk key relative to the array.
        key: String,
        /// Entries superseded.
        observed: Vec<OpRef>,
    },
    /// Write one object: a store key outside every node's metadata and chunks
    /// (change format 3).
    #[serde(rename = "so")]
    SetObject {
        /// Store key.
        key: String,
        /// The bytes: a blob or inline, never a reference.
        data: ChunkData,
        /// Entries superseded.
        observed: Vec<OpRef>,
    },
    /// Delete one object (change format 3).
    #[serde(rename = "do")]
    DeleteObject {
        /// Store key.
        key: String,
        /// Entries superseded.
        observed: Vec<OpRef>,
    },
    /// Delete the listed incarnations (a node and the subtree the writer saw).
    #[serde(rename = "dn")]
    DeleteNode {
        /// Path of the subtree root, for humans and logs.
        path: String,
        /// Incarnations removed.
        incarnations: Vec<OpRef>,
    },
    /// Set one array metadata field that is a register, such as `fill_value` or
    /// `dimension_names` (change format 4; spec/merge.md §4).
    #[serde(rename = "sf")]
    SetMetaField {
        /// Target array incarnation.
        node: OpRef,
        /// Field name.
        field: String,
        /// JSON text.
        value: String,
        /// Entries superseded.
        observed: Vec<OpRef>,
    },
    /// Remove one array metadata field that is a register and not required, such as
    /// `dimension_names` (change format 4).
    #[serde(rename = "df")]
    DeleteMetaField {
        /// Target array incarnation.
        node: OpRef,
        /// Field name.
        field: String,
        /// Entries superseded.
        observed: Vec<OpRef>,
    },
}

impl Op {
    /// Calls `f` on every op reference this op holds (target and observed), without
    /// allocating: this runs for every op of every change folded.
    pub fn for_each_ref(&self, mut f: impl FnMut(&OpRef)) {
        match self {
            Op::CreateGroup { .. } | Op::CreateArray { .. } => {}
            Op::SetAttr { node, observed, .. }
            | Op::DeleteAttr { node, observed, .. }
            | Op::SetMetaField { node, observed, .. }
            | Op::DeleteMetaField { node, observed, .. }
            | Op::SetChunk { node, observed, .. }
            | Op::DeleteChunk { node, observed, .. } => {
                f(node);
                observed.iter().for_each(f);
            }
            Op::Resize { node, dims } => {
                f(node);
                dims.iter().flat_map(|d| d.observed.iter()).for_each(f);
            }
            Op::DeleteNode { incarnations, .. } => incarnations.iter().for_each(f),
            Op::SetObject { observed, .. } | Op::DeleteObject { observed, .. } => {
                observed.iter().for_each(f)
            }
        }
    }

    /// The blob this op writes, if it writes one (a chunk or an object stored as a
    /// blob): what sync copies and GC keeps for it.
    pub fn blob(&self) -> Option<(BlobHash, u64)> {
        match self {
            Op::SetChunk {
                data: ChunkData::Blob { hash, len },
                ..
            }
            | Op::SetObject {
                data: ChunkData::Blob { hash, len },
                ..
            } => Some((*hash, *len)),
            _ => None,
        }
    }

    /// Calls `f` on the references that name node incarnations (the target, or the
    /// incarnations a delete removes), not on `observed` entries.
    pub fn for_each_node_ref(&self, mut f: impl FnMut(&OpRef)) {
        match self {
            Op::CreateGroup { .. }
            | Op::CreateArray { .. }
            | Op::SetObject { .. }
            | Op::DeleteObject { .. } => {}
            Op::SetAttr { node, .. }
            | Op::DeleteAttr { node, .. }
            | Op::SetMetaField { node, .. }
            | Op::DeleteMetaField { node, .. }
            | Op::SetChunk { node, .. }
            | Op::DeleteChunk { node, .. }
            | Op::Resize { node, .. } => f(node),
            Op::DeleteNode { incarnations, .. } => incarnations.iter().for_each(f),
        }
    }

    /// Number of `observed` entries this op names (all dimensions of a `Resize`).
    pub fn observed_len(&self) -> usize {
        match self {
            Op::SetAttr { observed, .. }
            | Op::DeleteAttr { observed, .. }
            | Op::SetMetaField { observed, .. }
            | Op::DeleteMetaField { observed, .. }
            | Op::SetChunk { observed, .. }
            | Op::DeleteChunk { observed, .. }
            | Op::SetObject { observed, .. }
            | Op::DeleteObject { observed, .. } => observed.len(),
            Op::Resize { dims, .. } => dims.iter().map(|d| d.observed.len()).sum(),
            Op::CreateGroup { .. } | Op::CreateArray { .. } | Op::DeleteNode { .. } => 0,
        }
    }

    /// An estimate of the memory this op takes once decoded, in bytes: the op itself
    /// plus every heap allocation it owns (strings, lists, inline bytes), each
    /// counted at its length times its element size. Allocator overhead and spare
    /// capacity are not counted; the estimate is within a small factor of the truth.
    pub fn decoded_size(&self) -> u64 {
        let refs = |v: &[OpRef]| std::mem::size_of_val(v) as u64;
        let attrs = |a: &[(String, String)]| {
            a.iter()
                .map(|(k, v)| (std::mem::size_of::<(String, String)>() + k.len() + v.len()) as u64)
                .sum::<u64>()
        };
        let data = |d: &ChunkData| match d {
            ChunkData::Inline(b) => b.len() as u64,
            ChunkData::Blob { .. } => 0,
            ChunkData::Reference(r) => {
                (r.source.len() + r.key.len() + r.etag.as_ref().map_or(0, String::len)) as u64
            }
        };
        let own = std::mem::size_of::<Op>() as u64;
        own + match self {
            Op::CreateGroup { path, attributes } => path.len() as u64 + attrs(attributes),
            Op::CreateArray {
                path,
                metadata,
                attributes,
            } => (path.len() + metadata.len()) as u64 + attrs(attributes),
            Op::SetAttr {
                key,
                value,
                observed,
                ..
            }
            | Op::SetMetaField {
                field: key,
                value,
                observed,
                ..
            } => (key.len() + value.len()) as u64 + refs(observed),
            Op::DeleteAttr { key, observed, .. }
            | Op::DeleteChunk { key, observed, .. }
            | Op::DeleteMetaField {
                field: key,
                observed,
                ..
            } => key.len() as u64 + refs(observed),
            Op::SetChunk {
                key,
                data: d,
                observed,
                ..
            }
            | Op::SetObject {
                key,
                data: d,
                observed,
            } => key.len() as u64 + data(d) + refs(observed),
            Op::DeleteObject { key, observed } => key.len() as u64 + refs(observed),
            Op::Resize { dims, .. } => dims
                .iter()
                .map(|d| std::mem::size_of::<DimSize>() as u64 + refs(&d.observed))
                .sum(),
            Op::DeleteNode { path, incarnations } => path.len() as u64 + refs(incarnations),
        }
    }

    /// The incarnation this op edits, if it edits one.
    pub fn target(&self) -> Option<OpRef> {
        match self {
            Op::SetAttr { node, .. }
            | Op::DeleteAttr { node, .. }
            | Op::SetMetaField { node, .. }
            | Op::DeleteMetaField { node, .. }
            | Op::SetChunk { node, .. }
            | Op::DeleteChunk { node, .. }
            | Op::Resize { node, .. } => Some(*node),
            _ => None,
        }
    }
}

/// One atomic commit: a header and an ordered list of ops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Repository this change belongs to.
    pub repo: RepoId,
    /// Writer.
    pub actor: ActorId,
    /// Writer's sequence number, from 1.
    pub seq: u64,
    /// Hashes of the heads the writer had seen, ascending and unique.
    pub deps: Vec<ChangeHash>,
    /// Hybrid logical clock stamp, greater than every dependency's.
    pub hlc: Hlc,
    /// Writer's wall clock at commit (milliseconds since the Unix epoch); informative.
    pub wall_ms: u64,
    /// Optional commit message.
    pub message: Option<String>,
    /// The ops, applied in order, all or nothing.
    #[serde(deserialize_with = "deserialize_ops")]
    pub ops: Vec<Op>,
}

/// Smallest encoding of one op in bytes (spec/format.md §5): a file of `n` bytes holds
/// at most `n / MIN_OP_BYTES` ops, whatever its headers claim.
const MIN_OP_BYTES: usize = 7;

/// Ops reserved up front when the body's length is not known (derived decoding).
const UNBOUNDED_RESERVE: usize = 1024;

/// Decodes the op list with its count checked against [`MAX_OPS`] before any op is
/// decoded. The vector is reserved once, for the claimed count but never more than
/// the input could hold: growing by doubling held up to three times the ops in
/// memory while decoding a large change, and reserving a hostile claim in full asked
/// for hundreds of megabytes for an 87-byte file.
fn deserialize_ops<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<Op>, D::Error> {
    d.deserialize_seq(OpsVisitor {
        reserve_cap: UNBOUNDED_RESERVE,
    })
}

struct OpsVisitor {
    reserve_cap: usize,
}

impl<'de> serde::de::Visitor<'de> for OpsVisitor {
    type Value = Vec<Op>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a list of at most {MAX_OPS} ops")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Vec<Op>, A::Error> {
        use serde::de::Error as _;
        let claimed = seq.size_hint().unwrap_or(0);
        if claimed > MAX_OPS {
            return Err(A::Error::custom(format!(
                "{claimed} ops exceeds the limit of {MAX_OPS}"
            )));
        }
        let mut ops = Vec::with_capacity(claimed.min(self.reserve_cap));
        while let Some(op) = seq.next_element()? {
            if ops.len() == MAX_OPS {
                return Err(A::Error::custom(format!("more than {MAX_OPS} ops")));
            }
            ops.push(op);
        }
        Ok(ops)
    }
}

/// Decodes a [`Change`] whose body is `body_len` bytes long, so the op list reserves
/// no more than those bytes could encode.
struct ChangeSeed {
    body_len: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for ChangeSeed {
    type Value = Change;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Change, D::Error> {
        // As derived decoding does: rmp_serde takes either form for a struct.
        d.deserialize_any(self)
    }
}

/// The op list of a change body of known length.
struct OpsSeed {
    reserve_cap: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for OpsSeed {
    type Value = Vec<Op>;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Vec<Op>, D::Error> {
        d.deserialize_seq(OpsVisitor {
            reserve_cap: self.reserve_cap,
        })
    }
}

impl<'de> serde::de::Visitor<'de> for ChangeSeed {
    type Value = Change;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a change: an array of 8 elements")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Change, A::Error> {
        use serde::de::Error as _;
        let missing = |i: usize| A::Error::invalid_length(i, &"an array of 8 elements");
        let repo = seq.next_element()?.ok_or_else(|| missing(0))?;
        let actor = seq.next_element()?.ok_or_else(|| missing(1))?;
        let seq_no = seq.next_element()?.ok_or_else(|| missing(2))?;
        let deps = seq.next_element()?.ok_or_else(|| missing(3))?;
        let hlc = seq.next_element()?.ok_or_else(|| missing(4))?;
        let wall_ms = seq.next_element()?.ok_or_else(|| missing(5))?;
        let message = seq.next_element()?.ok_or_else(|| missing(6))?;
        let ops = seq
            .next_element_seed(OpsSeed {
                reserve_cap: self.body_len / MIN_OP_BYTES,
            })?
            .ok_or_else(|| missing(7))?;
        // Extra elements are refused by the canonical re-encoding check.
        Ok(Change {
            repo,
            actor,
            seq: seq_no,
            deps,
            hlc,
            wall_ms,
            message,
            ops,
        })
    }

    /// Fields by name: never canonical, but decoded so that the canonical check
    /// (not a type error) is what refuses it, as for every other non-canonical form.
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Change, A::Error> {
        use serde::de::Error as _;
        let (mut repo, mut actor, mut seq_no, mut deps) = (None, None, None, None);
        let (mut hlc, mut wall_ms, mut message, mut ops) = (None, None, None, None);
        while let Some(name) = map.next_key::<String>()? {
            match name.as_str() {
                "repo" => repo = Some(map.next_value()?),
                "actor" => actor = Some(map.next_value()?),
                "seq" => seq_no = Some(map.next_value()?),
                "deps" => deps = Some(map.next_value()?),
                "hlc" => hlc = Some(map.next_value()?),
                "wall_ms" => wall_ms = Some(map.next_value()?),
                "message" => message = Some(map.next_value()?),
                "ops" => {
                    ops = Some(map.next_value_seed(OpsSeed {
                        reserve_cap: self.body_len / MIN_OP_BYTES,
                    })?)
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(Change {
            repo: repo.ok_or_else(|| A::Error::missing_field("repo"))?,
            actor: actor.ok_or_else(|| A::Error::missing_field("actor"))?,
            seq: seq_no.ok_or_else(|| A::Error::missing_field("seq"))?,
            deps: deps.ok_or_else(|| A::Error::missing_field("deps"))?,
            hlc: hlc.ok_or_else(|| A::Error::missing_field("hlc"))?,
            wall_ms: wall_ms.ok_or_else(|| A::Error::missing_field("wall_ms"))?,
            message: message.ok_or_else(|| A::Error::missing_field("message"))?,
            ops: ops.ok_or_else(|| A::Error::missing_field("ops"))?,
        })
    }
}

impl Change {
    /// The canonical bytes of this change: the file content.
    pub fn encode(&self) -> Vec<u8> {
        CHANGE_FRAME.encode_as(self, self.format_version())
    }

    /// The one format version this change is written in: 4 when it holds a metadata
    /// field op, else 3 when it holds an object op, else 2 when it holds a reference,
    /// else 1.
    pub fn format_version(&self) -> u8 {
        let mut version = CHANGE_VERSION_PLAIN;
        for op in &self.ops {
            let needs = match op {
                Op::SetMetaField { .. } | Op::DeleteMetaField { .. } => CHANGE_VERSION,
                Op::SetObject { .. } | Op::DeleteObject { .. } => CHANGE_VERSION_OBJECTS,
                Op::SetChunk {
                    data: ChunkData::Reference(_),
                    ..
                } => CHANGE_VERSION_REFERENCES,
                _ => CHANGE_VERSION_PLAIN,
            };
            version = version.max(needs);
        }
        version
    }

    /// Decodes and verifies a change file. `key` names it in errors; `hash` is the
    /// hash its name claims, checked against the exact bytes.
    pub fn decode(key: &str, bytes: &[u8], hash: &ChangeHash) -> Result<Change> {
        if bytes.len() as u64 > MAX_CHANGE_BYTES {
            return Err(Error::TooLarge {
                key: key.into(),
                size: bytes.len() as u64,
                limit: MAX_CHANGE_BYTES,
            });
        }
        if ChangeHash::of(bytes) != *hash {
            return Err(Error::corrupt(
                key,
                CorruptKind::HashMismatch(
                    "content does not match the hash in its name (truncated or altered)".into(),
                ),
            ));
        }
        Self::decode_unverified(key, bytes)
    }

    /// Decodes a change file found under `name` and checks it against the name and the
    /// repository: what every reader (and sync, before copying) requires of it.
    pub fn decode_named(
        key: &str,
        bytes: &[u8],
        name: &ChangeName,
        repo: RepoId,
    ) -> Result<Change> {
        let change = Change::decode(key, bytes, &name.hash)?;
        if change.actor != name.actor || change.seq != name.seq {
            return Err(Error::corrupt(
                key,
                "actor or seq in the file name does not match its header",
            ));
        }
        if change.repo != repo {
            return Err(Error::ForeignRepo {
                key: key.to_string(),
                found: change.repo.to_string(),
                expected: repo.to_string(),
            });
        }
        Ok(change)
    }

    /// Decodes and validates a change without checking its hash.
    pub fn decode_unverified(key: &str, bytes: &[u8]) -> Result<Change> {
        let change: Change =
            CHANGE_FRAME.decode_seed(key, bytes, |body_len| ChangeSeed { body_len })?;
        change
            .validate()
            .map_err(|rule| Error::corrupt(key, rule))?;
        // One encoding per change: the version byte is part of it.
        if bytes[4] != change.format_version() {
            return Err(Error::corrupt(
                key,
                CorruptKind::VersionMismatch {
                    what: "change",
                    found: bytes[4],
                    written: change.format_version(),
                },
            ));
        }
        Ok(change)
    }

    /// An estimate of the memory this change takes decoded, in bytes (spec/format.md
    /// §5): the header, its deps and message, and [`Op::decoded_size`] of every op.
    /// What the pending queue is bounded by: decoded ops take up to about 20 times
    /// their encoding, so a bound on file bytes would not bound memory.
    pub fn decoded_size(&self) -> u64 {
        let header = std::mem::size_of::<Change>()
            + self.deps.len() * std::mem::size_of::<ChangeHash>()
            + self.message.as_ref().map_or(0, String::len);
        self.ops
            .iter()
            .map(Op::decoded_size)
            .fold(header as u64, u64::saturating_add)
    }

    /// Checks the rules that depend on this change alone.
    pub fn validate(&self) -> std::result::Result<(), ChangeError> {
        if self.seq == 0 {
            return Err(ChangeError::SeqZero);
        }
        if self.deps.len() > MAX_DEPS {
            return Err(ChangeError::TooManyDeps(self.deps.len()));
        }
        if !self.deps.windows(2).all(|w| w[0] < w[1]) {
            return Err(ChangeError::DepsOrder);
        }
        if self.ops.len() > MAX_OPS {
            return Err(ChangeError::TooManyOps(self.ops.len()));
        }
        if self
            .message
            .as_ref()
            .is_some_and(|m| m.len() > MAX_MESSAGE_BYTES)
        {
            return Err(ChangeError::MessageTooLong);
        }
        let observed: usize = self.ops.iter().map(Op::observed_len).sum();
        let bound = max_observed_refs(self.ops.len());
        if observed > bound {
            return Err(ChangeError::TooManyObserved {
                observed,
                ops: self.ops.len(),
                bound,
            });
        }
        let mut is_create = Vec::with_capacity(self.ops.len());
        for (i, op) in self.ops.iter().enumerate() {
            validate_op(op, i, &is_create).map_err(|rule| ChangeError::Op { index: i, rule })?;
            is_create.push(matches!(
                op,
                Op::CreateGroup { .. } | Op::CreateArray { .. }
            ));
        }
        Ok(())
    }
}

/// Most `observed` entries a change with `ops` ops may name in all.
pub fn max_observed_refs(ops: usize) -> usize {
    MAX_OBSERVED.saturating_add(OBSERVED_PER_OP.saturating_mul(ops))
}

fn check_json(text: &str) -> std::result::Result<serde_json::Value, OpError> {
    if text.len() > MAX_JSON_BYTES {
        return Err(OpError::JsonTooLarge);
    }
    serde_json::from_str(text).map_err(|e| OpError::Json(e.to_string()))
}

fn check_attrs(attrs: &[(String, String)]) -> std::result::Result<(), OpError> {
    let mut names: Vec<&str> = attrs.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(OpError::DuplicateAttribute);
    }
    for (k, v) in attrs {
        check_attr_name(k)?;
        check_json(v)?;
    }
    Ok(())
}

fn check_attr_name(k: &str) -> std::result::Result<(), OpError> {
    if k.len() > key::MAX_KEY_LEN {
        return Err(OpError::AttributeNameTooLong);
    }
    Ok(())
}

fn check_ref(
    r: &OpRef,
    index: usize,
    is_create: &[bool],
    must_be_node: bool,
) -> std::result::Result<(), OpError> {
    if let OpRef::Local(n) = r {
        let n = *n as usize;
        if n >= index {
            return Err(OpError::LaterOp);
        }
        if must_be_node && !is_create[n] {
            return Err(OpError::NotANode);
        }
    }
    Ok(())
}

fn check_observed(
    obs: &[OpRef],
    index: usize,
    is_create: &[bool],
) -> std::result::Result<(), OpError> {
    if obs.len() > MAX_OBSERVED {
        return Err(OpError::TooManyObserved);
    }
    obs.iter()
        .try_for_each(|r| check_ref(r, index, is_create, false))
}

fn validate_op(op: &Op, i: usize, is_create: &[bool]) -> std::result::Result<(), OpError> {
    match op {
        Op::CreateGroup { path, attributes } => {
            key::check_node_path(path)?;
            check_attrs(attributes)
        }
        Op::CreateArray {
            path,
            metadata,
            attributes,
        } => {
            key::check_node_path(path)?;
            let doc = check_json(metadata)?;
            crate::zarr::meta::ArrayMeta::from_stored(&doc)?;
            check_attrs(attributes)
        }
        Op::SetAttr {
            node,
            key,
            value,
            observed,
        } => {
            check_ref(node, i, is_create, true)?;
            check_attr_name(key)?;
            check_json(value)?;
            check_observed(observed, i, is_create)
        }
        Op::DeleteAttr {
            node,
            key,
            observed,
        } => {
            check_ref(node, i, is_create, true)?;
            check_attr_name(key)?;
            check_observed(observed, i, is_create)
        }
        Op::Resize { node, dims } => {
            check_ref(node, i, is_create, true)?;
            if dims.is_empty() || dims.len() > MAX_NDIM {
                return Err(OpError::ResizeDimensions);
            }
            if !dims.windows(2).all(|w| w[0].dim < w[1].dim) {
                return Err(OpError::ResizeOrder);
            }
            dims.iter()
                .try_for_each(|d| check_observed(&d.observed, i, is_create))
        }
        Op::SetChunk {
            node,
            key,
            data,
            observed,
        } => {
            check_ref(node, i, is_create, true)?;
            key::check_chunk_key(key)?;
            match data {
                ChunkData::Inline(b) if b.len() > INLINE_MAX => {
                    return Err(OpError::InlineChunk);
                }
                ChunkData::Reference(r) => r.check()?,
                _ => {}
            }
            check_observed(observed, i, is_create)
        }
        Op::DeleteChunk {
            node,
            key,
            observed,
        } => {
            check_ref(node, i, is_create, true)?;
            key::check_chunk_key(key)?;
            check_observed(observed, i, is_create)
        }
        Op::SetObject {
            key,
            data,
            observed,
        } => {
            key::check_object_key(key)?;
            match data {
                ChunkData::Inline(b) if b.len() > INLINE_MAX => {
                    return Err(OpError::InlineObject);
                }
                ChunkData::Reference(_) => {
                    return Err(OpError::ObjectReference);
                }
                _ => {}
            }
            check_observed(observed, i, is_create)
        }
        Op::DeleteObject { key, observed } => {
            key::check_object_key(key)?;
            check_observed(observed, i, is_create)
        }
        Op::SetMetaField {
            node,
            field,
            value,
            observed,
        } => {
            check_ref(node, i, is_create, true)?;
            check_attr_name(field)?;
            let v = check_json(value)?;
            crate::zarr::meta::check_field(field, Some(&v), None)?;
            check_observed(observed, i, is_create)
        }
        Op::DeleteMetaField {
            node,
            field,
            observed,
        } => {
            check_ref(node, i, is_create, true)?;
            check_attr_name(field)?;
            crate::zarr::meta::check_field(field, None, None)?;
            check_observed(observed, i, is_create)
        }
        Op::DeleteNode { path, incarnations } => {
            key::check_node_path(path)?;
            if incarnations.len() > MAX_OBSERVED * 64 {
                return Err(OpError::TooManyIncarnations);
            }
            incarnations
                .iter()
                .try_for_each(|r| check_ref(r, i, is_create, true))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change header whose op list claims `count` ops, followed by no ops at all.
    fn claiming_ops(count: u32) -> Vec<u8> {
        let mut b = Vec::from(&CHANGE_MAGIC[..]);
        b.push(CHANGE_VERSION);
        b.push(0x98); // array of 8 fields
        for _ in 0..2 {
            b.extend([0xc4, 16]); // repo, actor: bin 16
            b.extend([7u8; 16]);
        }
        b.extend([0x01, 0x90, 0x01, 0x01, 0xc0]); // seq 1, deps [], hlc 1, wall 1, message nil
        b.push(0xdd); // array 32 header for ops
        b.extend(count.to_be_bytes());
        b
    }

    #[test]
    fn op_count_over_the_limit_is_refused_before_decoding_ops() {
        let err = Change::decode_unverified("k", &claiming_ops(MAX_OPS as u32 + 1)).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
        // Within the limit but with the ops missing: a clean decode error, no panic.
        let err = Change::decode_unverified("k", &claiming_ops(MAX_OPS as u32)).unwrap_err();
        assert!(err.to_string().contains("malformed change"), "{err}");
    }
}
