//! Garbage collection and compaction against the store's own clock: regression tests
//! for issue 14 (items 3, 6, 7 and 8), on every backend. The store clock is moved by
//! [`ClockStore`], so windows of hours are crossed without waiting.

use crate::common::{Backend, array_meta, backends};
use async_trait::async_trait;
use bytes::Bytes;
use crzarr::Error;
use crzarr::format::layout::{Layout, SnapshotName};
use crzarr::io::store::RepoStore;
use crzarr::io::testing::ClockStore;
use crzarr::ops::gc::{GcOptions, ObjectKind};
use crzarr::ops::verify::{VerifyOptions, verify};
use crzarr::repo::Repo;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

fn gc_opts(older_than: Duration) -> GcOptions {
    GcOptions {
        older_than,
        dry_run: false,
        force: false,
    }
}

/// A repository with an array `x` of 4-byte chunks, on a store whose clock the test
/// moves.
async fn clocked(b: &Backend) -> (ClockStore, Repo) {
    let clock = ClockStore::new(b.store.clone());
    let mut repo = Repo::init(Arc::new(clock.clone()), &b.prefix)
        .await
        .unwrap();
    let config = crzarr::io::store::RepoConfig {
        min_gc_window_secs: HOUR.as_secs(),
    };
    repo.bucket().write_config(&config).await.unwrap();
    let mut s = repo.session();
    s.create_group("", Default::default()).unwrap();
    s.create_array("x", &array_meta(&[1 << 20], &[1])).unwrap();
    s.commit(&mut repo, None).await.unwrap();
    (clock, repo)
}

async fn write(repo: &mut Repo, i: u32) {
    let mut s = repo.session();
    s.set(&format!("x/c/{i}"), i.to_le_bytes().to_vec())
        .unwrap();
    s.commit(repo, None).await.unwrap();
}

async fn count(store: &Arc<dyn ObjectStore>, dir: &Path) -> usize {
    store.list(Some(dir)).count().await
}

/// Every chunk `0..n` reads back, from a fresh reader with every piece loaded.
async fn assert_all_readable(store: Arc<dyn ObjectStore>, prefix: &str, n: u32, what: &str) {
    let r = Repo::open(store, prefix).await.unwrap();
    r.load_all().await.unwrap();
    for i in 0..n {
        let got = r.get(&format!("x/c/{i}")).await.unwrap();
        assert_eq!(
            got.as_deref(),
            Some(&i.to_le_bytes()[..]),
            "{what}: chunk {i}"
        );
    }
}

/// Issue 14 item 7: a repository compacted every minute, collected with a one-hour
/// window, still gets its change files collected.
#[tokio::test]
async fn gc_collects_when_compacting_more_often_than_the_window() {
    for b in backends() {
        let (clock, mut repo) = clocked(&b).await;
        let ops = Layout::new(&b.prefix).ops_dir();
        let mut collected = 0;
        for i in 0..150u32 {
            write(&mut repo, i).await;
            repo.compact().await.unwrap();
            clock.advance(MINUTE);
            let rep = repo.gc(&gc_opts(HOUR)).await.unwrap();
            collected += rep
                .removed
                .iter()
                .filter(|r| r.kind == ObjectKind::Change)
                .count();
        }
        // About the last hour of change files is left, not all 151.
        let left = count(&b.store, &ops).await;
        assert!(collected >= 80, "{}: {collected} collected", b.name);
        assert!(left <= 70, "{}: {left} change files left", b.name);
        assert_all_readable(b.store.clone(), &b.prefix, 150, b.name).await;
    }
}

