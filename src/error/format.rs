//! The rules a change file or a snapshot object breaks (spec/format.md §3.9, §8.6):
//! the typed sources of [`Error::Corrupt`](crate::Error::Corrupt).

use crate::error::zarr::{KeyError, MetaError};
use crate::format::limits::*;

/// A rule of [`ChunkReference`](crate::format::change::ChunkReference) that one breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// `source` or `key` is empty.
    #[error("reference with an empty source or key")]
    Empty,
    /// `source`, `key` or `etag` is longer than [`MAX_REFERENCE_TEXT`].
    #[error("reference text longer than {MAX_REFERENCE_TEXT} bytes")]
    TooLong,
    /// `key` has an empty, `.` or `..` segment.
    #[error("reference key {0:?} is not a plain key")]
    NotPlainKey(String),
}

/// A rule that depends on one change alone and that a change breaks
/// ([`Change::validate`](crate::format::change::Change::validate), spec/format.md §3). Readers refuse such a change as corrupt;
/// a writer refuses to commit it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// `seq` is 0.
    #[error("seq must start at 1")]
    SeqZero,
    /// More than [`MAX_DEPS`] dependencies (how many).
    #[error("{0} deps exceeds the limit of {MAX_DEPS}")]
    TooManyDeps(usize),
    /// Dependencies not strictly ascending.
    #[error("deps must be ascending and unique")]
    DepsOrder,
    /// More than [`MAX_OPS`] ops (how many).
    #[error("{0} ops exceeds the limit of {MAX_OPS}")]
    TooManyOps(usize),
    /// A message longer than [`MAX_MESSAGE_BYTES`].
    #[error("message too long")]
    MessageTooLong,
    /// More observed entries in all than [`max_observed_refs`](crate::format::change::max_observed_refs) allows.
    #[error(
        "{observed} observed entries in {ops} ops exceeds the limit of {bound} \
         ({MAX_OBSERVED} + {OBSERVED_PER_OP} per op)"
    )]
    TooManyObserved {
        /// Observed entries named.
        observed: usize,
        /// Ops in the change.
        ops: usize,
        /// The limit for that many ops.
        bound: usize,
    },
    /// One op breaks a rule.
    #[error("op {index}: {rule}")]
    Op {
        /// Its position in the change.
        index: usize,
        /// The rule.
        #[source]
        rule: OpError,
    },
}

/// A rule that one op breaks on its own or given the ops before it in its change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// A node path, chunk key or object key that is not acceptable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// JSON text longer than [`MAX_JSON_BYTES`].
    #[error("JSON text too large")]
    JsonTooLarge,
    /// Text that is not JSON (the parser's message).
    #[error("invalid JSON: {0}")]
    Json(String),
    /// Array metadata that is not valid stored Zarr v3 metadata.
    #[error(transparent)]
    Metadata(#[from] MetaError),
    /// An attribute named twice.
    #[error("duplicate attribute")]
    DuplicateAttribute,
    /// An attribute name longer than [`MAX_KEY_LEN`].
    #[error("attribute name too long")]
    AttributeNameTooLong,
    /// A local reference to this op or a later one.
    #[error("local reference to a later op")]
    LaterOp,
    /// A local node reference to an op that creates no node.
    #[error("local node reference to an op that creates no node")]
    NotANode,
    /// One `observed` list longer than [`MAX_OBSERVED`].
    #[error("too many observed entries")]
    TooManyObserved,
    /// A resize of no dimension or of more than [`MAX_NDIM`].
    #[error("resize must change 1 to 64 dimensions")]
    ResizeDimensions,
    /// Resize dimensions not strictly ascending.
    #[error("resize dimensions must be ascending and unique")]
    ResizeOrder,
    /// An inline chunk larger than [`INLINE_MAX`].
    #[error("inline chunk larger than the inline limit")]
    InlineChunk,
    /// An inline object larger than [`INLINE_MAX`].
    #[error("inline object larger than the inline limit")]
    InlineObject,
    /// An object whose value is a [`ChunkData::Reference`](crate::format::change::ChunkData::Reference).
    #[error("an object cannot be a reference")]
    ObjectReference,
    /// A chunk reference that breaks its own rules.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A node delete naming more incarnations than it may.
    #[error("too many incarnations")]
    TooManyIncarnations,
}

