//! Edges of the snapshot join (spec/merge.md §9.1), found by a review: the history
//! horizon in a joined state, forks archived apart, dimension and object registers
//! across joins, GC's verification of a snapshot written from a join of joins, and
//! handles that commit after a refresh joined a concurrent snapshot. Each test states what it expects of the fold of every change
//! (a witness bucket holding a raw copy of every change file ever written).

use crate::common::changes::{forger, on_top, put_change};
use crate::common::witness::{
    SNAPSHOT_DIRS, WITNESS, assert_shows_everything, commit, copy_tree, gc_opts, sync_clean,
    witness,
};
use crate::common::{Backend, another, array_meta, backends, memory};
use crzarr::format::change::{Change, Op, OpRef};
use crzarr::format::ids::ChangeHash;
use crzarr::format::layout::{Layout, SnapshotName};
use crzarr::format::snapshot::SnapshotMeta;
use crzarr::io::store::RepoStore;
use crzarr::io::testing::ClockStore;
use crzarr::ops::gc::ObjectKind;
use crzarr::ops::sync::{SyncOptions, sync};
use crzarr::repo::Repo;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

async fn push(a: &RepoStore, b: &RepoStore) {
    let opts = SyncOptions {
        direction: crzarr::ops::sync::Direction::Push,
        ..SyncOptions::default()
    };
    let r = sync(a, b, &opts).await.unwrap();
    assert!(r.is_clean(), "{r:?}");
}

fn hash_of(c: &Change) -> ChangeHash {
    ChangeHash::of(&c.encode())
}

async fn snapshot_meta(store: &Arc<dyn ObjectStore>, prefix: &str, snapshot: &str) -> SnapshotMeta {
    let name = SnapshotName::parse(snapshot).unwrap();
    let key = Layout::new(prefix).snapshot(&name);
    let bytes = store.get(&key).await.unwrap().bytes().await.unwrap();
    SnapshotMeta::decode("s", &bytes, &name.hash).unwrap()
}

/// A repository with a root group, arrays `x` and `y`, an attribute and a root object,
/// replicated to a second bucket.
async fn pair(b: &Backend) -> (Backend, Repo, Repo) {
    let b2 = another(b);
    let mut a = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    let mut s = a.session();
    s.create_group("", Default::default()).unwrap();
    s.create_array("x", &array_meta(&[64], &[1])).unwrap();
    s.create_array("y", &array_meta(&[64], &[1])).unwrap();
    s.set_attr("", "title", "base".into()).unwrap();
    s.set("notes.txt", b"base notes".to_vec()).unwrap();
    s.set("y/c/0", b"y0".to_vec()).unwrap();
    s.set("x/c/20", b"x20".to_vec()).unwrap();
    s.commit(&mut a, None).await.unwrap();
    sync_clean(a.bucket(), &RepoStore::new(b2.store.clone(), &b2.prefix)).await;
    let c = Repo::open(b2.store.clone(), &b2.prefix).await.unwrap();
    (b2, a, c)
}

// ---------------------------------------------------------------------------------
// 1. The history horizon in a joined state.
// ---------------------------------------------------------------------------------

