//! Convergence property tests (issue 2, section 5).
//!
//! 2 to 5 replicas, each a [`Repo`] on its own store, commit random Zarr edits
//! (creates, deletes of nodes and subtrees, re-creates at the same path, resizes
//! that grow and shrink, attribute sets and deletes, inline and blob chunk writes,
//! chunk deletes by key and by prefix). They exchange change files (blobs first) in
//! random order: partial deliveries, duplicates, and changes delivered before their
//! deps (held back). After every commit and delivery the replica must apply exactly
//! the causally complete changes it holds, report the rest as pending with the right
//! missing deps, and show what an independent reference model says. Once everything
//! is delivered everywhere, every view is identical: entries, `list`, `list_dir`,
//! `list_prefix`, `conflicts` and the bytes `get` serves.
//!
//! * `replicas_converge_in_memory`: replicas on `InMemory` stores.
//! * `replicas_converge_local_fs`: the same on `LocalFileSystem` stores in temp dirs.
//! * `fold_is_order_and_duplicate_independent`: the full change set folded with
//!   `Fold::from_changes` in random orders with duplicates gives the replicas' view
//!   and conflicts; a random prefix of each order gives the model's view of its
//!   causally complete part, the rest pending.
//!
//! The reference model ([`Model`]) is a declarative reading of the merge rules,
//! computed from a set of changes alone (no delivery order), and deliberately not
//! a copy of `src/fold.rs`:
//! * an incarnation is deleted iff some `DeleteNode` lists it;
//! * a register entry (attribute, dimension or chunk write, or the attributes and
//!   shape of a create) is live iff its incarnation is not deleted and no write to
//!   the same register at the same path lists it as observed (whether or not that
//!   write's own incarnation was deleted);
//! * a path shows its live incarnations merged as the rules say; each register shows
//!   its greatest live entry by stamp `(hlc, actor, seq, change hash, op)`, each
//!   dimension the largest live size (the created size when none is live), and every
//!   attribute or chunk register with several live entries is a conflict whose
//!   losers are all the other live entries.
//!
//! So no write is lost except by a delete of its incarnation, by an overwrite that
//! observed it, or as a reported conflict loser. The model also asserts that every
//! reference an op holds (target, observed entry, deleted incarnation) lies in the
//! op's causal past, computed by naive transitive closure of the deps.
//!
//! The random edits and [`apply_edits`] are in `tests/edits/mod.rs`, shared with
//! `tests/sync.rs`.
//!
//! Case counts: 4000 (in memory) + 250 (local disk) + 3000 (fold) by default, about
//! 25 s on 2 cores in the test profile. `PROPTEST_CASES=N` overrides them (proptest's
//! `with_cases` ignores that variable, so [`config`] reads it): the in-memory and fold
//! properties then run N cases and the local-disk one N/10.

use crate::common::edits::{Edit, apply_edits, base_edits, edit, meta_key, parent};
use crate::common::props::{config, runtime};
use bytes::Bytes;
use crzarr::fold::Fold;
use crzarr::fold::view::{ChunkRef, ConflictTarget, Entry, View, ViewIndex};
use crzarr::format::change::{Change, ChunkData, Op, OpRef};
use crzarr::format::ids::{ActorId, BlobHash, ChangeHash, Hlc};
use crzarr::format::layout::{ChangeName, Layout};
use crzarr::ops::gc::GcOptions;
use crzarr::repo::Repo;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

const PREFIX: &str = "ds";
// ---------------------------------------------------------------------------
// Case counts
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// Which of the source's changes a delivery copies.
#[derive(Clone, Debug)]
enum Pick {
    /// Everything the destination lacks.
    All,
    /// Bit i selects the i-th change of the source in stamp order.
    Mask(u32),
    /// The newest k changes the destination lacks: usually without their deps.
    Newest(usize),
}

#[derive(Clone, Debug)]
enum Step {
    Commit {
        replica: usize,
        edits: Vec<Edit>,
    },
    Deliver {
        from: usize,
        to: usize,
        pick: Pick,
    },
    /// Drops the handle and opens a new one (a new writer) on the same store.
    Reopen {
        replica: usize,
    },
    /// Writes a snapshot of the replica's bucket; `concurrent`: two compactors at
    /// once, on their own handles.
    Compact {
        replica: usize,
        concurrent: bool,
    },
    /// Garbage-collects the replica's bucket with a zero window, then checks that a
    /// fresh open shows what the live handle shows.
    Gc {
        replica: usize,
    },
}

#[derive(Clone, Debug)]
struct Scenario {
    replicas: usize,
    /// Start from a shared base (groups and arrays every replica has), so that
    /// concurrent edits hit the same incarnations; otherwise start empty.
    base: bool,
    steps: Vec<Step>,
    /// Random full deliveries before the final all-to-all exchange.
    gossip: Vec<(usize, usize)>,
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        2 => Just(Pick::All),
        2 => any::<u32>().prop_map(Pick::Mask),
        2 => (1..3usize).prop_map(Pick::Newest),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..5usize, prop::collection::vec(edit(), 1..5))
            .prop_map(|(replica, edits)| Step::Commit { replica, edits }),
        5 => (0..5usize, 0..5usize, pick()).prop_map(|(from, to, pick)| Step::Deliver { from, to, pick }),
        1 => (0..5usize).prop_map(|replica| Step::Reopen { replica }),
        1 => (0..5usize, prop::bool::weighted(0.3))
            .prop_map(|(replica, concurrent)| Step::Compact { replica, concurrent }),
        1 => (0..5usize).prop_map(|replica| Step::Gc { replica }),
    ]
}

fn scenario(max_steps: usize) -> impl Strategy<Value = Scenario> {
    (
        2..=5usize,
        prop::bool::weighted(0.8),
        prop::collection::vec(step(), 1..max_steps),
        prop::collection::vec((0..5usize, 0..5usize), 0..6),
    )
        .prop_map(|(replicas, base, steps, gossip)| Scenario {
            replicas,
            base,
            steps,
            gossip,
        })
}

