//! Joining two snapshot states (spec/merge.md §9): the state of the union of the
//! changes two snapshots cover, built from the snapshots alone (their change files may
//! be gone on both sides).
//!
//! Every register entry is named by the change and op that wrote it, and a snapshot
//! knows exactly which changes it covers (table and archive) and which entries it saw
//! superseded before their change arrived (its records). So for each register:
//! an entry both sides hold stays; an entry one side holds stays unless the other side
//! covers its change (the other applied it and something removed it since) or holds a
//! record naming it (the other saw it superseded). That is the register the fold of
//! the union gives: an entry is live there exactly when no change of the union
//! observed it, and every observer is covered by one side, which then either lacks the
//! entry or records it.

use super::*;
use std::collections::HashSet;

/// Which changes one side of a join covers: its change table (the fold's index) plus
/// the changes found in its coverage archive among those the join asked about, with
/// their records.
pub(crate) struct Coverage<'a> {
    pub(crate) table: &'a HashMap<ChangeHash, u32>,
    pub(crate) archived: &'a HashMap<ChangeHash, CoveredChange>,
}

impl Coverage<'_> {
    fn covers(&self, h: &ChangeHash) -> bool {
        self.table.contains_key(h) || self.archived.contains_key(h)
    }
}

/// Whether two incarnations hold their chunk registers in the same pieces and none in
/// memory: then every entry is on both sides.
fn same_chunks(m: &Node, n: &Node) -> bool {
    m.base.len() == n.base.len()
        && m.base
            .iter()
            .zip(n.base.iter())
            .all(|(a, b)| a.hash == b.hash)
        && m.chunks.len() == 0
        && n.chunks.len() == 0
}

impl Fold {
    /// Nodes of `other` that this fold also holds live, whose chunk registers differ
    /// in where they are kept (different manifest pieces): their pieces must be
    /// loaded, on both sides, before [`Fold::join`]. Returns (this fold's pieces,
    /// `other`'s pieces).
    pub(crate) fn join_pieces(&self, other: &Fold) -> (Vec<PieceRef>, Vec<PieceRef>) {
        let (mut mine, mut theirs) = (Vec::new(), Vec::new());
        for (s, n) in &other.nodes {
            let Some(m) = self.node_by_id(&other.own_id(*s)) else {
                continue;
            };
            if n.deleted || m.deleted {
                continue;
            }
            if !same_chunks(m, n) {
                mine.extend(m.base.iter().cloned());
                theirs.extend(n.base.iter().cloned());
            }
        }
        (mine, theirs)
    }

    /// Every change hash this fold's state names: its table, and the change tables of
    /// the given loaded pieces.
    pub(crate) fn named_changes(&self, pieces: &[PieceRef]) -> HashSet<ChangeHash> {
        let mut out: HashSet<ChangeHash> = self.infos.iter().map(|c| c.hash).collect();
        for p in pieces {
            if let Some(lp) = self.loaded_piece(&p.hash) {
                out.extend(lp.changes.iter().map(|c| c.hash));
            }
        }
        out
    }

    fn node_by_id(&self, id: &EntryId) -> Option<&Node> {
        let c = *self.index.get(&id.0)?;
        self.nodes.get(&Stamp {
            change: c,
            op: id.1,
        })
    }

    /// The index of change `h` in this fold, adding it as covered (`record`) if new.
    fn index_or_push(&mut self, h: &ChangeHash, record: impl FnOnce() -> CoveredChange) -> u32 {
        if let Some(&i) = self.index.get(h) {
            return i;
        }
        self.push_covered(&record());
        self.index[h]
    }

