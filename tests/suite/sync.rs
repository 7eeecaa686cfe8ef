//! Replication between buckets (`crzarr::ops::sync`, `spec/format.md` §16): `sync` copies
//! what one side lacks, verified, in writer order; every topology converges.
//!
//! * Properties (`replicas_converge_through_sync_*`): 3 to 6 replicas (the first
//!   initialized, the others created by a sync) connected as a star, a ring or a
//!   random connected mesh make random edits, sync random edges in random directions
//!   with 1, 3 or 32 requests in flight (some syncs killed after a budget of writes,
//!   the last write possibly landing with its reply lost; some run from both ends at
//!   once), compact, and compact and collect garbage after syncing with everyone.
//!   Every sync that finishes leaves each destination holding what its source had
//!   applied; every killed one leaves both sides readable (no half change, no missing
//!   blob or piece). Syncing along the edges until nothing moves leaves every replica
//!   showing exactly the pure fold of every change ever committed: same entries,
//!   conflicts and heads, nothing pending, no problems, no missing history.
//! * `replicas_collecting_apart_converge_*` (issue 14 items 4 and 13): the same, but every
//!   replica compacts and collects garbage with a zero window whenever it likes, without
//!   syncing first, in memory, on local disk and between local disk and S3. Snapshots
//!   compacted apart are joined (spec/merge.md §9.1): nothing is refused, and every
//!   replica ends showing the fold of every change ever committed.
//! * Hostile sources: corrupt change files, blobs, snapshot metadata, manifest pieces
//!   and archive shards are refused with their keys, the rest is copied, and the
//!   destination stays valid with whatever needed them waiting, invisible. Truncated,
//!   oversized and foreign-repository changes are refused, foreign files ignored; a
//!   damaged copy on the destination is replaced, never a good one.
//! * A sync killed after each of its writes in turn; what garbage collection removes
//!   under a sync; compacted and collected sources on every backend; identity; one-way
//!   syncs and pull-commit-push; changes arriving before their dependencies; progress;
//!   exact request counts.
//!
//! Case counts: 1000 (in memory) + 60 (local disk) + 16 (local disk and S3), and with
//! collection anywhere 300 (in memory) + 30 (local disk) + 8 (S3) by default;
//! `PROPTEST_CASES=N` divides N as `config` says.

use crate::common::edits::{Edit, apply_edits, base_edits, edit};
use crate::common::props::{config, runtime};
use crate::common::repo::{State, blob, fold_state, stash, state};
use crate::common::{another, array_meta, backends};
use async_trait::async_trait;
use bytes::Bytes;
use crzarr::Error;
use crzarr::fold::view::{ChunkRef, Entry};
use crzarr::format::change::Change;
use crzarr::format::ids::{ActorId, BlobHash, ChangeHash};
use crzarr::format::layout::{ChangeName, Layout};
use crzarr::io::counting::{CountingStore, RequestCounts};
use crzarr::io::progress::Progress;
use crzarr::io::store::{DEFAULT_CONCURRENCY, Problem, RepoStore};
use crzarr::ops::gc::GcOptions;
use crzarr::ops::sync::{Direction, Side, SyncOptions, SyncReport, sync};
use crzarr::repo::Repo;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

const PREFIX: &str = "ds";

const NOW: GcOptions = GcOptions {
    older_than: Duration::ZERO,
    dry_run: false,
    force: true,
};

fn mem() -> Arc<dyn ObjectStore> {
    Arc::new(InMemory::new())
}

fn bucket(store: &Arc<dyn ObjectStore>) -> RepoStore {
    RepoStore::new(store.clone(), PREFIX)
}

fn opts(direction: Direction) -> SyncOptions {
    SyncOptions {
        direction,
        ..SyncOptions::default()
    }
}

async fn listed_changes(b: &RepoStore) -> BTreeSet<ChangeHash> {
    let (listed, _) = b.list_changes().await.unwrap();
    listed.iter().map(|c| c.name.hash).collect()
}

async fn keys_under(b: &RepoStore, dir: &Path) -> BTreeSet<String> {
    b.list_all(dir)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect()
}

async fn exists(store: &Arc<dyn ObjectStore>, key: &Path) -> bool {
    match store.head(key).await {
        Ok(_) => true,
        Err(object_store::Error::NotFound { .. }) => false,
        Err(e) => panic!("head {key}: {e}"),
    }
}

async fn read(store: &Arc<dyn ObjectStore>, key: &Path) -> Bytes {
    store.get(key).await.unwrap().bytes().await.unwrap()
}

async fn write(store: &Arc<dyn ObjectStore>, key: &Path, bytes: impl Into<Bytes>) {
    store
        .put(key, PutPayload::from(bytes.into()))
        .await
        .unwrap();
}

/// The name of a change the handle applied.
fn name_of(repo: &Repo, hash: ChangeHash) -> ChangeName {
    let info = repo
        .log()
        .into_iter()
        .find(|c| c.hash == hash)
        .cloned()
        .expect("applied");
    ChangeName {
        hash,
        actor: info.actor,
        seq: info.seq,
    }
}

/// A fresh reader finds nothing wrong and serves every key, blobs verified (no
/// half-copied change, no missing blob or manifest piece).
async fn check_valid(store: &Arc<dyn ObjectStore>, ctx: &str) -> Repo {
    let r = Repo::open(store.clone(), PREFIX).await.unwrap();
    assert_eq!(r.problems(), vec![], "{ctx}: problems");
    assert_eq!(r.rejected(), vec![], "{ctx}: rejected");
    let entries = r
        .entries()
        .await
        .unwrap_or_else(|e| panic!("{ctx}: entries: {e}"));
    for (k, e) in &entries {
        let got = r
            .get(k)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: get {k}: {e}"))
            .unwrap_or_else(|| panic!("{ctx}: {k} listed but absent"));
        match e {
            Entry::Chunk(ChunkRef::Blob { hash, len })
            | Entry::Object(ChunkRef::Blob { hash, len }) => {
                assert_eq!(
                    (BlobHash::of(&got), got.len() as u64),
                    (*hash, *len),
                    "{ctx}: {k}"
                );
            }
            Entry::Chunk(ChunkRef::Inline(b))
            | Entry::Object(ChunkRef::Inline(b))
            | Entry::Metadata(b) => {
                assert_eq!(&got[..], &b[..], "{ctx}: {k}")
            }
            Entry::Chunk(ChunkRef::Reference(r)) | Entry::Object(ChunkRef::Reference(r)) => {
                panic!("{ctx}: no edit adopts objects: {r:?}")
            }
        }
    }
    r
}

fn refused_keys(r: &SyncReport) -> Vec<&str> {
    r.refused.iter().map(|p| p.key.as_str()).collect()
}

fn refusal<'a>(r: &'a SyncReport, key: &Path) -> &'a Problem {
    r.refused
        .iter()
        .find(|p| p.key == key.as_ref())
        .unwrap_or_else(|| panic!("{key} not refused: {r:?}"))
}

// ---------------------------------------------------------------------------
// A store whose writes fail once a budget is spent: a sync killed midway
// ---------------------------------------------------------------------------

/// Forwards to `inner`, with two faults. PUTs fail once `budget` (shared by both
/// sides of one sync) is spent; with `lose_reply`, the write that spends it lands but
/// its caller gets an error, like a reply lost on the wire. And a listing of a
/// directory in `frozen` answers, once, what that directory held when it was frozen
/// (a reader that listed just before garbage collection).
#[derive(Debug)]
struct Faulty {
    inner: Arc<dyn ObjectStore>,
    budget: Arc<AtomicI64>,
    lose_reply: bool,
    frozen: std::sync::Mutex<BTreeMap<String, Vec<ObjectMeta>>>,
}

impl Faulty {
    fn wrap(inner: &Arc<dyn ObjectStore>, budget: &Arc<AtomicI64>, lose_reply: bool) -> RepoStore {
        RepoStore::new(
            Arc::new(Faulty {
                inner: inner.clone(),
                budget: budget.clone(),
                lose_reply,
                frozen: Default::default(),
            }),
            PREFIX,
        )
    }

    /// A bucket whose next listing of each of `dirs` shows what they hold now.
    async fn stale(inner: &Arc<dyn ObjectStore>, dirs: &[Path]) -> RepoStore {
        let mut frozen = BTreeMap::new();
        for d in dirs {
            frozen.insert(d.to_string(), bucket(inner).list_all(d).await.unwrap());
        }
        RepoStore::new(
            Arc::new(Faulty {
                inner: inner.clone(),
                budget: Arc::new(AtomicI64::new(i64::MAX)),
                lose_reply: false,
                frozen: std::sync::Mutex::new(frozen),
            }),
            PREFIX,
        )
    }

    fn killed() -> object_store::Error {
        object_store::Error::Generic {
            store: "faulty",
            source: "killed: write budget spent".into(),
        }
    }
}

impl std::fmt::Display for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        match self.budget.fetch_sub(1, Ordering::SeqCst) {
            n if n > 0 => self.inner.put_opts(location, payload, opts).await,
            0 if self.lose_reply => {
                let _ = self.inner.put_opts(location, payload, opts).await;
                Err(Self::killed())
            }
            _ => Err(Self::killed()),
        }
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(Self::killed())
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        use futures::StreamExt;
        let key = prefix.map(|p| p.to_string()).unwrap_or_default();
        match self.frozen.lock().unwrap().remove(&key) {
            Some(v) => futures::stream::iter(v.into_iter().map(Ok)).boxed(),
            None => self.inner.list(prefix),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        _from: &Path,
        _to: &Path,
        _o: CopyOptions,
    ) -> object_store::Result<()> {
        Err(Self::killed())
    }
}

// ---------------------------------------------------------------------------
// Convergence across topologies (proptest)
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// Replica 0 in the middle.
    Star,
    /// i with i + 1, and the last with 0.
    Ring,
    /// A random spanning tree plus random extra edges.
    Mesh,
}

