//! Sync throughput against a raw object copy of the same objects at the same
//! concurrency, and the cost of a sync that has nothing to do.
//!
//! 1. Throughput. A source repository holds a genesis change (root group, 1-d `uint8`
//!    array `x` whose chunks are `S` bytes) and N changes by 8 writers taking turns (a
//!    linear history), each writing K new chunks of S bytes. Change files and blobs
//!    are built and PUT directly. Workloads:
//!    - `blobs`: 2000 changes x 4 chunks x 64 KiB: 8000 blobs (500 MiB) and 2001
//!      change files;
//!    - `inline`: 10,000 changes x 4 chunks x 1 KiB: every chunk travels inline, so
//!      10,001 change files of about 4 KiB and no blob.
//!
//!    Stores: `InMemory` behind `object_store::throttle::ThrottledStore` waiting
//!    20 ms per GET, PUT and LIST (a cloud round trip; no bandwidth limit), and
//!    `LocalFileSystem` temp dirs (no latency injected). The destination is a fresh,
//!    empty store of the same kind for every run. On local disk, dirty pages are
//!    written back before every run, and temp dirs are deleted only when the process
//!    ends (see `Store::retire`: deleting them between runs made later runs time
//!    ext4's inode allocator). Two ways to fill it, both with
//!    `CONCURRENCY` (32, the CLI default) requests in flight:
//!    - raw: one LIST of the source's `.crdt/`, then every object GET then PUT, with
//!      `buffer_unordered(CONCURRENCY)`: what a copier that neither verifies nor
//!      orders its writes costs;
//!    - sync: `crzarr::ops::sync::sync` (`Direction::Push`), which also checks every
//!      object against its name and writes in writer order (a change's blobs before
//!      its file), so a reader of the destination never sees part of a change.
//!
//!    Both copy the same objects (the marker, every change file and blob); this is
//!    checked. Throughput is those objects and bytes over the median wall time, and
//!    the ratio is sync throughput / raw throughput (= raw median / sync median).
//!    Goal: >= 0.8.
//! 2. No-op sync (`Direction::Both`) of a 100k-change repository compacted on one
//!    side and copied to the other (both then hold the same change files and
//!    snapshot), before and after garbage collection on both sides removed the
//!    change files. The same two stores. The four listings sync starts with are also
//!    timed alone, to show how much of a no-op they are.
//!
//! Each measurement starts with one extra run through `CountingStore` (not timed):
//! requests, bytes and sequential round trips. Both buckets are counted through one
//! `CountingStore` (over a store that routes `src/...` and `dst/...` keys to the two
//! stores), so round trips span both sides: a GET from the source followed by a PUT
//! to the destination is 2. Then `runs` timed runs (raw and sync alternating); the
//! medians are printed. With 20 ms per request, the wall time is about round trips x
//! 20 ms; on `LocalFileSystem` completions are real, so round trips are only a
//! rough guide there.
//!
//! `cargo bench --bench sync` (about 12 minutes, most of it the throttled runs at
//! 13-15 s each; up to 8 GB in temp dirs until it ends). Timings on local disk move
//! with other load on the machine: the 1-minute load average is printed at the end.
//! Without `--bench` (as under `cargo test --benches`) it runs at a tiny scale with
//! 1 ms of latency, once.

use async_trait::async_trait;
use bytes::Bytes;
use crzarr::format::change::{Change, ChunkData, INLINE_MAX, Op, OpRef};
use crzarr::format::ids::{ActorId, BlobHash, ChangeHash, Hlc, now_millis};
use crzarr::format::layout::{ChangeName, Layout};
use crzarr::io::counting::{CountingStore, RequestCounts};
use crzarr::io::store::RepoStore;
use crzarr::ops::gc::GcOptions;
use crzarr::ops::sync::{Direction, Side, SyncOptions, SyncReport, sync};
use crzarr::repo::Repo;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::{Path, PathPart};
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Repository prefix of the source and of every destination (see [`Pair`]).
const SRC: &str = "src";
const DST: &str = "dst";

/// Requests in flight, for sync and for the raw copy: the CLI default.
const CONCURRENCY: usize = crzarr::io::store::DEFAULT_CONCURRENCY;

