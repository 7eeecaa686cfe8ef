//! A storage adapter for the [`zarrs`](https://docs.rs/zarrs) crate: zarrs arrays and
//! groups read from and write to a crzarr repository.
//!
//! [`ZarrsStore`] owns a [`Repo`] and implements zarrs' async storage traits
//! ([`AsyncReadableStorageTraits`], [`AsyncWritableStorageTraits`],
//! [`AsyncListableStorageTraits`], and so the blanket
//! `AsyncReadableWritableListableStorageTraits`). Writes are *staged*: they are
//! visible through this store at once, but to nobody else until
//! [`ZarrsStore::commit`] turns them into one crzarr change. For zarrs' sync API, wrap
//! the store with [`ZarrsStore::blocking`], which uses zarrs' own
//! [`AsyncToSyncStorageAdapter`] driven by a tokio runtime handle.
//!
//! Writes keep crzarr's rules: a node's `zarr.json` creates or updates the node, a
//! key inside an array writes a chunk, and any other key writes an *object* (bytes
//! kept as they are; see [`crate::session`]). A write that crzarr would refuse is
//! refused at once, with the crzarr error's text in a [`StorageError`]. Deleting a
//! `zarr.json` deletes its node *and the subtree under it*, as in a crzarr write
//! session.
//!
//! Reads through the store show what the view will show once the staged writes are
//! committed: a staged `zarr.json` reads back as the view renders it (canonical
//! JSON, the same bytes after commit), groups that exist only because nodes lie
//! under them read as implicit groups, and a node replaced by one of another kind
//! or another array layout loses its chunks. zarrs' own store test helpers
//! (`zarrs_storage::store_test`) pass, sync and async (see `tests/zarrs_adapter.rs`).
//!
//! Costs: a chunk write is checked against the staged nodes and the view without
//! replaying anything; a metadata write or a prefix delete replays the staged
//! metadata writes into a scratch [`WriteSession`] to be checked exactly, so it
//! costs time linear in the nodes staged so far. Rewrites of one chunk between two
//! metadata writes keep only the last value.
//!
//! # Example
//!
//! Two writers on two buckets each write half of an array, then sync:
//!
//! ```
//! use crzarr::io::store::RepoStore;
//! use crzarr::repo::Repo;
//! use crzarr::zarrs_store::ZarrsStore;
//! use object_store::memory::InMemory;
//! use std::sync::Arc;
//! use zarrs::array::{Array, ArrayBuilder, data_type};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = tokio::runtime::Runtime::new()?;
//! let a = Arc::new(ZarrsStore::new(rt.block_on(Repo::init(Arc::new(InMemory::new()), ""))?));
//! let sync_a = Arc::new(a.clone().blocking(rt.handle().clone()));
//!
//! // Writer A creates the array and commits it.
//! let array = ArrayBuilder::new(vec![8, 8], vec![4, 4], data_type::uint16(), 0u16)
//!     .build(sync_a.clone(), "/v")?;
//! array.store_metadata()?;
//! rt.block_on(a.commit(Some("create v")))?;
//!
//! // Writer B is a replica on another bucket.
//! let bucket_b = Arc::new(InMemory::new());
//! let b_store = RepoStore::new(bucket_b.clone(), "");
//! rt.block_on(async { crzarr::sync(a.repo().await.bucket(), &b_store, &crzarr::SyncOptions::push()).await })?;
//! let b = Arc::new(ZarrsStore::new(rt.block_on(Repo::open(bucket_b, ""))?));
//! let sync_b = Arc::new(b.clone().blocking(rt.handle().clone()));
//!
//! // Both write, concurrently, to disjoint rows: v = row * 8 + col.
//! let top: Vec<u16> = (0..32).collect();
//! let bottom: Vec<u16> = (32..64).collect();
//! array.store_array_subset(&[0..4, 0..8], &top)?;
//! Array::open(sync_b.clone(), "/v")?.store_array_subset(&[4..8, 0..8], &bottom)?;
//! rt.block_on(a.commit(Some("top half")))?;
//! rt.block_on(b.commit(Some("bottom half")))?;
//!
//! // Sync both ways, then both replicas show the whole array.
//! rt.block_on(async {
//!     let other = b.repo().await.bucket().clone();
//!     a.repo_mut().await.sync(&other, &Default::default()).await?;
//!     b.refresh().await?;
//!     Ok::<_, crzarr::Error>(())
//! })?;
//! let want: Vec<u16> = (0..64).collect();
//! let from_a: Vec<u16> = Array::open(sync_a, "/v")?.retrieve_array_subset(&[0..8, 0..8])?;
//! let from_b: Vec<u16> = Array::open(sync_b, "/v")?.retrieve_array_subset(&[0..8, 0..8])?;
//! assert_eq!((from_a, from_b), (want.clone(), want));
//! # Ok(())
//! # }
//! ```

