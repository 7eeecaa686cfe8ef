//! Snapshots, lazy open, compaction and garbage collection on every backend
//! (InMemory, LocalFileSystem, the loopback S3 server): a snapshot merges like the
//! history it replaces, open reads only what the snapshot does not cover, and GC
//! removes only what nothing needs.

use crate::common::repo::{blob, fold_state, stash, state};
use crate::common::{Backend, array_meta, backends, local, memory};
use bytes::Bytes;
use crzarr::Error;
use crzarr::fold::Fold;
use crzarr::fold::view::{Conflict, Entry, ViewIndex};
use crzarr::format::change::{Change, ChunkData, INLINE_MAX, Op, OpRef};
use crzarr::format::ids::{ActorId, ChangeHash, Hlc};
use crzarr::format::layout::{ChangeName, Layout};
use crzarr::format::snapshot::{MAX_PIECE_BYTES, PIECE_ENTRIES, SnapshotMeta};
use crzarr::io::counting::CountingStore;
use crzarr::ops::gc::{GcOptions, ObjectKind};
use crzarr::repo::Repo;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const NOW: GcOptions = GcOptions {
    older_than: Duration::ZERO,
    dry_run: false,
    force: true,
};

/// Two writers with concurrent edits: conflicts on an attribute and a chunk, a
/// deleted array (a tombstone), an overwritten blob chunk, a resize.
async fn history(b: &Backend) -> (Repo, Repo) {
    let mut a = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    let mut s = a.session();
    s.create_group("", Default::default()).unwrap();
    s.create_array("x", &array_meta(&[8], &[2])).unwrap();
    s.create_array("gone", &array_meta(&[4], &[2])).unwrap();
    s.set("x/c/0", blob(1)).unwrap();
    s.set("x/c/1", vec![1u8; 4]).unwrap();
    s.commit(&mut a, Some("base")).await.unwrap();
    let mut w = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    let mut s = a.session();
    s.set_attr("x", "units", "K".into()).unwrap();
    s.set("x/c/0", blob(2)).unwrap();
    s.set("x/c/2", vec![2u8; 4]).unwrap();
    s.commit(&mut a, Some("a")).await.unwrap();
    let mut s = w.session();
    s.set_attr("x", "units", "C".into()).unwrap();
    s.set("x/c/2", vec![3u8; 4]).unwrap();
    s.delete("gone/zarr.json").unwrap();
    s.resize("x", &[10]).unwrap();
    s.commit(&mut w, Some("w")).await.unwrap();
    a.refresh().await.unwrap();
    w.refresh().await.unwrap();
    (a, w)
}

#[tokio::test]
async fn a_snapshot_shows_what_the_history_shows_and_merges_late_changes_alike() {
    for b in backends() {
        let (mut a, mut w) = history(&b).await;
        // An offline writer that saw only the base.
        let mut late = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let before = state(&a).await;
        let r = a.compact().await.unwrap();
        assert!(r.snapshot.is_some(), "{}: {r:?}", b.name);
        assert_eq!((r.changes_folded, r.covered), (3, 3), "{}: {r:?}", b.name);
        let again = a.compact().await.unwrap();
        assert_eq!(again.snapshot, None, "{}: compaction is idempotent", b.name);

        let reader = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert!(reader.fold().snapshot_base().is_some(), "{}", b.name);
        assert_eq!(reader.log().len(), 0, "{}: nothing left to fetch", b.name);
        assert_eq!(state(&reader).await, before, "{}: snapshot open", b.name);
        for (k, _) in before.0.iter() {
            assert_eq!(
                reader.get(k).await.unwrap(),
                a.get(k).await.unwrap(),
                "{}: {k}",
                b.name
            );
        }

        // Late changes: concurrent with everything compacted, observing old entries.
        let mut s = late.session();
        s.set_attr("x", "units", "F".into()).unwrap();
        s.set("x/c/1", blob(9)).unwrap();
        s.set("x/c/0", vec![7u8; 4]).unwrap();
        s.commit(&mut late, Some("late")).await.unwrap();
        let mut s = w.session();
        s.set("x/c/3", vec![4u8; 4]).unwrap();
        s.commit(&mut w, None).await.unwrap();
        let all = stash(&b.bucket()).await;
        let mut reader2 = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(
            state(&reader2).await,
            fold_state(&reader2, &all),
            "{}: late changes onto a snapshot",
            b.name
        );
        // A reader opened before: refresh converges too.
        let mut old = reader;
        old.refresh().await.unwrap();
        assert_eq!(state(&old).await, state(&reader2).await, "{}", b.name);

        // Compacting again reuses pieces of arrays that did not change.
        let mut s = reader2.session();
        s.create_array("y", &array_meta(&[4], &[2])).unwrap();
        s.set("y/c/0", vec![1u8; 4]).unwrap();
        s.commit(&mut reader2, None).await.unwrap();
        let r = reader2.compact().await.unwrap();
        assert_eq!(r.changes_folded, 3, "{}: {r:?}", b.name);
        let r2 = {
            let mut s = reader2.session();
            s.set("y/c/1", vec![2u8; 4]).unwrap();
            s.commit(&mut reader2, None).await.unwrap();
            reader2.compact().await.unwrap()
        };
        assert_eq!(
            (r2.manifests_written, r2.manifests_reused),
            (1, 1),
            "{}: only y's manifest is rewritten: {r2:?}",
            b.name
        );
        let all = stash(&b.bucket()).await;
        let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(state(&fresh).await, fold_state(&fresh, &all), "{}", b.name);
    }
}