#[derive(Clone, Debug)]
enum Step {
    Commit {
        replica: usize,
        edits: Vec<Edit>,
    },
    /// Syncs the ends of edge `edge` (swapped with `flip`). `kill`: the sync's
    /// writes fail after a budget, the last one possibly landing (a lost reply).
    /// `concurrent`: a sync from each end runs at once.
    Sync {
        edge: usize,
        flip: bool,
        direction: Direction,
        kill: Option<(u8, bool)>,
        concurrent: bool,
        /// Requests in flight.
        concurrency: usize,
    },
    Compact {
        replica: usize,
    },
    /// Compacts and collects garbage with a zero window. `prepare`: first sync
    /// everything into the replica and back out to every other (the recommended way).
    Gc {
        replica: usize,
        prepare: bool,
    },
}

#[derive(Clone, Debug)]
struct Scenario {
    replicas: usize,
    topology: Topology,
    /// Mesh: replica i + 1 hangs off `parents[i] % (i + 1)`.
    parents: Vec<usize>,
    /// Mesh: extra edges.
    extra: Vec<(usize, usize)>,
    steps: Vec<Step>,
}

impl Scenario {
    fn edges(&self) -> Vec<(usize, usize)> {
        let n = self.replicas;
        let mut e: Vec<(usize, usize)> = match self.topology {
            Topology::Star => (1..n).map(|i| (0, i)).collect(),
            Topology::Ring => (0..n).map(|i| (i, (i + 1) % n)).collect(),
            Topology::Mesh => {
                let mut e: Vec<(usize, usize)> =
                    (1..n).map(|i| (self.parents[i - 1] % i, i)).collect();
                for (a, b) in &self.extra {
                    let (a, b) = (a % n, b % n);
                    if a != b && !e.contains(&(a, b)) && !e.contains(&(b, a)) {
                        e.push((a, b));
                    }
                }
                e
            }
        };
        e.dedup();
        e
    }
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![
        2 => Just(Direction::Both),
        1 => Just(Direction::Push),
        1 => Just(Direction::Pull),
    ]
}

/// `prepare`: how often a GC first syncs with everyone.
fn step(gc_weight: u32, prepare: f64) -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..6usize, prop::collection::vec(edit(), 1..4))
            .prop_map(|(replica, edits)| Step::Commit { replica, edits }),
        6 => (
            0..16usize,
            any::<bool>(),
            direction(),
            prop::option::weighted(0.2, (0..10u8, any::<bool>())),
            prop::bool::weighted(0.15),
            prop_oneof![Just(1usize), Just(3), Just(32)],
        )
            .prop_map(
                |(edge, flip, direction, kill, concurrent, concurrency)| Step::Sync {
                    edge,
                    flip,
                    direction,
                    kill,
                    concurrent,
                    concurrency,
                }
            ),
        1 => (0..6usize).prop_map(|replica| Step::Compact { replica }),
        gc_weight => (0..6usize, prop::bool::weighted(prepare))
            .prop_map(|(replica, prepare)| Step::Gc { replica, prepare }),
    ]
}

fn scenario(max_steps: usize, gc_weight: u32, prepare: f64) -> impl Strategy<Value = Scenario> {
    (
        3..=6usize,
        prop_oneof![
            Just(Topology::Star),
            Just(Topology::Ring),
            Just(Topology::Mesh)
        ],
        prop::collection::vec(0..6usize, 5),
        prop::collection::vec((0..6usize, 0..6usize), 0..5),
        prop::collection::vec(step(gc_weight, prepare), 1..max_steps),
    )
        .prop_map(|(replicas, topology, parents, extra, steps)| Scenario {
            replicas,
            topology,
            parents,
            extra,
            steps,
        })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Memory,
    Local,
    /// Replicas alternate between the loopback S3 server and local disk, so syncs
    /// run local -> S3 and S3 -> local.
    LocalAndS3,
}

struct Replica {
    store: Arc<dyn ObjectStore>,
    repo: Repo,
    _dir: Option<tempfile::TempDir>,
}

struct World {
    replicas: Vec<Replica>,
    /// Every change ever committed anywhere, decoded when committed.
    changes: BTreeMap<ChangeHash, Change>,
    /// GC only where it cannot lose history (see [`World::gc`]); otherwise anywhere.
    safe_gc: bool,
    /// Requests in flight for the current sync.
    concurrency: usize,
}

fn new_store(kind: Kind, index: usize) -> (Arc<dyn ObjectStore>, Option<tempfile::TempDir>) {
    match kind {
        Kind::Memory => (mem(), None),
        Kind::LocalAndS3 if index.is_multiple_of(2) => {
            let b = crate::common::s3().expect("S3 backend");
            let store = object_store::prefix::PrefixStore::new(b.store, b.prefix.as_str());
            (Arc::new(store), None)
        }
        Kind::Local | Kind::LocalAndS3 => {
            let dir = tempfile::tempdir().unwrap();
            let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
            (Arc::new(fs), Some(dir))
        }
    }
}

impl World {
    /// Replica 0 is initialized with a shared base; the others are created by a sync.
    async fn new(kind: Kind, n: usize, safe_gc: bool) -> World {
        let mut w = World {
            replicas: Vec::new(),
            changes: BTreeMap::new(),
            safe_gc,
            concurrency: DEFAULT_CONCURRENCY,
        };
        for i in 0..n {
            let (store, dir) = new_store(kind, i);
            let repo = if i == 0 {
                Repo::init(store.clone(), PREFIX).await.unwrap()
            } else {
                let r = sync(
                    &bucket(&w.replicas[0].store),
                    &bucket(&store),
                    &opts(Direction::Push),
                )
                .await
                .unwrap();
                assert_eq!(r.initialized, Some(Side::B), "{r:?}");
                assert!(r.is_clean(), "{r:?}");
                let repo = Repo::open(store.clone(), PREFIX).await.unwrap();
                assert_eq!(repo.id(), w.replicas[0].repo.id());
                repo
            };
            w.replicas.push(Replica {
                store,
                repo,
                _dir: dir,
            });
            if i == 0 {
                w.commit(0, &base_edits()).await;
            }
        }
        w
    }

    fn n(&self) -> usize {
        self.replicas.len()
    }

    fn opts(&self, direction: Direction) -> SyncOptions {
        SyncOptions {
            direction,
            concurrency: self.concurrency,
            ..SyncOptions::default()
        }
    }

    fn bucket(&self, r: usize) -> RepoStore {
        bucket(&self.replicas[r].store)
    }

    /// The changes a replica's handle has applied: the causal closure of its heads.
    fn applied(&self, r: usize) -> BTreeSet<ChangeHash> {
        self.closure(self.replicas[r].repo.fold().heads())
    }

    fn closure(&self, mut todo: Vec<ChangeHash>) -> BTreeSet<ChangeHash> {
        let mut out = BTreeSet::new();
        while let Some(h) = todo.pop() {
            if out.insert(h) {
                todo.extend(self.changes[&h].deps.iter().copied());
            }
        }
        out
    }

    /// A fresh reader of a replica is valid and shows exactly the pure fold of the
    /// changes it applied: no part of anything else.
    async fn check_consistent(&self, r: usize, ctx: &str) {
        let fresh = check_valid(&self.replicas[r].store, ctx).await;
        let applied = self.closure(fresh.fold().heads());
        let want = fold_state(
            &fresh,
            self.changes.iter().filter(|(h, _)| applied.contains(h)),
        );
        assert!(
            state(&fresh).await == want,
            "{ctx}: not the fold of what it applied"
        );
    }

    async fn run(&mut self, sc: &Scenario) {
        let edges = sc.edges();
        for step in &sc.steps {
            match step {
                Step::Commit { replica, edits } => self.commit(replica % self.n(), edits).await,
                Step::Sync {
                    edge,
                    flip,
                    direction,
                    kill,
                    concurrent,
                    concurrency,
                } => {
                    self.concurrency = *concurrency;
                    let (mut a, mut b) = edges[edge % edges.len()];
                    if *flip {
                        std::mem::swap(&mut a, &mut b);
                    }
                    match kill {
                        Some((budget, lose)) => {
                            self.killed_sync(a, b, *direction, *budget, *lose).await
                        }
                        None => {
                            self.sync(a, b, *direction, *concurrent).await;
                        }
                    }
                    self.concurrency = DEFAULT_CONCURRENCY;
                }
                Step::Compact { replica } => {
                    let r = replica % self.n();
                    self.replicas[r].repo.compact().await.unwrap();
                }
                Step::Gc { replica, prepare } => self.gc(replica % self.n(), *prepare).await,
            }
        }
        // Sync along the edges until nothing moves.
        let mut rounds = 0;
        loop {
            let mut moved = false;
            for &(a, b) in &edges {
                moved |= self.sync(a, b, Direction::Both, false).await;
            }
            if !moved {
                break;
            }
            rounds += 1;
            assert!(
                rounds <= 2 * self.n() + 2,
                "syncs along {edges:?} never settle"
            );
        }
    }

    async fn commit(&mut self, r: usize, edits: &[Edit]) {
        let rep = &mut self.replicas[r];
        let Some(hash) = apply_edits(&mut rep.repo, edits).await else {
            return;
        };
        let name = name_of(&rep.repo, hash);
        let bytes = read(&rep.store, &Layout::new(PREFIX).change(&name)).await;
        let change = Change::decode("", &bytes, &hash).unwrap();
        assert!(self.changes.insert(hash, change).is_none());
    }

    /// Checks a finished sync's report: nothing refused, even between replicas that
    /// compacted and collected garbage apart (their snapshots join, spec/merge.md §9).
    fn check_report(&mut self, r: &SyncReport, ctx: &str) -> bool {
        assert_eq!(r.ignored, vec![], "{ctx}");
        assert!(r.is_clean(), "{ctx}: refused {:?}", r.refused);
        true
    }

