//! Random Zarr edits shared by the property tests (`convergence`, `faults` and `sync`
//! in `tests/suite`): a small alphabet of node paths, attribute names and chunk
//! coordinates, so that concurrent edits by different replicas collide often, and
//! [`apply_edits`], which stages them in one session and commits.
#![allow(dead_code)]

use bytes::Bytes;
use crzarr::fold::view::Entry;
use crzarr::format::ids::ChangeHash;
use crzarr::repo::Repo;
use crzarr::session::WriteSession;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Node paths: few, nested, so creates, deletes and re-creates collide often.
pub const PATHS: [&str; 5] = ["", "g", "g/a", "g/a/z", "b"];
/// Paths arrays are created at (never the root, which would hide everything).
pub const ARRAY_PATHS: [&str; 4] = ["g", "g/a", "g/a/z", "b"];
pub const ATTR_KEYS: [&str; 3] = ["a", "b", "c"];
/// Object keys: beside the hierarchy, under a group, and under array paths (where an
/// array shown there hides them).
pub const OBJECT_KEYS: [&str; 4] = ["notes", "g/readme", "b/extra/x", "g/a/x"];

/// One staged Zarr edit. Indices select from the small path and key alphabets.
#[derive(Clone, Debug)]
pub enum Edit {
    Group {
        path: usize,
        attrs: Vec<(usize, u8)>,
    },
    /// `layout` picks dtype-compatible but different array metadata (see [`array_doc`]).
    Array {
        path: usize,
        layout: u8,
        shape: [u64; 2],
        attrs: Vec<(usize, u8)>,
    },
    /// Deletes a node and its subtree: by its `zarr.json` or by its prefix.
    Delete {
        path: usize,
        by_prefix: bool,
    },
    SetAttr {
        path: usize,
        key: usize,
        value: u8,
    },
    DeleteAttr {
        path: usize,
        key: usize,
    },
    Resize {
        path: usize,
        shape: [u64; 2],
    },
    /// `big` chunks go to blobs (over 4096 bytes), others inline.
    SetChunk {
        path: usize,
        coords: [u64; 2],
        big: bool,
        seed: u8,
    },
    /// Deletes one chunk by its key, or (`prefix`) every chunk under `c/<i>/`
    /// (`c/<i>` itself for one-dimensional arrays) with `delete_prefix`.
    DeleteChunk {
        path: usize,
        coords: [u64; 2],
        prefix: bool,
    },
    /// Writes an object (a key no node owns; hidden while an array owns it).
    SetObject {
        key: usize,
        big: bool,
        seed: u8,
    },
    DeleteObject {
        key: usize,
    },
}

pub fn attrs() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((0..ATTR_KEYS.len(), 0..4u8), 0..3)
}

/// Array paths, mostly the two the base creates (`g/a` and `b`).
pub fn array_path() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0), 3 => Just(1), 1 => Just(2), 3 => Just(3)]
}

/// Mostly the path's usual layout (so creates merge or update), sometimes any.
pub fn layout(path: usize) -> impl Strategy<Value = u8> {
    let usual = [0u8, 0, 3, 2][path];
    prop_oneof![3 => Just(usual), 1 => 0..8u8]
}

pub fn edit() -> impl Strategy<Value = Edit> {
    let shape = [0..8u64, 0..8u64];
    let coords = [0..4u64, 0..4u64];
    prop_oneof![
        1 => (0..PATHS.len(), attrs()).prop_map(|(path, attrs)| Edit::Group { path, attrs }),
        2 => (array_path().prop_flat_map(|p| (Just(p), layout(p))), shape.clone(), attrs())
            .prop_map(|((path, layout), shape, attrs)| Edit::Array { path, layout, shape, attrs }),
        // Deleting the root wipes everything: keep it rare.
        1 => (prop_oneof![1 => Just(0), 6 => 1..PATHS.len()], any::<bool>())
            .prop_map(|(path, by_prefix)| Edit::Delete { path, by_prefix }),
        3 => (0..PATHS.len(), 0..ATTR_KEYS.len(), 0..4u8)
            .prop_map(|(path, key, value)| Edit::SetAttr { path, key, value }),
        1 => (0..PATHS.len(), 0..ATTR_KEYS.len())
            .prop_map(|(path, key)| Edit::DeleteAttr { path, key }),
        2 => (array_path(), shape).prop_map(|(path, shape)| Edit::Resize { path, shape }),
        7 => (array_path(), coords.clone(), prop::bool::weighted(0.2), any::<u8>())
            .prop_map(|(path, coords, big, seed)| Edit::SetChunk { path, coords, big, seed }),
        3 => (array_path(), coords, prop::bool::weighted(0.25))
            .prop_map(|(path, coords, prefix)| Edit::DeleteChunk { path, coords, prefix }),
        2 => (0..OBJECT_KEYS.len(), prop::bool::weighted(0.2), any::<u8>())
            .prop_map(|(key, big, seed)| Edit::SetObject { key, big, seed }),
        1 => (0..OBJECT_KEYS.len()).prop_map(|key| Edit::DeleteObject { key }),
    ]
}

