//! Zarr keys and node paths as the view exposes them, and the rules that refuse bad ones.
//!
//! A node path is `""` for the root or `a/b` for nested nodes; its metadata lives at
//! `a/b/zarr.json` (root: `zarr.json`). Chunk keys are relative to their array
//! (`c/0/1`); the store key is `a/b/c/0/1`.

pub use crate::error::zarr::{KeyError, KeyRule};
use crate::error::{Error, Result};
pub use crate::format::limits::MAX_KEY_LEN;

/// File name of a node's metadata document.
pub const META_FILE: &str = "zarr.json";

/// Name reserved for crzarr's own files at the repository root.
pub const RESERVED_DIR: &str = ".crdt";

impl From<KeyError> for Error {
    fn from(e: KeyError) -> Self {
        Error::invalid_key(e.key, e.rule.to_string())
    }
}

fn refuse(key: &str, rule: KeyRule) -> Result<(), KeyError> {
    Err(KeyError {
        key: key.into(),
        rule,
    })
}

/// Checks one segment shared by node names and chunk keys.
fn check_segment(full: &str, seg: &str) -> Result<(), KeyError> {
    if seg.is_empty() {
        return refuse(full, KeyRule::EmptySegment);
    }
    if seg == "." || seg == ".." {
        return refuse(full, KeyRule::DotSegment);
    }
    if seg.eq_ignore_ascii_case(RESERVED_DIR) {
        return refuse(full, KeyRule::Reserved);
    }
    if seg.chars().any(|c| c.is_control() || c == '\\') {
        return refuse(full, KeyRule::Control);
    }
    Ok(())
}

/// Validates a store key (no leading or trailing `/`) without allocating: it runs
/// for every op decoded.
pub fn check_key(key: &str) -> Result<(), KeyError> {
    if key.len() > MAX_KEY_LEN {
        return refuse(key, KeyRule::TooLong);
    }
    if key.starts_with('/') {
        return refuse(key, KeyRule::Absolute);
    }
    if key.is_empty() {
        return refuse(key, KeyRule::Empty);
    }
    key.split('/').try_for_each(|s| check_segment(key, s))
}

/// Validates a node path (`""` is the root). Node names also may not start with `__`
/// (reserved by Zarr v3) nor be `zarr.json`.
pub fn check_node_path(path: &str) -> Result<(), KeyError> {
    if path.is_empty() {
        return Ok(());
    }
    check_key(path)?;
    for s in path.split('/') {
        if s.starts_with("__") {
            return refuse(path, KeyRule::ZarrReserved);
        }
        if s == META_FILE {
            return refuse(path, KeyRule::MetaNode);
        }
    }
    Ok(())
}

/// Validates a chunk key relative to its array.
pub fn check_chunk_key(key: &str) -> Result<(), KeyError> {
    check_key(key)?;
    if key.split('/').any(|s| s == META_FILE) {
        return refuse(key, KeyRule::MetaChunk);
    }
    Ok(())
}

/// Validates the key of an object: a store key that is neither a node's `zarr.json`
/// nor a chunk (zarrs' and other tools' own files). No segment may be `zarr.json`, so
/// objects never stand in for node metadata.
pub fn check_object_key(key: &str) -> Result<(), KeyError> {
    check_key(key)?;
    if key.split('/').any(|s| s == META_FILE) {
        return refuse(key, KeyRule::MetaObject);
    }
    Ok(())
}

/// Store key of a node's metadata.
pub fn meta_key(path: &str) -> String {
    if path.is_empty() {
        META_FILE.to_string()
    } else {
        format!("{path}/{META_FILE}")
    }
}

/// The node path whose metadata `store_key` is (`zarr.json` is the root's), if it is
/// a node's `zarr.json`.
pub fn meta_path(store_key: &str) -> Option<&str> {
    if store_key == META_FILE {
        Some("")
    } else {
        store_key.strip_suffix("/zarr.json")
    }
}

/// Store key of a chunk.
pub fn chunk_store_key(array: &str, chunk: &str) -> String {
    if array.is_empty() {
        chunk.to_string()
    } else {
        format!("{array}/{chunk}")
    }
}

/// Parent of a node path; `None` for the root.
pub fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        None
    } else {
        Some(path.rsplit_once('/').map_or("", |(p, _)| p))
    }
}

/// Whether `path` lies in the subtree rooted at `root` (inclusive).
pub fn in_subtree(root: &str, path: &str) -> bool {
    root.is_empty()
        || path == root
        || (path.len() > root.len()
            && path.starts_with(root)
            && path.as_bytes()[root.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_traversal_and_reserved() {
        for bad in [
            "",
            "/a",
            "a//b",
            "a/../b",
            "..",
            "./a",
            ".crdt/ops/x",
            "a/.CRDT",
            "a/b/",
            "a\\b",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_node_path("a/__b").is_err());
        assert!(check_node_path("a/zarr.json").is_err());
        assert!(check_chunk_key("c/zarr.json").is_err());
        assert!(check_object_key("a/zarr.json").is_err());
        assert!(check_object_key("zarr.json/x").is_err());
        assert!(check_object_key("a/.crdt").is_err());
        assert!(check_object_key("a/b").is_ok());
        assert!(check_key(&"a".repeat(1025)).is_err());
        assert!(check_key("a/b/c").is_ok());
    }

    #[test]
    fn paths() {
        assert_eq!(meta_key(""), "zarr.json");
        assert_eq!(meta_key("a/b"), "a/b/zarr.json");
        assert_eq!(parent("a/b"), Some("a"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
        assert!(in_subtree("a", "a/b"));
        assert!(in_subtree("a", "a"));
        assert!(!in_subtree("a", "ab"));
        assert!(in_subtree("", "x"));
    }
}