use crate::error::{Error, Result};
use crate::fold::view::{ChunkRef, Entry, NodeType};
use crate::format::ids::ChangeHash;
use crate::repo::{RefreshReport, Repo};
use crate::session::WriteSession;
use crate::zarr::key::{self, meta_path};
use crate::zarr::meta::{self, ArrayMeta, NodeDoc};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use tokio::sync::{RwLock, RwLockMappedWriteGuard, RwLockReadGuard, RwLockWriteGuard};
use zarrs_storage::byte_range::{ByteRange, ByteRangeIterator, InvalidByteRangeError};
use zarrs_storage::storage_adapter::async_to_sync::{
    AsyncToSyncBlockOn, AsyncToSyncStorageAdapter,
};
use zarrs_storage::{
    AsyncListableStorageTraits, AsyncMaybeBytesIterator, AsyncReadableStorageTraits,
    AsyncWritableStorageTraits, MaybeBytes, OffsetBytesIterator, StorageError, StoreKey, StoreKeys,
    StoreKeysPrefixes, StorePrefix,
};

/// One staged store write, replayed into a [`WriteSession`] at commit.
#[derive(Clone, Debug)]
enum Staged {
    Set(String, Bytes),
    Delete(String),
    DeletePrefix(String),
}

impl Staged {
    fn apply(&self, s: &mut WriteSession) -> Result<()> {
        match self {
            Staged::Set(k, v) => s.set(k, v.clone()),
            Staged::Delete(k) => s.delete(k),
            Staged::DeletePrefix(p) => s.delete_prefix(p),
        }
    }
}

/// Whether `k` lies under the store prefix `prefix` (`""` or ending in `/`).
fn under(prefix: &str, k: &str) -> bool {
    k.starts_with(prefix)
}

/// The store prefix holding node `path`'s keys.
fn node_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    }
}

struct Inner {
    repo: Repo,
    /// Staged writes in order; chunk writes to the same key between two structural
    /// writes are merged in place.
    log: Vec<Staged>,
    /// Indices in `log` of structural writes (metadata and prefix deletes).
    structural: Vec<usize>,
    /// Chunk key to its log entry since the last structural write.
    last_chunk: HashMap<String, usize>,
    /// What reads see instead of the repository: `None` is deleted.
    overlay: BTreeMap<String, Option<Bytes>>,
    /// Store prefixes whose repository keys are hidden by staged deletes.
    hidden: Vec<String>,
    /// Nodes staged here: path to its array metadata (`None`: a group).
    nodes: BTreeMap<String, Option<ArrayMeta>>,
    /// Node subtrees deleted here (hiding the repository's nodes there).
    deleted: Vec<String>,
}

impl Inner {
    fn clear(&mut self) {
        self.log.clear();
        self.structural.clear();
        self.last_chunk.clear();
        self.overlay.clear();
        self.hidden.clear();
        self.nodes.clear();
        self.deleted.clear();
    }

    /// Whether the node at `path` is an array (`Some(true)`), a group, or absent,
    /// counting staged writes.
    fn node_kind(&self, path: &str) -> Option<bool> {
        if let Some(node) = self.nodes.get(path) {
            return Some(node.is_some());
        }
        if self.deleted.iter().any(|d| key::in_subtree(d, path)) {
            return None;
        }
        match self.repo.view().node_type(path)? {
            NodeType::Array => Some(true),
            NodeType::Group => Some(false),
            NodeType::ImplicitGroup => None,
        }
    }