#[tokio::test]
async fn gc_removes_covered_changes_and_dead_blobs_and_late_changes_still_apply() {
    for b in backends() {
        let (mut a, _w) = history(&b).await;
        let mut late = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let all_before = stash(&b.bucket()).await;
        a.compact().await.unwrap();
        let dry = a
            .gc(&GcOptions {
                older_than: Duration::ZERO,
                dry_run: true,
                force: true,
            })
            .await
            .unwrap();
        let t = dry.totals();
        assert_eq!(
            t.get(&ObjectKind::Change).map(|x| x.0),
            Some(3),
            "{}: {dry:?}",
            b.name
        );
        // blob(1) was overwritten by blob(2): nothing references it any more.
        assert_eq!(
            t.get(&ObjectKind::Blob).map(|x| x.0),
            Some(1),
            "{}: {dry:?}",
            b.name
        );
        assert_eq!(
            stash(&b.bucket()).await.len(),
            3,
            "{}: a dry run deletes nothing",
            b.name
        );
        let window = a
            .gc(&GcOptions {
                older_than: Duration::from_secs(3600),
                dry_run: false,
                force: true,
            })
            .await
            .unwrap();
        assert!(
            window.removed.is_empty(),
            "{}: young objects stay: {window:?}",
            b.name
        );
        assert!(
            window
                .notes
                .iter()
                .any(|n| n.contains("younger than the window")),
            "{}: {window:?}",
            b.name
        );
        let r = a.gc(&NOW).await.unwrap();
        assert_eq!(r.removed.len(), 4, "{}: {r:?}", b.name);
        assert!(stash(&b.bucket()).await.is_empty(), "{}", b.name);

        // The view still serves every key, blobs included.
        let reader = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let expect = fold_state(&reader, &all_before);
        assert_eq!(state(&reader).await, expect, "{}", b.name);
        for k in expect.0.keys() {
            assert!(reader.get(k).await.unwrap().is_some(), "{}: {k}", b.name);
        }

        // A late writer whose deps were collected: recognized as ready via the archive.
        let mut s = late.session();
        s.set("x/c/3", blob(5)).unwrap();
        s.commit(&mut late, Some("late")).await.unwrap();
        let mut all = all_before.clone();
        all.extend(stash(&b.bucket()).await);
        let reader = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(reader.pending(), vec![], "{}", b.name);
        assert_eq!(
            state(&reader).await,
            fold_state(&reader, &all),
            "{}",
            b.name
        );
        assert_eq!(
            reader.get("x/c/3").await.unwrap().as_deref(),
            Some(&blob(5)[..]),
            "{}",
            b.name
        );
        // Compact and collect again: still the same state.
        let mut c = reader;
        c.compact().await.unwrap();
        c.gc(&NOW).await.unwrap();
        let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(state(&fresh).await, fold_state(&fresh, &all), "{}", b.name);
    }
}

#[tokio::test]
async fn a_change_file_copied_back_after_gc_is_not_applied_twice() {
    for b in [memory(), local()] {
        let (mut a, _w) = history(&b).await;
        let layout = Layout::new(&b.prefix);
        let bucket = crzarr::io::store::RepoStore::new(b.store.clone(), &b.prefix);
        let (listed, _) = bucket.list_changes().await.unwrap();
        let mut files = Vec::new();
        for c in &listed {
            let bytes = b.store.get(&c.key).await.unwrap().bytes().await.unwrap();
            files.push((c.key.clone(), bytes));
        }
        let before = state(&a).await;
        a.compact().await.unwrap();
        a.gc(&NOW).await.unwrap();
        // A second compaction empties the table of listed changes into the archive.
        let mut s = a.session();
        s.set("x/c/4", vec![5u8; 4]).unwrap();
        s.commit(&mut a, None).await.unwrap();
        a.compact().await.unwrap();
        a.gc(&NOW).await.unwrap();
        // A sync from a replica that never collected copies the old files back.
        for (k, bytes) in &files {
            b.store
                .put(k, PutPayload::from(bytes.clone()))
                .await
                .unwrap();
        }
        let reader = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let (entries, conflicts, _) = state(&reader).await;
        let mut expect = before.0.clone();
        expect.insert(
            "x/c/4".into(),
            Entry::Chunk(crzarr::fold::view::ChunkRef::Inline(vec![5u8; 4])),
        );
        assert_eq!(entries, expect, "{}", b.name);
        assert_eq!(conflicts, before.1, "{}", b.name);
        assert_eq!(reader.problems(), vec![], "{}", b.name);
        let _ = layout;
    }
}

#[tokio::test]
async fn open_request_counts_before_and_after_compaction() {
    for b in [memory(), local()] {
        let counting = CountingStore::new(b.store.clone());
        let store: Arc<dyn ObjectStore> = Arc::new(counting.clone());
        let mut w = Repo::init(store.clone(), &b.prefix).await.unwrap();
        let mut s = w.session();
        s.create_group("", Default::default()).unwrap();
        s.create_array("x", &array_meta(&[64], &[1])).unwrap();
        s.commit(&mut w, None).await.unwrap();
        for i in 0..20u8 {
            let mut s = w.session();
            s.set(&format!("x/c/{i}"), blob(i)).unwrap();
            s.commit(&mut w, None).await.unwrap();
        }
        counting.reset();
        let r = Repo::open(store.clone(), &b.prefix).await.unwrap();
        let c = counting.take();
        // Marker, hint (absent), two LISTs; then 21 change GETs.
        assert_eq!(
            (c.lists, c.gets, c.round_trips),
            (2, 23, 2),
            "{}: {c:?}",
            b.name
        );
        drop(r);

        w.compact().await.unwrap();
        counting.reset();
        let r = Repo::open(store.clone(), &b.prefix).await.unwrap();
        let c = counting.take();
        // The hint is the newest snapshot: nothing else to read.
        assert_eq!(
            (c.lists, c.gets, c.round_trips),
            (2, 2, 1),
            "{}: {c:?}",
            b.name
        );
        // First chunk read: its manifest piece, then the blob.
        r.get("x/c/3").await.unwrap().unwrap();
        let c = counting.take();
        assert_eq!((c.gets, c.round_trips), (2, 2), "{}: {c:?}", b.name);
        // Warm: the blob only.
        r.get("x/c/4").await.unwrap().unwrap();
        let c = counting.take();
        assert_eq!((c.gets, c.round_trips), (1, 1), "{}: {c:?}", b.name);
        drop(r);

        // A stale hint costs one more round trip; k new changes add k GETs.
        let mut s = w.session();
        s.set("x/c/30", vec![1u8; 4]).unwrap();
        s.commit(&mut w, None).await.unwrap();
        w.compact().await.unwrap();
        b.store
            .put(
                &Layout::new(&b.prefix).latest_hint(),
                PutPayload::from_static(b"stale"),
            )
            .await
            .unwrap();
        for i in 40..43u8 {
            let mut s = w.session();
            s.set(&format!("x/c/{i}"), vec![i; 4]).unwrap();
            s.commit(&mut w, None).await.unwrap();
        }
        counting.reset();
        let r = Repo::open(store.clone(), &b.prefix).await.unwrap();
        let c = counting.take();
        assert_eq!(
            (c.lists, c.gets, c.round_trips),
            (2, 6, 3),
            "{}: {c:?}",
            b.name
        );
        assert_eq!(r.log().len(), 3, "{}", b.name);
    }
}

