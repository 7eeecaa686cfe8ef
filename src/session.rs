//! The write session: stages Zarr-store writes as ops and commits them as one change.
//!
//! Writes have a Zarr store's meaning: setting `a/b/zarr.json` creates or updates node
//! `a/b`; setting `a/b/c/0/1` writes a chunk of array `a/b`; deleting `a/b/zarr.json`
//! or the prefix `a/b/` deletes node `a/b` and its subtree. Any other key (one no
//! array owns, like `notes/readme.txt`) is an *object*: bytes kept as they are.

use crate::error::{Error, Result};
use crate::fold::view::{NodeType, ViewIndex};
use crate::fold::{Fold, Stamp};
use crate::format::change::{Change, ChunkData, ChunkReference, DimSize, INLINE_MAX, Op, OpRef};
use crate::format::ids::{ActorId, BlobHash, ChangeHash, now_millis};
use crate::io::store::RepoStore;
use crate::repo::Repo;
use crate::zarr::key::{self, meta_path};
use crate::zarr::meta::{self, ArrayMeta, NodeDoc};
use bytes::Bytes;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

#[derive(Clone, Debug)]
struct Handle {
    target: OpRef,
    array: Option<Arc<ArrayMeta>>,
    /// Incarnations merged at this path in the view (empty for nodes made here).
    members: Vec<Stamp>,
}

/// Chunks to delete once the manifest pieces are read (at commit).
#[derive(Clone, Debug)]
enum ChunkFilter {
    /// Keys equal to `rest` or under `rest/`.
    Prefix(String),
    /// Keys wholly outside this shape.
    Outside(Vec<u64>),
}

/// Work that needs chunk registers still in unread manifest pieces; done at commit.
#[derive(Clone, Debug, Default)]
struct Deferred {
    /// Chunk ops whose `observed` must also name entries in manifest pieces.
    rescan: Vec<(usize, Handle, String, String)>,
    /// Chunk deletes staged without knowing whether the chunk exists.
    uncertain: Vec<usize>,
    /// Bulk deletes over keys that may be in manifest pieces: handle and array path.
    filters: Vec<(Handle, String, ChunkFilter)>,
}

#[derive(Clone, Debug)]
struct NodeState {
    attrs: Map<String, Value>,
    shape: Option<Vec<u64>>,
    /// An array's metadata fields that are registers, as shown.
    fields: Map<String, Value>,
}