/// Issue 14 item 6: junk named like snapshots (one with the greatest count and an
/// unknown version byte, its name's hash matching; one whose bytes do not match its
/// name) blocks no read, commit, compaction or collection, and is quarantinable.
#[tokio::test]
async fn junk_snapshot_blocks_nothing() {
    for b in backends() {
        let (clock, mut repo) = clocked(&b).await;
        for i in 0..3 {
            write(&mut repo, i).await;
        }
        repo.compact().await.unwrap();
        let layout = Layout::new(&b.prefix);
        // 12 bytes: a newer version byte, but no snapshot envelope.
        let junk = b"CRZS\x09\x92\xc0\xc0junk".to_vec();
        let newer = SnapshotName {
            covered: u64::MAX / 2,
            hash: crzarr::format::ids::ObjectHash::of(&junk),
        };
        let damaged = SnapshotName {
            covered: u64::MAX / 3,
            hash: crzarr::format::ids::ObjectHash::of(b"something else"),
        };
        for name in [newer, damaged] {
            b.store
                .put(
                    &layout.snapshot(&name),
                    PutPayload::from(Bytes::from(junk.clone())),
                )
                .await
                .unwrap();
        }
        let junk_keys = [
            layout.snapshot(&newer).to_string(),
            layout.snapshot(&damaged).to_string(),
        ];

        // Reads and commits go on; the junk is reported under its key.
        let mut w = Repo::open(Arc::new(clock.clone()), &b.prefix)
            .await
            .unwrap();
        let problems: Vec<String> = w.problems().into_iter().map(|p| p.key).collect();
        for k in &junk_keys {
            assert!(problems.contains(k), "{}: {k} not in {problems:?}", b.name);
        }
        write(&mut w, 3).await;
        // Compaction and collection are not blocked.
        let c = w.compact().await.unwrap();
        assert!(c.snapshot.is_some(), "{}", b.name);
        clock.advance(2 * HOUR);
        let g = w.gc(&gc_opts(HOUR)).await.unwrap();
        let junk_reported: Vec<&str> = g.junk.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(junk_reported.len(), 2, "{}: {g:?}", b.name);
        assert!(
            g.removed.iter().any(|r| r.kind == ObjectKind::Change),
            "{}: nothing collected: {:?}",
            b.name,
            g.notes
        );
        assert_all_readable(Arc::new(clock.clone()), &b.prefix, 4, b.name).await;

        // `verify --quarantine` moves both aside.
        let bucket = RepoStore::new(b.store.clone(), &b.prefix);
        let opts = VerifyOptions {
            quarantine: true,
            ..VerifyOptions::default()
        };
        let v = verify(&bucket, &opts).await.unwrap();
        assert_eq!(v.moved.len(), 2, "{}: {:?}", b.name, v.moved);
        for k in &junk_keys {
            assert!(
                b.store.head(&Path::from(k.as_str())).await.is_err(),
                "{}: {k} still in place",
                b.name
            );
        }
    }
}

type Hook = BoxFuture<'static, ()>;

/// A store that runs a hook once, just before the first request of a kind on a key
/// under a directory: how a test puts another process's work in the middle of a
/// garbage collection or a compaction, deterministically.
#[derive(Clone)]
struct HookStore {
    inner: Arc<dyn ObjectStore>,
    dir: String,
    on_head_or_delete: bool,
    /// Matching requests still to let through, and the hook.
    hook: Arc<Mutex<(usize, Option<Hook>)>>,
}

impl std::fmt::Debug for HookStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HookStore({:?})", self.dir)
    }
}

impl HookStore {
    fn new(inner: Arc<dyn ObjectStore>, dir: &Path, on_head_or_delete: bool) -> Self {
        HookStore {
            inner,
            dir: format!("{dir}/"),
            on_head_or_delete,
            hook: Arc::new(Mutex::new((0, None))),
        }
    }

    fn arm(&self, hook: Hook) {
        self.arm_after(0, hook);
    }

    /// Arms the hook to run before the matching request after `pass` others.
    fn arm_after(&self, pass: usize, hook: Hook) {
        *self.hook.lock().unwrap() = (pass, Some(hook));
    }

    fn fired(&self) -> bool {
        self.hook.lock().unwrap().1.is_none()
    }

