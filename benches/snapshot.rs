//! Snapshots: open cost against history length, metadata-only open of a large
//! dataset, lazy chunk reads and compaction time, on `LocalFileSystem` in a temp dir.
//!
//! 1. Open time and requests for a history of N = 1k, 10k and 100k changes, without
//!    a snapshot and after one `Repo::compact`. The history models N short-lived
//!    writers: a genesis change (root group, 1-d array `x` of 1-element chunks), then
//!    changes from a fresh actor each (seq 1), each depending on the one before and
//!    writing one inline chunk `x/c/<i>`. Change files are built and PUT directly
//!    (the public commit path would take far longer for 100k changes). The LIST of
//!    the change files alone is timed too: every open starts with it.
//! 2. Metadata-only open of a dataset with 10M chunk refs (1000 changes of 10,000
//!    inline 1-byte chunks by one writer, then compacted): open time, request
//!    counts, snapshot metadata size, and peak memory of the open, measured in a
//!    child process (this binary re-run with `--child-open DIR`, as `memory.rs`
//!    does) both as peak live heap bytes (a counting global allocator, enabled in
//!    the child only) and as the kernel's `VmHWM` minus `VmRSS` just before the open.
//!    Target (issue): under 50 ms and under 100 MB.
//! 3. First chunk read right after opening from a snapshot (loads one manifest
//!    piece) and a warm read of a second key in the same piece, on the 10M dataset
//!    and on the 100k-change history.
//! 4. Compaction time: `Repo::compact` on a freshly opened repo holding N
//!    uncompacted changes (median of a few runs; between runs the snapshot objects
//!    are deleted so the next run starts again from N uncompacted changes).
//!
//! Timings are criterion medians (open and reads; `iter_custom`, so only the
//! measured call is timed: opening before a first read and dropping are not),
//! except compaction and the open of 100k changes without a snapshot (seconds each:
//! the median of 3 manual runs). Request counts come from one extra run through
//! `CountingStore`, never from the timed runs. On `LocalFileSystem` completions are
//! real, so "round trips" of a fan-out grow with N / 32 (requests in flight).
//!
//! `cargo bench --bench snapshot` (several minutes: building the 10M dataset and
//! compacting it take most of it). Without `--bench` (as under `cargo test
//! --benches`) it runs at a tiny scale, once.

mod workload;

use bytes::Bytes;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, measurement::WallTime};
use crzarr::format::change::{Change, ChunkData, Op, OpRef};
use crzarr::format::ids::{ActorId, ChangeHash, Hlc, RepoId, now_millis};
use crzarr::format::layout::{ChangeName, Layout};
use crzarr::io::counting::{CountingStore, RequestCounts};
use crzarr::repo::Repo;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use workload::median_ns;

/// Repository prefix inside each temp dir.
const PREFIX: &str = "ds";

// ---------------------------------------------------------------------------------
// Heap accounting: a counting global allocator, switched on only in the child
// process that measures peak memory (elsewhere it costs one relaxed load per call).

struct Tracking;

static TRACK: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

fn grow(n: usize) {
    let now = LIVE.fetch_add(n as i64, Relaxed) + n as i64;
    PEAK.fetch_max(now, Relaxed);
}