    /// Syncs a and b; returns whether anything was copied. A clean sync leaves each
    /// destination holding everything its source had applied.
    async fn sync(&mut self, a: usize, b: usize, direction: Direction, concurrent: bool) -> bool {
        let (ba, bb) = (self.bucket(a), self.bucket(b));
        let (before_a, before_b) = (self.applied(a), self.applied(b));
        let ctx = format!("sync {a} -> {b} {direction:?} concurrent={concurrent}");
        let (clean, moved) = if concurrent {
            let o = self.opts(direction);
            let (x, y) = futures::join!(sync(&ba, &bb, &o), sync(&bb, &ba, &o));
            let (x, y) = (x.unwrap(), y.unwrap());
            let clean = self.check_report(&x, &ctx) & self.check_report(&y, &ctx);
            (clean, x.copied_anything() || y.copied_anything())
        } else {
            let r = sync(&ba, &bb, &self.opts(direction)).await.unwrap();
            match direction {
                Direction::Push => assert_eq!(r.b_to_a, Default::default(), "{ctx}"),
                Direction::Pull => assert_eq!(r.a_to_b, Default::default(), "{ctx}"),
                Direction::Both => {}
            }
            (self.check_report(&r, &ctx), r.copied_anything())
        };
        for r in [a, b] {
            let rep = &mut self.replicas[r];
            rep.repo.refresh().await.unwrap();
            assert_eq!(rep.repo.problems(), vec![], "{ctx}: replica {r}");
        }
        if clean {
            // Concurrent syncs in one direction each still move both ways.
            let (ab, ba_) = match (direction, concurrent) {
                (_, true) | (Direction::Both, _) => (true, true),
                (Direction::Push, _) => (true, false),
                (Direction::Pull, _) => (false, true),
            };
            let (after_a, after_b) = (self.applied(a), self.applied(b));
            if ab {
                assert!(before_a.is_subset(&after_b), "{ctx}: b lacks what a had");
            }
            if ba_ {
                assert!(before_b.is_subset(&after_a), "{ctx}: a lacks what b had");
            }
            if ab && ba_ {
                assert_eq!(after_a, after_b, "{ctx}: both ways, yet different");
            }
        }
        moved
    }

    /// A sync whose writes fail after `budget`: both sides stay readable, and the
    /// handles carry on.
    async fn killed_sync(
        &mut self,
        a: usize,
        b: usize,
        direction: Direction,
        budget: u8,
        lose: bool,
    ) {
        let left = Arc::new(AtomicI64::new(i64::from(budget)));
        let ka = Faulty::wrap(&self.replicas[a].store, &left, lose);
        let kb = Faulty::wrap(&self.replicas[b].store, &left, lose);
        let ctx = format!("sync {a} -> {b} {direction:?} killed after {budget} writes");
        match sync(&ka, &kb, &self.opts(direction)).await {
            Ok(r) => {
                self.check_report(&r, &ctx);
            }
            Err(Error::Store { .. }) => {}
            Err(e) => panic!("{ctx}: {e}"),
        }
        for r in [a, b] {
            self.check_consistent(r, &format!("{ctx}: replica {r}"))
                .await;
            self.replicas[r].repo.refresh().await.unwrap();
        }
    }

    /// Compacts, then collects garbage. With `safe_gc`, only if every other replica
    /// holds (applied, or as a file) what this one applied, as "sync before collecting
    /// garbage" asks; `prepare` makes that so.
    async fn gc(&mut self, r: usize, prepare: bool) {
        if prepare {
            for j in (0..self.n()).filter(|j| *j != r) {
                self.sync(j, r, Direction::Push, false).await;
            }
            for j in (0..self.n()).filter(|j| *j != r) {
                self.sync(r, j, Direction::Push, false).await;
            }
        }
        self.replicas[r].repo.compact().await.unwrap();
        if self.safe_gc {
            let mine = self.applied(r);
            for j in (0..self.n()).filter(|j| *j != r) {
                let held = &self.applied(j) | &listed_changes(&self.bucket(j)).await;
                if !mine.is_subset(&held) {
                    return;
                }
            }
        }
        let rep = &mut self.replicas[r];
        rep.repo.gc(&NOW).await.unwrap();
        rep.repo.refresh().await.unwrap();
        let fresh = Repo::open(rep.store.clone(), PREFIX).await.unwrap();
        assert_eq!(
            state(&fresh).await,
            state(&rep.repo).await,
            "replica {r}: a fresh open after GC shows what the handle shows"
        );
    }

    /// Every replica shows the pure fold of every change ever committed.
    async fn check_converged(&self) {
        let all: BTreeSet<ChangeHash> = self.changes.keys().copied().collect();
        let want = fold_state(&self.replicas[0].repo, &self.changes);
        for (i, rep) in self.replicas.iter().enumerate() {
            let fresh = check_valid(&rep.store, &format!("replica {i}")).await;
            assert_eq!(fresh.missing_history(), vec![], "replica {i}");
            assert_eq!(fresh.pending(), vec![], "replica {i}");
            assert_eq!(fresh.forks(), vec![], "replica {i}");
            assert_eq!(self.applied(i), all, "replica {i}: every change applied");
            assert!(
                state(&fresh).await == want,
                "replica {i}: differs from the fold of every change"
            );
            assert!(
                state(&rep.repo).await == want,
                "replica {i}: its handle differs"
            );
        }
    }
}

fn converge(kind: Kind, sc: &Scenario, safe_gc: bool) {
    runtime().block_on(async {
        let mut w = World::new(kind, sc.replicas, safe_gc).await;
        w.run(sc).await;
        w.check_converged().await;
    });
}

proptest! {
    #![proptest_config(config(1000, 1, 1))]
    #[test]
    fn replicas_converge_through_sync_in_memory(sc in scenario(30, 1, 0.7)) {
        converge(Kind::Memory, &sc, true);
    }
}

proptest! {
    #![proptest_config(config(60, 1, 10))]
    #[test]
    fn replicas_converge_through_sync_local_fs(sc in scenario(20, 1, 0.7)) {
        converge(Kind::Local, &sc, true);
    }
}

// Replicas compact and collect garbage (zero window) whenever they like, without
// syncing first: issue 14 items 4 and 13. Nothing is refused, and every replica ends
// with the fold of every change ever committed.
proptest! {
    #![proptest_config(config(300, 1, 3))]
    #[test]
    fn replicas_collecting_apart_converge_in_memory(sc in scenario(30, 2, 0.2)) {
        converge(Kind::Memory, &sc, false);
    }
}

proptest! {
    #![proptest_config(config(30, 1, 20))]
    #[test]
    fn replicas_collecting_apart_converge_on_local_disk(sc in scenario(20, 2, 0.2)) {
        converge(Kind::Local, &sc, false);
    }
}

proptest! {
    #![proptest_config(config(8, 1, 100))]
    #[test]
    fn replicas_collecting_apart_converge_between_local_disk_and_s3(sc in scenario(16, 2, 0.2)) {
        if crate::common::s3().is_none() {
            return Ok(());
        }
        converge(Kind::LocalAndS3, &sc, false);
    }
}

proptest! {
    #![proptest_config(config(16, 1, 60))]
    #[test]
    fn replicas_converge_through_sync_between_local_disk_and_s3(sc in scenario(16, 1, 0.7)) {
        if crate::common::s3().is_none() {
            return Ok(());
        }
        converge(Kind::LocalAndS3, &sc, true);
    }
}

// ---------------------------------------------------------------------------
// Hostile sources
// ---------------------------------------------------------------------------

fn layout() -> Layout {
    Layout::new(PREFIX)
}

fn key(name: &ChangeName) -> Path {
    layout().change(name)
}

/// A source with four changes: `base` creates the root group and array `x`;
/// `blobbed` writes `x/c/0` as a blob; `after` sets an attribute having seen
/// `blobbed`; `side`, by a writer who saw only `base`, writes `x/c/1` inline.
struct Hist {
    store: Arc<dyn ObjectStore>,
    repo: Repo,
    base: ChangeName,
    blobbed: ChangeName,
    after: ChangeName,
    side: ChangeName,
    blob: BlobHash,
    changes: BTreeMap<ChangeHash, Change>,
}

impl Hist {
    async fn new(store: Arc<dyn ObjectStore>) -> Hist {
        let mut a = Repo::init(store.clone(), PREFIX).await.unwrap();
        let mut s = a.session();
        s.create_group("", Default::default()).unwrap();
        s.create_array("x", &array_meta(&[8], &[2])).unwrap();
        let base = s.commit(&mut a, Some("base")).await.unwrap().unwrap();
        let mut w = Repo::open(store.clone(), PREFIX).await.unwrap();
        let mut s = a.session();
        s.set("x/c/0", blob(1)).unwrap();
        let blobbed = s.commit(&mut a, None).await.unwrap().unwrap();
        let mut s = a.session();
        s.set_attr("x", "units", "K".into()).unwrap();
        let after = s.commit(&mut a, None).await.unwrap().unwrap();
        let mut s = w.session();
        s.set("x/c/1", vec![2u8; 4]).unwrap();
        let side = s.commit(&mut w, None).await.unwrap().unwrap();
        a.refresh().await.unwrap();
        let changes = stash(&bucket(&store)).await;
        assert_eq!(changes.len(), 4);
        Hist {
            base: name_of(&a, base),
            blobbed: name_of(&a, blobbed),
            after: name_of(&a, after),
            side: name_of(&a, side),
            blob: BlobHash::of(&blob(1)),
            store,
            repo: a,
            changes,
        }
    }

    /// The pure fold of some of its changes.
    fn only(&self, names: &[&ChangeName]) -> State {
        let keep: BTreeSet<ChangeHash> = names.iter().map(|n| n.hash).collect();
        fold_state(
            &self.repo,
            self.changes.iter().filter(|(h, _)| keep.contains(h)),
        )
    }
}

