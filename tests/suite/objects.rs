//! Objects: store keys that are neither node metadata nor inside an array (zarrs'
//! `a/b`, a README beside the data), on every backend. They merge as registers of
//! their own, hide under an array that owns their key, survive compaction and
//! garbage collection with their blobs, sync, verify, and export.

use crate::common::{Backend, another, array_meta, backends};
use bytes::Bytes;
use crzarr::fold::view::{ConflictTarget, Entry};
use crzarr::format::change::Change;
use crzarr::format::ids::{ChangeHash, ObjectHash};
use crzarr::format::layout::Layout;
use crzarr::format::snapshot::{SNAPSHOT_META_OBJECTS_VERSION, SNAPSHOT_VERSION, SnapshotMeta};
use crzarr::io::store::RepoStore;
use crzarr::ops::gc::GcOptions;
use crzarr::ops::verify::{VerifyOptions, verify};
use crzarr::repo::Repo;
use object_store::ObjectStoreExt;
use std::time::Duration;

const NOW: GcOptions = GcOptions {
    older_than: Duration::ZERO,
    dry_run: false,
    force: true,
};

/// Over the inline limit: stored as a blob.
fn big(i: u8) -> Vec<u8> {
    vec![i; 5000]
}

async fn init(b: &Backend) -> Repo {
    Repo::init(b.store.clone(), &b.prefix).await.unwrap()
}

async fn open(b: &Backend) -> Repo {
    Repo::open(b.store.clone(), &b.prefix).await.unwrap()
}

/// The bytes of the newest snapshot's metadata.
async fn newest_snapshot(b: &Backend) -> Bytes {
    let bucket = RepoStore::new(b.store.clone(), &b.prefix);
    let (snaps, _) = bucket.list_snapshots().await.unwrap();
    let s = snaps.first().expect("a snapshot");
    b.store.get(&s.key).await.unwrap().bytes().await.unwrap()
}

#[tokio::test]
async fn objects_are_written_read_listed_and_deleted() {
    for b in backends() {
        let mut r = init(&b).await;
        let mut s = r.session();
        s.set("notes/readme.txt", b"hello".to_vec()).unwrap();
        s.set("blobby", big(1)).unwrap();
        s.create_group("", Default::default()).unwrap();
        s.create_array("v", &array_meta(&[4], &[2])).unwrap();
        s.set("v/c/0", vec![1u8, 2]).unwrap();
        let h = s.commit(&mut r, Some("objects")).await.unwrap().unwrap();
        // The change holds object ops: format 3. A change without them stays 1.
        let bytes = read_change(&b, &r, h).await;
        assert_eq!(bytes[4], 3, "{}", b.name);
        let mut s = r.session();
        s.set("v/c/1", vec![3u8, 4]).unwrap();
        let h2 = s.commit(&mut r, None).await.unwrap().unwrap();
        assert_eq!(read_change(&b, &r, h2).await[4], 1, "{}", b.name);

        let other = open(&b).await;
        assert_eq!(
            other.list().await.unwrap(),
            [
                "blobby",
                "notes/readme.txt",
                "v/c/0",
                "v/c/1",
                "v/zarr.json",
                "zarr.json"
            ],
            "{}",
            b.name
        );
        assert_eq!(
            other.get("notes/readme.txt").await.unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(
            other.get("blobby").await.unwrap().as_deref(),
            Some(&big(1)[..])
        );
        assert_eq!(
            other.list_dir("notes/").await.unwrap().0,
            ["notes/readme.txt"]
        );
        assert!(matches!(other.view().get("blobby"), Some(Entry::Object(_))));
        // Deleting a key deletes the object; deleting a prefix every object under it.
        let mut s = r.session();
        s.delete("blobby").unwrap();
        s.delete_prefix("notes/").unwrap();
        s.delete("never-there").unwrap();
        assert_eq!(s.len(), 2, "a delete of what is not there stages nothing");
        s.commit(&mut r, None).await.unwrap();
        let other = open(&b).await;
        assert_eq!(
            other.list().await.unwrap(),
            ["v/c/0", "v/c/1", "v/zarr.json", "zarr.json"],
            "{}",
            b.name
        );
        assert_eq!(other.get("blobby").await.unwrap(), None);
    }
}

async fn read_change(b: &Backend, r: &Repo, h: ChangeHash) -> Bytes {
    let info = r.log().into_iter().find(|c| c.hash == h).unwrap().clone();
    let key = Layout::new(&b.prefix).change(&crzarr::format::layout::ChangeName {
        hash: h,
        actor: info.actor,
        seq: info.seq,
    });
    let bytes = b.store.get(&key).await.unwrap().bytes().await.unwrap();
    Change::decode(key.as_ref(), &bytes, &h).unwrap();
    bytes
}

#[tokio::test]
async fn concurrent_object_writes_merge_by_stamp_and_report_a_conflict() {
    let b = crate::common::memory();
    let mut a = init(&b).await;
    let mut c = open(&b).await;
    let mut s = a.session();
    s.set("k", b"from a".to_vec()).unwrap();
    s.commit(&mut a, None).await.unwrap();
    let mut s = c.session();
    s.set("k", b"from c".to_vec()).unwrap();
    s.commit(&mut c, None).await.unwrap();
    a.refresh().await.unwrap();
    c.refresh().await.unwrap();
    let got = a.get("k").await.unwrap();
    assert_eq!(got, c.get("k").await.unwrap());
    let conflicts = a.conflicts().await.unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].key, "k");
    assert_eq!(conflicts[0].target, ConflictTarget::Object);
    assert_eq!(conflicts, c.conflicts().await.unwrap());
    // A write that saw both settles it; a concurrent delete loses to a later write.
    let mut s = a.session();
    s.set("k", b"settled".to_vec()).unwrap();
    s.commit(&mut a, None).await.unwrap();
    c.refresh().await.unwrap();
    assert!(c.conflicts().await.unwrap().is_empty());
    assert_eq!(c.get("k").await.unwrap().as_deref(), Some(&b"settled"[..]));
}

