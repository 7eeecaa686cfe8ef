//! Chunks adopted in place (`import --by-reference`): where their objects live, and
//! the integrity rule (spec/format.md §6.1). A reference records the object's size and
//! the ETag and modification time its store reported; a reader serves the object only
//! while all three still match, and otherwise returns [`Error::ReferenceChanged`].

use crate::error::{Error, Result};
use crate::format::change::ChunkReference;
use crate::io::connect::connect;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A store and the prefix of a source inside it.
type Source = (Arc<dyn ObjectStore>, String);

/// The stores references point into, by source URL: connected on first use from the
/// URL (with the usual environment credentials), or registered by the caller.
#[derive(Debug, Default)]
pub struct ReferenceSources {
    stores: Mutex<HashMap<String, Source>>,
}

impl ReferenceSources {
    /// Serves references to `url` from `store` under `prefix` (for stores a URL cannot
    /// reach, like in-memory ones, or that need other credentials).
    pub fn register(&self, url: &str, store: Arc<dyn ObjectStore>, prefix: &str) {
        self.lock().insert(
            url.to_string(),
            (store, prefix.trim_matches('/').to_string()),
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Source>> {
        // Plain data: a panic elsewhere leaves it usable.
        self.stores.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn resolve(&self, r: &ChunkReference) -> Result<(Arc<dyn ObjectStore>, Path)> {
        let known = self.lock().get(&r.source).cloned();
        let (store, prefix) = match known {
            Some(s) => s,
            None => {
                let loc = connect(&r.source, false)?;
                let s = (loc.store, loc.prefix);
                self.lock().insert(r.source.clone(), s.clone());
                s
            }
        };
        let key = if prefix.is_empty() {
            r.key.clone()
        } else {
            format!("{prefix}/{}", r.key)
        };
        Ok((store, Path::from(key)))
    }

    /// Reads a referenced object for the chunk at `view_key`, checking it still matches.
    pub async fn read(&self, view_key: &str, r: &ChunkReference) -> Result<Bytes> {
        let changed = |reason: String| Error::ReferenceChanged {
            key: view_key.to_string(),
            object: format!("{}/{}", r.source.trim_end_matches('/'), r.key),
            reason,
        };
        let (store, path) = self.resolve(r)?;
        let got = match store.get_opts(&path, GetOptions::default()).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Err(changed("is gone".into())),
            Err(e) => return Err(Error::store(path.as_ref(), e)),
        };
        if let Some(reason) = mismatch(r, &got.meta) {
            return Err(changed(reason));
        }
        let bytes = got
            .bytes()
            .await
            .map_err(|e| Error::store(path.as_ref(), e))?;
        if bytes.len() as u64 != r.size {
            return Err(changed(format!(
                "has {} bytes, not {}",
                bytes.len(),
                r.size
            )));
        }
        Ok(bytes)
    }

    /// Checks a reference with one HEAD: `None` when it matches, else what differs.
    pub async fn check(&self, r: &ChunkReference) -> Result<Option<String>> {
        let (store, path) = self.resolve(r)?;
        match store.head(&path).await {
            Ok(meta) => Ok(mismatch(r, &meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(Some("is gone".into())),
            Err(e) => Err(Error::store(path.as_ref(), e)),
        }
    }
}

/// The reference recording `meta`, an object under `source` at `key`.
pub fn reference_to(source: &str, key: &str, meta: &ObjectMeta) -> ChunkReference {
    ChunkReference {
        source: source.to_string(),
        key: key.to_string(),
        size: meta.size,
        etag: meta.e_tag.clone(),
        modified_ms: meta.last_modified.timestamp_millis().max(0) as u64,
    }
}

/// What differs between a reference and the object's metadata now.
fn mismatch(r: &ChunkReference, meta: &ObjectMeta) -> Option<String> {
    let modified = meta.last_modified.timestamp_millis().max(0) as u64;
    if meta.size != r.size {
        Some(format!("has {} bytes, not {}", meta.size, r.size))
    } else if r.etag.is_some() && meta.e_tag != r.etag {
        Some(format!(
            "has ETag {}, not {}",
            meta.e_tag.as_deref().unwrap_or("(none)"),
            r.etag.as_deref().unwrap_or_default()
        ))
    } else if modified != r.modified_ms {
        Some(format!(
            "was modified (at {modified} ms, not {} ms)",
            r.modified_ms
        ))
    } else {
        None
    }
}