#[tokio::test]
async fn a_snapshot_of_a_newer_format_is_refused_with_a_clear_error() {
    for b in backends() {
        let (mut a, _) = history(&b).await;
        let r = a.compact().await.unwrap();
        let layout = Layout::new(&b.prefix);
        let name = crzarr::format::layout::SnapshotName::parse(&r.snapshot.unwrap()).unwrap();
        // A future format keeps the envelope (format.md §10.7): magic, version, then
        // an array opening with the repository id and the covered count.
        let covered = name.covered + 1;
        let mut bytes = b"CRZS\x09".to_vec();
        bytes.extend(rmp_serde::to_vec(&(a.id(), covered, "fields of version 9")).unwrap());
        let newer = crzarr::format::layout::SnapshotName {
            covered,
            hash: crzarr::format::ids::ObjectHash::of(&bytes),
        };
        b.store
            .put(
                &layout.snapshot(&newer),
                PutPayload::from(Bytes::from(bytes)),
            )
            .await
            .unwrap();
        let err = Repo::open(b.store.clone(), &b.prefix).await.err().unwrap();
        assert!(
            matches!(
                &err,
                Error::UnsupportedVersion {
                    found: 9,
                    supported: 4, // SNAPSHOT_META_VERSION
                    ..
                }
            ),
            "{}: {err:?}",
            b.name
        );
        assert!(err.to_string().contains("upgrade crzarr"), "{err}");
    }
}

#[tokio::test]
async fn a_damaged_snapshot_is_reported_and_the_previous_one_used() {
    for b in backends() {
        let (mut a, _) = history(&b).await;
        let before = state(&a).await;
        a.compact().await.unwrap();
        let layout = Layout::new(&b.prefix);
        // A truncated snapshot under a greater name.
        let fake = crzarr::format::layout::SnapshotName {
            covered: 1000,
            hash: crzarr::format::ids::ObjectHash::of(b"x"),
        };
        b.store
            .put(
                &layout.snapshot(&fake),
                PutPayload::from_static(b"CRZS\x01trunc"),
            )
            .await
            .unwrap();
        let r = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(state(&r).await, before, "{}", b.name);
        let problems = r.problems();
        assert!(
            problems
                .iter()
                .any(|p| p.key == layout.snapshot(&fake).as_ref() && p.error.contains("hash")),
            "{}: {problems:?}",
            b.name
        );
    }
}

#[tokio::test]
async fn compaction_splits_large_manifests_and_an_append_rewrites_the_last_piece() {
    let b = local();
    let mut w = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    let mut s = w.session();
    s.create_group("", Default::default()).unwrap();
    s.create_array("big", &array_meta(&[40_000], &[1])).unwrap();
    for i in 0..20_000 {
        s.set(&format!("big/c/{i}"), vec![(i % 251) as u8; 2])
            .unwrap();
    }
    s.commit(&mut w, None).await.unwrap();
    let r = w.compact().await.unwrap();
    assert_eq!(r.manifests_written, 2, "{r:?}");
    let mut s = w.session();
    s.set("big/c/30000", vec![1u8; 2]).unwrap();
    s.commit(&mut w, None).await.unwrap();
    let r = w.compact().await.unwrap();
    assert_eq!((r.manifests_written, r.manifests_reused), (1, 1), "{r:?}");
    let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    assert_eq!(
        fresh.get("big/c/30000").await.unwrap().as_deref(),
        Some(&[1u8, 1][..])
    );
    assert_eq!(fresh.list_prefix("big/c/").await.unwrap().len(), 20_001);
}

/// A store whose first LIST of each prefix returns what was there when it was
/// made: a reader that listed just before garbage collection ran.
#[derive(Debug)]
struct StaleListing {
    inner: Arc<dyn ObjectStore>,
    frozen: std::sync::Mutex<BTreeMap<String, Vec<object_store::ObjectMeta>>>,
}

impl StaleListing {
    async fn freeze(inner: Arc<dyn ObjectStore>, prefixes: &[object_store::path::Path]) -> Self {
        use futures::TryStreamExt;
        let mut frozen = BTreeMap::new();
        for p in prefixes {
            let v: Vec<object_store::ObjectMeta> = inner.list(Some(p)).try_collect().await.unwrap();
            frozen.insert(p.to_string(), v);
        }
        StaleListing {
            inner,
            frozen: std::sync::Mutex::new(frozen),
        }
    }
}

