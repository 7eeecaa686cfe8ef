//! Import: a plain Zarr v3 store (a directory or any object-store URL) into the
//! repository as one change. Re-importing records only the difference: nodes added,
//! changed or deleted, chunks written or deleted.
//!
//! Every `zarr.json` is validated as a client's write is (`meta::parse_node_doc`), and
//! an invalid one refuses the whole import, naming its key. Zarr v2 metadata is refused.
//! Keys that are neither metadata nor a chunk of an array (stray files, a `.crdt/`
//! directory) are reported in [`ImportReport::ignored`] and not imported.
//!
//! Chunk bytes are read with bounded concurrency; a chunk that differs from the view is
//! stored as a blob as soon as it is read, so memory holds at most `concurrency` chunks,
//! and the change that references them is written last, as every commit is.

use crate::error::{Error, Result};
use crate::fold::view::{ChunkRef, Entry, NodeType};
use crate::format::change::{ChunkReference, INLINE_MAX};
use crate::format::ids::{BlobHash, ChangeHash};
use crate::io::progress::Progress;
use crate::io::reference::reference_to;
use crate::io::store::DEFAULT_CONCURRENCY;
use crate::repo::Repo;
use crate::zarr::key::{self, meta_path};
use crate::zarr::meta::{NodeDoc, parse_node_doc};
use crate::zarr::plain::{list_plain, plain_key};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// How to import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Commit message (default: `import` and the source's description).
    pub message: Option<String>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Counters for a progress bar: source objects read and their bytes.
    pub progress: Option<Arc<Progress>>,
    /// Adopt chunks in place instead of copying them: each chunk is recorded as a
    /// reference into the source, whose absolute URL this is (`file:///abs/dir`,
    /// `s3://bucket/prefix`). Readers then read the source's objects, and only while
    /// they still match what was recorded (spec/format.md §6.1). Metadata is copied.
    pub by_reference: Option<String>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            message: None,
            concurrency: DEFAULT_CONCURRENCY,
            progress: None,
            by_reference: None,
        }
    }
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// The change recorded, or `None` when the source equals the view.
    pub change: Option<ChangeHash>,
    /// Nodes the view did not have.
    pub nodes_created: u64,
    /// Nodes whose metadata (attributes, shape, or layout) changed.
    pub nodes_updated: u64,
    /// Nodes (with their subtrees) the source no longer has.
    pub nodes_deleted: u64,
    /// Chunks new or different from the view.
    pub chunks_written: u64,
    /// Chunks identical to the view's.
    pub chunks_unchanged: u64,
    /// Chunks the source no longer has (of arrays it still has).
    pub chunks_deleted: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Source keys that are neither metadata nor a chunk of an array, not imported.
    pub ignored: Vec<String>,
    /// Wall time.
    pub elapsed_ms: u64,
}

const V2_METADATA: [&str; 4] = [".zarray", ".zgroup", ".zattrs", ".zmetadata"];

/// The deepest node whose subtree holds `k`.
fn owner<'n>(nodes: &'n BTreeMap<String, (Bytes, NodeDoc)>, k: &str) -> Option<&'n str> {
    let mut up = key::parent(k);
    while let Some(p) = up {
        if let Some((k, _)) = nodes.get_key_value(p) {
            return Some(k);
        }
        up = key::parent(p);
    }
    None
}

/// A chunk read from the source and what the change must say about it.
enum Read {
    Same,
    Inline(String, String, Bytes),
    /// Array, chunk, blob, length, and the source object (to store again if needed).
    Stored(String, String, BlobHash, u64, Path),
    Reference(String, String, ChunkReference),
}

