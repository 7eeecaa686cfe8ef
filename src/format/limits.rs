//! Every bound crzarr enforces, in one place: what a reader refuses and what a writer
//! never writes (spec/format.md §5 and §8.5). A writer checks each bound before it
//! uploads anything, so no writer writes an object a reader would refuse.

// Zarr keys and metadata (spec/format.md §5, §7).

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Most array dimensions.
pub const MAX_NDIM: usize = 64;

// Change files (spec/format.md §5).

/// Largest change file accepted (bytes).
pub const MAX_CHANGE_BYTES: u64 = 64 << 20;

/// Most ops in one change.
pub const MAX_OPS: usize = 4_000_000;

/// Most dependencies of one change.
pub const MAX_DEPS: usize = 4096;

/// Most observed entries one op may supersede.
pub const MAX_OBSERVED: usize = 1024;

/// Observed entries a change may name per op, beyond [`MAX_OBSERVED`]: a change with
/// `n` ops names at most `MAX_OBSERVED + OBSERVED_PER_OP * n` in all (spec/format.md
/// §5). Observed names cost the fold a record each when their change is unknown, and
/// such records can outlive the change; this keeps them proportional to real edits.
/// An honest write observes the live entries of its register, almost always one.
pub const OBSERVED_PER_OP: usize = 16;

/// Largest chunk stored inline in a change file; larger chunks go to blobs.
pub const INLINE_MAX: usize = 4096;

/// Largest metadata document or attribute value (bytes of JSON text).
pub const MAX_JSON_BYTES: usize = 1 << 20;

/// Largest commit message (bytes).
pub const MAX_MESSAGE_BYTES: usize = 64 << 10;

/// Longest `source` URL or `key` of a [`ChunkReference`](crate::format::change::ChunkReference) (bytes).
pub const MAX_REFERENCE_TEXT: usize = 4096;

// Snapshot objects (spec/format.md §8.5).

/// Largest snapshot metadata object read.
pub const MAX_META_BYTES: u64 = 256 << 20;

/// Largest chunk-manifest piece read.
pub const MAX_PIECE_BYTES: u64 = 64 << 20;

/// Largest coverage archive shard read.
pub const MAX_SHARD_BYTES: u64 = 256 << 20;

/// Chunk keys per manifest piece before it is split.
pub const PIECE_ENTRIES: usize = 16_384;

/// Estimated encoded bytes per manifest piece before it is split: well under
/// [`MAX_PIECE_BYTES`], so a written piece is always one readers accept.
pub const PIECE_TARGET_BYTES: u64 = 8 << 20;

/// Number of coverage archive shards (by the first 4 bits of the change hash).
pub const ARCHIVE_SHARDS: usize = 16;

// A reader's memory: changes waiting for their dependencies.

/// Most changes held pending (waiting for deps) at once.
pub const MAX_PENDING_CHANGES: usize = 100_000;

/// Most memory held by pending changes at once, in bytes of decoded changes as
/// [`Change::decoded_size`](crate::format::change::Change::decoded_size) estimates it (not file bytes: decoding takes up to about
/// 20 times the file size).
pub const MAX_PENDING_BYTES: u64 = 1 << 30;

// Requests and small objects.

/// Default number of requests in flight for fan-out (fetching changes, uploading blobs).
pub const DEFAULT_CONCURRENCY: usize = 32;

/// Largest `.crdt/repo.json` accepted.
pub const MAX_MARKER_BYTES: u64 = 64 << 10;