    /// The node at `path` as a session sees it: `None` if absent, `Some(None)` for a
    /// group, else the array's metadata.
    fn existing(&self, path: &str) -> Option<Option<ArrayMeta>> {
        if let Some(node) = self.nodes.get(path) {
            return Some(node.clone());
        }
        if self.deleted.iter().any(|d| key::in_subtree(d, path)) {
            return None;
        }
        let view = self.repo.view();
        match view.node_type(path)? {
            NodeType::Group => Some(None),
            NodeType::ImplicitGroup => None,
            NodeType::Array => {
                let doc = view.metadata(path)?;
                match meta::parse_node_doc(&key::meta_key(path), &doc) {
                    Ok(NodeDoc::Array { meta, .. }) => Some(Some(meta)),
                    Ok(NodeDoc::Group { .. }) | Err(_) => None,
                }
            }
        }
    }

    /// The array `store_key` is a chunk of and the chunk key, as a session finds it.
    fn split_chunk<'k>(&self, store_key: &'k str) -> Option<(&'k str, &'k str)> {
        let mut end = store_key.len();
        while let Some(pos) = store_key[..end].rfind('/') {
            let arr = &store_key[..pos];
            if self.node_kind(arr) == Some(true) {
                return Some((arr, &store_key[pos + 1..]));
            }
            end = pos;
        }
        (self.node_kind("") == Some(true)).then_some(("", store_key))
    }

    /// Whether the repository's `k` is hidden by a staged write.
    fn repo_hidden(&self, k: &str) -> bool {
        self.overlay.contains_key(k) || self.hidden.iter().any(|h| under(h, k))
    }

    /// Hides everything under `prefix`, staged or in the repository.
    fn hide(&mut self, prefix: &str) {
        self.overlay.retain(|k, _| !under(prefix, k));
        self.hidden.retain(|h| !under(prefix, h));
        self.hidden.push(prefix.to_string());
    }

    /// A node subtree deleted: the overlay and the node mirror forget it.
    fn delete_subtree(&mut self, path: &str) {
        self.hide(&node_prefix(path));
        self.nodes.retain(|p, _| !key::in_subtree(path, p));
        self.deleted.push(path.to_string());
    }

    /// Checks a structural write as a session would, against the staged structure.
    fn check_structural(&mut self, op: &Staged) -> Result<()> {
        let Inner {
            repo,
            log,
            structural,
            ..
        } = self;
        let mut s = repo.session();
        for &i in structural.iter() {
            log[i].apply(&mut s)?;
        }
        op.apply(&mut s)
    }

    fn push_structural(&mut self, op: Staged) {
        self.last_chunk.clear();
        self.structural.push(self.log.len());
        self.log.push(op);
    }

    fn push_chunk(&mut self, k: &str, op: Staged) {
        match self.last_chunk.get(k) {
            Some(&i) => self.log[i] = op,
            None => {
                self.last_chunk.insert(k.to_string(), self.log.len());
                self.log.push(op);
            }
        }
    }

    /// Stages `set(k, v)` after checking it as a write session would.
    fn stage_set(&mut self, k: &str, v: Bytes) -> Result<()> {
        key::check_key(k)?;
        if let Some(path) = meta_path(k) {
            let op = Staged::Set(k.to_string(), v.clone());
            self.check_structural(&op)?;
            // Reads see the metadata as the view renders it once committed.
            let (array, rendered) = match meta::parse_node_doc(k, &v)? {
                NodeDoc::Group { attributes } => (None, meta::render_group(attributes)),
                NodeDoc::Array { meta, attributes } => {
                    let rendered = meta.render(meta.shape(), attributes);
                    (Some(meta), rendered)
                }
            };
            // As in a session: a node of another kind, or an array of another
            // layout, replaces the node there and what lay under it.
            let replaces = match (self.existing(path), &array) {
                (None, _) | (Some(None), None) => false,
                (Some(Some(old)), Some(new)) => !old.same_chunk_layout(new),
                (Some(_), _) => true,
            };
            if replaces {
                self.delete_subtree(path);
            } else if array.is_some() && !matches!(self.existing(path), Some(Some(_))) {
                // A new array owns every key under it: objects there are hidden.
                self.hide(&node_prefix(path));
            }
            self.nodes.insert(path.to_string(), array);
            self.overlay
                .insert(k.to_string(), Some(Bytes::from(rendered)));
            self.push_structural(op);
            return Ok(());
        }
        match self.split_chunk(k) {
            Some((_, chunk)) => key::check_chunk_key(chunk)?,
            // Not inside any array: an object, as in a session.
            None => key::check_object_key(k)?,
        }
        self.overlay.insert(k.to_string(), Some(v.clone()));
        self.push_chunk(k, Staged::Set(k.to_string(), v));
        Ok(())
    }

    /// Stages `delete(k)`.
    fn stage_delete(&mut self, k: &str) -> Result<()> {
        key::check_key(k)?;
        if let Some(path) = meta_path(k) {
            let op = Staged::Delete(k.to_string());
            self.check_structural(&op)?;
            self.delete_subtree(path);
            self.push_structural(op);
            return Ok(());
        }
        match self.split_chunk(k) {
            Some((_, chunk)) => key::check_chunk_key(chunk)?,
            None => {
                // A key no object can have holds nothing, and a session ignores it.
                if key::check_object_key(k).is_err() {
                    return Ok(());
                }
            }
        }
        self.overlay.insert(k.to_string(), None);
        self.push_chunk(k, Staged::Delete(k.to_string()));
        Ok(())
    }

    /// Stages `delete_prefix(prefix)` (`""` or ending in `/`).
    fn stage_delete_prefix(&mut self, prefix: &str) -> Result<()> {
        let op = Staged::DeletePrefix(prefix.to_string());
        self.check_structural(&op)?;
        let p = prefix.strip_suffix('/').unwrap_or(prefix);
        let inside_array = !p.is_empty() && self.split_chunk(p).is_some();
        if inside_array {
            self.hide(prefix);
        } else {
            self.delete_subtree(p);
        }
        self.push_structural(op);
        Ok(())
    }

    /// Whether the repository's `k` is the `zarr.json` of an implicit group (one
    /// the view shows only because nodes lie under it).
    fn repo_implicit(&self, k: &str) -> bool {
        meta_path(k).is_some_and(|p| self.repo.view().node_type(p) == Some(NodeType::ImplicitGroup))
    }

    /// Length of the repository's explicit key `k` (its pieces must be loaded):
    /// from the view where it says, else by reading the value.
    async fn repo_len(&self, k: &str) -> Result<Option<u64>> {
        let known = match self.repo.view().get(k) {
            None => return Ok(None),
            Some(Entry::Metadata(b)) => Some(b.len() as u64),
            Some(Entry::Chunk(c) | Entry::Object(c)) => {
                if let ChunkRef::Blob { len, .. } = c {
                    Some(len)
                } else if let ChunkRef::Inline(b) = c {
                    Some(b.len() as u64)
                } else {
                    None
                }
            }
        };
        match known {
            Some(len) => Ok(Some(len)),
            None => Ok(self.repo.get(k).await?.map(|b| b.len() as u64)),
        }
    }

    /// Keys reads see under `prefix` that are not implicit groups, each with its
    /// length: the repository's not hidden by staged writes, and the staged ones.
    async fn explicit(&self, prefix: &str) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for k in self.repo.list_prefix(prefix).await? {
            if self.repo_hidden(&k) || self.repo_implicit(&k) {
                continue;
            }
            if let Some(len) = self.repo_len(&k).await? {
                out.insert(k, len);
            }
        }
        let staged = self
            .overlay
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| under(prefix, k));
        for (k, v) in staged {
            if let Some(v) = v {
                out.insert(k.clone(), v.len() as u64);
            }
        }
        Ok(out)
    }

    /// Keys reads see under `prefix`, sorted, each with its length: the explicit
    /// ones plus the `zarr.json` of every implicit group above a node, rendered as
    /// the view renders it once committed.
    async fn sizes(&self, prefix: &str) -> Result<BTreeMap<String, u64>> {
        let mut out = self.explicit(prefix).await?;
        let implicit_len = meta::render_group(Default::default()).len() as u64;
        let nodes: Vec<String> = out
            .keys()
            .filter_map(|k| meta_path(k).map(str::to_string))
            .collect();
        for path in nodes {
            let mut up = key::parent(&path);
            while let Some(p) = up {
                let mk = key::meta_key(p);
                if !under(prefix, &mk) || out.contains_key(&mk) {
                    break;
                }
                out.insert(mk, implicit_len);
                up = key::parent(p);
            }
        }
        Ok(out)
    }

    /// Keys reads see under `prefix`, sorted.
    async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self.sizes(prefix).await?.into_keys().collect())
    }

    /// Whether `k` is the `zarr.json` of an implicit group reads would show.
    async fn implicit_here(&self, k: &str) -> Result<bool> {
        match meta_path(k) {
            Some(path) => Ok(self
                .explicit(&node_prefix(path))
                .await?
                .keys()
                .any(|d| d != k && meta_path(d).is_some())),
            None => Ok(false),
        }
    }

    /// The bytes reads see at `k`.
    async fn get(&self, k: &str) -> Result<Option<Bytes>> {
        if let Some(v) = self.overlay.get(k) {
            return Ok(v.clone());
        }
        if !self.repo_hidden(k)
            && !self.repo_implicit(k)
            && let Some(v) = self.repo.get(k).await?
        {
            return Ok(Some(v));
        }
        if self.implicit_here(k).await? {
            return Ok(Some(Bytes::from(meta::render_group(Default::default()))));
        }
        Ok(None)
    }

    /// The length of what reads see at `k`, without fetching blobs.
    async fn size(&self, k: &str) -> Result<Option<u64>> {
        if let Some(v) = self.overlay.get(k) {
            return Ok(v.as_ref().map(|v| v.len() as u64));
        }
        if !self.repo_hidden(k)
            && !self.repo_implicit(k)
            && self.repo.exists(k).await?
            && let Some(len) = self.repo_len(k).await?
        {
            return Ok(Some(len));
        }
        if self.implicit_here(k).await? {
            return Ok(Some(meta::render_group(Default::default()).len() as u64));
        }
        Ok(None)
    }
}