/// Array metadata for a layout. Layouts 0 and 1 differ only in fill value, so
/// concurrent creates of them do not merge, and rewriting one as the other edits the
/// `fill_value` register; 2 is two-dimensional; 3 has another chunk shape (a rewrite
/// replaces the array). Layouts 4 to 7 are 0 to 3 with `dimension_names`.
pub fn array_doc(layout: u8, shape: [u64; 2], attrs: &Map<String, Value>) -> Value {
    let (ndim, chunk, fill): (usize, &[u64], u8) = match layout % 4 {
        0 => (1, &[2], 0),
        1 => (1, &[2], 7),
        2 => (2, &[2, 2], 0),
        _ => (1, &[3], 0),
    };
    let mut doc = json!({
        "zarr_format": 3,
        "node_type": "array",
        "shape": &shape[..ndim],
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": [{"name": "bytes"}],
        "attributes": attrs,
    });
    if layout & 4 != 0 {
        doc["dimension_names"] = json!(["y", "x"][..ndim]);
    }
    doc
}

/// The shared starting point: root and `g` groups, arrays `g/a` and `b` with chunks.
pub fn base_edits() -> Vec<Edit> {
    vec![
        Edit::Group {
            path: 0,
            attrs: vec![],
        },
        Edit::Group {
            path: 1,
            attrs: vec![(0, 0)],
        },
        Edit::Array {
            path: 1,
            layout: 0,
            shape: [4, 0],
            attrs: vec![(1, 0)],
        },
        Edit::Array {
            path: 3,
            layout: 2,
            shape: [4, 4],
            attrs: vec![],
        },
        Edit::SetChunk {
            path: 1,
            coords: [0, 0],
            big: false,
            seed: 1,
        },
        Edit::SetChunk {
            path: 3,
            coords: [1, 1],
            big: true,
            seed: 2,
        },
    ]
}

pub fn attr_map(attrs: &[(usize, u8)]) -> Map<String, Value> {
    attrs
        .iter()
        .map(|(k, v)| (ATTR_KEYS[*k].to_string(), json!(v)))
        .collect()
}

