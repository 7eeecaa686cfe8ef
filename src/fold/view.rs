//! The Zarr v3 view of a fold: which node each path shows, its rendered `zarr.json`,
//! chunk lookup, key listings and the conflicts the merge rules resolved.

use crate::fold::{ChunkEntry, ChunkVal, Fold, Named, NodeKind, Stamp};
use crate::format::change::ChunkReference;
use crate::format::ids::{ActorId, BlobHash, ChangeHash, Hlc};
use crate::zarr::key;
use crate::zarr::meta::{self, ArrayMeta};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Where a chunk's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkRef {
    /// In `.crdt/blobs/<hash>`.
    Blob {
        /// blake3 of the bytes.
        hash: BlobHash,
        /// Length.
        len: u64,
    },
    /// In the change file.
    Inline(Vec<u8>),
    /// An object in another store, adopted in place; served only while it matches.
    Reference(ChunkReference),
}

/// One key of the view and what it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A node's rendered `zarr.json`.
    Metadata(Vec<u8>),
    /// A chunk.
    Chunk(ChunkRef),
    /// An object: a key that is no node's metadata and no array's chunk.
    Object(ChunkRef),
}

/// What a path shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeType {
    /// A group someone created.
    Group,
    /// An array.
    Array,
    /// A group shown only because a descendant exists (Zarr needs every ancestor).
    ImplicitGroup,
}

#[derive(Clone, Debug)]
pub(crate) struct ResolvedNode {
    pub(crate) node_type: NodeType,
    /// Winning incarnation (none for implicit groups).
    pub(crate) winner: Option<Stamp>,
    /// Incarnations merged into this node, winner first.
    pub(crate) members: Vec<Stamp>,
}

/// What a conflict was about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum ConflictTarget {
    /// Concurrent creates of different nodes at one path, or a node under an array.
    Node,
    /// One attribute.
    Attribute(String),
    /// One chunk.
    Chunk,
    /// One object.
    Object,
    /// One array metadata field that is a register (`fill_value`, `dimension_names`,
    /// an extension field).
    Field(String),
}

/// One side of a resolved conflict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConflictSide {
    /// Change that wrote it.
    pub change: ChangeHash,
    /// Its writer.
    pub actor: ActorId,
    /// Writer's sequence number.
    pub seq: u64,
    /// Clock stamp.
    pub hlc: Hlc,
    /// Op number in the change.
    pub op: u32,
    /// Short description of the value.
    pub value: String,
}

/// A concurrent overwrite the merge rules resolved: the winner the view shows and
/// the losers it does not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// Store key concerned (`a/zarr.json` for nodes and attributes, the chunk key for chunks).
    pub key: String,
    /// What it was about.
    pub target: ConflictTarget,
    /// The value shown.
    pub winner: ConflictSide,
    /// Values not shown.
    pub losers: Vec<ConflictSide>,
}

/// The resolved hierarchy of a fold: which incarnations each path shows. Its queries
/// need the fold it was built from: [`ViewIndex::with`] bundles the two into a [`View`].
/// Most users get a [`View`] from [`Repo::view`](crate::Repo::view) instead.
#[derive(Clone, Debug, Default)]
pub struct ViewIndex {
    pub(crate) nodes: BTreeMap<String, ResolvedNode>,
    node_conflicts: Vec<(String, Stamp, Vec<Stamp>)>,
}

/// The Zarr v3 view of a repository's state, as a Zarr client sees it: nodes, their
/// rendered `zarr.json`, chunks and objects, listings and conflicts. Get one from
/// [`Repo::view`](crate::Repo::view).
///
/// Chunk queries see the manifest pieces the repository has loaded: the repository's
/// own async readers ([`Repo::get`](crate::Repo::get), [`Repo::list`](crate::Repo::list),
/// ...) load what they need first, and [`Repo::load_all`](crate::Repo::load_all) loads
/// everything for a view that answers every query.
#[derive(Clone, Copy)]
pub struct View<'a> {
    index: &'a ViewIndex,
    fold: &'a Fold,
}

impl<'a> View<'a> {
    pub(crate) fn new(index: &'a ViewIndex, fold: &'a Fold) -> Self {
        View { index, fold }
    }

    /// Node paths shown, sorted (`""` is the root).
    pub fn node_paths(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.index.node_paths()
    }

