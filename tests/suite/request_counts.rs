//! Request counts and sequential round trips of the core operations, asserted
//! exactly through `CountingStore` on InMemory and LocalFileSystem. Counts are
//! deterministic (times are not), so these are the performance contract:
//!
//! | operation | requests | round trips |
//! |---|---|---|
//! | commit, every chunk inline | 1 PUT | 1 |
//! | commit with k blob chunks (k <= 32) | k + 1 PUTs | 2 |
//! | commit on a handle read from a snapshot with an archive | 1 PUT | 1 |
//! | open of N changes (N <= 32), no snapshot | 2 LISTs + 2 GETs (marker, hint) + N GETs | 2 |
//! | refresh, nothing new | 2 LISTs (changes, snapshots) | 1 |
//! | refresh, m new changes (m <= 32) | 2 LISTs + m GETs | 2 |
//!
//! Opens from a snapshot are counted in `tests/snapshots.rs`.
//! | get of an inline chunk or metadata | none | 0 |
//! | get of a blob chunk | 1 GET | 1 |
//! | objects (keys no array owns): commit, inline get, blob get | as for chunks | as for chunks |

use crate::common::{Backend, array_meta, local, memory};
use crzarr::io::counting::{CountingStore, RequestCounts};
use crzarr::repo::Repo;
use std::sync::Arc;
use std::time::Duration;

/// A counting store over `b`'s store, and a writer that has created array `x`
/// (shape [64], chunks of 1) in one inline-only commit.
async fn setup(b: &Backend) -> (CountingStore, Repo) {
    let counting = CountingStore::new(b.store.clone());
    let mut repo = Repo::init(Arc::new(counting.clone()), &b.prefix)
        .await
        .unwrap();
    let mut s = repo.session();
    s.create_group("", Default::default()).unwrap();
    s.create_array("x", &array_meta(&[64], &[1])).unwrap();
    s.commit(&mut repo, Some("create x"))
        .await
        .unwrap()
        .unwrap();
    counting.reset();
    (counting, repo)
}

/// Distinct bytes per chunk (identical blobs would be stored once).
fn blob_bytes(i: usize) -> Vec<u8> {
    let mut v = vec![i as u8; 5000];
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    v
}

fn counts(puts: u64, gets: u64, lists: u64, round_trips: u64) -> (u64, u64, u64, u64, u64) {
    (puts, gets, lists, 0, round_trips)
}

fn summary(c: &RequestCounts) -> (u64, u64, u64, u64, u64) {
    (
        c.puts,
        c.gets,
        c.lists,
        c.heads + c.deletes + c.copies + c.renames + c.multipart,
        c.round_trips,
    )
}

#[tokio::test]
async fn commit_with_only_inline_chunks_is_one_put_in_one_round_trip() {
    for b in [memory(), local()] {
        let (counting, mut repo) = setup(&b).await;
        for k in [1usize, 10, 64] {
            let mut s = repo.session();
            for i in 0..k {
                s.set(&format!("x/c/{i}"), vec![i as u8; 100]).unwrap();
            }
            s.set_attr("x", "k", k.into()).unwrap();
            s.commit(&mut repo, None).await.unwrap().unwrap();
            let c = counting.take();
            assert_eq!(summary(&c), counts(1, 0, 0, 1), "{} k={k}: {c:?}", b.name);
        }
        // Creating nodes is inline too.
        let mut s = repo.session();
        s.create_array("y", &array_meta(&[4], &[2])).unwrap();
        s.commit(&mut repo, None).await.unwrap().unwrap();
        assert_eq!(summary(&counting.take()), counts(1, 0, 0, 1), "{}", b.name);
    }
}