// ---------------------------------------------------------------------------
// Replicas and delivery
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Memory,
    Local,
    /// The loopback S3 server of `tests/run.sh`, one unique prefix per replica.
    S3,
}

struct Replica {
    store: Arc<dyn ObjectStore>,
    repo: Repo,
    /// Change hashes whose files are in this replica's store.
    holds: BTreeSet<ChangeHash>,
    /// Changes the newest snapshot in this replica's bucket covers.
    snap_covered: BTreeSet<ChangeHash>,
    _dir: Option<tempfile::TempDir>,
}

/// Every change file ever written, by hash.
struct StoredChange {
    key: Path,
    bytes: Bytes,
    change: Change,
}

struct World {
    layout: Layout,
    replicas: Vec<Replica>,
    changes: BTreeMap<ChangeHash, StoredChange>,
    /// Every blob ever written (GC may remove a replica's copy of an old one).
    blobs: HashMap<BlobHash, Bytes>,
    /// Whether any replica compacted (logs then differ by what snapshots hold).
    compacted: bool,
    /// Run the reference model after every delivery (off for the fold-only property).
    check_steps: bool,
}

fn new_store(backend: Backend) -> (Arc<dyn ObjectStore>, Option<tempfile::TempDir>) {
    match backend {
        Backend::Memory => (Arc::new(InMemory::new()), None),
        Backend::Local => {
            let dir = tempfile::tempdir().unwrap();
            let fs = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
            (Arc::new(fs), Some(dir))
        }
        Backend::S3 => {
            let b = crate::common::s3().expect("S3 backend");
            let store = object_store::prefix::PrefixStore::new(b.store, b.prefix.as_str());
            (Arc::new(store), None)
        }
    }
}

async fn read(store: &dyn ObjectStore, key: &Path) -> Bytes {
    store.get(key).await.unwrap().bytes().await.unwrap()
}

/// Changes a change needs applied first: deps and changes its ops reference.
/// What a change waits for (spec/merge.md): deps and the changes whose nodes it
/// edits or deletes; `observed` entries are not waited for.
fn required(c: &Change) -> BTreeSet<ChangeHash> {
    let mut v: BTreeSet<ChangeHash> = c.deps.iter().copied().collect();
    for op in &c.ops {
        op.for_each_node_ref(|r| {
            if let OpRef::Change(h, _) = r {
                v.insert(*h);
            }
        });
    }
    v
}

/// The causally complete part of `held`: changes whose requirements are all in it,
/// transitively (a naive fixpoint).
fn complete<'a>(
    held: &BTreeSet<ChangeHash>,
    change: impl Fn(&ChangeHash) -> &'a Change,
) -> BTreeSet<ChangeHash> {
    let mut done: BTreeSet<ChangeHash> = BTreeSet::new();
    loop {
        let before = done.len();
        for h in held {
            if !done.contains(h) && required(change(h)).iter().all(|d| done.contains(d)) {
                done.insert(*h);
            }
        }
        if done.len() == before {
            return done;
        }
    }
}

impl World {
    async fn new(backend: Backend, n: usize, check_steps: bool) -> World {
        let layout = Layout::new(PREFIX);
        let mut replicas = Vec::new();
        for i in 0..n {
            let (store, dir) = new_store(backend);
            let repo = if i == 0 {
                Repo::init(store.clone(), PREFIX).await.unwrap()
            } else {
                // Same repository: copy the marker, then open.
                let first: &Replica = &replicas[0];
                let marker = read(first.store.as_ref(), &layout.marker()).await;
                store
                    .put(&layout.marker(), PutPayload::from(marker))
                    .await
                    .unwrap();
                Repo::open(store.clone(), PREFIX).await.unwrap()
            };
            replicas.push(Replica {
                store,
                repo,
                holds: BTreeSet::new(),
                snap_covered: BTreeSet::new(),
                _dir: dir,
            });
        }
        World {
            layout,
            replicas,
            changes: BTreeMap::new(),
            blobs: HashMap::new(),
            compacted: false,
            check_steps,
        }
    }

    fn n(&self) -> usize {
        self.replicas.len()
    }

    async fn run(&mut self, sc: &Scenario) {
        if sc.base {
            self.commit(0, &base_edits()).await;
            for to in 1..self.n() {
                self.deliver(0, to, &Pick::All).await;
            }
        }
        for step in &sc.steps {
            match step {
                Step::Commit { replica, edits } => self.commit(replica % self.n(), edits).await,
                Step::Deliver { from, to, pick } => {
                    let (from, to) = (from % self.n(), to % self.n());
                    if from != to {
                        self.deliver(from, to, pick).await;
                    }
                }
                Step::Reopen { replica } => self.reopen(replica % self.n()).await,
                Step::Compact {
                    replica,
                    concurrent,
                } => self.compact(replica % self.n(), *concurrent).await,
                Step::Gc { replica } => self.gc(replica % self.n()).await,
            }
        }
        for (from, to) in &sc.gossip {
            let (from, to) = (from % self.n(), to % self.n());
            if from != to {
                self.deliver(from, to, &Pick::All).await;
            }
        }
        // Everything everywhere: after source i is copied to all, every replica
        // holds the union of replicas 0..=i.
        for from in 0..self.n() {
            for to in 0..self.n() {
                if from != to {
                    self.deliver(from, to, &Pick::All).await;
                }
            }
        }
    }

