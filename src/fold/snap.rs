//! The fold and snapshots: starting a fold from snapshot metadata, reading chunk
//! registers that live in manifest pieces, and exporting the state as a snapshot.

use super::*;
use crate::format::snapshot::{
    AttrRegister, MAX_PIECE_BYTES, PIECE_ENTRIES, PIECE_TARGET_BYTES, SnapFork, SnapNode,
    SnapshotError, Superseded, check_write_size,
};
use std::collections::{BTreeSet, HashSet};

/// A snapshot's state as a compactor writes it: metadata plus the pieces it needs.
pub(crate) struct Exported {
    pub(crate) meta: SnapshotMeta,
    /// New manifest pieces: hash, bytes and number of keys.
    pub(crate) new_pieces: Vec<(ObjectHash, Vec<u8>)>,
    /// Pieces carried over unchanged.
    pub(crate) reused_pieces: usize,
    /// Covered changes that leave the metadata table: they go to the archive.
    pub(crate) to_archive: Vec<CoveredChange>,
}

fn corrupt(key: &str, what: SnapshotError) -> Error {
    Error::corrupt(key, what)
}

impl Fold {
    /// Decodes snapshot metadata found under `name` and starts a fold from it:
    /// everything a reader checks (garbage collection judges by the same checks).
    pub(crate) fn decode_snapshot(
        key: &str,
        bytes: &[u8],
        name: SnapshotName,
        repo: RepoId,
    ) -> Result<Fold> {
        let meta = SnapshotMeta::decode_named(key, bytes, name, repo)?;
        Fold::from_snapshot(key, name, meta, repo)
    }

    /// A fold holding the state of snapshot `meta` (read from `key`). Chunk
    /// registers stay in their manifest pieces until they are read.
    pub fn from_snapshot(
        key: &str,
        name: SnapshotName,
        meta: SnapshotMeta,
        repo: RepoId,
    ) -> Result<Fold> {
        if meta.repo != repo {
            return Err(Error::ForeignRepo {
                key: key.into(),
                found: meta.repo.to_string(),
                expected: repo.to_string(),
            });
        }
        let mut f = Fold::new(repo);
        // Decoding checked the table is strictly ascending: no duplicates.
        for c in &meta.changes {
            f.push_covered(c);
        }
        for h in &meta.heads {
            f.heads.insert(*h);
        }
        let stamp = |s: &(u32, u32)| Stamp {
            change: s.0,
            op: s.1,
        };
        for n in meta.nodes {
            crate::zarr::key::check_node_path(&n.path)
                .map_err(|e| corrupt(key, SnapshotError::NodePath(e)))?;
            let kind = match &n.kind {
                SnapKind::Group => NodeKind::Group,
                SnapKind::Array(json) => {
                    let doc: serde_json::Value = serde_json::from_str(json)
                        .map_err(|e| corrupt(key, SnapshotError::ArrayJson(e.to_string())))?;
                    let m = ArrayMeta::from_stored(&doc)
                        .map_err(|e| corrupt(key, SnapshotError::ArrayMetadata(e)))?;
                    NodeKind::Array(Arc::new(m))
                }
            };
            let ndim = match &kind {
                NodeKind::Array(m) => m.ndim(),
                NodeKind::Group => 0,
            };
            if !n.deleted && n.dims.len() != ndim {
                return Err(corrupt(key, SnapshotError::NodeDimensions(n.path)));
            }
            let named = |regs: Vec<(String, AttrRegister)>| {
                regs.into_iter()
                    .map(|(k, es)| {
                        let es: Vec<(Stamp, Option<Box<str>>)> = es
                            .into_iter()
                            .map(|(s, v)| (stamp(&s), v.map(String::into_boxed_str)))
                            .collect();
                        (k.into_boxed_str(), Register::from_entries(es))
                    })
                    .collect()
            };
            let attrs = named(n.attrs);
            let fields = named(n.fields);
            let dims = n
                .dims
                .into_iter()
                .map(|d| {
                    d.map(|es| {
                        Register::from_entries(
                            es.into_iter().map(|(s, v)| (stamp(&s), v)).collect(),
                        )
                    })
                })
                .collect();
            let s = stamp(&n.stamp);
            let path: Box<str> = n.path.into_boxed_str();
            if !n.deleted {
                f.by_path.entry(path.clone()).or_default().push(s);
            }
            let node = Node {
                path,
                kind,
                deleted: n.deleted,
                attrs,
                fields,
                dims,
                chunks: ChunkMap::default(),
                base: Arc::from(n.pieces),
            };
            if f.nodes.insert(s, node).is_some() {
                return Err(corrupt(key, SnapshotError::DuplicateStamp));
            }
        }
        for (k, es) in meta.objects {
            let es: Vec<(Stamp, ChunkVal)> = es
                .into_iter()
                .map(|(s, v)| (stamp(&s), ChunkVal::from_snap(v)))
                .collect();
            f.objects
                .insert(k.into_boxed_str(), Register::from_entries(es));
        }
        // Decoding checked the records are strictly ascending: no duplicates, and
        // each is one hash-map insert (near-linear in the number of records).
        for r in meta.superseded {
            f.superseded
                .entry(r.path.into_boxed_str())
                .or_default()
                .entry(r.reg)
                .or_default()
                .insert(r.entry, true);
        }
        f.snapshot_forks = meta
            .forks
            .into_iter()
            .map(|x| Fork {
                actor: x.actor,
                seq: x.seq,
                changes: x.changes,
            })
            .collect();
        f.base = Some(SnapshotBase {
            name,
            max_hlc: meta.max_hlc,
            archive: meta.archive,
            supersedes: meta.supersedes,
            joined: Vec::new(),
        });
        Ok(f)
    }