/// An array's metadata fields that are registers, by name.
fn field_map(meta: &ArrayMeta) -> Map<String, Value> {
    meta.register_fields()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

impl Repo {
    /// Starts staging writes against this handle's current state: a [`WriteSession`],
    /// committed atomically through this handle by [`WriteSession::commit`].
    pub fn session(&self) -> WriteSession {
        WriteSession::new(self)
    }
}

/// Staged writes against the state of a [`Repo`] when the session started, committed
/// atomically as one change by [`WriteSession::commit`].
///
/// A session owns what it stages and shares the repository's state copy-on-write,
/// so a program (or a language binding) can hold the repository and any number of
/// sessions at once, and refresh or read the repository while a session is open.
/// The change a session commits depends on the state the session started from: what
/// the repository read since is concurrent with it, merged by the CRDT's rules.
pub struct WriteSession {
    /// The state staged against, and its view.
    base: Arc<Fold>,
    index: Arc<ViewIndex>,
    /// Where manifest pieces are read from, and how many at once.
    store: RepoStore,
    concurrency: usize,
    /// The handle that started this session: the one that commits it.
    actor: ActorId,
    ops: Vec<Op>,
    blobs: BTreeMap<BlobHash, Bytes>,
    created: BTreeMap<String, (u32, Option<Arc<ArrayMeta>>)>,
    deleted: Vec<String>,
    state: HashMap<OpRef, NodeState>,
    chunk_ops: HashMap<(OpRef, String), usize>,
    object_ops: HashMap<String, usize>,
    attr_ops: HashMap<(OpRef, String), usize>,
    /// Staged metadata field ops, by target and field name.
    field_ops: HashMap<(OpRef, String), usize>,
    /// Paths whose node a staged `zarr.json` replaced by a new incarnation.
    replaced: BTreeSet<String>,
    resize_op: HashMap<OpRef, usize>,
    deferred: Deferred,
    prepared: Option<(Change, Bytes)>,
}

impl WriteSession {
    pub(crate) fn new(repo: &Repo) -> Self {
        let (base, index) = repo.shared_state();
        WriteSession {
            base,
            index,
            store: repo.bucket().clone(),
            concurrency: repo.concurrency(),
            actor: repo.actor(),
            ops: Vec::new(),
            blobs: BTreeMap::new(),
            created: BTreeMap::new(),
            deleted: Vec::new(),
            state: HashMap::new(),
            chunk_ops: HashMap::new(),
            object_ops: HashMap::new(),
            attr_ops: HashMap::new(),
            field_ops: HashMap::new(),
            replaced: BTreeSet::new(),
            resize_op: HashMap::new(),
            deferred: Deferred::default(),
            prepared: None,
        }
    }

    /// Whether some incarnation behind `h` keeps chunks in manifest pieces.
    fn has_pieces(&self, h: &Handle) -> bool {
        let fold = &*self.base;
        h.members
            .iter()
            .any(|m| fold.nodes.get(m).is_some_and(|n| !n.base.is_empty()))
    }

    /// Number of ops staged.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn push(&mut self, op: Op) -> usize {
        self.prepared = None;
        self.ops.push(op);
        self.ops.len() - 1
    }

    fn refs(&self, stamps: impl IntoIterator<Item = Stamp>) -> Vec<OpRef> {
        stamps.into_iter().map(|s| self.base.op_ref(&s)).collect()
    }

    /// The node a path shows, counting what this session staged.
    fn node_at(&self, path: &str) -> Option<Handle> {
        if let Some((idx, array)) = self.created.get(path) {
            return Some(Handle {
                target: OpRef::Local(*idx),
                array: array.clone(),
                members: Vec::new(),
            });
        }
        if self.deleted.iter().any(|d| key::in_subtree(d, path)) {
            return None;
        }
        let view = &*self.index;
        let node = view.nodes.get(path)?;
        let winner = node.winner?;
        let array = match node.node_type {
            NodeType::Array => Some(view.array_meta_arc(&self.base, path)?),
            NodeType::Group => None,
            NodeType::ImplicitGroup => return None,
        };
        Some(Handle {
            target: self.base.op_ref(&winner),
            array,
            members: node.members.clone(),
        })
    }

    fn node_state(&mut self, h: &Handle, path: &str) -> NodeState {
        if let Some(s) = self.state.get(&h.target) {
            return s.clone();
        }
        let fold = &*self.base;
        let view = &*self.index;
        let s = NodeState {
            attrs: view.attributes(fold, path).unwrap_or_default(),
            shape: view.shape(fold, path),
            fields: view
                .shown_array_meta(fold, path)
                .map(|m| field_map(&m))
                .unwrap_or_default(),
        };
        self.state.insert(h.target, s.clone());
        s
    }

    fn check_ancestors(&self, path: &str) -> Result<()> {
        let mut up = key::parent(path);
        while let Some(a) = up {
            if self.node_at(a).is_some_and(|h| h.array.is_some()) {
                return Err(Error::invalid_key(
                    key::meta_key(path),
                    format!("cannot put a node inside array {a:?}"),
                ));
            }
            up = key::parent(a);
        }
        Ok(())
    }

    /// Sets a store key: a `zarr.json` creates or updates a node, a key inside an
    /// array writes one of its chunks, any other key writes an object.
    pub fn set(&mut self, store_key: &str, value: impl Into<Bytes>) -> Result<()> {
        key::check_key(store_key)?;
        let value: Bytes = value.into();
        if let Some(path) = meta_path(store_key) {
            key::check_node_path(path)?;
            let doc = meta::parse_node_doc(store_key, &value)?;
            return self.put_node(path, doc);
        }
        match self.split_chunk(store_key) {
            Some((arr, chunk)) => self.set_chunk(&arr, &chunk, value),
            None => self.set_object(store_key, value),
        }
    }

    /// Small values inline, larger ones as a blob uploaded at commit.
    fn stage_bytes(&mut self, bytes: Bytes) -> ChunkData {
        if bytes.len() <= INLINE_MAX {
            ChunkData::Inline(bytes.to_vec())
        } else {
            let hash = BlobHash::of(&bytes);
            let len = bytes.len() as u64;
            self.blobs.insert(hash, bytes);
            ChunkData::Blob { hash, len }
        }
    }

    /// Writes an object: bytes at a store key that is no node's metadata. A key an
    /// array owns is hidden while that array is shown (use [`WriteSession::set`],
    /// which writes such keys as chunks).
    pub fn set_object(&mut self, store_key: &str, bytes: Bytes) -> Result<()> {
        key::check_object_key(store_key)?;
        let data = self.stage_bytes(bytes);
        self.write_object(store_key, Some(data));
        Ok(())
    }

    /// Deletes the object at `store_key`, if there is one.
    pub fn delete_object(&mut self, store_key: &str) -> Result<()> {
        key::check_object_key(store_key)?;
        let exists = self.object_ops.contains_key(store_key)
            || crate::fold::view::object_value(&self.base, store_key).is_some();
        if exists {
            self.write_object(store_key, None);
        }
        Ok(())
    }

    fn write_object(&mut self, store_key: &str, data: Option<ChunkData>) {
        let prior = self.object_ops.get(store_key).copied();
        let observed = match prior.map(|i| &self.ops[i]) {
            Some(Op::SetObject { observed, .. } | Op::DeleteObject { observed, .. }) => {
                observed.clone()
            }
            _ => self.refs(
                self.base
                    .objects
                    .get(store_key)
                    .map(|r| r.entries().iter().map(|e| e.0).collect::<Vec<_>>())
                    .unwrap_or_default(),
            ),
        };
        let key = store_key.to_string();
        let op = match data {
            Some(data) => Op::SetObject {
                key,
                data,
                observed,
            },
            None => Op::DeleteObject { key, observed },
        };
        match prior {
            Some(i) => {
                self.prepared = None;
                self.ops[i] = op;
            }
            None => {
                let i = self.push(op);
                self.object_ops.insert(store_key.to_string(), i);
            }
        }
    }

    /// Deletes every object under `prefix` (`""`: all), shown or hidden by an array:
    /// a deleted subtree must not uncover objects it hid.
    fn delete_objects_under(&mut self, prefix: &str) {
        let mut keys: Vec<String> = self
            .base
            .objects
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| crate::fold::view::object_value(&self.base, k).is_some())
            .map(|(k, _)| k.to_string())
            .collect();
        keys.extend(
            self.object_ops
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned(),
        );
        keys.sort();
        keys.dedup();
        for k in keys {
            self.write_object(&k, None);
        }
    }

    /// Deletes a store key: a `zarr.json` deletes the node and its subtree (objects
    /// under it included), a chunk key deletes the chunk, any other key deletes the
    /// object there. Deleting what
    /// is not there does nothing.
    pub fn delete(&mut self, store_key: &str) -> Result<()> {
        key::check_key(store_key)?;
        if let Some(path) = meta_path(store_key) {
            key::check_node_path(path)?;
            if self.delete_node(path) {
                // Objects under the node are part of its subtree.
                let prefix = if path.is_empty() {
                    String::new()
                } else {
                    format!("{path}/")
                };
                self.delete_objects_under(&prefix);
            }
            return Ok(());
        }
        if let Some((arr, chunk)) = self.split_chunk(store_key) {
            self.delete_chunk(&arr, &chunk)?;
        }
        // An object the array hides goes too, so deleting the array later does not
        // uncover it.
        if key::check_object_key(store_key).is_ok() {
            self.delete_object(store_key)?;
        }
        Ok(())
    }

    /// Deletes every key under `prefix`: a node path deletes that subtree, a prefix
    /// inside an array deletes the chunks under it, `""` deletes everything; objects
    /// under `prefix` go in every case.
    pub fn delete_prefix(&mut self, prefix: &str) -> Result<()> {
        let p = prefix.strip_suffix('/').unwrap_or(prefix);
        if p.is_empty() {
            self.delete_node("");
            self.delete_objects_under("");
            return Ok(());
        }
        key::check_key(p)?;
        self.delete_objects_under(&format!("{p}/"));
        if self.delete_node(p) {
            return Ok(());
        }
        if let Some((arr, rest)) = self.split_chunk(p) {
            let under = format!("{rest}/");
            let keys = match self.node_at(&arr) {
                Some(h) => self.chunk_keys_seen(&h, &arr),
                None => Vec::new(),
            };
            for k in keys
                .into_iter()
                .filter(|k| k.starts_with(&under) || *k == rest)
            {
                self.delete_chunk(&arr, &k)?;
            }
            if let Some(h) = self.node_at(&arr).filter(|h| self.has_pieces(h)) {
                self.prepared = None;
                self.deferred
                    .filters
                    .push((h, arr.clone(), ChunkFilter::Prefix(rest)));
            }
        }
        Ok(())
    }

    /// Chunk keys of an array as this session sees them: the view's (for a node the
    /// view shows) plus those staged here, sorted and unique.
    fn chunk_keys_seen(&self, h: &Handle, path: &str) -> Vec<String> {
        let mut keys = if h.members.is_empty() {
            Vec::new()
        } else if self.has_pieces(h) {
            // Keys in manifest pieces are handled at commit (see `Deferred`).
            let fold = &*self.base;
            let mut v: Vec<String> = h
                .members
                .iter()
                .filter_map(|m| fold.nodes.get(m))
                .flat_map(|n| n.chunks.keys().map(str::to_string))
                .collect();
            v.sort();
            v.dedup();
            v
        } else {
            self.index.chunk_keys(&self.base, path)
        };
        keys.extend(
            self.chunk_ops
                .keys()
                .filter(|(t, _)| *t == h.target)
                .map(|(_, k)| k.clone()),
        );
        keys.sort();
        keys.dedup();
        keys
    }

    fn split_chunk(&self, store_key: &str) -> Option<(String, String)> {
        let mut end = store_key.len();
        while let Some(pos) = store_key[..end].rfind('/') {
            let arr = &store_key[..pos];
            if self.node_at(arr).is_some_and(|h| h.array.is_some()) {
                return Some((arr.to_string(), store_key[pos + 1..].to_string()));
            }
            end = pos;
        }
        if self.node_at("").is_some_and(|h| h.array.is_some()) {
            return Some((String::new(), store_key.to_string()));
        }
        None
    }

    /// Creates a group (or updates the attributes of the group already there).
    pub fn create_group(&mut self, path: &str, attributes: Map<String, Value>) -> Result<()> {
        key::check_node_path(path)?;
        self.put_node(path, NodeDoc::Group { attributes })
    }

    /// Creates an array from its full Zarr v3 metadata (with or without attributes).
    pub fn create_array(&mut self, path: &str, metadata: &Value) -> Result<()> {
        key::check_node_path(path)?;
        let doc = meta::parse_node_doc(&key::meta_key(path), metadata.to_string().as_bytes())?;
        self.put_node(path, doc)
    }

    fn put_node(&mut self, path: &str, doc: NodeDoc) -> Result<()> {
        self.check_ancestors(path)?;
        let existing = self.node_at(path);
        let fields = match &doc {
            NodeDoc::Array { meta, .. } => field_map(meta),
            NodeDoc::Group { .. } => Map::new(),
        };
        let (new_array, attrs, shape) = match &doc {
            NodeDoc::Group { attributes } => (None, attributes.clone(), None),
            NodeDoc::Array { meta, attributes } => (
                Some(Arc::new(meta.clone())),
                attributes.clone(),
                Some(meta.shape().to_vec()),
            ),
        };
        if let Some(h) = existing {
            let same = match (&h.array, &new_array) {
                (None, None) => true,
                (Some(a), Some(b)) => a.same_chunk_layout(b),
                _ => false,
            };
            if same {
                return self.update_node(&h, path, attrs, shape, fields);
            }
            self.replaced.insert(path.to_string());
            // A different node replaces this one: a new incarnation. An array has
            // no children, so replacing anything with an array clears the subtree.
            if new_array.is_some() {
                self.delete_node(path);
            } else {
                self.delete_incarnations_at(path);
            }
        }
        let attributes: Vec<(String, String)> = attrs
            .iter()
            .map(|(k, v)| (k.clone(), meta::canonical_json(v)))
            .collect();
        let op = match &new_array {
            None => Op::CreateGroup {
                path: path.to_string(),
                attributes,
            },
            Some(m) => Op::CreateArray {
                path: path.to_string(),
                metadata: m.to_canonical(),
                attributes,
            },
        };
        // Op indices are u32 on the wire; never wrap (commit refuses over MAX_OPS anyway).
        let idx = u32::try_from(self.push(op))
            .map_err(|_| Error::Limit("too many ops staged in one session".into()))?;
        self.created.insert(path.to_string(), (idx, new_array));
        self.state.insert(
            OpRef::Local(idx),
            NodeState {
                attrs,
                shape,
                fields,
            },
        );
        Ok(())
    }

    /// Paths whose node a staged `zarr.json` replaced with a new incarnation, because
    /// the new metadata changes the chunk layout (data type, grid, key encoding or
    /// codecs; spec/merge.md §3): the old node's chunks are gone from the view. An edit
    /// that keeps the layout updates the node instead and is not listed.
    pub fn replaced(&self) -> impl Iterator<Item = &str> {
        self.replaced.iter().map(String::as_str)
    }

    fn update_node(
        &mut self,
        h: &Handle,
        path: &str,
        attrs: Map<String, Value>,
        shape: Option<Vec<u64>>,
        fields: Map<String, Value>,
    ) -> Result<()> {
        let cur = self.node_state(h, path);
        // Equal as canonical JSON text: what a register stores and compares.
        let differs = |a: Option<&Value>, b: &Value| {
            a.is_none_or(|a| meta::canonical_json(a) != meta::canonical_json(b))
        };
        for (k, v) in &fields {
            if differs(cur.fields.get(k), v) {
                self.write_field(h, path, k, Some(v.clone()));
            }
        }
        for k in cur.fields.keys() {
            if !fields.contains_key(k) {
                self.write_field(h, path, k, None);
            }
        }
        for (k, v) in &attrs {
            if cur.attrs.get(k) != Some(v) {
                self.write_attr(h, path, k, Some(v.clone()));
            }
        }
        for k in cur.attrs.keys() {
            if !attrs.contains_key(k) {
                self.write_attr(h, path, k, None);
            }
        }
        if let (Some(new), Some(old)) = (shape, cur.shape)
            && new != old
        {
            // As `resize`: a shrink deletes the chunks outside, whatever the write path.
            self.resize_node(h, path, &new)?;
        }
        Ok(())
    }

    /// Stages a metadata field edit of an array (`None` removes the field).
    fn write_field(&mut self, h: &Handle, path: &str, name: &str, value: Option<Value>) {
        let mut st = self.node_state(h, path);
        match &value {
            Some(v) => st.fields.insert(name.to_string(), v.clone()),
            None => st.fields.remove(name),
        };
        self.state.insert(h.target, st);
        // A node this session creates takes the value in its create op: no register
        // entry, and no later reader sees the intermediate value.
        if let OpRef::Local(i) = h.target
            && let Some(Op::CreateArray { metadata, .. }) = self.ops.get(i as usize)
            && let Ok(doc) = serde_json::from_str::<Value>(metadata)
            && let Ok(created) = ArrayMeta::from_stored(&doc)
        {
            let updated = created.with_fields([(name, value)]);
            if let Some(Op::CreateArray { metadata, .. }) = self.ops.get_mut(i as usize) {
                *metadata = updated.to_canonical();
            }
            self.prepared = None;
            return;
        }
        let slot = (h.target, name.to_string());
        let observed = match self.field_ops.get(&slot) {
            Some(&i) => match &self.ops[i] {
                Op::SetMetaField { observed, .. } | Op::DeleteMetaField { observed, .. } => {
                    observed.clone()
                }
                _ => Vec::new(),
            },
            None => {
                let fold = &*self.base;
                let stamps: Vec<Stamp> = h
                    .members
                    .iter()
                    .filter_map(|m| fold.nodes.get(m)?.fields.get(name))
                    .flat_map(|r| r.entries().iter().map(|e| e.0))
                    .collect();
                self.refs(stamps)
            }
        };
        let op = match value {
            Some(v) => Op::SetMetaField {
                node: h.target,
                field: name.to_string(),
                value: meta::canonical_json(&v),
                observed,
            },
            None => Op::DeleteMetaField {
                node: h.target,
                field: name.to_string(),
                observed,
            },
        };
        match self.field_ops.get(&slot) {
            Some(&i) => {
                self.prepared = None;
                self.ops[i] = op;
            }
            None => {
                let i = self.push(op);
                self.field_ops.insert(slot, i);
            }
        }
    }

    fn write_attr(&mut self, h: &Handle, path: &str, name: &str, value: Option<Value>) {
        let mut st = self.node_state(h, path);
        match &value {
            Some(v) => st.attrs.insert(name.to_string(), v.clone()),
            None => st.attrs.remove(name),
        };
        self.state.insert(h.target, st);
        let slot = (h.target, name.to_string());
        let observed = match self.attr_ops.get(&slot) {
            Some(&i) => match &self.ops[i] {
                Op::SetAttr { observed, .. } | Op::DeleteAttr { observed, .. } => observed.clone(),
                _ => Vec::new(),
            },
            None => self.observed_attr(h, name),
        };
        let op = match value {
            Some(v) => Op::SetAttr {
                node: h.target,
                key: name.to_string(),
                value: meta::canonical_json(&v),
                observed,
            },
            None => Op::DeleteAttr {
                node: h.target,
                key: name.to_string(),
                observed,
            },
        };
        match self.attr_ops.get(&slot) {
            Some(&i) => {
                self.prepared = None;
                self.ops[i] = op;
            }
            None => {
                let i = self.push(op);
                self.attr_ops.insert(slot, i);
            }
        }
    }

    fn observed_attr(&self, h: &Handle, name: &str) -> Vec<OpRef> {
        if let OpRef::Local(i) = h.target {
            let set_by_create = match &self.ops[i as usize] {
                Op::CreateGroup { attributes, .. } | Op::CreateArray { attributes, .. } => {
                    attributes.iter().any(|(k, _)| k == name)
                }
                _ => false,
            };
            return if set_by_create {
                vec![h.target]
            } else {
                Vec::new()
            };
        }
        let fold = &*self.base;
        let stamps = h
            .members
            .iter()
            .filter_map(|m| fold.nodes.get(m)?.attrs.get(name))
            .flat_map(|r| r.entries().iter().map(|e| e.0));
        self.refs(stamps.collect::<Vec<_>>())
    }

    fn write_shape(&mut self, h: &Handle, path: &str, shape: &[u64]) -> Result<()> {
        let mut st = self.node_state(h, path);
        let old = st.shape.clone().unwrap_or_default();
        if old.len() != shape.len() {
            return Err(Error::invalid_metadata(
                key::meta_key(path),
                format!(
                    "shape has {} dimensions, the array has {}",
                    shape.len(),
                    old.len()
                ),
            ));
        }
        st.shape = Some(shape.to_vec());
        self.state.insert(h.target, st);
        let mut dims: BTreeMap<u32, DimSize> = match self.resize_op.get(&h.target) {
            Some(&i) => match &self.ops[i] {
                Op::Resize { dims, .. } => dims.iter().map(|d| (d.dim, d.clone())).collect(),
                _ => BTreeMap::new(),
            },
            None => BTreeMap::new(),
        };
        for (d, (&new, &was)) in shape.iter().zip(old.iter()).enumerate() {
            let d = d as u32;
            if let Some(entry) = dims.get_mut(&d) {
                entry.size = new;
            } else if new != was {
                let observed = self.observed_dim(h, d as usize);
                dims.insert(
                    d,
                    DimSize {
                        dim: d,
                        size: new,
                        observed,
                    },
                );
            }
        }
        // Nothing changed (e.g. a resize to the current shape): an empty Resize op
        // is invalid and would make the whole change undecodable for every reader.
        if dims.is_empty() {
            return Ok(());
        }
        let op = Op::Resize {
            node: h.target,
            dims: dims.into_values().collect(),
        };
        match self.resize_op.get(&h.target) {
            Some(&i) => {
                self.prepared = None;
                self.ops[i] = op;
            }
            None => {
                let i = self.push(op);
                self.resize_op.insert(h.target, i);
            }
        }
        Ok(())
    }

    fn observed_dim(&self, h: &Handle, d: usize) -> Vec<OpRef> {
        if let OpRef::Local(_) = h.target {
            return vec![h.target];
        }
        let fold = &*self.base;
        let stamps: Vec<Stamp> = h
            .members
            .iter()
            .filter_map(|m| fold.nodes.get(m)?.dims.get(d)?.as_ref())
            .flat_map(|r| r.entries().iter().map(|e| e.0))
            .collect();
        self.refs(stamps)
    }

    fn array_handle(&self, path: &str) -> Result<Handle> {
        match self.node_at(path) {
            Some(h) if h.array.is_some() => Ok(h),
            Some(_) => Err(Error::invalid_key(
                key::meta_key(path),
                "is a group, not an array",
            )),
            None => Err(Error::NoSuchNode {
                path: path.to_string(),
            }),
        }
    }

    fn group_or_array(&self, path: &str) -> Result<Handle> {
        self.node_at(path).ok_or_else(|| Error::NoSuchNode {
            path: path.to_string(),
        })
    }

    /// Sets one attribute of the node at `path`.
    pub fn set_attr(&mut self, path: &str, name: &str, value: Value) -> Result<()> {
        let h = self.group_or_array(path)?;
        self.write_attr(&h, path, name, Some(value));
        Ok(())
    }

    /// Deletes one attribute of the node at `path`.
    pub fn delete_attr(&mut self, path: &str, name: &str) -> Result<()> {
        let h = self.group_or_array(path)?;
        self.write_attr(&h, path, name, None);
        Ok(())
    }

    /// Resizes the array at `path`. Only the dimensions that change are written, so
    /// a concurrent resize of another dimension is not undone. Like zarr-python,
    /// chunks that lie entirely outside the new shape are deleted, so growing the
    /// array again later shows the fill value there, not stale data.
    pub fn resize(&mut self, path: &str, shape: &[u64]) -> Result<()> {
        let h = self.array_handle(path)?;
        self.resize_node(&h, path, shape)
    }

    fn resize_node(&mut self, h: &Handle, path: &str, shape: &[u64]) -> Result<()> {
        let h = h.clone();
        self.write_shape(&h, path, shape)?;
        let Some(meta) = h.array.as_ref() else {
            return Ok(());
        };
        let keys = self.chunk_keys_seen(&h, path);
        for k in keys.into_iter().filter(|k| meta.chunk_outside(k, shape)) {
            self.delete_chunk(path, &k)?;
        }
        if self.has_pieces(&h) {
            self.prepared = None;
            self.deferred
                .filters
                .push((h, path.to_string(), ChunkFilter::Outside(shape.to_vec())));
        }
        Ok(())
    }

    /// Writes one chunk (`chunk` is relative to the array, like `c/0/1`).
    pub fn set_chunk(&mut self, array: &str, chunk: &str, bytes: Bytes) -> Result<()> {
        key::check_chunk_key(chunk)?;
        let h = self.array_handle(array)?;
        let data = self.stage_bytes(bytes);
        self.write_chunk(&h, chunk, Some(data));
        Ok(())
    }

    /// Writes one chunk whose bytes the caller already stored as a blob (the import
    /// streams large stores this way rather than holding every chunk until commit).
    pub(crate) fn set_chunk_stored(
        &mut self,
        array: &str,
        chunk: &str,
        hash: BlobHash,
        len: u64,
    ) -> Result<()> {
        key::check_chunk_key(chunk)?;
        let h = self.array_handle(array)?;
        self.write_chunk(&h, chunk, Some(ChunkData::Blob { hash, len }));
        Ok(())
    }

    /// Writes one chunk as a reference to an object in another store, adopted in place.
    pub(crate) fn set_chunk_reference(
        &mut self,
        array: &str,
        chunk: &str,
        reference: ChunkReference,
    ) -> Result<()> {
        key::check_chunk_key(chunk)?;
        reference
            .check()
            .map_err(|r| Error::invalid_key(key::chunk_store_key(array, chunk), r.to_string()))?;
        let h = self.array_handle(array)?;
        self.write_chunk(&h, chunk, Some(ChunkData::Reference(reference)));
        Ok(())
    }

    /// Deletes one chunk; reads then give the fill value.
    pub fn delete_chunk(&mut self, array: &str, chunk: &str) -> Result<()> {
        key::check_chunk_key(chunk)?;
        let h = self.array_handle(array)?;
        let slot = (h.target, chunk.to_string());
        let staged = self.chunk_ops.contains_key(&slot);
        if !staged && self.has_pieces(&h) {
            // Whether it exists is known once its piece is read, at commit.
            self.write_chunk(&h, chunk, None);
            if let Some(&i) = self.chunk_ops.get(&slot) {
                self.deferred.uncertain.push(i);
            }
            return Ok(());
        }
        let exists = staged
            || (!h.members.is_empty() && self.index.chunk(&self.base, array, chunk).is_some());
        if exists {
            self.write_chunk(&h, chunk, None);
        }
        Ok(())
    }

    fn write_chunk(&mut self, h: &Handle, chunk: &str, data: Option<ChunkData>) {
        let slot = (h.target, chunk.to_string());
        let prior = self.chunk_ops.get(&slot).copied();
        let observed = match prior {
            Some(i) => match &self.ops[i] {
                Op::SetChunk { observed, .. } | Op::DeleteChunk { observed, .. } => {
                    observed.clone()
                }
                _ => Vec::new(),
            },
            None if h.members.is_empty() => Vec::new(),
            None => {
                let fold = &*self.base;
                let stamps: Vec<Stamp> = h
                    .members
                    .iter()
                    .filter_map(|m| fold.nodes.get(m)?.chunks.get(chunk))
                    .flat_map(|r| r.entries().iter().map(|e| e.0))
                    .collect();
                self.refs(stamps)
            }
        };
        let op = match data {
            Some(data) => Op::SetChunk {
                node: h.target,
                key: chunk.to_string(),
                data,
                observed,
            },
            None => Op::DeleteChunk {
                node: h.target,
                key: chunk.to_string(),
                observed,
            },
        };
        match prior {
            Some(i) => {
                self.prepared = None;
                self.ops[i] = op;
            }
            None => {
                let i = self.push(op);
                self.chunk_ops.insert(slot, i);
                if prior.is_none() && self.has_pieces(h) {
                    let path = self.view_path(h);
                    self.deferred
                        .rescan
                        .push((i, h.clone(), path, chunk.to_string()));
                }
            }
        }
    }

    /// The path the view shows a handle's incarnations at.
    fn view_path(&self, h: &Handle) -> String {
        h.members
            .first()
            .and_then(|m| self.base.nodes.get(m))
            .map(|n| n.path.to_string())
            .unwrap_or_default()
    }

    /// Reads the manifest pieces deferred work needs, then completes it: `observed`
    /// lists gain entries held in pieces, bulk deletes reach keys held in pieces, and
    /// deletes of chunks that turn out not to exist are dropped.
    async fn finish_deferred(&mut self) -> Result<()> {
        // Kept until done: a failed read leaves the session as it was.
        let d = self.deferred.clone();
        if d.rescan.is_empty() && d.filters.is_empty() {
            return Ok(());
        }
        let mut need = Vec::new();
        {
            let fold = &*self.base;
            for (_, h, _, k) in &d.rescan {
                need.extend(fold.missing_pieces(&h.members, Some(k)));
            }
            for (h, _, _) in &d.filters {
                need.extend(fold.missing_pieces(&h.members, None));
            }
        }
        need.sort_by_key(|p| p.hash);
        need.dedup_by_key(|p| p.hash);
        crate::repo::load_pieces(&self.store, &self.base, need, self.concurrency).await?;
        let fold = &*self.base;
        let view = &*self.index;
        let live_refs = |members: &[Stamp], k: &str| -> Vec<OpRef> {
            crate::fold::view::chunk_entries(fold, members, k)
                .iter()
                .map(|e| OpRef::Change(e.order.hash, e.order.op))
                .collect()
        };
        let mut drop: Vec<usize> = Vec::new();
        for (i, h, path, k) in &d.rescan {
            let refs = live_refs(&h.members, k);
            if d.uncertain.contains(i) && view.chunk(fold, path, k).is_none() {
                drop.push(*i);
            }
            if let Op::SetChunk { observed, .. } | Op::DeleteChunk { observed, .. } =
                &mut self.ops[*i]
            {
                *observed = refs;
            }
        }
        let mut extra = Vec::new();
        for (h, path, filter) in &d.filters {
            for k in crate::fold::view::member_chunk_keys(fold, &h.members) {
                let wanted = match filter {
                    ChunkFilter::Prefix(rest) => k == *rest || k.starts_with(&format!("{rest}/")),
                    ChunkFilter::Outside(shape) => {
                        h.array.as_ref().is_some_and(|m| m.chunk_outside(&k, shape))
                    }
                };
                let slot = (h.target, k.clone());
                if wanted
                    && !self.chunk_ops.contains_key(&slot)
                    && view.chunk(fold, path, &k).is_some()
                {
                    extra.push((slot, live_refs(&h.members, &k)));
                }
            }
        }
        for ((target, key), observed) in extra {
            if self.chunk_ops.contains_key(&(target, key.clone())) {
                continue;
            }
            self.ops.push(Op::DeleteChunk {
                node: target,
                key: key.clone(),
                observed,
            });
            self.chunk_ops.insert((target, key), self.ops.len() - 1);
        }
        if !drop.is_empty() {
            self.drop_ops(&drop);
        }
        self.deferred = Deferred::default();
        Ok(())
    }

    /// Removes staged ops (chunk deletes no op refers to) and renumbers local refs.
    fn drop_ops(&mut self, drop: &[usize]) {
        let mut map: Vec<Option<u32>> = Vec::with_capacity(self.ops.len());
        let mut next = 0u32;
        for i in 0..self.ops.len() {
            if drop.contains(&i) {
                map.push(None);
            } else {
                map.push(Some(next));
                next += 1;
            }
        }
        let fix = |r: &mut OpRef| {
            if let OpRef::Local(n) = r
                && let Some(Some(m)) = map.get(*n as usize)
            {
                *n = *m;
            }
        };
        let ops = std::mem::take(&mut self.ops);
        for (i, mut op) in ops.into_iter().enumerate() {
            if map[i].is_none() {
                continue;
            }
            match &mut op {
                Op::SetAttr { node, observed, .. }
                | Op::DeleteAttr { node, observed, .. }
                | Op::SetMetaField { node, observed, .. }
                | Op::DeleteMetaField { node, observed, .. }
                | Op::SetChunk { node, observed, .. }
                | Op::DeleteChunk { node, observed, .. } => {
                    fix(node);
                    observed.iter_mut().for_each(fix);
                }
                Op::Resize { node, dims } => {
                    fix(node);
                    dims.iter_mut()
                        .flat_map(|d| d.observed.iter_mut())
                        .for_each(fix);
                }
                Op::DeleteNode { incarnations, .. } => incarnations.iter_mut().for_each(fix),
                Op::SetObject { observed, .. } | Op::DeleteObject { observed, .. } => {
                    observed.iter_mut().for_each(fix)
                }
                Op::CreateGroup { .. } | Op::CreateArray { .. } => {}
            }
            self.ops.push(op);
        }
        // Indices moved: the staging maps are rebuilt from scratch on the next commit.
        self.chunk_ops.clear();
        self.object_ops.clear();
        self.attr_ops.clear();
        self.field_ops.clear();
        self.resize_op.clear();
        self.created.clear();
    }

    /// Incarnations at exactly `path` (view and staged), deleted without the subtree.
    fn delete_incarnations_at(&mut self, path: &str) {
        let mut incs: Vec<OpRef> = Vec::new();
        if !self.deleted.iter().any(|d| key::in_subtree(d, path))
            && let Some(stamps) = self.base.by_path.get(path)
        {
            incs.extend(self.refs(stamps.clone()));
        }
        if let Some((idx, _)) = self.created.remove(path) {
            incs.push(OpRef::Local(idx));
        }
        if !incs.is_empty() {
            self.push(Op::DeleteNode {
                path: path.to_string(),
                incarnations: incs,
            });
        }
    }

    /// Deletes the node at `path` and everything under it that this session can see.
    /// Returns whether there was anything to delete.
    fn delete_node(&mut self, path: &str) -> bool {
        let mut incs: Vec<OpRef> = Vec::new();
        if !self.deleted.iter().any(|d| key::in_subtree(d, path)) {
            let fold = &*self.base;
            let stamps: Vec<Stamp> = fold
                .by_path
                .range::<str, _>((std::ops::Bound::Included(path), std::ops::Bound::Unbounded))
                .take_while(|(p, _)| path.is_empty() || p.starts_with(path))
                .filter(|(p, _)| key::in_subtree(path, p))
                .flat_map(|(_, v)| v.iter().copied())
                .collect();
            incs.extend(self.refs(stamps));
        }
        let local: Vec<String> = self
            .created
            .keys()
            .filter(|p| key::in_subtree(path, p))
            .cloned()
            .collect();
        for p in local {
            if let Some((idx, _)) = self.created.remove(&p) {
                incs.push(OpRef::Local(idx));
            }
        }
        if incs.is_empty() {
            return false;
        }
        self.push(Op::DeleteNode {
            path: path.to_string(),
            incarnations: incs,
        });
        self.deleted.push(path.to_string());
        true
    }

    /// Publishes the staged ops as one change: blobs first, then the change file.
    /// Returns `Ok(None)` when nothing was staged. On error the session keeps the
    /// prepared change, and calling `commit` again retries the very same bytes.
    pub async fn commit(
        &mut self,
        repo: &mut Repo,
        message: Option<&str>,
    ) -> Result<Option<ChangeHash>> {
        if self.ops.is_empty() {
            return Ok(None);
        }
        if repo.actor() != self.actor {
            return Err(Error::CommitRefused {
                key: repo.bucket().layout().ops_dir().to_string(),
                reason: "a session commits through the repository handle that started it".into(),
            });
        }
        if self.prepared.is_none() {
            self.finish_deferred().await.map_err(|e| match e {
                // The state staged against was compacted and collected since: nothing
                // can finish this session's deferred work, and refreshing the handle
                // does not move a session.
                Error::Vanished { key } => Error::CommitRefused {
                    key,
                    reason: "removed by garbage collection after the session started: the \
                             state it staged against is gone; stage the writes again in a \
                             new session"
                        .into(),
                },
                e => e,
            })?;
            if self.ops.is_empty() {
                return Ok(None);
            }
            // The state the ops were staged against, whatever the handle read since.
            let deps = self.base.heads();
            // A handle that moved on since the session started (reloaded from a newer
            // snapshot) may know the session's deps, and the changes its ops name, only
            // through the coverage archive. A handle still at that state knows them.
            if !repo.holds_state(&self.base) {
                let mut named: Vec<ChangeHash> = deps.clone();
                for op in &self.ops {
                    op.for_each_node_ref(|r| {
                        if let OpRef::Change(h, _) = r {
                            named.push(*h);
                        }
                    });
                }
                named.sort();
                named.dedup();
                repo.learn_archived(named).await?;
            }
            // Stamped before a sequence number is taken: a refusal leaves no gap.
            let hlc = repo.stamp(&deps, &self.ops, now_millis())?;
            let repo_id = repo.id();
            let (actor, seq) = repo.next_change_header()?;
            let change = Change {
                repo: repo_id,
                actor,
                seq,
                deps,
                hlc,
                wall_ms: now_millis(),
                message: message.map(str::to_string),
                ops: self.ops.clone(),
            };
            let bytes = Bytes::from(change.encode());
            // Never publish what readers would refuse: check it as they will.
            if let Err(rule) = change.validate() {
                return Err(Error::CommitRefused {
                    key: repo.change_key(ChangeHash::of(&bytes), actor, seq),
                    reason: rule.to_string(),
                });
            }
            self.prepared = Some((change, bytes));
        }
        let Some((change, bytes)) = self.prepared.take() else {
            return Ok(None);
        };
        // The handle applies the change to its state: while that state is the one
        // staged against, hold no share of it, or applying it would copy it; a weak
        // handle keeps it for a failed attempt (which applies nothing). A handle that
        // moved on holds a state of its own, and the session keeps its own.
        let base = std::mem::replace(&mut self.base, Arc::new(Fold::new(repo.id())));
        let weak = Arc::downgrade(&base);
        let kept = (!repo.holds_state(&base)).then_some(base);
        let index = std::mem::take(&mut self.index);
        let published = repo.publish(change, &bytes, &self.blobs).await;
        let mut restore = || match kept.clone().or_else(|| weak.upgrade()) {
            Some(b) => {
                self.base = b;
                self.index = index.clone();
                Ok(())
            }
            // Never expected: nothing applied a failed attempt. Refuse rather than stage
            // further ops against another state than the first ones.
            None => Err(Error::Internal(
                "the state a failed commit was staged against is gone".into(),
            )),
        };
        let result = match published {
            Ok(hash) => Ok(Some(hash)),
            // Nothing was written: the ops stay staged and the next commit stamps anew.
            Err((e @ Error::CommitRefused { .. }, _)) => {
                restore()?;
                return Err(e);
            }
            Err((e, Some(change))) => {
                restore()?;
                // Keep the exact bytes: a retry must not mint a second change.
                self.prepared = Some((change, bytes));
                return Err(e);
            }
            // Written but not applied: retrying the same bytes cannot help, so the
            // session is cleared as after a commit and the error says which key.
            Err((e, None)) => Err(e),
        };
        // Cleared, the session stages against the handle's state, its change in.
        (self.base, self.index) = repo.shared_state();
        self.ops.clear();
        self.blobs.clear();
        self.created.clear();
        self.deleted.clear();
        self.state.clear();
        self.chunk_ops.clear();
        self.object_ops.clear();
        self.attr_ops.clear();
        self.field_ops.clear();
        self.resize_op.clear();
        self.prepared = None;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStore;
    use object_store::memory::InMemory;
    use serde_json::json;

    /// A session is owned: the handle that started it refreshes and reads while it is
    /// open, the change it commits depends on the state it started from (concurrent
    /// with what the handle read since), and only that handle commits it.
    #[tokio::test]
    async fn a_session_is_held_beside_its_repository() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut a = Repo::init(store.clone(), "r").await.unwrap();
        let mut s = a.session();
        s.create_group("", Map::new()).unwrap();
        let root = s.commit(&mut a, None).await.unwrap().unwrap();

        let mut b = Repo::open(store.clone(), "r").await.unwrap();
        let mut open = a.session();
        open.set_attr("", "from_a", json!(1)).unwrap();
        let mut sb = b.session();
        sb.set_attr("", "from_b", json!(2)).unwrap();
        let hb = sb.commit(&mut b, None).await.unwrap().unwrap();

        // The handle moves on while `open` is staged against the older state.
        a.refresh().await.unwrap();
        assert!(a.fold().contains(&hb));
        assert_eq!(a.view().attributes("").unwrap().get("from_a"), None);
        let ha = open.commit(&mut a, None).await.unwrap().unwrap();
        let deps = |h: ChangeHash, r: &Repo| {
            let log = r.log();
            log.iter().find(|c| c.hash == h).map(|c| c.deps.clone())
        };
        assert_eq!(deps(ha, &a), Some(vec![root]));
        let attrs = a.view().attributes("").unwrap();
        assert_eq!(
            (attrs["from_a"].clone(), attrs["from_b"].clone()),
            (json!(1), json!(2))
        );

        // Committed, the session stages against the handle's state, its own change in.
        open.set_attr("", "again", json!(3)).unwrap();
        let h3 = open.commit(&mut a, None).await.unwrap().unwrap();
        let mut heads = vec![ha, hb];
        heads.sort();
        assert_eq!(deps(h3, &a), Some(heads));

        // Another handle of the same repository does not commit it: nothing written.
        let mut other = b.session();
        other.set_attr("", "x", json!(4)).unwrap();
        match other.commit(&mut a, None).await {
            Err(Error::CommitRefused { reason, .. }) => {
                assert!(reason.contains("handle that started it"), "{reason}")
            }
            got => panic!("expected a refusal, got {got:?}"),
        }
        assert_eq!(other.len(), 1);
        assert_eq!(a.bucket().list_changes().await.unwrap().0.len(), 4);
    }
}