    async fn commit(&mut self, r: usize, edits: &[Edit]) {
        let rep = &mut self.replicas[r];
        let hash = apply_edits(&mut rep.repo, edits).await;
        let Some(hash) = hash else { return };
        let info = rep
            .repo
            .log()
            .into_iter()
            .find(|c| c.hash == hash)
            .cloned()
            .expect("own change applied");
        let key = self.layout.change(&ChangeName {
            hash,
            actor: info.actor,
            seq: info.seq,
        });
        let bytes = read(rep.store.as_ref(), &key).await;
        let change = Change::decode(key.as_ref(), &bytes, &hash).unwrap();
        for (hash, _) in change.ops.iter().filter_map(Op::blob) {
            if !self.blobs.contains_key(&hash) {
                let b = read(rep.store.as_ref(), &self.layout.blob(&hash)).await;
                self.blobs.insert(hash, b);
            }
        }
        rep.holds.insert(hash);
        assert!(
            self.changes
                .insert(hash, StoredChange { key, bytes, change })
                .is_none()
        );
        if self.check_steps {
            self.check_replica(r).await;
        }
    }

    async fn deliver(&mut self, from: usize, to: usize, pick: &Pick) {
        let mut source: Vec<ChangeHash> = self.replicas[from].holds.iter().copied().collect();
        source.sort_by_key(|h| {
            let c = &self.changes[h].change;
            (c.hlc, *h)
        });
        let chosen: Vec<ChangeHash> = match pick {
            // Like a sync: only what the destination lacks.
            Pick::All => source
                .into_iter()
                .filter(|h| !self.replicas[to].holds.contains(h))
                .collect(),
            // May include changes the destination holds: delivered again as duplicates.
            Pick::Mask(m) => source
                .into_iter()
                .enumerate()
                .filter(|(i, _)| m & (1u32 << (i % 32)) != 0)
                .map(|(_, h)| h)
                .collect(),
            Pick::Newest(k) => {
                let lacking: Vec<ChangeHash> = source
                    .into_iter()
                    .filter(|h| !self.replicas[to].holds.contains(h))
                    .collect();
                lacking[lacking.len().saturating_sub(*k)..].to_vec()
            }
        };
        for h in chosen {
            let sc = &self.changes[&h];
            let duplicate = self.replicas[to].holds.contains(&h);
            // Blobs first, as a committer would.
            for op in sc.change.ops.iter().filter(|_| !duplicate) {
                if let Some((hash, _)) = op.blob() {
                    let key = self.layout.blob(&hash);
                    let b = self.blobs[&hash].clone();
                    self.replicas[to]
                        .store
                        .put(&key, PutPayload::from(b))
                        .await
                        .unwrap();
                }
            }
            self.replicas[to]
                .store
                .put(&sc.key, PutPayload::from(sc.bytes.clone()))
                .await
                .unwrap();
            self.replicas[to].holds.insert(h);
        }
        self.replicas[to].repo.refresh().await.unwrap();
        if self.check_steps {
            self.check_replica(to).await;
        }
    }

    async fn compact(&mut self, r: usize, concurrent: bool) {
        let rep = &mut self.replicas[r];
        if concurrent {
            let mut a = Repo::open(rep.store.clone(), PREFIX).await.unwrap();
            let mut b = Repo::open(rep.store.clone(), PREFIX).await.unwrap();
            let (ra, rb) = futures::join!(a.compact(), b.compact());
            ra.unwrap();
            rb.unwrap();
            rep.repo.refresh().await.unwrap();
        } else {
            rep.repo.compact().await.unwrap();
        }
        let changes = &self.changes;
        rep.snap_covered = complete(&rep.holds, |h| &changes[h].change);
        self.compacted = true;
        if self.check_steps {
            self.check_replica(r).await;
        }
    }

    async fn gc(&mut self, r: usize) {
        let opts = GcOptions {
            older_than: std::time::Duration::ZERO,
            dry_run: false,
            force: true,
        };
        let report = self.replicas[r].repo.gc(&opts).await.unwrap();
        // A change file past the history horizon (delivered before what it needs)
        // is moved to quarantine: the replica no longer holds it, and a later
        // delivery brings it back, as sync would.
        for q in &report.quarantined {
            let hash = self
                .changes
                .iter()
                .find(|(_, sc)| sc.key.as_ref() == q.from)
                .map(|(h, _)| *h);
            if let Some(h) = hash {
                self.replicas[r].holds.remove(&h);
            }
        }
        self.reopen(r).await;
    }

    async fn reopen(&mut self, r: usize) {
        let rep = &mut self.replicas[r];
        let fresh = Repo::open(rep.store.clone(), PREFIX).await.unwrap();
        rep.repo.refresh().await.unwrap();
        assert_eq!(
            fresh.entries().await.unwrap(),
            rep.repo.entries().await.unwrap(),
            "a fresh open must show what refresh shows"
        );
        assert_eq!(fresh.pending(), rep.repo.pending());
        assert_ne!(fresh.actor(), rep.repo.actor());
        rep.repo = fresh;
        if self.check_steps {
            self.check_replica(r).await;
        }
    }

    /// The replica applies exactly its causally complete changes, reports the rest as
    /// pending with the right missing deps, and shows what the model says.
    async fn check_replica(&self, r: usize) {
        let rep = &self.replicas[r];
        let repo = &rep.repo;
        repo.load_all().await.unwrap();
        assert_eq!(repo.rejected(), vec![], "replica {r}: rejected changes");
        assert_eq!(repo.problems(), vec![], "replica {r}: problems");
        assert_eq!(repo.forks(), vec![], "replica {r}: forks");
        let complete = complete(&rep.holds, |h| &self.changes[h].change);
        // Applied: fetched and folded, or covered by the snapshot it opened from.
        let log: BTreeSet<ChangeHash> = repo.log().iter().map(|c| c.hash).collect();
        assert!(
            log.is_subset(&complete),
            "replica {r}: applied beyond complete"
        );
        let applied: BTreeSet<ChangeHash> = &log | &rep.snap_covered;
        assert_eq!(applied, complete, "replica {r}: applied set");
        let pending: BTreeMap<ChangeHash, Vec<ChangeHash>> = repo
            .pending()
            .into_iter()
            .map(|p| (p.hash, p.missing))
            .collect();
        let expected: BTreeMap<ChangeHash, Vec<ChangeHash>> = rep
            .holds
            .difference(&complete)
            .map(|h| {
                let missing = required(&self.changes[h].change)
                    .into_iter()
                    .filter(|d| !complete.contains(d))
                    .collect();
                (*h, missing)
            })
            .collect();
        assert_eq!(pending, expected, "replica {r}: pending");
        let set: Vec<&Change> = complete.iter().map(|h| &self.changes[h].change).collect();
        let hashes: Vec<ChangeHash> = complete.iter().copied().collect();
        Model::new(&hashes, &set).check(repo.view(), &format!("replica {r}"));
    }

