//! Two writers, one zarrs array, no coordination.
//!
//! Writer A creates a `uint16` array `v` of shape [8, 8] with chunks [4, 4] through
//! zarrs and commits it; writer B is a replica of A on another bucket. Then, each
//! on its own bucket, A writes rows 0..4 and B writes rows 4..8, both with the
//! values `v[row][col] = row * 8 + col`, and each commits. The two buckets are
//! synced both ways, and the merged array, read through zarrs from each replica,
//! must hold `row * 8 + col` everywhere.
//!
//! ```text
//! cargo run --example zarrs_two_writers --features zarrs [-- DIR]
//! ```
//!
//! With `DIR`, writer A's repository is on local disk at `DIR` (resolved as
//! `crzarr::io::connect` resolves a path; created if missing, reused if it already is a
//! crzarr repository, in which case the same values are written again), and the
//! merged result stays there, so that `crzarr export DIR OUT` and then any Zarr
//! reader can read it. Without it, both replicas live in memory.

use crzarr::adapters::zarrs::{BlockingZarrsStore, ZarrsStore};
use crzarr::format::ids::ChangeHash;
use crzarr::io::store::RepoStore;
use crzarr::repo::Repo;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use std::sync::Arc;
use zarrs::array::{Array, ArrayBuilder, data_type};
use zarrs::group::GroupBuilder;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// `row * 8 + col` for the rows in `rows` of the 8-column array.
fn values(rows: std::ops::Range<u16>) -> Vec<u16> {
    rows.flat_map(|r| (0..8).map(move |c| r * 8 + c)).collect()
}

fn show(change: Option<ChangeHash>) -> String {
    change.map_or_else(|| "(nothing to commit)".into(), |h| h.to_string())
}

fn main() -> AnyResult<()> {
    let dir = std::env::args().nth(1);
    let rt = tokio::runtime::Runtime::new()?;

    // Writer A: on disk at DIR (as `crzarr::io::connect` resolves a path), or in memory.
    let (bucket_a, prefix_a, where_a): (Arc<dyn ObjectStore>, String, String) = match &dir {
        Some(d) => {
            let loc = crzarr::io::connect::connect(d, true)?;
            (loc.store, loc.prefix, format!("local directory {d}"))
        }
        None => (Arc::new(InMemory::new()), String::new(), "memory".into()),
    };
    let repo_a = rt.block_on(Repo::init(bucket_a, &prefix_a))?;
    println!("writer A: new repository in {where_a}");
    let a = Arc::new(ZarrsStore::new(repo_a));
    let sync_a: Arc<BlockingZarrsStore> = Arc::new(a.clone().blocking(rt.handle().clone()));

    GroupBuilder::new()
        .build(sync_a.clone(), "/")?
        .store_metadata()?;
    let array_a = ArrayBuilder::new(vec![8, 8], vec![4, 4], data_type::uint16(), 0u16)
        .build(sync_a.clone(), "/v")?;
    array_a.store_metadata()?;
    let created = rt.block_on(a.commit(Some("create group / and array /v")))?;
    println!(
        "writer A: created group / and uint16 array /v, shape [8, 8], chunks [4, 4]: change {}",
        show(created)
    );

    // Writer B: a replica of A on its own (in-memory) bucket.
    let bucket_b: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    rt.block_on(async {
        crzarr::sync(
            a.repo().await.bucket(),
            &RepoStore::new(bucket_b.clone(), ""),
            &crzarr::SyncOptions::push(),
        )
        .await
    })?;
    let b = Arc::new(ZarrsStore::new(rt.block_on(Repo::open(bucket_b, ""))?));
    let sync_b: Arc<BlockingZarrsStore> = Arc::new(b.clone().blocking(rt.handle().clone()));
    println!("writer B: replica in memory");

    // Concurrent writes to disjoint rows, each on its own thread and bucket.
    std::thread::scope(|s| -> AnyResult<()> {
        let ta = s.spawn(|| -> Result<(), String> {
            array_a
                .store_array_subset(&[0..4, 0..8], values(0..4))
                .map_err(|e| e.to_string())
        });
        let tb = s.spawn(|| -> Result<(), String> {
            Array::open(sync_b.clone(), "/v")
                .map_err(|e| e.to_string())?
                .store_array_subset(&[4..8, 0..8], values(4..8))
                .map_err(|e| e.to_string())
        });
        ta.join().map_err(|_| "writer A panicked")??;
        tb.join().map_err(|_| "writer B panicked")??;
        Ok(())
    })?;
    let ca = rt.block_on(a.commit(Some("rows 0..4")))?;
    let cb = rt.block_on(b.commit(Some("rows 4..8")))?;
    println!("writer A: wrote rows 0..4, change {}", show(ca));
    println!("writer B: wrote rows 4..8, change {}", show(cb));

    // Sync both ways; A's handle refreshes as part of sync, B's explicitly.
    let report = rt.block_on(async {
        let other = b.repo().await.bucket().clone();
        let report = a.repo_mut().await.sync(&other, &Default::default()).await?;
        b.refresh().await?;
        Ok::<_, crzarr::Error>(report)
    })?;
    println!(
        "synced A <-> B: {} object(s) copied",
        report.a_to_b.objects() + report.b_to_a.objects()
    );

    let want = values(0..8);
    for (name, store) in [("A", &sync_a), ("B", &sync_b)] {
        let got: Vec<u16> =
            Array::open(store.clone(), "/v")?.retrieve_array_subset(&[0..8, 0..8])?;
        if got != want {
            return Err(format!("replica {name}: merged array differs: {got:?}").into());
        }
        println!("replica {name}: merged /v == row * 8 + col for all 64 elements");
    }
    if let Some(d) = dir {
        println!("merged repository left in {d}");
    }
    Ok(())
}