    /// What kind of node is shown at `path`, if any.
    pub fn node_type(&self, path: &str) -> Option<NodeType> {
        self.index.node_type(path)
    }

    /// User attributes of the node at `path`.
    pub fn attributes(&self, path: &str) -> Option<Map<String, Value>> {
        self.index.attributes(self.fold, path)
    }

    /// Shape of the array at `path`.
    pub fn shape(&self, path: &str) -> Option<Vec<u64>> {
        self.index.shape(self.fold, path)
    }

    /// Rendered `zarr.json` of the node at `path`.
    pub fn metadata(&self, path: &str) -> Option<Vec<u8>> {
        self.index.metadata(self.fold, path)
    }

    /// Where chunk `chunk` of the array at `path` is, if it has a value.
    pub fn chunk(&self, path: &str, chunk: &str) -> Option<ChunkRef> {
        self.index.chunk(self.fold, path, chunk)
    }

    /// Where the object at store key `store_key` is, if it has a value.
    pub fn object(&self, store_key: &str) -> Option<ChunkRef> {
        self.index.object(self.fold, store_key)
    }

    /// Chunk keys of the array at `path` with a value, sorted.
    pub fn chunk_keys(&self, path: &str) -> Vec<String> {
        self.index.chunk_keys(self.fold, path)
    }

    /// What the view holds at Zarr store key `store_key`.
    pub fn get(&self, store_key: &str) -> Option<Entry> {
        self.index.get(self.fold, store_key)
    }

    /// Every store key with a value, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.index.keys(self.fold)
    }

    /// Store keys starting with `prefix`, sorted.
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.index.keys_with_prefix(self.fold, prefix)
    }

    /// Keys and prefixes directly under `prefix`, as a store's `list_dir`.
    pub fn list_dir(&self, prefix: &str) -> (Vec<String>, Vec<String>) {
        self.index.list_dir(self.fold, prefix)
    }

    /// Every store key with what it holds.
    pub fn entries(&self) -> BTreeMap<String, Entry> {
        self.index.entries(self.fold)
    }

    /// Concurrent writes resolved by the merge rules: the value shown and the others.
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.index.conflicts(self.fold)
    }
}

fn kind_of<'a>(fold: &'a Fold, s: &Stamp) -> Option<&'a NodeKind> {
    fold.nodes.get(s).map(|n| &n.kind)
}

fn array_meta<'a>(fold: &'a Fold, s: &Stamp) -> Option<&'a ArrayMeta> {
    match kind_of(fold, s) {
        Some(NodeKind::Array(m)) => Some(m),
        _ => None,
    }
}

/// Live entries of one chunk across merged incarnations. Callers load the manifest
/// pieces first (`Repo` does); a piece that is not loaded contributes nothing.
pub(crate) fn chunk_entries(fold: &Fold, members: &[Stamp], key: &str) -> Vec<ChunkEntry> {
    let mut out = Vec::new();
    for m in members {
        let r = fold.chunk_entries(m, key, &mut out);
        debug_assert!(r.is_ok(), "manifest piece not loaded before a chunk read");
    }
    out
}

/// Chunk keys with a live entry in any of the incarnations, sorted and unique.
pub(crate) fn member_chunk_keys(fold: &Fold, members: &[Stamp]) -> Vec<String> {
    let mut keys = BTreeSet::new();
    for m in members {
        let r = fold.node_chunk_keys(m);
        debug_assert!(r.is_ok(), "manifest piece not loaded before a listing");
        keys.extend(r.unwrap_or_default());
    }
    keys.into_iter().collect()
}

fn max_entry<'a, V>(
    fold: &Fold,
    entries: impl Iterator<Item = &'a (Stamp, V)>,
) -> Option<&'a (Stamp, V)>
where
    V: 'a,
{
    entries.max_by(|a, b| fold.cmp_stamp(&a.0, &b.0))
}

impl ViewIndex {
    /// The view of `fold`, which this index must have been built from.
    pub fn with<'a>(&'a self, fold: &'a Fold) -> View<'a> {
        View::new(self, fold)
    }