    /// Final state: everything delivered everywhere, all views identical.
    async fn check_converged(&self) {
        let all: BTreeSet<ChangeHash> = self.changes.keys().copied().collect();
        let first = &self.replicas[0].repo;
        let entries = first.entries().await.unwrap();
        let list = first.list().await.unwrap();
        let conflicts = first.conflicts().await.unwrap();
        for (i, rep) in self.replicas.iter().enumerate() {
            assert_eq!(rep.holds, all, "replica {i} holds everything");
            let log: BTreeSet<ChangeHash> = rep.repo.log().iter().map(|c| c.hash).collect();
            let applied: BTreeSet<ChangeHash> = &log | &rep.snap_covered;
            assert_eq!(applied, all, "replica {i}: every change applied");
            assert_eq!(rep.repo.pending(), vec![], "replica {i}: nothing pending");
            assert_eq!(rep.repo.rejected(), vec![]);
            assert_eq!(rep.repo.problems(), vec![]);
            // The store holds exactly what the test thinks it copied.
            let listed = rep.repo.bucket().list_changes().await.unwrap();
            let listed: BTreeSet<ChangeHash> = listed.0.iter().map(|c| c.name.hash).collect();
            assert!(listed.is_subset(&all), "replica {i}: listing");
            assert_eq!(&listed | &rep.snap_covered, all, "replica {i}: listing");
            assert_eq!(
                rep.repo.entries().await.unwrap(),
                entries,
                "replica {i}: entries differ from replica 0"
            );
            assert_eq!(rep.repo.list().await.unwrap(), list, "replica {i}: list");
            for prefix in ["", "g/", "g/a/", "b/", "b/c/"] {
                assert_eq!(
                    rep.repo.list_dir(prefix).await.unwrap(),
                    first.list_dir(prefix).await.unwrap()
                );
                assert_eq!(
                    rep.repo.list_prefix(prefix).await.unwrap(),
                    first.list_prefix(prefix).await.unwrap()
                );
            }
            assert_eq!(
                rep.repo.conflicts().await.unwrap(),
                conflicts,
                "replica {i}: conflicts"
            );
            if !self.compacted {
                let order = |r: &Repo| r.log().iter().map(|c| c.hash).collect::<Vec<_>>();
                assert_eq!(order(&rep.repo), order(first), "replica {i}: log order");
            }
            assert_eq!(
                rep.repo.fold().heads(),
                first.fold().heads(),
                "replica {i}: heads"
            );
        }
        // Bytes served, including blobs fetched from each replica's own store.
        for (key, entry) in &entries {
            let want = first.get(key).await.unwrap().unwrap();
            match entry {
                Entry::Chunk(ChunkRef::Inline(b)) | Entry::Object(ChunkRef::Inline(b)) => {
                    assert_eq!(&want[..], &b[..])
                }
                Entry::Chunk(ChunkRef::Blob { hash, len })
                | Entry::Object(ChunkRef::Blob { hash, len }) => {
                    assert_eq!(want.len() as u64, *len);
                    assert_eq!(BlobHash::of(&want), *hash);
                }
                Entry::Metadata(b) => assert_eq!(&want[..], &b[..]),
                Entry::Chunk(ChunkRef::Reference(r)) | Entry::Object(ChunkRef::Reference(r)) => {
                    panic!("no edit adopts objects: {r:?}")
                }
            }
            for (i, rep) in self.replicas.iter().enumerate().skip(1) {
                let got = rep.repo.get(key).await.unwrap().unwrap();
                assert_eq!(got, want, "replica {i}: bytes of {key}");
            }
        }
        let (hashes, set): (Vec<ChangeHash>, Vec<&Change>) =
            self.changes.iter().map(|(h, s)| (*h, &s.change)).unzip();
        Model::new(&hashes, &set).check(first.view(), "final");
    }
}

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

/// An op: its change and index.
type OpId = (ChangeHash, u32);

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Reg {
    Attr(String),
    Dim(u32),
    Chunk(String),
    /// An array metadata field register (values are `Val::Attr`: JSON text or removal).
    Field(String),
}

#[derive(Clone, Debug)]
enum Val {
    Attr(Option<String>),
    Dim(u64),
    Chunk(Option<ChunkData>),
}

struct MWrite {
    id: OpId,
    target: OpId,
    reg: Reg,
    val: Val,
}

struct MNode {
    path: String,
    /// Array metadata without `shape` (None for a group), and the created shape.
    array: Option<(Value, Vec<u64>)>,
}

/// An object write: op, key and value (`None`: a delete).
type ObjectWrite = (OpId, String, Option<ChunkData>);

struct Model {
    rank: HashMap<ChangeHash, (Hlc, ActorId, u64)>,
    nodes: BTreeMap<OpId, MNode>,
    deleted: HashSet<OpId>,
    writes: Vec<MWrite>,
    /// (path, register, entry) triples some write observed.
    observed: HashSet<(String, Reg, OpId)>,
    /// Object writes: op, key and value (`None`: a delete).
    objects: Vec<ObjectWrite>,
    /// (object key, entry) pairs some object write observed.
    objects_observed: HashSet<(String, OpId)>,
}

/// What the model expects one shown path to look like.
struct Shown {
    /// Merged incarnations; empty for an implicit group.
    members: Vec<OpId>,
    winner: Option<OpId>,
}