fn pending_of(repo: &Repo) -> Vec<(ChangeHash, Vec<ChangeHash>)> {
    repo.pending()
        .into_iter()
        .map(|p| (p.hash, p.missing))
        .collect()
}

fn problem_keys(v: &[Problem]) -> Vec<&str> {
    v.iter().map(|p| p.key.as_str()).collect()
}

#[tokio::test]
async fn a_corrupt_change_file_is_refused_the_rest_copied_and_what_needs_it_waits() {
    let h = Hist::new(mem()).await;
    let k = key(&h.blobbed);
    let good = read(&h.store, &k).await;
    let mut bad = good.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x20;
    write(&h.store, &k, bad).await;
    let dst = mem();
    let r = sync(&bucket(&h.store), &bucket(&dst), &opts(Direction::Push))
        .await
        .unwrap();
    assert_eq!(r.initialized, Some(Side::B));
    assert_eq!(refused_keys(&r), vec![k.as_ref()], "{r:?}");
    assert!(
        refusal(&r, &k).error.contains("does not match the hash"),
        "{r:?}"
    );
    // base, after and side; not the corrupt one, nor its blob.
    assert_eq!((r.a_to_b.changes, r.a_to_b.blobs), (3, 0), "{r:?}");
    assert!(!exists(&dst, &k).await);
    assert!(!exists(&dst, &layout().blob(&h.blob)).await);
    let d = check_valid(&dst, "destination").await;
    // `after` needs the refused change: it waits, invisible, and says why.
    assert_eq!(pending_of(&d), vec![(h.after.hash, vec![h.blobbed.hash])]);
    assert_eq!(
        problem_keys(&d.missing_history()),
        vec![key(&h.after).as_ref()]
    );
    assert!(state(&d).await == h.only(&[&h.base, &h.side]));

    // Once the source is repaired, the next sync completes the copy.
    write(&h.store, &k, good).await;
    let r = sync(&bucket(&h.store), &bucket(&dst), &opts(Direction::Push))
        .await
        .unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!((r.a_to_b.changes, r.a_to_b.blobs), (1, 1), "{r:?}");
    let d = check_valid(&dst, "destination").await;
    assert_eq!(d.pending(), vec![]);
    assert_eq!(d.missing_history(), vec![]);
    assert!(state(&d).await == fold_state(&d, &h.changes));
}

/// Issue 14 item 12: a lost or damaged blob costs exactly its chunk. The blob is
/// reported and never copied; the change that needs it, and every later change, is
/// copied and applies; reading the chunk names the chunk and the blob; writing the
/// chunk again repairs it everywhere.
#[tokio::test]
async fn one_missing_blob_hides_no_later_history() {
    let mut h = Hist::new(mem()).await;
    let bk = layout().blob(&h.blob);
    let k = key(&h.blobbed);
    // Same length, other bytes.
    write(&h.store, &bk, blob(9)).await;
    let dst = mem();
    let r = sync(&bucket(&h.store), &bucket(&dst), &opts(Direction::Push))
        .await
        .unwrap();
    assert_eq!(refused_keys(&r), vec![bk.as_ref()], "{r:?}");
    assert!(
        refusal(&r, &bk)
            .error
            .contains("blob content does not match its hash"),
        "{r:?}"
    );
    assert_eq!((r.a_to_b.changes, r.a_to_b.blobs), (4, 0), "{r:?}");
    assert!(
        !exists(&dst, &bk).await,
        "a damaged blob is never propagated"
    );
    assert!(exists(&dst, &k).await);
    missing_only_its_chunk(&dst, &h, &bk).await;

    // A blob missing altogether is handled the same way.
    h.store.delete(&bk).await.unwrap();
    let dst2 = mem();
    let r = sync(&bucket(&h.store), &bucket(&dst2), &opts(Direction::Push))
        .await
        .unwrap();
    assert_eq!(refused_keys(&r), vec![bk.as_ref()], "{r:?}");
    assert!(refusal(&r, &bk).error.contains("missing"), "{r:?}");
    missing_only_its_chunk(&dst2, &h, &bk).await;

    // The repair (format.md §16.3): write the chunk again; sync carries it.
    let mut s = h.repo.session();
    s.set("x/c/0", blob(1)).unwrap();
    s.commit(&mut h.repo, Some("repair")).await.unwrap();
    let r = sync(&bucket(&h.store), &bucket(&dst), &opts(Direction::Push))
        .await
        .unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!((r.a_to_b.changes, r.a_to_b.blobs), (1, 1), "{r:?}");
    let d = check_valid(&dst, "destination").await;
    assert_eq!(d.get("x/c/0").await.unwrap().as_deref(), Some(&blob(1)[..]));
}

/// A replica holding every change of `h` but blob `bk`: everything reads except the
/// chunk that uses it, whose error names both.
async fn missing_only_its_chunk(store: &Arc<dyn ObjectStore>, h: &Hist, bk: &Path) {
    let d = Repo::open(store.clone(), PREFIX).await.unwrap();
    assert_eq!(d.pending(), vec![]);
    assert_eq!(d.problems(), vec![]);
    assert_eq!(d.fold().heads(), fold_state(&d, &h.changes).2);
    match d.get("x/c/0").await {
        Err(Error::MissingBlob { key, blob_key }) => {
            assert_eq!((key.as_str(), blob_key.as_str()), ("x/c/0", bk.as_ref()));
        }
        other => panic!("x/c/0: {other:?}"),
    }
    assert_eq!(
        d.get("x/c/1").await.unwrap().as_deref(),
        Some(&[2u8; 4][..])
    );
    let meta = d.get("x/zarr.json").await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&meta).contains("\"K\""),
        "later change applied"
    );
}

/// Replaces an object's bytes with different ones of the same length.
async fn damage(store: &Arc<dyn ObjectStore>, key: &Path) -> Bytes {
    let good = read(store, key).await;
    let mut bad = good.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    write(store, key, bad).await;
    good
}

#[tokio::test]
async fn a_corrupt_snapshot_is_refused_and_the_previous_one_copied_instead() {
    let mut h = Hist::new(mem()).await;
    h.repo.compact().await.unwrap();
    let mut s = h.repo.session();
    s.set("x/c/2", vec![3u8; 4]).unwrap();
    s.commit(&mut h.repo, None).await.unwrap().unwrap();
    h.repo.compact().await.unwrap();
    let src = bucket(&h.store);
    let all = stash(&src).await;
    let (snaps, _) = src.list_snapshots().await.unwrap();
    assert_eq!(snaps.len(), 2);
    let (newest, older) = (snaps[0].key.clone(), snaps[1].key.clone());
    damage(&h.store, &newest).await;
    let dst = mem();
    let r = sync(&src, &bucket(&dst), &opts(Direction::Push))
        .await
        .unwrap();
    assert_eq!(refused_keys(&r), vec![newest.as_ref()], "{r:?}");
    assert!(
        refusal(&r, &newest)
            .error
            .contains("does not match its hash"),
        "{r:?}"
    );
    assert_eq!((r.a_to_b.changes, r.a_to_b.snapshots), (5, 1), "{r:?}");
    assert!(exists(&dst, &older).await);
    assert!(!exists(&dst, &newest).await);
    let d = check_valid(&dst, "destination").await;
    assert_eq!(d.pending(), vec![]);
    assert!(state(&d).await == fold_state(&d, &all));
    assert!(state(&d).await == state(&h.repo).await);
}

#[tokio::test]
async fn the_only_snapshot_corrupt_after_gc_leaves_a_valid_destination_waiting_for_history() {
    let mut h = Hist::new(mem()).await;
    h.repo.compact().await.unwrap();
    h.repo.gc(&NOW).await.unwrap();
    let mut s = h.repo.session();
    s.set("x/c/2", vec![3u8; 4]).unwrap();
    let late = s.commit(&mut h.repo, None).await.unwrap().unwrap();
    let src = bucket(&h.store);
    assert_eq!(listed_changes(&src).await, BTreeSet::from([late]));
    let (snaps, _) = src.list_snapshots().await.unwrap();
    damage(&h.store, &snaps[0].key).await;
    let dst = mem();
    let r = sync(&src, &bucket(&dst), &opts(Direction::Push))
        .await
        .unwrap();
    assert_eq!(refused_keys(&r), vec![snaps[0].key.as_ref()], "{r:?}");
    assert_eq!((r.a_to_b.changes, r.a_to_b.snapshots), (1, 0), "{r:?}");
    // The late change went, and waits there for history nobody can give it.
    let d = check_valid(&dst, "destination").await;
    assert_eq!(d.entries().await.unwrap(), BTreeMap::new());
    assert_eq!(d.pending().len(), 1);
    assert_eq!(d.missing_history().len(), 1);
}

