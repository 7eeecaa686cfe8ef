//! Typed errors. Every error that concerns an object in the bucket names its key.
//!
//! One flat enum, [`Error`](enum@Error), for everything the library returns;
//! [`Error::key`] and [`Error::reason`] split any message into the key it concerns and
//! what is wrong. Validators have error types of their own, one per concern, naming
//! the rule broken; they convert into [`Error`](enum@Error) where they meet a key:
//!
//! | type | concern | as an error |
//! |---|---|---|
//! | [`ChangeError`], [`OpError`](crate::format::change::OpError) | a change's own rules | [`Error::Corrupt`] ([`CorruptKind::Change`]) |
//! | [`SnapshotError`] | a snapshot object's structure | [`Error::Corrupt`] ([`CorruptKind::Snapshot`]) |
//! | [`Rejection`](crate::fold::Rejection) | a change against its causal past | a rejected change; [`Error::CommitRefused`] |
//! | [`KeyError`](crate::zarr::key::KeyError) | Zarr keys and node paths | [`Error::InvalidKey`] |
//! | [`MetaError`](crate::zarr::meta::MetaError) | Zarr v3 node metadata | [`Error::InvalidMetadata`] |

pub mod format;
pub mod zarr;

use format::{ChangeError, SnapshotError};
use thiserror::Error;