impl Model {
    fn new(hashes: &[ChangeHash], changes: &[&Change]) -> Model {
        let by_hash: HashMap<ChangeHash, &Change> = hashes
            .iter()
            .copied()
            .zip(changes.iter().copied())
            .collect();
        // Ancestors by naive transitive closure, to check observations are causal.
        let mut anc: HashMap<ChangeHash, HashSet<ChangeHash>> = HashMap::new();
        fn ancestors(
            h: ChangeHash,
            by_hash: &HashMap<ChangeHash, &Change>,
            anc: &mut HashMap<ChangeHash, HashSet<ChangeHash>>,
        ) -> HashSet<ChangeHash> {
            if let Some(a) = anc.get(&h) {
                return a.clone();
            }
            let mut set = HashSet::new();
            for d in &by_hash[&h].deps {
                set.insert(*d);
                set.extend(ancestors(*d, by_hash, anc));
            }
            anc.insert(h, set.clone());
            set
        }
        let mut m = Model {
            rank: HashMap::new(),
            nodes: BTreeMap::new(),
            deleted: HashSet::new(),
            writes: Vec::new(),
            observed: HashSet::new(),
            objects: Vec::new(),
            objects_observed: HashSet::new(),
        };
        let res = |own: ChangeHash, r: &OpRef| -> OpId {
            match r {
                OpRef::Local(n) => (own, *n),
                OpRef::Change(h, n) => (*h, *n),
            }
        };
        // Pass 1: nodes.
        for (&h, c) in &by_hash {
            m.rank.insert(h, (c.hlc, c.actor, c.seq));
            for d in &c.deps {
                let dh = by_hash[d].hlc;
                assert!(c.hlc > dh, "hlc must exceed every dep's");
            }
            for (i, op) in c.ops.iter().enumerate() {
                let id = (h, i as u32);
                match op {
                    Op::CreateGroup { path, .. } => {
                        m.nodes.insert(
                            id,
                            MNode {
                                path: path.clone(),
                                array: None,
                            },
                        );
                    }
                    Op::CreateArray { path, metadata, .. } => {
                        let mut doc: Value = serde_json::from_str(metadata).unwrap();
                        let shape: Vec<u64> = doc["shape"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_u64().unwrap())
                            .collect();
                        doc.as_object_mut().unwrap().remove("shape");
                        m.nodes.insert(
                            id,
                            MNode {
                                path: path.clone(),
                                array: Some((doc, shape)),
                            },
                        );
                    }
                    _ => {}
                }
            }
        }
        // Pass 2: writes, observations, deletes.
        for (&h, c) in &by_hash {
            let past = ancestors(h, &by_hash, &mut anc);
            let causal = |id: &OpId| {
                assert!(
                    id.0 == h || past.contains(&id.0),
                    "an op names {id:?} outside its causal past"
                );
            };
            for (i, op) in c.ops.iter().enumerate() {
                let id = (h, i as u32);
                let write = |m: &mut Model, target: OpId, reg: Reg, val: Val| {
                    causal(&target);
                    m.writes.push(MWrite {
                        id,
                        target,
                        reg,
                        val,
                    });
                };
                let observe = |m: &mut Model, target: OpId, reg: &Reg, obs: &[OpRef]| {
                    let path = m.nodes[&target].path.clone();
                    for o in obs {
                        let o = res(h, o);
                        causal(&o);
                        m.observed.insert((path.clone(), reg.clone(), o));
                    }
                };
                match op {
                    Op::CreateGroup { attributes, .. } => {
                        for (k, v) in attributes {
                            write(&mut m, id, Reg::Attr(k.clone()), Val::Attr(Some(v.clone())));
                        }
                    }
                    Op::CreateArray { attributes, .. } => {
                        for (k, v) in attributes {
                            write(&mut m, id, Reg::Attr(k.clone()), Val::Attr(Some(v.clone())));
                        }
                        let shape = m.nodes[&id].array.as_ref().unwrap().1.clone();
                        for (d, s) in shape.into_iter().enumerate() {
                            write(&mut m, id, Reg::Dim(d as u32), Val::Dim(s));
                        }
                    }
                    Op::SetAttr {
                        node,
                        key,
                        value,
                        observed,
                    } => {
                        let t = res(h, node);
                        let reg = Reg::Attr(key.clone());
                        observe(&mut m, t, &reg, observed);
                        write(&mut m, t, reg, Val::Attr(Some(value.clone())));
                    }
                    Op::DeleteAttr {
                        node,
                        key,
                        observed,
                    } => {
                        let t = res(h, node);
                        let reg = Reg::Attr(key.clone());
                        observe(&mut m, t, &reg, observed);
                        write(&mut m, t, reg, Val::Attr(None));
                    }
                    Op::SetMetaField {
                        node,
                        field,
                        value,
                        observed,
                    } => {
                        let t = res(h, node);
                        let reg = Reg::Field(field.clone());
                        observe(&mut m, t, &reg, observed);
                        write(&mut m, t, reg, Val::Attr(Some(value.clone())));
                    }
                    Op::DeleteMetaField {
                        node,
                        field,
                        observed,
                    } => {
                        let t = res(h, node);
                        let reg = Reg::Field(field.clone());
                        observe(&mut m, t, &reg, observed);
                        write(&mut m, t, reg, Val::Attr(None));
                    }
                    Op::Resize { node, dims } => {
                        let t = res(h, node);
                        for d in dims {
                            let reg = Reg::Dim(d.dim);
                            observe(&mut m, t, &reg, &d.observed);
                            write(&mut m, t, reg, Val::Dim(d.size));
                        }
                    }
                    Op::SetChunk {
                        node,
                        key,
                        data,
                        observed,
                    } => {
                        let t = res(h, node);
                        let reg = Reg::Chunk(key.clone());
                        observe(&mut m, t, &reg, observed);
                        write(&mut m, t, reg, Val::Chunk(Some(data.clone())));
                    }
                    Op::DeleteChunk {
                        node,
                        key,
                        observed,
                    } => {
                        let t = res(h, node);
                        let reg = Reg::Chunk(key.clone());
                        observe(&mut m, t, &reg, observed);
                        write(&mut m, t, reg, Val::Chunk(None));
                    }
                    Op::DeleteNode { incarnations, .. } => {
                        for r in incarnations {
                            let t = res(h, r);
                            causal(&t);
                            assert!(m.nodes.contains_key(&t), "delete of a non-node");
                            m.deleted.insert(t);
                        }
                    }
                    Op::SetObject { key, observed, .. } | Op::DeleteObject { key, observed } => {
                        for o in observed {
                            let o = res(h, o);
                            causal(&o);
                            m.objects_observed.insert((key.clone(), o));
                        }
                        let val = match op {
                            Op::SetObject { data, .. } => Some(data.clone()),
                            _ => None,
                        };
                        m.objects.push((id, key.clone(), val));
                    }
                }
            }
        }
        m
    }

