//! Requests and sequential round trips per commit (issue 2, section 6).
//! Target: a commit is 2 sequential round trips (blobs in parallel, then the change
//! file), 1 when every chunk is inline.
//!
//! 1. A table, counted by `CountingStore` (deterministic): for k = 1, 10 and 100
//!    chunks, inline (1 KiB) or blob (16 KiB), the PUTs, round trips and bytes of one
//!    commit, and the wall time of the same commit against a store that waits 20 ms
//!    per request (`object_store::throttle`), which should be about round trips x
//!    20 ms whatever the number of requests.
//! 2. Criterion timings of a 10-chunk commit on InMemory and on the throttled store.
//!
//! `cargo bench --bench commit` (about a minute); `-- --quick` for a first look.

mod workload;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion};
use crzarr::io::counting::{CountingStore, RequestCounts};
use crzarr::repo::Repo;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};
use workload::median_ns;

const LATENCY: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Data {
    Inline,
    Blob,
}

impl Data {
    fn name(self) -> &'static str {
        match self {
            Data::Inline => "inline",
            Data::Blob => "blob",
        }
    }

    /// Chunk bytes, distinct for every `n` (identical blobs would be stored once).
    fn chunk(self, n: u64) -> Bytes {
        let len = match self {
            Data::Inline => 1 << 10,
            Data::Blob => 16 << 10,
        };
        let mut v = vec![(n % 251) as u8; len];
        v[..8].copy_from_slice(&n.to_le_bytes());
        Bytes::from(v)
    }
}

/// Makes a fresh store for one benchmark run.
type MakeStore = fn() -> Arc<dyn ObjectStore>;

fn throttled() -> Arc<dyn ObjectStore> {
    Arc::new(ThrottledStore::new(
        InMemory::new(),
        ThrottleConfig {
            wait_put_per_call: LATENCY,
            wait_get_per_call: LATENCY,
            wait_list_per_call: LATENCY,
            wait_delete_per_call: LATENCY,
            ..Default::default()
        },
    ))
}

fn array_meta(chunks: u64) -> serde_json::Value {
    serde_json::json!({
        "zarr_format": 3, "node_type": "array", "shape": [chunks], "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0, "codecs": [{"name": "bytes"}]
    })
}

/// A repository on `store` holding array `x` with 1000 chunks of 1 element.
async fn repo_with_array(store: Arc<dyn ObjectStore>) -> Repo {
    let mut repo = Repo::init(store, "bench").await.expect("init");
    let mut s = repo.session();
    s.create_group("", Default::default()).expect("group");
    s.create_array("x", &array_meta(1000)).expect("array");
    s.commit(&mut repo, None).await.expect("commit");
    repo
}

/// Stages `k` chunk writes (untimed: hashing blobs happens here) and commits them.
/// Returns the time spent in `commit`.
async fn commit_k(repo: &mut Repo, k: usize, data: Data, salt: u64) -> Duration {
    let mut s = repo.session();
    for i in 0..k {
        s.set(&format!("x/c/{i}"), data.chunk(salt * 1000 + i as u64))
            .expect("stage");
    }
    let t = Instant::now();
    s.commit(repo, None)
        .await
        .expect("commit")
        .expect("a change");
    t.elapsed()
}

/// One counted commit, and the same commit's wall time on the throttled store.
async fn measure(k: usize, data: Data, concurrency: usize) -> (RequestCounts, Duration) {
    let counting = CountingStore::new(Arc::new(InMemory::new()));
    let mut repo = repo_with_array(Arc::new(counting.clone())).await;
    repo.set_concurrency(concurrency);
    counting.reset();
    commit_k(&mut repo, k, data, 1).await;
    let counts = counting.take();

    let mut slow = repo_with_array(throttled()).await;
    slow.set_concurrency(concurrency);
    let wall = commit_k(&mut slow, k, data, 1).await;
    (counts, wall)
}

fn print_table(rt: &tokio::runtime::Runtime) {
    println!(
        "\nrequests per commit (CountingStore over InMemory; wall time with {} ms per request):",
        LATENCY.as_millis()
    );
    println!(
        "{:>5} {:>7} {:>11} {:>6} {:>6} {:>12} {:>10} {:>10} {:>14}",
        "k",
        "chunks",
        "concurrency",
        "PUTs",
        "GETs",
        "round trips",
        "in flight",
        "KiB put",
        "wall ms @20ms"
    );
    let rows = [
        (1, Data::Inline, 32),
        (10, Data::Inline, 32),
        (100, Data::Inline, 32),
        (1, Data::Blob, 32),
        (10, Data::Blob, 32),
        (100, Data::Blob, 32),
        (100, Data::Blob, 128),
    ];
    for (k, data, concurrency) in rows {
        let (c, wall) = rt.block_on(measure(k, data, concurrency));
        println!(
            "{:>5} {:>7} {:>11} {:>6} {:>6} {:>12} {:>10} {:>10.1} {:>14.1}",
            k,
            data.name(),
            concurrency,
            c.puts,
            c.gets + c.heads + c.lists,
            c.round_trips,
            c.max_in_flight,
            c.put_bytes as f64 / 1024.0,
            wall.as_secs_f64() * 1e3
        );
    }
    println!();
}

/// Runs the timings; returns the ids of the benchmarks that ran (not filtered out).
fn bench(c: &mut Criterion, rt: &tokio::runtime::Runtime) -> Vec<String> {
    let ran = RefCell::new(Vec::new());
    let mut group = c.benchmark_group("commit_k10");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    let stores: [(&str, MakeStore); 2] = [
        ("inmemory", || Arc::new(InMemory::new())),
        ("throttled_20ms", throttled),
    ];
    for (store_name, make) in stores {
        for data in [Data::Inline, Data::Blob] {
            let id = BenchmarkId::new(store_name, data.name());
            group.bench_function(id, |b| {
                let name = format!("{store_name}/{}", data.name());
                if !ran.borrow().contains(&name) {
                    ran.borrow_mut().push(name);
                }
                b.to_async(rt).iter_custom(|iters| async move {
                    let mut repo = repo_with_array(make()).await;
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        total += commit_k(&mut repo, 10, data, i + 2).await;
                    }
                    total
                })
            });
        }
    }
    group.finish();
    ran.into_inner()
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--list") {
        print_table(&rt);
    }
    let mut c = Criterion::default().configure_from_args();
    let ran = bench(&mut c, &rt);
    c.final_summary();
    if !ran.is_empty() {
        println!("\ncommit of 10 chunks, medians:");
        for id in ran {
            match median_ns(&format!("commit_k10/{id}")) {
                Some(ns) => println!("{id:<24} {:>10.3} ms", ns / 1e6),
                None => println!("{id:<24} (no criterion estimate found)"),
            }
        }
    }
}