/// Writers taking turns in the source's history.
const WRITERS: usize = 8;

// ---------------------------------------------------------------------------------
// Scale.

/// A source repository: `changes` changes of `chunks` new chunks of `chunk_bytes`.
struct Workload {
    name: &'static str,
    changes: usize,
    chunks: usize,
    chunk_bytes: usize,
}

impl Workload {
    fn describe(&self) -> String {
        let kind = if self.chunk_bytes > INLINE_MAX {
            "blobs"
        } else {
            "inline"
        };
        format!(
            "{} changes x {} chunks x {} ({kind})",
            self.changes,
            self.chunks,
            size(self.chunk_bytes as u64)
        )
    }
}

/// Sizes: full under `cargo bench`, tiny otherwise (a smoke run).
struct Scale {
    workloads: &'static [Workload],
    /// Timed runs per measurement (after one counted run).
    runs: usize,
    /// Per-request latency of the throttled store.
    latency: Duration,
    /// Changes in the repository of the no-op sync.
    noop_changes: usize,
}

const FULL: Scale = Scale {
    workloads: &[
        Workload {
            name: "blobs",
            changes: 2000,
            chunks: 4,
            chunk_bytes: 64 << 10,
        },
        Workload {
            name: "inline",
            changes: 10_000,
            chunks: 4,
            chunk_bytes: 1 << 10,
        },
    ],
    runs: 5,
    latency: Duration::from_millis(20),
    noop_changes: 100_000,
};

const SMOKE: Scale = Scale {
    workloads: &[
        Workload {
            name: "blobs",
            changes: 20,
            chunks: 2,
            chunk_bytes: 8 << 10,
        },
        Workload {
            name: "inline",
            changes: 50,
            chunks: 2,
            chunk_bytes: 64,
        },
    ],
    runs: 1,
    latency: Duration::from_millis(1),
    noop_changes: 200,
};

fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n.is_multiple_of(1 << 20) => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n.is_multiple_of(1 << 10) => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

fn label(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

// ---------------------------------------------------------------------------------
// Stores.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// `InMemory` behind `ThrottledStore`.
    Throttled,
    /// `LocalFileSystem` in a temp dir.
    Local,
}

impl Backend {
    fn name(self, scale: &Scale) -> String {
        match self {
            Backend::Throttled => format!("memory+{}ms", scale.latency.as_millis()),
            Backend::Local => "local disk".into(),
        }
    }
}

/// One bucket's store, and what keeps it alive.
struct Store {
    store: Arc<dyn ObjectStore>,
    throttle: Option<Arc<ThrottledStore<InMemory>>>,
    _dir: Option<tempfile::TempDir>,
}

impl Store {
    fn new(backend: Backend, latency: Duration) -> Store {
        match backend {
            Backend::Throttled => {
                let t = Arc::new(ThrottledStore::new(
                    InMemory::new(),
                    ThrottleConfig::default(),
                ));
                let s = Store {
                    store: t.clone(),
                    throttle: Some(t),
                    _dir: None,
                };
                s.set_latency(latency);
                s
            }
            Backend::Local => {
                let dir = tempfile::tempdir().expect("temp dir");
                Store {
                    store: Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("local")),
                    throttle: None,
                    _dir: Some(dir),
                }
            }
        }
    }

    /// Done with: a store in memory goes now, a temp dir stays until the end of the
    /// process. Deleting trees of thousands of files makes ext4 skip the recently
    /// deleted inodes on every create that follows, for minutes (`recently_deleted`
    /// in `ext4_create`: 2 to 4 times the system time of a copy, depending on where
    /// the destination's directories land), which would time the allocator, not the
    /// copier.
    fn retire(self, kept: &mut Vec<Store>) {
        if self._dir.is_some() {
            kept.push(self);
        }
    }

    /// Before a timed run on local disk: writes dirty pages back (the `sync` command),
    /// so that no run pays for the previous one's writeback.
    fn settle(&self) {
        if self._dir.is_some() {
            let _ = std::process::Command::new("sync").status();
        }
    }

    /// Sets the injected latency (a no-op on local disk); zero while building.
    fn set_latency(&self, d: Duration) {
        if let Some(t) = &self.throttle {
            t.config_mut(|c| {
                c.wait_get_per_call = d;
                c.wait_put_per_call = d;
                c.wait_list_per_call = d;
                c.wait_list_with_delimiter_per_call = d;
                c.wait_delete_per_call = d;
            });
        }
    }
}