impl std::fmt::Display for StaleListing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaleListing({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for StaleListing {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        use futures::StreamExt;
        let key = prefix.map(|p| p.to_string()).unwrap_or_default();
        match self.frozen.lock().unwrap().remove(&key) {
            Some(v) => futures::stream::iter(v.into_iter().map(Ok)).boxed(),
            None => self.inner.list(prefix),
        }
    }

    fn list_with_offset(
        &self,
        prefix: Option<&object_store::path::Path>,
        offset: &object_store::path::Path,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[tokio::test]
async fn a_reader_that_listed_just_before_gc_relists_and_succeeds() {
    for b in backends() {
        let (mut a, _w) = history(&b).await;
        a.compact().await.unwrap();
        let mut s = a.session();
        s.set("x/c/5", vec![9u8; 4]).unwrap();
        s.commit(&mut a, None).await.unwrap();
        let layout = Layout::new(&b.prefix);
        // The reader's listings are taken now: old snapshot, old change files.
        let stale =
            StaleListing::freeze(b.store.clone(), &[layout.ops_dir(), layout.snapshots_dir()])
                .await;
        // A second snapshot, then GC removes the first and every change file.
        a.compact().await.unwrap();
        let r = a.gc(&NOW).await.unwrap();
        assert!(
            r.removed.iter().any(|x| x.kind == ObjectKind::Snapshot),
            "{}: {r:?}",
            b.name
        );
        let expect = state(&a).await;
        let reader = Repo::open(Arc::new(stale), &b.prefix).await.unwrap();
        assert_eq!(state(&reader).await, expect, "{}", b.name);
        assert_eq!(reader.problems(), vec![], "{}", b.name);
    }
}

#[tokio::test]
async fn gc_spares_a_writers_blob_uploaded_before_its_change_file() {
    for b in backends() {
        let (mut a, mut w) = history(&b).await;
        a.compact().await.unwrap();
        // The writer has uploaded its blob; its change file is not written yet.
        let bytes = blob(42);
        let key = Layout::new(&b.prefix).blob(&crzarr::format::ids::BlobHash::of(&bytes));
        w.bucket()
            .put_blob(&key, Bytes::from(bytes.clone()))
            .await
            .unwrap();
        let r = a
            .gc(&GcOptions {
                older_than: Duration::from_secs(600),
                dry_run: false,
                force: true,
            })
            .await
            .unwrap();
        assert!(
            !r.removed.iter().any(|x| x.key == key.as_ref()),
            "{}: {r:?}",
            b.name
        );
        assert!(b.store.head(&key).await.is_ok(), "{}", b.name);
        let mut s = w.session();
        s.set("x/c/3", bytes.clone()).unwrap();
        s.commit(&mut w, None).await.unwrap();
        let reader = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(
            reader.get("x/c/3").await.unwrap().as_deref(),
            Some(&bytes[..])
        );
        // The same blob, unreferenced and past a zero window, would have gone.
        let mut s = w.session();
        s.delete("x/c/3").unwrap();
        s.commit(&mut w, None).await.unwrap();
        a.compact().await.unwrap();
        let r = a.gc(&NOW).await.unwrap();
        assert!(
            r.removed.iter().any(|x| x.key == key.as_ref()),
            "{}: {r:?}",
            b.name
        );
    }
}

#[tokio::test]
async fn concurrent_compactors_both_land_and_gc_waits_for_one_to_cover_both() {
    for b in backends() {
        let (_a, _w) = history(&b).await;
        let mut c1 = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let mut c2 = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        // A writer commits while c2 compacts: it is covered or left uncovered.
        let mut w = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = w.session();
        s.set("x/c/4", vec![4u8; 4]).unwrap();
        let (r1, r2, rw) = futures::join!(c1.compact(), c2.compact(), s.commit(&mut w, None));
        let (r1, r2) = (r1.unwrap(), r2.unwrap());
        rw.unwrap();
        assert!(r1.snapshot.is_some() && r2.snapshot.is_some(), "{}", b.name);
        let all = stash(&b.bucket()).await;
        let reader = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(
            state(&reader).await,
            fold_state(&reader, &all),
            "{}",
            b.name
        );
        let mut g = reader;
        // GC proceeds only if the newest snapshot supersedes every other one.
        let r = g.gc(&NOW).await.unwrap();
        let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(state(&fresh).await, fold_state(&fresh, &all), "{}", b.name);
        if r.removed.is_empty() {
            assert!(
                r.notes.iter().any(|n| n.contains("run `crzarr compact`")),
                "{}: {r:?}",
                b.name
            );
        }
        // Another change, so the next compaction has something to fold.
        let mut s = g.session();
        s.set("x/c/6", vec![6u8; 4]).unwrap();
        s.commit(&mut g, None).await.unwrap();
        let all: BTreeMap<_, _> = stash(&b.bucket()).await.into_iter().chain(all).collect();
        let r = g.compact().await.unwrap();
        let r = match r.snapshot {
            Some(_) => r,
            None => panic!("{}: a third compaction supersedes both: {r:?}", b.name),
        };
        assert!(!r.supersedes.is_empty(), "{}: {r:?}", b.name);
        let r = g.gc(&NOW).await.unwrap();
        assert!(
            r.removed.iter().any(|x| x.kind == ObjectKind::Snapshot),
            "{}: {r:?}",
            b.name
        );
        let (snaps, _) = g.bucket().list_snapshots().await.unwrap();
        assert_eq!(snaps.len(), 1, "{}: one snapshot left", b.name);
        let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(state(&fresh).await, fold_state(&fresh, &all), "{}", b.name);
    }
}

#[tokio::test]
async fn gc_waits_until_the_newest_snapshot_is_older_than_the_window() {
    for b in [memory(), local()] {
        let (mut a, _) = history(&b).await;
        a.compact().await.unwrap();
        let r = a
            .gc(&GcOptions {
                older_than: Duration::from_secs(3600),
                dry_run: false,
                force: true,
            })
            .await
            .unwrap();
        assert!(r.removed.is_empty(), "{}: {r:?}", b.name);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("younger than the window")),
            "{}: {r:?}",
            b.name
        );
    }
}

#[tokio::test]
async fn a_handle_on_an_old_snapshot_refreshes_onto_the_new_one_after_gc() {
    for b in backends() {
        let (mut a, _) = history(&b).await;
        a.compact().await.unwrap();
        let mut old = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = a.session();
        s.set("x/c/0", vec![8u8; 4]).unwrap();
        s.commit(&mut a, None).await.unwrap();
        a.compact().await.unwrap();
        a.gc(&NOW).await.unwrap();
        // The old snapshot's manifest piece is gone: reading through it says so.
        let err = old.get("x/c/1").await.unwrap_err();
        assert!(matches!(err, Error::Vanished { .. }), "{}: {err:?}", b.name);
        assert!(err.to_string().contains("refresh and retry"), "{err}");
        old.refresh().await.unwrap();
        assert_eq!(state(&old).await, state(&a).await, "{}", b.name);
        assert_eq!(
            old.get("x/c/0").await.unwrap().as_deref(),
            Some(&[8u8; 4][..])
        );
    }
}

#[tokio::test]
async fn chunk_keys_without_grid_coordinates_survive_compaction_and_gc() {
    for b in [memory(), local()] {
        let mut a = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = a.session();
        s.create_array("x", &array_meta(&[4], &[2])).unwrap();
        s.set("x/foo", vec![1u8; 3]).unwrap();
        s.set("x/c/1", vec![2u8; 3]).unwrap();
        s.commit(&mut a, None).await.unwrap();
        let before = state(&a).await;
        a.compact().await.unwrap();
        a.gc(&NOW).await.unwrap();
        let r = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(r.problems(), vec![], "{}", b.name);
        assert_eq!(state(&r).await, before, "{}", b.name);
    }
    // More such keys than one piece holds: they order by name after their (empty)
    // coordinates and are split by name (`chunk_keys_without_coordinates_split_by_name`).
    let b = local();
    let mut a = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    let mut s = a.session();
    s.create_array("x", &array_meta(&[4], &[2])).unwrap();
    for i in 0..crzarr::format::snapshot::PIECE_ENTRIES + 10 {
        s.set(&format!("x/k{i}"), vec![1u8]).unwrap();
    }
    s.set("x/c/1", vec![2u8]).unwrap();
    s.commit(&mut a, None).await.unwrap();
    a.compact().await.unwrap();
    let r = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    assert_eq!(r.problems(), vec![]);
    assert_eq!(
        r.list_prefix("x/").await.unwrap().len(),
        crzarr::format::snapshot::PIECE_ENTRIES + 12
    );
}

#[tokio::test]
async fn a_change_needing_history_nobody_has_says_what_to_do() {
    for b in [memory(), local()] {
        let (mut a, _) = history(&b).await;
        a.compact().await.unwrap();
        a.gc(&NOW).await.unwrap();
        // A change from a replica whose history this bucket never had.
        let head = a.fold().heads()[0];
        let lost = ChangeHash([7; 32]);
        let c = Change {
            repo: a.id(),
            actor: crzarr::format::ids::ActorId::generate(),
            seq: 1,
            deps: {
                let mut d = vec![head, lost];
                d.sort();
                d
            },
            hlc: crzarr::format::ids::Hlc(a.fold().hlc_of(&head).unwrap().0 + 10),
            wall_ms: 0,
            message: None,
            ops: vec![],
        };
        let bytes = c.encode();
        let name = crzarr::format::layout::ChangeName {
            hash: ChangeHash::of(&bytes),
            actor: c.actor,
            seq: 1,
        };
        let key = Layout::new(&b.prefix).change(&name);
        b.store.put(&key, PutPayload::from(bytes)).await.unwrap();
        let report = a.refresh().await.unwrap();
        assert_eq!(a.pending().len(), 1, "{}", b.name);
        let m = a.missing_history();
        assert_eq!(m.len(), 1, "{}: {m:?}", b.name);
        assert_eq!(m[0].key, key.as_ref());
        assert!(m[0].error.contains(&lost.to_hex()), "{}", m[0].error);
        assert!(
            m[0].error.contains("sync the replica that has it"),
            "{}",
            m[0].error
        );
        assert_eq!(report.problems, m, "{}", b.name);
        assert_eq!(a.problems(), vec![], "{}: not a damaged file", b.name);
    }
}

/// spec/merge.md, "Observed entries": an op may name an entry whose change has not
/// arrived (here a change that observes a concurrent one, as only a non-causal or
/// hostile writer would). The op applies at once and the entry is dropped whenever
/// it arrives: before, after, or after a compaction in between.
#[tokio::test]
async fn an_observed_entry_that_arrives_late_is_dropped_in_every_order() {
    use crzarr::format::change::{ChunkData, Op, OpRef};
    let b = memory();
    let mut w = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    let mut s = w.session();
    s.create_group("", Default::default()).unwrap();
    s.create_array("x", &array_meta(&[4], &[2])).unwrap();
    let c0 = s.commit(&mut w, None).await.unwrap().unwrap();
    let base = w.fold().hlc_of(&c0).unwrap();
    let make = |hlc: u64, ops: Vec<Op>| {
        let c = Change {
            repo: w.id(),
            actor: crzarr::format::ids::ActorId::generate(),
            seq: 1,
            deps: vec![c0],
            hlc: crzarr::format::ids::Hlc(base.0 + hlc),
            wall_ms: 0,
            message: None,
            ops,
        };
        let bytes = c.encode();
        (ChangeHash::of(&bytes), c, bytes)
    };
    let (root, arr) = (OpRef::Change(c0, 0), OpRef::Change(c0, 1));
    let y = make(
        1,
        vec![
            Op::SetAttr {
                node: root,
                key: "k".into(),
                value: "\"y\"".into(),
                observed: vec![],
            },
            Op::SetChunk {
                node: arr,
                key: "c/0".into(),
                data: ChunkData::Inline(vec![1]),
                observed: vec![],
            },
        ],
    );
    let x = make(
        2,
        vec![
            Op::SetAttr {
                node: root,
                key: "k".into(),
                value: "\"x\"".into(),
                observed: vec![OpRef::Change(y.0, 0)],
            },
            Op::SetChunk {
                node: arr,
                key: "c/0".into(),
                data: ChunkData::Inline(vec![2]),
                observed: vec![OpRef::Change(y.0, 1)],
            },
        ],
    );
    let base_changes = stash(&b.bucket()).await;
    let with = |extra: &[&(ChangeHash, Change, Vec<u8>)]| {
        let mut v: Vec<(ChangeHash, Change)> =
            base_changes.iter().map(|(h, c)| (*h, c.clone())).collect();
        v.extend(extra.iter().map(|(h, c, _)| (*h, c.clone())));
        v
    };
    let fold_state = |changes: Vec<(ChangeHash, Change)>| {
        let fold = Fold::from_changes(w.id(), changes);
        let view_index = ViewIndex::build(&fold);
        let view = view_index.with(&fold);
        (view.entries(), view.conflicts())
    };
    let y_first = fold_state(with(&[&y, &x]));
    let x_first = fold_state(with(&[&x, &y]));
    assert_eq!(y_first, x_first);
    assert_eq!(
        y_first.1,
        vec![],
        "the observed entries are gone, not conflicts"
    );
    let chunk = |st: &(BTreeMap<String, Entry>, Vec<Conflict>)| st.0.get("x/c/0").cloned();
    assert_eq!(
        chunk(&y_first),
        Some(Entry::Chunk(crzarr::fold::view::ChunkRef::Inline(vec![2])))
    );

    // Through a bucket, with a compaction between X and Y.
    let put = |c: &(ChangeHash, Change, Vec<u8>)| {
        let key = Layout::new(&b.prefix).change(&crzarr::format::layout::ChangeName {
            hash: c.0,
            actor: c.1.actor,
            seq: c.1.seq,
        });
        (key, PutPayload::from(c.2.clone()))
    };
    let (k, p) = put(&x);
    b.store.put(&k, p).await.unwrap();
    w.refresh().await.unwrap();
    w.compact().await.unwrap();
    w.gc(&NOW).await.unwrap();
    let (k, p) = put(&y);
    b.store.put(&k, p).await.unwrap();
    let r = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    assert_eq!(r.problems(), vec![]);
    let (entries, conflicts, _) = state(&r).await;
    assert_eq!((entries, conflicts), y_first);
}

#[tokio::test]
async fn a_damaged_manifest_piece_or_archive_shard_is_named_and_contained() {
    for b in backends() {
        let (mut a, _) = history(&b).await;
        // A change nothing stamps once compacted: it ends up in the archive.
        let mut s = a.session();
        s.set("x/c/3", vec![5u8; 4]).unwrap();
        s.commit(&mut a, None).await.unwrap();
        // An offline writer that saw it: its next change depends on it.
        let mut late = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        a.compact().await.unwrap();
        a.gc(&NOW).await.unwrap();
        // A second snapshot moves the first one's table into the archive.
        let mut s = a.session();
        s.create_array("y", &array_meta(&[4], &[2])).unwrap();
        s.set("y/c/0", vec![3u8; 4]).unwrap();
        s.commit(&mut a, None).await.unwrap();
        a.compact().await.unwrap();
        a.gc(&NOW).await.unwrap();
        let layout = Layout::new(&b.prefix);
        let lay_list = |dir: object_store::path::Path| {
            let store = b.store.clone();
            async move {
                use futures::TryStreamExt;
                let v: Vec<object_store::ObjectMeta> =
                    store.list(Some(&dir)).try_collect().await.unwrap();
                v.into_iter().map(|m| m.location).collect::<Vec<_>>()
            }
        };
        let shards = lay_list(layout.archive_dir()).await;
        assert!(!shards.is_empty(), "{}: the archive has shards", b.name);
        for k in &shards {
            b.store
                .put(k, PutPayload::from_static(b"CRZA\x01junk"))
                .await
                .unwrap();
        }
        let reader = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        // Find x's piece and damage it; y's piece stays readable.
        // x's piece is the one holding key c/1 (y has only c/0).
        let mut x_piece = None;
        for k in lay_list(layout.manifests_dir()).await {
            let bytes = b.store.get(&k).await.unwrap().bytes().await.unwrap();
            if bytes.windows(3).any(|w| w == b"c/1") {
                x_piece = Some(k);
            }
        }
        let x_piece = x_piece.unwrap();
        b.store
            .put(&x_piece, PutPayload::from_static(b"CRZM\x01junk"))
            .await
            .unwrap();
        let err = reader.get("x/c/1").await.unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { key, .. } if key == x_piece.as_ref()),
            "{}: {err:?}",
            b.name
        );
        assert_eq!(
            reader.get("y/c/0").await.unwrap().as_deref(),
            Some(&[3u8; 4][..]),
            "{}: other arrays still read",
            b.name
        );
        // A late change needs the archive: the damaged shard is reported, open works.
        let mut s = late.session();
        s.set_attr("x", "late", true.into()).unwrap();
        s.commit(&mut late, None).await.unwrap();
        let r = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let problems = r.problems();
        assert!(
            problems
                .iter()
                .any(|p| shards.iter().any(|s| s.as_ref() == p.key)),
            "{}: {problems:?}",
            b.name
        );
        assert_eq!(r.pending().len(), 1, "{}", b.name);
        assert_eq!(r.missing_history().len(), 1, "{}", b.name);
    }
}