/// A crzarr repository as a zarrs store, with writes staged until [`commit`].
///
/// Reads see the repository's view with this store's staged writes on top; other
/// handles on the repository see staged writes only once committed. Every write
/// is checked as a [`WriteSession`] checks it, at the time it is made.
///
/// The repository sits behind a [`tokio::sync::RwLock`]: reads share it, writes,
/// [`commit`] and [`refresh`] take it alone (commit holds it across its awaits, so
/// nothing is staged while a commit is being published).
///
/// [`commit`]: ZarrsStore::commit
/// [`refresh`]: ZarrsStore::refresh
pub struct ZarrsStore {
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for ZarrsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZarrsStore").finish_non_exhaustive()
    }
}

impl ZarrsStore {
    /// Wraps a repository handle; nothing is staged.
    pub fn new(repo: Repo) -> Self {
        ZarrsStore {
            inner: RwLock::new(Inner {
                repo,
                log: Vec::new(),
                structural: Vec::new(),
                last_chunk: HashMap::new(),
                overlay: BTreeMap::new(),
                hidden: Vec::new(),
                nodes: BTreeMap::new(),
                deleted: Vec::new(),
            }),
        }
    }

    /// Replays the staged writes into one [`WriteSession`] and commits them as one
    /// change. Returns `Ok(None)` when nothing was staged, or when the staged writes
    /// change nothing. On error the writes stay staged, so `commit` can be retried
    /// (the retry builds a new change; nothing from the failed one is visible to
    /// readers unless its change file was published).
    pub async fn commit(&self, message: Option<&str>) -> Result<Option<ChangeHash>> {
        let mut guard = self.inner.write().await;
        let inner = &mut *guard;
        if inner.log.is_empty() {
            return Ok(None);
        }
        let mut s = inner.repo.session();
        for op in &inner.log {
            op.apply(&mut s)?;
        }
        let hash = s.commit(&mut inner.repo, message).await?;
        inner.clear();
        Ok(hash)
    }

