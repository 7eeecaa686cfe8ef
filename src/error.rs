//! Typed errors. Every error that concerns an object in the bucket names its key.

use thiserror::Error;

/// Result alias used throughout crzarr.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in crzarr.
#[derive(Debug, Error)]
pub enum Error {
    /// The object store failed (network, permissions, missing bucket...).
    #[error("object store error at {key}: {source}")]
    Store {
        /// Bucket key involved.
        key: String,
        /// Underlying error.
        #[source]
        source: object_store::Error,
    },
    /// A file in the bucket could not be decoded or failed verification.
    #[error("{key}: {reason}")]
    Corrupt {
        /// Bucket key of the offending file.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file in the bucket is larger than crzarr accepts.
    #[error("{key}: {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bucket key of the offending file.
        key: String,
        /// Observed size.
        size: u64,
        /// Accepted maximum.
        limit: u64,
    },
    /// A file was written by a newer crzarr (or is not ours at all).
    #[error(
        "{key}: format version {found} is not supported (this build reads version {supported}); upgrade crzarr"
    )]
    UnsupportedVersion {
        /// Bucket key of the offending file.
        key: String,
        /// Version found in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// No crzarr repository at this location.
    #[error("no crzarr repository at {location}: run `crzarr init` first")]
    NotARepo {
        /// Where we looked.
        location: String,
    },
    /// A change or snapshot belongs to a different repository.
    #[error("{key}: belongs to repository {found}, not {expected}")]
    ForeignRepo {
        /// Bucket key of the offending file.
        key: String,
        /// Repo id found.
        found: String,
        /// Repo id expected.
        expected: String,
    },
    /// Two locations hold different repositories: they are never merged.
    #[error(
        "{a} is repository {a_id} but {b} is repository {b_id}; different repositories are never merged: {hint}"
    )]
    RepoMismatch {
        /// First location.
        a: String,
        /// Its repository id.
        a_id: String,
        /// Second location.
        b: String,
        /// Its repository id.
        b_id: String,
        /// What the user can do.
        hint: String,
    },
    /// A Zarr key or node path supplied by the user is not acceptable.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key.
        key: String,
        /// Why it is refused.
        reason: String,
    },
    /// Zarr metadata supplied by the user is not valid Zarr v3.
    #[error("invalid Zarr metadata for {key:?}: {reason}")]
    InvalidMetadata {
        /// The key of the `zarr.json`.
        key: String,
        /// Why it is refused.
        reason: String,
    },
    /// An operation needs a node that the view does not have.
    #[error("no node at {path:?}")]
    NoSuchNode {
        /// Node path.
        path: String,
    },
    /// The view references a blob that is not in the bucket.
    #[error("chunk {key:?} references blob {blob_key} which is missing from the bucket")]
    MissingBlob {
        /// Zarr key of the chunk.
        key: String,
        /// Bucket key of the blob.
        blob_key: String,
    },
    /// A chunk adopted in place (`import --by-reference`) no longer matches the object
    /// it references: changed, removed, or unreachable. It is never served silently.
    #[error(
        "chunk {key:?} references {object}, which {reason} since it was adopted: \
         re-import it (`crzarr import --by-reference`) or write the chunk"
    )]
    ReferenceChanged {
        /// Zarr key of the chunk.
        key: String,
        /// The referenced object (source URL and key).
        object: String,
        /// What differs (size, ETag, modification time) or `is gone`.
        reason: String,
    },
    /// A garbage collection asked for a window shorter than the repository's minimum
    /// (`.crdt/config.json`) without `force`.
    #[error(
        "window {window:?} is below this repository's minimum GC window {min:?}: a commit, import, \
         sync or compaction running longer than the window could lose objects it names. Use a \
         longer window, lower the minimum (`crzarr config REPO --min-gc-window DUR`), or pass \
         --force if nothing else writes to this repository"
    )]
    WindowTooShort {
        /// The window asked for.
        window: std::time::Duration,
        /// The repository's minimum.
        min: std::time::Duration,
    },
    /// A commit was refused before anything was uploaded: readers would reject the
    /// change it would write, or no valid clock stamp exists on top of its
    /// dependencies. The staged ops are kept.
    #[error("commit refused, nothing written: {key}: {reason}")]
    CommitRefused {
        /// The key concerned: the change's own, or the dependency whose clock stamp
        /// leaves no valid stamp.
        key: String,
        /// The rule it breaks.
        reason: String,
    },
    /// A commit wrote its change file but the writer's own fold did not apply it, so
    /// readers will not either. Never expected: the change is checked before upload.
    #[error("{key}: committed change is not applied: {reason}")]
    CommitRejected {
        /// Bucket key of the written change.
        key: String,
        /// Why the fold did not apply it.
        reason: String,
    },
    /// A limit protecting memory was reached.
    #[error("limit reached: {0}")]
    Limit(String),
    /// Bad command-line or URL input.
    #[error("{0}")]
    Usage(String),
    /// An object that was listed or referenced is gone: garbage collection removed
    /// it after a newer snapshot covered it. Refreshing (or reopening) succeeds.
    #[error("{key}: removed by garbage collection after it was listed; refresh and retry")]
    Vanished {
        /// Bucket key.
        key: String,
    },
    /// A change needs history older than the oldest retained snapshot.
    #[error(
        "{key}: needs change {missing} which is neither in the bucket nor covered by its snapshots \
         (garbage-collected history, or a partial copy): sync the replica that has it, \
         or remove this change if it is abandoned"
    )]
    HistoryHorizon {
        /// The change that cannot be applied.
        key: String,
        /// A change it needs.
        missing: String,
    },
    /// An export would overwrite or delete objects it did not write: the destination
    /// holds something other than an earlier export of this repository.
    #[error("cannot export to {location}: {reason}")]
    ExportRefused {
        /// The destination (prefix or key) involved.
        location: String,
        /// What was found and what to do.
        reason: String,
    },
    /// Local I/O error (CLI input files and the like).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn store(key: impl Into<String>, source: object_store::Error) -> Self {
        Error::Store {
            key: key.into(),
            source,
        }
    }

    pub(crate) fn corrupt(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            key: key.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid_key(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidKey {
            key: key.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid_metadata(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidMetadata {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
