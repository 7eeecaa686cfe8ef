//! The causal fold: a pure function from a set of changes to CRDT state.
//!
//! * A change is applied once all its deps, and every change its ops reference, are
//!   applied (causal delivery); until then it is *pending*.
//! * Nodes are *incarnations*, named by the op that created them. Deleting removes
//!   the incarnations the deleter saw; edits to a removed incarnation are dropped.
//! * Every attribute, array dimension and chunk is a multi-value register: an op
//!   removes the entries it observed and adds its own. Live entries that no one has
//!   observed are concurrent; the view shows the greatest by stamp
//!   `(hlc, actor, seq, change hash, op index)`, and dimensions show the maximum.
//!
//! Applying a change only removes entries named in it and adds its own, so the state
//! does not depend on delivery order. See `spec/merge.md` for the conflict matrix.
//!
//! A fold can start from a snapshot ([`Fold::from_snapshot`]): the snapshot's state
//! is the fold of the changes it covers, and chunk registers stay in manifest pieces
//! until read. Entries are named by `(change, op)`, so an `observed` entry that is in
//! an unloaded piece, or whose change is not applied yet, is remembered as superseded
//! and dropped whenever it shows up.

use crate::error::{Error, Result};
use crate::fold::chunkmap::ChunkMap;
use crate::format::change::{Change, ChunkData, ChunkReference, Op, OpRef};
use crate::format::ids::{ActorId, BlobHash, ChangeHash, Hlc, ObjectHash, RepoId};
use crate::format::layout::SnapshotName;
pub use crate::format::limits::{MAX_PENDING_BYTES, MAX_PENDING_CHANGES};
use crate::format::snapshot::{
    CoveredChange, ManifestPiece, PieceRef, RegKey, SnapChunk, SnapKind, SnapshotMeta,
};
use crate::zarr::meta::{ArrayMeta, MetaError};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

pub(crate) mod chunkmap;
mod join;
mod snap;
pub mod view;

/// Identity of one op inside the fold: index of its change and op number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Stamp {
    pub(crate) change: u32,
    pub(crate) op: u32,
}

/// Identity of a register entry: the change and op that wrote it.
pub(crate) type EntryId = (ChangeHash, u32);

/// Superseded records of one register: entry, and whether the record came from the
/// snapshot this fold started from (`true`) or was made by a change applied since.
/// A hash map: a forged change may name many entries, and a record is looked up for
/// every entry that arrives, so linear scans would cost quadratic time.
pub(crate) type Records = HashMap<EntryId, bool>;

/// The total order of register entries: `(hlc, actor, seq, change hash, op)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct OrderKey {
    pub(crate) hlc: Hlc,
    pub(crate) actor: ActorId,
    pub(crate) seq: u64,
    pub(crate) hash: ChangeHash,
    pub(crate) op: u32,
}

/// One live chunk register entry, wherever it is held.
#[derive(Clone, Debug)]
pub(crate) struct ChunkEntry {
    pub(crate) order: OrderKey,
    pub(crate) val: ChunkVal,
}

/// Live entries of one chunk in a piece: change-table index, op, value.
pub(crate) type PieceEntries = Vec<(u32, u32, ChunkVal)>;

/// A manifest piece as held in memory: keys sorted for lookup.
#[derive(Debug)]
pub(crate) struct LoadedPiece {
    pub(crate) changes: Vec<CoveredChange>,
    pub(crate) keys: Vec<(Box<str>, PieceEntries)>,
}

impl LoadedPiece {
    /// Builds the in-memory form of a decoded piece.
    pub(crate) fn new(p: ManifestPiece) -> LoadedPiece {
        let mut keys: Vec<(Box<str>, PieceEntries)> = p
            .entries
            .into_iter()
            .map(|(k, es)| {
                let es = es
                    .into_iter()
                    .map(|((c, op), v)| (c, op, ChunkVal::from_snap(v)))
                    .collect();
                (k.into_boxed_str(), es)
            })
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys.dedup_by(|a, b| a.0 == b.0);
        LoadedPiece {
            changes: p.changes,
            keys,
        }
    }

    fn get(&self, key: &str) -> Option<&[(u32, u32, ChunkVal)]> {
        self.keys
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| self.keys[i].1.as_slice())
    }

    fn order(&self, c: u32, op: u32) -> OrderKey {
        let c = &self.changes[c as usize];
        OrderKey {
            hlc: c.hlc,
            actor: c.actor,
            seq: c.seq,
            hash: c.hash,
            op,
        }
    }
}

/// The ordering key manifests are split by: a chunk's coordinates.
pub(crate) fn piece_order(meta: &ArrayMeta, key: &str) -> Vec<u64> {
    meta.chunk_coords(key).unwrap_or_default()
}

/// What a fold started from, when it started from a snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotBase {
    /// The snapshot's name.
    pub name: SnapshotName,
    /// Greatest clock stamp it covers: a change above it cannot be covered.
    pub max_hlc: Hlc,
    /// Its coverage archive shards.
    pub archive: Vec<Option<ObjectHash>>,
    /// Snapshots it supersedes (with those joined: all of theirs too).
    pub supersedes: Vec<String>,
    /// Other snapshots joined into this state (spec/merge.md §9), none of which
    /// supersedes another: name and coverage archive. Empty for one snapshot.
    pub joined: Vec<(SnapshotName, Vec<Option<ObjectHash>>)>,
}

impl SnapshotBase {
    /// Every snapshot this state was read from: the first, then those joined.
    pub fn names(&self) -> impl Iterator<Item = SnapshotName> + '_ {
        std::iter::once(self.name).chain(self.joined.iter().map(|j| j.0))
    }

    /// The coverage archives of every snapshot this state was read from.
    pub fn archives(&self) -> impl Iterator<Item = &[Option<ObjectHash>]> + '_ {
        std::iter::once(&self.archive[..]).chain(self.joined.iter().map(|j| &j.1[..]))
    }
}

