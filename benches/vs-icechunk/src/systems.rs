//! The same logical Zarr work in both systems, through each one's Zarr-store
//! interface: a root group and one 1-d `uint8` array `data` with 8 KiB chunks, the
//! `bytes` codec only (uncompressed), chunk keys `data/c/<i>`.
//!
//! 8 KiB is above both systems' inline thresholds (crzarr 4 KiB, Icechunk 512 B by
//! default), so in both every chunk is an object of its own.

use bytes::Bytes;
use crzarr::ops::gc::GcOptions;
use crzarr::repo::Repo;
use futures::{StreamExt, TryStreamExt, stream};
use icechunk::conflicts::detector::ConflictDetector;
use icechunk::format::ByteRange;
use icechunk::repository::VersionInfo;
use icechunk::session::SessionErrorKind;
use icechunk::store::StoreErrorKind;
use icechunk::{Repository, RepositoryConfig, Store};
use object_store::ObjectStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::RwLock;

pub type R<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Bytes per chunk.
pub const CHUNK_BYTES: usize = 8 << 10;
/// Chunks along the array (more than any workload writes).
pub const ARRAY_CHUNKS: u64 = 1 << 24;
/// Requests either system may have in flight for fan-out: crzarr's `concurrency`,
/// Icechunk's `max_concurrent_requests`, and the chunk uploads this harness issues
/// for Icechunk (Icechunk uploads a chunk per `Store::set`, as a Zarr client calls
/// it; crzarr uploads at commit).
pub const CONCURRENCY: usize = 32;
/// crzarr's prefix inside its bucket.
const PREFIX: &str = "ds";
const BRANCH: &str = "main";

pub fn chunk_key(i: u64) -> String {
    format!("data/c/{i}")
}

/// Distinct bytes for every (chunk, tag): crzarr stores identical blobs once.
pub fn chunk_bytes(i: u64, tag: u64) -> Bytes {
    let fill = ((i.wrapping_mul(31).wrapping_add(tag)) % 251) as u8;
    let mut v = vec![fill; CHUNK_BYTES];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v[8..16].copy_from_slice(&tag.to_le_bytes());
    Bytes::from(v)
}

fn group_json() -> Bytes {
    Bytes::from(
        serde_json::json!({"zarr_format": 3, "node_type": "group", "attributes": {}}).to_string(),
    )
}

fn array_json() -> Bytes {
    Bytes::from(
        serde_json::json!({
            "zarr_format": 3, "node_type": "array",
            "shape": [ARRAY_CHUNKS * CHUNK_BYTES as u64], "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [CHUNK_BYTES]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0, "codecs": [{"name": "bytes"}], "attributes": {}
        })
        .to_string(),
    )
}

// ---------------------------------------------------------------- crzarr

/// Creates the repository with the group and the array (one commit).
pub async fn crz_init(store: Arc<dyn ObjectStore>) -> R<()> {
    let mut repo = Repo::init(store, PREFIX).await?;
    let mut s = repo.session();
    s.set("zarr.json", group_json())?;
    s.set("data/zarr.json", array_json())?;
    s.commit(&mut repo, Some("setup")).await?;
    Ok(())
}

/// A cold open: a new `Repo`.
pub async fn crz_open(store: Arc<dyn ObjectStore>) -> R<Repo> {
    Ok(Repo::open_with_concurrency(store, PREFIX, CONCURRENCY).await?)
}

/// One commit writing `chunks` (staged, then uploaded and published by `commit`).
pub async fn crz_commit(repo: &mut Repo, chunks: &[u64], tag: u64) -> R<()> {
    let mut s = repo.session();
    for &c in chunks {
        s.set(&chunk_key(c), chunk_bytes(c, tag))?;
    }
    s.commit(repo, Some("bench")).await?;
    Ok(())
}

pub async fn crz_get(repo: &Repo, chunk: u64) -> R<Option<Bytes>> {
    Ok(repo.get(&chunk_key(chunk)).await?)
}

/// crzarr's recommended maintenance: `compact` (a snapshot), then `gc` (covered
/// change files go; the window is 0 because nothing else runs meanwhile).
pub async fn crz_compact(store: Arc<dyn ObjectStore>) -> R<()> {
    let mut repo = crz_open(store).await?;
    repo.compact().await?;
    repo.gc(&GcOptions {
        older_than: Duration::ZERO,
        dry_run: false,
        // Nothing else runs against the benchmark's bucket meanwhile.
        force: true,
    })
    .await?;
    Ok(())
}

