//! Zarr v3 keys and node metadata: validation and rendering. A leaf: it knows nothing
//! of changes, folds or buckets.

pub mod key;
pub mod meta;
pub(crate) mod plain;