    /// Resolves the hierarchy: for each path, which incarnations it shows.
    pub fn build(fold: &Fold) -> ViewIndex {
        let mut candidates: BTreeMap<String, ResolvedNode> = BTreeMap::new();
        let mut node_conflicts = Vec::new();
        for (path, incs) in &fold.by_path {
            let Some(&winner) = incs.iter().max_by(|a, b| fold.cmp_stamp(a, b)) else {
                continue;
            };
            let (members, losers): (Vec<Stamp>, Vec<Stamp>) = match array_meta(fold, &winner) {
                None => incs
                    .iter()
                    .partition(|s| matches!(kind_of(fold, s), Some(NodeKind::Group))),
                Some(wm) => incs.iter().partition(|s| {
                    array_meta(fold, s).is_some_and(|m| m.same_apart_from_shape(wm))
                }),
            };
            let (mut members, mut losers) = (members, losers);
            members.sort_by(|a, b| fold.cmp_stamp(b, a));
            // `by_path` holds insertion (delivery) order: sort so every replica agrees.
            losers.sort_by(|a, b| fold.cmp_stamp(b, a));
            if !losers.is_empty() {
                node_conflicts.push((path.to_string(), winner, losers));
            }
            let node_type = if array_meta(fold, &winner).is_some() {
                NodeType::Array
            } else {
                NodeType::Group
            };
            candidates.insert(
                path.to_string(),
                ResolvedNode {
                    node_type,
                    winner: Some(winner),
                    members,
                },
            );
        }
        // A node under an array is not part of a valid hierarchy: hide it, report it.
        let mut nodes = BTreeMap::new();
        for (path, node) in &candidates {
            let mut up = key::parent(path);
            let mut shadow = None;
            while let Some(a) = up {
                if let Some(anc) = candidates.get(a)
                    && anc.node_type == NodeType::Array
                {
                    shadow = anc.winner;
                }
                up = key::parent(a);
            }
            match (shadow, node.winner) {
                (Some(arr), Some(_)) => {
                    node_conflicts.push((path.clone(), arr, node.members.clone()))
                }
                _ => {
                    nodes.insert(path.clone(), node.clone());
                }
            }
        }
        // Every ancestor of a shown node must exist: show missing ones as empty groups.
        let shown: Vec<String> = nodes.keys().cloned().collect();
        for path in shown {
            let mut up = key::parent(&path);
            while let Some(a) = up {
                nodes.entry(a.to_string()).or_insert(ResolvedNode {
                    node_type: NodeType::ImplicitGroup,
                    winner: None,
                    members: Vec::new(),
                });
                up = key::parent(a);
            }
        }
        ViewIndex {
            nodes,
            node_conflicts,
        }
    }