// ---------------------------------------------------------------- Icechunk

fn ice_config() -> RepositoryConfig {
    RepositoryConfig {
        max_concurrent_requests: Some(CONCURRENCY as u16),
        ..Default::default()
    }
}

/// Creates the repository with the group and the array (one commit).
pub async fn ice_init(storage: Arc<dyn icechunk::Storage + Send + Sync>) -> R<()> {
    let repo = Repository::create(storage)
        .config(ice_config())
        .execute()
        .await?;
    let store = ice_begin(&repo).await?;
    store.set("zarr.json", group_json()).await?;
    store.set("data/zarr.json", array_json()).await?;
    let session = store.session();
    session.write().await.commit("setup").execute().await?;
    Ok(())
}

/// A cold open: a new `Repository` over a new `Storage`.
pub async fn ice_open(storage: Arc<dyn icechunk::Storage + Send + Sync>) -> R<Repository> {
    Ok(Repository::open(storage)
        .config(ice_config())
        .execute()
        .await?)
}

/// A writable session on the branch tip, as a Zarr store.
pub async fn ice_begin(repo: &Repository) -> R<Store> {
    let session = repo.writable_session(BRANCH).await?;
    Ok(Store::from_session(Arc::new(RwLock::new(session))).await)
}

/// A read-only session on the branch tip, as a Zarr store.
pub async fn ice_reader(repo: &Repository) -> R<Store> {
    let session = repo
        .readonly_session(&VersionInfo::BranchTipRef(BRANCH.to_string()))
        .await?;
    Ok(Store::from_session(Arc::new(RwLock::new(session))).await)
}

/// Writes `chunks` into the session (Icechunk uploads each chunk here), up to
/// [`CONCURRENCY`] at once.
pub async fn ice_write(store: &Store, chunks: &[u64], tag: u64) -> R<()> {
    stream::iter(chunks.iter().copied())
        .map(|c| {
            let store = store.clone();
            async move { store.set(&chunk_key(c), chunk_bytes(c, tag)).await }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// How a publish went.
#[derive(Clone, Debug, Default)]
pub struct Publish {
    /// Conflicts answered by a rebase and a new attempt.
    pub retries: u32,
    /// The error that ended it, if it did not commit (retries exhausted included).
    pub failure: Option<String>,
}

/// Commits the session; on a conflict (the branch moved), rebases with the
/// `ConflictDetector` (disjoint chunks never conflict) and tries again, at most
/// `max_retries` times.
pub async fn ice_publish(store: &Store, max_retries: u32) -> Publish {
    let session = store.session();
    let mut s = session.write().await;
    let mut out = Publish::default();
    loop {
        match s.commit("bench").execute().await {
            Ok(_) => return out,
            Err(e) if matches!(e.kind, SessionErrorKind::Conflict { .. }) => {
                if out.retries >= max_retries {
                    out.failure = Some(format!("gave up after {max_retries} rebases"));
                    return out;
                }
                out.retries += 1;
                if let Err(e) = s.rebase(&ConflictDetector).await {
                    out.failure = Some(format!("rebase: {e}"));
                    return out;
                }
            }
            Err(e) => {
                out.failure = Some(format!("commit: {e}"));
                return out;
            }
        }
    }
}

pub async fn ice_get(store: &Store, chunk: u64) -> R<Option<Bytes>> {
    match store.get(&chunk_key(chunk), &ByteRange::ALL).await {
        Ok(b) => Ok(Some(b)),
        Err(e) if matches!(e.kind, StoreErrorKind::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Icechunk's manifest maintenance: a commit that rewrites the branch's manifests
/// (`rewrite_manifests`). Expiring snapshots is not applied: it deletes history,
/// which crzarr's compaction does not.
pub async fn ice_compact(storage: Arc<dyn icechunk::Storage + Send + Sync>) -> R<()> {
    let repo = ice_open(storage).await?;
    let mut s = repo.writable_session(BRANCH).await?;
    s.commit("rewrite manifests")
        .rewrite_manifests()
        .execute()
        .await?;
    Ok(())
}
