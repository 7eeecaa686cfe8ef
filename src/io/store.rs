//! I/O against the object store: reads with size limits, create-once writes of
//! content-addressed objects, and listing of change files. Keys come from [`Layout`].

use crate::error::{CorruptKind, Error, Result};
use crate::format::ids::{BlobHash, RepoId};
use crate::format::layout::{ChangeName, Layout, SnapshotName};
pub use crate::format::limits::{DEFAULT_CONCURRENCY, MAX_MARKER_BYTES};
use crate::format::marker::MARKER_FORMAT;
pub use crate::format::marker::{DEFAULT_MIN_GC_WINDOW, Marker, REPO_FORMAT_VERSION, RepoConfig};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{
    GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use serde::Serialize;
use std::sync::Arc;

/// A change file seen in a listing.
#[derive(Clone, Debug)]
pub struct ListedChange {
    /// What its name says.
    pub name: ChangeName,
    /// Its full key.
    pub key: Path,
    /// Size reported by the store.
    pub size: u64,
    /// Last-modified time reported by the store (by the store's clock).
    pub modified: std::time::SystemTime,
}

/// A snapshot metadata object seen in a listing.
#[derive(Clone, Debug)]
pub struct ListedSnapshot {
    /// What its name says.
    pub name: SnapshotName,
    /// Its full key.
    pub key: Path,
    /// Size reported by the store.
    pub size: u64,
    /// Last-modified time reported by the store (by the store's clock).
    pub modified: std::time::SystemTime,
}

/// A file that was skipped, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Bucket key.
    pub key: String,
    /// What is wrong.
    pub error: String,
}

/// One repository location: a store and a layout.
#[derive(Clone, Debug)]
pub struct RepoStore {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) layout: Layout,
}

/// Whether a create-once write made the object or found it already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// Written now.
    New,
    /// Already present with the same content.
    Existing,
}

impl RepoStore {
    /// The store's current time, read back from a probe object it just stamped: the
    /// probe's metadata, whose `last_modified` is "now" by the store's clock.
    pub(crate) async fn now(&self) -> Result<ObjectMeta> {
        let key = self.layout.clock_probe();
        self.store
            .put(&key, PutPayload::from_static(b"clock probe\n"))
            .await
            .map_err(|e| Error::store(key.as_ref(), e))?;
        self.store
            .head(&key)
            .await
            .map_err(|e| Error::store(key.as_ref(), e))
    }