impl Repo {
    /// Imports the plain Zarr v3 store at `prefix` in `src` as one change: what differs
    /// from the current view (see the [module docs](self)).
    pub async fn import(
        &mut self,
        src: Arc<dyn ObjectStore>,
        prefix: &str,
        opts: &ImportOptions,
    ) -> Result<ImportReport> {
        let started = Instant::now();
        // By the store's clock, which garbage collection judges blob ages by.
        let started_store: SystemTime = self.bucket().now().await?.last_modified.into();
        let concurrency = opts.concurrency.max(1);
        let full = |k: &str| plain_key(prefix, k);
        let listing = list_plain(src.as_ref(), prefix).await?;
        let mut report = ImportReport::default();
        if let Some(p) = &opts.progress {
            let bytes = listing.iter().map(|o| o.meta.size).sum();
            p.plan(listing.len() as u64, bytes);
        }

        // Metadata first: all of it must be valid before anything is written.
        let mut meta_keys = Vec::new();
        let mut others = Vec::new();
        for o in listing {
            if let Some(v2) = V2_METADATA
                .iter()
                .find(|n| o.key == **n || o.key.ends_with(&format!("/{n}")))
            {
                return Err(Error::invalid_metadata(
                    full(&o.key),
                    format!(
                        "{v2} is Zarr v2 metadata; crzarr imports Zarr v3 stores (convert with zarr-python first)"
                    ),
                ));
            }
            match meta_path(&o.key) {
                Some(p) if key::check_key(&o.key).is_ok() => meta_keys.push((p.to_string(), o)),
                _ => others.push(o),
            }
        }
        let docs: Vec<(String, Bytes)> = futures::stream::iter(meta_keys)
            .map(|(path, o)| {
                let src = src.clone();
                async move {
                    let bytes = match src.get(&o.meta.location).await {
                        Ok(g) => g.bytes().await,
                        Err(e) => Err(e),
                    }
                    .map_err(|e| Error::store(o.meta.location.as_ref(), e))?;
                    Ok::<_, Error>((path, bytes))
                }
            })
            .buffered(concurrency)
            .try_collect()
            .await?;
        let mut nodes: BTreeMap<String, (Bytes, NodeDoc)> = BTreeMap::new();
        for (path, bytes) in docs {
            report.bytes_read += bytes.len() as u64;
            if let Some(p) = &opts.progress {
                p.done(bytes.len() as u64);
            }
            let meta_key = full(&key::meta_key(&path));
            key::check_node_path(&path)
                .map_err(|e| Error::invalid_metadata(&meta_key, e.rule.to_string()))?;
            let doc = parse_node_doc(&meta_key, &bytes)?;
            nodes.insert(path, (bytes, doc));
        }
        for path in nodes.keys() {
            if let Some(a) = owner(&nodes, path)
                && matches!(nodes.get(a), Some((_, NodeDoc::Array { .. })))
            {
                return Err(Error::invalid_metadata(
                    full(&key::meta_key(path)),
                    format!("a node inside array {a:?}"),
                ));
            }
        }

        // The view to compare with: every manifest piece is needed.
        self.load_all().await?;
        let entries = self.entries().await?;
        let view = self.view_index();
        let fold = self.fold();
        let mut created = Vec::new();
        let mut updated = Vec::new();
        // Arrays whose chunks are all new: created, or recreated with another layout.
        let mut fresh: BTreeSet<&str> = BTreeSet::new();
        for (path, (bytes, doc)) in &nodes {
            let shown = match view.node_type(path) {
                Some(NodeType::Group | NodeType::Array) => {
                    entries.get(&key::meta_key(path)).and_then(|e| match e {
                        Entry::Metadata(b) => parse_node_doc(path, b).ok(),
                        Entry::Chunk(_) | Entry::Object(_) => None,
                    })
                }
                _ => None,
            };
            match (&shown, doc) {
                (None, _) => created.push((path.clone(), bytes.clone())),
                (Some(old), new) if old == new => {}
                (Some(_), _) => updated.push((path.clone(), bytes.clone())),
            }
            if let NodeDoc::Array { meta, .. } = doc {
                let same = matches!(&shown, Some(NodeDoc::Array { meta: old, .. }) if old.same_chunk_layout(meta));
                if !same {
                    fresh.insert(path.as_str());
                }
            }
        }
        // Nodes the source no longer has: only the topmost of each deleted subtree.
        let mut deleted: Vec<String> = Vec::new();
        for path in view.node_paths() {
            if !matches!(view.node_type(path), Some(NodeType::Group | NodeType::Array))
                || nodes.contains_key(path)
                || deleted.iter().any(|d| key::in_subtree(d, path))
                // The source still has a node below it (an implicit parent): keep it.
                || nodes.keys().any(|n| key::in_subtree(path, n))
            {
                continue;
            }
            deleted.push(path.to_string());
        }

        // Chunks: read, compare with the view, store what differs as a blob right away.
        let mut chunks = Vec::new();
        for o in others {
            let array = match owner(&nodes, &o.key) {
                Some(a) if matches!(nodes.get(a), Some((_, NodeDoc::Array { .. }))) => a,
                _ => {
                    report.ignored.push(full(&o.key));
                    if let Some(p) = &opts.progress {
                        p.unplan(1, o.meta.size);
                    }
                    continue;
                }
            };
            let rel = if array.is_empty() {
                o.key.clone()
            } else {
                o.key[array.len() + 1..].to_string()
            };
            if key::check_chunk_key(&rel).is_err() || key::check_key(&o.key).is_err() {
                report.ignored.push(full(&o.key));
                continue;
            }
            let shown = if fresh.contains(array) {
                None
            } else {
                match entries.get(&o.key) {
                    Some(Entry::Chunk(c)) => Some(c.clone()),
                    _ => None,
                }
            };
            chunks.push((array.to_string(), rel, o, shown));
        }
        let src_chunks: BTreeSet<String> = chunks.iter().map(|c| c.2.key.clone()).collect();
        let bucket = self.bucket().clone();
        let progress = opts.progress.clone();
        let by_reference = opts.by_reference.clone();
        let reads: Vec<(Read, u64)> = futures::stream::iter(chunks)
            .map(|(array, rel, o, shown)| {
                let (src, bucket, progress) = (src.clone(), bucket.clone(), progress.clone());
                let by_reference = by_reference.clone();
                async move {
                    if let Some(source) = by_reference {
                        // Nothing is read: the listing's size, ETag and time are recorded.
                        if let Some(p) = &progress {
                            p.done(0);
                        }
                        let r = reference_to(&source, &o.key, &o.meta);
                        let read = match shown {
                            Some(ChunkRef::Reference(old)) if old == r => Read::Same,
                            _ => Read::Reference(array, rel, r),
                        };
                        return Ok::<_, Error>((read, 0));
                    }
                    let bytes = match src.get(&o.meta.location).await {
                        Ok(g) => g.bytes().await,
                        Err(e) => Err(e),
                    }
                    .map_err(|e| Error::store(o.meta.location.as_ref(), e))?;
                    let n = bytes.len() as u64;
                    if let Some(p) = &progress {
                        p.done(n);
                    }
                    let read = if bytes.len() <= INLINE_MAX {
                        match shown {
                            Some(ChunkRef::Inline(b)) if b == bytes => Read::Same,
                            _ => Read::Inline(array, rel, bytes),
                        }
                    } else {
                        let hash = BlobHash::of(&bytes);
                        match shown {
                            Some(ChunkRef::Blob { hash: h, .. }) if h == hash => Read::Same,
                            _ => {
                                bucket.put_blob(&bucket.layout.blob(&hash), bytes).await?;
                                Read::Stored(array, rel, hash, n, o.meta.location.clone())
                            }
                        }
                    };
                    Ok::<_, Error>((read, n))
                }
            })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;

        // Chunks of kept arrays the source no longer has.
        let mut chunk_deletes = Vec::new();
        for (path, (_, doc)) in &nodes {
            if !matches!(doc, NodeDoc::Array { .. }) || fresh.contains(path.as_str()) {
                continue;
            }
            for rel in view.chunk_keys(fold, path) {
                let k = if path.is_empty() {
                    rel.clone()
                } else {
                    format!("{path}/{rel}")
                };
                if !src_chunks.contains(&k) {
                    chunk_deletes.push((path.clone(), rel));
                }
            }
        }

        let (n_created, n_updated, n_deleted) = (
            created.len() as u64,
            updated.len() as u64,
            deleted.len() as u64,
        );
        let stored: Vec<(BlobHash, Path)> = reads
            .iter()
            .filter_map(|(r, _)| match r {
                Read::Stored(_, _, hash, _, from) => Some((*hash, from.clone())),
                _ => None,
            })
            .collect();
        self.keep_blobs_young(&src, started_store, stored, concurrency)
            .await?;
        let message = opts.message.clone();
        let mut s = self.session();
        for path in &deleted {
            s.delete(&key::meta_key(path))?;
        }
        for (path, bytes) in &created {
            s.set(&key::meta_key(path), bytes.clone())?;
        }
        for (path, bytes) in &updated {
            s.set(&key::meta_key(path), bytes.clone())?;
        }
        for (read, n) in reads {
            report.bytes_read += n;
            match read {
                Read::Same => report.chunks_unchanged += 1,
                Read::Inline(array, rel, bytes) => {
                    s.set_chunk(&array, &rel, bytes)?;
                    report.chunks_written += 1;
                }
                Read::Stored(array, rel, hash, len, _) => {
                    s.set_chunk_stored(&array, &rel, hash, len)?;
                    report.chunks_written += 1;
                }
                Read::Reference(array, rel, r) => {
                    s.set_chunk_reference(&array, &rel, r)?;
                    report.chunks_written += 1;
                }
            }
        }
        for (array, rel) in &chunk_deletes {
            s.delete_chunk(array, rel)?;
        }
        report.chunks_deleted = chunk_deletes.len() as u64;
        report.nodes_created = n_created;
        report.nodes_updated = n_updated;
        report.nodes_deleted = n_deleted;
        report.change = s
            .commit(self, message.as_deref().or(Some("import")))
            .await?;
        report.ignored.sort();
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// Blobs stored early in an import that ran long may be older than the garbage
    /// collection window when the change naming them lands (protocols.md §1). When the
    /// import has run half the repository's minimum window, every blob it stored is
    /// checked by HEAD, and one that is gone or as old as that is read from the source
    /// and stored again, so each is young when the change lands.
    async fn keep_blobs_young(
        &self,
        src: &Arc<dyn ObjectStore>,
        started: SystemTime,
        stored: Vec<(BlobHash, Path)>,
        concurrency: usize,
    ) -> Result<()> {
        let bucket = self.bucket().clone();
        let half = bucket.read_config().await?.min_gc_window() / 2;
        let now: SystemTime = bucket.now().await?.last_modified.into();
        if stored.is_empty() || now.duration_since(started).unwrap_or_default() < half {
            return Ok(());
        }
        futures::stream::iter(stored)
            .map(|(hash, from)| {
                let (bucket, src) = (bucket.clone(), src.clone());
                async move {
                    let key = bucket.layout.blob(&hash);
                    let young = match bucket.store.head(&key).await {
                        Ok(m) => {
                            now.duration_since(m.last_modified.into())
                                .unwrap_or_default()
                                < half
                        }
                        Err(object_store::Error::NotFound { .. }) => false,
                        Err(e) => return Err(Error::store(key.as_ref(), e)),
                    };
                    if young {
                        return Ok(());
                    }
                    let bytes = match src.get(&from).await {
                        Ok(g) => g.bytes().await,
                        Err(e) => Err(e),
                    }
                    .map_err(|e| Error::store(from.as_ref(), e))?;
                    if BlobHash::of(&bytes) != hash {
                        return Err(Error::corrupt(
                            from.as_ref(),
                            "the source object changed during the import; import again",
                        ));
                    }
                    bucket.put_blob(&key, bytes).await
                }
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }
}