#[tokio::test]
async fn a_corrupt_manifest_piece_or_archive_shard_refuses_the_snapshot_and_the_rest_goes() {
    let mut h = Hist::new(mem()).await;
    h.repo.compact().await.unwrap();
    h.repo.gc(&NOW).await.unwrap();
    // A second compaction after GC moves covered changes to the archive.
    let mut s = h.repo.session();
    s.set("x/c/2", blob(3)).unwrap();
    s.commit(&mut h.repo, None).await.unwrap().unwrap();
    h.repo.compact().await.unwrap();
    h.repo.gc(&NOW).await.unwrap();
    let mut s = h.repo.session();
    s.set("x/c/3", vec![4u8; 4]).unwrap();
    let late = s.commit(&mut h.repo, None).await.unwrap().unwrap();
    let src = bucket(&h.store);
    let want = state(&h.repo).await;
    let (snaps, _) = src.list_snapshots().await.unwrap();
    assert_eq!(snaps.len(), 1);
    let snap = snaps[0].key.clone();
    let pieces = keys_under(&src, &layout().manifests_dir()).await;
    let shards = keys_under(&src, &layout().archive_dir()).await;
    assert!(
        !pieces.is_empty() && !shards.is_empty(),
        "{pieces:?} {shards:?}"
    );
    for damaged in [pieces.first().unwrap(), shards.first().unwrap()] {
        let damaged = Path::from(damaged.as_str());
        let good = damage(&h.store, &damaged).await;
        let dst = mem();
        let r = sync(&src, &bucket(&dst), &opts(Direction::Push))
            .await
            .unwrap();
        assert_eq!(refused_keys(&r), vec![snap.as_ref()], "{r:?}");
        let why = &refusal(&r, &snap).error;
        assert!(why.contains(damaged.as_ref()), "{why}");
        assert!(why.contains("does not match its hash"), "{why}");
        // The uncovered change still went; nothing of the snapshot did.
        assert_eq!(r.a_to_b.changes, 1, "{r:?}");
        assert_eq!(r.a_to_b.snapshots, 0, "{r:?}");
        let db = bucket(&dst);
        assert_eq!(listed_changes(&db).await, BTreeSet::from([late]));
        assert!(db.list_snapshots().await.unwrap().0.is_empty());
        // Pieces and shards verified before the damaged one was found may have
        // been written: only ever good copies of the snapshot's own objects.
        for dir in [layout().manifests_dir(), layout().archive_dir()] {
            for k in keys_under(&db, &dir).await {
                assert!(pieces.contains(&k) || shards.contains(&k), "{k}");
                assert_ne!(k, damaged.as_ref());
                assert_eq!(
                    read(&dst, &Path::from(k.as_str())).await,
                    read(&h.store, &Path::from(k.as_str())).await
                );
            }
        }
        assert!(!exists(&dst, &layout().latest_hint()).await);
        let d = check_valid(&dst, "destination").await;
        assert_eq!(d.entries().await.unwrap(), BTreeMap::new());
        assert_eq!(
            problem_keys(&d.missing_history()),
            vec![key(&name_of(&h.repo, late)).as_ref()]
        );

        // Repaired at the source: the snapshot follows.
        write(&h.store, &damaged, good).await;
        let r = sync(&src, &db, &opts(Direction::Push)).await.unwrap();
        assert!(r.is_clean(), "{r:?}");
        assert_eq!((r.a_to_b.changes, r.a_to_b.snapshots), (0, 1), "{r:?}");
        let d = check_valid(&dst, "destination").await;
        assert_eq!(d.missing_history(), vec![]);
        assert_eq!(d.pending(), vec![]);
        assert!(state(&d).await == want);
    }
}

#[tokio::test]
async fn truncated_oversized_and_foreign_changes_are_refused_and_foreign_files_ignored() {
    let h = Hist::new(mem()).await;
    let l = layout();
    // Truncated.
    let truncated = key(&h.blobbed);
    let bytes = read(&h.store, &truncated).await;
    write(&h.store, &truncated, bytes.slice(..bytes.len() / 2)).await;
    // Oversized, under a well-formed name.
    let oversized = l.change(&ChangeName {
        hash: ChangeHash::of(b"too big"),
        actor: ActorId::generate(),
        seq: 1,
    });
    write(&h.store, &oversized, vec![0u8; (64 << 20) + 1]).await;
    // A change of another repository, under its own (valid) name.
    let other_store = mem();
    let mut other = Repo::init(other_store.clone(), PREFIX).await.unwrap();
    let mut s = other.session();
    s.create_group("", Default::default()).unwrap();
    let foreign = s.commit(&mut other, None).await.unwrap().unwrap();
    let foreign = key(&name_of(&other, foreign));
    write(&h.store, &foreign, read(&other_store, &foreign).await).await;
    // Not crzarr objects at all.
    let notes = l.ops_dir().join("notes.txt");
    let nested = l.ops_dir().join("sub").join("x.change");
    let junk = l.snapshots_dir().join("junk");
    for k in [&notes, &nested, &junk] {
        write(&h.store, k, &b"hello"[..]).await;
    }

    let counting = CountingStore::new(h.store.clone());
    let src = RepoStore::new(Arc::new(counting.clone()), PREFIX);
    let dst = mem();
    let r = sync(&src, &bucket(&dst), &opts(Direction::Both))
        .await
        .unwrap();
    let mut want = vec![truncated.as_ref(), oversized.as_ref(), foreign.as_ref()];
    want.sort();
    assert_eq!(refused_keys(&r), want, "{r:?}");
    assert!(
        refusal(&r, &truncated)
            .error
            .contains("does not match the hash")
    );
    assert!(refusal(&r, &oversized).error.contains("exceeds the limit"));
    assert!(
        refusal(&r, &foreign)
            .error
            .contains("belongs to repository")
    );
    // The oversized file was judged by its listed size: never fetched.
    assert!(
        counting.snapshot().get_bytes < 1 << 20,
        "{:?}",
        counting.snapshot()
    );
    let mut ignored = problem_keys(&r.ignored);
    ignored.sort();
    let mut want_ignored = vec![notes.as_ref(), nested.as_ref(), junk.as_ref()];
    want_ignored.sort();
    assert_eq!(ignored, want_ignored, "{r:?}");
    assert!(
        r.ignored
            .iter()
            .all(|p| p.error.starts_with("foreign file"))
    );
    assert_eq!(r.a_to_b.changes, 3, "{r:?}");
    assert_eq!(r.b_to_a, Default::default(), "{r:?}");
    for k in [&truncated, &oversized, &foreign, &notes, &nested, &junk] {
        assert!(!exists(&dst, k).await, "{k} copied");
    }
    let d = check_valid(&dst, "destination").await;
    assert_eq!(pending_of(&d), vec![(h.after.hash, vec![h.blobbed.hash])]);
    assert!(state(&d).await == h.only(&[&h.base, &h.side]));
}

#[tokio::test]
async fn a_damaged_copy_on_the_destination_is_replaced_never_the_good_one() {
    let h = Hist::new(mem()).await;
    let dst = mem();
    let (src, db) = (bucket(&h.store), bucket(&dst));
    sync(&src, &db, &opts(Direction::Push)).await.unwrap();
    let k = key(&h.after);
    let good = read(&dst, &k).await;
    write(&dst, &k, good.slice(..good.len() - 3)).await;
    // Both ways: the destination's damaged copy is refused going back, and replaced.
    let r = sync(&src, &db, &opts(Direction::Both)).await.unwrap();
    assert_eq!(refused_keys(&r), vec![k.as_ref()], "{r:?}");
    assert_eq!(r.a_to_b.repaired, 1, "{r:?}");
    assert_eq!(r.b_to_a.objects(), 0, "{r:?}");
    assert_eq!(read(&h.store, &k).await, good);
    assert_eq!(read(&dst, &k).await, good);
    let d = check_valid(&dst, "destination").await;
    assert!(state(&d).await == fold_state(&d, &h.changes));
    let r = sync(&src, &db, &opts(Direction::Both)).await.unwrap();
    assert!(r.is_clean() && !r.copied_anything(), "{r:?}");
}

// ---------------------------------------------------------------------------
// Compacted and collected sources, on every backend
// ---------------------------------------------------------------------------

