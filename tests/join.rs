//! Snapshots that do not supersede one another are joined (spec/merge.md §9): issue 14
//! items 4, 11 and 13. Replicas that compact and collect garbage apart merge again, a
//! raw bucket copy hides nothing, and a laptop offline for eight days while both sides
//! collect with a seven-day window syncs back with nothing refused. Each shows the
//! fold of every change ever committed, compared with a witness bucket that received a
//! raw copy of every change file before any was collected. On every backend.

mod common;

use common::{Backend, another, array_meta, backends};
use crzarr::bucket::Bucket;
use crzarr::gc::{GcOptions, ObjectKind};
use crzarr::repo::Repo;
use crzarr::sync::{SyncOptions, sync};
use crzarr::testing::ClockStore;
use crzarr::verify::{VerifyOptions, verify};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use std::sync::Arc;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn gc_opts(older_than: Duration, force: bool) -> GcOptions {
    GcOptions {
        older_than,
        dry_run: false,
        force,
    }
}

/// Copies every object under `from_prefix/dir` of `from` to the same place under
/// `to_prefix` of `to`, unless there already (what `cp -rn`, `rclone copy` or
/// `aws s3 sync` do to a bucket).
async fn copy_tree(
    from: &Arc<dyn ObjectStore>,
    from_prefix: &str,
    to: &Arc<dyn ObjectStore>,
    to_prefix: &str,
    dirs: &[&str],
) {
    for dir in dirs {
        let root = Path::from(format!("{from_prefix}/{dir}"));
        let listed: Vec<_> = from.list(Some(&root)).collect().await;
        for m in listed {
            let m = m.unwrap();
            let rel = m
                .location
                .as_ref()
                .strip_prefix(&format!("{from_prefix}/"))
                .unwrap();
            let target = Path::from(format!("{to_prefix}/{rel}"));
            if to.head(&target).await.is_ok() {
                continue;
            }
            let bytes = from.get(&m.location).await.unwrap().bytes().await.unwrap();
            to.put(&target, bytes.into()).await.unwrap();
        }
    }
}

/// Where the witness keeps its copy.
const WITNESS: &str = "witness";

/// Keeps a raw copy of every change file and blob of `from` (and its marker) in the
/// witness bucket: the fold of everything ever committed.
async fn witness(from: &Arc<dyn ObjectStore>, w: &Arc<dyn ObjectStore>, prefix: &str) {
    copy_tree(from, prefix, w, WITNESS, &[".crdt/ops", ".crdt/blobs"]).await;
    // The marker is one object (a LIST prefix names a directory).
    let marker = Path::from(format!("{WITNESS}/.crdt/repo.json"));
    if w.head(&marker).await.is_err() {
        let from_marker = Path::from(format!("{prefix}/.crdt/repo.json"));
        let bytes = from.get(&from_marker).await.unwrap().bytes().await.unwrap();
        w.put(&marker, bytes.into()).await.unwrap();
    }
}

/// A fresh reader shows exactly what the witness (every change, no snapshot) shows,
/// with no problem and nothing pending.
async fn assert_shows_everything(
    store: Arc<dyn ObjectStore>,
    prefix: &str,
    w: &Arc<dyn ObjectStore>,
    what: &str,
) {
    let want = Repo::open(w.clone(), WITNESS).await.unwrap();
    let got = Repo::open(store, prefix).await.unwrap();
    assert_eq!(got.problems(), vec![], "{what}: problems");
    assert_eq!(got.pending(), vec![], "{what}: pending");
    assert_eq!(got.fold().heads(), want.fold().heads(), "{what}: heads");
    assert_eq!(
        got.entries().await.unwrap(),
        want.entries().await.unwrap(),
        "{what}: entries"
    );
    assert_eq!(
        got.conflicts().await.unwrap(),
        want.conflicts().await.unwrap(),
        "{what}: conflicts"
    );
}

async fn commit(repo: &mut Repo, edits: &[(&str, &[u8])]) {
    let mut s = repo.session();
    for (k, v) in edits {
        s.set(k, v.to_vec()).unwrap();
    }
    s.commit(None).await.unwrap();
}

/// A repository with arrays `x` and `y`, replicated to a second bucket.
async fn pair(b: &Backend) -> (Backend, Repo, Repo) {
    let b2 = another(b);
    let mut a = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    let mut s = a.session();
    s.create_group("", Default::default()).unwrap();
    s.create_array("x", &array_meta(&[64], &[1])).unwrap();
    s.create_array("y", &array_meta(&[64], &[1])).unwrap();
    s.set_attr("", "title", "base".into()).unwrap();
    s.commit(None).await.unwrap();
    let r = sync(
        a.bucket(),
        &Bucket::new(b2.store.clone(), &b2.prefix),
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
            s.commit(None).await.unwrap();
        }
        {
            let mut s = c.session();
            s.set_attr("", "title", "from c".into()).unwrap();
            s.set("x/c/3", b"c3".to_vec()).unwrap();
            s.commit(None).await.unwrap();
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

        // One compaction writes the join; collection verifies it and retires both.
        let cr = a.compact().await.unwrap();
        assert!(cr.snapshot.is_some(), "{}: {cr:?}", b.name);
        assert_eq!(cr.supersedes.len(), 2, "{}: {cr:?}", b.name);
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
        s.commit(None).await.unwrap();
        let r = sync(
            cloud.bucket(),
            &Bucket::new(laptop_store.clone(), &b2.prefix),
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