/// A handle read from a snapshot with a coverage archive commits as cheaply: its new
/// change is never looked up in the archive (no shard GET), first commit or later.
#[tokio::test]
async fn commit_on_a_handle_read_from_a_snapshot_is_one_put_in_one_round_trip() {
    for b in [memory(), local()] {
        let (counting, mut writer) = setup(&b).await;
        // Two rounds of commits, compaction and collection: the second snapshot keeps
        // the first round's changes only in its coverage archive.
        for round in 0..2 {
            for i in 0..3 {
                let mut s = writer.session();
                s.set(&format!("x/c/{i}"), vec![round * 10 + i as u8; 100])
                    .unwrap();
                s.commit(&mut writer, None).await.unwrap().unwrap();
            }
            writer.compact().await.unwrap();
            writer
                .gc(&crate::common::witness::gc_opts(Duration::ZERO, true))
                .await
                .unwrap();
        }
        let mut repo = Repo::open(Arc::new(counting.clone()), &b.prefix)
            .await
            .unwrap();
        assert!(repo.fold().snapshot_base().is_some(), "{}", b.name);
        let held = repo.status().await.unwrap().objects;
        assert!(
            held.get(&crzarr::format::layout::ObjectKind::Archive)
                .is_some_and(|t| t.count > 0),
            "{}: no coverage archive to tempt a lookup: {held:?}",
            b.name
        );
        counting.reset();
        for k in 0..3u8 {
            // An attribute: a chunk write reads its manifest piece first (counted in
            // tests/suite/snapshots.rs), which is not what this test is about.
            let mut s = repo.session();
            s.set_attr("x", "k", k.into()).unwrap();
            s.commit(&mut repo, None).await.unwrap().unwrap();
            let c = counting.take();
            assert_eq!(
                summary(&c),
                counts(1, 0, 0, 1),
                "{} commit {k}: {c:?}",
                b.name
            );
        }
    }
}

#[tokio::test]
async fn commit_with_k_blob_chunks_is_k_plus_one_puts_in_two_round_trips() {
    for b in [memory(), local()] {
        let (counting, mut repo) = setup(&b).await;
        let mut next = 0;
        for k in [1usize, 2, 10, 32] {
            let mut s = repo.session();
            for _ in 0..k {
                s.set(&format!("x/c/{}", next % 64), blob_bytes(next))
                    .unwrap();
                next += 1;
            }
            s.commit(&mut repo, None).await.unwrap().unwrap();
            let c = counting.take();
            assert_eq!(
                summary(&c),
                counts(k as u64 + 1, 0, 0, 2),
                "{} k={k}: {c:?}",
                b.name
            );
            assert_eq!(c.max_in_flight, k as u64, "{} k={k}", b.name);
        }
        // Inline chunks next to blobs add nothing.
        let mut s = repo.session();
        s.set("x/c/0", blob_bytes(1000)).unwrap();
        s.set("x/c/1", blob_bytes(1001)).unwrap();
        s.set("x/c/2", vec![7u8; 10]).unwrap();
        s.commit(&mut repo, None).await.unwrap().unwrap();
        assert_eq!(summary(&counting.take()), counts(3, 0, 0, 2), "{}", b.name);
    }
}

/// Blob uploads beyond the concurrency limit start as slots free up. On InMemory
/// every upload takes the same time, so they go in waves: ceil(k / limit) round trips
/// of blobs, then the change file. On a real disk a slot freed early can start a
/// chain of its own, so only bounds are asserted there.
#[tokio::test]
async fn commit_over_the_concurrency_limit_takes_a_round_trip_per_wave() {
    for b in [memory(), local()] {
        let (counting, mut repo) = setup(&b).await;
        for (limit, salt) in [(32usize, 0usize), (10, 100)] {
            repo.set_concurrency(limit);
            let mut s = repo.session();
            for i in 0..40 {
                s.set(&format!("x/c/{i}"), blob_bytes(salt + i)).unwrap();
            }
            s.commit(&mut repo, None).await.unwrap().unwrap();
            let c = counting.take();
            let waves = 40u64.div_ceil(limit as u64);
            assert_eq!((c.puts, c.requests()), (41, 41), "{}: {c:?}", b.name);
            assert_eq!(c.max_in_flight, limit as u64, "{}", b.name);
            if b.name == "memory" {
                assert_eq!(c.round_trips, waves + 1, "{} limit={limit}: {c:?}", b.name);
            } else {
                let most = 40 - limit as u64 + 2;
                assert!(
                    (waves + 1..=most).contains(&c.round_trips),
                    "{} limit={limit}: {c:?}",
                    b.name
                );
            }
        }
    }
}