/// Routes keys under `src/` to one store and everything else to another, so that one
/// `CountingStore` over it sees both sides of a copy (round trips then span both).
#[derive(Debug)]
struct Pair {
    src: Arc<dyn ObjectStore>,
    dst: Arc<dyn ObjectStore>,
}

impl Pair {
    fn pick(&self, p: &Path) -> &Arc<dyn ObjectStore> {
        if p.parts().next().is_some_and(|part| part.as_ref() == SRC) {
            &self.src
        } else {
            &self.dst
        }
    }

    fn both<T: Send + 'static>(
        &self,
        f: impl Fn(&Arc<dyn ObjectStore>) -> BoxStream<'static, T>,
    ) -> BoxStream<'static, T> {
        f(&self.src).chain(f(&self.dst)).boxed()
    }

    fn same_side(&self, from: &Path, to: &Path) -> object_store::Result<&Arc<dyn ObjectStore>> {
        let s = self.pick(from);
        if Arc::ptr_eq(s, self.pick(to)) {
            Ok(s)
        } else {
            Err(object_store::Error::NotImplemented {
                operation: "copy or rename across the two stores".into(),
                implementer: "Pair".into(),
            })
        }
    }
}

impl fmt::Display for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pair({} | {})", self.src, self.dst)
    }
}