    pub(super) fn push_covered(&mut self, c: &CoveredChange) {
        let idx = self.infos.len() as u32;
        self.index.insert(c.hash, idx);
        let claim = self.claims.entry((c.actor, c.seq)).or_default();
        if !claim.contains(&c.hash) {
            claim.push(c.hash);
        }
        self.infos.push(ChangeInfo {
            hash: c.hash,
            actor: c.actor,
            seq: c.seq,
            hlc: c.hlc,
            wall_ms: 0,
            message: None,
            deps: Vec::new(),
            ops: c.ops,
            compacted: true,
        });
    }

    /// Records a change known (from the coverage archive) to be covered by the
    /// snapshot this fold started from, and applies what it unblocks.
    pub fn add_covered(&mut self, c: &CoveredChange) -> usize {
        if self.index.contains_key(&c.hash) {
            return 0;
        }
        // A pending copy of it would be a second application: drop it.
        if let Some(w) = self.pending.remove(&c.hash) {
            self.pending_bytes -= w.size;
        }
        self.push_covered(c);
        self.release(c.hash)
    }

    /// The snapshot this fold started from, if any.
    pub fn snapshot_base(&self) -> Option<&SnapshotBase> {
        self.base.as_ref()
    }

    /// Hashes that pending changes wait for, ascending.
    pub fn missing(&self) -> Vec<ChangeHash> {
        let set: BTreeSet<ChangeHash> = self.waiters.keys().copied().collect();
        set.into_iter().collect()
    }