    /// Drops every staged write; returns how many writes were staged.
    pub async fn discard(&self) -> usize {
        let mut inner = self.inner.write().await;
        let n = inner.log.len();
        inner.clear();
        n
    }

    /// Number of staged writes (rewrites of one chunk count once).
    pub async fn staged(&self) -> usize {
        self.inner.read().await.log.len()
    }

    /// Refreshes the repository's view from its bucket. Staged writes stay staged
    /// and stay on top of the refreshed view.
    pub async fn refresh(&self) -> Result<RefreshReport> {
        self.inner.write().await.repo.refresh().await
    }

    /// Shared access to the repository (for reads, [`Repo::bucket`], pushing with [`crate::sync`](fn@crate::sync)).
    pub async fn repo(&self) -> RwLockReadGuard<'_, Repo> {
        RwLockReadGuard::map(self.inner.read().await, |i| &i.repo)
    }

    /// Exclusive access to the repository (for [`Repo::sync`]).
    /// Staged writes stay staged; they are checked again when committed.
    pub async fn repo_mut(&self) -> RwLockMappedWriteGuard<'_, Repo> {
        RwLockWriteGuard::map(self.inner.write().await, |i| &mut i.repo)
    }

    /// Gives back the repository, dropping any staged writes.
    pub fn into_repo(self) -> Repo {
        self.inner.into_inner().repo
    }

    /// This store for zarrs' sync API: zarrs' [`AsyncToSyncStorageAdapter`] running
    /// each call on `handle`'s runtime.
    ///
    /// The sync calls block the calling thread, so they must not be made from
    /// inside an async task of a tokio runtime (tokio panics if they are). Call them
    /// from plain threads, or from `spawn_blocking`. Use a multi-thread runtime:
    /// zarrs makes sync calls from its own worker threads, and a current-thread
    /// runtime drives its timers and sockets only while its owner blocks on it.
    pub fn blocking(self: Arc<Self>, handle: tokio::runtime::Handle) -> BlockingZarrsStore {
        AsyncToSyncStorageAdapter::new(self, TokioBlockOn(handle))
    }
}