    /// Total order of ops: `(hlc, actor, seq, change hash, op index)`.
    fn key(&self, id: &OpId) -> (Hlc, ActorId, u64, ChangeHash, u32) {
        let (hlc, actor, seq) = self.rank[&id.0];
        (hlc, actor, seq, id.0, id.1)
    }

    fn live(&self, w: &MWrite) -> bool {
        let path = &self.nodes[&w.target].path;
        !self.deleted.contains(&w.target)
            && !self.observed.contains(&(path.clone(), w.reg.clone(), w.id))
    }

    /// Live entries of the members' registers, greatest first, grouped by register.
    fn registers(&self, members: &[OpId]) -> BTreeMap<Reg, Vec<&MWrite>> {
        let mut out: BTreeMap<Reg, Vec<&MWrite>> = BTreeMap::new();
        for w in &self.writes {
            if members.contains(&w.target) && self.live(w) {
                out.entry(w.reg.clone()).or_default().push(w);
            }
        }
        for v in out.values_mut() {
            v.sort_by_key(|w| std::cmp::Reverse(self.key(&w.id)));
        }
        out
    }

    fn is_array(&self, id: &OpId) -> bool {
        self.nodes[id].array.is_some()
    }

    /// Checks a fold and its view against the model.
    fn check(&self, view: View<'_>, ctx: &str) {
        type ConflictKey = (String, ConflictTarget, OpId, Vec<OpId>);
        let mut conflicts: BTreeSet<ConflictKey> = BTreeSet::new();
        // Candidates per path: live incarnations, winner, members, losers.
        let mut live: BTreeMap<&str, Vec<OpId>> = BTreeMap::new();
        for (id, n) in &self.nodes {
            if !self.deleted.contains(id) {
                live.entry(n.path.as_str()).or_default().push(*id);
            }
        }
        let mut candidates: BTreeMap<&str, Shown> = BTreeMap::new();
        for (path, incs) in &live {
            let winner = *incs.iter().max_by_key(|id| self.key(id)).unwrap();
            let (members, losers): (Vec<OpId>, Vec<OpId>) = match &self.nodes[&winner].array {
                None => incs.iter().partition(|id| !self.is_array(id)),
                Some((wdoc, wshape)) => incs.iter().partition(|id| {
                    self.nodes[id]
                        .array
                        .as_ref()
                        .is_some_and(|(d, s)| d == wdoc && s.len() == wshape.len())
                }),
            };
            if !losers.is_empty() {
                conflicts.insert((meta_key(path), ConflictTarget::Node, winner, sorted(losers)));
            }
            candidates.insert(
                path,
                Shown {
                    members,
                    winner: Some(winner),
                },
            );
        }
        // Nodes under an array are hidden and reported against the topmost such array.
        let mut shown: BTreeMap<String, Shown> = BTreeMap::new();
        for (path, node) in candidates.iter() {
            let mut shadow = None;
            let mut up = parent(path);
            while let Some(a) = up {
                if let Some(anc) = candidates.get(a)
                    && self.is_array(&anc.winner.unwrap())
                {
                    shadow = anc.winner;
                }
                up = parent(a);
            }
            match shadow {
                Some(arr) => {
                    conflicts.insert((
                        meta_key(path),
                        ConflictTarget::Node,
                        arr,
                        sorted(node.members.clone()),
                    ));
                }
                None => {
                    shown.insert(
                        path.to_string(),
                        Shown {
                            members: node.members.clone(),
                            winner: node.winner,
                        },
                    );
                }
            }
        }
        let explicit: Vec<String> = shown.keys().cloned().collect();
        for p in explicit {
            let mut up = parent(&p).map(str::to_string);
            while let Some(a) = up {
                up = parent(&a).map(str::to_string);
                shown.entry(a).or_insert(Shown {
                    members: Vec::new(),
                    winner: None,
                });
            }
        }

        let mut keys: Vec<String> = Vec::new();
        for (path, node) in &shown {
            keys.push(meta_key(path));
            let regs = self.registers(&node.members);
            // Conflicts: every register with several live entries.
            for (reg, entries) in &regs {
                if entries.len() > 1 {
                    let (key, target) = match reg {
                        Reg::Attr(k) => (meta_key(path), ConflictTarget::Attribute(k.clone())),
                        Reg::Field(k) => (meta_key(path), ConflictTarget::Field(k.clone())),
                        Reg::Chunk(k) => (format!("{path}/{k}"), ConflictTarget::Chunk),
                        Reg::Dim(_) => continue,
                    };
                    let losers = entries[1..].iter().map(|w| w.id).collect();
                    conflicts.insert((key, target, entries[0].id, sorted(losers)));
                }
            }
            // Metadata: attributes, and for arrays the created metadata with the shape.
            let mut attrs = Map::new();
            for (reg, entries) in &regs {
                if let (Reg::Attr(k), Val::Attr(Some(v))) = (reg, &entries[0].val) {
                    attrs.insert(k.clone(), serde_json::from_str(v).unwrap());
                }
            }
            let Some(Entry::Metadata(bytes)) = view.get(&meta_key(path)) else {
                panic!("{ctx}: no metadata for {path:?}");
            };
            let mut doc: Value = serde_json::from_slice(&bytes).unwrap();
            let obj = doc.as_object_mut().unwrap();
            assert_eq!(
                obj.remove("attributes"),
                Some(Value::Object(attrs)),
                "{ctx}: attributes of {path:?}"
            );
            match node.winner.and_then(|w| self.nodes[&w].array.as_ref()) {
                None => assert_eq!(
                    doc,
                    json!({"zarr_format": 3, "node_type": "group"}),
                    "{ctx}: group {path:?}"
                ),
                Some((wdoc, wshape)) => {
                    let shape: Vec<u64> = (0..wshape.len())
                        .map(|d| {
                            regs.get(&Reg::Dim(d as u32))
                                .and_then(|es| {
                                    es.iter()
                                        .map(|w| match w.val {
                                            Val::Dim(s) => s,
                                            _ => unreachable!(),
                                        })
                                        .max()
                                })
                                .unwrap_or(wshape[d])
                        })
                        .collect();
                    assert_eq!(
                        obj.remove("shape"),
                        Some(json!(shape)),
                        "{ctx}: shape of {path:?}"
                    );
                    // The winner's metadata, with each edited field register's winner.
                    let mut want = wdoc.clone();
                    for (reg, entries) in &regs {
                        if let (Reg::Field(k), Val::Attr(v)) = (reg, &entries[0].val) {
                            match v {
                                Some(v) => want[k] = serde_json::from_str(v).unwrap(),
                                None => {
                                    want.as_object_mut().unwrap().remove(k);
                                }
                            }
                        }
                    }
                    assert_eq!(doc, want, "{ctx}: metadata of {path:?}");
                    // Chunks: the greatest live entry of each register, unless a delete.
                    for (reg, entries) in &regs {
                        let Reg::Chunk(k) = reg else { continue };
                        let store_key = format!("{path}/{k}");
                        let want = match &entries[0].val {
                            Val::Chunk(Some(ChunkData::Inline(b))) => {
                                keys.push(store_key.clone());
                                Some(Entry::Chunk(ChunkRef::Inline(b.clone())))
                            }
                            Val::Chunk(Some(ChunkData::Blob { hash, len })) => {
                                keys.push(store_key.clone());
                                Some(Entry::Chunk(ChunkRef::Blob {
                                    hash: *hash,
                                    len: *len,
                                }))
                            }
                            _ => None,
                        };
                        assert_eq!(view.get(&store_key), want, "{ctx}: chunk {store_key}");
                    }
                }
            }
        }
        // Objects: each key's live entries, unless a shown array owns the key.
        let mut objects: BTreeMap<&str, Vec<&ObjectWrite>> = BTreeMap::new();
        for w in &self.objects {
            if !self.objects_observed.contains(&(w.1.clone(), w.0)) {
                objects.entry(w.1.as_str()).or_default().push(w);
            }
        }
        for (k, mut entries) in objects {
            let owned = shown.iter().any(|(p, n)| {
                n.winner.is_some_and(|w| self.is_array(&w))
                    && (p.is_empty() || k.starts_with(&format!("{p}/")))
            });
            if owned {
                continue;
            }
            entries.sort_by_key(|w| std::cmp::Reverse(self.key(&w.0)));
            if entries.len() > 1 {
                let losers = entries[1..].iter().map(|w| w.0).collect();
                conflicts.insert((
                    k.to_string(),
                    ConflictTarget::Object,
                    entries[0].0,
                    sorted(losers),
                ));
            }
            let want = match &entries[0].2 {
                Some(ChunkData::Inline(b)) => Some(Entry::Object(ChunkRef::Inline(b.clone()))),
                Some(ChunkData::Blob { hash, len }) => Some(Entry::Object(ChunkRef::Blob {
                    hash: *hash,
                    len: *len,
                })),
                Some(ChunkData::Reference(r)) => panic!("{ctx}: an object reference {r:?}"),
                None => None,
            };
            if want.is_some() {
                keys.push(k.to_string());
            }
            assert_eq!(view.get(k), want, "{ctx}: object {k}");
        }
        keys.sort();
        assert_eq!(view.keys(), keys, "{ctx}: keys");
        let got: BTreeSet<ConflictKey> = view
            .conflicts()
            .into_iter()
            .map(|c| {
                (
                    c.key,
                    c.target,
                    (c.winner.change, c.winner.op),
                    sorted(c.losers.iter().map(|l| (l.change, l.op)).collect()),
                )
            })
            .collect();
        assert_eq!(got, conflicts, "{ctx}: conflicts");
    }
}