#[tokio::test]
async fn forks_are_detected_against_the_table_at_once_and_the_archive_at_compaction() {
    for b in [memory(), local()] {
        let (mut a, _) = history(&b).await;
        // K: a chunk-only change, soon archived. Then another change on top.
        let mut s = a.session();
        s.set("x/c/3", vec![5u8; 4]).unwrap();
        let k = s.commit(&mut a, None).await.unwrap().unwrap();
        let k_info = a.log().into_iter().find(|c| c.hash == k).unwrap().clone();
        let mut s = a.session();
        s.set_attr("x", "n", 1.into()).unwrap();
        let top = s.commit(&mut a, None).await.unwrap().unwrap();
        for _ in 0..2 {
            a.compact().await.unwrap();
            a.gc(&NOW).await.unwrap();
            let mut s = a.session();
            s.set_attr("x", "n", 2.into()).unwrap();
            s.commit(&mut a, None).await.unwrap();
        }
        // A cloned writer reuses K's actor and seq for different content.
        let head = a.fold().heads()[0];
        let forged = |deps: Vec<ChangeHash>, seq: u64, actor: crzarr::format::ids::ActorId| {
            let c = Change {
                repo: a.id(),
                actor,
                seq,
                deps,
                hlc: crzarr::format::ids::Hlc(a.fold().hlc_of(&head).unwrap().0 + 100),
                wall_ms: 0,
                message: Some("clone".into()),
                ops: vec![],
            };
            let bytes = c.encode();
            let name = crzarr::format::layout::ChangeName {
                hash: ChangeHash::of(&bytes),
                actor,
                seq,
            };
            (Layout::new(&b.prefix).change(&name), bytes, name.hash)
        };
        let (key, bytes, f1) = forged(vec![head], k_info.seq, k_info.actor);
        b.store.put(&key, PutPayload::from(bytes)).await.unwrap();
        let reader = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(reader.pending(), vec![], "{}", b.name);
        // K is archived: the reader cannot tell yet; the next compaction does.
        let mut c = reader;
        c.compact().await.unwrap();
        let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let forks = fresh.forks();
        assert_eq!(forks.len(), 1, "{}: {forks:?}", b.name);
        let mut want = vec![k, f1];
        want.sort();
        assert_eq!(forks[0].changes, want, "{}", b.name);

        // A fork of a covered change whose file is still listed (so it is in the
        // snapshot's table) is seen by a reader at once, without a compaction.
        let mut w = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = w.session();
        s.set("x/c/4", vec![6u8; 4]).unwrap();
        let t = s.commit(&mut w, None).await.unwrap().unwrap();
        let t_info = w.log().into_iter().find(|c| c.hash == t).unwrap().clone();
        w.compact().await.unwrap();
        let (key, bytes, f2) = forged(t_info.deps.clone(), t_info.seq, t_info.actor);
        b.store.put(&key, PutPayload::from(bytes)).await.unwrap();
        let r = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let mut want = vec![t, f2];
        want.sort();
        assert!(
            r.forks().iter().any(|f| f.changes == want),
            "{}: {:?}",
            b.name,
            r.forks()
        );
        let _ = top;
    }
}