/// A record of a *young* joined snapshot must not be dropped because the *primary*
/// base (the one with the greatest count) is past the horizon.
///
/// RepoStore `b` holds snapshot P (greatest count) written two hours ago (window one
/// hour). Replica `c` applies change W, whose `observed` names the entry of change X
/// that nobody has delivered yet, and compacts: its snapshot Q (young) keeps the
/// record naming X. Q is copied into `b`; `b` compacts the join. The record has been
/// held for minutes, not a window, but `base_past_horizon` (src/compact.rs) judges
/// only P's age and every joined record carries `from_base = true`: it is dropped.
/// When X then arrives, readers of `b` show X's value beside W's (an attribute
/// conflict) while the fold of every change drops it.
#[tokio::test]
async fn a_young_joined_snapshots_record_is_not_dropped_by_the_primarys_age() {
    let b = memory();
    let w: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let clock = ClockStore::new(b.store.clone());
    let store: Arc<dyn ObjectStore> = Arc::new(clock.clone());
    let mut a = Repo::init(store.clone(), &b.prefix).await.unwrap();
    a.bucket()
        .write_config(&crzarr::io::store::RepoConfig {
            min_gc_window_secs: HOUR.as_secs(),
        })
        .await
        .unwrap();
    let mut s = a.session();
    s.create_group("", Default::default()).unwrap();
    s.commit(&mut a, None).await.unwrap();
    let b2 = another(&b);
    sync_clean(a.bucket(), &RepoStore::new(b2.store.clone(), &b2.prefix)).await;
    let mut c = Repo::open(b2.store.clone(), &b2.prefix).await.unwrap();
    let root = a.log()[0].hash;

    // X sets k = "x"; W, concurrent with it, sets k = "w" and observes X's entry.
    let x = on_top(
        &c,
        forger(7),
        1,
        vec![Op::SetAttr {
            node: OpRef::Change(root, 0),
            key: "k".into(),
            value: "\"x\"".into(),
            observed: vec![],
        }],
    );
    let x_hash = hash_of(&x);
    let wch = on_top(
        &c,
        forger(8),
        1,
        vec![Op::SetAttr {
            node: OpRef::Change(root, 0),
            key: "k".into(),
            value: "\"w\"".into(),
            observed: vec![OpRef::Change(x_hash, 0)],
        }],
    );
    put_change(&b2.store, &b2.prefix, &wch).await;
    c.refresh().await.unwrap();
    let q = c.compact().await.unwrap().snapshot.unwrap();
    assert_eq!(
        snapshot_meta(&b2.store, &b2.prefix, &q)
            .await
            .superseded
            .len(),
        1
    );

    // P: more changes than Q, then two hours pass.
    for i in 0..3u8 {
        commit(&mut a, &[(&format!("f{i}.txt"), &[i][..])]).await;
    }
    let p = a.compact().await.unwrap();
    assert!(
        p.covered > SnapshotName::parse(&q).unwrap().covered,
        "{p:?}"
    );
    clock.advance(2 * HOUR);
    // Q lands in b now (young by b's clock).
    copy_tree(&b2.store, &b2.prefix, &store, &b.prefix, SNAPSHOT_DIRS).await;
    witness(&store, &w, &b.prefix).await;
    witness(&b2.store, &w, &b2.prefix).await;
    a.refresh().await.unwrap();
    let j = a.compact().await.unwrap().snapshot.unwrap();
    let kept = snapshot_meta(&store, &b.prefix, &j).await.superseded.len();

    // X arrives.
    put_change(&store, &b.prefix, &x).await;
    put_change(&w, WITNESS, &x).await;
    let r = Repo::open(store.clone(), &b.prefix).await.unwrap();
    let k = r.view().attributes("").and_then(|m| m.get("k").cloned());
    assert_eq!(
        (kept, k, r.conflicts().await.unwrap().len()),
        (1, Some(json!("w")), 0),
        "the record Q held for minutes was dropped by P's age (records kept in the join's snapshot, k, conflicts)"
    );
    assert_shows_everything(store.clone(), &b.prefix, &w, "after X arrives").await;
}

// ---------------------------------------------------------------------------------
// 2. Dimension and object registers; a delete beside edits and a re-creation.
// ---------------------------------------------------------------------------------

/// Side A edits.
async fn edits_a(a: &mut Repo) {
    let mut s = a.session();
    s.resize("x", &[100]).unwrap();
    s.set("notes.txt", b"notes from a".to_vec()).unwrap();
    s.set("other.txt", b"other from a".to_vec()).unwrap();
    s.commit(a, None).await.unwrap();
    let mut s = a.session();
    // Shrink (deletes x/c/20 it saw), and delete array y.
    s.resize("x", &[10]).unwrap();
    s.delete("y/zarr.json").unwrap();
    s.delete_object("other.txt").unwrap();
    s.commit(a, None).await.unwrap();
}