/// A [`ZarrsStore`] for zarrs' sync API (see [`ZarrsStore::blocking`]).
pub type BlockingZarrsStore = AsyncToSyncStorageAdapter<ZarrsStore, TokioBlockOn>;

/// Runs zarrs' sync storage calls on a tokio runtime, for [`AsyncToSyncStorageAdapter`].
#[derive(Clone, Debug)]
pub struct TokioBlockOn(pub tokio::runtime::Handle);

impl AsyncToSyncBlockOn for TokioBlockOn {
    fn block_on<F: core::future::Future>(&self, future: F) -> F::Output {
        self.0.block_on(future)
    }
}

/// A crzarr error as a zarrs storage error (metadata errors keep their key).
fn storage_error(e: Error) -> StorageError {
    match e {
        Error::InvalidMetadata { ref key, .. } => match StoreKey::new(key.as_str()) {
            Ok(k) => StorageError::InvalidMetadata(k, e.to_string()),
            Err(_) => StorageError::Other(e.to_string()),
        },
        Error::Io(io) => StorageError::IOError(Arc::new(io)),
        other => StorageError::Other(other.to_string()),
    }
}

/// Whether `range` lies within `len` bytes.
fn range_ok(range: ByteRange, len: u64) -> bool {
    match range {
        ByteRange::FromStart(offset, None) => offset <= len,
        ByteRange::FromStart(offset, Some(n)) => offset.checked_add(n).is_some_and(|e| e <= len),
        ByteRange::Suffix(n) => n <= len,
    }
}

fn slice(bytes: &Bytes, range: ByteRange) -> std::result::Result<Bytes, StorageError> {
    let len = bytes.len() as u64;
    if !range_ok(range, len) {
        return Err(InvalidByteRangeError::new(range, len).into());
    }
    // Within `len`, which is a `usize`.
    let (start, end) = (range.start(len) as usize, range.end(len) as usize);
    Ok(bytes.slice(start..end))
}

#[async_trait::async_trait]
impl AsyncReadableStorageTraits for ZarrsStore {
    async fn get(&self, key: &StoreKey) -> std::result::Result<MaybeBytes, StorageError> {
        let inner = self.inner.read().await;
        inner.get(key.as_str()).await.map_err(storage_error)
    }

    async fn get_partial_many<'a>(
        &'a self,
        key: &StoreKey,
        byte_ranges: ByteRangeIterator<'a>,
    ) -> std::result::Result<AsyncMaybeBytesIterator<'a>, StorageError> {
        let Some(bytes) = self.get(key).await? else {
            return Ok(None);
        };
        let parts: Vec<_> = byte_ranges.map(|r| slice(&bytes, r)).collect();
        Ok(Some(futures::stream::iter(parts).boxed()))
    }

    async fn size_key(&self, key: &StoreKey) -> std::result::Result<Option<u64>, StorageError> {
        let inner = self.inner.read().await;
        inner.size(key.as_str()).await.map_err(storage_error)
    }

    fn supports_get_partial(&self) -> bool {
        true
    }
}