/// Object names (the last path segment) under a directory.
async fn names_under(b: &RepoStore, dir: &Path) -> BTreeSet<String> {
    b.list_all(dir)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| m.location.filename().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn an_empty_bucket_synced_from_a_compacted_and_collected_source_shows_the_same() {
    for b in backends() {
        let src = RepoStore::new(b.store.clone(), &b.prefix);
        let mut a = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = a.session();
        s.create_group("", Default::default()).unwrap();
        s.create_array("x", &array_meta(&[8], &[2])).unwrap();
        s.create_array("gone", &array_meta(&[4], &[2])).unwrap();
        s.set("x/c/0", blob(1)).unwrap();
        s.set("gone/c/0", blob(2)).unwrap();
        s.commit(&mut a, None).await.unwrap();
        let mut w = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = a.session();
        s.set("x/c/0", blob(3)).unwrap();
        s.set_attr("x", "units", "K".into()).unwrap();
        s.commit(&mut a, None).await.unwrap();
        let mut s = w.session();
        s.set_attr("x", "units", "C".into()).unwrap();
        s.set("x/c/1", blob(4)).unwrap();
        s.delete("gone/zarr.json").unwrap();
        s.commit(&mut w, None).await.unwrap();
        a.refresh().await.unwrap();
        let mut all = stash(&src).await;
        a.compact().await.unwrap();
        a.gc(&NOW).await.unwrap();
        let mut s = a.session();
        s.set("x/c/2", blob(5)).unwrap();
        s.commit(&mut a, None).await.unwrap();
        all.extend(stash(&src).await);
        let kept = listed_changes(&src).await;
        assert_eq!(kept.len(), 1, "{}", b.name);
        let collected: BTreeSet<ChangeHash> =
            all.keys().filter(|h| !kept.contains(h)).copied().collect();
        assert_eq!(collected.len(), 3, "{}", b.name);

        let d = another(&b);
        let dst = RepoStore::new(d.store.clone(), &d.prefix);
        let r = sync(&src, &dst, &SyncOptions::default()).await.unwrap();
        assert!(r.is_clean(), "{}: {r:?}", b.name);
        assert_eq!(r.initialized, Some(Side::B), "{}", b.name);
        assert_eq!(
            (r.a_to_b.changes, r.a_to_b.snapshots, r.b_to_a.objects()),
            (1, 1, 0),
            "{}: {r:?}",
            b.name
        );
        let c = Repo::open(d.store.clone(), &d.prefix).await.unwrap();
        assert_eq!(c.id(), a.id());
        assert_eq!(c.problems(), vec![], "{}", b.name);
        assert_eq!(c.missing_history(), vec![], "{}", b.name);
        assert_eq!(c.pending(), vec![], "{}", b.name);
        let want = state(&a).await;
        assert!(state(&c).await == want, "{}", b.name);
        assert!(fold_state(&a, &all) == want, "{}", b.name);
        assert!(!want.1.is_empty(), "{}: the history has conflicts", b.name);
        for k in want.0.keys() {
            assert_eq!(
                c.get(k).await.unwrap(),
                a.get(k).await.unwrap(),
                "{}: {k}",
                b.name
            );
        }
        // Nothing collected came back; exactly the live objects were copied.
        assert_eq!(listed_changes(&dst).await, kept, "{}", b.name);
        for (dir_s, dir_d) in [
            (src.layout().blobs_dir(), dst.layout().blobs_dir()),
            (src.layout().manifests_dir(), dst.layout().manifests_dir()),
            (src.layout().archive_dir(), dst.layout().archive_dir()),
            (src.layout().snapshots_dir(), dst.layout().snapshots_dir()),
        ] {
            assert_eq!(
                names_under(&dst, &dir_d).await,
                names_under(&src, &dir_s).await,
                "{}: {dir_d}",
                b.name
            );
        }
        let r = sync(&src, &dst, &SyncOptions::default()).await.unwrap();
        assert!(r.is_clean() && !r.copied_anything(), "{}: {r:?}", b.name);
    }
}

// ---------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------

async fn one_change(repo: &mut Repo, attr: &str) -> ChangeHash {
    let mut s = repo.session();
    s.create_group("", Default::default()).unwrap();
    s.set_attr("", attr, "1".into()).unwrap();
    s.commit(repo, None).await.unwrap().unwrap()
}

fn mismatch_hint(r: crzarr::Result<SyncReport>) -> String {
    match r {
        Err(Error::RepoMismatch {
            a_id, b_id, hint, ..
        }) => {
            assert_ne!(a_id, b_id);
            hint
        }
        other => panic!("expected RepoMismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn a_side_without_a_repository_becomes_a_replica_of_the_other() {
    let (sa, sb, sc) = (mem(), mem(), mem());
    let mut a = Repo::init(sa.clone(), PREFIX).await.unwrap();
    one_change(&mut a, "k").await;
    let (ba, bb, bc) = (bucket(&sa), bucket(&sb), bucket(&sc));
    // Neither side is a repository; nor may a pull create the source.
    assert!(matches!(
        sync(&bb, &bc, &SyncOptions::default()).await,
        Err(Error::NotARepo { .. })
    ));
    assert!(matches!(
        sync(&ba, &bb, &opts(Direction::Pull)).await,
        Err(Error::NotARepo { .. })
    ));
    assert!(!exists(&sb, &layout().marker()).await);

    let r = sync(&ba, &bb, &opts(Direction::Push)).await.unwrap();
    assert_eq!(r.initialized, Some(Side::B));
    assert_eq!(r.repo_id, a.id().to_string());
    let b = Repo::open(sb.clone(), PREFIX).await.unwrap();
    assert_eq!(b.id(), a.id());
    assert!(state(&b).await == state(&a).await);

    // The same from the other side: a pulls into an empty c... c is side A here.
    let r = sync(&bc, &ba, &opts(Direction::Pull)).await.unwrap();
    assert_eq!(r.initialized, Some(Side::A));
    let c = Repo::open(sc.clone(), PREFIX).await.unwrap();
    assert_eq!(c.id(), a.id());
    assert!(state(&c).await == state(&a).await);
}

#[tokio::test]
async fn different_repositories_are_refused_unless_the_empty_one_is_forced() {
    let (sa, sb) = (mem(), mem());
    let mut a = Repo::init(sa.clone(), PREFIX).await.unwrap();
    one_change(&mut a, "k").await;
    let b = Repo::init(sb.clone(), PREFIX).await.unwrap();
    assert_ne!(a.id(), b.id());
    let (ba, bb) = (bucket(&sa), bucket(&sb));
    let hint = mismatch_hint(sync(&ba, &bb, &SyncOptions::default()).await);
    assert!(hint.contains("--force"), "{hint}");
    assert!(listed_changes(&bb).await.is_empty(), "nothing copied");
    assert_eq!(Repo::open(sb.clone(), PREFIX).await.unwrap().id(), b.id());

    let force = SyncOptions {
        force: true,
        ..SyncOptions::default()
    };
    let r = sync(&ba, &bb, &force).await.unwrap();
    assert_eq!(r.initialized, Some(Side::B));
    assert_eq!(r.a_to_b.changes, 1, "{r:?}");
    let b = Repo::open(sb.clone(), PREFIX).await.unwrap();
    assert_eq!(b.id(), a.id());
    assert!(state(&b).await == state(&a).await);

    // Both hold changes: force changes nothing.
    let sc = mem();
    let mut c = Repo::init(sc.clone(), PREFIX).await.unwrap();
    one_change(&mut c, "other").await;
    let bc = bucket(&sc);
    let hint = mismatch_hint(sync(&ba, &bc, &force).await);
    assert!(hint.contains("both hold changes"), "{hint}");
    assert_eq!(Repo::open(sc.clone(), PREFIX).await.unwrap().id(), c.id());
    assert_eq!(listed_changes(&bc).await.len(), 1);
    assert_eq!(listed_changes(&ba).await.len(), 1);

    // The empty side is A: re-identified when something flows to it.
    let se = mem();
    Repo::init(se.clone(), PREFIX).await.unwrap();
    let be = bucket(&se);
    let hint = mismatch_hint(sync(&be, &ba, &opts(Direction::Push)).await);
    assert!(!hint.contains("both hold changes"), "{hint}");
    let r = sync(&be, &ba, &force).await.unwrap();
    assert_eq!(r.initialized, Some(Side::A));
    assert_eq!(Repo::open(se.clone(), PREFIX).await.unwrap().id(), a.id());
    assert_eq!(r.b_to_a.changes, 1, "{r:?}");
}

// ---------------------------------------------------------------------------
// One way only; the pull-commit-push flow
// ---------------------------------------------------------------------------

#[tokio::test]
async fn push_and_pull_move_one_way_only() {
    let (sa, sb) = (mem(), mem());
    let mut a = Repo::init(sa.clone(), PREFIX).await.unwrap();
    one_change(&mut a, "base").await;
    let (ba, bb) = (bucket(&sa), bucket(&sb));
    sync(&ba, &bb, &opts(Direction::Push)).await.unwrap();
    let mut b = Repo::open(sb.clone(), PREFIX).await.unwrap();
    let mut s = a.session();
    s.set_attr("", "from_a", "1".into()).unwrap();
    let from_a = s.commit(&mut a, None).await.unwrap().unwrap();
    let mut s = b.session();
    s.set_attr("", "from_b", "1".into()).unwrap();
    let from_b = s.commit(&mut b, None).await.unwrap().unwrap();

    let r = sync(&ba, &bb, &opts(Direction::Push)).await.unwrap();
    assert_eq!((r.a_to_b.changes, r.b_to_a.objects()), (1, 0), "{r:?}");
    assert!(listed_changes(&bb).await.contains(&from_a));
    assert!(!listed_changes(&ba).await.contains(&from_b));

    let r = sync(&ba, &bb, &opts(Direction::Pull)).await.unwrap();
    assert_eq!((r.a_to_b.objects(), r.b_to_a.changes), (0, 1), "{r:?}");
    assert_eq!(listed_changes(&ba).await, listed_changes(&bb).await);
    a.refresh().await.unwrap();
    b.refresh().await.unwrap();
    assert!(state(&a).await == state(&b).await);
}

#[tokio::test]
async fn pull_then_commit_then_push_keeps_the_replica_in_step() {
    let (laptop_store, cluster_store) = (mem(), mem());
    let mut cluster = Repo::init(cluster_store.clone(), PREFIX).await.unwrap();
    one_change(&mut cluster, "base").await;
    let cb = bucket(&cluster_store);
    // A new laptop: its bucket becomes a replica on the first pull... it needs a
    // repository to open, so the first copy is a push from the cluster.
    sync(&cb, &bucket(&laptop_store), &opts(Direction::Push))
        .await
        .unwrap();
    let mut laptop = Repo::open(laptop_store.clone(), PREFIX).await.unwrap();
    let mut s = cluster.session();
    s.set("big/zarr.json", array_meta(&[4], &[2]).to_string())
        .unwrap();
    s.set("big/c/0", blob(7)).unwrap();
    let remote = s.commit(&mut cluster, None).await.unwrap().unwrap();

    let r = laptop
        .sync(&cb, &crzarr::SyncOptions::pull())
        .await
        .unwrap();
    assert_eq!(
        (r.b_to_a.changes, r.b_to_a.blobs, r.a_to_b.objects()),
        (1, 1, 0),
        "{r:?}"
    );
    // A pull through the handle refreshed it: the remote change is applied before editing.
    assert_eq!(laptop.fold().heads(), vec![remote]);
    let mut s = laptop.session();
    s.set("big/c/1", blob(8)).unwrap();
    let mine = s.commit(&mut laptop, None).await.unwrap().unwrap();
    let r = crzarr::sync(laptop.bucket(), &cb, &crzarr::SyncOptions::push())
        .await
        .unwrap();
    assert_eq!(
        (r.a_to_b.changes, r.a_to_b.blobs, r.b_to_a.objects()),
        (1, 1, 0),
        "{r:?}"
    );
    cluster.refresh().await.unwrap();
    assert_eq!(cluster.fold().heads(), vec![mine]);
    assert_eq!(cluster.conflicts().await.unwrap(), vec![]);
    assert!(state(&cluster).await == state(&laptop).await);
    assert_eq!(cluster.get("big/c/1").await.unwrap().unwrap(), blob(8));
    // Repo::sync (both ways) with nothing new copies nothing.
    let r = laptop.sync(&cb, &SyncOptions::default()).await.unwrap();
    assert!(!r.copied_anything(), "{r:?}");
}

// ---------------------------------------------------------------------------
// Partial syncs: a change before its dependency
// ---------------------------------------------------------------------------

/// Copies objects byte for byte (a partial, unverified transport).
async fn copy_raw(from: &Arc<dyn ObjectStore>, to: &Arc<dyn ObjectStore>, keys: &[Path]) {
    for k in keys {
        write(to, k, read(from, k).await).await;
    }
}

#[tokio::test]
async fn a_change_copied_before_its_dependency_waits_and_applies_when_it_arrives() {
    let h = Hist::new(mem()).await;
    let l = layout();
    let marker = l.marker();
    // Partial replicas: one with only `after` (needs `blobbed`), one with the rest.
    let (p1, p2) = (mem(), mem());
    copy_raw(&h.store, &p1, &[marker.clone(), key(&h.after)]).await;
    copy_raw(
        &h.store,
        &p2,
        &[
            marker.clone(),
            key(&h.base),
            key(&h.blobbed),
            key(&h.side),
            l.blob(&h.blob),
        ],
    )
    .await;
    let full = fold_state(&h.repo, &h.changes);
    for order in [[&p1, &p2], [&p2, &p1]] {
        let dst = mem();
        for (i, p) in order.iter().enumerate() {
            let r = sync(&bucket(p), &bucket(&dst), &opts(Direction::Push))
                .await
                .unwrap();
            assert!(r.is_clean(), "{r:?}");
            let d = check_valid(&dst, "destination").await;
            if i == 0 && Arc::ptr_eq(p, &p1) {
                // `after` alone: waiting for `blobbed` (its dep) and `base` (whose
                // array it edits); nothing visible.
                let mut missing = vec![h.base.hash, h.blobbed.hash];
                missing.sort();
                assert_eq!(pending_of(&d), vec![(h.after.hash, missing)]);
                assert_eq!(d.missing_history().len(), 1);
                assert_eq!(d.entries().await.unwrap(), BTreeMap::new());
            }
        }
        let d = check_valid(&dst, "destination").await;
        assert_eq!(d.pending(), vec![]);
        assert_eq!(d.missing_history(), vec![]);
        assert!(state(&d).await == full);
    }
    // A handle that saw `after` pending applies it on refresh once `blobbed` lands.
    let dst = mem();
    sync(&bucket(&p1), &bucket(&dst), &opts(Direction::Push))
        .await
        .unwrap();
    let mut d = Repo::open(dst.clone(), PREFIX).await.unwrap();
    assert_eq!(d.pending().len(), 1);
    let r = d
        .sync(&bucket(&p2), &crzarr::SyncOptions::pull())
        .await
        .unwrap();
    assert_eq!(r.b_to_a.changes, 3, "{r:?}");
    assert_eq!(d.pending(), vec![]);
    assert!(state(&d).await == full);
}

// ---------------------------------------------------------------------------
// Killed syncs
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_sync_killed_after_any_write_leaves_valid_replicas_and_a_rerun_completes() {
    // A source with a collected snapshot (pieces, shards, blobs) and uncovered
    // changes with blobs, synced both ways with a destination that has its own.
    let mut h = Hist::new(mem()).await;
    h.repo.compact().await.unwrap();
    h.repo.gc(&NOW).await.unwrap();
    let mut s = h.repo.session();
    s.set("x/c/2", blob(3)).unwrap();
    s.commit(&mut h.repo, None).await.unwrap();
    h.repo.compact().await.unwrap();
    h.repo.gc(&NOW).await.unwrap();
    let mut s = h.repo.session();
    s.set("x/c/3", blob(4)).unwrap();
    s.set("x/c/0", vec![1u8; 3]).unwrap();
    s.commit(&mut h.repo, None).await.unwrap();
    let setup = || async {
        let src = clone_store(&h.store).await;
        let dst = mem();
        sync(&bucket(&src), &bucket(&dst), &opts(Direction::Push))
            .await
            .unwrap();
        let mut b = Repo::open(dst.clone(), PREFIX).await.unwrap();
        let mut s = b.session();
        s.set("x/c/3", blob(5)).unwrap();
        s.set_attr("", "dst", "1".into()).unwrap();
        s.commit(&mut b, None).await.unwrap();
        // The source moves on after the first copy.
        let mut a = Repo::open(src.clone(), PREFIX).await.unwrap();
        let mut s = a.session();
        s.set("x/c/1", blob(6)).unwrap();
        s.commit(&mut a, None).await.unwrap();
        a.compact().await.unwrap();
        (src, dst)
    };
    // How many writes a whole sync takes.
    let (src, dst) = setup().await;
    let counting = CountingStore::new(dst.clone());
    let counting_src = CountingStore::new(src.clone());
    let r = sync(
        &RepoStore::new(Arc::new(counting_src.clone()), PREFIX),
        &RepoStore::new(Arc::new(counting.clone()), PREFIX),
        &SyncOptions::default(),
    )
    .await
    .unwrap();
    assert!(r.is_clean(), "{r:?}");
    let writes = counting.snapshot().puts + counting_src.snapshot().puts;
    assert!(writes >= 8, "{r:?}");
    let want = state(&Repo::open(src.clone(), PREFIX).await.unwrap()).await;
    assert!(state(&Repo::open(dst.clone(), PREFIX).await.unwrap()).await == want);
    assert_eq!((want.0.len(), want.2.len()), (6, 2), "entries and heads");

    for budget in 0..writes {
        for lose_reply in [false, true] {
            let ctx = format!("killed after {budget} writes, lost reply {lose_reply}");
            let (src, dst) = setup().await;
            // What the whole sync makes of these two (on copies).
            let (src2, dst2) = (clone_store(&src).await, clone_store(&dst).await);
            sync(&bucket(&src2), &bucket(&dst2), &SyncOptions::default())
                .await
                .unwrap();
            let want = state(&Repo::open(src2, PREFIX).await.unwrap()).await;
            let left = Arc::new(AtomicI64::new(budget as i64));
            let r = sync(
                &Faulty::wrap(&src, &left, lose_reply),
                &Faulty::wrap(&dst, &left, lose_reply),
                &SyncOptions::default(),
            )
            .await;
            assert!(matches!(r, Err(Error::Store { .. })), "{ctx}: {r:?}");
            check_valid(&src, &format!("{ctx}: source")).await;
            check_valid(&dst, &format!("{ctx}: destination")).await;
            let r = sync(&bucket(&src), &bucket(&dst), &SyncOptions::default())
                .await
                .unwrap();
            assert!(r.is_clean(), "{ctx}: {r:?}");
            for s in [&src, &dst] {
                let repo = check_valid(s, &ctx).await;
                assert_eq!(repo.pending(), vec![], "{ctx}");
                assert!(state(&repo).await == want, "{ctx}");
            }
            let r = sync(&bucket(&src), &bucket(&dst), &SyncOptions::default())
                .await
                .unwrap();
            assert!(!r.copied_anything(), "{ctx}: {r:?}");
        }
    }
}

/// A copy of every object of an in-memory store.
async fn clone_store(store: &Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    let copy = mem();
    for k in store.list(None).collect_keys().await {
        write(&copy, &k, read(store, &k).await).await;
    }
    copy
}

trait CollectKeys {
    async fn collect_keys(self) -> Vec<Path>;
}

impl CollectKeys for BoxStream<'static, object_store::Result<ObjectMeta>> {
    async fn collect_keys(self) -> Vec<Path> {
        use futures::TryStreamExt;
        self.map_ok(|m| m.location).try_collect().await.unwrap()
    }
}

// ---------------------------------------------------------------------------
// Request counts
// ---------------------------------------------------------------------------

fn summary(c: &RequestCounts) -> (u64, u64, u64, u64, u64) {
    (
        c.lists,
        c.gets,
        c.puts,
        c.heads + c.deletes + c.copies + c.renames + c.multipart,
        c.round_trips,
    )
}

/// Two repositories at prefixes `a` and `b` of one counting store (so one chain of
/// round trips covers both sides); `a` has one inline change, copied to `b`.
async fn counted_pair(compact_b: bool) -> (CountingStore, Repo, RepoStore, RepoStore) {
    let counting = CountingStore::new(mem());
    let store: Arc<dyn ObjectStore> = Arc::new(counting.clone());
    let mut a = Repo::init(store.clone(), "a").await.unwrap();
    let mut s = a.session();
    s.create_group("", Default::default()).unwrap();
    s.create_array("x", &array_meta(&[8], &[2])).unwrap();
    s.commit(&mut a, None).await.unwrap();
    let (ba, bb) = (
        RepoStore::new(store.clone(), "a"),
        RepoStore::new(store.clone(), "b"),
    );
    if compact_b {
        a.compact().await.unwrap();
    }
    sync(&ba, &bb, &SyncOptions::default()).await.unwrap();
    counting.reset();
    (counting, a, ba, bb)
}

#[tokio::test]
async fn a_sync_of_identical_compacted_repositories_is_four_lists_and_two_gets() {
    let (counting, mut a, ba, bb) = counted_pair(true).await;
    assert_eq!(bb.list_snapshots().await.unwrap().0.len(), 1);
    let noop = |what: &'static str| {
        let (counting, ba, bb) = (counting.clone(), ba.clone(), bb.clone());
        async move {
            for direction in [Direction::Both, Direction::Push, Direction::Pull] {
                counting.reset();
                let r = sync(&ba, &bb, &opts(direction)).await.unwrap();
                assert!(r.is_clean() && !r.copied_anything(), "{what}: {r:?}");
                let c = counting.take();
                assert_eq!(summary(&c), (4, 2, 0, 0, 1), "{what} {direction:?}: {c:?}");
            }
        }
    };
    // Same change files and snapshot on both sides.
    noop("compacted").await;
    // Collected on one side only: the other side's covered files are not copied
    // back, which takes that side's snapshot metadata (one GET, one round trip).
    a.gc(&NOW).await.unwrap();
    counting.reset();
    let r = sync(&ba, &bb, &SyncOptions::default()).await.unwrap();
    assert!(r.is_clean() && !r.copied_anything(), "{r:?}");
    let c = counting.take();
    assert_eq!(summary(&c), (4, 3, 0, 0, 2), "collected on one side: {c:?}");
    // Collected on both: identical again.
    let mut b = Repo::open(Arc::new(counting.clone()), "b").await.unwrap();
    b.gc(&NOW).await.unwrap();
    assert!(listed_changes(&ba).await.is_empty() && listed_changes(&bb).await.is_empty());
    noop("compacted and collected").await;
}

#[tokio::test]
async fn a_sync_of_one_new_change_with_a_blob_costs_counted_requests() {
    for compacted in [false, true] {
        let (counting, mut a, ba, bb) = counted_pair(compacted).await;
        let mut s = a.session();
        s.set("x/c/0", blob(1)).unwrap();
        let new = s.commit(&mut a, None).await.unwrap().unwrap();
        let change_bytes = read(ba.store(), &ba.layout().change(&name_of(&a, new)))
            .await
            .len() as u64;
        counting.reset();
        let r = sync(&ba, &bb, &SyncOptions::default()).await.unwrap();
        assert_eq!(
            (r.a_to_b.changes, r.a_to_b.blobs, r.b_to_a.objects()),
            (1, 1, 0),
            "{r:?}"
        );
        let c = counting.take();
        // (LISTs, GETs, PUTs, other, round trips). Round trip 1: both markers and
        // four listings; compacted, then the destination's snapshot metadata (its
        // coverage decides whether the change is new there; the source's snapshot is
        // listed on both sides and not read). Then the change, its blob, the blob's
        // PUT and the change's PUT, one after the other.
        let want = if compacted {
            (4, 5, 2, 0, 6)
        } else {
            (4, 4, 2, 0, 5)
        };
        assert_eq!(summary(&c), want, "compacted={compacted}: {c:?}");
        assert_eq!(c.put_bytes, 5000 + change_bytes, "{c:?}");
        // Identical again: the next sync is round trip 1 alone.
        let r = sync(&ba, &bb, &SyncOptions::default()).await.unwrap();
        assert!(!r.copied_anything(), "{r:?}");
        assert_eq!(summary(&counting.take()), (4, 2, 0, 0, 1));
    }
}

// ---------------------------------------------------------------------------
// Garbage collection under a sync; progress
// ---------------------------------------------------------------------------

#[tokio::test]
async fn what_garbage_collection_removes_under_a_sync_is_skipped_and_the_next_run_copies_it() {
    let mut h = Hist::new(mem()).await;
    h.repo.compact().await.unwrap();
    let mut s = h.repo.session();
    s.set("x/c/2", blob(3)).unwrap();
    s.commit(&mut h.repo, None).await.unwrap();
    // A sync that listed just before a compaction and a GC removed what it listed.
    let l = layout();
    let stale = Faulty::stale(&h.store, &[l.ops_dir(), l.snapshots_dir()]).await;
    h.repo.compact().await.unwrap();
    let gc = h.repo.gc(&NOW).await.unwrap();
    assert!(gc.removed.len() >= 6, "{gc:?}");
    assert!(listed_changes(&bucket(&h.store)).await.is_empty());
    let dst = mem();
    let r = sync(&stale, &bucket(&dst), &opts(Direction::Push))
        .await
        .unwrap();
    // Nothing it listed was there any more: nothing copied, nothing refused.
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.a_to_b.objects(), 0, "{r:?}");
    let d = check_valid(&dst, "destination").await;
    assert_eq!(d.entries().await.unwrap(), BTreeMap::new());
    // The next run copies the snapshot that covers it all.
    let r = sync(&bucket(&h.store), &bucket(&dst), &opts(Direction::Push))
        .await
        .unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!((r.a_to_b.changes, r.a_to_b.snapshots), (0, 1), "{r:?}");
    let d = check_valid(&dst, "destination").await;
    assert!(state(&d).await == state(&h.repo).await);
}