#[tokio::test]
async fn open_is_two_lists_marker_and_hint_gets_and_n_change_gets_in_two_round_trips() {
    for b in [memory(), local()] {
        let (counting, mut writer) = setup(&b).await;
        // `setup` committed 1 change; add more until there are N.
        let mut n = 1u64;
        for target in [1u64, 2, 10, 32] {
            while n < target {
                let mut s = writer.session();
                s.set(&format!("x/c/{n}"), vec![n as u8; 10]).unwrap();
                s.commit(&mut writer, None).await.unwrap().unwrap();
                n += 1;
            }
            counting.reset();
            let reader = Repo::open(Arc::new(counting.clone()), &b.prefix)
                .await
                .unwrap();
            let c = counting.take();
            assert_eq!(reader.log().len() as u64, n, "{}", b.name);
            assert_eq!(
                summary(&c),
                counts(0, 2 + n, 2, 2),
                "{} N={n}: {c:?}",
                b.name
            );
        }
    }
}

#[tokio::test]
async fn open_of_an_empty_repo_is_one_round_trip() {
    for b in [memory(), local()] {
        let counting = CountingStore::new(b.store.clone());
        Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        Repo::open(Arc::new(counting.clone()), &b.prefix)
            .await
            .unwrap();
        assert_eq!(summary(&counting.take()), counts(0, 2, 2, 1), "{}", b.name);
    }
}

#[tokio::test]
async fn refresh_fetches_only_new_changes() {
    for b in [memory(), local()] {
        let (counting, mut writer) = setup(&b).await;
        let mut reader = Repo::open(Arc::new(counting.clone()), &b.prefix)
            .await
            .unwrap();
        counting.reset();
        reader.refresh().await.unwrap();
        assert_eq!(
            summary(&counting.take()),
            counts(0, 0, 2, 1),
            "{}: nothing new",
            b.name
        );

        for m in [1u64, 5, 32] {
            for i in 0..m {
                let mut s = writer.session();
                s.set(&format!("x/c/{i}"), vec![m as u8; 10]).unwrap();
                s.commit(&mut writer, None).await.unwrap().unwrap();
            }
            counting.reset();
            let report = reader.refresh().await.unwrap();
            assert_eq!(report.fetched as u64, m, "{}", b.name);
            assert_eq!(
                summary(&counting.take()),
                counts(0, m, 2, 2),
                "{}: {m} new",
                b.name
            );
        }
    }
}

#[tokio::test]
async fn get_of_inline_data_is_free_and_of_a_blob_chunk_is_one_get() {
    for b in [memory(), local()] {
        let (counting, mut repo) = setup(&b).await;
        let mut s = repo.session();
        s.set("x/c/0", vec![1u8; 100]).unwrap();
        s.set("x/c/1", blob_bytes(1)).unwrap();
        s.commit(&mut repo, None).await.unwrap().unwrap();
        counting.reset();

        assert_eq!(repo.get("x/c/0").await.unwrap().unwrap().len(), 100);
        assert!(repo.get("zarr.json").await.unwrap().is_some());
        assert!(repo.get("x/zarr.json").await.unwrap().is_some());
        assert!(repo.get("x/c/2").await.unwrap().is_none());
        assert_eq!(counting.take(), RequestCounts::default(), "{}", b.name);

        assert_eq!(
            repo.get("x/c/1").await.unwrap().unwrap(),
            blob_bytes(1),
            "{}",
            b.name
        );
        let c = counting.take();
        assert_eq!(summary(&c), counts(0, 1, 0, 1), "{}: {c:?}", b.name);
        assert_eq!(c.get_bytes, 5000, "{}", b.name);
    }
}

#[tokio::test]
async fn objects_cost_what_chunks_cost() {
    for b in [memory(), local()] {
        let (counting, mut repo) = setup(&b).await;
        let mut s = repo.session();
        s.set("notes/small", vec![1u8; 100]).unwrap();
        s.set("notes/big", blob_bytes(2)).unwrap();
        s.commit(&mut repo, None).await.unwrap().unwrap();
        // One blob: one PUT for it, then the change file.
        let c = counting.take();
        assert_eq!(summary(&c), counts(2, 0, 0, 2), "{}: {c:?}", b.name);

        assert_eq!(repo.get("notes/small").await.unwrap().unwrap().len(), 100);
        assert!(repo.get("notes/none").await.unwrap().is_none());
        assert_eq!(counting.take(), RequestCounts::default(), "{}", b.name);
        assert_eq!(repo.get("notes/big").await.unwrap().unwrap(), blob_bytes(2));
        let c = counting.take();
        assert_eq!(summary(&c), counts(0, 1, 0, 1), "{}: {c:?}", b.name);
    }
}