/// A chunk register value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ChunkVal {
    Blob {
        hash: BlobHash,
        len: u64,
    },
    Inline(Box<[u8]>),
    /// Boxed: rare, and large next to the others.
    Reference(Box<ChunkReference>),
    Deleted,
}

impl ChunkVal {
    /// The value an op writes.
    pub(crate) fn from_data(d: ChunkData) -> ChunkVal {
        match d {
            ChunkData::Blob { hash, len } => ChunkVal::Blob { hash, len },
            ChunkData::Inline(b) => ChunkVal::Inline(b.into_boxed_slice()),
            ChunkData::Reference(r) => ChunkVal::Reference(Box::new(r)),
        }
    }

    /// The value as a snapshot holds it.
    pub(crate) fn from_snap(v: SnapChunk) -> ChunkVal {
        match v {
            SnapChunk::Blob { hash, len } => ChunkVal::Blob { hash, len },
            SnapChunk::Inline(b) => ChunkVal::Inline(b.into_boxed_slice()),
            SnapChunk::Reference(r) => ChunkVal::Reference(Box::new(r)),
            SnapChunk::Deleted => ChunkVal::Deleted,
        }
    }

    /// The value as a snapshot writes it.
    pub(crate) fn to_snap(&self) -> SnapChunk {
        match self {
            ChunkVal::Blob { hash, len } => SnapChunk::Blob {
                hash: *hash,
                len: *len,
            },
            ChunkVal::Inline(b) => SnapChunk::Inline(b.to_vec()),
            ChunkVal::Reference(r) => SnapChunk::Reference((**r).clone()),
            ChunkVal::Deleted => SnapChunk::Deleted,
        }
    }
}

/// A multi-value register: its live (unobserved) entries. Almost always one.
#[derive(Clone, Debug)]
pub(crate) enum Register<V> {
    One([(Stamp, V); 1]),
    Many(Vec<(Stamp, V)>),
}

impl<V> Register<V> {
    /// Removes the entries `observed` names, then adds `(s, val)`.
    fn write(&mut self, s: Stamp, val: V, observed: &[Stamp]) {
        if self.remove_observed(observed) {
            *self = Register::new(s, val);
        } else {
            // Take the register out to grow it; an empty `Many` is a cheap placeholder.
            let old = std::mem::replace(self, Register::Many(Vec::new()));
            *self = old.push(s, val);
        }
    }

    fn new(s: Stamp, v: V) -> Self {
        Register::One([(s, v)])
    }

    /// A register holding these entries (at least one).
    fn from_entries(mut es: Vec<(Stamp, V)>) -> Self {
        if es.len() == 1
            && let Some(e) = es.pop()
        {
            return Register::One([e]);
        }
        Register::Many(es)
    }

    pub(crate) fn entries(&self) -> &[(Stamp, V)] {
        match self {
            Register::One(a) => a,
            Register::Many(v) => v,
        }
    }

    /// Removes observed entries; returns true if the register became empty.
    fn remove_observed(&mut self, observed: &[Stamp]) -> bool {
        if observed.is_empty() {
            return false;
        }
        match self {
            Register::One([(s, _)]) => observed.contains(s),
            // A long list against many entries: a set keeps it linear.
            Register::Many(v) if observed.len() > 16 && v.len() > 16 => {
                let set: std::collections::HashSet<&Stamp> = observed.iter().collect();
                v.retain(|(s, _)| !set.contains(s));
                v.is_empty()
            }
            Register::Many(v) => {
                v.retain(|(s, _)| !observed.contains(s));
                v.is_empty()
            }
        }
    }

    fn push(self, s: Stamp, val: V) -> Self {
        match self {
            Register::One([e]) => Register::Many(vec![e, (s, val)]),
            Register::Many(mut v) => {
                if v.is_empty() {
                    Register::new(s, val)
                } else {
                    v.push((s, val));
                    Register::Many(v)
                }
            }
        }
    }
}

/// Writes `(s, val)` into `map[key]` after removing observed entries.
fn register_write<K: std::hash::Hash + Eq, V>(
    map: &mut HashMap<K, Register<V>>,
    key: K,
    s: Stamp,
    val: V,
    observed: &[Stamp],
) {
    use std::collections::hash_map::Entry;
    match map.entry(key) {
        Entry::Occupied(mut e) => e.get_mut().write(s, val, observed),
        Entry::Vacant(e) => {
            e.insert(Register::new(s, val));
        }
    }
}

/// [`register_write`] for chunk maps.
fn chunk_write(
    map: &mut ChunkMap<Register<ChunkVal>>,
    key: &str,
    s: Stamp,
    val: ChunkVal,
    observed: &[Stamp],
) {
    map.upsert(
        key,
        val,
        |reg, val| reg.write(s, val, observed),
        |val| Register::new(s, val),
    );
}

/// [`register_remove`] for chunk maps.
fn chunk_remove(map: &mut ChunkMap<Register<ChunkVal>>, key: &str, observed: &[Stamp]) {
    if let Some(reg) = map.get_mut(key)
        && reg.remove_observed(observed)
    {
        map.remove(key);
    }
}

fn register_remove<K: std::hash::Hash + Eq + ?Sized, Q, V>(
    map: &mut HashMap<Q, Register<V>>,
    key: &K,
    observed: &[Stamp],
) where
    Q: std::borrow::Borrow<K> + std::hash::Hash + Eq,
{
    if let Some(reg) = map.get_mut(key)
        && reg.remove_observed(observed)
    {
        map.remove(key);
    }
}

/// What an incarnation is.
#[derive(Clone, Debug)]
pub(crate) enum NodeKind {
    Group,
    Array(std::sync::Arc<ArrayMeta>),
}