fn shrink(n: usize) {
    LIVE.fetch_sub(n as i64, Relaxed);
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: AllocLayout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() && TRACK.load(Relaxed) {
            grow(l.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, l: AllocLayout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() && TRACK.load(Relaxed) {
            grow(l.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: AllocLayout) {
        unsafe { System.dealloc(p, l) };
        if TRACK.load(Relaxed) {
            shrink(l.size());
        }
    }

    unsafe fn realloc(&self, p: *mut u8, l: AllocLayout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new_size) };
        if !q.is_null() && TRACK.load(Relaxed) {
            if new_size >= l.size() {
                grow(new_size - l.size());
            } else {
                shrink(l.size() - new_size);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Starts a new peak: returns the live heap bytes now, the baseline.
fn reset_peak() -> i64 {
    let now = LIVE.load(Relaxed);
    PEAK.store(now, Relaxed);
    now
}

/// A field of `/proc/self/status` in kB (`VmRSS`, `VmHWM`).
fn status_kb(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

// ---------------------------------------------------------------------------------
// Building change logs directly in the bucket.

/// Sizes: full under `cargo bench`, tiny otherwise (a smoke run).
struct Scale {
    histories: &'static [usize],
    big_refs: u64,
    big_ops_per_change: u64,
    compaction_runs: usize,
}

const FULL: Scale = Scale {
    histories: &[1_000, 10_000, 100_000],
    big_refs: 10_000_000,
    big_ops_per_change: 10_000,
    compaction_runs: 3,
};

const SMOKE: Scale = Scale {
    histories: &[100],
    big_refs: 20_000,
    big_ops_per_change: 1_000,
    compaction_runs: 1,
};

fn label(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// A 1-d array of `len` one-byte chunks, as stored (canonical, no `attributes`).
fn array_doc(len: u64) -> serde_json::Value {
    serde_json::json!({
        "zarr_format": 3, "node_type": "array", "shape": [len], "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0, "codecs": [{"name": "bytes"}]
    })
}

/// The byte chunk `c/<i>` holds.
fn chunk_byte(i: u64) -> u8 {
    (i % 251) as u8
}

fn set_chunk(array: OpRef, i: u64) -> Op {
    Op::SetChunk {
        node: array,
        key: format!("c/{i}"),
        data: ChunkData::Inline(vec![chunk_byte(i)]),
        observed: vec![],
    }
}

/// A temp dir with a repository in it (marker written by `Repo::init`).
struct Dataset {
    dir: tempfile::TempDir,
    store: Arc<dyn ObjectStore>,
    changes: usize,
}

fn local_store(dir: &Path) -> Arc<dyn ObjectStore> {
    Arc::new(LocalFileSystem::new_with_prefix(dir).expect("local store"))
}

/// Writes a linear history of change files, in parallel batches.
struct Writer {
    repo: RepoId,
    layout: Layout,
    store: Arc<dyn ObjectStore>,
    array: Option<OpRef>,
    prev: Option<(ChangeHash, Hlc)>,
    base: Hlc,
    written: usize,
    batch: Vec<(StorePath, Bytes)>,
}

impl Writer {
    async fn new(store: Arc<dyn ObjectStore>) -> Writer {
        let repo = Repo::init(store.clone(), PREFIX).await.expect("init").id();
        Writer {
            repo,
            layout: Layout::new(PREFIX),
            store,
            array: None,
            prev: None,
            // A day ago: stamps stay in the past however many changes follow.
            base: Hlc((now_millis() - 86_400_000) << 16),
            written: 0,
            batch: Vec::new(),
        }
    }

    /// The genesis: root group and array `x` of `len` chunks.
    async fn genesis(&mut self, len: u64) {
        let ops = vec![
            Op::CreateGroup {
                path: String::new(),
                attributes: vec![],
            },
            Op::CreateArray {
                path: "x".into(),
                metadata: crzarr::zarr::meta::canonical_json(&array_doc(len)),
                attributes: vec![],
            },
        ];
        let hash = self.push(ActorId::generate(), 1, ops).await;
        self.array = Some(OpRef::Change(hash, 1));
    }

    fn array(&self) -> OpRef {
        self.array.expect("genesis written first")
    }

    /// One change on top of the previous one.
    async fn push(&mut self, actor: ActorId, seq: u64, ops: Vec<Op>) -> ChangeHash {
        let hlc = match self.prev {
            Some((_, h)) => Hlc(h.0 + 1),
            None => self.base,
        };
        let change = Change {
            repo: self.repo,
            actor,
            seq,
            deps: self.prev.map(|(h, _)| h).into_iter().collect(),
            hlc,
            wall_ms: hlc.millis(),
            message: None,
            ops,
        };
        let bytes = change.encode();
        let hash = ChangeHash::of(&bytes);
        let key = self.layout.change(&ChangeName { hash, actor, seq });
        self.batch.push((key, Bytes::from(bytes)));
        self.prev = Some((hash, hlc));
        self.written += 1;
        if self.batch.len() >= 64 {
            self.flush().await;
        }
        hash
    }

    async fn flush(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let store = &self.store;
        futures::stream::iter(batch)
            .map(|(key, bytes)| async move {
                store
                    .put(&key, PutPayload::from(bytes))
                    .await
                    .expect("put change")
            })
            .buffer_unordered(64)
            .for_each(|_| async {})
            .await;
    }
}

/// N changes: genesis, then N - 1 writers of one chunk each (`c/1` .. `c/N-1`).
async fn build_history(n: usize) -> Dataset {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = local_store(dir.path());
    let mut w = Writer::new(store.clone()).await;
    w.genesis(n as u64).await;
    let array = w.array();
    for i in 1..n as u64 {
        w.push(ActorId::generate(), 1, vec![set_chunk(array, i)])
            .await;
    }
    w.flush().await;
    Dataset {
        dir,
        store,
        changes: w.written,
    }
}

/// `refs` chunks `c/0` .. in changes of `per_change` ops, one writer.
async fn build_big(refs: u64, per_change: u64) -> Dataset {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = local_store(dir.path());
    let mut w = Writer::new(store.clone()).await;
    w.genesis(refs).await;
    let array = w.array();
    let actor = ActorId::generate();
    let mut start = 0;
    let mut seq = 0;
    while start < refs {
        let end = (start + per_change).min(refs);
        seq += 1;
        let ops = (start..end).map(|i| set_chunk(array, i)).collect();
        w.push(actor, seq, ops).await;
        start = end;
    }
    w.flush().await;
    Dataset {
        dir,
        store,
        changes: w.written,
    }
}

// ---------------------------------------------------------------------------------
// Measurements.

async fn counted_open(store: &Arc<dyn ObjectStore>) -> (Repo, RequestCounts, CountingStore) {
    let counting = CountingStore::new(store.clone());
    let repo = Repo::open(Arc::new(counting.clone()), PREFIX)
        .await
        .expect("open");
    let counts = counting.take();
    (repo, counts, counting)
}

/// `iters` opens; only `Repo::open` is timed (not the drop).
async fn open_loop(store: Arc<dyn ObjectStore>, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let t = Instant::now();
        let repo = Repo::open(store.clone(), PREFIX).await.expect("open");
        total += t.elapsed();
        drop(repo);
    }
    total
}

/// Opens of more changes than this are timed by a few manual runs.
const SLOW_OPEN: usize = 100_000;

/// `runs` timed opens.
async fn manual_opens(store: &Arc<dyn ObjectStore>, runs: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    for _ in 0..runs {
        times.push(open_loop(store.clone(), 1).await);
    }
    times
}

/// `iters` listings of the change files (what every open starts with).
async fn list_loop(store: Arc<dyn ObjectStore>, iters: u64) -> Duration {
    let dir = Layout::new(PREFIX).ops_dir();
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let t = Instant::now();
        let n = store
            .list(Some(&dir))
            .try_fold(0usize, |n, _| async move { Ok(n + 1) });
        let n = n.await.expect("list");
        total += t.elapsed();
        std::hint::black_box(n);
    }
    total
}

/// Deletes what compaction wrote (snapshots, pieces, archive, hint), so the bucket
/// holds uncompacted history again.
fn undo_compaction(ds: &Dataset) {
    let layout = Layout::new(PREFIX);
    let fs = |p: StorePath| ds.dir.path().join(p.as_ref());
    for d in [
        layout.snapshots_dir(),
        layout.manifests_dir(),
        layout.archive_dir(),
    ] {
        let _ = std::fs::remove_dir_all(fs(d));
    }
    let _ = std::fs::remove_file(fs(layout.latest_hint()));
}

/// Compaction runs from a fresh open each (the open is not timed). The last run's
/// snapshot stays. Returns the times and the last report's summary.
async fn compaction_runs(ds: &Dataset, runs: usize) -> (Vec<Duration>, String) {
    let mut times = Vec::new();
    let mut note = String::new();
    for r in 0..runs {
        if r > 0 {
            undo_compaction(ds);
        }
        let t = Instant::now();
        let mut repo = Repo::open(ds.store.clone(), PREFIX).await.expect("open");
        let opened = t.elapsed();
        assert_eq!(repo.fold().uncompacted(), ds.changes, "uncompacted history");
        let t = Instant::now();
        let report = repo.compact().await.expect("compact");
        times.push(t.elapsed());
        assert_eq!(report.covered, ds.changes as u64);
        note = format!(
            "{} pieces, {} archive shards, {:.1} MB written; open before it {:.1} s",
            report.manifests_written,
            report.archive_shards_written,
            report.bytes_written as f64 / 1e6,
            opened.as_secs_f64()
        );
        drop(repo);
    }
    (times, note)
}

/// Size of the newest snapshot metadata object, and count and bytes of manifest pieces.
async fn snapshot_sizes(store: &Arc<dyn ObjectStore>) -> (u64, usize, u64) {
    let layout = Layout::new(PREFIX);
    let metas: Vec<_> = store
        .list(Some(&layout.snapshots_dir()))
        .try_collect()
        .await
        .expect("list snapshots");
    let newest = metas
        .iter()
        .max_by(|a, b| a.location.cmp(&b.location))
        .map_or(0, |m| m.size);
    let pieces: Vec<_> = store
        .list(Some(&layout.manifests_dir()))
        .try_collect()
        .await
        .expect("list pieces");
    (newest, pieces.len(), pieces.iter().map(|m| m.size).sum())
}

fn median(times: &[Duration]) -> Duration {
    let mut v = times.to_vec();
    v.sort();
    v[v.len() / 2]
}

// ---------------------------------------------------------------------------------
// Summary rows.

struct Row {
    case: String,
    /// Criterion id (median read back at the end) ...
    id: Option<String>,
    /// ... or a median measured here.
    manual: Option<(Duration, usize)>,
    counts: Option<RequestCounts>,
    note: String,
}

impl Row {
    fn bench(case: String, id: String, counts: RequestCounts, note: String) -> Row {
        Row {
            case,
            id: Some(id),
            manual: None,
            counts: Some(counts),
            note,
        }
    }
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:<34} {:>11} {:>6} {:>6} {:>7}  notes",
        "case", "median ms", "GETs", "LISTs", "round trips"
    );
    for r in rows {
        let ms = match (&r.id, r.manual) {
            (Some(id), _) => median_ns(id).map(|ns| format!("{:.3}", ns / 1e6)),
            (None, Some((d, _))) => Some(format!("{:.3}", d.as_secs_f64() * 1e3)),
            _ => None,
        }
        .unwrap_or_else(|| "-".into());
        let (gets, lists, rts) = match r.counts {
            Some(c) => (
                (c.gets + c.heads).to_string(),
                c.lists.to_string(),
                c.round_trips.to_string(),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let mut note = r.note.clone();
        if let Some((_, runs)) = r.manual {
            let runs = if runs == 1 {
                "1 run".to_string()
            } else {
                format!("median of {runs} runs")
            };
            note = if note.is_empty() {
                runs
            } else {
                format!("{runs}; {note}")
            };
        }
        println!(
            "{:<34} {:>11} {:>6} {:>6} {:>11}  {}",
            r.case, ms, gets, lists, rts, note
        );
    }
}

// ---------------------------------------------------------------------------------
// The benchmarks.

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    g
}

/// First read of `k1` right after an open, then a warm read of `k2` (same piece).
fn bench_reads(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    case: &str,
    (k1, k2): (u64, u64),
    rows: &mut Vec<Row>,
) {
    let key1 = format!("x/c/{k1}");
    let key2 = format!("x/c/{k2}");
    // Counted once, and checked.
    let (first, warm) = rt.block_on(async {
        let (repo, _, counting) = counted_open(store).await;
        let v = repo.get(&key1).await.expect("get").expect("chunk");
        assert_eq!(&v[..], &[chunk_byte(k1)]);
        let first = counting.take();
        let v = repo.get(&key2).await.expect("get").expect("chunk");
        assert_eq!(&v[..], &[chunk_byte(k2)]);
        (first, counting.take())
    });
    let piece_note = if warm.gets == 0 {
        "same piece: nothing fetched".to_string()
    } else {
        format!("{} GETs: not in the same piece?", warm.gets)
    };

    let mut g = group(c, "snap_read");
    g.bench_function(BenchmarkId::new("first", case), |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (store, key1) = (store.clone(), key1.clone());
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let repo = Repo::open(store.clone(), PREFIX).await.expect("open");
                    let t = Instant::now();
                    let v = repo.get(&key1).await.expect("get");
                    total += t.elapsed();
                    drop((v, repo));
                }
                total
            }
        })
    });
    let repo = rt.block_on(async {
        let repo = Repo::open(store.clone(), PREFIX).await.expect("open");
        repo.get(&key1).await.expect("get");
        repo
    });
    g.bench_function(BenchmarkId::new("warm", case), |b| {
        b.to_async(rt)
            .iter(|| async { repo.get(&key2).await.expect("get") })
    });
    g.finish();
    drop(repo);
    rows.push(Row::bench(
        format!("first chunk read ({case})"),
        format!("snap_read/first/{case}"),
        first,
        format!("{} KB fetched", first.get_bytes / 1000),
    ));
    rows.push(Row::bench(
        format!("warm chunk read ({case})"),
        format!("snap_read/warm/{case}"),
        warm,
        piece_note,
    ));
}