fn sorted(mut v: Vec<OpId>) -> Vec<OpId> {
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

fn converge(backend: Backend, sc: &Scenario) {
    runtime().block_on(async {
        let mut w = World::new(backend, sc.replicas, true).await;
        w.run(sc).await;
        w.check_converged().await;
    });
}

/// A deterministic shuffle with duplicates, driven by `seed` (xorshift).
fn shuffled_with_duplicates<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut v: Vec<T> = items.to_vec();
    let extra = (next() % (items.len() as u64 + 1)) as usize;
    for _ in 0..extra {
        v.push(items[(next() % items.len() as u64) as usize].clone());
    }
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

proptest! {
    #![proptest_config(config(4000, 1, 1))]

    /// In-memory replicas: after every delivery the receiver matches the model; in
    /// the end every replica shows the same entries, listing, conflicts and bytes.
    #[test]
    fn replicas_converge_in_memory(sc in scenario(40)) {
        converge(Backend::Memory, &sc);
    }
}

proptest! {
    #![proptest_config(config(250, 1, 10))]

    /// The same on local-disk stores (unsorted listings, real files).
    #[test]
    fn replicas_converge_local_fs(sc in scenario(30)) {
        converge(Backend::Local, &sc);
    }
}

proptest! {
    #![proptest_config(config(40, 1, 100))]

    /// The same against a real S3 server (started by `tests/run.sh`; required
    /// there, skipped when a developer runs `cargo test` without it).
    #[test]
    fn replicas_converge_s3(sc in scenario(20)) {
        if crate::common::s3().is_none() {
            return Ok(());
        }
        converge(Backend::S3, &sc);
    }
}

proptest! {
    #![proptest_config(config(3000, 1, 1))]

    /// Folding the full change set in any order, with duplicates, gives the same
    /// view and conflicts as the replicas, and what the model says.
    #[test]
    fn fold_is_order_and_duplicate_independent(
        sc in scenario(40),
        seeds in prop::collection::vec(any::<u64>(), 4),
    ) {
        runtime().block_on(async {
            let mut w = World::new(Backend::Memory, sc.replicas, false).await;
            w.run(&sc).await;
            let repo = &w.replicas[0].repo;
            let entries = repo.entries().await.unwrap();
            let conflicts = repo.conflicts().await.unwrap();
            let all: Vec<(ChangeHash, Change)> = w
                .changes
                .iter()
                .map(|(h, s)| (*h, s.change.clone()))
                .collect();
            let by_hash: HashMap<ChangeHash, &Change> = all.iter().map(|(h, c)| (*h, c)).collect();
            for seed in &seeds {
                let order = shuffled_with_duplicates(&all, *seed);
                // A prefix of the order: changes whose deps are missing stay pending
                // and invisible; the rest shows what the model says.
                let cut = (*seed >> 40) as usize % (order.len() + 1);
                let fold = Fold::from_changes(repo.id(), order[..cut].iter().cloned());
                let held: BTreeSet<ChangeHash> = order[..cut].iter().map(|(h, _)| *h).collect();
                let done = complete(&held, |h| by_hash[h]);
                let applied: BTreeSet<ChangeHash> = fold.log().iter().map(|c| c.hash).collect();
                assert_eq!(applied, done, "seed {seed}: applied prefix");
                let pending: BTreeSet<ChangeHash> = fold.pending().iter().map(|p| p.hash).collect();
                assert_eq!(pending, &held - &done, "seed {seed}: pending prefix");
                let (hashes, set): (Vec<ChangeHash>, Vec<&Change>) =
                    done.iter().map(|h| (*h, by_hash[h])).unzip();
                Model::new(&hashes, &set).check(ViewIndex::build(&fold).with(&fold), "prefix");
                // The whole order, duplicates included.
                let fold = Fold::from_changes(repo.id(), order);
                assert_eq!(fold.len(), all.len());
                assert!(fold.pending().is_empty());
                let view_index = ViewIndex::build(&fold);
    let view = view_index.with(&fold);
                assert_eq!(view.entries(), entries, "seed {seed}: entries");
                assert_eq!(view.conflicts(), conflicts, "seed {seed}: conflicts");
            }
            let (hashes, set): (Vec<ChangeHash>, Vec<&Change>) =
                w.changes.iter().map(|(h, s)| (*h, &s.change)).unzip();
            Model::new(&hashes, &set).check(repo.view(), "fold");
        });
    }
}

/// Regression: a write aimed at a merged group's winning incarnation, concurrent
/// with a delete of only that incarnation, must still supersede the entry it
/// observed in the surviving sibling, whatever the delivery order.
#[test]
fn observed_entry_in_sibling_superseded_despite_concurrent_delete() {
    runtime().block_on(async {
        let mut w = World::new(Backend::Memory, 5, true).await;
        let group = |attrs: Vec<(usize, u8)>| Edit::Group { path: 1, attrs };
        // X creates g with attribute a (entry E in incarnation S).
        w.commit(0, &[group(vec![(0, 1)])]).await;
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        // Y creates g concurrently, later: incarnation T wins.
        w.commit(1, &[group(vec![])]).await;
        // A sees both and sets a on g: aimed at T, observing E.
        w.deliver(0, 2, &Pick::All).await;
        w.deliver(1, 2, &Pick::All).await;
        w.commit(
            2,
            &[Edit::SetAttr {
                path: 1,
                key: 0,
                value: 2,
            }],
        )
        .await;
        // Y deletes g, seeing only T.
        w.commit(
            1,
            &[Edit::Delete {
                path: 1,
                by_prefix: false,
            }],
        )
        .await;
        // Replica 3 applies the delete before the write, replica 4 after.
        w.deliver(1, 3, &Pick::All).await;
        w.deliver(2, 3, &Pick::All).await;
        w.deliver(2, 4, &Pick::All).await;
        w.deliver(1, 4, &Pick::All).await;
        let (r3, r4) = (&w.replicas[3].repo, &w.replicas[4].repo);
        assert_eq!(
            r3.get("g/zarr.json").await.unwrap(),
            r4.get("g/zarr.json").await.unwrap()
        );
    });
}

/// Regression (found by `replicas_converge_in_memory`): resizing an array to its
/// current shape staged a `Resize` op with no dimensions, which every reader
/// rejects, so the writer's change and everything after it never reached others.
#[test]
fn resize_to_current_shape_writes_nothing_invalid() {
    runtime().block_on(async {
        let mut w = World::new(Backend::Memory, 2, true).await;
        let array = Edit::Array {
            path: 1,
            layout: 0,
            shape: [0, 0],
            attrs: vec![],
        };
        w.commit(0, &[array]).await;
        let resize = Edit::Resize {
            path: 1,
            shape: [0, 0],
        };
        let attr = Edit::SetAttr {
            path: 2, // PATHS[2] == ARRAY_PATHS[1]
            key: 0,
            value: 1,
        };
        w.commit(0, std::slice::from_ref(&resize)).await;
        w.commit(0, &[resize, attr]).await;
        w.deliver(0, 1, &Pick::All).await;
        w.check_converged().await;
        assert_eq!(w.changes.len(), 2, "a no-op resize commits nothing");
    });
}