/// One node incarnation and its registers.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) path: Box<str>,
    pub(crate) kind: NodeKind,
    pub(crate) deleted: bool,
    pub(crate) attrs: HashMap<Box<str>, Register<Option<Box<str>>>>,
    /// Registers of array metadata fields such as `fill_value` (JSON text; `None` =
    /// removed). Empty until a field is edited: the create op's value shows until then.
    pub(crate) fields: HashMap<Box<str>, Register<Option<Box<str>>>>,
    pub(crate) dims: Vec<Option<Register<u64>>>,
    pub(crate) chunks: ChunkMap<Register<ChunkVal>>,
    /// Chunk registers still in manifest pieces (from a snapshot), by first coords.
    pub(crate) base: Arc<[PieceRef]>,
}

/// The two kinds of named JSON registers of an incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Named {
    /// Attributes.
    Attr,
    /// Array metadata fields that are registers (`fill_value`, `dimension_names`, ...).
    Field,
}

impl Named {
    pub(crate) fn reg_key(self, name: &str) -> RegKey {
        match self {
            Named::Attr => RegKey::Attr(name.into()),
            Named::Field => RegKey::Field(name.into()),
        }
    }
}

impl Node {
    /// The registers of one kind.
    pub(crate) fn named(&self, which: Named) -> &HashMap<Box<str>, Register<Option<Box<str>>>> {
        match which {
            Named::Attr => &self.attrs,
            Named::Field => &self.fields,
        }
    }

    fn named_mut(&mut self, which: Named) -> &mut HashMap<Box<str>, Register<Option<Box<str>>>> {
        match which {
            Named::Attr => &mut self.attrs,
            Named::Field => &mut self.fields,
        }
    }

    fn ndim(&self) -> Option<usize> {
        match &self.kind {
            NodeKind::Array(m) => Some(m.ndim()),
            NodeKind::Group => None,
        }
    }
}

/// What the fold remembers of an applied change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeInfo {
    /// Its hash.
    pub hash: ChangeHash,
    /// Writer.
    pub actor: ActorId,
    /// Writer's sequence number.
    pub seq: u64,
    /// Clock stamp.
    pub hlc: Hlc,
    /// Writer's wall clock at commit.
    pub wall_ms: u64,
    /// Commit message.
    pub message: Option<String>,
    /// Dependencies.
    pub deps: Vec<ChangeHash>,
    /// Number of ops.
    pub ops: u32,
    /// Known from a snapshot only: `deps`, `wall_ms` and `message` are not kept.
    pub compacted: bool,
}

/// A change waiting for dependencies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingChange {
    /// Its hash.
    pub hash: ChangeHash,
    /// Writer.
    pub actor: ActorId,
    /// Writer's sequence number.
    pub seq: u64,
    /// Changes it needs that are not applied.
    pub missing: Vec<ChangeHash>,
}

/// Two different changes claiming the same writer and sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fork {
    /// The writer.
    pub actor: ActorId,
    /// The sequence number claimed twice.
    pub seq: u64,
    /// The distinct changes, ascending.
    pub changes: Vec<ChangeHash>,
}

/// A change whose content is invalid given its causal past; never applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedChange {
    /// Its hash.
    pub hash: ChangeHash,
    /// Why.
    pub reason: String,
}

/// Why the fold refuses a change against its causal past: the causal validity rule
/// it breaks (spec/format.md §3.9). It depends only on the change and the changes it
/// references, so every reader refuses it alike.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// A dependency is not applied.
    #[error("dependency not applied")]
    DependencyMissing,
    /// The change's clock stamp is not greater than this dependency's.
    #[error("clock {} not greater than dependency {}'s", .clock.0, .dependency.short())]
    ClockBehind {
        /// The change's stamp.
        clock: Hlc,
        /// The dependency.
        dependency: ChangeHash,
    },
    /// The change's clock stamp is past the bound set by the changes it references.
    #[error(
        "clock {} too far ahead of the changes it references (at most {} allowed)",
        .clock.0,
        .bound.0
    )]
    ClockAhead {
        /// The change's stamp.
        clock: Hlc,
        /// The greatest stamp allowed.
        bound: Hlc,
    },
    /// A reference to a change that is not applied.
    #[error("reference to a change that is not applied")]
    UnknownChange,
    /// A reference to an op number its change does not have.
    #[error("reference to op {op} of {} which has fewer ops", .change.short())]
    NoSuchOp {
        /// The change referenced.
        change: ChangeHash,
        /// The op number.
        op: u32,
    },
    /// A local node reference to an op of the same change that creates no node.
    #[error("local node reference to an op that creates no node")]
    LocalNotANode,
    /// A node reference to an op that creates no node.
    #[error("reference to an op that creates no node")]
    NotANode,
    /// A chunk op on a group.
    #[error("chunk op on a group")]
    ChunkOpOnGroup,
    /// A resize of a group.
    #[error("resize of a group")]
    ResizeOfGroup,
    /// A resize of a dimension the array does not have.
    #[error("resize of a dimension the array lacks")]
    ResizeDimension,
    /// An array metadata field edit on a group.
    #[error("metadata field edit on a group")]
    FieldOfGroup,
    /// Array metadata created by the change is not JSON (the parser's message).
    #[error("{0}")]
    ArrayJson(String),
    /// Array metadata created by the change is not valid stored Zarr v3 metadata.
    #[error(transparent)]
    ArrayMetadata(#[from] MetaError),
    /// One op breaks a rule.
    #[error("op {index}: {rule}")]
    Op {
        /// Its position in the change.
        index: usize,
        /// The rule.
        #[source]
        rule: Box<Rejection>,
    },
}

impl Rejection {
    /// The rule, as op `index` breaks it.
    fn at_op(self, index: usize) -> Rejection {
        Rejection::Op {
            index,
            rule: Box::new(self),
        }
    }
}

/// What happened to a change handed to [`Fold::insert`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Applied, along with this many pending changes it unblocked.
    Applied {
        /// Pending changes applied as a consequence.
        unblocked: usize,
    },
    /// Waiting for dependencies.
    Pending,
    /// Already known (applied, pending or rejected).
    Duplicate,
    /// Invalid against its causal past.
    Rejected(Rejection),
    /// The pending queue is full.
    QueueFull,
}

#[derive(Clone)]
struct Waiting {
    change: Change,
    size: u64,
    missing: usize,
}

