//! Snapshots that do not supersede one another are joined (spec/merge.md §9): issue 14
//! items 4, 11 and 13. Replicas that compact and collect garbage apart merge again, a
//! raw bucket copy hides nothing, and a laptop offline for eight days while both sides
//! collect with a seven-day window syncs back with nothing refused. Each shows the
//! fold of every change ever committed, compared with a witness bucket that received a
//! raw copy of every change file before any was collected. On every backend.

use crate::common::witness::{
    SNAPSHOT_DIRS, WITNESS, assert_shows_everything, commit, copy_tree, gc_opts, sync_clean,
    witness,
};
use crate::common::{Backend, another, array_meta, backends};
use crzarr::io::store::RepoStore;
use crzarr::io::testing::ClockStore;
use crzarr::ops::gc::ObjectKind;
use crzarr::ops::sync::{SyncOptions, sync};
use crzarr::ops::verify::{VerifyOptions, verify};
use crzarr::repo::Repo;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use std::sync::Arc;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A repository with arrays `x` and `y`, replicated to a second bucket.
async fn pair(b: &Backend) -> (Backend, Repo, Repo) {
    let b2 = another(b);
    let mut a = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    let mut s = a.session();
    s.create_group("", Default::default()).unwrap();
    s.create_array("x", &array_meta(&[64], &[1])).unwrap();
    s.create_array("y", &array_meta(&[64], &[1])).unwrap();
    s.set_attr("", "title", "base".into()).unwrap();
    s.commit(&mut a, None).await.unwrap();
    let r = sync(
        a.bucket(),
        &RepoStore::new(b2.store.clone(), &b2.prefix),
        &SyncOptions::default(),
    )
    .await
    .unwrap();
    assert!(r.is_clean(), "{r:?}");
    let c = Repo::open(b2.store.clone(), &b2.prefix).await.unwrap();
    (b2, a, c)
}

/// Issue 14 item 4: two replicas edit concurrently (the same chunk, one attribute,
/// a delete on one side beside an edit on the other), each compacts and collects with
/// a zero window, then they sync: nothing is refused, both show the fold of every
/// change, and compaction plus collection then retires the two lines of history.
#[tokio::test]
async fn replicas_compacted_and_collected_apart_merge_again() {
    for b in backends() {
        let w: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let (b2, mut a, mut c) = pair(&b).await;
        commit(
            &mut a,
            &[("x/c/0", b"a0"), ("x/c/1", b"a1"), ("y/c/5", b"a5")],
        )
        .await;
        commit(
            &mut c,
            &[("x/c/0", b"c0"), ("x/c/2", b"c2"), ("y/c/5", b"c5")],
        )
        .await;
        {
            let mut s = a.session();
            s.set_attr("", "title", "from a".into()).unwrap();
            s.delete_chunk("x", "c/1").unwrap();
            s.commit(&mut a, None).await.unwrap();
        }
        {
            let mut s = c.session();
            s.set_attr("", "title", "from c".into()).unwrap();
            s.set("x/c/3", b"c3".to_vec()).unwrap();
            s.commit(&mut c, None).await.unwrap();
        }
        // Overwrites that supersede entries the snapshot of the other side keeps.
        commit(&mut a, &[("y/c/5", b"a5 again")]).await;
        witness(&b.store, &w, &b.prefix).await;
        witness(&b2.store, &w, &b2.prefix).await;
        for r in [&mut a, &mut c] {
            r.compact().await.unwrap();
            let g = r.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
            assert!(
                g.removed.iter().any(|x| x.kind == ObjectKind::Change),
                "{}: {g:?}",
                b.name
            );
        }
        let rep = sync(a.bucket(), c.bucket(), &SyncOptions::default())
            .await
            .unwrap();
        assert!(rep.is_clean(), "{}: {rep:?}", b.name);
        // Each side now held two snapshots compacted apart: sync wrote their join there.
        assert_eq!(rep.joins_written.len(), 2, "{}: {rep:?}", b.name);
        assert_shows_everything(b.store.clone(), &b.prefix, &w, b.name).await;
        assert_shows_everything(b2.store.clone(), &b2.prefix, &w, b.name).await;
        // The handles refresh into the joined state too.
        for r in [&mut a, &mut c] {
            r.refresh().await.unwrap();
            assert_eq!(r.problems(), vec![], "{}", b.name);
        }
        assert_eq!(
            a.entries().await.unwrap(),
            c.entries().await.unwrap(),
            "{}",
            b.name
        );

        // Collection verifies the join against the two it joins and retires both.
        let g = a.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        assert_eq!(g.unverified, None, "{}: {g:?}", b.name);
        assert!(
            g.removed
                .iter()
                .filter(|x| x.kind == ObjectKind::Snapshot)
                .count()
                >= 2,
            "{}: {g:?}",
            b.name
        );
        assert_shows_everything(b.store.clone(), &b.prefix, &w, b.name).await;
        // And it travels back: the other side takes the join and collects too.
        let rep = sync(a.bucket(), c.bucket(), &SyncOptions::default())
            .await
            .unwrap();
        assert!(rep.is_clean(), "{}: {rep:?}", b.name);
        c.refresh().await.unwrap();
        c.compact().await.unwrap();
        assert_shows_everything(b2.store.clone(), &b2.prefix, &w, b.name).await;
        let v = verify(c.bucket(), &VerifyOptions::default()).await.unwrap();
        assert!(v.is_clean(), "{}: {v:?}", b.name);
    }
}

