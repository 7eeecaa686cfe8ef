//! Export: the current view written as a plain Zarr v3 store at any URL, which any Zarr
//! client opens with no plugin: each node's `zarr.json` and each chunk at its key. No
//! consolidated metadata is written (zarr-python would trust a stale copy over the
//! hierarchy).
//!
//! An export never overwrites nor deletes an object it did not write. It keeps a record,
//! [`EXPORT_RECORD`] at the destination, of the repository and the keys it wrote, and:
//!
//! * refuses a non-empty destination without a record (naming what it found), and one
//!   whose record is another repository's;
//! * refuses to write a key the destination holds but the record does not list;
//! * re-running into the same destination is incremental: an object whose size and bytes
//!   already match is not written again, and keys the record lists that the view no
//!   longer has are deleted; every other object is left as it is.
//!
//! Before writing a key the record does not list yet, the record is rewritten to list it
//! too, so an export stopped half-way is never refused by the next one. Chunks are written
//! before metadata and stale metadata is deleted last, so a client reading during an
//! export never finds a `zarr.json` whose chunks are not there yet. A destination holding
//! a crzarr repository (`.crdt/`) is refused: an export must never touch a repository.

use crate::error::{CorruptKind, Error, Result};
use crate::fold::view::{ChunkRef, Entry};
use crate::io::progress::Progress;
use crate::io::store::DEFAULT_CONCURRENCY;
use crate::repo::Repo;
use crate::zarr::key::META_FILE;
use crate::zarr::plain::{list_plain, plain_key};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
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
    /// Keys an earlier export wrote that the view no longer has, deleted.
    pub deleted: u64,
    /// Destination objects no export of this repository wrote, left as they are.
    pub foreign: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Wall time.
    pub elapsed_ms: u64,
}

fn is_metadata(k: &str) -> bool {
    k == META_FILE || k.ends_with("/zarr.json")
}

/// Key, under the export's prefix, of the record of what exports wrote there.
pub const EXPORT_RECORD: &str = ".crzarr-export.json";
/// Largest export record read (about 25 million keys).
pub const MAX_EXPORT_RECORD_BYTES: u64 = 256 << 20;
const RECORD_VERSION: u32 = 1;

/// The record an export leaves at its destination: which repository wrote there, at
/// which heads, and every key it wrote, ascending. Keys are front-coded, `[n, suffix]`
/// = the previous key's first `n` bytes then `suffix`, so millions of chunk keys that
/// share their array's path cost a few bytes each.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    crzarr_export: u32,
    repo: String,
    heads: Vec<String>,
    keys: Vec<(usize, String)>,
}

impl Record {
    fn new(repo: String, heads: Vec<String>, keys: &BTreeSet<String>) -> Record {
        let mut out = Vec::with_capacity(keys.len());
        let mut prev = "";
        for k in keys {
            let mut n = prev
                .bytes()
                .zip(k.bytes())
                .take_while(|(a, b)| a == b)
                .count();
            while !k.is_char_boundary(n) {
                n -= 1;
            }
            out.push((n, k[n..].to_string()));
            prev = k;
        }
        Record {
            crzarr_export: RECORD_VERSION,
            repo,
            heads,
            keys: out,
        }
    }