#[tokio::test]
async fn progress_counts_what_is_written_and_ends_complete() {
    // A source with a corrupt blob (a change and a blob refused).
    let corrupt_blob = Hist::new(mem()).await;
    write(
        &corrupt_blob.store,
        &layout().blob(&corrupt_blob.blob),
        blob(9),
    )
    .await;
    // A compacted and collected source with pieces, shards and uncovered changes.
    let mut collected = Hist::new(mem()).await;
    collected.repo.compact().await.unwrap();
    collected.repo.gc(&NOW).await.unwrap();
    let mut s = collected.repo.session();
    s.set("x/c/2", blob(3)).unwrap();
    s.commit(&mut collected.repo, None).await.unwrap();
    collected.repo.compact().await.unwrap();
    collected.repo.gc(&NOW).await.unwrap();
    let mut s = collected.repo.session();
    s.set("x/c/3", blob(4)).unwrap();
    s.commit(&mut collected.repo, None).await.unwrap();
    // The same with a damaged shard: the snapshot is refused part-way.
    let damaged = clone_store(&collected.store).await;
    let shard = keys_under(&bucket(&damaged), &layout().archive_dir()).await;
    damage(&damaged, &Path::from(shard.first().unwrap().as_str())).await;

    for (what, src, clean) in [
        ("corrupt blob", &corrupt_blob.store, false),
        ("collected", &collected.store, true),
        ("damaged shard", &damaged, false),
    ] {
        for concurrency in [1, 32] {
            let progress = Arc::new(Progress::new());
            let o = SyncOptions {
                direction: Direction::Push,
                concurrency,
                progress: Some(progress.clone()),
                ..SyncOptions::default()
            };
            let dst = mem();
            let r = sync(&bucket(src), &bucket(&dst), &o).await.unwrap();
            assert_eq!(r.is_clean(), clean, "{what}: {r:?}");
            let objects = r.a_to_b.objects();
            assert!(objects > 0, "{what}: {r:?}");
            assert_eq!(progress.objects(), (objects, objects), "{what}: {r:?}");
            assert_eq!(
                progress.bytes(),
                (r.a_to_b.bytes, r.a_to_b.bytes),
                "{what}: {r:?}"
            );
        }
    }
}