    /// Node paths shown, sorted.
    pub(crate) fn node_paths(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// What `path` shows, if anything.
    pub(crate) fn node_type(&self, path: &str) -> Option<NodeType> {
        self.nodes.get(path).map(|n| n.node_type.clone())
    }

    /// Merged attributes of a shown node.
    pub(crate) fn attributes(&self, fold: &Fold, path: &str) -> Option<Map<String, Value>> {
        let resolved = self.named(fold, path, Named::Attr)?;
        Some(
            resolved
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_string(), v?)))
                .collect(),
        )
    }

    /// The winning value of every named register of one kind over a shown node's
    /// members (`None`: the winner is a tombstone), by name.
    fn named<'f>(
        &self,
        fold: &'f Fold,
        path: &str,
        which: Named,
    ) -> Option<BTreeMap<&'f str, Option<Value>>> {
        let node = self.nodes.get(path)?;
        let mut keys = BTreeSet::new();
        for m in &node.members {
            if let Some(n) = fold.nodes.get(m) {
                keys.extend(n.named(which).keys().map(|k| &**k));
            }
        }
        let mut out = BTreeMap::new();
        for k in keys {
            let entries = node
                .members
                .iter()
                .filter_map(|m| fold.nodes.get(m)?.named(which).get(k))
                .flat_map(|r| r.entries());
            if let Some((_, v)) = max_entry(fold, entries) {
                let v = v
                    .as_deref()
                    .map(|v| serde_json::from_str(v).unwrap_or(Value::Null));
                out.insert(k, v);
            }
        }
        Some(out)
    }

    /// The metadata a shown array shows: its winner's, with the edited metadata field
    /// registers applied (spec/merge.md §5).
    pub(crate) fn shown_array_meta(&self, fold: &Fold, path: &str) -> Option<ArrayMeta> {
        let created = self.array_meta(fold, path)?;
        let fields = self.named(fold, path, Named::Field)?;
        Some(created.with_fields(fields))
    }

    /// Current shape of a shown array: per dimension, the largest live size.
    pub(crate) fn shape(&self, fold: &Fold, path: &str) -> Option<Vec<u64>> {
        let node = self.nodes.get(path)?;
        let meta = array_meta(fold, node.winner.as_ref()?)?;
        let mut shape = vec![0u64; meta.ndim()];
        let mut seen = vec![false; meta.ndim()];
        for m in &node.members {
            let Some(n) = fold.nodes.get(m) else { continue };
            for (d, reg) in n.dims.iter().enumerate().take(shape.len()) {
                for (_, size) in reg.iter().flat_map(|r| r.entries()) {
                    shape[d] = shape[d].max(*size);
                    seen[d] = true;
                }
            }
        }
        for d in 0..shape.len() {
            if !seen[d] {
                shape[d] = meta.shape()[d];
            }
        }
        Some(shape)
    }

    /// Array metadata of the winning incarnation at `path`.
    pub(crate) fn array_meta<'a>(&self, fold: &'a Fold, path: &str) -> Option<&'a ArrayMeta> {
        array_meta(fold, self.nodes.get(path)?.winner.as_ref()?)
    }

    /// Shared handle to the winning incarnation's array metadata at `path`.
    pub(crate) fn array_meta_arc(
        &self,
        fold: &Fold,
        path: &str,
    ) -> Option<std::sync::Arc<ArrayMeta>> {
        match fold
            .nodes
            .get(self.nodes.get(path)?.winner.as_ref()?)
            .map(|n| &n.kind)
        {
            Some(NodeKind::Array(m)) => Some(m.clone()),
            _ => None,
        }
    }

    /// Rendered `zarr.json` of a shown node.
    pub(crate) fn metadata(&self, fold: &Fold, path: &str) -> Option<Vec<u8>> {
        let node = self.nodes.get(path)?;
        let attrs = self.attributes(fold, path)?;
        match node.node_type {
            NodeType::Array => {
                let meta = self.shown_array_meta(fold, path)?;
                Some(meta.render(&self.shape(fold, path)?, attrs))
            }
            NodeType::Group | NodeType::ImplicitGroup => Some(meta::render_group(attrs)),
        }
    }

    /// The winning live entry of chunk `chunk` of the array at `path` (deleted: `None`).
    pub(crate) fn chunk(&self, fold: &Fold, path: &str, chunk: &str) -> Option<ChunkRef> {
        let node = self.nodes.get(path)?;
        if node.node_type != NodeType::Array {
            return None;
        }
        let entries = chunk_entries(fold, &node.members, chunk);
        chunk_ref(
            &entries
                .into_iter()
                .max_by(|a, b| a.order.cmp(&b.order))?
                .val,
        )
    }

    /// The object at `store_key`, unless deleted or hidden: a key a shown array owns
    /// is that array's chunk key (spec/merge.md, "Objects").
    pub(crate) fn object(&self, fold: &Fold, store_key: &str) -> Option<ChunkRef> {
        if self.split_chunk_key(store_key).is_some() {
            return None;
        }
        object_value(fold, store_key)
    }

    /// Keys of the objects shown under `prefix`, sorted.
    fn object_keys(&self, fold: &Fold, prefix: &str) -> Vec<String> {
        fold.objects
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| self.object(fold, k).is_some())
            .map(|(k, _)| k.to_string())
            .collect()
    }

    /// Chunk keys (relative) of a shown array that are not deleted, sorted.
    pub(crate) fn chunk_keys(&self, fold: &Fold, path: &str) -> Vec<String> {
        let Some(node) = self.nodes.get(path) else {
            return Vec::new();
        };
        if node.node_type != NodeType::Array {
            return Vec::new();
        }
        member_chunk_keys(fold, &node.members)
            .into_iter()
            .filter(|k| self.chunk(fold, path, k).is_some())
            .collect()
    }

    /// Splits a store key into (array path, chunk key) when it names a chunk of a shown array.
    pub(crate) fn split_chunk_key<'k>(&self, store_key: &'k str) -> Option<(&'k str, &'k str)> {
        // The deepest shown array whose path prefixes the key owns it.
        let mut end = store_key.len();
        while let Some(pos) = store_key[..end].rfind('/') {
            let (arr, rest) = (&store_key[..pos], &store_key[pos + 1..]);
            if self
                .nodes
                .get(arr)
                .is_some_and(|n| n.node_type == NodeType::Array)
            {
                return Some((arr, rest));
            }
            end = pos;
        }
        // Chunks of a root array.
        if self
            .nodes
            .get("")
            .is_some_and(|n| n.node_type == NodeType::Array)
        {
            return Some(("", store_key));
        }
        None
    }

    /// What the view serves at a store key.
    pub(crate) fn get(&self, fold: &Fold, store_key: &str) -> Option<Entry> {
        if let Some(path) = key::meta_path(store_key) {
            return self.metadata(fold, path).map(Entry::Metadata);
        }
        match self.split_chunk_key(store_key) {
            Some((arr, chunk)) => self.chunk(fold, arr, chunk).map(Entry::Chunk),
            None => object_value(fold, store_key).map(Entry::Object),
        }
    }

    /// Every key of the view, sorted.
    pub(crate) fn keys(&self, fold: &Fold) -> Vec<String> {
        let mut out = Vec::new();
        for path in self.nodes.keys() {
            out.push(key::meta_key(path));
            for c in self.chunk_keys(fold, path) {
                out.push(key::chunk_store_key(path, &c));
            }
        }
        out.extend(self.object_keys(fold, ""));
        out.sort_unstable();
        out
    }

    /// Keys starting with `prefix`, sorted.
    pub(crate) fn keys_with_prefix(&self, fold: &Fold, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        for path in self.nodes.keys() {
            let node_key_prefix = if path.is_empty() {
                String::new()
            } else {
                format!("{path}/")
            };
            // Keys of this node all start with `path/` (or anything, at the root).
            let relevant =
                node_key_prefix.starts_with(prefix) || prefix.starts_with(&node_key_prefix);
            if !relevant {
                continue;
            }
            let mk = key::meta_key(path);
            if mk.starts_with(prefix) {
                out.push(mk);
            }
            for c in self.chunk_keys(fold, path) {
                let k = key::chunk_store_key(path, &c);
                if k.starts_with(prefix) {
                    out.push(k);
                }
            }
        }
        out.extend(self.object_keys(fold, prefix));
        out.sort_unstable();
        out
    }

    /// Keys directly under `prefix` (which is empty or ends with `/`) and the
    /// sub-prefixes (ending with `/`) below it, both sorted.
    pub(crate) fn list_dir(&self, fold: &Fold, prefix: &str) -> (Vec<String>, Vec<String>) {
        let mut keys = Vec::new();
        let mut dirs = BTreeSet::new();
        for k in self.keys_with_prefix(fold, prefix) {
            let rest = &k[prefix.len()..];
            match rest.split_once('/') {
                Some((first, _)) => {
                    dirs.insert(format!("{prefix}{first}/"));
                }
                None => keys.push(k),
            }
        }
        (keys, dirs.into_iter().collect())
    }

    /// Every key with what it serves: two replicas with the same changes give equal maps.
    pub(crate) fn entries(&self, fold: &Fold) -> BTreeMap<String, Entry> {
        self.keys(fold)
            .into_iter()
            .filter_map(|k| {
                let e = self.get(fold, &k)?;
                Some((k, e))
            })
            .collect()
    }

    /// Every concurrent overwrite resolved in the current state, sorted by key.
    pub(crate) fn conflicts(&self, fold: &Fold) -> Vec<Conflict> {
        let side = |s: &Stamp, value: String| {
            let info = fold.info(s);
            ConflictSide {
                change: info.hash,
                actor: info.actor,
                seq: info.seq,
                hlc: info.hlc,
                op: s.op,
                value,
            }
        };
        let describe_node = |s: &Stamp| match fold.nodes.get(s).map(|n| &n.kind) {
            Some(NodeKind::Array(m)) => format!("array {}", m.to_canonical()),
            _ => "group".to_string(),
        };
        let mut out = Vec::new();
        for (path, winner, losers) in &self.node_conflicts {
            out.push(Conflict {
                key: key::meta_key(path),
                target: ConflictTarget::Node,
                winner: side(winner, describe_node(winner)),
                losers: losers.iter().map(|l| side(l, describe_node(l))).collect(),
            });
        }
        for (path, node) in &self.nodes {
            for which in [Named::Attr, Named::Field] {
                let mut names = BTreeSet::new();
                for m in &node.members {
                    if let Some(n) = fold.nodes.get(m) {
                        names.extend(n.named(which).keys().map(|k| &**k));
                    }
                }
                for k in names {
                    let mut entries: Vec<&(Stamp, Option<Box<str>>)> = node
                        .members
                        .iter()
                        .filter_map(|m| fold.nodes.get(m)?.named(which).get(k))
                        .flat_map(|r| r.entries())
                        .collect();
                    if entries.len() > 1 {
                        entries.sort_by(|a, b| fold.cmp_stamp(&b.0, &a.0));
                        let d = |v: &Option<Box<str>>| {
                            v.as_deref()
                                .map_or("(deleted)".to_string(), |s| truncate(s, 80))
                        };
                        let target = match which {
                            Named::Attr => ConflictTarget::Attribute(k.to_string()),
                            Named::Field => ConflictTarget::Field(k.to_string()),
                        };
                        out.push(Conflict {
                            key: key::meta_key(path),
                            target,
                            winner: side(&entries[0].0, d(&entries[0].1)),
                            losers: entries[1..].iter().map(|e| side(&e.0, d(&e.1))).collect(),
                        });
                    }
                }
            }
            let chunk_keys = member_chunk_keys(fold, &node.members);
            for k in &chunk_keys {
                let mut entries = chunk_entries(fold, &node.members, k);
                if entries.len() > 1 {
                    entries.sort_by_key(|e| std::cmp::Reverse(e.order));
                    let side = |e: &ChunkEntry, value: String| ConflictSide {
                        change: e.order.hash,
                        actor: e.order.actor,
                        seq: e.order.seq,
                        hlc: e.order.hlc,
                        op: e.order.op,
                        value,
                    };
                    let d = describe_value;
                    out.push(Conflict {
                        key: key::chunk_store_key(path, k),
                        target: ConflictTarget::Chunk,
                        winner: side(&entries[0], d(&entries[0].val)),
                        losers: entries[1..].iter().map(|e| side(e, d(&e.val))).collect(),
                    });
                }
            }
        }
        for (k, reg) in &fold.objects {
            let mut entries: Vec<&(Stamp, ChunkVal)> = reg.entries().iter().collect();
            if entries.len() > 1 && self.split_chunk_key(k).is_none() {
                entries.sort_by(|a, b| fold.cmp_stamp(&b.0, &a.0));
                out.push(Conflict {
                    key: k.to_string(),
                    target: ConflictTarget::Object,
                    winner: side(&entries[0].0, describe_value(&entries[0].1)),
                    losers: entries[1..]
                        .iter()
                        .map(|e| side(&e.0, describe_value(&e.1)))
                        .collect(),
                });
            }
        }
        out.sort_by(|a, b| (&a.key, &a.target).cmp(&(&b.key, &b.target)));
        out
    }
}