#[tokio::test]
async fn structurally_invalid_snapshots_are_refused_with_their_key_and_skipped() {
    use crzarr::format::snapshot::SnapshotMeta;
    for b in backends() {
        let (mut a, _) = history(&b).await;
        let before = state(&a).await;
        let r = a.compact().await.unwrap();
        let layout = Layout::new(&b.prefix);
        let name = crzarr::format::layout::SnapshotName::parse(&r.snapshot.unwrap()).unwrap();
        let bytes = b
            .store
            .get(&layout.snapshot(&name))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let good = SnapshotMeta::decode("x", &bytes, &name.hash).unwrap();
        type Mutation = (&'static str, fn(&mut SnapshotMeta));
        let cases: [Mutation; 8] = [
            ("stamp out of range", |m| m.nodes[0].stamp.0 = 999),
            ("a head is missing from the change table", |m| {
                m.heads = vec![ChangeHash([9; 32])]
            }),
            ("change table not sorted by hash", |m| m.changes.reverse()),
            ("covered count differs from the name", |m| m.covered += 7),
            ("belongs to repository", |m| {
                m.repo = crzarr::format::ids::RepoId::generate()
            }),
            ("two nodes with one stamp", |m| {
                // Another path, sorting last, so only the stamp is shared.
                let mut n = m.nodes[0].clone();
                n.path = "zzz".into();
                m.nodes.push(n)
            }),
            ("nodes not sorted by path and stamp", |m| m.nodes.reverse()),
            ("heads not sorted", |m| {
                m.heads = m.changes.iter().rev().take(2).map(|c| c.hash).collect()
            }),
        ];
        for (i, (want, mutate)) in cases.iter().enumerate() {
            let mut m = good.clone();
            mutate(&mut m);
            let bad = m.encode();
            // Named as covering more, so a reader tries it first.
            let bad_name = crzarr::format::layout::SnapshotName {
                covered: if *want == "covered count differs from the name" {
                    100 + i as u64
                } else {
                    m.covered + 100 + i as u64
                },
                hash: crzarr::format::ids::ObjectHash::of(&bad),
            };
            let mut m2 = m.clone();
            if *want != "covered count differs from the name" {
                m2.covered = bad_name.covered;
            }
            let bad = m2.encode();
            let bad_name = crzarr::format::layout::SnapshotName {
                hash: crzarr::format::ids::ObjectHash::of(&bad),
                ..bad_name
            };
            let key = layout.snapshot(&bad_name);
            b.store.put(&key, PutPayload::from(bad)).await.unwrap();
            let r = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
            let p = r.problems();
            assert!(
                p.iter()
                    .any(|p| p.key == key.as_ref() && p.error.contains(want)),
                "{} {want}: {p:?}",
                b.name
            );
            assert_eq!(state(&r).await, before, "{} {want}", b.name);
            b.store.delete(&key).await.unwrap();
        }
    }
}

/// Coverage requirement 3: after many short-lived writers (one change each, as a
/// cluster job per chunk would write), what open reads does not grow with them.
#[tokio::test]
async fn open_after_many_short_lived_writers_reads_no_per_writer_state() {
    use crzarr::format::change::{ChunkData, Op, OpRef};
    let mut sizes = Vec::new();
    for writers in [100usize, 2000] {
        let b = memory();
        let mut w = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = w.session();
        s.create_array("x", &array_meta(&[4096], &[1])).unwrap();
        let c0 = s.commit(&mut w, None).await.unwrap().unwrap();
        let mut prev = c0;
        let mut hlc = w.fold().hlc_of(&c0).unwrap().0;
        let layout = Layout::new(&b.prefix);
        for i in 0..writers {
            hlc += 1;
            let c = Change {
                repo: w.id(),
                actor: crzarr::format::ids::ActorId::generate(),
                seq: 1,
                deps: vec![prev],
                hlc: crzarr::format::ids::Hlc(hlc),
                wall_ms: 0,
                message: None,
                ops: vec![Op::SetChunk {
                    node: OpRef::Change(c0, 0),
                    key: format!("c/{i}"),
                    data: ChunkData::Inline(vec![1]),
                    observed: vec![],
                }],
            };
            let bytes = c.encode();
            let name = crzarr::format::layout::ChangeName {
                hash: ChangeHash::of(&bytes),
                actor: c.actor,
                seq: 1,
            };
            b.store
                .put(&layout.change(&name), PutPayload::from(bytes))
                .await
                .unwrap();
            prev = name.hash;
        }
        let mut c = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        c.compact().await.unwrap();
        c.gc(&NOW).await.unwrap();
        // One more change, so the next snapshot moves collected writers to the archive.
        let mut s = c.session();
        s.set_attr("x", "done", true.into()).unwrap();
        s.commit(&mut c, None).await.unwrap();
        c.compact().await.unwrap();
        c.gc(&NOW).await.unwrap();
        let counting = CountingStore::new(b.store.clone());
        let r = Repo::open(Arc::new(counting.clone()), &b.prefix)
            .await
            .unwrap();
        let n = counting.take();
        assert_eq!((n.requests(), n.round_trips), (4, 1), "{writers}: {n:?}");
        assert_eq!(r.list_prefix("x/c/").await.unwrap().len(), writers);
        let hint = b.store.get(&layout.latest_hint()).await.unwrap();
        sizes.push(hint.meta.size);
    }
    // Same metadata size (to a few bytes of varint) for 20 times the writers.
    assert!(
        sizes[1] <= sizes[0] + 16,
        "metadata grew with writers: {sizes:?}"
    );
}

/// An array `x` with `meta`, committed as one change; returns its hash and change.
async fn array_base(b: &Backend, meta: &serde_json::Value) -> (ChangeHash, Change) {
    let mut r = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    let mut s = r.session();
    s.create_array("x", meta).unwrap();
    s.commit(&mut r, None).await.unwrap();
    stash(&b.bucket()).await.into_iter().next().unwrap()
}

/// Writes `n` hand-made changes on top of `base`, each from a fresh writer that saw
/// only `base` (so they are all concurrent); `ops(i)` are change `i`'s ops, whose
/// array op refers to `x`. Tens of thousands of changes take seconds this way.
async fn put_concurrent(
    b: &Backend,
    base: &(ChangeHash, Change),
    n: usize,
    ops: impl Fn(usize, OpRef) -> Vec<Op>,
) {
    let layout = Layout::new(&b.prefix);
    let x = OpRef::Change(base.0, 0);
    for i in 0..n {
        let c = Change {
            repo: base.1.repo,
            actor: ActorId::generate(),
            seq: 1,
            deps: vec![base.0],
            hlc: Hlc(base.1.hlc.0 + 1 + i as u64),
            wall_ms: base.1.wall_ms,
            message: None,
            ops: ops(i, x),
        };
        let bytes = c.encode();
        let key = layout.change(&ChangeName {
            hash: ChangeHash::of(&bytes),
            actor: c.actor,
            seq: 1,
        });
        b.store
            .put(&key, PutPayload::from(Bytes::from(bytes)))
            .await
            .unwrap();
    }
}

fn set_inline(x: &OpRef, key: String, data: Vec<u8>) -> Op {
    Op::SetChunk {
        node: *x,
        key,
        data: ChunkData::Inline(data),
        observed: vec![],
    }
}

/// A 4 KiB tile (the inline maximum) that says which tile it is.
fn tile(i: usize, salt: u8) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8 ^ salt; INLINE_MAX];
    v[..4].copy_from_slice(&(i as u32).to_le_bytes());
    v
}