    /// Joins snapshot state `other` into this one (both folds started from snapshots,
    /// with nothing applied since). `mine` and `theirs` say what each side covers
    /// beyond its table, for the hashes [`Fold::named_changes`] gave; the pieces of
    /// [`Fold::join_pieces`] must be loaded in both folds.
    pub(crate) fn join(
        &mut self,
        other: Fold,
        mine_archived: &HashMap<ChangeHash, CoveredChange>,
        theirs_archived: &HashMap<ChangeHash, CoveredChange>,
    ) -> Result<()> {
        // This side's coverage and records as they were before the join: the rule
        // compares each side with the other's own state.
        let my_table = self.index.clone();
        let mine = Coverage {
            table: &my_table,
            archived: mine_archived,
        };
        let theirs = Coverage {
            table: &other.index,
            archived: theirs_archived,
        };
        let my_records = self.superseded.clone();
        let my_recorded = |path: &str, reg: &RegKey, id: &EntryId| {
            my_records
                .get(path)
                .and_then(|m| m.get(reg))
                .is_some_and(|v| v.contains_key(id))
        };

        // Heads of the union: a head stays unless the other side covers it as a
        // non-head (then it has a successor there).
        let their_heads: HashSet<ChangeHash> = other.heads.iter().copied().collect();
        let my_heads: HashSet<ChangeHash> = self.heads.iter().copied().collect();
        let mut heads: std::collections::BTreeSet<ChangeHash> = Default::default();
        for h in &my_heads {
            if !theirs.covers(h) || their_heads.contains(h) {
                heads.insert(*h);
            }
        }
        for h in &their_heads {
            if !mine.covers(h) || my_heads.contains(h) {
                heads.insert(*h);
            }
        }

        // Their table joins ours: every stamp of their metadata refers to it.
        for c in &other.infos {
            if !self.index.contains_key(&c.hash) {
                self.push_covered(&CoveredChange {
                    hash: c.hash,
                    actor: c.actor,
                    seq: c.seq,
                    hlc: c.hlc,
                    ops: c.ops,
                });
            }
        }
        let map = |f: &Fold, s: &Stamp| -> Stamp {
            let h = other.infos[s.change as usize].hash;
            Stamp {
                change: f.index[&h],
                op: s.op,
            }
        };

        // Registers held in memory (attributes, dimensions, objects): joined here.
        fn join_reg<V: Clone>(
            mine: &[(Stamp, V)],
            theirs: &[(Stamp, V)],
            my_id: &dyn Fn(&Stamp) -> EntryId,
            their_id: &dyn Fn(&Stamp) -> EntryId,
            keep_mine: &dyn Fn(&EntryId) -> bool,
            keep_theirs: &dyn Fn(&EntryId) -> bool,
            map: &dyn Fn(&Stamp) -> Stamp,
        ) -> Vec<(Stamp, V)> {
            let their_ids: HashSet<EntryId> = theirs.iter().map(|(s, _)| their_id(s)).collect();
            let my_ids: HashSet<EntryId> = mine.iter().map(|(s, _)| my_id(s)).collect();
            let mut out: Vec<(Stamp, V)> = mine
                .iter()
                .filter(|(s, _)| {
                    let id = my_id(s);
                    their_ids.contains(&id) || keep_mine(&id)
                })
                .cloned()
                .collect();
            for (s, v) in theirs {
                let id = their_id(s);
                if !my_ids.contains(&id) && keep_theirs(&id) {
                    out.push((map(s), v.clone()));
                }
            }
            out
        }

        let mut their_nodes: Vec<(Stamp, Node)> =
            other.nodes.iter().map(|(s, n)| (*s, n.clone())).collect();
        // Deterministic work order (the result does not depend on it).
        their_nodes.sort_by_key(|(s, _)| other.own_id(*s));
        for (ts, tn) in their_nodes {
            let id = other.own_id(ts);
            let path = tn.path.clone();
            let keep_mine = |reg: &RegKey, id: &EntryId| {
                !theirs.covers(&id.0) && !other.is_superseded(&path, reg, id)
            };
            let keep_theirs =
                |reg: &RegKey, id: &EntryId| !mine.covers(&id.0) && !my_recorded(&path, reg, id);
            let ms = self.index.get(&id.0).map(|&c| Stamp {
                change: c,
                op: id.1,
            });
            let here = ms.and_then(|s| self.nodes.get(&s).map(|n| (s, n.deleted)));
            match here {
                None => {
                    // A node only they hold: we never saw its creation (a covered
                    // creation is always kept, as a tombstone once deleted).
                    if mine.covers(&id.0) {
                        continue;
                    }
                    let s = map(self, &ts);
                    let named = |this: &mut Fold, which: Named| {
                        tn.named(which)
                            .iter()
                            .filter_map(|(k, reg)| {
                                let rk = which.reg_key(k);
                                let es: Vec<_> = reg
                                    .entries()
                                    .iter()
                                    .filter(|(x, _)| !my_recorded(&path, &rk, &other.own_id(*x)))
                                    .map(|(x, v)| (map(this, x), v.clone()))
                                    .collect();
                                (!es.is_empty()).then(|| (k.clone(), Register::from_entries(es)))
                            })
                            .collect()
                    };
                    let attrs = named(self, Named::Attr);
                    let fields = named(self, Named::Field);
                    let dims = tn
                        .dims
                        .iter()
                        .enumerate()
                        .map(|(i, d)| {
                            d.as_ref().and_then(|reg| {
                                let rk = RegKey::Dim(i as u32);
                                let es: Vec<_> = reg
                                    .entries()
                                    .iter()
                                    .filter(|(x, _)| !my_recorded(&path, &rk, &other.own_id(*x)))
                                    .map(|(x, v)| (map(self, x), *v))
                                    .collect();
                                (!es.is_empty()).then(|| Register::from_entries(es))
                            })
                        })
                        .collect();
                    if !tn.deleted {
                        self.by_path.entry(path.clone()).or_default().push(s);
                    }
                    self.nodes.insert(
                        s,
                        Node {
                            path: tn.path,
                            kind: tn.kind,
                            deleted: tn.deleted,
                            attrs,
                            fields,
                            dims,
                            chunks: ChunkMap::default(),
                            base: tn.base,
                        },
                    );
                }
                Some((_, true)) => {}
                Some((s, false)) if tn.deleted => self.delete_node(s),
                Some((s, false)) => {
                    // Live on both sides: join every register.
                    let my_id = |x: &Stamp| (self.infos[x.change as usize].hash, x.op);
                    let their_id = |x: &Stamp| other.own_id(*x);
                    let mapped = |x: &Stamp| map(self, x);
                    let Some(mn) = self.nodes.get(&s) else {
                        continue;
                    };
                    let named = |which: Named| {
                        let (mine, theirs) = (mn.named(which), tn.named(which));
                        let mut keys: Vec<&Box<str>> = mine.keys().chain(theirs.keys()).collect();
                        keys.sort();
                        keys.dedup();
                        let mut regs = HashMap::new();
                        for k in keys {
                            let rk = which.reg_key(k);
                            let es = join_reg(
                                mine.get(k).map_or(&[][..], |r| r.entries()),
                                theirs.get(k).map_or(&[][..], |r| r.entries()),
                                &my_id,
                                &their_id,
                                &|id| keep_mine(&rk, id),
                                &|id| keep_theirs(&rk, id),
                                &mapped,
                            );
                            if !es.is_empty() {
                                regs.insert(k.clone(), Register::from_entries(es));
                            }
                        }
                        regs
                    };
                    let attrs = named(Named::Attr);
                    let fields = named(Named::Field);
                    let n = mn.dims.len().max(tn.dims.len());
                    let mut dims = Vec::with_capacity(n);
                    for i in 0..n {
                        let rk = RegKey::Dim(i as u32);
                        let es = join_reg(
                            mn.dims
                                .get(i)
                                .and_then(|d| d.as_ref())
                                .map_or(&[][..], |r| r.entries()),
                            tn.dims
                                .get(i)
                                .and_then(|d| d.as_ref())
                                .map_or(&[][..], |r| r.entries()),
                            &my_id,
                            &their_id,
                            &|id| keep_mine(&rk, id),
                            &|id| keep_theirs(&rk, id),
                            &mapped,
                        );
                        dims.push((!es.is_empty()).then(|| Register::from_entries(es)));
                    }
                    let (drop, add) =
                        self.join_chunks(&s, &other, &ts, &keep_mine, &keep_theirs)?;
                    let mut added: Vec<(Box<str>, Stamp, ChunkVal)> = Vec::with_capacity(add.len());
                    for (key, e) in add {
                        let c = self.index_or_push(&e.order.hash, || {
                            theirs_archived
                                .get(&e.order.hash)
                                .copied()
                                .or_else(|| {
                                    other.index.get(&e.order.hash).map(|&i| {
                                        let c = &other.infos[i as usize];
                                        CoveredChange {
                                            hash: c.hash,
                                            actor: c.actor,
                                            seq: c.seq,
                                            hlc: c.hlc,
                                            ops: c.ops,
                                        }
                                    })
                                })
                                // Named by a piece but not in their coverage: a damaged
                                // snapshot; its order is all the entry needs.
                                .unwrap_or(CoveredChange {
                                    hash: e.order.hash,
                                    actor: e.order.actor,
                                    seq: e.order.seq,
                                    hlc: e.order.hlc,
                                    ops: 0,
                                })
                        });
                        added.push((
                            key,
                            Stamp {
                                change: c,
                                op: e.order.op,
                            },
                            e.val,
                        ));
                    }
                    let Some(mn) = self.nodes.get_mut(&s) else {
                        continue;
                    };
                    mn.attrs = attrs;
                    mn.fields = fields;
                    mn.dims = dims;
                    for (key, st, val) in added {
                        mn.chunks.upsert(
                            &key,
                            val,
                            |reg, val| {
                                let old = std::mem::replace(reg, Register::Many(Vec::new()));
                                *reg = old.push(st, val);
                            },
                            |val| Register::new(st, val),
                        );
                    }
                    // Dropped entries held in memory (from an earlier join) go now;
                    // those in pieces are hidden by the records below.
                    let in_memory: Vec<(Box<str>, Stamp)> = drop
                        .iter()
                        .filter_map(|(key, id)| {
                            let c = *self.index.get(&id.0)?;
                            Some((
                                key.clone(),
                                Stamp {
                                    change: c,
                                    op: id.1,
                                },
                            ))
                        })
                        .collect();
                    if let Some(mn) = self.nodes.get_mut(&s) {
                        for (key, st) in in_memory {
                            chunk_remove(&mut mn.chunks, &key, &[st]);
                        }
                    }
                    for (key, id) in drop {
                        self.superseded
                            .entry(path.clone())
                            .or_default()
                            .entry(RegKey::Chunk(key))
                            .or_default()
                            .insert(id, false);
                    }
                }
            }
        }

        // Object registers.
        let mut keys: Vec<Box<str>> = self
            .objects
            .keys()
            .chain(other.objects.keys())
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let rk = RegKey::Object(k.clone());
            let my_id = |x: &Stamp| (self.infos[x.change as usize].hash, x.op);
            let their_id = |x: &Stamp| other.own_id(*x);
            let mapped = |x: &Stamp| map(self, x);
            let es = join_reg(
                self.objects.get(&k).map_or(&[][..], |r| r.entries()),
                other.objects.get(&k).map_or(&[][..], |r| r.entries()),
                &my_id,
                &their_id,
                &|id| !theirs.covers(&id.0) && !other.is_superseded("", &rk, id),
                &|id| !mine.covers(&id.0) && !my_recorded("", &rk, id),
                &mapped,
            );
            if es.is_empty() {
                self.objects.remove(&k);
            } else {
                self.objects.insert(k, Register::from_entries(es));
            }
        }

