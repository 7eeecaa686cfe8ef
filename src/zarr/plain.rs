//! Plain Zarr v3 stores (a directory or any object-store prefix, no `.crdt/`): listing
//! and key joining, shared by import and export.

use crate::error::{Error, Result};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};

/// One object of a plain Zarr store: its key relative to the store's root.
pub(crate) struct PlainObject {
    pub(crate) key: String,
    pub(crate) meta: ObjectMeta,
}

/// Lists a plain Zarr store under `prefix`, sorted by key.
pub(crate) async fn list_plain(store: &dyn ObjectStore, prefix: &str) -> Result<Vec<PlainObject>> {
    let root = Path::from(prefix);
    let listed: Vec<ObjectMeta> = store
        .list((!prefix.is_empty()).then_some(&root))
        .try_collect()
        .await
        .map_err(|e| Error::store(root.as_ref(), e))?;
    let mut out: Vec<PlainObject> = listed
        .into_iter()
        .filter_map(|meta| {
            let full = meta.location.as_ref();
            let key = if root.as_ref().is_empty() {
                full.to_string()
            } else {
                full.strip_prefix(root.as_ref())?
                    .strip_prefix('/')?
                    .to_string()
            };
            Some(PlainObject { key, meta })
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// The full key of `k` in a plain store under `prefix`.
pub(crate) fn plain_key(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}/{k}")
    }
}