pub fn chunk_bytes(big: bool, seed: u8) -> Vec<u8> {
    let len = if big {
        4097 + seed as usize % 64
    } else {
        1 + seed as usize % 16
    };
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

/// Array geometry as the test driver sees it, to pick chunk keys within bounds.
#[derive(Clone, Debug)]
pub struct ArrInfo {
    shape: Vec<u64>,
    chunk: Vec<u64>,
}

impl ArrInfo {
    fn from_doc(doc: &Value) -> Option<ArrInfo> {
        if doc["node_type"] != "array" {
            return None;
        }
        let nums = |v: &Value| -> Vec<u64> {
            v.as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default()
        };
        Some(ArrInfo {
            shape: nums(&doc["shape"]),
            chunk: nums(&doc["chunk_grid"]["configuration"]["chunk_shape"]),
        })
    }

    /// A chunk key inside the current shape, or `None` if the array has no chunks.
    fn key(&self, coords: [u64; 2]) -> Option<String> {
        let mut parts = vec!["c".to_string()];
        for (d, (&s, &c)) in self.shape.iter().zip(&self.chunk).enumerate() {
            let n = s.div_ceil(c);
            if n == 0 {
                return None;
            }
            parts.push((coords[d] % n).to_string());
        }
        Some(parts.join("/"))
    }
}

/// Stages `edits` in one session and commits. Edits the session refuses (no such
/// node, a node inside an array, a chunk of a group...) are skipped.
pub async fn apply_edits(repo: &mut Repo, edits: &[Edit]) -> Option<ChangeHash> {
    stage_edits(repo, edits).commit(repo, None).await.unwrap()
}

/// Stages `edits` in one session, as [`apply_edits`] does, and returns it uncommitted.
pub fn stage_edits(repo: &Repo, edits: &[Edit]) -> WriteSession {
    let mut arrays: BTreeMap<&str, Option<ArrInfo>> = BTreeMap::new();
    for p in PATHS {
        let info = match repo.view().get(&meta_key(p)) {
            Some(Entry::Metadata(b)) => ArrInfo::from_doc(&serde_json::from_slice(&b).unwrap()),
            _ => None,
        };
        arrays.insert(p, info);
    }
    let clear_subtree = |arrays: &mut BTreeMap<&str, Option<ArrInfo>>, root: &str| {
        for (p, v) in arrays.iter_mut() {
            if in_subtree(root, p) {
                *v = None;
            }
        }
    };
    let mut s = repo.session();
    for e in edits {
        match e {
            Edit::Group { path, attrs } => {
                let p = PATHS[*path];
                if s.create_group(p, attr_map(attrs)).is_ok() {
                    arrays.insert(p, None);
                }
            }
            Edit::Array {
                path,
                layout,
                shape,
                attrs,
            } => {
                let p = ARRAY_PATHS[*path];
                let doc = array_doc(*layout, *shape, &attr_map(attrs));
                if s.create_array(p, &doc).is_ok() {
                    clear_subtree(&mut arrays, p);
                    arrays.insert(p, ArrInfo::from_doc(&doc));
                }
            }
            Edit::Delete { path, by_prefix } => {
                let p = PATHS[*path];
                let ok = if *by_prefix {
                    let prefix = if p.is_empty() {
                        String::new()
                    } else {
                        format!("{p}/")
                    };
                    s.delete_prefix(&prefix).is_ok()
                } else {
                    s.delete(&meta_key(p)).is_ok()
                };
                if ok {
                    clear_subtree(&mut arrays, p);
                }
            }
            Edit::SetAttr { path, key, value } => {
                let _ = s.set_attr(PATHS[*path], ATTR_KEYS[*key], json!(value));
            }
            Edit::DeleteAttr { path, key } => {
                let _ = s.delete_attr(PATHS[*path], ATTR_KEYS[*key]);
            }
            Edit::Resize { path, shape } => {
                let p = ARRAY_PATHS[*path];
                if let Some(Some(info)) = arrays.get_mut(p) {
                    let new = shape[..info.shape.len()].to_vec();
                    if s.resize(p, &new).is_ok() {
                        info.shape = new;
                    }
                }
            }
            Edit::SetChunk {
                path,
                coords,
                big,
                seed,
            } => {
                let p = ARRAY_PATHS[*path];
                if let Some(Some(info)) = arrays.get(p)
                    && let Some(k) = info.key(*coords)
                {
                    let _ = s.set_chunk(p, &k, Bytes::from(chunk_bytes(*big, *seed)));
                }
            }
            Edit::DeleteChunk {
                path,
                coords,
                prefix,
            } => {
                let p = ARRAY_PATHS[*path];
                if let Some(Some(info)) = arrays.get(p)
                    && let Some(k) = info.key(*coords)
                {
                    let _ = if *prefix {
                        let first = k.split('/').take(2).collect::<Vec<_>>().join("/");
                        s.delete_prefix(&format!("{p}/{first}/"))
                    } else {
                        s.delete(&format!("{p}/{k}"))
                    };
                }
            }
            Edit::SetObject { key, big, seed } => {
                let bytes = Bytes::from(chunk_bytes(*big, *seed));
                s.set_object(OBJECT_KEYS[*key], bytes).unwrap();
            }
            Edit::DeleteObject { key } => s.delete_object(OBJECT_KEYS[*key]).unwrap(),
        }
    }
    s
}

// `meta_key`, `parent` and `in_subtree` are an independent re-implementation of those
// in `crzarr::zarr::key`, on purpose: `stage_edits` tracks with them which nodes exist, and
// `convergence`'s reference model derives with them the conflicts and entries it
// expects, so a bug in the library's must not be mirrored in what the tests expect.
// Do not replace them with `crzarr::zarr::key`'s.

pub fn meta_key(path: &str) -> String {
    if path.is_empty() {
        "zarr.json".into()
    } else {
        format!("{path}/zarr.json")
    }
}

pub fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        None
    } else {
        Some(path.rsplit_once('/').map_or("", |(p, _)| p))
    }
}

pub fn in_subtree(root: &str, path: &str) -> bool {
    root.is_empty() || path == root || path.starts_with(&format!("{root}/"))
}
