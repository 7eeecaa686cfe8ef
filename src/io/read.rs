//! Typed reads: every object crzarr reads from a repository is fetched here, under its
//! size limit, decoded strictly, and checked against the name it was found under
//! (spec/format.md §3.8, §8.1). Callers get a checked value or an error naming the
//! key; none of them re-implements "GET under a limit, decode, check the name".
//!
//! A listed object that has gone by the time it is read is [`Error::Vanished`]
//! (garbage collection removed it after the listing), except where a caller can
//! proceed without it and asks for `Option`.

use bytes::Bytes;
use futures::StreamExt;

use crate::error::{Error, Result};
use crate::format::change::{Change, MAX_CHANGE_BYTES};
use crate::format::ids::{ObjectHash, RepoId};
use crate::format::snapshot::{
    ARCHIVE_SHARDS, ArchiveShard, MAX_META_BYTES, MAX_PIECE_BYTES, MAX_SHARD_BYTES, ManifestPiece,
    SnapshotMeta,
};
use crate::io::store::{ListedChange, ListedSnapshot, RepoStore};

/// Refuses a listed object whose listed size is already over `limit`, before any GET.
fn check_listed_size(key: &str, size: u64, limit: u64) -> Result<()> {
    if size > limit {
        return Err(Error::TooLarge {
            key: key.to_string(),
            size,
            limit,
        });
    }
    Ok(())
}

/// Reads a listed change file, checked against its name and this repository.
/// `Ok(None)` when it vanished after the listing.
pub(crate) async fn change(
    store: &RepoStore,
    repo: RepoId,
    listed: &ListedChange,
) -> Result<Option<Change>> {
    Ok(change_bytes(store, repo, listed)
        .await?
        .map(|(change, _)| change))
}

/// As [`change`], with the bytes read (sync copies them).
pub(crate) async fn change_bytes(
    store: &RepoStore,
    repo: RepoId,
    listed: &ListedChange,
) -> Result<Option<(Change, Bytes)>> {
    let key = listed.key.to_string();
    check_listed_size(&key, listed.size, MAX_CHANGE_BYTES)?;
    let Some(bytes) = store.get(&listed.key, MAX_CHANGE_BYTES).await? else {
        return Ok(None);
    };
    let change = Change::decode_named(&key, &bytes, &listed.name, repo)?;
    Ok(Some((change, bytes)))
}

/// Reads the bytes of listed snapshot metadata, under its limit, not yet decoded
/// (a caller may hold them already, from the hint). `Ok(None)` when it vanished
/// after the listing.
pub(crate) async fn snapshot_meta_bytes(
    store: &RepoStore,
    listed: &ListedSnapshot,
) -> Result<Option<Bytes>> {
    check_listed_size(listed.key.as_ref(), listed.size, MAX_META_BYTES)?;
    store.get(&listed.key, MAX_META_BYTES).await
}

/// Reads listed snapshot metadata, checked against its name and this repository.
/// `Ok(None)` when it vanished after the listing.
pub(crate) async fn snapshot_meta(
    store: &RepoStore,
    repo: RepoId,
    listed: &ListedSnapshot,
) -> Result<Option<(SnapshotMeta, Bytes)>> {
    let Some(bytes) = snapshot_meta_bytes(store, listed).await? else {
        return Ok(None);
    };
    let meta = SnapshotMeta::decode_named(listed.key.as_ref(), &bytes, listed.name, repo)?;
    Ok(Some((meta, bytes)))
}

/// Reads a manifest piece, checked against its hash; gone is [`Error::Vanished`].
pub(crate) async fn piece(store: &RepoStore, hash: &ObjectHash) -> Result<(ManifestPiece, Bytes)> {
    let key = store.layout().manifest(hash);
    let bytes = store
        .get(&key, MAX_PIECE_BYTES)
        .await?
        .ok_or_else(|| Error::Vanished {
            key: key.to_string(),
        })?;
    Ok((ManifestPiece::decode(key.as_ref(), &bytes, hash)?, bytes))
}

/// Reads manifest pieces in parallel (each once), each checked against its hash.
pub(crate) async fn pieces(
    store: &RepoStore,
    mut hashes: Vec<ObjectHash>,
    concurrency: usize,
) -> Result<Vec<(ObjectHash, ManifestPiece)>> {
    hashes.sort();
    hashes.dedup();
    futures::stream::iter(hashes)
        // Owned stores keep the futures `Send` (borrowed ones defeat the compiler's proof).
        .map(|h| {
            let store = store.clone();
            async move { piece(&store, &h).await.map(|(p, _)| (h, p)) }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<Result<(ObjectHash, ManifestPiece)>>>()
        .await
        .into_iter()
        .collect()
}

/// Reads an archive shard, checked against its hash; gone is [`Error::Vanished`].
pub(crate) async fn shard(store: &RepoStore, hash: &ObjectHash) -> Result<(ArchiveShard, Bytes)> {
    let key = store.layout().archive_shard(hash);
    let bytes = store
        .get(&key, MAX_SHARD_BYTES)
        .await?
        .ok_or_else(|| Error::Vanished {
            key: key.to_string(),
        })?;
    Ok((ArchiveShard::decode(key.as_ref(), &bytes, hash)?, bytes))
}

/// Reads every shard of an archive in parallel; `None` (no archive) reads nothing and
/// gives every shard empty.
pub(crate) async fn shards(
    store: &RepoStore,
    shards: Option<&[Option<ObjectHash>]>,
) -> Result<Vec<Option<ArchiveShard>>> {
    let Some(shards) = shards else {
        return Ok(vec![None; ARCHIVE_SHARDS]);
    };
    let fetched: Vec<Result<(usize, Option<ArchiveShard>)>> =
        futures::stream::iter(shards.iter().copied().enumerate())
            .map(|(i, h)| {
                let store = store.clone();
                async move {
                    match h {
                        None => Ok((i, None)),
                        Some(h) => Ok((i, Some(shard(&store, &h).await?.0))),
                    }
                }
            })
            .buffer_unordered(ARCHIVE_SHARDS)
            .collect()
            .await;
    let mut out = vec![None; shards.len().max(ARCHIVE_SHARDS)];
    for r in fetched {
        let (i, s) = r?;
        out[i] = s;
    }
    Ok(out)
}