/// Result alias used throughout crzarr.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in crzarr.
///
/// New variants may be added: match with a wildcard arm. [`Error::key`] gives the key
/// an error concerns and [`Error::reason`] the message without it, for any variant.
#[derive(Debug, Error)]
#[non_exhaustive]
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
    #[error("{key}: {kind}")]
    Corrupt {
        /// Bucket key of the offending file.
        key: String,
        /// What is wrong with it.
        #[source]
        kind: CorruptKind,
    },
    /// A file in the bucket is larger than crzarr accepts.
    #[error("{key}: {}", self.reason())]
    TooLarge {
        /// Bucket key of the offending file.
        key: String,
        /// Observed size.
        size: u64,
        /// Accepted maximum.
        limit: u64,
    },
    /// A file was written by a newer crzarr (or is not ours at all).
    #[error("{key}: {}", self.reason())]
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
    #[error("{key}: {}", self.reason())]
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
    /// change it would write (by its own rules or against its causal past), or no
    /// valid clock stamp exists on top of its dependencies. The staged ops are kept.
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
    #[error("{key}: {}", self.reason())]
    CommitRejected {
        /// Bucket key of the written change.
        key: String,
        /// Why the fold did not apply it.
        reason: String,
    },
    /// A size or count limit was reached (most protect memory, some what readers
    /// accept), or an operation ran over its time limit. Nothing past it was written.
    #[error("limit reached: {0}")]
    Limit(String),
    /// Bad command-line or URL input.
    #[error("{0}")]
    Usage(String),
    /// A request refused because of what it asks for or what its destination holds
    /// (a directory that is not empty, Zarr v2 metadata); nothing was written.
    /// Commits and exports have their own variants, [`Error::CommitRefused`] and
    /// [`Error::ExportRefused`].
    #[error("{what}: {reason}")]
    Refused {
        /// The key, path or location the request named.
        what: String,
        /// Why it is refused and what to do instead.
        reason: String,
    },
    /// An internal invariant does not hold (such as a manifest piece that should be
    /// in memory and is not): a crzarr bug, never the input's fault.
    #[error("internal error (a crzarr bug): {0}")]
    Internal(String),
    /// An object that was listed or referenced is gone: garbage collection removed
    /// it after a newer snapshot covered it. Refreshing (or reopening) succeeds.
    #[error("{key}: {}", self.reason())]
    Vanished {
        /// Bucket key.
        key: String,
    },
    /// A change needs history older than the oldest retained snapshot.
    #[error("{key}: {}", self.reason())]
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
    /// The key this error concerns, if it names one: the bucket key of an object, the
    /// Zarr key or node path of a request, or the location of a repository or export.
    pub fn key(&self) -> Option<&str> {
        match self {
            Error::Store { key, .. }
            | Error::Corrupt { key, .. }
            | Error::TooLarge { key, .. }
            | Error::UnsupportedVersion { key, .. }
            | Error::ForeignRepo { key, .. }
            | Error::InvalidKey { key, .. }
            | Error::InvalidMetadata { key, .. }
            | Error::MissingBlob { key, .. }
            | Error::ReferenceChanged { key, .. }
            | Error::CommitRefused { key, .. }
            | Error::CommitRejected { key, .. }
            | Error::Vanished { key }
            | Error::HistoryHorizon { key, .. } => Some(key),
            Error::NoSuchNode { path } => Some(path),
            Error::NotARepo { location }
            | Error::ExportRefused { location, .. }
            | Error::Refused { what: location, .. } => Some(location),
            Error::RepoMismatch { .. }
            | Error::WindowTooShort { .. }
            | Error::Limit(_)
            | Error::Usage(_)
            | Error::Internal(_)
            | Error::Io(_) => None,
        }
    }

    /// The message without the key it starts with: what is wrong with the object
    /// [`Error::key`] names. Messages that do not start with `key: ` are whole.
    pub fn reason(&self) -> String {
        // Variants displayed as `{key}: {reason}` get their text here, in one place;
        // each needs its own arm (the fallback displays the whole error).
        match self {
            Error::Corrupt { kind, .. } => kind.to_string(),
            Error::TooLarge { size, limit, .. } => {
                format!("{size} bytes exceeds the limit of {limit} bytes")
            }
            Error::UnsupportedVersion {
                found, supported, ..
            } => format!(
                "format version {found} is not supported (this build reads version \
                 {supported}); upgrade crzarr"
            ),
            Error::ForeignRepo {
                found, expected, ..
            } => format!("belongs to repository {found}, not {expected}"),
            Error::Refused { reason, .. } => reason.clone(),
            Error::CommitRejected { reason, .. } => {
                format!("committed change is not applied: {reason}")
            }
            Error::Vanished { .. } => {
                "removed by garbage collection after it was listed; refresh and retry".into()
            }
            Error::HistoryHorizon { missing, .. } => format!(
                "needs change {missing} which is neither in the bucket nor covered by its \
                 snapshots (garbage-collected history, or a partial copy): sync the replica \
                 that has it, or remove this change if it is abandoned"
            ),
            e => e.to_string(),
        }
    }

    pub(crate) fn store(key: impl Into<String>, source: object_store::Error) -> Self {
        Error::Store {
            key: key.into(),
            source,
        }
    }

    pub(crate) fn corrupt(key: impl Into<String>, kind: impl Into<CorruptKind>) -> Self {
        Error::Corrupt {
            key: key.into(),
            kind: kind.into(),
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

/// What is wrong with an object in the bucket: the source of [`Error::Corrupt`]. Its
/// message is the part of the error's message after the key.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CorruptKind {
    /// The first bytes are not the magic of the object expected (named).
    #[error("not a crzarr {0} (bad magic)")]
    BadMagic(&'static str),
    /// The body does not decode as the object expected.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was expected ("change", "snapshot", "manifest piece"...).
        what: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// The body decodes, but is not the one canonical encoding of what it holds
    /// (or bytes follow it).
    #[error("non-canonical encoding or trailing bytes")]
    NonCanonical,
    /// The version byte is one this build reads, but not the version the content is
    /// written in (each object has one encoding, version byte included).
    #[error("format version {found} for a {what} that is written as version {written}")]
    VersionMismatch {
        /// What the object is ("change", "snapshot", "piece").
        what: &'static str,
        /// The version byte found.
        found: u8,
        /// The version its content is written in.
        written: u8,
    },
    /// The bytes do not hash to the name or reference they are read under (truncated
    /// or altered), or another object sits at a content-addressed key. Says which.
    #[error("{0}")]
    HashMismatch(String),
    /// A change breaks a rule that depends on it alone.
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// A snapshot object is not well formed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Anything else, described (markers, settings, export records, file names).
    #[error("{0}")]
    Other(String),
}

impl From<String> for CorruptKind {
    /// A description of damage of no other kind: [`CorruptKind::Other`].
    fn from(reason: String) -> Self {
        CorruptKind::Other(reason)
    }
}

impl From<&str> for CorruptKind {
    /// A description of damage of no other kind: [`CorruptKind::Other`].
    fn from(reason: &str) -> Self {
        CorruptKind::Other(reason.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_messages_are_the_key_then_the_reason() {
        let keyed = [
            Error::corrupt("k", CorruptKind::NonCanonical),
            Error::TooLarge {
                key: "k".into(),
                size: 2,
                limit: 1,
            },
            Error::UnsupportedVersion {
                key: "k".into(),
                found: 9,
                supported: 1,
            },
            Error::ForeignRepo {
                key: "k".into(),
                found: "a".into(),
                expected: "b".into(),
            },
            Error::CommitRejected {
                key: "k".into(),
                reason: "r".into(),
            },
            Error::Vanished { key: "k".into() },
            Error::HistoryHorizon {
                key: "k".into(),
                missing: "m".into(),
            },
            Error::Refused {
                what: "k".into(),
                reason: "r".into(),
            },
        ];
        for e in keyed {
            assert_eq!(e.key(), Some("k"), "{e:?}");
            assert_eq!(e.to_string(), format!("k: {}", e.reason()), "{e:?}");
        }
        let e = Error::Usage("bad input".into());
        assert_eq!((e.key(), e.reason()), (None, "bad input".to_string()));
    }

    #[test]
    fn corrupt_has_a_typed_source() {
        let e = Error::corrupt("k", ChangeError::SeqZero);
        assert!(matches!(
            &e,
            Error::Corrupt {
                kind: CorruptKind::Change(ChangeError::SeqZero),
                ..
            }
        ));
        assert_eq!(e.to_string(), "k: seq must start at 1");
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("seq must start at 1"));
    }
}