/// A chunk or object value, briefly, for conflict reports.
fn describe_value(v: &ChunkVal) -> String {
    match v {
        ChunkVal::Blob { hash, len } => format!("blob {} ({len} bytes)", hash.short()),
        ChunkVal::Inline(b) => format!("inline ({} bytes)", b.len()),
        ChunkVal::Reference(r) => format!("reference {}/{} ({} bytes)", r.source, r.key, r.size),
        ChunkVal::Deleted => "(deleted)".to_string(),
    }
}

/// What a register's winning value serves (`None`: deleted).
fn chunk_ref(v: &ChunkVal) -> Option<ChunkRef> {
    match v {
        ChunkVal::Blob { hash, len } => Some(ChunkRef::Blob {
            hash: *hash,
            len: *len,
        }),
        ChunkVal::Inline(b) => Some(ChunkRef::Inline(b.to_vec())),
        ChunkVal::Reference(r) => Some(ChunkRef::Reference((**r).clone())),
        ChunkVal::Deleted => None,
    }
}

/// The winning value of the object register at `key`, shadowed or not.
pub(crate) fn object_value(fold: &Fold, key: &str) -> Option<ChunkRef> {
    let reg = fold.objects.get(key)?;
    let (_, v) = max_entry(fold, reg.entries().iter())?;
    chunk_ref(v)
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