        // Records: both sides' (an entry either saw superseded stays dropped). Theirs
        // count as new here: the horizon (merge.md §8) is judged by the age of the
        // snapshot this state started from, which says nothing of theirs, so their
        // horizon starts afresh (late, never early).
        for (path, regs) in &other.superseded {
            let mine = self.superseded.entry(path.clone()).or_default();
            for (reg, ids) in regs {
                let v = mine.entry(reg.clone()).or_default();
                for id in ids.keys() {
                    v.insert(*id, false);
                }
            }
        }
        self.heads = heads;
        self.snapshot_forks
            .extend(other.snapshot_forks.iter().cloned());
        if let Ok(mut cache) = self.pieces.write()
            && let Ok(theirs) = other.pieces.read()
        {
            for (h, p) in theirs.iter() {
                cache.entry(*h).or_insert_with(|| p.clone());
            }
        }
        if let (Some(b), Some(o)) = (self.base.as_mut(), other.base) {
            b.max_hlc = b.max_hlc.max(o.max_hlc);
            b.supersedes.extend(o.supersedes);
            b.supersedes.sort();
            b.supersedes.dedup();
            b.joined.push((o.name, o.archive));
            b.joined.extend(o.joined);
        }
        Ok(())
    }

    /// The chunk registers of incarnation `s` (here) and `ts` (in `other`): entries of
    /// ours to drop (by key and id) and entries of theirs to add (by key).
    #[allow(clippy::type_complexity)]
    fn join_chunks(
        &self,
        s: &Stamp,
        other: &Fold,
        ts: &Stamp,
        keep_mine: &dyn Fn(&RegKey, &EntryId) -> bool,
        keep_theirs: &dyn Fn(&RegKey, &EntryId) -> bool,
    ) -> Result<(Vec<(Box<str>, EntryId)>, Vec<(Box<str>, ChunkEntry)>)> {
        let unloaded =
            |h: ObjectHash| Error::Internal(format!("manifest piece {h} not loaded for a join"));
        let (Some(mn), Some(tn)) = (self.nodes.get(s), other.nodes.get(ts)) else {
            return Ok((Vec::new(), Vec::new()));
        };
        if same_chunks(mn, tn) {
            // One set of pieces: every entry is on both sides (records, unioned by
            // the caller, drop what either saw superseded).
            return Ok((Vec::new(), Vec::new()));
        }
        let mut keys: Vec<String> = self.node_chunk_keys(s).map_err(unloaded)?;
        keys.extend(other.node_chunk_keys(ts).map_err(unloaded)?);
        keys.sort();
        keys.dedup();
        let (mut drop, mut add) = (Vec::new(), Vec::new());
        for key in keys {
            let rk = RegKey::Chunk(key.as_str().into());
            let (mut ea, mut eb) = (Vec::new(), Vec::new());
            self.chunk_entries(s, &key, &mut ea).map_err(unloaded)?;
            other.chunk_entries(ts, &key, &mut eb).map_err(unloaded)?;
            let id = |e: &ChunkEntry| (e.order.hash, e.order.op);
            let ids_a: HashSet<EntryId> = ea.iter().map(id).collect();
            let ids_b: HashSet<EntryId> = eb.iter().map(id).collect();
            for e in &ea {
                if !ids_b.contains(&id(e)) && !keep_mine(&rk, &id(e)) {
                    drop.push((key.as_str().into(), id(e)));
                }
            }
            for e in eb {
                if !ids_a.contains(&id(&e)) && keep_theirs(&rk, &id(&e)) {
                    add.push((key.as_str().into(), e));
                }
            }
        }
        Ok((drop, add))
    }
}