/// Open against history length, with and without a snapshot; compaction time.
fn bench_histories(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    scale: &Scale,
    rows: &mut Vec<Row>,
    compactions: &mut Vec<Row>,
) {
    let largest = scale.histories.iter().copied().max().unwrap_or(0);
    for &n in scale.histories {
        let name = label(n as u64);
        let t = Instant::now();
        let ds = rt.block_on(build_history(n));
        eprintln!("built {name} changes in {:.1} s", t.elapsed().as_secs_f64());

        let (repo, counts, _) = rt.block_on(counted_open(&ds.store));
        assert_eq!(repo.log().len(), n, "all changes applied");
        assert!(repo.problems().is_empty(), "{:?}", repo.problems());
        drop(repo);
        if n >= SLOW_OPEN {
            // Seconds per open: a few runs instead of criterion's ten samples.
            let times = rt.block_on(manual_opens(&ds.store, scale.compaction_runs));
            rows.push(Row {
                case: format!("open {name}, no snapshot"),
                id: None,
                manual: Some((median(&times), times.len())),
                counts: Some(counts),
                note: String::new(),
            });
        } else {
            let mut g = group(c, "snap_open");
            g.bench_function(BenchmarkId::new("no_snapshot", &name), |b| {
                b.to_async(rt)
                    .iter_custom(|iters| open_loop(ds.store.clone(), iters))
            });
            g.finish();
            rows.push(Row::bench(
                format!("open {name}, no snapshot"),
                format!("snap_open/no_snapshot/{name}"),
                counts,
                String::new(),
            ));
        }

        let (times, note) = rt.block_on(compaction_runs(&ds, scale.compaction_runs));
        compactions.push(Row {
            case: format!("compact {name} changes"),
            id: None,
            manual: Some((median(&times), times.len())),
            counts: None,
            note,
        });

        let (repo, counts, _) = rt.block_on(counted_open(&ds.store));
        assert_eq!(repo.fold().uncompacted(), 0, "opened from the snapshot");
        drop(repo);
        let (meta, pieces, _) = rt.block_on(snapshot_sizes(&ds.store));
        let mut g = group(c, "snap_open");
        g.bench_function(BenchmarkId::new("snapshot", &name), |b| {
            b.to_async(rt)
                .iter_custom(|iters| open_loop(ds.store.clone(), iters))
        });
        g.finish();
        rows.push(Row::bench(
            format!("open {name}, snapshot"),
            format!("snap_open/snapshot/{name}"),
            counts,
            format!("metadata {:.2} MB, {pieces} pieces", meta as f64 / 1e6),
        ));
        // The LIST of change files alone: part of every open, snapshot or not.
        let mut g = group(c, "snap_list");
        g.bench_function(BenchmarkId::new("changes", &name), |b| {
            b.to_async(rt)
                .iter_custom(|iters| list_loop(ds.store.clone(), iters))
        });
        g.finish();
        rows.push(Row {
            case: format!("  LIST of the {name} change files"),
            id: Some(format!("snap_list/changes/{name}")),
            manual: None,
            counts: None,
            note: "part of both opens above".into(),
        });

        // The steady state with GC running: collected change files leave the
        // listing, and the next compaction moves them from the table to the archive.
        rt.block_on(async {
            let zero = crzarr::ops::gc::GcOptions {
                older_than: Duration::ZERO,
                dry_run: false,
                force: true,
            };
            let mut r = Repo::open(ds.store.clone(), PREFIX).await.expect("open");
            r.gc(&zero).await.expect("gc");
            let mut s = r.session();
            s.set_attr("x", "gc", true.into()).expect("attr");
            s.commit(&mut r, None).await.expect("commit");
            r.compact().await.expect("compact");
            r.gc(&zero).await.expect("gc");
        });
        let (repo, counts, _) = rt.block_on(counted_open(&ds.store));
        assert_eq!(repo.fold().uncompacted(), 0, "opened from the snapshot");
        drop(repo);
        let (meta, _, _) = rt.block_on(snapshot_sizes(&ds.store));
        let mut g = group(c, "snap_open");
        g.bench_function(BenchmarkId::new("snapshot_after_gc", &name), |b| {
            b.to_async(rt)
                .iter_custom(|iters| open_loop(ds.store.clone(), iters))
        });
        g.finish();
        rows.push(Row::bench(
            format!("open {name}, snapshot, after GC"),
            format!("snap_open/snapshot_after_gc/{name}"),
            counts,
            format!("metadata {:.3} MB", meta as f64 / 1e6),
        ));

        if n == largest {
            let k = n as u64 / 2;
            bench_reads(
                c,
                rt,
                &ds.store,
                &format!("{name}_history"),
                (k, k + 1),
                rows,
            );
        }
    }
}