    async fn maybe_fire(hook: &Mutex<(usize, Option<Hook>)>, dir: &str, key: &Path) {
        if !key.as_ref().starts_with(dir) {
            return;
        }
        let h = {
            let mut g = hook.lock().unwrap();
            if g.0 > 0 {
                g.0 -= 1;
                None
            } else {
                g.1.take()
            }
        };
        if let Some(h) = h {
            h.await;
        }
    }
}

impl std::fmt::Display for HookStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HookStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for HookStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if !self.on_head_or_delete {
            Self::maybe_fire(&self.hook, &self.dir, location).await;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if self.on_head_or_delete && options.head {
            Self::maybe_fire(&self.hook, &self.dir, location).await;
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let (hook, dir, armed) = (self.hook.clone(), self.dir.clone(), self.on_head_or_delete);
        let locations = locations
            .then(move |r| {
                let (hook, dir) = (hook.clone(), dir.clone());
                async move {
                    if let (Ok(p), true) = (&r, armed) {
                        Self::maybe_fire(&hook, &dir, p).await;
                    }
                    r
                }
            })
            .boxed();
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// Issue 14 item 3: a compaction fails after writing its pieces; long after, a GC
/// lists them as orphans, and while it runs a retry lands a snapshot naming the
/// byte-identical pieces. The GC must not delete them.
#[tokio::test]
async fn gc_keeps_a_piece_a_retried_compaction_reuses() {
    for b in backends() {
        let (clock, mut repo) = clocked(&b).await;
        let layout = Layout::new(&b.prefix);
        for i in 0..4 {
            write(&mut repo, i).await;
        }
        repo.compact().await.unwrap();
        for i in 4..8 {
            write(&mut repo, i).await;
        }
        // The failed compaction: pieces landed, the metadata did not.
        let failed = repo.compact().await.unwrap();
        let failed = SnapshotName::parse(&failed.snapshot.unwrap()).unwrap();
        b.store.delete(&layout.snapshot(&failed)).await.unwrap();
        clock.advance(2 * HOUR);

        // The GC lists the orphans; the retry lands just before it deletes them.
        let hooked = HookStore::new(Arc::new(clock.clone()), &layout.manifests_dir(), true);
        let retry_store: Arc<dyn ObjectStore> = Arc::new(clock.clone());
        let prefix = b.prefix.clone();
        hooked.arm(Box::pin(async move {
            let mut r = Repo::open(retry_store, &prefix).await.unwrap();
            assert!(r.compact().await.unwrap().snapshot.is_some());
        }));
        let mut collector = Repo::open(Arc::new(hooked.clone()), &b.prefix)
            .await
            .unwrap();
        collector.gc(&gc_opts(HOUR)).await.unwrap();
        assert!(hooked.fired(), "{}: the GC never touched a piece", b.name);

        assert_all_readable(Arc::new(clock.clone()), &b.prefix, 8, b.name).await;
        let bucket = RepoStore::new(b.store.clone(), &b.prefix);
        let v = verify(&bucket, &VerifyOptions::default()).await.unwrap();
        assert!(v.findings.is_empty(), "{}: {:?}", b.name, v.findings);
    }
}

/// Issue 14 item 8: the compaction time limit is judged by the store's clock, which
/// keeps counting while a laptop sleeps (a monotonic timer does not).
#[tokio::test]
async fn compaction_time_limit_is_judged_by_the_store_clock() {
    for b in backends() {
        let (clock, mut repo) = clocked(&b).await;
        for i in 0..4 {
            write(&mut repo, i).await;
        }
        let layout = Layout::new(&b.prefix);
        // The laptop sleeps for 20 minutes between two uploads of the compaction.
        let hooked = HookStore::new(Arc::new(clock.clone()), &layout.manifests_dir(), false);
        let sleeper = clock.clone();
        hooked.arm(Box::pin(async move { sleeper.advance(20 * MINUTE) }));
        let mut compactor = Repo::open(Arc::new(hooked.clone()), &b.prefix)
            .await
            .unwrap();
        let err = compactor
            .compact_within(10 * MINUTE)
            .await
            .err()
            .unwrap_or_else(|| panic!("{}: compaction landed after 20 minutes", b.name));
        assert!(matches!(err, Error::Limit(_)), "{}: {err}", b.name);
        assert!(hooked.fired(), "{}", b.name);
        assert_eq!(
            count(&b.store, &layout.snapshots_dir()).await,
            0,
            "{}: a snapshot landed",
            b.name
        );
    }
}

/// Issue 14 item 8: the repository's minimum window (24 hours unless set) refuses a
/// shorter GC unless forced; a dry run is always allowed.
#[tokio::test]
async fn gc_below_the_minimum_window_refuses_without_force() {
    for b in backends() {
        let mut repo = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        write_plain(&mut repo).await;
        repo.compact().await.unwrap();
        let mut opts = gc_opts(Duration::ZERO);
        let err = repo.gc(&opts).await.err().unwrap();
        assert!(
            matches!(err, Error::WindowTooShort { min, .. } if min == 24 * HOUR),
            "{}: {err}",
            b.name
        );
        assert_eq!(count(&b.store, &Layout::new(&b.prefix).ops_dir()).await, 2);
        opts.dry_run = true;
        // The two change files; the blob is named by the snapshot.
        assert_eq!(repo.gc(&opts).await.unwrap().removed.len(), 2, "{}", b.name);
        opts.dry_run = false;
        opts.force = true;
        let rep = repo.gc(&opts).await.unwrap();
        assert!(rep.notes.iter().any(|n| n.contains("forced")), "{rep:?}");
        assert_eq!(count(&b.store, &Layout::new(&b.prefix).ops_dir()).await, 0);
    }
}

async fn write_plain(repo: &mut Repo) {
    let mut s = repo.session();
    s.create_array("x", &array_meta(&[4], &[1])).unwrap();
    s.commit(repo, None).await.unwrap();
    let mut s = repo.session();
    s.set("x/c/0", vec![7u8; 5000]).unwrap();
    s.commit(repo, None).await.unwrap();
}

/// Issue 14 item 8: an import that runs longer than the window beside a GC: the blob
/// it stored first is collected before its change lands; the import stores it again.
#[tokio::test]
async fn import_longer_than_the_window_keeps_its_blobs() {
    for b in backends() {
        let (clock, mut repo) = clocked(&b).await;
        write(&mut repo, 0).await;
        repo.compact().await.unwrap();
        // The source: one array, two 5000-byte chunks (stored as blobs).
        let src: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let meta = serde_json::to_vec(&array_meta(&[2], &[1])).unwrap();
        src.put(&Path::from("src/y/zarr.json"), meta.into())
            .await
            .unwrap();
        for (i, v) in [(0u8, 1u8), (1, 2)] {
            src.put(&Path::from(format!("src/y/c/{i}")), vec![v; 5000].into())
                .await
                .unwrap();
        }
        // After the first blob lands, two hours pass and a GC runs.
        let layout = Layout::new(&b.prefix);
        let hooked = HookStore::new(Arc::new(clock.clone()), &layout.blobs_dir(), false);
        let (gc_store, prefix, later) = (Arc::new(clock.clone()), b.prefix.clone(), clock.clone());
        hooked.arm_after(
            1,
            Box::pin(async move {
                later.advance(2 * HOUR);
                let mut g = Repo::open(gc_store, &prefix).await.unwrap();
                let rep = g.gc(&gc_opts(HOUR)).await.unwrap();
                assert!(
                    rep.removed.iter().any(|r| r.kind == ObjectKind::Blob),
                    "{rep:?}"
                );
            }),
        );
        let mut importer = Repo::open(Arc::new(hooked.clone()), &b.prefix)
            .await
            .unwrap();
        let opts = crzarr::ops::import::ImportOptions {
            concurrency: 1,
            ..Default::default()
        };
        importer.import(src, "src", &opts).await.unwrap();
        assert!(hooked.fired(), "{}", b.name);
        let r = Repo::open(Arc::new(clock.clone()), &b.prefix)
            .await
            .unwrap();
        for (i, v) in [(0u8, 1u8), (1, 2)] {
            let got = r.get(&format!("y/c/{i}")).await;
            assert_eq!(
                got.unwrap().as_deref(),
                Some(&[v; 5000][..]),
                "{}: chunk {i}",
                b.name
            );
        }
    }
}

/// Issue 14 item 5: a valid snapshot planted with the greatest count, claiming the
/// real change files and superseding the real snapshots but hiding a change's
/// effect: GC must not delete the history it hides.
#[tokio::test]
async fn gc_never_deletes_history_a_planted_snapshot_hides() {
    for b in backends() {
        let (clock, mut repo) = clocked(&b).await;
        for i in 0..3 {
            write(&mut repo, i).await;
        }
        repo.compact().await.unwrap();
        let mut s = repo.session();
        s.set_attr("x", "units", "K".into()).unwrap();
        s.commit(&mut repo, None).await.unwrap();
        let honest = repo.compact().await.unwrap();
        let honest = SnapshotName::parse(&honest.snapshot.unwrap()).unwrap();
        let layout = Layout::new(&b.prefix);

        // The forgery: the honest snapshot without the attribute, a greater count,
        // superseding every real snapshot.
        let bytes = b
            .store
            .get(&layout.snapshot(&honest))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let mut meta =
            crzarr::format::snapshot::SnapshotMeta::decode("k", &bytes, &honest.hash).unwrap();
        let node = meta.nodes.iter_mut().find(|n| n.path == "x").unwrap();
        let before = node.attrs.len();
        node.attrs.retain(|(name, _)| name != "units");
        assert_eq!(node.attrs.len(), before - 1);
        meta.covered += 1000;
        let (snaps, _) = repo.bucket().list_snapshots().await.unwrap();
        meta.supersedes = snaps.iter().map(|s| s.name.file_name()).collect();
        meta.supersedes.sort();
        let forged = Bytes::from(meta.encode());
        let name = SnapshotName {
            covered: meta.covered,
            hash: crzarr::format::ids::ObjectHash::of(&forged),
        };
        b.store
            .put(&layout.snapshot(&name), PutPayload::from(forged))
            .await
            .unwrap();
        let changes_before = count(&b.store, &layout.ops_dir()).await;
        clock.advance(2 * HOUR);

        let mut g = Repo::open(Arc::new(clock.clone()), &b.prefix)
            .await
            .unwrap();
        let rep = g.gc(&gc_opts(HOUR)).await.unwrap();
        assert_eq!(
            rep.unverified,
            Some(name.file_name()),
            "{}: {rep:?}",
            b.name
        );
        assert!(rep.removed.is_empty(), "{}: {rep:?}", b.name);
        assert_eq!(count(&b.store, &layout.ops_dir()).await, changes_before);
        // The history is intact: without the forgery, readers see the attribute.
        b.store.delete(&layout.snapshot(&name)).await.unwrap();
        let r = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let meta = r.get("x/zarr.json").await.unwrap().unwrap();
        assert!(
            String::from_utf8_lossy(&meta).contains("\"K\""),
            "{}",
            b.name
        );
        // And an honest retained snapshot is verified and collected.
        let rep = g.gc(&gc_opts(HOUR)).await.unwrap();
        assert_eq!(rep.unverified, None, "{}: {rep:?}", b.name);
        assert!(
            rep.removed.iter().any(|r| r.kind == ObjectKind::Change),
            "{}: {rep:?}",
            b.name
        );
    }
}

/// The long-running operations' futures are `Send`, so they can run on any runtime
/// thread (and the hooks above can run them inside a store call). A borrowed item in
/// a stream closure silently breaks this; the compiler checks it here.
#[test]
fn repo_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let _ = |repo: &mut Repo, src: Arc<dyn ObjectStore>, opts: &GcOptions| {
        send(&repo.compact());
        send(&repo.gc(opts));
        send(&repo.refresh());
        send(&repo.import(src, "p", &Default::default()));
    };
}