/// Issue 14 item 11: a replica that compacted and collected receives a raw copy of an
/// older clone's `.crdt/` tree (copy what is missing, as `cp -rn` does), whose
/// snapshot has the greater count. Readers still show every committed write.
#[tokio::test]
async fn raw_bucket_copy_hides_no_committed_data() {
    for b in backends() {
        let w: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let (b2, mut a, mut c) = pair(&b).await;
        commit(&mut a, &[("x/c/7", b"only on a")]).await;
        for i in 0..5u8 {
            commit(&mut c, &[(&format!("y/c/{i}"), &[i][..])]).await;
        }
        witness(&b.store, &w, &b.prefix).await;
        witness(&b2.store, &w, &b2.prefix).await;
        a.compact().await.unwrap();
        a.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        let cr = c.compact().await.unwrap();
        assert!(
            cr.covered > a.compact().await.unwrap().covered,
            "{}: the copy must win by count",
            b.name
        );
        // The clone's tree lands in a's bucket.
        copy_tree(
            &b2.store,
            &b2.prefix,
            &b.store,
            &b.prefix,
            &[
                ".crdt/ops",
                ".crdt/blobs",
                ".crdt/snapshots",
                ".crdt/manifests",
                ".crdt/archive",
            ],
        )
        .await;
        assert_shows_everything(b.store.clone(), &b.prefix, &w, b.name).await;
        let r = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(
            r.get("x/c/7").await.unwrap().as_deref(),
            Some(&b"only on a"[..]),
            "{}",
            b.name
        );
        let v = verify(r.bucket(), &VerifyOptions::default()).await.unwrap();
        assert!(v.is_clean(), "{}: {v:?}", b.name);
        // Compaction folds the two into one; collection then proceeds.
        a.refresh().await.unwrap();
        a.compact().await.unwrap();
        let g = a.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        assert_eq!(g.unverified, None, "{}: {g:?}", b.name);
        assert_shows_everything(b.store.clone(), &b.prefix, &w, b.name).await;
    }
}