/// Side C edits, concurrently.
async fn edits_c(c: &mut Repo) {
    let mut s = c.session();
    s.resize("x", &[80]).unwrap();
    s.set("x/c/30", b"x30 c".to_vec()).unwrap();
    s.set("y/c/3", b"y3 c".to_vec()).unwrap();
    s.resize("y", &[128]).unwrap();
    s.set_attr("y", "k", json!("c")).unwrap();
    s.set("notes.txt", b"notes from c".to_vec()).unwrap();
    s.commit(c, None).await.unwrap();
    // Replace y by an array of other metadata, and write into it.
    let mut s = c.session();
    s.set(
        "y/zarr.json",
        serde_json::to_vec(&array_meta(&[32], &[2])).unwrap(),
    )
    .unwrap();
    s.set("y/c/1", b"y1 new".to_vec()).unwrap();
    s.delete_object("notes.txt").unwrap();
    s.set("other.txt", b"other from c".to_vec()).unwrap();
    s.commit(c, None).await.unwrap();
    let mut s = c.session();
    s.resize("y", &[48]).unwrap();
    s.set_attr("y", "k", json!("c2")).unwrap();
    s.commit(c, None).await.unwrap();
}

/// Two replicas: A resizes and shrinks `x`, deletes array `y`, writes and deletes
/// objects; C grows `x`, edits and resizes `y`, then replaces `y` by another array and
/// edits that, and writes objects. Both compact and collect, then sync: both show the
/// fold of every change; then one compaction writes the join and still does.
#[tokio::test]
async fn dims_objects_and_a_recreated_array_join_to_the_fold() {
    for b in backends() {
        let w: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let (b2, mut a, mut c) = pair(&b).await;
        edits_a(&mut a).await;
        edits_c(&mut c).await;
        witness(&b.store, &w, &b.prefix).await;
        witness(&b2.store, &w, &b2.prefix).await;
        for r in [&mut a, &mut c] {
            r.compact().await.unwrap();
            r.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        }
        sync_clean(a.bucket(), c.bucket()).await;
        assert_shows_everything(b.store.clone(), &b.prefix, &w, b.name).await;
        assert_shows_everything(b2.store.clone(), &b2.prefix, &w, b.name).await;
        a.refresh().await.unwrap();
        a.compact().await.unwrap();
        a.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        assert_shows_everything(b.store.clone(), &b.prefix, &w, b.name).await;
        // Later edits on both sides observe the joined registers.
        c.refresh().await.unwrap();
        let mut s = a.session();
        s.resize("x", &[5]).unwrap();
        s.set("notes.txt", b"notes after".to_vec()).unwrap();
        s.commit(&mut a, None).await.unwrap();
        let mut s = c.session();
        s.resize("y", &[16]).unwrap();
        s.commit(&mut c, None).await.unwrap();
        witness(&b.store, &w, &b.prefix).await;
        witness(&b2.store, &w, &b2.prefix).await;
        for r in [&mut a, &mut c] {
            r.compact().await.unwrap();
            r.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        }
        sync_clean(a.bucket(), c.bucket()).await;
        assert_shows_everything(b.store.clone(), &b.prefix, &w, b.name).await;
        assert_shows_everything(b2.store.clone(), &b2.prefix, &w, b.name).await;
    }
}