/// What makes a snapshot object (metadata, manifest piece or archive shard) not well
/// formed, beyond its encoding: the structural rules of spec/format.md §10, checked on
/// decoding and when a fold starts from the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The archive list does not have [`ARCHIVE_SHARDS`] entries (it has this many).
    #[error("archive has {0} shards, not {ARCHIVE_SHARDS}")]
    ArchiveShards(usize),
    /// A stamp of the node at this path indexes past the change table.
    #[error("node {0:?}: stamp out of range")]
    NodeStamp(String),
    /// A register of the node at this path holds no entry.
    #[error("node {0:?}: empty register")]
    EmptyRegister(String),
    /// Manifest pieces of the node at this path are not in key order.
    #[error("node {0:?}: pieces out of order")]
    PiecesOrder(String),
    /// Attributes of the node at this path are not sorted by name.
    #[error("node {0:?}: attributes out of order")]
    AttributesOrder(String),
    /// Metadata field registers of the node at this path are not sorted by name.
    #[error("node {0:?}: metadata fields out of order")]
    FieldsOrder(String),
    /// A metadata field register of the node at this path that no array may hold, or
    /// with a value no writer emits.
    #[error("node {0:?}: invalid metadata field register {1:?}")]
    Field(String, String),
    /// The change table is not strictly ascending by hash.
    #[error("change table not sorted by hash")]
    ChangesOrder,
    /// Heads not strictly ascending.
    #[error("heads not sorted")]
    HeadsOrder,
    /// Nodes not strictly ascending by path and stamp.
    #[error("nodes not sorted by path and stamp")]
    NodesOrder,
    /// Superseded-entry records not strictly ascending.
    #[error("superseded records not sorted")]
    SupersededOrder,
    /// Object registers not strictly ascending by key.
    #[error("objects not sorted by key")]
    ObjectsOrder,
    /// An object register under a key no object may have.
    #[error(transparent)]
    ObjectKey(#[from] KeyError),
    /// The object register at this key is empty or has a stamp out of range.
    #[error("object {0:?}: empty register or bad stamp")]
    ObjectRegister(String),
    /// The object register at this key holds a reference or an oversized inline value.
    #[error("object {0:?}: a reference or oversized inline value")]
    ObjectValue(String),
    /// A superseded-entry record about an object carries a node path.
    #[error("an object record with a node path")]
    ObjectRecordPath,
    /// Superseded snapshot names not strictly ascending.
    #[error("superseded snapshot names not sorted")]
    SupersedesOrder,
    /// A head that the change table does not hold.
    #[error("a head is missing from the change table")]
    HeadMissing,
    /// A node path that is not acceptable.
    #[error("node path: {0}")]
    NodePath(#[source] KeyError),
    /// A node's array metadata is not JSON (the parser's message).
    #[error("array metadata: {0}")]
    ArrayJson(String),
    /// A node's array metadata is not valid stored Zarr v3 metadata.
    #[error("array metadata: {0}")]
    ArrayMetadata(#[source] MetaError),
    /// The live node at this path has a dimension register count other than its
    /// array's dimensions.
    #[error("node {0:?}: wrong number of dimensions")]
    NodeDimensions(String),
    /// Two nodes with one stamp.
    #[error("two nodes with one stamp")]
    DuplicateStamp,
    /// A chunk reference in a manifest piece that breaks its rules.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A manifest piece's change table is not strictly ascending by hash.
    #[error("manifest piece change table not sorted by hash")]
    PieceChangesOrder,
    /// A manifest piece holds this chunk key twice.
    #[error("manifest piece holds chunk key {0:?} twice")]
    PieceDuplicateKey(String),
    /// A manifest entry with a stamp out of range or no value.
    #[error("manifest entry with a bad stamp or no value")]
    PieceEntry,
    /// An archive shard's changes are not strictly ascending by hash.
    #[error("archive shard not sorted by hash")]
    ShardOrder,
}