/// The CRDT state of one repository: applied changes, pending ones, and nodes.
///
/// Cloning copies the state and shares the cache of manifest pieces read.
#[derive(Clone)]
pub struct Fold {
    repo: RepoId,
    infos: Vec<ChangeInfo>,
    index: HashMap<ChangeHash, u32>,
    heads: std::collections::BTreeSet<ChangeHash>,
    pub(crate) nodes: HashMap<Stamp, Node>,
    /// Live incarnations by path.
    pub(crate) by_path: BTreeMap<Box<str>, Vec<Stamp>>,
    pending: HashMap<ChangeHash, Waiting>,
    pending_bytes: u64,
    waiters: HashMap<ChangeHash, Vec<ChangeHash>>,
    rejected: HashMap<ChangeHash, Rejection>,
    claims: HashMap<(ActorId, u64), Vec<ChangeHash>>,
    /// Object registers by store key (keys outside nodes' metadata and chunks).
    pub(crate) objects: BTreeMap<Box<str>, Register<ChunkVal>>,
    /// Entries superseded where they may still appear: by path, then register.
    pub(crate) superseded: HashMap<Box<str>, HashMap<RegKey, Records>>,
    /// Manifest pieces read so far (a cache: loading one never changes the state).
    /// Shared by clones: pieces are named by their content.
    pieces: Arc<RwLock<HashMap<ObjectHash, Arc<LoadedPiece>>>>,
    base: Option<SnapshotBase>,
    snapshot_forks: Vec<Fork>,
}

impl Fold {
    /// An empty fold for repository `repo`.
    pub fn new(repo: RepoId) -> Self {
        Fold {
            repo,
            infos: Vec::new(),
            index: HashMap::new(),
            heads: Default::default(),
            nodes: HashMap::new(),
            by_path: BTreeMap::new(),
            pending: HashMap::new(),
            pending_bytes: 0,
            waiters: HashMap::new(),
            rejected: HashMap::new(),
            claims: HashMap::new(),
            objects: BTreeMap::new(),
            superseded: HashMap::new(),
            pieces: Arc::default(),
            base: None,
            snapshot_forks: Vec::new(),
        }
    }

    /// Folds a set of changes (any order, duplicates allowed).
    pub fn from_changes(
        repo: RepoId,
        changes: impl IntoIterator<Item = (ChangeHash, Change)>,
    ) -> Self {
        let mut f = Fold::new(repo);
        for (h, c) in changes {
            f.insert(h, c, 0);
        }
        f
    }

    /// The repository this fold belongs to.
    pub fn repo(&self) -> RepoId {
        self.repo
    }

    /// Whether a change is applied.
    pub fn contains(&self, hash: &ChangeHash) -> bool {
        self.index.contains_key(hash)
    }

    /// Whether a change is known in any state (applied, pending, rejected).
    pub fn knows(&self, hash: &ChangeHash) -> bool {
        self.index.contains_key(hash)
            || self.pending.contains_key(hash)
            || self.rejected.contains_key(hash)
    }

    /// Number of applied changes.
    pub fn len(&self) -> usize {
        self.infos.len()
    }

    /// Whether no change is applied.
    pub fn is_empty(&self) -> bool {
        self.infos.is_empty()
    }

    /// Applied changes with no applied successor, ascending.
    pub fn heads(&self) -> Vec<ChangeHash> {
        self.heads.iter().copied().collect()
    }

    /// Clock stamp of an applied change.
    pub fn hlc_of(&self, hash: &ChangeHash) -> Option<Hlc> {
        self.index.get(hash).map(|&i| self.infos[i as usize].hlc)
    }