#[tokio::test]
async fn an_array_hides_the_objects_under_its_path_until_it_is_gone() {
    let b = crate::common::memory();
    let mut a = init(&b).await;
    let mut c = open(&b).await;
    let mut d = open(&b).await;
    // `c` creates array `v`; `d` sees it. Concurrently `a` writes object `v/extra`.
    let mut s = c.session();
    s.create_array("v", &array_meta(&[4], &[2])).unwrap();
    s.set("v/c/0", vec![1u8, 2]).unwrap();
    s.commit(&mut c, None).await.unwrap();
    d.refresh().await.unwrap();
    let mut s = a.session();
    s.set("v/extra", b"note".to_vec()).unwrap();
    s.commit(&mut a, None).await.unwrap();
    a.refresh().await.unwrap();
    c.refresh().await.unwrap();
    // The array owns `v/...`: the object is hidden, and `v/extra` is its chunk key.
    for r in [&a, &c] {
        assert_eq!(
            r.list().await.unwrap(),
            ["v/c/0", "v/zarr.json", "zarr.json"]
        );
        assert_eq!(r.get("v/extra").await.unwrap(), None);
        assert!(r.conflicts().await.unwrap().is_empty());
    }
    // `d`, which never saw the object, deletes the array: the object shows again.
    let mut s = d.session();
    s.delete("v/zarr.json").unwrap();
    s.commit(&mut d, None).await.unwrap();
    a.refresh().await.unwrap();
    assert_eq!(a.list().await.unwrap(), ["v/extra"]);
    assert_eq!(
        a.get("v/extra").await.unwrap().as_deref(),
        Some(&b"note"[..])
    );
    // A writer that sees the object deletes it with the node: recreate the array,
    // then delete it by its `zarr.json`.
    let mut s = a.session();
    s.create_array("v", &array_meta(&[4], &[2])).unwrap();
    s.commit(&mut a, None).await.unwrap();
    assert_eq!(a.list().await.unwrap(), ["v/zarr.json", "zarr.json"]);
    let mut s = a.session();
    s.delete("v/zarr.json").unwrap();
    s.commit(&mut a, None).await.unwrap();
    assert!(a.list().await.unwrap().is_empty());
    // And by prefix.
    let mut s = a.session();
    s.set("w/x", b"1".to_vec()).unwrap();
    s.create_group("w", Default::default()).unwrap();
    s.commit(&mut a, None).await.unwrap();
    let mut s = a.session();
    s.delete_prefix("w/").unwrap();
    s.commit(&mut a, None).await.unwrap();
    assert!(a.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn objects_survive_compaction_gc_and_sync_with_their_blobs() {
    for b in backends() {
        let mut r = init(&b).await;
        let mut s = r.session();
        s.set("small", b"x".to_vec()).unwrap();
        s.set("dir/big", big(7)).unwrap();
        s.set("gone", big(8)).unwrap();
        s.commit(&mut r, None).await.unwrap();
        let mut s = r.session();
        s.delete("gone").unwrap();
        s.set("dir/big", big(9)).unwrap();
        s.commit(&mut r, None).await.unwrap();
        let before = r.entries().await.unwrap();

        r.compact().await.unwrap();
        let meta = newest_snapshot(&b).await;
        assert_eq!(meta[4], SNAPSHOT_META_OBJECTS_VERSION, "{}", b.name);
        r.gc(&NOW).await.unwrap();
        // Only the live object's blob is left: `big(7)` and `big(8)` were superseded.
        let bucket = RepoStore::new(b.store.clone(), &b.prefix);
        let blobs = bucket.list_all(&bucket.layout().blobs_dir()).await.unwrap();
        assert_eq!(blobs.len(), 1, "{}: {blobs:?}", b.name);

        // A fresh reader opens from the snapshot alone and serves the same bytes.
        let fresh = open(&b).await;
        assert_eq!(fresh.entries().await.unwrap(), before, "{}", b.name);
        assert_eq!(
            fresh.get("dir/big").await.unwrap().as_deref(),
            Some(&big(9)[..])
        );
        let report = verify(
            &bucket,
            &VerifyOptions {
                blobs: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(report.is_clean(), "{}: {:#?}", b.name, report.findings);

        // Sync into an empty bucket copies the snapshot and the object blobs it holds.
        let other = another(&b);
        let dst = RepoStore::new(other.store.clone(), &other.prefix);
        let mut r = fresh;
        r.sync(&dst, &Default::default()).await.unwrap();
        let copy = open(&other).await;
        assert_eq!(copy.entries().await.unwrap(), before, "{}", b.name);
        assert_eq!(
            copy.get("dir/big").await.unwrap().as_deref(),
            Some(&big(9)[..])
        );
    }
}

#[tokio::test]
async fn snapshots_without_objects_keep_version_1_and_a_wrong_version_byte_is_refused() {
    let b = crate::common::memory();
    let mut r = init(&b).await;
    let mut s = r.session();
    s.create_group("", Default::default()).unwrap();
    s.commit(&mut r, None).await.unwrap();
    r.compact().await.unwrap();
    assert_eq!(newest_snapshot(&b).await[4], SNAPSHOT_VERSION);

    let mut s = r.session();
    s.set("k", b"v".to_vec()).unwrap();
    s.commit(&mut r, None).await.unwrap();
    r.compact().await.unwrap();
    let bytes = newest_snapshot(&b).await;
    assert_eq!(bytes[4], SNAPSHOT_META_OBJECTS_VERSION);
    // The same body under version byte 1 is not the one encoding of that metadata.
    let mut old = bytes.to_vec();
    old[4] = SNAPSHOT_VERSION;
    let err = SnapshotMeta::decode("k", &old, &ObjectHash::of(&old)).unwrap_err();
    assert!(
        err.to_string()
            .contains("format version 1 for a snapshot that is written as version 2"),
        "{err}"
    );
}

#[tokio::test]
async fn export_writes_objects_beside_the_zarr_hierarchy() {
    let b = crate::common::local();
    let mut r = init(&b).await;
    let mut s = r.session();
    s.create_group("", Default::default()).unwrap();
    s.set("README.md", b"# data".to_vec()).unwrap();
    s.commit(&mut r, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dst: std::sync::Arc<dyn object_store::ObjectStore> = std::sync::Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap(),
    );
    r.export(dst, "", &Default::default()).await.unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("README.md")).unwrap(),
        b"# data"
    );
    assert!(dir.path().join("zarr.json").exists());
}