    fn encode(&self) -> Bytes {
        // Strings and integers only: serializing cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Parses a record read from `key`, checking its version and key coding.
    fn decode(key: &str, bytes: &[u8]) -> Result<(String, BTreeSet<String>)> {
        let r: Record = serde_json::from_slice(bytes).map_err(|e| {
            Error::corrupt(
                key,
                CorruptKind::Malformed {
                    what: "export record",
                    detail: e.to_string(),
                },
            )
        })?;
        if r.crzarr_export != RECORD_VERSION {
            return Err(Error::UnsupportedVersion {
                key: key.into(),
                found: r.crzarr_export,
                supported: RECORD_VERSION,
            });
        }
        let mut keys = BTreeSet::new();
        let mut prev = String::new();
        for (n, suffix) in r.keys {
            if n > prev.len() || !prev.is_char_boundary(n) {
                return Err(Error::corrupt(key, "export record: bad key prefix length"));
            }
            let k = format!("{}{suffix}", &prev[..n]);
            if k <= prev && !keys.is_empty() {
                return Err(Error::corrupt(key, "export record: keys not ascending"));
            }
            keys.insert(k.clone());
            prev = k;
        }
        Ok((r.repo, keys))
    }
}

/// Up to five keys and how many more, for messages.
fn some_keys<'a>(keys: impl ExactSizeIterator<Item = &'a String>) -> String {
    let n = keys.len();
    let mut out = keys
        .take(5)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if n > 5 {
        out.push_str(&format!(" and {} more", n - 5));
    }
    out
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
        let location = if prefix.is_empty() {
            dst.to_string()
        } else {
            format!("{dst}/{prefix}")
        };
        let refuse = |reason: String| Error::ExportRefused {
            location: location.clone(),
            reason,
        };
        if let Some(o) = listing.iter().find(|o| o.key.starts_with(".crdt/")) {
            return Err(refuse(format!(
                "{}: the destination holds a crzarr repository; export writes a plain Zarr store, give it an empty or earlier export location",
                full(&o.key)
            )));
        }
        let entries = self.entries().await?;
        if entries.contains_key(EXPORT_RECORD) {
            return Err(refuse(format!(
                "the repository holds an object named {EXPORT_RECORD}, the key exports keep their record at; rename it"
            )));
        }
        let record_path = full(EXPORT_RECORD);
        let mut existing: BTreeMap<String, u64> =
            listing.into_iter().map(|o| (o.key, o.meta.size)).collect();
        // What earlier exports of this repository wrote here: only those keys are ever
        // overwritten or deleted.
        let (owned, old_record): (BTreeSet<String>, Option<Bytes>) = match existing
            .remove(EXPORT_RECORD)
        {
            None if existing.is_empty() => (BTreeSet::new(), None),
            None => {
                return Err(refuse(format!(
                    "it is not empty and holds no record of an earlier export ({EXPORT_RECORD}); \
                         export never deletes nor overwrites what it did not write. Found: {}. \
                         Export to a new or empty location",
                    some_keys(existing.keys())
                )));
            }
            Some(size) => {
                if size > MAX_EXPORT_RECORD_BYTES {
                    return Err(Error::TooLarge {
                        key: record_path.to_string(),
                        size,
                        limit: MAX_EXPORT_RECORD_BYTES,
                    });
                }
                let bytes = dst
                    .get(&record_path)
                    .await
                    .map_err(|e| Error::store(record_path.as_ref(), e))?
                    .bytes()
                    .await
                    .map_err(|e| Error::store(record_path.as_ref(), e))?;
                let (repo, keys) = Record::decode(record_path.as_ref(), &bytes)?;
                if repo != self.id().to_string() {
                    return Err(refuse(format!(
                        "it holds an export of repository {repo}, not of {}; export to a new or empty location",
                        self.id()
                    )));
                }
                (keys, Some(bytes))
            }
        };
        let clash: Vec<&String> = entries
            .keys()
            .filter(|k| existing.contains_key(*k) && !owned.contains(*k))
            .collect();
        if !clash.is_empty() {
            return Err(refuse(format!(
                "it holds objects no export of this repository wrote, at keys the view has: {}; \
                 move or delete them, or export to a new or empty location",
                some_keys(clash.into_iter())
            )));
        }
        let heads: Vec<String> = self.fold().heads().iter().map(|h| h.to_hex()).collect();
        let put_record = |keys: &BTreeSet<String>| {
            let bytes = Record::new(self.id().to_string(), heads.clone(), keys).encode();
            let (dst, path) = (dst.clone(), record_path.clone());
            async move {
                dst.put(&path, PutPayload::from(bytes))
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::store(path.as_ref(), e))
            }
        };
        // Keys about to be written are recorded first: a stopped export leaves nothing
        // the next one would take for someone else's.
        if entries.keys().any(|k| !owned.contains(k)) {
            let mut intent = owned.clone();
            intent.extend(entries.keys().cloned());
            put_record(&intent).await?;
        }
        let mut report = ExportReport {
            foreign: existing
                .keys()
                .filter(|k| !owned.contains(*k) && !entries.contains_key(*k))
                .count() as u64,
            ..Default::default()
        };
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

        // Stale keys, only those an earlier export wrote: chunks first, metadata last.
        let (stale_meta, stale_chunks): (Vec<String>, Vec<String>) = existing
            .into_keys()
            .filter(|k| owned.contains(k) && !entries.contains_key(k))
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
        // The record, last: exactly the keys of this view.
        let keys: BTreeSet<String> = entries.into_keys().collect();
        let record = Record::new(self.id().to_string(), heads.clone(), &keys).encode();
        if old_record.as_ref() != Some(&record) {
            put_record(&keys).await?;
        }
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }
}