    /// Moves `from` to `.crdt/quarantine/<its key relative to .crdt/>`
    /// ([`crate::format::layout::Layout::quarantine`]): a copy, then a DELETE of the original.
    /// Returns where it went; `None` when it was gone or is not a key that can be
    /// quarantined. Used by `verify --quarantine` and by garbage collection. Moving the
    /// object back to `from` undoes it.
    pub(crate) async fn move_to_quarantine(&self, from: &Path) -> Result<Option<Path>> {
        let Some(to) = self.layout().quarantine(from) else {
            return Ok(None);
        };
        let store = self.store();
        match store.copy(from, &to).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::store(from.as_ref(), e)),
        }
        match store.delete(from).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(Some(to)),
            Err(e) => Err(Error::store(from.as_ref(), e)),
        }
    }

    /// A bucket over `store` with the repository at `prefix`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        RepoStore {
            store,
            layout: Layout::new(prefix),
        }
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// GETs an object; `Ok(None)` if it does not exist. Refuses objects over `limit`.
    pub async fn get(&self, key: &Path, limit: u64) -> Result<Option<Bytes>> {
        let res = match self.store.get_opts(key, GetOptions::default()).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::store(key.as_ref(), e)),
        };
        if res.meta.size > limit {
            return Err(Error::TooLarge {
                key: key.to_string(),
                size: res.meta.size,
                limit,
            });
        }
        let bytes = res
            .bytes()
            .await
            .map_err(|e| Error::store(key.as_ref(), e))?;
        if bytes.len() as u64 > limit {
            return Err(Error::TooLarge {
                key: key.to_string(),
                size: bytes.len() as u64,
                limit,
            });
        }
        Ok(Some(bytes))
    }

    /// Writes an immutable object once. If it already exists, its content must hash
    /// to the same value (a lost reply to a landed create is reported as
    /// `AlreadyExists` by S3 clients that retry).
    pub async fn put_once(&self, key: &Path, bytes: Bytes) -> Result<Created> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(key, PutPayload::from(bytes.clone()), opts)
            .await
        {
            Ok(_) => Ok(Created::New),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let existing = self.get(key, bytes.len() as u64).await?;
                match existing {
                    Some(e) if blake3::hash(&e) == blake3::hash(&bytes) => Ok(Created::Existing),
                    _ => Err(Error::corrupt(
                        key.as_ref(),
                        CorruptKind::HashMismatch(
                            "an object with different content already exists at this \
                             content-addressed key"
                                .into(),
                        ),
                    )),
                }
            }
            Err(e) => Err(Error::store(key.as_ref(), e)),
        }
    }

    /// Writes a content-addressed blob. Overwriting identical bytes is harmless, so no
    /// existence check is needed (one request, and a damaged copy gets repaired).
    pub async fn put_blob(&self, key: &Path, bytes: Bytes) -> Result<()> {
        self.store
            .put_opts(key, PutPayload::from(bytes), PutOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| Error::store(key.as_ref(), e))
    }

    /// Reads the blob `hash` and checks it against its name and the length its
    /// reference gives; `Ok(None)` if it does not exist.
    pub async fn get_blob(&self, hash: &BlobHash, len: u64) -> Result<Option<Bytes>> {
        let key = self.layout.blob(hash);
        let bytes = match self.get(&key, len).await {
            // Longer than the reference says: damaged, not merely large.
            Err(Error::TooLarge { .. }) => {
                return Err(Error::corrupt(
                    key.as_ref(),
                    CorruptKind::HashMismatch(
                        "blob content does not match its hash (longer than its reference)".into(),
                    ),
                ));
            }
            other => other?,
        };
        match bytes {
            Some(b) if b.len() as u64 != len || BlobHash::of(&b) != *hash => Err(Error::corrupt(
                key.as_ref(),
                CorruptKind::HashMismatch("blob content does not match its hash".into()),
            )),
            other => Ok(other),
        }
    }

    /// Reads the repository's settings; the defaults when there are none (buckets
    /// made by older builds). A malformed settings object is an error naming it:
    /// guessing a minimum window could make garbage collection unsafe.
    pub async fn read_config(&self) -> Result<RepoConfig> {
        let key = self.layout.config();
        let Some(bytes) = self.get(&key, MAX_MARKER_BYTES).await? else {
            return Ok(RepoConfig::default());
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(key.as_ref(), format!("not a crzarr settings object: {e}")))
    }

    /// Writes the repository's settings (a plain PUT: the last writer wins).
    pub async fn write_config(&self, config: &RepoConfig) -> Result<()> {
        let key = self.layout.config();
        let mut text = serde_json::to_vec_pretty(config).unwrap_or_default();
        text.push(b'\n');
        self.store
            .put(&key, PutPayload::from(text))
            .await
            .map(|_| ())
            .map_err(|e| Error::store(key.as_ref(), e))
    }

    /// Reads the repository marker; `Ok(None)` if absent.
    pub async fn read_marker(&self) -> Result<Option<RepoId>> {
        let key = self.layout.marker();
        let Some(bytes) = self.get(&key, MAX_MARKER_BYTES).await? else {
            return Ok(None);
        };
        // Refuse a newer version before the strict parse: a newer marker may hold
        // fields this build does not know, and must not be reported as garbage.
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && v.get("format").and_then(|f| f.as_str()) == Some(MARKER_FORMAT)
            && let Some(found) = v.get("format_version").and_then(|f| f.as_u64())
            && found != u64::from(REPO_FORMAT_VERSION)
        {
            return Err(Error::UnsupportedVersion {
                key: key.to_string(),
                found: u32::try_from(found).unwrap_or(u32::MAX),
                supported: REPO_FORMAT_VERSION,
            });
        }
        let m: Marker = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(key.as_ref(), format!("not a crzarr marker: {e}")))?;
        if m.format != MARKER_FORMAT {
            return Err(Error::corrupt(
                key.as_ref(),
                format!("unknown format {:?}", m.format),
            ));
        }
        if m.format_version != REPO_FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                key: key.to_string(),
                found: m.format_version,
                supported: REPO_FORMAT_VERSION,
            });
        }
        m.repo_id
            .parse()
            .map(Some)
            .map_err(|e: String| Error::corrupt(key.as_ref(), e))
    }

    /// Writes the marker for `id` unless one exists; returns the id now in force.
    pub async fn write_marker(&self, id: RepoId) -> Result<RepoId> {
        let text = marker_text(id);
        let key = self.layout.marker();
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&key, PutPayload::from(text), opts)
            .await
        {
            Ok(_) => Ok(id),
            Err(object_store::Error::AlreadyExists { .. }) => self
                .read_marker()
                .await?
                .ok_or_else(|| Error::corrupt(key.as_ref(), "marker vanished")),
            Err(e) => Err(Error::store(key.as_ref(), e)),
        }
    }

    /// Replaces the marker with one for `id`. Only for a repository that holds nothing
    /// yet (sync's `force`): every change names the repository it belongs to.
    pub async fn overwrite_marker(&self, id: RepoId) -> Result<()> {
        let key = self.layout.marker();
        self.store
            .put(&key, PutPayload::from(marker_text(id)))
            .await
            .map(|_| ())
            .map_err(|e| Error::store(key.as_ref(), e))
    }

    /// Lists `.crdt/ops/`: change files sorted by hash, and anything else found there.
    pub async fn list_changes(&self) -> Result<(Vec<ListedChange>, Vec<Problem>)> {
        let dir = self.layout.ops_dir();
        let (named, problems) = parse_listing(self.list_all(&dir).await?, |k| {
            self.layout.parse_change_key(k)
        });
        let mut changes: Vec<ListedChange> = named
            .into_iter()
            .map(|(name, m)| ListedChange {
                name,
                size: m.size,
                modified: m.last_modified.into(),
                key: m.location,
            })
            .collect();
        // Store listing order is not trusted: sort on the client.
        changes.sort_by_key(|c| c.name.hash);
        Ok((changes, problems))
    }

    /// Lists `.crdt/snapshots/`: snapshot metadata objects, greatest name first, and
    /// anything else found there.
    pub async fn list_snapshots(&self) -> Result<(Vec<ListedSnapshot>, Vec<Problem>)> {
        let dir = self.layout.snapshots_dir();
        let (named, problems) = parse_listing(self.list_all(&dir).await?, |k| {
            self.layout.parse_snapshot_key(k)
        });
        let mut snaps: Vec<ListedSnapshot> = named
            .into_iter()
            .map(|(name, m)| ListedSnapshot {
                name,
                size: m.size,
                modified: m.last_modified.into(),
                key: m.location,
            })
            .collect();
        snaps.sort_by_key(|s| std::cmp::Reverse(s.name));
        Ok((snaps, problems))
    }

    /// Every object under `dir`, with the store's sizes and last-modified times.
    pub async fn list_all(&self, dir: &Path) -> Result<Vec<ObjectMeta>> {
        self.store
            .list(Some(dir))
            .try_collect()
            .await
            .map_err(|e| Error::store(dir.as_ref(), e))
    }
}

/// The marker's bytes for `id`.
fn marker_text(id: RepoId) -> Vec<u8> {
    let m = Marker {
        format: MARKER_FORMAT.into(),
        format_version: REPO_FORMAT_VERSION,
        repo_id: id.to_string(),
    };
    let mut text = serde_json::to_vec_pretty(&m).unwrap_or_default();
    text.push(b'\n');
    text
}

/// Splits a listing into objects whose key `parse` accepts and foreign files.
fn parse_listing<N>(
    metas: Vec<ObjectMeta>,
    parse: impl Fn(&Path) -> std::result::Result<N, &'static str>,
) -> (Vec<(N, ObjectMeta)>, Vec<Problem>) {
    let mut named = Vec::with_capacity(metas.len());
    let mut problems = Vec::new();
    for m in metas {
        match parse(&m.location) {
            Ok(n) => named.push((n, m)),
            Err(reason) => problems.push(Problem {
                key: m.location.to_string(),
                error: format!("foreign file: {reason}"),
            }),
        }
    }
    (named, problems)
}