#[async_trait::async_trait]
impl AsyncWritableStorageTraits for ZarrsStore {
    async fn set(&self, key: &StoreKey, value: Bytes) -> std::result::Result<(), StorageError> {
        let mut inner = self.inner.write().await;
        inner.stage_set(key.as_str(), value).map_err(storage_error)
    }

    /// Read-modify-write of the whole value, under one lock: crzarr stores values
    /// whole, so the write is staged as a `set`.
    async fn set_partial_many<'a>(
        &'a self,
        key: &StoreKey,
        offset_values: OffsetBytesIterator<'a>,
    ) -> std::result::Result<(), StorageError> {
        let mut inner = self.inner.write().await;
        let k = key.as_str();
        let current = inner.get(k).await.map_err(storage_error)?;
        let mut out = BytesMut::from(current.unwrap_or_default().as_ref());
        for (offset, value) in offset_values {
            let start = usize::try_from(offset)
                .map_err(|_| StorageError::Other(format!("{k}: offset {offset} too large")))?;
            let end = start
                .checked_add(value.len())
                .ok_or_else(|| StorageError::Other(format!("{k}: offset {offset} too large")))?;
            if out.len() < end {
                out.resize(end, 0);
            }
            out[start..end].copy_from_slice(&value);
        }
        inner.stage_set(k, out.freeze()).map_err(storage_error)
    }

    async fn erase(&self, key: &StoreKey) -> std::result::Result<(), StorageError> {
        let mut inner = self.inner.write().await;
        inner.stage_delete(key.as_str()).map_err(storage_error)
    }

    async fn erase_prefix(&self, prefix: &StorePrefix) -> std::result::Result<(), StorageError> {
        let mut inner = self.inner.write().await;
        inner
            .stage_delete_prefix(prefix.as_str())
            .map_err(storage_error)
    }

    /// `false`: partial writes are emulated by rewriting the whole value.
    fn supports_set_partial(&self) -> bool {
        false
    }
}

fn store_keys(
    keys: impl IntoIterator<Item = String>,
) -> std::result::Result<StoreKeys, StorageError> {
    keys.into_iter()
        .map(|k| StoreKey::new(k).map_err(StorageError::from))
        .collect()
}

#[async_trait::async_trait]
impl AsyncListableStorageTraits for ZarrsStore {
    async fn list(&self) -> std::result::Result<StoreKeys, StorageError> {
        self.list_prefix(&StorePrefix::root()).await
    }

    async fn list_prefix(
        &self,
        prefix: &StorePrefix,
    ) -> std::result::Result<StoreKeys, StorageError> {
        let inner = self.inner.read().await;
        store_keys(inner.keys(prefix.as_str()).await.map_err(storage_error)?)
    }

    async fn list_dir(
        &self,
        prefix: &StorePrefix,
    ) -> std::result::Result<StoreKeysPrefixes, StorageError> {
        let p = prefix.as_str();
        let inner = self.inner.read().await;
        let mut keys = Vec::new();
        let mut dirs = BTreeSet::new();
        for k in inner.keys(p).await.map_err(storage_error)? {
            match k.strip_prefix(p).unwrap_or(&k).split_once('/') {
                Some((first, _)) => {
                    dirs.insert(format!("{p}{first}/"));
                }
                None => keys.push(k),
            }
        }
        let prefixes = dirs
            .into_iter()
            .map(|d| StorePrefix::new(d).map_err(StorageError::from))
            .collect::<std::result::Result<_, _>>()?;
        Ok(StoreKeysPrefixes::new(store_keys(keys)?, prefixes))
    }

    async fn size_prefix(&self, prefix: &StorePrefix) -> std::result::Result<u64, StorageError> {
        let inner = self.inner.read().await;
        let sizes = inner.sizes(prefix.as_str()).await.map_err(storage_error)?;
        Ok(sizes.values().sum())
    }
}