/// The same edits on three replicas, the third deleting and re-creating `x` and
/// writing objects, with counts arranged so that a reader of one bucket joins three
/// snapshots (each side's snapshot copied raw).
#[tokio::test]
async fn dims_objects_and_recreation_three_way() {
    for b in backends() {
        let w: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let (b2, mut a, mut c) = pair(&b).await;
        let b3 = another(&b);
        sync_clean(a.bucket(), &RepoStore::new(b3.store.clone(), &b3.prefix)).await;
        let mut d = Repo::open(b3.store.clone(), &b3.prefix).await.unwrap();
        edits_a(&mut a).await;
        for i in 0..4u8 {
            commit(&mut a, &[(&format!("a{i}.txt"), &[i][..])]).await;
        }
        edits_c(&mut c).await;
        {
            let mut s = d.session();
            s.set("x/c/40", b"x40 d".to_vec()).unwrap();
            s.resize("x", &[200]).unwrap();
            s.set("notes.txt", b"notes from d".to_vec()).unwrap();
            s.commit(&mut d, None).await.unwrap();
            let mut s = d.session();
            s.delete("x/zarr.json").unwrap();
            s.create_array("x", &array_meta(&[64], &[1])).unwrap();
            s.set("x/c/2", b"x2 d".to_vec()).unwrap();
            s.set_attr("y", "k", json!("d")).unwrap();
            s.commit(&mut d, None).await.unwrap();
        }
        for (st, p) in [
            (&b.store, &b.prefix),
            (&b2.store, &b2.prefix),
            (&b3.store, &b3.prefix),
        ] {
            witness(st, &w, p).await;
        }
        for r in [&mut a, &mut c, &mut d] {
            r.compact().await.unwrap();
            r.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        }
        copy_tree(&b2.store, &b2.prefix, &b.store, &b.prefix, SNAPSHOT_DIRS).await;
        copy_tree(&b3.store, &b3.prefix, &b.store, &b.prefix, SNAPSHOT_DIRS).await;
        copy_tree(
            &b2.store,
            &b2.prefix,
            &b.store,
            &b.prefix,
            &[".crdt/blobs", ".crdt/ops"],
        )
        .await;
        copy_tree(
            &b3.store,
            &b3.prefix,
            &b.store,
            &b.prefix,
            &[".crdt/blobs", ".crdt/ops"],
        )
        .await;
        assert_shows_everything(b.store.clone(), &b.prefix, &w, b.name).await;
        a.refresh().await.unwrap();
        let cr = a.compact().await.unwrap();
        assert_eq!(cr.supersedes.len(), 3, "{}: {cr:?}", b.name);
        assert_shows_everything(b.store.clone(), &b.prefix, &w, b.name).await;
        let g = a.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        assert_eq!(g.unverified, None, "{}: {g:?}", b.name);
        assert_shows_everything(b.store.clone(), &b.prefix, &w, b.name).await;
    }
}

// ---------------------------------------------------------------------------------
// 3. GC of a snapshot written from a join of joins, some predecessors gone.
// ---------------------------------------------------------------------------------

