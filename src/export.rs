//! Export: the current view written as a plain Zarr v3 store at any URL, which any Zarr
//! client opens with no plugin: each node's `zarr.json` and each chunk at its key. No
//! consolidated metadata is written (zarr-python would trust a stale copy over the
//! hierarchy).
//!
//! Re-running into the same destination is incremental: an object whose size and bytes
//! already match is not written again, and objects the view no longer has are deleted.
//! Chunks are written before metadata and stale metadata is deleted last, so a client
//! reading during an export never finds a `zarr.json` whose chunks are not there yet.
//! A destination holding a crzarr repository (`.crdt/`) is refused: an export must
//! never delete a repository's own files.

use crate::bucket::DEFAULT_CONCURRENCY;
use crate::error::{Error, Result};
use crate::import::{list_plain, plain_key};
use crate::key::META_FILE;
use crate::progress::Progress;
use crate::repo::Repo;
use crate::view::{ChunkRef, Entry};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// How to export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Counters for a progress bar: keys of the view handled, and bytes written.
    pub progress: Option<Arc<Progress>>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            concurrency: DEFAULT_CONCURRENCY,
            progress: None,
        }
    }
}

/// What an export did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// Keys written (new or different).
    pub written: u64,
    /// Keys already identical in the destination.
    pub unchanged: u64,
    /// Destination keys the view does not have, deleted.
    pub deleted: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Wall time.
    pub elapsed_ms: u64,
}

fn is_metadata(k: &str) -> bool {
    k == META_FILE || k.ends_with("/zarr.json")
}

impl Repo {
    /// Writes the current view as a plain Zarr v3 store at `prefix` in `dst` (see the
    /// [module docs](self)).
    pub async fn export(
        &self,
        dst: Arc<dyn ObjectStore>,
        prefix: &str,
        opts: &ExportOptions,
    ) -> Result<ExportReport> {
        let started = Instant::now();
        let concurrency = opts.concurrency.max(1);
        let full = |k: &str| Path::from(plain_key(prefix, k));
        let (listing, loaded) = futures::join!(list_plain(dst.as_ref(), prefix), self.load_all());
        let (listing, ()) = (listing?, loaded?);
        if let Some(o) = listing.iter().find(|o| o.key.starts_with(".crdt/")) {
            return Err(Error::Limit(format!(
                "{}: the destination holds a crzarr repository; export writes a plain Zarr store, give it an empty or earlier export location",
                full(&o.key)
            )));
        }
        let existing: BTreeMap<String, u64> =
            listing.into_iter().map(|o| (o.key, o.meta.size)).collect();
        let entries = self.entries().await?;
        let mut report = ExportReport::default();
        if let Some(p) = &opts.progress {
            p.plan(entries.len() as u64, 0);
        }

        // Chunks, then metadata.
        let (meta, chunks): (Vec<_>, Vec<_>) = entries.iter().partition(|(k, _)| is_metadata(k));
        for phase in [chunks, meta] {
            let results: Vec<Option<u64>> = futures::stream::iter(phase)
                .map(|(k, entry)| {
                    let (dst, progress) = (dst.clone(), opts.progress.clone());
                    let target = full(k);
                    let have = existing.get(k.as_str()).copied();
                    async move {
                        let bytes: Bytes = match entry {
                            Entry::Metadata(b) => Bytes::from(b.clone()),
                            Entry::Chunk(ChunkRef::Inline(b))
                            | Entry::Object(ChunkRef::Inline(b)) => Bytes::from(b.clone()),
                            Entry::Chunk(ChunkRef::Blob { hash, len })
                            | Entry::Object(ChunkRef::Blob { hash, len }) => {
                                self.bucket().get_blob(hash, *len).await?.ok_or_else(|| {
                                    Error::MissingBlob {
                                        key: k.clone(),
                                        blob_key: self.bucket().layout.blob(hash).to_string(),
                                    }
                                })?
                            }
                            Entry::Chunk(ChunkRef::Reference(r))
                            | Entry::Object(ChunkRef::Reference(r)) => {
                                self.reference_sources().read(k, r).await?
                            }
                        };
                        let n = bytes.len() as u64;
                        let same = match have {
                            Some(size) if size == n => match dst.get(&target).await {
                                Ok(g) => {
                                    g.bytes()
                                        .await
                                        .map_err(|e| Error::store(target.as_ref(), e))?
                                        == bytes
                                }
                                Err(object_store::Error::NotFound { .. }) => false,
                                Err(e) => return Err(Error::store(target.as_ref(), e)),
                            },
                            _ => false,
                        };
                        let written = if same {
                            None
                        } else {
                            dst.put(&target, PutPayload::from(bytes))
                                .await
                                .map_err(|e| Error::store(target.as_ref(), e))?;
                            Some(n)
                        };
                        if let Some(p) = &progress {
                            p.plan(0, written.unwrap_or(0));
                            p.done(written.unwrap_or(0));
                        }
                        Ok::<_, Error>(written)
                    }
                })
                .buffer_unordered(concurrency)
                .try_collect()
                .await?;
            for r in results {
                match r {
                    Some(n) => {
                        report.written += 1;
                        report.bytes_written += n;
                    }
                    None => report.unchanged += 1,
                }
            }
        }

        // Stale keys: chunks first, metadata last.
        let (stale_meta, stale_chunks): (Vec<String>, Vec<String>) = existing
            .into_keys()
            .filter(|k| !entries.contains_key(k))
            .partition(|k| is_metadata(k));
        for phase in [stale_chunks, stale_meta] {
            let n = phase.len() as u64;
            futures::stream::iter(phase)
                .map(|k| {
                    let dst = dst.clone();
                    let target = full(&k);
                    async move {
                        match dst.delete(&target).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                            Err(e) => Err(Error::store(target.as_ref(), e)),
                        }
                    }
                })
                .buffer_unordered(concurrency)
                .try_collect::<Vec<()>>()
                .await?;
            report.deleted += n;
        }
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }
}