/// Every manifest piece in the bucket is one readers accept; returns how many.
async fn pieces_within_the_read_limit(b: &Backend) -> usize {
    let bucket = crzarr::io::store::RepoStore::new(b.store.clone(), &b.prefix);
    let pieces = bucket
        .list_all(&bucket.layout().manifests_dir())
        .await
        .unwrap();
    for p in &pieces {
        assert!(
            p.size <= MAX_PIECE_BYTES,
            "{}: {} bytes, over the read limit",
            p.location,
            p.size
        );
    }
    pieces.len()
}

/// The newest snapshot's metadata.
async fn newest_meta(b: &Backend) -> (u8, SnapshotMeta) {
    let bucket = crzarr::io::store::RepoStore::new(b.store.clone(), &b.prefix);
    let (snaps, _) = bucket.list_snapshots().await.unwrap();
    let s = snaps.first().unwrap();
    let key = bucket.layout().snapshot(&s.name);
    let bytes = b.store.get(&key).await.unwrap().bytes().await.unwrap();
    let meta = SnapshotMeta::decode(key.as_ref(), &bytes, &s.name.hash).unwrap();
    (bytes[4], meta)
}

#[tokio::test]
async fn compaction_never_writes_a_piece_readers_refuse() {
    // 16,384 uncompressed 64x64 uint8 tiles stored inline: one piece by key count
    // alone would be over 64 MiB, which every reader refuses.
    let b = memory();
    let base = array_base(&b, &array_meta(&[8192, 8192], &[64, 64])).await;
    let n = PIECE_ENTRIES;
    // Four changes (one would be over the change file limit), on distinct keys.
    put_concurrent(&b, &base, 4, |c, x| {
        (c * n / 4..(c + 1) * n / 4)
            .map(|i| set_inline(&x, format!("c/{}/{}", i / 128, i % 128), tile(i, 0)))
            .collect()
    })
    .await;
    let mut w = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    let r = w.compact().await.unwrap();
    let written = pieces_within_the_read_limit(&b).await;
    assert!(written > 1 && written == r.manifests_written, "{r:?}");
    let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    assert_eq!(fresh.problems(), vec![]);
    for i in 0..n {
        let k = format!("x/c/{}/{}", i / 128, i % 128);
        let got = fresh.get(&k).await.unwrap();
        assert_eq!(got.as_deref(), Some(&tile(i, 0)[..]), "{k}");
    }
    // Coordinates alone still split these pieces: the metadata stays version 1.
    let (version, meta) = newest_meta(&b).await;
    assert_eq!(version, crzarr::format::snapshot::SNAPSHOT_VERSION);
    assert_eq!(meta.nodes[0].pieces.len(), written);
    // Commits and GC read the pieces too.
    let mut w = fresh;
    let mut s = w.session();
    s.set("x/c/5/5", vec![7u8; 3]).unwrap();
    s.commit(&mut w, None).await.unwrap();
    w.gc(&NOW).await.unwrap();
    let r = w.compact().await.unwrap();
    assert_eq!(
        r.manifests_written, 1,
        "only the piece holding c/5/5: {r:?}"
    );
    pieces_within_the_read_limit(&b).await;
    let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    assert_eq!(
        fresh.get("x/c/5/5").await.unwrap().as_deref(),
        Some(&[7u8; 3][..])
    );
    assert_eq!(fresh.list_prefix("x/c/").await.unwrap().len(), n);
}