#[async_trait]
impl ObjectStore for Pair {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.pick(location).put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.pick(location).put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.pick(location).get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let (src, dst) = (self.src.clone(), self.dst.clone());
        locations
            .and_then(move |p| {
                let pair = Pair {
                    src: src.clone(),
                    dst: dst.clone(),
                };
                async move {
                    pair.pick(&p).delete(&p).await?;
                    Ok(p)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match prefix {
            Some(p) => self.pick(p).list(Some(p)),
            None => self.both(|s| s.list(None)),
        }
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match prefix {
            Some(p) => self.pick(p).list_with_offset(Some(p), offset),
            None => self.both(|s| s.list_with_offset(None, offset)),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        match prefix {
            Some(p) => self.pick(p).list_with_delimiter(Some(p)).await,
            None => {
                let (mut a, b) = futures::try_join!(
                    self.src.list_with_delimiter(None),
                    self.dst.list_with_delimiter(None)
                )?;
                a.common_prefixes.extend(b.common_prefixes);
                a.objects.extend(b.objects);
                Ok(a)
            }
        }
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.same_side(from, to)?.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.same_side(from, to)?
            .rename_opts(from, to, options)
            .await
    }
}

/// One store over both sides, counted, for the counted run.
fn counted_pair(src: &Store, dst: &Store) -> (Arc<dyn ObjectStore>, CountingStore) {
    let counting = CountingStore::new(Arc::new(Pair {
        src: src.store.clone(),
        dst: dst.store.clone(),
    }));
    (Arc::new(counting.clone()), counting)
}

// ---------------------------------------------------------------------------------
// Building the source.

fn array_doc(chunks: u64, chunk_bytes: u64) -> serde_json::Value {
    serde_json::json!({
        "zarr_format": 3, "node_type": "array", "shape": [chunks * chunk_bytes],
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [chunk_bytes]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0, "codecs": [{"name": "bytes"}]
    })
}

/// Chunk `g`'s bytes: distinct for every `g` (identical blobs would be stored once).
fn chunk(g: u64, len: usize) -> Bytes {
    let mut v = vec![(g % 251) as u8; len];
    let tag = g.to_le_bytes();
    let n = tag.len().min(len);
    v[..n].copy_from_slice(&tag[..n]);
    Bytes::from(v)
}

/// Writes the workload's repository at `SRC` on `store` (which should have no
/// latency while this runs).
async fn build_source(store: &Arc<dyn ObjectStore>, w: &Workload) {
    let repo = Repo::init(store.clone(), SRC).await.expect("init").id();
    let layout = Layout::new(SRC);
    let actors: Vec<ActorId> = (0..WRITERS).map(|_| ActorId::generate()).collect();
    let mut seqs = [0u64; WRITERS];
    // A day ago: stamps stay in the past however many changes follow.
    let base = Hlc((now_millis() - 86_400_000) << 16);
    let total_chunks = (w.changes * w.chunks) as u64;
    let mut prev: Option<ChangeHash> = None;
    let mut array = None;
    let mut pending: Vec<(Path, Bytes)> = Vec::new();
    for i in 0..=w.changes {
        let a = i % WRITERS;
        seqs[a] += 1;
        let ops = match array {
            None => vec![
                Op::CreateGroup {
                    path: String::new(),
                    attributes: vec![],
                },
                Op::CreateArray {
                    path: "x".into(),
                    metadata: crzarr::zarr::meta::canonical_json(&array_doc(
                        total_chunks,
                        w.chunk_bytes as u64,
                    )),
                    attributes: vec![],
                },
            ],
            Some(array) => (0..w.chunks)
                .map(|j| {
                    let g = ((i - 1) * w.chunks + j) as u64;
                    let bytes = chunk(g, w.chunk_bytes);
                    let data = if bytes.len() <= INLINE_MAX {
                        ChunkData::Inline(bytes.to_vec())
                    } else {
                        let hash = BlobHash::of(&bytes);
                        let len = bytes.len() as u64;
                        pending.push((layout.blob(&hash), bytes));
                        ChunkData::Blob { hash, len }
                    };
                    Op::SetChunk {
                        node: array,
                        key: format!("c/{g}"),
                        data,
                        observed: vec![],
                    }
                })
                .collect(),
        };
        let hlc = Hlc(base.0 + i as u64);
        let change = Change {
            repo,
            actor: actors[a],
            seq: seqs[a],
            deps: prev.into_iter().collect(),
            hlc,
            wall_ms: hlc.millis(),
            message: None,
            ops,
        };
        let bytes = change.encode();
        let hash = ChangeHash::of(&bytes);
        let name = ChangeName {
            hash,
            actor: actors[a],
            seq: seqs[a],
        };
        pending.push((layout.change(&name), Bytes::from(bytes)));
        if array.is_none() {
            array = Some(OpRef::Change(hash, 1));
        }
        prev = Some(hash);
        if pending.len() >= 256 {
            put_all(store, std::mem::take(&mut pending)).await;
        }
    }
    put_all(store, pending).await;
}

async fn put_all(store: &Arc<dyn ObjectStore>, objects: Vec<(Path, Bytes)>) {
    futures::stream::iter(objects)
        .map(|(key, bytes)| async move {
            store
                .put(&key, PutPayload::from(bytes))
                .await
                .expect("put")
        })
        .buffer_unordered(64)
        .for_each(|_| async {})
        .await;
}

/// Every object under `<prefix>/.crdt/`, by key relative to the prefix, with sizes.
async fn objects_under(store: &Arc<dyn ObjectStore>, prefix: &str) -> BTreeMap<String, u64> {
    let dir = Path::from_iter([prefix, ".crdt"]);
    let listed: Vec<ObjectMeta> = store.list(Some(&dir)).try_collect().await.expect("list");
    listed
        .into_iter()
        .map(|m| {
            let key = m.location.as_ref()[prefix.len()..].to_string();
            (key, m.size)
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// The two copiers.

/// Lists the source's `.crdt/` and copies every object (GET, then PUT) with
/// `concurrency` copies in flight. Returns the objects copied.
async fn raw_copy(src: Arc<dyn ObjectStore>, dst: Arc<dyn ObjectStore>, concurrency: usize) -> u64 {
    let dir = Path::from_iter([SRC, ".crdt"]);
    let listed: Vec<ObjectMeta> = src.list(Some(&dir)).try_collect().await.expect("list");
    futures::stream::iter(listed)
        .map(|m| {
            let (src, dst) = (src.clone(), dst.clone());
            async move {
                let bytes = src
                    .get(&m.location)
                    .await
                    .expect("get")
                    .bytes()
                    .await
                    .expect("body");
                let to = Path::from_iter(
                    std::iter::once(PathPart::from(DST)).chain(m.location.parts().skip(1)),
                );
                dst.put(&to, PutPayload::from(bytes)).await.expect("put");
            }
        })
        .buffer_unordered(concurrency)
        .fold(0u64, |n, ()| async move { n + 1 })
        .await
}

/// `crzarr::ops::sync::sync` from `SRC` on `src` to `DST` on `dst`.
async fn sync_copy(
    src: Arc<dyn ObjectStore>,
    dst: Arc<dyn ObjectStore>,
    direction: Direction,
    concurrency: usize,
) -> SyncReport {
    let opts = SyncOptions {
        direction,
        concurrency,
        ..SyncOptions::default()
    };
    let report = sync(&RepoStore::new(src, SRC), &RepoStore::new(dst, DST), &opts)
        .await
        .expect("sync");
    assert!(report.is_clean(), "refused: {:?}", report.refused);
    report
}

/// Objects a sync into an empty destination wrote (the marker included).
fn synced_objects(r: &SyncReport) -> u64 {
    assert_eq!(r.initialized, Some(Side::B), "destination created");
    r.a_to_b.objects() + 1
}

// ---------------------------------------------------------------------------------
// Measurements.

fn median(times: &[Duration]) -> Duration {
    let mut v = times.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// One method's figures for one workload and store.
struct Measured {
    counts: RequestCounts,
    times: Vec<Duration>,
}

struct ThroughputRow {
    workload: String,
    store: String,
    objects: u64,
    bytes: u64,
    raw: Measured,
    sync: Measured,
}

impl ThroughputRow {
    fn ratio(&self) -> f64 {
        median(&self.raw.times).as_secs_f64() / median(&self.sync.times).as_secs_f64()
    }
}

async fn throughput(
    backend: Backend,
    w: &Workload,
    scale: &Scale,
    kept: &mut Vec<Store>,
) -> ThroughputRow {
    let t = Instant::now();
    let src = Store::new(backend, Duration::ZERO);
    build_source(&src.store, w).await;
    let source = objects_under(&src.store, SRC).await;
    src.set_latency(scale.latency);
    let objects = source.len() as u64;
    let bytes: u64 = source.values().sum();
    eprintln!(
        "{} on {}: built {objects} objects, {:.1} MB, in {:.1} s",
        w.name,
        backend.name(scale),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    // Counted runs (not timed); the destinations must match the source.
    src.settle();
    let dst = Store::new(backend, scale.latency);
    let (store, counting) = counted_pair(&src, &dst);
    assert_eq!(raw_copy(store.clone(), store, CONCURRENCY).await, objects);
    let raw_counts = counting.take();
    assert_eq!(objects_under(&dst.store, DST).await, source, "raw copy");
    dst.retire(kept);
    src.settle();
    let dst = Store::new(backend, scale.latency);
    let (store, counting) = counted_pair(&src, &dst);
    let report = sync_copy(store.clone(), store, Direction::Push, CONCURRENCY).await;
    let sync_counts = counting.take();
    assert_eq!(synced_objects(&report), objects);
    assert_eq!(objects_under(&dst.store, DST).await, source, "sync");
    dst.retire(kept);

    let mut raw_times = Vec::new();
    let mut sync_times = Vec::new();
    for _ in 0..scale.runs {
        src.settle();
        let dst = Store::new(backend, scale.latency);
        let t = Instant::now();
        let n = raw_copy(src.store.clone(), dst.store.clone(), CONCURRENCY).await;
        raw_times.push(t.elapsed());
        assert_eq!(n, objects);
        dst.retire(kept);

        src.settle();
        let dst = Store::new(backend, scale.latency);
        let t = Instant::now();
        let r = sync_copy(
            src.store.clone(),
            dst.store.clone(),
            Direction::Push,
            CONCURRENCY,
        )
        .await;
        sync_times.push(t.elapsed());
        assert_eq!(synced_objects(&r), objects);
        dst.retire(kept);
    }
    src.retire(kept);
    ThroughputRow {
        workload: w.describe(),
        store: backend.name(scale),
        objects,
        bytes,
        raw: Measured {
            counts: raw_counts,
            times: raw_times,
        },
        sync: Measured {
            counts: sync_counts,
            times: sync_times,
        },
    }
}

struct NoopRow {
    store: String,
    state: &'static str,
    listed: usize,
    m: Measured,
    /// The four listings a sync starts with, alone (both sides at once).
    lists: Vec<Duration>,
}

/// The listings of changes and snapshots of both sides, at once, as sync makes them.
async fn list_both(src: &Store, dst: &Store) -> usize {
    let (a, b) = (
        RepoStore::new(src.store.clone(), SRC),
        RepoStore::new(dst.store.clone(), DST),
    );
    let (ca, sa, cb, sb) = futures::join!(
        a.list_changes(),
        a.list_snapshots(),
        b.list_changes(),
        b.list_snapshots()
    );
    ca.expect("list").0.len()
        + sa.expect("list").0.len()
        + cb.expect("list").0.len()
        + sb.expect("list").0.len()
}

async fn list_runs(src: &Store, dst: &Store, runs: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        std::hint::black_box(list_both(src, dst).await);
        times.push(t.elapsed());
    }
    times
}

/// `runs` no-op syncs (both ways) after one counted run.
async fn noop_runs(src: &Store, dst: &Store, runs: usize) -> Measured {
    let (store, counting) = counted_pair(src, dst);
    let r = sync_copy(store.clone(), store, Direction::Both, CONCURRENCY).await;
    assert!(!r.copied_anything(), "nothing to copy: {r:?}");
    let counts = counting.take();
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let r = sync_copy(
            src.store.clone(),
            dst.store.clone(),
            Direction::Both,
            CONCURRENCY,
        )
        .await;
        times.push(t.elapsed());
        assert!(!r.copied_anything());
    }
    Measured { counts, times }
}

/// A compacted repository on both sides, before and after GC on both.
async fn noop(backend: Backend, scale: &Scale) -> Vec<NoopRow> {
    let n = scale.noop_changes;
    let t = Instant::now();
    let src = Store::new(backend, Duration::ZERO);
    let w = Workload {
        name: "noop",
        changes: n - 1,
        chunks: 1,
        chunk_bytes: 16,
    };
    build_source(&src.store, &w).await;
    let mut repo = Repo::open(src.store.clone(), SRC).await.expect("open");
    let compacted = repo.compact().await.expect("compact");
    assert_eq!(compacted.covered, n as u64);
    drop(repo);
    let dst = Store::new(backend, Duration::ZERO);
    let r = sync_copy(
        src.store.clone(),
        dst.store.clone(),
        Direction::Push,
        CONCURRENCY,
    )
    .await;
    assert_eq!((r.a_to_b.changes, r.a_to_b.snapshots), (n as u64, 1));
    eprintln!(
        "no-op on {}: built, compacted and copied {} changes in {:.1} s",
        backend.name(scale),
        label(n),
        t.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    src.set_latency(scale.latency);
    dst.set_latency(scale.latency);
    rows.push(NoopRow {
        store: backend.name(scale),
        state: "compacted",
        listed: n,
        m: noop_runs(&src, &dst, scale.runs).await,
        lists: list_runs(&src, &dst, scale.runs).await,
    });

    src.set_latency(Duration::ZERO);
    dst.set_latency(Duration::ZERO);
    let zero = GcOptions {
        older_than: Duration::ZERO,
        dry_run: false,
        force: true,
    };
    for (s, prefix) in [(&src, SRC), (&dst, DST)] {
        let mut repo = Repo::open(s.store.clone(), prefix).await.expect("open");
        repo.gc(&zero).await.expect("gc");
        let left = RepoStore::new(s.store.clone(), prefix)
            .list_changes()
            .await
            .expect("list")
            .0
            .len();
        assert_eq!(left, 0, "GC removed every covered change file");
    }
    src.set_latency(scale.latency);
    dst.set_latency(scale.latency);
    rows.push(NoopRow {
        store: backend.name(scale),
        state: "compacted+GC",
        listed: 0,
        m: noop_runs(&src, &dst, scale.runs).await,
        lists: list_runs(&src, &dst, scale.runs).await,
    });
    rows
}

// ---------------------------------------------------------------------------------
// Report.

fn print_throughput(rows: &[ThroughputRow], scale: &Scale) {
    println!(
        "\nsync vs raw copy into an empty destination, {CONCURRENCY} requests in flight, \
         median of {} runs (requests: one counted run):",
        scale.runs
    );
    println!(
        "{:<38} {:<12} {:<5} {:>9} {:>10} {:>8} {:>6} {:>6} {:>5} {:>11} {:>6}",
        "workload",
        "store",
        "how",
        "median s",
        "objects/s",
        "MB/s",
        "PUTs",
        "GETs",
        "LISTs",
        "round trips",
        "ratio"
    );
    for r in rows {
        for (how, m) in [("raw", &r.raw), ("sync", &r.sync)] {
            let s = median(&m.times).as_secs_f64();
            let c = m.counts;
            let ratio = if how == "sync" {
                format!("{:.2}", r.ratio())
            } else {
                String::new()
            };
            println!(
                "{:<38} {:<12} {:<5} {:>9.3} {:>10.0} {:>8.1} {:>6} {:>6} {:>5} {:>11} {:>6}",
                r.workload,
                r.store,
                how,
                s,
                r.objects as f64 / s,
                r.bytes as f64 / 1e6 / s,
                c.puts,
                c.gets + c.heads,
                c.lists,
                c.round_trips,
                ratio
            );
        }
    }
    println!(
        "objects and bytes copied: the source's marker, change files and blobs (both ways \
         write the same set; checked). ratio = sync throughput / raw throughput; goal >= 0.8."
    );
    for r in rows {
        let runs = |m: &Measured| {
            m.times
                .iter()
                .map(|t| format!("{:.3}", t.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "  {} on {}: {} objects, {:.1} MB; runs (s) raw [{}] sync [{}]",
            r.workload,
            r.store,
            r.objects,
            r.bytes as f64 / 1e6,
            runs(&r.raw),
            runs(&r.sync)
        );
    }
}

fn print_noop(rows: &[NoopRow], scale: &Scale) {
    println!(
        "\nno-op sync (both ways) of {} changes compacted on both sides, median of {} runs:",
        label(scale.noop_changes),
        scale.runs
    );
    println!(
        "{:<12} {:<14} {:>18} {:>10} {:>15} {:>6} {:>6} {:>6} {:>11}",
        "store",
        "state",
        "change files",
        "median ms",
        "its LISTs, ms",
        "LISTs",
        "GETs",
        "PUTs",
        "round trips"
    );
    for r in rows {
        let c = r.m.counts;
        println!(
            "{:<12} {:<14} {:>18} {:>10.3} {:>15.3} {:>6} {:>6} {:>6} {:>11}",
            r.store,
            r.state,
            format!("{} each side", r.listed),
            median(&r.m.times).as_secs_f64() * 1e3,
            median(&r.lists).as_secs_f64() * 1e3,
            c.lists,
            c.gets + c.heads,
            c.puts,
            c.round_trips
        );
    }
}

/// The 1-minute load average: other work on the machine skews the timings.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let scale = if args.iter().any(|a| a == "--bench") {
        &FULL
    } else {
        &SMOKE
    };
    // Multi-threaded, as the CLI runs.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let load_before = load();
    let backends = [Backend::Throttled, Backend::Local];
    let mut rows = Vec::new();
    // Temp dirs of local runs, deleted at the end (see `Store::retire`).
    let mut kept = Vec::new();
    for w in scale.workloads {
        for backend in backends {
            rows.push(rt.block_on(throughput(backend, w, scale, &mut kept)));
        }
    }
    let mut noops = Vec::new();
    for backend in backends {
        noops.extend(rt.block_on(noop(backend, scale)));
    }
    print_throughput(&rows, scale);
    print_noop(&noops, scale);
    println!(
        "\n1-minute load average at start {load_before}, at end {} ({} CPUs)",
        load(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}