    /// Every applied change, from snapshots and since, in no particular order.
    pub(crate) fn log_all(&self) -> impl Iterator<Item = &ChangeInfo> + '_ {
        self.infos.iter()
    }

    /// Applied changes in a deterministic causal order (ascending stamp).
    pub fn log(&self) -> Vec<&ChangeInfo> {
        let mut v: Vec<&ChangeInfo> = self.infos.iter().filter(|c| !c.compacted).collect();
        v.sort_by_key(|c| (c.hlc, c.actor, c.seq, c.hash));
        v
    }

    /// Changes waiting for dependencies, ascending by hash.
    pub fn pending(&self) -> Vec<PendingChange> {
        let mut v: Vec<PendingChange> = self
            .pending
            .iter()
            .map(|(h, w)| {
                let mut missing: Vec<ChangeHash> = required(&w.change)
                    .into_iter()
                    .filter(|d| !self.index.contains_key(d))
                    .collect();
                missing.sort();
                missing.dedup();
                PendingChange {
                    hash: *h,
                    actor: w.change.actor,
                    seq: w.change.seq,
                    missing,
                }
            })
            .collect();
        v.sort_by_key(|p| p.hash);
        v
    }

    /// Writers that claimed one sequence number for two different changes.
    pub fn forks(&self) -> Vec<Fork> {
        let mut by_claim: BTreeMap<(ActorId, u64), Vec<ChangeHash>> = BTreeMap::new();
        for ((a, s), hs) in &self.claims {
            by_claim.entry((*a, *s)).or_default().extend(hs);
        }
        for f in &self.snapshot_forks {
            by_claim
                .entry((f.actor, f.seq))
                .or_default()
                .extend(&f.changes);
        }
        by_claim
            .into_iter()
            .filter_map(|((actor, seq), mut changes)| {
                changes.sort();
                changes.dedup();
                (changes.len() > 1).then_some(Fork {
                    actor,
                    seq,
                    changes,
                })
            })
            .collect()
    }

    /// Changes refused as invalid against their causal past.
    pub fn rejected(&self) -> Vec<RejectedChange> {
        let mut v: Vec<RejectedChange> = self
            .rejected
            .iter()
            .map(|(h, r)| RejectedChange {
                hash: *h,
                reason: r.to_string(),
            })
            .collect();
        v.sort_by_key(|r| r.hash);
        v
    }

    /// Estimated memory held by pending changes, in bytes ([`Change::decoded_size`]):
    /// what [`MAX_PENDING_BYTES`] bounds.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Inserts one decoded change. The caller has verified the hash and that
    /// `change.repo` is this repository. A pending change counts against the bound
    /// by its decoded size ([`Change::decoded_size`]); `_file_size` (its encoded
    /// size) is no longer used for it and is kept for callers.
    pub fn insert(&mut self, hash: ChangeHash, change: Change, _file_size: u64) -> InsertOutcome {
        if self.knows(&hash) {
            return InsertOutcome::Duplicate;
        }
        let claim = self.claims.entry((change.actor, change.seq)).or_default();
        if !claim.contains(&hash) {
            claim.push(hash);
        }
        let missing: Vec<ChangeHash> = {
            let mut m: Vec<ChangeHash> = required(&change)
                .into_iter()
                .filter(|d| !self.index.contains_key(d))
                .collect();
            m.sort();
            m.dedup();
            m
        };
        if missing.is_empty() {
            return match self.apply(hash, change) {
                Ok(()) => InsertOutcome::Applied {
                    unblocked: self.release(hash),
                },
                Err(r) => {
                    self.rejected.insert(hash, r.clone());
                    InsertOutcome::Rejected(r)
                }
            };
        }
        let size = change.decoded_size();
        if self.pending.len() >= MAX_PENDING_CHANGES
            || self.pending_bytes.saturating_add(size) > MAX_PENDING_BYTES
        {
            return InsertOutcome::QueueFull;
        }
        for m in &missing {
            self.waiters.entry(*m).or_default().push(hash);
        }
        self.pending_bytes += size;
        self.pending.insert(
            hash,
            Waiting {
                change,
                size,
                missing: missing.len(),
            },
        );
        InsertOutcome::Pending
    }

    /// Applies every pending change unblocked by `first`; returns how many.
    fn release(&mut self, first: ChangeHash) -> usize {
        let mut ready = vec![first];
        let mut count = 0;
        while let Some(done) = ready.pop() {
            for w in self.waiters.remove(&done).unwrap_or_default() {
                let Some(entry) = self.pending.get_mut(&w) else {
                    continue;
                };
                entry.missing -= 1;
                if entry.missing > 0 {
                    continue;
                }
                let Some(Waiting { change, size, .. }) = self.pending.remove(&w) else {
                    continue;
                };
                self.pending_bytes -= size;
                match self.apply(w, change) {
                    Ok(()) => {
                        count += 1;
                        ready.push(w);
                    }
                    Err(r) => {
                        self.rejected.insert(w, r);
                    }
                }
            }
        }
        count
    }

    fn stamp_of(&self, r: &OpRef, own: u32) -> Result<Stamp, Rejection> {
        match r {
            OpRef::Local(n) => Ok(Stamp {
                change: own,
                op: *n,
            }),
            OpRef::Change(h, n) => {
                let idx = *self.index.get(h).ok_or(Rejection::UnknownChange)?;
                if *n >= self.infos[idx as usize].ops {
                    return Err(Rejection::NoSuchOp { change: *h, op: *n });
                }
                Ok(Stamp {
                    change: idx,
                    op: *n,
                })
            }
        }
    }

    /// The change with the greatest clock stamp among those a change with these deps
    /// and ops references: its deps and the changes its node references name (what
    /// the fold waits for, `required`); `None` when it references none. The clock
    /// bound of spec/format.md §3.6 is measured from it, by readers and writers alike.
    pub fn max_ref(
        &self,
        deps: &[ChangeHash],
        ops: &[Op],
    ) -> Result<Option<&ChangeInfo>, Rejection> {
        let mut max: Option<&ChangeInfo> = None;
        let mut missing = false;
        let mut consider = |h: &ChangeHash| match self.index.get(h) {
            Some(&i) => {
                let c = &self.infos[i as usize];
                if max.is_none_or(|m| c.hlc > m.hlc) {
                    max = Some(c);
                }
            }
            None => missing = true,
        };
        deps.iter().for_each(&mut consider);
        let mut last: Option<ChangeHash> = None;
        for op in ops {
            op.for_each_node_ref(|r| {
                // Consecutive ops mostly name one change: look it up once.
                if let OpRef::Change(h, _) = r
                    && last != Some(*h)
                {
                    last = Some(*h);
                    consider(h);
                }
            });
        }
        if missing {
            return Err(Rejection::UnknownChange);
        }
        Ok(max)
    }

    /// Checks a change against its causal past, which must be applied: the causal
    /// validity rules of spec/format.md §3.9. Readers apply a change only if this
    /// passes, and a writer runs it on its own change before uploading it, so a
    /// commit never writes what readers reject. Depends only on the change and the
    /// changes it references, never on the order of arrival or the local clock.
    pub fn check(&self, change: &Change) -> Result<(), Rejection> {
        let own = self.infos.len() as u32;
        for d in &change.deps {
            let dep_hlc = self.hlc_of(d).ok_or(Rejection::DependencyMissing)?;
            if change.hlc <= dep_hlc {
                return Err(Rejection::ClockBehind {
                    clock: change.hlc,
                    dependency: *d,
                });
            }
        }
        let max_ref = self.max_ref(&change.deps, &change.ops)?.map(|c| c.hlc);
        let bound = Hlc::bound(max_ref);
        if change.hlc > bound {
            return Err(Rejection::ClockAhead {
                clock: change.hlc,
                bound,
            });
        }
        let mut local_kinds: Vec<Option<Option<usize>>> = Vec::with_capacity(change.ops.len());
        let mut memo: Option<(OpRef, Option<usize>)> = None;
        for (i, op) in change.ops.iter().enumerate() {
            // Consecutive ops mostly edit the same node: check its reference once.
            let target = op.target();
            let memo_hit = matches!((&memo, &target), (Some((m, _)), Some(t)) if m == t);
            let mut bad = None;
            // Only node references must resolve: an `observed` entry that names no
            // applied op just removes nothing (spec/merge.md, "Observed entries").
            op.for_each_node_ref(|r| {
                if bad.is_none()
                    && !(memo_hit && Some(*r) == target)
                    && let Err(e) = self.stamp_of(r, own)
                {
                    bad = Some(e);
                }
            });
            if let Some(e) = bad {
                return Err(e);
            }
            let kind_of = |r: &OpRef| -> Result<Option<usize>, Rejection> {
                match r {
                    OpRef::Local(n) => local_kinds
                        .get(*n as usize)
                        .copied()
                        .flatten()
                        .ok_or(Rejection::LocalNotANode),
                    OpRef::Change(..) => {
                        let s = self.stamp_of(r, own)?;
                        self.nodes
                            .get(&s)
                            .map(Node::ndim)
                            .ok_or(Rejection::NotANode)
                    }
                }
            };
            if let Some(t) = target {
                let ndim = match memo {
                    Some((m, ndim)) if m == t => ndim,
                    _ => kind_of(&t).map_err(|e| e.at_op(i))?,
                };
                memo = Some((t, ndim));
                match op {
                    Op::SetChunk { .. } | Op::DeleteChunk { .. } if ndim.is_none() => {
                        return Err(Rejection::ChunkOpOnGroup.at_op(i));
                    }
                    Op::Resize { dims, .. } => {
                        let n = ndim.ok_or_else(|| Rejection::ResizeOfGroup.at_op(i))?;
                        if dims.iter().any(|d| d.dim as usize >= n) {
                            return Err(Rejection::ResizeDimension.at_op(i));
                        }
                    }
                    Op::SetMetaField { field, value, .. } => {
                        let n = ndim.ok_or_else(|| Rejection::FieldOfGroup.at_op(i))?;
                        // Decoding checked the value; its length against the array's
                        // dimensions needs the array.
                        let v: serde_json::Value = serde_json::from_str(value)
                            .map_err(|e| Rejection::ArrayJson(e.to_string()).at_op(i))?;
                        crate::zarr::meta::check_field(field, Some(&v), Some(n))
                            .map_err(|e| Rejection::ArrayMetadata(e).at_op(i))?;
                    }
                    Op::DeleteMetaField { .. } if ndim.is_none() => {
                        return Err(Rejection::FieldOfGroup.at_op(i));
                    }
                    _ => {}
                }
            }
            if let Op::DeleteNode { incarnations, .. } = op {
                for r in incarnations {
                    kind_of(r).map_err(|e| e.at_op(i))?;
                }
            }
            local_kinds.push(match op {
                Op::CreateGroup { .. } => Some(None),
                Op::CreateArray { metadata, .. } => {
                    let doc: serde_json::Value = serde_json::from_str(metadata)
                        .map_err(|e| Rejection::ArrayJson(e.to_string()))?;
                    Some(Some(ArrayMeta::from_stored(&doc)?.ndim()))
                }
                _ => None,
            });
        }

        Ok(())
    }

    /// Validates against the causal past ([`Fold::check`]), then applies all ops; all
    /// or nothing.
    fn apply(&mut self, hash: ChangeHash, change: Change) -> Result<(), Rejection> {
        self.check(&change)?;
        let own = self.infos.len() as u32;
        for d in &change.deps {
            self.heads.remove(d);
        }
        self.heads.insert(hash);
        self.index.insert(hash, own);
        self.infos.push(ChangeInfo {
            hash,
            actor: change.actor,
            seq: change.seq,
            hlc: change.hlc,
            wall_ms: change.wall_ms,
            message: change.message,
            deps: change.deps,
            ops: change.ops.len() as u32,
            compacted: false,
        });
        for (i, op) in change.ops.into_iter().enumerate() {
            let s = Stamp {
                change: own,
                op: i as u32,
            };
            self.apply_op(s, op);
        }
        Ok(())
    }

    fn resolve(&self, r: &OpRef, own: u32) -> Stamp {
        // Validated in `apply`.
        self.stamp_of(r, own).unwrap_or(Stamp {
            change: u32::MAX,
            op: u32::MAX,
        })
    }

    /// Resolves an `observed` list: stamps of the entries that are applied, and the
    /// identities of all of them (an entry may also sit in an unloaded manifest piece,
    /// or belong to a change not applied yet).
    fn observe(&self, rs: &[OpRef], own: u32) -> (Vec<Stamp>, Vec<(EntryId, bool)>) {
        let mut stamps = Vec::with_capacity(rs.len());
        let mut ids = Vec::with_capacity(rs.len());
        for r in rs {
            match r {
                OpRef::Local(n) => {
                    stamps.push(Stamp {
                        change: own,
                        op: *n,
                    });
                    ids.push(((self.infos[own as usize].hash, *n), true));
                }
                OpRef::Change(h, n) => match self.index.get(h) {
                    Some(&c) => {
                        stamps.push(Stamp { change: c, op: *n });
                        ids.push(((*h, *n), true));
                    }
                    None => ids.push(((*h, *n), false)),
                },
            }
        }
        (stamps, ids)
    }

    /// Remembers entries that are superseded but not in memory: those of changes not
    /// applied (`all = false`), or every one (`all = true`, for manifest pieces).
    fn remember_superseded(&mut self, path: &str, reg: RegKey, ids: &[(EntryId, bool)], all: bool) {
        let mut keep = ids
            .iter()
            .filter(|(_, known)| all || !known)
            .map(|(id, _)| *id)
            .peekable();
        if keep.peek().is_none() {
            return;
        }
        let v = self
            .superseded
            .entry(path.into())
            .or_default()
            .entry(reg)
            .or_default();
        // Named again since the base: the record's horizon starts afresh.
        for id in keep {
            v.insert(id, false);
        }
    }

    /// Whether an entry was superseded before it arrived.
    pub(crate) fn is_superseded(&self, path: &str, reg: &RegKey, id: &EntryId) -> bool {
        !self.superseded.is_empty()
            && self
                .superseded
                .get(path)
                .and_then(|m| m.get(reg))
                .is_some_and(|v| v.contains_key(id))
    }

    fn own_id(&self, s: Stamp) -> EntryId {
        (self.infos[s.change as usize].hash, s.op)
    }

    /// Live incarnations at the target's path, target first if it is live.
    /// A deleted target is left out, but its live siblings are still listed: an op
    /// on a deleted incarnation is dropped, yet it still supersedes the entries it
    /// observed in live incarnations at the same path. Otherwise the result would
    /// depend on whether the op or the delete arrived first.
    fn siblings(&self, target: Stamp) -> Vec<Stamp> {
        let Some(n) = self.nodes.get(&target) else {
            return Vec::new();
        };
        let mut v = Vec::new();
        if !n.deleted {
            v.push(target);
        }
        if let Some(all) = self.by_path.get(&n.path) {
            v.extend(all.iter().copied().filter(|s| *s != target));
        }
        v
    }

    fn apply_op(&mut self, s: Stamp, op: Op) {
        let own = s.change;
        match op {
            Op::CreateGroup { path, attributes } => {
                self.create(s, path, NodeKind::Group, attributes, Vec::new())
            }
            Op::CreateArray {
                path,
                metadata,
                attributes,
            } => {
                let meta = serde_json::from_str(&metadata)
                    .ok()
                    .and_then(|d| ArrayMeta::from_stored(&d).ok());
                if let Some(meta) = meta {
                    let id = self.own_id(s);
                    let dims = meta
                        .shape()
                        .iter()
                        .enumerate()
                        .map(|(i, &d)| {
                            (!self.is_superseded(&path, &RegKey::Dim(i as u32), &id))
                                .then(|| Register::new(s, d))
                        })
                        .collect();
                    self.create(
                        s,
                        path,
                        NodeKind::Array(std::sync::Arc::new(meta)),
                        attributes,
                        dims,
                    );
                }
            }
            Op::SetAttr {
                node,
                key,
                value,
                observed,
            } => {
                let val = Some(value.into_boxed_str());
                self.write_named(s, Named::Attr, node, key, val, &observed);
            }
            Op::DeleteAttr {
                node,
                key,
                observed,
            } => self.write_named(s, Named::Attr, node, key, None, &observed),
            Op::SetMetaField {
                node,
                field,
                value,
                observed,
            } => {
                let val = Some(value.into_boxed_str());
                self.write_named(s, Named::Field, node, field, val, &observed);
            }
            Op::DeleteMetaField {
                node,
                field,
                observed,
            } => self.write_named(s, Named::Field, node, field, None, &observed),
            Op::Resize { node, dims } => {
                let target = self.resolve(&node, own);
                let sibs = self.siblings(target);
                let Some(path) = self.nodes.get(&target).map(|n| n.path.clone()) else {
                    return;
                };
                let id = self.own_id(s);
                for d in dims {
                    let (observed, ids) = self.observe(&d.observed, own);
                    self.remember_superseded(&path, RegKey::Dim(d.dim), &ids, false);
                    for sib in &sibs {
                        if let Some(Some(reg)) = self
                            .nodes
                            .get_mut(sib)
                            .and_then(|n| n.dims.get_mut(d.dim as usize))
                            && reg.remove_observed(&observed)
                            && let Some(n) = self.nodes.get_mut(sib)
                        {
                            n.dims[d.dim as usize] = None;
                        }
                    }
                    if self.is_superseded(&path, &RegKey::Dim(d.dim), &id) {
                        continue;
                    }
                    if let Some(slot) = self
                        .nodes
                        .get_mut(&target)
                        .filter(|n| !n.deleted)
                        .and_then(|n| n.dims.get_mut(d.dim as usize))
                    {
                        *slot = Some(match slot.take() {
                            Some(reg) => reg.push(s, d.size),
                            None => Register::new(s, d.size),
                        });
                    }
                }
            }
            Op::SetChunk {
                node,
                key,
                data,
                observed,
            } => {
                self.write_chunk(s, node, key, ChunkVal::from_data(data), &observed);
            }
            Op::DeleteChunk {
                node,
                key,
                observed,
            } => self.write_chunk(s, node, key, ChunkVal::Deleted, &observed),
            Op::DeleteNode { incarnations, .. } => {
                for r in &incarnations {
                    let t = self.resolve(r, own);
                    self.delete_node(t);
                }
            }
            Op::SetObject {
                key,
                data,
                observed,
            } => {
                // A reference was refused when the change was decoded.
                if !matches!(data, ChunkData::Reference(_)) {
                    self.write_object(s, key, ChunkVal::from_data(data), &observed);
                }
            }
            Op::DeleteObject { key, observed } => {
                self.write_object(s, key, ChunkVal::Deleted, &observed)
            }
        }
    }

    /// Writes an object register. Objects belong to no node: they live as long as
    /// their register, whatever happens to nodes around their key.
    fn write_object(&mut self, s: Stamp, key: String, val: ChunkVal, observed: &[OpRef]) {
        let (observed, ids) = self.observe(observed, s.change);
        let reg = RegKey::Object(key.as_str().into());
        self.remember_superseded("", reg.clone(), &ids, false);
        let dead = self.is_superseded("", &reg, &self.own_id(s));
        let key = key.into_boxed_str();
        if dead {
            if let Some(r) = self.objects.get_mut(&key)
                && r.remove_observed(&observed)
            {
                self.objects.remove(&key);
            }
            return;
        }
        match self.objects.get_mut(&key) {
            Some(r) => r.write(s, val, &observed),
            None => {
                self.objects.insert(key, Register::new(s, val));
            }
        }
    }

    fn create(
        &mut self,
        s: Stamp,
        path: String,
        kind: NodeKind,
        attributes: Vec<(String, String)>,
        dims: Vec<Option<Register<u64>>>,
    ) {
        let id = self.own_id(s);
        let attrs = attributes
            .into_iter()
            .filter(|(k, _)| !self.is_superseded(&path, &RegKey::Attr(k.as_str().into()), &id))
            .map(|(k, v)| {
                (
                    k.into_boxed_str(),
                    Register::new(s, Some(v.into_boxed_str())),
                )
            })
            .collect();
        let path: Box<str> = path.into_boxed_str();
        self.by_path.entry(path.clone()).or_default().push(s);
        self.nodes.insert(
            s,
            Node {
                path,
                kind,
                deleted: false,
                attrs,
                fields: HashMap::new(),
                dims,
                chunks: ChunkMap::default(),
                base: Arc::from(Vec::new()),
            },
        );
    }

    fn delete_node(&mut self, t: Stamp) {
        let Some(n) = self.nodes.get_mut(&t) else {
            return;
        };
        if n.deleted {
            return;
        }
        n.deleted = true;
        n.attrs = HashMap::new();
        n.fields = HashMap::new();
        n.chunks = ChunkMap::default();
        n.dims = Vec::new();
        n.base = Arc::from(Vec::new());
        let path = n.path.clone();
        if let Some(v) = self.by_path.get_mut(&path) {
            v.retain(|x| *x != t);
            if v.is_empty() {
                self.by_path.remove(&path);
            }
        }
    }

    /// Writes an attribute or metadata field register (the same rules for both).
    fn write_named(
        &mut self,
        s: Stamp,
        which: Named,
        node: OpRef,
        key: String,
        val: Option<Box<str>>,
        observed: &[OpRef],
    ) {
        let target = self.resolve(&node, s.change);
        let Some(path) = self.nodes.get(&target).map(|n| n.path.clone()) else {
            return;
        };
        let (observed, ids) = self.observe(observed, s.change);
        let reg = which.reg_key(&key);
        self.remember_superseded(&path, reg.clone(), &ids, false);
        for sib in self.siblings(target).into_iter().filter(|x| *x != target) {
            if let Some(n) = self.nodes.get_mut(&sib) {
                register_remove(n.named_mut(which), key.as_str(), &observed);
            }
        }
        let dead = self.is_superseded(&path, &reg, &self.own_id(s));
        // An edit to a deleted incarnation is dropped.
        if let Some(n) = self.nodes.get_mut(&target).filter(|n| !n.deleted) {
            let regs = n.named_mut(which);
            if dead {
                register_remove(regs, key.as_str(), &observed);
            } else {
                register_write(regs, key.into_boxed_str(), s, val, &observed);
            }
        }
    }

    fn write_chunk(
        &mut self,
        s: Stamp,
        node: OpRef,
        key: String,
        val: ChunkVal,
        observed: &[OpRef],
    ) {
        let target = self.resolve(&node, s.change);
        let Some(n) = self.nodes.get(&target) else {
            return;
        };
        let live = !n.deleted;
        let path = n.path.clone();
        // Hot path: most chunk writes observe nothing, so other incarnations at the
        // same path are visited only when there are entries to remove. They are visited
        // even when the target was deleted, as for attributes (see `write_attr`).
        let observed = if observed.is_empty() {
            Vec::new()
        } else {
            let sibs: Vec<Stamp> = self
                .by_path
                .get(&n.path)
                .map(|all| all.iter().copied().filter(|x| *x != target).collect())
                .unwrap_or_default();
            let any_base = !n.base.is_empty()
                || sibs
                    .iter()
                    .any(|x| self.nodes.get(x).is_some_and(|m| !m.base.is_empty()));
            let (observed, ids) = self.observe(observed, s.change);
            self.remember_superseded(&path, RegKey::Chunk(key.as_str().into()), &ids, any_base);
            for sib in sibs {
                if let Some(n) = self.nodes.get_mut(&sib) {
                    chunk_remove(&mut n.chunks, &key, &observed);
                }
            }
            observed
        };
        let dead = !self.superseded.is_empty()
            && self.is_superseded(&path, &RegKey::Chunk(key.as_str().into()), &self.own_id(s));
        // An edit to a deleted incarnation is dropped.
        if live && let Some(n) = self.nodes.get_mut(&target) {
            if dead {
                chunk_remove(&mut n.chunks, &key, &observed);
            } else {
                chunk_write(&mut n.chunks, &key, s, val, &observed);
            }
        }
    }

    /// Number of live chunk registers (chunks written and not removed with their node).
    pub fn live_chunk_refs(&self) -> usize {
        self.nodes
            .values()
            .filter(|n| !n.deleted)
            .map(|n| n.chunks.len())
            .sum()
    }

    /// Total order of stamps: `(hlc, actor, seq, change hash, op)`.
    pub(crate) fn cmp_stamp(&self, a: &Stamp, b: &Stamp) -> Ordering {
        if a.change == b.change {
            return a.op.cmp(&b.op);
        }
        let (x, y) = (
            &self.infos[a.change as usize],
            &self.infos[b.change as usize],
        );
        (x.hlc, x.actor, x.seq, x.hash, a.op).cmp(&(y.hlc, y.actor, y.seq, y.hash, b.op))
    }

    /// The applied change and op a stamp names.
    pub(crate) fn info(&self, s: &Stamp) -> &ChangeInfo {
        &self.infos[s.change as usize]
    }

    /// A stamp as an op reference usable in a new change.
    pub(crate) fn op_ref(&self, s: &Stamp) -> OpRef {
        OpRef::Change(self.infos[s.change as usize].hash, s.op)
    }
}

/// Every change a change needs applied first: its deps and the changes whose nodes
/// its ops edit or delete (may repeat; callers dedup). `observed` entries are not
/// waited for. Consecutive repeats are skipped: the ops of one change mostly target
/// the same node.
pub(crate) fn required(change: &Change) -> Vec<ChangeHash> {
    let mut v = change.deps.clone();
    let mut last: Option<ChangeHash> = None;
    for op in &change.ops {
        op.for_each_node_ref(|r| {
            if let OpRef::Change(h, _) = r
                && last != Some(*h)
            {
                last = Some(*h);
                v.push(*h);
            }
        });
    }
    v
}