#[tokio::test]
async fn chunk_keys_without_coordinates_split_by_name() {
    // 100,000 chunk keys without grid coordinates in one array: they all order as
    // `[]`, so only their names can cut them into pieces.
    let b = memory();
    let base = array_base(&b, &array_meta(&[4], &[2])).await;
    let n = 100_000;
    put_concurrent(&b, &base, 1, |_, x| {
        let mut ops: Vec<Op> = (0..n)
            .map(|i| set_inline(&x, format!("k{i}"), (i as u32).to_le_bytes().to_vec()))
            .collect();
        ops.push(set_inline(&x, "c/1".into(), vec![9]));
        ops
    })
    .await;
    let mut w = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    w.compact().await.unwrap();
    let (version, meta) = newest_meta(&b).await;
    let pieces = &meta.nodes[0].pieces;
    assert!(pieces.len() > n / PIECE_ENTRIES, "{}", pieces.len());
    assert!(pieces.iter().all(|p| p.keys as usize <= PIECE_ENTRIES));
    assert!(pieces.iter().skip(1).all(|p| !p.first_key.is_empty()));
    // Pieces that start inside a run of equal coordinates need version 3: an older
    // reader would route lookups by coordinates alone.
    assert_eq!(
        version,
        crzarr::format::snapshot::SNAPSHOT_META_FIRST_KEY_VERSION
    );
    assert_eq!(pieces_within_the_read_limit(&b).await, pieces.len());

    let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    assert_eq!(fresh.problems(), vec![]);
    for i in 0..n {
        let got = fresh.get(&format!("x/k{i}")).await.unwrap();
        assert_eq!(got.as_deref(), Some(&(i as u32).to_le_bytes()[..]), "k{i}");
    }
    assert_eq!(
        fresh.get("x/c/1").await.unwrap().as_deref(),
        Some(&[9u8][..])
    );
    assert_eq!(fresh.get("x/k100000").await.unwrap(), None);
    assert_eq!(fresh.list_prefix("x/").await.unwrap().len(), n + 2);

    // Edits inside, between and below pieces rewrite only the pieces they fall in.
    let mut w = fresh;
    let mut s = w.session();
    s.set("x/k50000", vec![1u8]).unwrap();
    s.set("x/k50000a", vec![2u8]).unwrap();
    s.set("x/a", vec![3u8]).unwrap();
    s.delete("x/k70000").unwrap();
    s.commit(&mut w, None).await.unwrap();
    let r = w.compact().await.unwrap();
    assert!(r.manifests_reused >= pieces.len() - 4, "{r:?}");
    let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    let changes = stash(&b.bucket()).await;
    assert_eq!(state(&fresh).await, fold_state(&fresh, &changes));
    assert_eq!(
        fresh.get("x/k50000a").await.unwrap().as_deref(),
        Some(&[2u8][..])
    );
    assert_eq!(fresh.get("x/a").await.unwrap().as_deref(), Some(&[3u8][..]));
    assert_eq!(fresh.get("x/k70000").await.unwrap(), None);
    w.gc(&NOW).await.unwrap();
    let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    assert_eq!(fresh.problems(), vec![]);
    assert_eq!(fresh.list_prefix("x/").await.unwrap().len(), n + 3);
}

#[tokio::test]
async fn heavy_conflicts_on_one_piece() {
    // 20 writers who never saw each other write the same 1,000 tiles: 1,000 keys,
    // few enough for one piece by count, hold 20,000 values (80 MB).
    let b = memory();
    let base = array_base(&b, &array_meta(&[64_000], &[64])).await;
    let (writers, keys) = (20, 1000);
    put_concurrent(&b, &base, writers, |w, x| {
        (0..keys)
            .map(|i| set_inline(&x, format!("c/{i}"), tile(i, w as u8)))
            .collect()
    })
    .await;
    let mut w = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    let before = state(&w).await;
    assert_eq!(before.1.len(), keys);
    let r = w.compact().await.unwrap();
    assert!(r.manifests_written > 1, "{r:?}");
    pieces_within_the_read_limit(&b).await;
    let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    assert_eq!(fresh.problems(), vec![]);
    assert_eq!(state(&fresh).await, before);
}

#[tokio::test]
async fn a_register_too_large_for_any_piece_fails_compaction_with_a_limit_error() {
    // One chunk with more concurrent 4 KiB values than a piece can hold: no piece
    // can hold its register, so compaction writes nothing rather than a piece
    // readers refuse.
    let b = memory();
    let base = array_base(&b, &array_meta(&[4], &[2])).await;
    let writers = (MAX_PIECE_BYTES as usize / INLINE_MAX) + 16;
    put_concurrent(&b, &base, writers, |w, x| {
        vec![set_inline(&x, "c/0".into(), tile(w, 1))]
    })
    .await;
    let mut w = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    let err = w.compact().await.unwrap_err();
    assert!(matches!(err, Error::Limit(_)), "{err:?}");
    assert!(err.to_string().contains("\"c/0\""), "{err}");
    let bucket = crzarr::io::store::RepoStore::new(b.store.clone(), &b.prefix);
    assert!(bucket.list_snapshots().await.unwrap().0.is_empty());
    assert_eq!(pieces_within_the_read_limit(&b).await, 0);
    // Readers are unaffected: the history still serves the winner.
    let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    assert_eq!(
        fresh.get("x/c/0").await.unwrap().as_deref(),
        Some(&tile(writers - 1, 1)[..])
    );
}