/// Result of the child's measured open.
struct ChildResult {
    ms: f64,
    heap_peak: f64,
    heap_steady: f64,
    hwm_delta: f64,
}

fn field(line: &str, name: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Runs the memory measurement of an open of `dir` in a fresh process.
fn open_in_child(dir: &Path) -> Result<ChildResult, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .arg("--child-open")
        .arg(dir)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
    let get = |n| field(line, n).unwrap_or(f64::NAN);
    Ok(ChildResult {
        ms: get("ms"),
        heap_peak: get("heap_peak"),
        heap_steady: get("heap_steady"),
        hwm_delta: (get("hwm_kb") - get("base_kb")) * 1024.0,
    })
}

/// The child: warm up on a tiny repository, then one measured open of `dir`.
fn child_open(dir: &str) {
    TRACK.store(true, Relaxed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        // Warm-up: code pages, allocator, lazy statics; a snapshot open and a read.
        let warm: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut r = Repo::init(warm.clone(), PREFIX).await.expect("init");
        let mut s = r.session();
        s.create_group("", Default::default()).expect("group");
        s.create_array("x", &array_doc(4)).expect("array");
        s.set("x/c/0", vec![1u8]).expect("set");
        s.commit(&mut r, None).await.expect("commit");
        r.compact().await.expect("compact");
        drop(r);
        let r = Repo::open(warm.clone(), PREFIX).await.expect("open");
        r.get("x/c/0").await.expect("get");
        drop(r);

        let store = local_store(Path::new(dir));
        let base_kb = status_kb("VmRSS").unwrap_or(0);
        let base = reset_peak();
        let t = Instant::now();
        let repo = Repo::open(store, PREFIX).await.expect("open");
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let peak = PEAK.load(Relaxed) - base;
        let steady = LIVE.load(Relaxed) - base;
        let hwm_kb = status_kb("VmHWM").unwrap_or(0);
        println!(
            "RESULT ms={ms:.3} heap_peak={peak} heap_steady={steady} base_kb={base_kb} hwm_kb={hwm_kb}"
        );
        drop(repo);
    });
}