/// Issue 14 item 13, as users meet it: a laptop is offline for eight days while it and
/// the cloud bucket each compact and collect with `--older-than 7d` (above the default
/// one-day minimum, no force). Sync then refuses nothing, both sides show every edit
/// of the other, and both go on collecting.
#[tokio::test]
async fn laptop_offline_eight_days_while_both_sides_collect() {
    for b in backends() {
        let w: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let b2 = another(&b);
        let (cloud_clock, laptop_clock) = (
            ClockStore::new(b.store.clone()),
            ClockStore::new(b2.store.clone()),
        );
        let (cloud_store, laptop_store): (Arc<dyn ObjectStore>, Arc<dyn ObjectStore>) = (
            Arc::new(cloud_clock.clone()),
            Arc::new(laptop_clock.clone()),
        );
        let mut cloud = Repo::init(cloud_store.clone(), &b.prefix).await.unwrap();
        let mut s = cloud.session();
        s.create_group("", Default::default()).unwrap();
        s.create_array("x", &array_meta(&[64], &[1])).unwrap();
        s.commit(&mut cloud, None).await.unwrap();
        let r = sync(
            cloud.bucket(),
            &RepoStore::new(laptop_store.clone(), &b2.prefix),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
        assert!(r.is_clean(), "{r:?}");
        let mut laptop = Repo::open(laptop_store.clone(), &b2.prefix).await.unwrap();
        // Eight days apart: each side edits, compacts daily, collects with 7 days.
        for day in 0..8u8 {
            commit(
                &mut cloud,
                &[
                    (&format!("x/c/{day}"), &[day][..]),
                    ("x/c/40", &[100 + day][..]),
                ],
            )
            .await;
            commit(
                &mut laptop,
                &[
                    (&format!("x/c/{}", 20 + day), &[day][..]),
                    ("x/c/40", &[200 + day][..]),
                ],
            )
            .await;
            witness(&b.store, &w, &b.prefix).await;
            witness(&b2.store, &w, &b2.prefix).await;
            for (r, clock) in [(&mut cloud, &cloud_clock), (&mut laptop, &laptop_clock)] {
                r.compact().await.unwrap();
                clock.advance(DAY);
                r.gc(&gc_opts(7 * DAY, false)).await.unwrap();
            }
        }
        // By now both sides collected change files the other never saw.
        let ops = |p: &str| Path::from(format!("{p}/.crdt/ops"));
        let on_cloud: Vec<_> = b.store.list(Some(&ops(&b.prefix))).collect().await;
        assert!(
            on_cloud.len() < 8 * 2,
            "{}: the cloud collected nothing",
            b.name
        );
        let rep = sync(cloud.bucket(), laptop.bucket(), &SyncOptions::default())
            .await
            .unwrap();
        assert!(rep.is_clean(), "{}: {rep:?}", b.name);
        assert_shows_everything(cloud_store.clone(), &b.prefix, &w, b.name).await;
        assert_shows_everything(laptop_store.clone(), &b2.prefix, &w, b.name).await;
        // Life goes on: both edit, compact and collect (verifying the joined snapshot
        // against the two it joins), then sync; still everything.
        for r in [&mut cloud, &mut laptop] {
            r.refresh().await.unwrap();
            commit(r, &[("x/c/63", b"after")]).await;
        }
        witness(&b.store, &w, &b.prefix).await;
        witness(&b2.store, &w, &b2.prefix).await;
        for (r, clock) in [(&mut cloud, &cloud_clock), (&mut laptop, &laptop_clock)] {
            r.compact().await.unwrap();
            clock.advance(8 * DAY);
            let g = r.gc(&gc_opts(7 * DAY, false)).await.unwrap();
            assert_eq!(g.unverified, None, "{}: {g:?}", b.name);
            assert!(
                g.removed.iter().any(|x| x.kind == ObjectKind::Snapshot),
                "{}: {g:?}",
                b.name
            );
        }
        let rep = sync(cloud.bucket(), laptop.bucket(), &SyncOptions::default())
            .await
            .unwrap();
        assert!(rep.is_clean(), "{}: {rep:?}", b.name);
        assert_shows_everything(cloud_store.clone(), &b.prefix, &w, b.name).await;
        assert_shows_everything(laptop_store.clone(), &b2.prefix, &w, b.name).await;
    }
}

/// Three snapshots joined in turn, where the third covers a value the second brought
/// and overwrote it: the value the first join added is dropped by the second (it lives
/// in memory between joins, not in a piece). Counts order the joins: the greatest
/// snapshot first, then the one holding the value, then the one that overwrote it.
#[tokio::test]
async fn three_snapshots_join_to_the_fold_of_everything() {
    for b in backends() {
        let w: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let (b1, mut g, mut r1) = pair(&b).await;
        let b2 = another(&b);
        let r = sync(
            g.bucket(),
            &RepoStore::new(b2.store.clone(), &b2.prefix),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
        assert!(r.is_clean(), "{r:?}");
        let mut r2 = Repo::open(b2.store.clone(), &b2.prefix).await.unwrap();
        commit(&mut r1, &[("x/c/0", b"from r1")]).await;
        let r = sync(r1.bucket(), r2.bucket(), &SyncOptions::default())
            .await
            .unwrap();
        assert!(r.is_clean(), "{r:?}");
        r2.refresh().await.unwrap();
        commit(&mut r2, &[("x/c/0", b"r2 overwrote r1")]).await;
        for i in 1..6u8 {
            commit(&mut r1, &[(&format!("x/c/{i}"), &[i][..])]).await;
        }
        for i in 0..10u8 {
            commit(&mut g, &[(&format!("x/c/{}", 20 + i), &[i][..])]).await;
        }
        for (store, prefix) in [
            (&b.store, &b.prefix),
            (&b1.store, &b1.prefix),
            (&b2.store, &b2.prefix),
        ] {
            witness(store, &w, prefix).await;
        }
        for r in [&mut g, &mut r1, &mut r2] {
            r.compact().await.unwrap();
            r.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        }
        // Raw copies (a sync would write their join right away).
        for from in [&b1, &b2] {
            copy_tree(
                &from.store,
                &from.prefix,
                &b.store,
                &b.prefix,
                &[
                    ".crdt/ops",
                    ".crdt/blobs",
                    ".crdt/snapshots",
                    ".crdt/manifests",
                    ".crdt/archive",
                ],
            )
            .await;
        }
        let snaps: Vec<_> = b
            .store
            .list(Some(&Path::from(format!("{}/.crdt/snapshots", b.prefix))))
            .collect()
            .await;
        assert_eq!(snaps.len(), 3, "{}: three snapshots to join", b.name);
        assert_shows_everything(b.store.clone(), &b.prefix, &w, b.name).await;
        g.refresh().await.unwrap();
        assert_eq!(
            g.entries().await.unwrap(),
            Repo::open(w.clone(), WITNESS)
                .await
                .unwrap()
                .entries()
                .await
                .unwrap(),
            "{}: the refreshed handle",
            b.name
        );
        let cr = g.compact().await.unwrap();
        assert_eq!(cr.supersedes.len(), 3, "{}: {cr:?}", b.name);
        assert_shows_everything(b.store.clone(), &b.prefix, &w, b.name).await;
    }
}

/// An old snapshot copied back into a bucket whose newest snapshot covers it only
/// through its archive (its heads left the table when their files were collected) is
/// subsumed for readers; compaction writes nothing for it alone (a snapshot written
/// only to name it would tie its base's count and might sort below it, and the next
/// compaction would write another); GC counts it as covered by the retained snapshot,
/// and retires it once that snapshot is verified.
#[tokio::test]
async fn an_old_snapshot_copied_back_is_retired() {
    for b in backends() {
        let (b2, mut a, _c) = pair(&b).await;
        commit(&mut a, &[("x/c/1", b"one")]).await;
        a.compact().await.unwrap();
        // The clone keeps that snapshot.
        let r = sync(
            a.bucket(),
            &RepoStore::new(b2.store.clone(), &b2.prefix),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
        assert!(r.is_clean(), "{r:?}");
        for v in [&b"two"[..], b"three"] {
            commit(&mut a, &[("x/c/2", v)]).await;
            a.compact().await.unwrap();
            a.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        }
        copy_tree(
            &b2.store,
            &b2.prefix,
            &b.store,
            &b.prefix,
            &[".crdt/snapshots", ".crdt/manifests", ".crdt/archive"],
        )
        .await;
        let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(fresh.problems(), vec![], "{}", b.name);
        assert_eq!(
            fresh.get("x/c/2").await.unwrap().as_deref(),
            Some(&b"three"[..])
        );
        assert_eq!(
            fresh.get("x/c/1").await.unwrap().as_deref(),
            Some(&b"one"[..])
        );
        a.refresh().await.unwrap();
        let cr = a.compact().await.unwrap();
        assert_eq!(
            cr.snapshot, None,
            "{}: nothing new to write: {cr:?}",
            b.name
        );
        // The next compaction names it among what it supersedes, and GC, verifying that
        // one against its predecessor, retires both.
        commit(&mut a, &[("x/c/3", b"four")]).await;
        let cr = a.compact().await.unwrap();
        assert_eq!(cr.supersedes.len(), 2, "{}: {cr:?}", b.name);
        let g = a.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        assert_eq!(g.unverified, None, "{}: {g:?}", b.name);
        let gone: Vec<&str> = g
            .removed
            .iter()
            .filter(|x| x.kind == ObjectKind::Snapshot)
            .map(|x| x.key.as_str())
            .collect();
        assert_eq!(gone.len(), 2, "{}: the old copy goes: {g:?}", b.name);
        assert!(
            gone.iter().any(|k| k.contains("/00000000000000000002-")),
            "{}: {g:?}",
            b.name
        );
        let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(
            fresh.get("x/c/2").await.unwrap().as_deref(),
            Some(&b"three"[..])
        );
        assert_eq!(
            fresh.get("x/c/1").await.unwrap().as_deref(),
            Some(&b"one"[..])
        );
    }
}

/// Figures, not assertions
/// (`cargo test --release --test suite join::join_cost_figures -- --ignored --nocapture`):
/// what opening a bucket with two snapshots compacted apart costs (requests, round trips
/// and time in memory), against the same bucket once compaction wrote their join. Each
/// side holds an array of 20,000 chunks (two manifest pieces), and edited 2,000 of them
/// apart.
#[tokio::test]
#[ignore]
async fn join_cost_figures() {
    use crzarr::io::counting::CountingStore;
    use std::time::Instant;
    const N: u32 = 20_000;
    let b = crate::common::memory();
    let b2 = another(&b);
    let mut a = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    let mut s = a.session();
    s.create_group("", Default::default()).unwrap();
    s.create_array("x", &array_meta(&[u64::from(N)], &[1]))
        .unwrap();
    for i in 0..N {
        s.set(&format!("x/c/{i}"), i.to_le_bytes().to_vec())
            .unwrap();
    }
    s.commit(&mut a, None).await.unwrap();
    a.compact().await.unwrap();
    sync(
        a.bucket(),
        &RepoStore::new(b2.store.clone(), &b2.prefix),
        &SyncOptions::default(),
    )
    .await
    .unwrap();
    let mut c = Repo::open(b2.store.clone(), &b2.prefix).await.unwrap();
    for (r, tag) in [(&mut a, 1u8), (&mut c, 2u8)] {
        for k in 0..20u32 {
            let mut s = r.session();
            for i in 0..100u32 {
                let key = (u32::from(tag) * 5_000 + k * 100 + i) % N;
                s.set(&format!("x/c/{key}"), vec![tag; 4]).unwrap();
            }
            s.commit(r, None).await.unwrap();
        }
        r.compact().await.unwrap();
        r.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
    }
    sync(a.bucket(), c.bucket(), &SyncOptions::default())
        .await
        .unwrap();
    let measure = |what: &'static str| {
        let store = b.store.clone();
        let prefix = b.prefix.clone();
        async move {
            let counting = CountingStore::new(store);
            let mut times = Vec::new();
            let mut counts = None;
            for _ in 0..5 {
                counting.reset();
                let t = Instant::now();
                let r = Repo::open(Arc::new(counting.clone()), &prefix)
                    .await
                    .unwrap();
                times.push(t.elapsed());
                counts = Some(counting.snapshot());
                assert_eq!(r.problems(), vec![]);
            }
            times.sort();
            println!(
                "{what}: open median {:?}, requests {:?}",
                times[2],
                counts.unwrap()
            );
        }
    };
    measure("two snapshots, joined at open").await;
    a.refresh().await.unwrap();
    a.compact().await.unwrap();
    measure("their join, written by one compaction").await;
}

// Found by a review of the join (each failed on its first version).

/// Three replicas of a repository with arrays `x` and `y`.
async fn three(b: &Backend) -> (Backend, Backend, Repo, Repo, Repo) {
    let (bb, bc) = (another(b), another(b));
    let mut a = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    let mut s = a.session();
    s.create_group("", Default::default()).unwrap();
    s.create_array("x", &array_meta(&[64], &[1])).unwrap();
    s.create_array("y", &array_meta(&[64], &[1])).unwrap();
    s.commit(&mut a, None).await.unwrap();
    sync_clean(a.bucket(), &RepoStore::new(bb.store.clone(), &bb.prefix)).await;
    sync_clean(a.bucket(), &RepoStore::new(bc.store.clone(), &bc.prefix)).await;
    let rb = Repo::open(bb.store.clone(), &bb.prefix).await.unwrap();
    let rc = Repo::open(bc.store.clone(), &bc.prefix).await.unwrap();
    (bb, bc, a, rb, rc)
}

/// Three concurrent snapshots joined in sequence. The second join (of `b`) puts
/// `b`'s entry of chunk x/c/0 into the fold's memory; the third (of `c`, which
/// covers `b`'s write and overwrote it) must drop it. `join_chunks` drops it only
/// by adding a superseded record, but `Fold::chunk_entries` filters only piece
/// entries by records, never in-memory ones: the overwritten value shows up as a
/// conflict. Compaction then writes it into a piece, for good.
#[tokio::test]
async fn a_third_snapshot_drops_an_entry_the_second_join_holds_in_memory() {
    for b in backends() {
        let w: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let (bb, bc, mut a, mut rb, mut rc) = three(&b).await;
        // b writes x/c/0; c receives that change (as a file, no snapshot yet) and
        // overwrites it.
        commit(&mut rb, &[("x/c/0", b"from b")]).await;
        sync_clean(rb.bucket(), rc.bucket()).await;
        rc.refresh().await.unwrap();
        commit(&mut rc, &[("x/c/0", b"from c")]).await;
        // Counts so that the reader loads a's snapshot, then joins b's, then c's:
        // a covers 6 changes, b 5, c 3.
        for i in 0..3u8 {
            commit(&mut rb, &[(&format!("y/c/{i}"), &[i][..])]).await;
        }
        commit(&mut a, &[("x/c/1", b"from a")]).await;
        for i in 10..14u8 {
            commit(&mut a, &[(&format!("y/c/{i}"), &[i][..])]).await;
        }
        for (st, p) in [
            (&b.store, &b.prefix),
            (&bb.store, &bb.prefix),
            (&bc.store, &bc.prefix),
        ] {
            witness(st, &w, p).await;
        }
        let ca = a.compact().await.unwrap();
        let cb = rb.compact().await.unwrap();
        let cc = rc.compact().await.unwrap();
        assert!(
            ca.covered > cb.covered && cb.covered > cc.covered,
            "{}: {ca:?} {cb:?} {cc:?}",
            b.name
        );
        // Raw copies of b's and c's snapshots land in a's bucket.
        copy_tree(&bb.store, &bb.prefix, &b.store, &b.prefix, SNAPSHOT_DIRS).await;
        copy_tree(&bc.store, &bc.prefix, &b.store, &b.prefix, SNAPSHOT_DIRS).await;
        assert_shows_everything(b.store.clone(), &b.prefix, &w, b.name).await;
    }
}

/// The same three snapshots, compacted: the snapshot written from the joined state
/// must read as the fold of every change (it holds the overwritten value for good).
#[tokio::test]
async fn compaction_of_a_three_way_join_writes_no_overwritten_chunk() {
    for b in backends() {
        let w: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let (bb, bc, mut a, mut rb, mut rc) = three(&b).await;
        commit(&mut rb, &[("x/c/0", b"from b")]).await;
        sync_clean(rb.bucket(), rc.bucket()).await;
        rc.refresh().await.unwrap();
        commit(&mut rc, &[("x/c/0", b"from c")]).await;
        for i in 0..3u8 {
            commit(&mut rb, &[(&format!("y/c/{i}"), &[i][..])]).await;
        }
        commit(&mut a, &[("x/c/1", b"from a")]).await;
        for i in 10..14u8 {
            commit(&mut a, &[(&format!("y/c/{i}"), &[i][..])]).await;
        }
        for (st, p) in [
            (&b.store, &b.prefix),
            (&bb.store, &bb.prefix),
            (&bc.store, &bc.prefix),
        ] {
            witness(st, &w, p).await;
        }
        a.compact().await.unwrap();
        rb.compact().await.unwrap();
        rc.compact().await.unwrap();
        copy_tree(&bb.store, &bb.prefix, &b.store, &b.prefix, SNAPSHOT_DIRS).await;
        copy_tree(&bc.store, &bc.prefix, &b.store, &b.prefix, SNAPSHOT_DIRS).await;
        a.refresh().await.unwrap();
        let cr = a.compact().await.unwrap();
        assert!(cr.snapshot.is_some(), "{}: {cr:?}", b.name);
        a.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        assert_shows_everything(b.store.clone(), &b.prefix, &w, b.name).await;
    }
}

/// A raw copy of an old backup brings back a snapshot whose heads the current
/// snapshot covers only in its coverage archive. Readers see it is subsumed, but
/// compaction (`covers_snapshot` checks only `fold.contains`, not the archive)
/// never lists it as superseded, and garbage collection treats it as a concurrent
/// line of history: nothing is ever deleted again, whatever is committed and
/// compacted since.
#[tokio::test]
async fn an_old_snapshot_covered_only_through_the_archive_does_not_stall_gc() {
    for b in backends() {
        let backup: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let mut a = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = a.session();
        s.create_group("", Default::default()).unwrap();
        s.create_array("x", &array_meta(&[64], &[1])).unwrap();
        s.commit(&mut a, None).await.unwrap();
        commit(&mut a, &[("x/c/0", b"one")]).await;
        a.compact().await.unwrap();
        // A backup of the snapshot tree as it is now.
        copy_tree(&b.store, &b.prefix, &backup, "backup", SNAPSHOT_DIRS).await;
        // Life goes on: two rounds of commit, compact, collect: the old heads leave
        // the table for the archive.
        for i in 1..3u8 {
            commit(&mut a, &[(&format!("x/c/{i}"), &[i][..])]).await;
            a.compact().await.unwrap();
            a.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        }
        // The backup is restored with `cp -rn` (only what is missing lands).
        copy_tree(&backup, "backup", &b.store, &b.prefix, SNAPSHOT_DIRS).await;
        let r = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(r.problems(), vec![], "{}", b.name);
        assert_eq!(
            r.get("x/c/2").await.unwrap().as_deref(),
            Some(&[2u8][..]),
            "{}",
            b.name
        );
        // More edits, compaction, collection: the restored snapshot is covered by
        // everything here, so collection must retire it and go on.
        a.refresh().await.unwrap();
        commit(&mut a, &[("x/c/3", b"three")]).await;
        a.compact().await.unwrap();
        let g = a.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        assert!(
            g.removed.iter().any(|x| x.kind == ObjectKind::Snapshot)
                && g.removed.iter().any(|x| x.kind == ObjectKind::Change),
            "{}: collection stalled: {g:?}",
            b.name
        );
    }
}

/// A blob lost at the source (damage, a manual delete) goes unreported when the
/// source holds two concurrent snapshots that both cover the value's writer: the
/// `siblings` excuse in `Copier::copy_values` assumes a sibling covering the writer
/// dropped the value, but here both snapshots hold it (it was written before the two
/// lines of history parted). Sync reports clean while the destination can never
/// read the chunk.
#[tokio::test]
async fn blob_lost_at_source_is_reported_with_concurrent_snapshots() {
    for b in backends() {
        let b2 = another(&b);
        let big = vec![7u8; 10_000];
        let mut a = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = a.session();
        s.create_group("", Default::default()).unwrap();
        s.create_array("x", &array_meta(&[64], &[1])).unwrap();
        s.set("x/c/9", big.clone()).unwrap();
        s.commit(&mut a, None).await.unwrap();
        sync_clean(a.bucket(), &RepoStore::new(b2.store.clone(), &b2.prefix)).await;
        let mut c = Repo::open(b2.store.clone(), &b2.prefix).await.unwrap();
        commit(&mut a, &[("x/c/0", b"a")]).await;
        commit(&mut c, &[("x/c/1", b"c")]).await;
        for r in [&mut a, &mut c] {
            r.compact().await.unwrap();
            r.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        }
        // a now holds both snapshots.
        sync_clean(c.bucket(), a.bucket()).await;
        let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(
            fresh.get("x/c/9").await.unwrap().as_deref(),
            Some(&big[..]),
            "{}",
            b.name
        );
        // The blob is lost at a.
        let blobs = Path::from(format!("{}/.crdt/blobs", b.prefix));
        let listed: Vec<_> = b.store.list(Some(&blobs)).collect().await;
        assert_eq!(listed.len(), 1, "{}", b.name);
        b.store
            .delete(&listed[0].as_ref().unwrap().location)
            .await
            .unwrap();
        // A new replica syncs from a: the loss must be reported, as it is with one
        // snapshot.
        let d = another(&b);
        let r = sync(
            a.bucket(),
            &RepoStore::new(d.store.clone(), &d.prefix),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
        assert!(
            !r.is_clean(),
            "{}: a blob missing at the source went unreported: {r:?}",
            b.name
        );
    }
}