/// One laptop (local disk) and one bucket (the loopback S3 server) edit concurrently and
/// sync both ways: pushes and pulls in each direction, then a compaction and GC on the S3
/// side that the laptop picks up.
#[tokio::test]
async fn a_local_disk_replica_and_an_s3_replica_sync_both_ways() {
    let Some(s3) = crate::common::s3() else {
        return;
    };
    let disk = crate::common::local();
    let s3b = RepoStore::new(s3.store.clone(), &s3.prefix);
    let diskb = RepoStore::new(disk.store.clone(), &disk.prefix);

    let mut laptop = Repo::init(disk.store.clone(), &disk.prefix).await.unwrap();
    let mut s = laptop.session();
    s.create_group("", Default::default()).unwrap();
    s.create_array("x", &array_meta(&[8], &[2])).unwrap();
    s.set("x/c/0", blob(1)).unwrap();
    s.commit(&mut laptop, None).await.unwrap();
    // local -> S3 (creates the S3 replica).
    let r = crzarr::sync(laptop.bucket(), &s3b, &crzarr::SyncOptions::push())
        .await
        .unwrap();
    assert_eq!(r.initialized, Some(Side::B), "{r:?}");
    assert_eq!((r.a_to_b.changes, r.a_to_b.blobs), (1, 1), "{r:?}");
    let mut cloud = Repo::open(s3.store.clone(), &s3.prefix).await.unwrap();
    assert!(state(&cloud).await == state(&laptop).await);

    // Concurrent edits on both sides.
    let mut s = cloud.session();
    s.set("x/c/1", blob(2)).unwrap();
    s.set_attr("x", "units", "K".into()).unwrap();
    s.commit(&mut cloud, None).await.unwrap();
    let mut s = laptop.session();
    s.set("x/c/2", blob(3)).unwrap();
    s.set_attr("x", "units", "C".into()).unwrap();
    s.commit(&mut laptop, None).await.unwrap();

    // S3 -> local, then local -> S3.
    let r = laptop
        .sync(&s3b, &crzarr::SyncOptions::pull())
        .await
        .unwrap();
    assert_eq!(
        (r.b_to_a.changes, r.b_to_a.blobs, r.a_to_b.objects()),
        (1, 1, 0),
        "{r:?}"
    );
    let r = crzarr::sync(laptop.bucket(), &s3b, &crzarr::SyncOptions::push())
        .await
        .unwrap();
    assert_eq!((r.a_to_b.changes, r.a_to_b.blobs), (1, 1), "{r:?}");
    cloud.refresh().await.unwrap();
    let want = state(&laptop).await;
    assert!(state(&cloud).await == want);
    assert_eq!(
        want.1.len(),
        1,
        "the attribute conflict is shown on both: {:?}",
        want.1
    );
    for k in ["x/c/0", "x/c/1", "x/c/2"] {
        assert_eq!(
            cloud.get(k).await.unwrap(),
            laptop.get(k).await.unwrap(),
            "{k}"
        );
    }

    // Compaction and GC on S3; the laptop takes the snapshot, nothing goes back.
    cloud.compact().await.unwrap();
    cloud.gc(&NOW).await.unwrap();
    let r = sync(&s3b, &diskb, &opts(Direction::Both)).await.unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!((r.a_to_b.snapshots, r.b_to_a.objects()), (1, 0), "{r:?}");
    laptop.refresh().await.unwrap();
    assert!(state(&laptop).await == want);
    let fresh = Repo::open(disk.store.clone(), &disk.prefix).await.unwrap();
    assert_eq!(fresh.problems(), vec![]);
    assert!(state(&fresh).await == want);
    let r = sync(&diskb, &s3b, &opts(Direction::Both)).await.unwrap();
    assert!(r.is_clean() && !r.copied_anything(), "{r:?}");
}