/// The 10M-ref dataset: metadata-only open, memory, reads.
fn bench_big(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    scale: &Scale,
    rows: &mut Vec<Row>,
    compactions: &mut Vec<Row>,
) -> Option<(String, ChildResult, u64)> {
    let refs = scale.big_refs;
    let name = label(refs);
    let t = Instant::now();
    let ds = rt.block_on(build_big(refs, scale.big_ops_per_change));
    eprintln!(
        "built {name} chunk refs ({} changes) in {:.1} s",
        ds.changes,
        t.elapsed().as_secs_f64()
    );
    // One compaction (timed, but from one run only: it is slow and memory-hungry).
    let (times, note) = rt.block_on(compaction_runs(&ds, 1));
    compactions.push(Row {
        case: format!("compact {name} refs ({} changes)", ds.changes),
        id: None,
        manual: Some((median(&times), times.len())),
        counts: None,
        note,
    });
    let (meta, pieces, piece_bytes) = rt.block_on(snapshot_sizes(&ds.store));

    let (repo, counts, _) = rt.block_on(counted_open(&ds.store));
    assert_eq!(repo.fold().uncompacted(), 0, "opened from the snapshot");
    drop(repo);
    // Metadata only: the marker and the hint (the newest snapshot), no piece.
    let metadata_only = counts.gets == 2;
    let mut g = group(c, "snap_open");
    g.bench_function(BenchmarkId::new("metadata_only", &name), |b| {
        b.to_async(rt)
            .iter_custom(|iters| open_loop(ds.store.clone(), iters))
    });
    g.finish();
    rows.push(Row::bench(
        format!("open {name} refs, snapshot"),
        format!("snap_open/metadata_only/{name}"),
        counts,
        format!(
            "metadata {meta} B; {pieces} pieces, {:.1} MB not read{}",
            piece_bytes as f64 / 1e6,
            if metadata_only {
                ""
            } else {
                "; NOT metadata-only"
            }
        ),
    ));

    let child = open_in_child(ds.dir.path());
    let k = refs / 2;
    bench_reads(c, rt, &ds.store, &format!("{name}_refs"), (k, k + 1), rows);
    match child {
        Ok(r) => Some((name, r, meta)),
        Err(e) => {
            eprintln!("memory child failed: {e}");
            None
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child-open") {
        child_open(args.get(i + 1).map(String::as_str).unwrap_or("."));
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let scale = if args.iter().any(|a| a == "--bench") {
        &FULL
    } else {
        &SMOKE
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut c = Criterion::default().configure_from_args();
    let mut rows = Vec::new();
    let mut compactions = Vec::new();
    bench_histories(&mut c, &rt, scale, &mut rows, &mut compactions);
    let big = bench_big(&mut c, &rt, scale, &mut rows, &mut compactions);
    c.final_summary();

    println!("\nsnapshots on LocalFileSystem, medians (requests: one counted run):");
    print_rows(&rows);
    println!();
    print_rows(&compactions);
    if let Some((name, r, meta)) = big {
        println!(
            "\nmetadata-only open of {name} chunk refs (one run in a fresh process; target < 50 ms, < 100 MB):"
        );
        println!(
            "  open {:.1} ms; peak heap {:.1} MB (retained after open {:.1} MB); \
             peak RSS over baseline {:.1} MB; snapshot metadata {meta} B",
            r.ms,
            r.heap_peak / 1e6,
            r.heap_steady / 1e6,
            r.hwm_delta / 1e6
        );
    }
}
