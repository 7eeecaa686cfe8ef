//! Review of the snapshot join (HEAD "Snapshot join ..."): inputs where a reader of a
//! bucket holding several snapshots does not show the fold of every change, or where
//! garbage collection stalls. Each test is minimal and fails on the reviewed commit.

mod common;

use common::{Backend, another, array_meta, backends};
use crzarr::bucket::Bucket;
use crzarr::gc::{GcOptions, ObjectKind};
use crzarr::repo::Repo;
use crzarr::sync::{SyncOptions, sync};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use std::sync::Arc;
use std::time::Duration;

fn gc_opts(older_than: Duration, force: bool) -> GcOptions {
    GcOptions {
        older_than,
        dry_run: false,
        force,
    }
}

/// Copies every object under `from_prefix/dir` of `from` to the same place under
/// `to_prefix` of `to`, unless there already (`cp -rn`).
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

const WITNESS: &str = "witness";

/// Raw copy of every change file and blob (and the marker) into the witness.
async fn witness(from: &Arc<dyn ObjectStore>, w: &Arc<dyn ObjectStore>, prefix: &str) {
    copy_tree(from, prefix, w, WITNESS, &[".crdt/ops", ".crdt/blobs"]).await;
    let marker = Path::from(format!("{WITNESS}/.crdt/repo.json"));
    if w.head(&marker).await.is_err() {
        let from_marker = Path::from(format!("{prefix}/.crdt/repo.json"));
        let bytes = from.get(&from_marker).await.unwrap().bytes().await.unwrap();
        w.put(&marker, bytes.into()).await.unwrap();
    }
}

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
        got.conflicts().await.unwrap(),
        want.conflicts().await.unwrap(),
        "{what}: conflicts"
    );
    assert_eq!(
        got.entries().await.unwrap(),
        want.entries().await.unwrap(),
        "{what}: entries"
    );
}

async fn commit(repo: &mut Repo, edits: &[(&str, &[u8])]) {
    let mut s = repo.session();
    for (k, v) in edits {
        s.set(k, v.to_vec()).unwrap();
    }
    s.commit(None).await.unwrap();
}

async fn sync_clean(a: &Bucket, b: &Bucket) {
    let r = sync(a, b, &SyncOptions::default()).await.unwrap();
    assert!(r.is_clean(), "{r:?}");
}

/// Three replicas of a repository with arrays `x` and `y`.
async fn three(b: &Backend) -> (Backend, Backend, Repo, Repo, Repo) {
    let (bb, bc) = (another(b), another(b));
    let mut a = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    let mut s = a.session();
    s.create_group("", Default::default()).unwrap();
    s.create_array("x", &array_meta(&[64], &[1])).unwrap();
    s.create_array("y", &array_meta(&[64], &[1])).unwrap();
    s.commit(None).await.unwrap();
    sync_clean(a.bucket(), &Bucket::new(bb.store.clone(), &bb.prefix)).await;
    sync_clean(a.bucket(), &Bucket::new(bc.store.clone(), &bc.prefix)).await;
    let rb = Repo::open(bb.store.clone(), &bb.prefix).await.unwrap();
    let rc = Repo::open(bc.store.clone(), &bc.prefix).await.unwrap();
    (bb, bc, a, rb, rc)
}

const SNAPSHOT_DIRS: &[&str] = &[".crdt/snapshots", ".crdt/manifests", ".crdt/archive"];

/// Three concurrent snapshots joined in sequence. The second join (of `b`) puts
/// `b`'s entry of chunk x/c/0 into the fold's memory; the third (of `c`, which
/// covers `b`'s write and overwrote it) must drop it. `join_chunks` drops it only
/// by adding a superseded record, but `Fold::chunk_entries` filters only piece
/// entries by records, never in-memory ones: the overwritten value shows up as a
/// conflict. Compaction then writes it into a piece, for good.
#[tokio::test]
async fn third_snapshot_drops_entry_the_second_join_put_in_memory() {
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
async fn compaction_of_three_way_join_keeps_overwritten_chunk() {
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
async fn old_snapshot_covered_through_the_archive_stalls_gc_for_ever() {
    for b in backends() {
        let backup: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let mut a = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = a.session();
        s.create_group("", Default::default()).unwrap();
        s.create_array("x", &array_meta(&[64], &[1])).unwrap();
        s.commit(None).await.unwrap();
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
        s.commit(None).await.unwrap();
        sync_clean(a.bucket(), &Bucket::new(b2.store.clone(), &b2.prefix)).await;
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
            &Bucket::new(d.store.clone(), &d.prefix),
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