    /// The manifest piece holding `key` in incarnation `node`, if it has pieces.
    pub(crate) fn piece_for<'a>(node: &'a Node, key: &str) -> Option<&'a PieceRef> {
        let NodeKind::Array(meta) = &node.kind else {
            return None;
        };
        if node.base.is_empty() {
            return None;
        }
        let coords = piece_order(meta, key);
        let i = node
            .base
            .partition_point(|p| p.start() <= (coords.as_slice(), key));
        Some(&node.base[i.saturating_sub(1)])
    }

    /// Pieces not yet loaded that reading `key` (or, with `None`, every key) of the
    /// given incarnations needs.
    pub(crate) fn missing_pieces(&self, members: &[Stamp], key: Option<&str>) -> Vec<PieceRef> {
        let Ok(loaded) = self.pieces.read() else {
            return Vec::new();
        };
        let mut seen: HashSet<ObjectHash> = HashSet::new();
        let mut out: Vec<PieceRef> = Vec::new();
        for m in members {
            let Some(n) = self.nodes.get(m).filter(|n| !n.deleted) else {
                continue;
            };
            let wanted: Vec<&PieceRef> = match key {
                Some(k) => Fold::piece_for(n, k).into_iter().collect(),
                None => n.base.iter().collect(),
            };
            for p in wanted {
                if !loaded.contains_key(&p.hash) && seen.insert(p.hash) {
                    out.push(p.clone());
                }
            }
        }
        out
    }

    /// Every piece not yet loaded, of every live incarnation.
    pub(crate) fn all_missing_pieces(&self) -> Vec<PieceRef> {
        let members: Vec<Stamp> = self.by_path.values().flatten().copied().collect();
        self.missing_pieces(&members, None)
    }

    /// Caches a manifest piece (reading one never changes the state).
    pub(crate) fn insert_piece(&self, hash: ObjectHash, piece: LoadedPiece) {
        if let Ok(mut m) = self.pieces.write() {
            m.insert(hash, Arc::new(piece));
        }
    }

    pub(super) fn loaded_piece(&self, hash: &ObjectHash) -> Option<Arc<LoadedPiece>> {
        self.pieces.read().ok()?.get(hash).cloned()
    }

    /// Number of manifest pieces held in memory.
    pub fn loaded_pieces(&self) -> usize {
        self.pieces.read().map(|m| m.len()).unwrap_or(0)
    }

    pub(crate) fn order_of(&self, s: &Stamp) -> OrderKey {
        let c = &self.infos[s.change as usize];
        OrderKey {
            hlc: c.hlc,
            actor: c.actor,
            seq: c.seq,
            hash: c.hash,
            op: s.op,
        }
    }

    /// Live entries of chunk `key` in incarnation `m`, appended to `out`: those in
    /// memory and those in its manifest piece, minus superseded ones. `Err` names a
    /// piece that must be loaded first.
    pub(crate) fn chunk_entries(
        &self,
        m: &Stamp,
        key: &str,
        out: &mut Vec<ChunkEntry>,
    ) -> std::result::Result<(), ObjectHash> {
        let Some(n) = self.nodes.get(m).filter(|n| !n.deleted) else {
            return Ok(());
        };
        if let Some(reg) = n.chunks.get(key) {
            out.extend(reg.entries().iter().map(|(s, v)| ChunkEntry {
                order: self.order_of(s),
                val: v.clone(),
            }));
        }
        if let Some(p) = Fold::piece_for(n, key) {
            let piece = self.loaded_piece(&p.hash).ok_or(p.hash)?;
            if let Some(es) = piece.get(key) {
                // Records exist only for entries superseded while out of memory.
                let ids = self
                    .superseded
                    .get(&n.path)
                    .and_then(|m| m.get(&RegKey::Chunk(key.into())));
                for (c, op, v) in es {
                    let order = piece.order(*c, *op);
                    if !ids.is_some_and(|ids| ids.contains_key(&(order.hash, order.op))) {
                        out.push(ChunkEntry {
                            order,
                            val: v.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Chunk keys with at least one live entry in incarnation `m`, unsorted.
    pub(crate) fn node_chunk_keys(
        &self,
        m: &Stamp,
    ) -> std::result::Result<Vec<String>, ObjectHash> {
        let Some(n) = self.nodes.get(m).filter(|n| !n.deleted) else {
            return Ok(Vec::new());
        };
        let mut keys: Vec<String> = n.chunks.keys().map(str::to_string).collect();
        let sup = self.superseded.get(&n.path);
        for p in n.base.iter() {
            let piece = self.loaded_piece(&p.hash).ok_or(p.hash)?;
            for (k, es) in &piece.keys {
                let live = match sup.and_then(|s| s.get(&RegKey::Chunk(k.clone()))) {
                    None => true,
                    Some(ids) => es.iter().any(|(c, op, _)| {
                        !ids.contains_key(&(piece.changes[*c as usize].hash, *op))
                    }),
                };
                if live && n.chunks.get(k).is_none() {
                    keys.push(k.to_string());
                }
            }
        }
        Ok(keys)
    }

    /// Blobs every live value uses: chunk registers of live incarnations (in memory and
    /// in pieces, which must be loaded: `Err` names one that is not) and objects.
    pub(crate) fn live_blobs(&self) -> std::result::Result<HashSet<BlobHash>, ObjectHash> {
        let mut out: HashSet<BlobHash> = HashSet::new();
        for (s, n) in &self.nodes {
            if n.deleted {
                continue;
            }
            for key in self.node_chunk_keys(s)? {
                let mut es = Vec::new();
                self.chunk_entries(s, &key, &mut es)?;
                out.extend(es.iter().filter_map(|e| match &e.val {
                    ChunkVal::Blob { hash, .. } => Some(*hash),
                    _ => None,
                }));
            }
        }
        for reg in self.objects.values() {
            out.extend(reg.entries().iter().filter_map(|(_, v)| match v {
                ChunkVal::Blob { hash, .. } => Some(*hash),
                _ => None,
            }));
        }
        Ok(out)
    }

    /// Number of chunk keys held in manifest pieces (loaded or not).
    pub fn base_chunk_refs(&self) -> u64 {
        self.nodes
            .values()
            .filter(|n| !n.deleted)
            .flat_map(|n| n.base.iter())
            .map(|p| u64::from(p.keys))
            .sum()
    }

    /// Whether any applied change is not yet in a snapshot.
    pub fn has_uncompacted(&self) -> bool {
        self.infos.iter().any(|c| !c.compacted)
    }

    /// Number of applied changes not from a snapshot.
    pub fn uncompacted(&self) -> usize {
        self.infos.iter().filter(|c| !c.compacted).count()
    }

    /// Changes a snapshot of this state covers: its base's count plus the changes
    /// applied beyond it; `None` if that overflows (a base claiming an absurd count),
    /// or when the state joins several snapshots (their coverage overlaps: only
    /// their archives tell the count, see `Repo::covered_total`).
    pub fn covered_count(&self) -> Option<u64> {
        if self.base.as_ref().is_some_and(|b| !b.joined.is_empty()) {
            return None;
        }
        let base = self.base.as_ref().map_or(0, |b| b.name.covered);
        base.checked_add(u64::try_from(self.uncompacted()).ok()?)
    }

    /// Pieces an export must read: every piece of an incarnation whose chunks
    /// changed since the snapshot (others are carried over unread).
    pub(crate) fn pieces_for_export(&self) -> Vec<PieceRef> {
        let members: Vec<Stamp> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.deleted && self.chunks_dirty(n))
            .map(|(s, _)| *s)
            .collect();
        self.missing_pieces(&members, None)
    }

    fn chunks_dirty(&self, n: &Node) -> bool {
        n.chunks.len() > 0
            || self
                .superseded
                .get(&n.path)
                .is_some_and(|m| m.keys().any(|r| matches!(r, RegKey::Chunk(_))))
    }

    /// Whether any superseded record came from the snapshot this fold started from
    /// and names a change this fold does not know: the records compaction may drop
    /// past the horizon.
    pub(crate) fn has_unknown_base_records(&self) -> bool {
        self.superseded
            .values()
            .flat_map(|m| m.values())
            .any(|ids| {
                ids.iter()
                    .any(|(id, from_base)| *from_base && !self.knows(&id.0))
            })
    }

    /// The state as a snapshot. `listed` are the change files listed now; `covered`
    /// tells whether a change is covered (for dropping settled superseded records);
    /// `expired` whether a record carried from the base snapshot that names this
    /// change is past the history horizon (dropped too, spec/merge.md §8); `covered`
    /// is the number of changes the state covers. Pieces from
    /// [`Fold::pieces_for_export`] must be loaded.
    pub(crate) fn export(
        &self,
        covered: u64,
        listed: &HashSet<ChangeHash>,
        is_covered: &dyn Fn(&ChangeHash) -> bool,
        expired: &dyn Fn(&ChangeHash) -> bool,
    ) -> Result<Exported> {
        // The table: changes stamps refer to, plus covered changes still listed.
        let mut used: BTreeSet<u32> = BTreeSet::new();
        for (s, n) in &self.nodes {
            used.insert(s.change);
            for reg in n.attrs.values().chain(n.fields.values()) {
                used.extend(reg.entries().iter().map(|e| e.0.change));
            }
            for reg in n.dims.iter().flatten() {
                used.extend(reg.entries().iter().map(|e| e.0.change));
            }
        }
        for reg in self.objects.values() {
            used.extend(reg.entries().iter().map(|e| e.0.change));
        }
        // Heads too: new changes depend on them and need their clock stamps.
        for (i, c) in self.infos.iter().enumerate() {
            if listed.contains(&c.hash) || self.heads.contains(&c.hash) {
                used.insert(i as u32);
            }
        }
        let mut order: Vec<u32> = used.iter().copied().collect();
        order.sort_by_key(|&i| self.infos[i as usize].hash);
        let remap: HashMap<u32, u32> = order
            .iter()
            .enumerate()
            .map(|(new, &old)| (old, new as u32))
            .collect();
        let covered_of = |c: &ChangeInfo| CoveredChange {
            hash: c.hash,
            actor: c.actor,
            seq: c.seq,
            hlc: c.hlc,
            ops: c.ops,
        };
        let changes: Vec<CoveredChange> = order
            .iter()
            .map(|&i| covered_of(&self.infos[i as usize]))
            .collect();
        let to_archive: Vec<CoveredChange> = self
            .infos
            .iter()
            .enumerate()
            .filter(|(i, _)| !used.contains(&(*i as u32)))
            .map(|(_, c)| covered_of(c))
            .collect();
        let map =
            |s: &Stamp| -> (u32, u32) { (remap.get(&s.change).copied().unwrap_or(u32::MAX), s.op) };

        let mut new_pieces = Vec::new();
        let mut reused_pieces = 0;
        let mut nodes: Vec<SnapNode> = Vec::with_capacity(self.nodes.len());
        for (s, n) in &self.nodes {
            let named = |which: Named| {
                let mut regs: Vec<(String, AttrRegister)> = n
                    .named(which)
                    .iter()
                    .map(|(k, reg)| {
                        let mut es: Vec<(Stamp, Option<String>)> = reg
                            .entries()
                            .iter()
                            .map(|(s, v)| (*s, v.as_deref().map(str::to_string)))
                            .collect();
                        es.sort_by(|a, b| self.cmp_stamp(&a.0, &b.0));
                        (
                            k.to_string(),
                            es.into_iter().map(|(s, v)| (map(&s), v)).collect(),
                        )
                    })
                    .collect();
                regs.sort_by(|a, b| a.0.cmp(&b.0));
                regs
            };
            let attrs = named(Named::Attr);
            let fields = named(Named::Field);
            let dims = n
                .dims
                .iter()
                .map(|d| {
                    d.as_ref().map(|reg| {
                        let mut es: Vec<(Stamp, u64)> = reg.entries().to_vec();
                        es.sort_by(|a, b| self.cmp_stamp(&a.0, &b.0));
                        es.into_iter().map(|(s, v)| (map(&s), v)).collect()
                    })
                })
                .collect();
            let (kind, pieces) = match &n.kind {
                NodeKind::Group => (SnapKind::Group, Vec::new()),
                NodeKind::Array(m) => {
                    let pieces = if n.deleted {
                        Vec::new()
                    } else if !self.chunks_dirty(n) {
                        reused_pieces += n.base.len();
                        n.base.to_vec()
                    } else {
                        let (pieces, reused, made) = self.rebuild_pieces(s, n, m)?;
                        reused_pieces += reused;
                        new_pieces.extend(made);
                        pieces
                    };
                    (SnapKind::Array(m.to_canonical()), pieces)
                }
            };
            nodes.push(SnapNode {
                stamp: map(s),
                path: n.path.to_string(),
                kind,
                deleted: n.deleted,
                attrs,
                dims,
                pieces,
                fields,
            });
        }
        nodes.sort_by(|a, b| (&a.path, a.stamp).cmp(&(&b.path, b.stamp)));

        let objects = self
            .objects
            .iter()
            .map(|(k, reg)| {
                let mut es: Vec<&(Stamp, ChunkVal)> = reg.entries().iter().collect();
                es.sort_by(|a, b| self.cmp_stamp(&a.0, &b.0));
                let es = es.into_iter().map(|(s, v)| (map(s), v.to_snap())).collect();
                (k.to_string(), es)
            })
            .collect();

        // Records settle once their change is covered: the entry was dropped or
        // never existed. Records of changes not yet seen stay, until the horizon.
        let mut superseded: Vec<Superseded> = Vec::new();
        for (path, regs) in &self.superseded {
            for (reg, ids) in regs {
                for (id, from_base) in ids {
                    let settled = is_covered(&id.0) || (*from_base && expired(&id.0));
                    if !settled {
                        superseded.push(Superseded {
                            path: path.to_string(),
                            reg: reg.clone(),
                            entry: *id,
                        });
                    }
                }
            }
        }
        superseded.sort_by(|a, b| (&a.path, &a.reg, a.entry).cmp(&(&b.path, &b.reg, b.entry)));
        let max_hlc = self
            .infos
            .iter()
            .map(|c| c.hlc)
            .chain(self.base.as_ref().map(|b| b.max_hlc))
            .max()
            .unwrap_or(Hlc(0));
        let forks = self
            .forks()
            .into_iter()
            .map(|f| SnapFork {
                actor: f.actor,
                seq: f.seq,
                changes: f.changes,
            })
            .collect();
        let meta = SnapshotMeta {
            repo: self.repo,
            covered,
            max_hlc,
            heads: self.heads(),
            changes,
            nodes,
            superseded,
            archive: Vec::new(),
            forks,
            supersedes: Vec::new(),
            written_ms: 0,
            objects,
        };
        Ok(Exported {
            meta,
            new_pieces,
            reused_pieces,
            to_archive,
        })
    }

    /// New pieces for a changed array: pieces no changed key falls in are reused.
    #[allow(clippy::type_complexity)]
    fn rebuild_pieces(
        &self,
        s: &Stamp,
        n: &Node,
        meta: &ArrayMeta,
    ) -> Result<(Vec<PieceRef>, usize, Vec<(ObjectHash, Vec<u8>)>)> {
        let old: &[PieceRef] = &n.base;
        let slot_of = |c: &[u64], k: &str| -> usize {
            if old.is_empty() {
                return 0;
            }
            old.partition_point(|p| p.start() <= (c, k))
                .saturating_sub(1)
        };
        // Keys whose registers may differ from the old pieces, by slot, with their
        // coordinates (parsed once: this loop sees every key of a new array).
        let superseded_keys = self
            .superseded
            .get(&n.path)
            .into_iter()
            .flat_map(|m| m.keys())
            .filter_map(|r| match r {
                RegKey::Chunk(k) => Some(&**k),
                _ => None,
            });
        let mut dirty_set: HashSet<&str> = HashSet::new();
        let mut dirty: HashMap<usize, Vec<(Vec<u64>, &str)>> = HashMap::new();
        for k in n.chunks.keys().chain(superseded_keys) {
            if dirty_set.insert(k) {
                let c = piece_order(meta, k);
                dirty.entry(slot_of(&c, k)).or_default().push((c, k));
            }
        }
        let mut out: Vec<PieceRef> = Vec::new();
        let mut made = Vec::new();
        let mut reused = 0;
        let slots = old.len().max(1);
        for i in 0..slots {
            let Some(changed) = dirty.remove(&i) else {
                if let Some(p) = old.get(i) {
                    out.push(p.clone());
                    reused += 1;
                }
                continue;
            };
            let mut rows: Vec<(Vec<u64>, Box<str>, Vec<ChunkEntry>)> =
                Vec::with_capacity(changed.len());
            // Keys of the old piece nothing touched keep their entries as they are.
            if let Some(p) = old.get(i) {
                let piece = self.loaded_piece(&p.hash).ok_or_else(|| {
                    Error::Internal(format!("manifest piece {} not loaded for export", p.hash))
                })?;
                for (k, es) in &piece.keys {
                    if dirty_set.contains(&**k) {
                        continue;
                    }
                    let es = es
                        .iter()
                        .map(|(c, op, v)| ChunkEntry {
                            order: piece.order(*c, *op),
                            val: v.clone(),
                        })
                        .collect();
                    rows.push((piece_order(meta, k), k.clone(), es));
                }
            }
            for (c, k) in changed {
                let mut es = Vec::new();
                self.chunk_entries(s, k, &mut es).map_err(|h| {
                    Error::Internal(format!("manifest piece {h} not loaded for export"))
                })?;
                if !es.is_empty() {
                    es.sort_by_key(|e| e.order);
                    rows.push((c, k.into(), es));
                }
            }
            // Keys are unique: an unstable sort gives one order.
            rows.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            let mut at = 0;
            for (j, run) in split_runs(&rows, PIECE_TARGET_BYTES)
                .into_iter()
                .enumerate()
            {
                let (first, first_key) = match (j, old.get(i)) {
                    // The first run keeps the slot's start so the ranges stay
                    // contiguous (keys below piece 0's start belong to piece 0; every
                    // key of a later slot is at or above its start).
                    (0, Some(p)) => {
                        let mine = (run[0].0.as_slice(), "");
                        let start = if i > 0 || p.start() <= mine {
                            p.start()
                        } else {
                            mine
                        };
                        (start.0.to_vec(), start.1.to_string())
                    }
                    (0, None) => (run[0].0.clone(), String::new()),
                    // A later run starts at its first key's coordinates, and needs its
                    // key too only when the previous run ends on equal coordinates.
                    _ if rows[at - 1].0 == run[0].0 => (run[0].0.clone(), run[0].1.to_string()),
                    _ => (run[0].0.clone(), String::new()),
                };
                at += run.len();
                let (piece, keys) = encode_piece(run);
                let bytes = piece.encode();
                let hash = ObjectHash::of(&bytes);
                // The estimate bounds the size from above, so only one key's register
                // alone (thousands of concurrent values) can be too large.
                check_write_size(
                    "manifest piece",
                    &format!(
                        "of array {:?} from chunk key {:?} ({} concurrent values in its first register)",
                        &*n.path,
                        &*run[0].1,
                        run[0].2.len()
                    ),
                    bytes.len(),
                    MAX_PIECE_BYTES,
                )?;
                out.push(PieceRef {
                    first,
                    hash,
                    keys,
                    bytes: bytes.len() as u64,
                    first_key,
                });
                made.push((hash, bytes));
            }
        }
        // Ranges must ascend; a rebuilt first piece may start below its old start.
        out.sort_by(|a, b| a.start().cmp(&b.start()));
        out.dedup_by(|a, b| a.start() == b.start() && a.hash == b.hash);
        Ok((out, reused, made))
    }
}

/// Cuts rows sorted by (coordinates, key) into runs of at most [`PIECE_ENTRIES`]
/// keys and about `target` encoded bytes (a run holds at least one key). Keys are
/// unique, so a cut may fall anywhere, also between keys of equal coordinates.
#[allow(clippy::type_complexity)]
fn split_runs(
    rows: &[(Vec<u64>, Box<str>, Vec<ChunkEntry>)],
    target: u64,
) -> Vec<&[(Vec<u64>, Box<str>, Vec<ChunkEntry>)]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = PIECE_OVERHEAD;
    for (i, (_, k, es)) in rows.iter().enumerate() {
        let row = row_bytes(k, es);
        if i > start && (i - start >= PIECE_ENTRIES || size + row > target) {
            out.push(&rows[start..i]);
            start = i;
            size = PIECE_OVERHEAD;
        }
        size += row;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

/// Bytes of a piece besides its rows: frame, array headers.
const PIECE_OVERHEAD: u64 = 32;

/// An upper bound of the bytes one chunk register adds to an encoded piece: its key,
/// each entry with the longest MessagePack headers, and a change-table row per entry
/// (each entry may name a change no other entry of the piece names).
fn row_bytes(key: &str, es: &[ChunkEntry]) -> u64 {
    // CoveredChange: array header, bin 32, bin 16, two u64, one u32.
    const TABLE_ROW: u64 = 1 + 34 + 18 + 9 + 9 + 5;
    // Entry: array headers, stamp of two u32, one-entry map and tag.
    const ENTRY: u64 = 1 + 1 + 5 + 5 + 1 + 2;
    let text = |s: &str| 5 + s.len() as u64;
    let value = |v: &ChunkVal| -> u64 {
        match v {
            ChunkVal::Blob { .. } => 1 + 34 + 9,
            ChunkVal::Inline(b) => 5 + b.len() as u64,
            ChunkVal::Reference(r) => {
                1 + text(&r.source) + text(&r.key) + 9 + r.etag.as_deref().map_or(1, text) + 9
            }
            ChunkVal::Deleted => 0,
        }
    };
    let entries: u64 = es.iter().map(|e| ENTRY + TABLE_ROW + value(&e.val)).sum();
    // The row's array header, its key, the entries' array header.
    1 + text(key) + 5 + entries
}

fn encode_piece(rows: &[(Vec<u64>, Box<str>, Vec<ChunkEntry>)]) -> (ManifestPiece, u32) {
    let mut changes: Vec<CoveredChange> = Vec::new();
    let mut seen: HashMap<ChangeHash, ()> = HashMap::new();
    for (_, _, es) in rows {
        for e in es {
            if seen.insert(e.order.hash, ()).is_none() {
                // Pieces only order entries: their op counts are not kept.
                changes.push(CoveredChange {
                    hash: e.order.hash,
                    actor: e.order.actor,
                    seq: e.order.seq,
                    hlc: e.order.hlc,
                    ops: 0,
                });
            }
        }
    }
    changes.sort_by_key(|c| c.hash);
    let idx: HashMap<ChangeHash, u32> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.hash, i as u32))
        .collect();
    let entries = rows
        .iter()
        .map(|(_, k, es)| {
            (
                k.to_string(),
                es.iter()
                    .map(|e| ((idx[&e.order.hash], e.order.op), e.val.to_snap()))
                    .collect(),
            )
        })
        .collect();
    (ManifestPiece { changes, entries }, rows.len() as u32)
}