/// R1 = the join of A's and B's snapshots, written in A's bucket and collected there
/// (A's and B's snapshots gone). Meanwhile C joined its own with D's and wrote R2
/// (a join too). R2 and its predecessors are copied in; A compacts the join of R1 and
/// R2 and collects: the retained snapshot must be verified (its predecessors R1 and
/// R2 are themselves joins), its count must be the one a reader computes, and every
/// reader shows the fold of every change, before and after.
#[tokio::test]
async fn gc_verifies_the_join_of_two_joins() {
    for b in backends() {
        let w: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let mut a = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = a.session();
        s.create_group("", Default::default()).unwrap();
        s.create_array("x", &array_meta(&[64], &[1])).unwrap();
        s.commit(&mut a, None).await.unwrap();
        let others: Vec<Backend> = (0..3).map(|_| another(&b)).collect();
        let mut reps = vec![];
        for o in &others {
            sync_clean(a.bucket(), &RepoStore::new(o.store.clone(), &o.prefix)).await;
            reps.push(Repo::open(o.store.clone(), &o.prefix).await.unwrap());
        }
        let [rb, rc, rd] = &mut reps[..] else {
            unreachable!()
        };
        commit(&mut a, &[("x/c/0", b"a"), ("x/c/1", b"a1")]).await;
        commit(rb, &[("x/c/0", b"b"), ("x/c/2", b"b2")]).await;
        commit(rc, &[("x/c/0", b"c"), ("x/c/3", b"c3"), ("n.txt", b"c")]).await;
        commit(rd, &[("x/c/0", b"d"), ("n.txt", b"d")]).await;
        {
            let mut s = rd.session();
            s.resize("x", &[70]).unwrap();
            s.commit(rd, None).await.unwrap();
        }
        let w_ab: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        witness(&b.store, &w, &b.prefix).await;
        witness(&b.store, &w_ab, &b.prefix).await;
        witness(&others[0].store, &w_ab, &others[0].prefix).await;
        for o in &others {
            witness(&o.store, &w, &o.prefix).await;
        }
        a.compact().await.unwrap();
        a.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        for r in [&mut *rb, &mut *rc, &mut *rd] {
            r.compact().await.unwrap();
            r.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        }
        // A joins B; C joins D; each writes (the sync does) and collects its join.
        for (from, to) in [(rb.bucket(), a.bucket()), (rd.bucket(), rc.bucket())] {
            let rep = sync(from, to, &SyncOptions::default()).await.unwrap();
            assert!(rep.is_clean(), "{}: {rep:?}", b.name);
            assert_eq!(rep.joins_written.len(), 2, "{}: {rep:?}", b.name);
        }
        for r in [&mut a, &mut *rc] {
            r.refresh().await.unwrap();
            let cr = r.compact().await.unwrap();
            assert_eq!(cr.snapshot, None, "{}: sync wrote the join: {cr:?}", b.name);
            let g = r.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
            assert_eq!(g.unverified, None, "{}: {g:?}", b.name);
        }
        assert_shows_everything(b.store.clone(), &b.prefix, &w_ab, "a: join of a, b").await;
        // More edits on both, then C's join lands in A's bucket.
        commit(&mut a, &[("x/c/5", b"a5")]).await;
        commit(rc, &[("x/c/6", b"c6"), ("n.txt", b"c again")]).await;
        witness(&b.store, &w, &b.prefix).await;
        witness(&others[1].store, &w, &others[1].prefix).await;
        for r in [&mut a, &mut *rc] {
            r.compact().await.unwrap();
            r.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        }
        // Raw copy first, so readers join the two joins at open; then compaction.
        copy_tree(
            &others[1].store,
            &others[1].prefix,
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
        assert_shows_everything(b.store.clone(), &b.prefix, &w, "a: two joins").await;
        a.refresh().await.unwrap();
        let cr = a.compact().await.unwrap();
        assert!(cr.snapshot.is_some(), "{}: {cr:?}", b.name);
        let g = a.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        assert_eq!(g.unverified, None, "{}: {g:?}", b.name);
        assert!(
            g.removed.iter().any(|x| x.kind == ObjectKind::Snapshot),
            "{}: {g:?}",
            b.name
        );
        assert_shows_everything(b.store.clone(), &b.prefix, &w, "a: after gc").await;
        // The count written is the number of changes the witness holds.
        let all = Repo::open(w.clone(), WITNESS).await.unwrap().log().len() as u64;
        assert_eq!(cr.covered, all, "{}: {cr:?}", b.name);
        // The join travels back to C (where A's line of history never was).
        push(a.bucket(), rc.bucket()).await;
        rc.refresh().await.unwrap();
        assert_shows_everything(
            others[1].store.clone(),
            &others[1].prefix,
            &w,
            "c: after the join came back",
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------
// 4. A handle that commits after a refresh joined a concurrent snapshot.
// ---------------------------------------------------------------------------------

/// A's handle reads its own snapshot plus an uncompacted change; C's snapshot (whose
/// change files C collected) lands in A's bucket; A's handle refreshes (joining it)
/// and writes through the joined registers: a chunk both sides wrote, the dimension
/// both resized, an object both wrote, an attribute. The change must resolve the
/// conflicts it saw on every replica: the handle, a fresh open, C after a sync, and
/// the witness all agree, with no conflict left.
#[tokio::test]
async fn a_handle_writing_after_a_joining_refresh_resolves_alike_everywhere() {
    for b in backends() {
        let w: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let (b2, mut a, mut c) = pair(&b).await;
        for (r, tag) in [(&mut a, "a"), (&mut c, "c")] {
            let mut s = r.session();
            s.set("x/c/0", tag.as_bytes().to_vec()).unwrap();
            s.set("notes.txt", tag.as_bytes().to_vec()).unwrap();
            s.set_attr("", "title", json!(tag)).unwrap();
            s.resize("x", &[if tag == "a" { 90 } else { 80 }]).unwrap();
            s.commit(r, None).await.unwrap();
        }
        witness(&b.store, &w, &b.prefix).await;
        witness(&b2.store, &w, &b2.prefix).await;
        a.compact().await.unwrap();
        a.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        // One more change on A, uncompacted.
        commit(&mut a, &[("x/c/1", b"a1")]).await;
        c.compact().await.unwrap();
        c.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        witness(&b.store, &w, &b.prefix).await;
        push(c.bucket(), a.bucket()).await;
        a.refresh().await.unwrap();
        assert_eq!(a.conflicts().await.unwrap().len(), 3, "{}", b.name);
        let mut s = a.session();
        s.set("x/c/0", b"resolved".to_vec()).unwrap();
        s.set("notes.txt", b"resolved".to_vec()).unwrap();
        s.set_attr("", "title", json!("resolved")).unwrap();
        s.resize("x", &[40]).unwrap();
        s.commit(&mut a, None).await.unwrap();
        witness(&b.store, &w, &b.prefix).await;
        let want = Repo::open(w.clone(), WITNESS).await.unwrap();
        assert_eq!(
            want.conflicts().await.unwrap(),
            vec![],
            "{}: witness",
            b.name
        );
        assert_eq!(
            a.entries().await.unwrap(),
            want.entries().await.unwrap(),
            "{}: the handle",
            b.name
        );
        assert_eq!(
            a.conflicts().await.unwrap(),
            vec![],
            "{}: the handle",
            b.name
        );
        assert_shows_everything(b.store.clone(), &b.prefix, &w, b.name).await;
        sync_clean(a.bucket(), c.bucket()).await;
        c.refresh().await.unwrap();
        assert_eq!(
            c.entries().await.unwrap(),
            want.entries().await.unwrap(),
            "{}: C",
            b.name
        );
        assert_shows_everything(b2.store.clone(), &b2.prefix, &w, b.name).await;
        // And once compacted and collected on both sides.
        for r in [&mut a, &mut c] {
            r.compact().await.unwrap();
            r.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        }
        sync_clean(a.bucket(), c.bucket()).await;
        assert_shows_everything(b.store.clone(), &b.prefix, &w, b.name).await;
        assert_shows_everything(b2.store.clone(), &b2.prefix, &w, b.name).await;
    }
}

// ---------------------------------------------------------------------------------
// 5. Forks between the histories two snapshots archived.
// ---------------------------------------------------------------------------------

/// One writer id is reused on two replicas (a restored laptop image): change F1 on A
/// and change F2 on C claim the same `(actor, seq)`. Each side overwrites what its
/// forked change wrote, compacts and collects, so each forked change lives only in
/// its side's coverage archive. The fold of every change reports the fork; a reader
/// of the bucket holding both snapshots, even once compaction has written their join
/// (§9: a fork against archived history shows once a compaction folded it), never
/// does: `Fold::join` unions only the two sides' recorded forks and claims of their
/// tables, and `Repo::compact` checks archived claims only against changes applied
/// from files (`fold.log()`), never one archive against another.
#[tokio::test]
async fn a_fork_between_two_archives_is_reported_once_the_join_is_compacted() {
    for b in backends() {
        let w: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let (b2, mut a, mut c) = pair(&b).await;
        let root = a.log()[0].hash;
        for (r, st, p, key) in [
            (&mut a, &b.store, &b.prefix, "fa"),
            (&mut c, &b2.store, &b2.prefix, "fc"),
        ] {
            let f = on_top(
                r,
                forger(5),
                1,
                vec![Op::SetAttr {
                    node: OpRef::Change(root, 0),
                    key: key.into(),
                    value: "1".into(),
                    observed: vec![],
                }],
            );
            put_change(st, p, &f).await;
            r.refresh().await.unwrap();
            let mut s = r.session();
            s.delete_attr("", key).unwrap();
            s.commit(r, None).await.unwrap();
            let mut s = r.session();
            s.set_attr("", "other", json!(key)).unwrap();
            s.commit(r, None).await.unwrap();
        }
        witness(&b.store, &w, &b.prefix).await;
        witness(&b2.store, &w, &b2.prefix).await;
        let want = Repo::open(w.clone(), WITNESS).await.unwrap().forks();
        assert_eq!(want.len(), 1, "{}: the witness reports the fork", b.name);
        for r in [&mut a, &mut c] {
            r.compact().await.unwrap();
            r.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
            // The forked change's file is gone: the next snapshot archives it.
            commit(r, &[("later.txt", b"later")]).await;
            r.compact().await.unwrap();
            r.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
        }
        // The push writes the join at the destination.
        push(c.bucket(), a.bucket()).await;
        a.refresh().await.unwrap();
        let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(
            fresh.forks(),
            want,
            "{}: forks after the join was compacted",
            b.name
        );
    }
}
