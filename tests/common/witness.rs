//! The witness pattern of the join tests: a bucket holding a raw copy of every change
//! file ever written, whose fold is what every replica must show; and what else the join
//! suites (`join`, `join_edges`) share.

use crzarr::io::store::RepoStore;
use crzarr::ops::gc::GcOptions;
use crzarr::ops::sync::{SyncOptions, sync};
use crzarr::repo::Repo;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use std::sync::Arc;
use std::time::Duration;

/// The directories a snapshot's files live in (what a raw copy of snapshots copies).
pub const SNAPSHOT_DIRS: &[&str] = &[".crdt/snapshots", ".crdt/manifests", ".crdt/archive"];

pub fn gc_opts(older_than: Duration, force: bool) -> GcOptions {
    GcOptions {
        older_than,
        dry_run: false,
        force,
    }
}

/// A two-way sync that refuses and ignores nothing.
pub async fn sync_clean(a: &RepoStore, b: &RepoStore) {
    let r = sync(a, b, &SyncOptions::default()).await.unwrap();
    assert!(r.is_clean(), "{r:?}");
}

/// Copies every object under `from_prefix/dir` of `from` to the same place under
/// `to_prefix` of `to`, unless there already (what `cp -rn`, `rclone copy` or
/// `aws s3 sync` do to a bucket).
pub async fn copy_tree(
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
pub const WITNESS: &str = "witness";

/// Keeps a raw copy of every change file and blob of `from` (and its marker) in the
/// witness bucket: the fold of everything ever committed.
pub async fn witness(from: &Arc<dyn ObjectStore>, w: &Arc<dyn ObjectStore>, prefix: &str) {
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
pub async fn assert_shows_everything(
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

pub async fn commit(repo: &mut Repo, edits: &[(&str, &[u8])]) {
    let mut s = repo.session();
    for (k, v) in edits {
        s.set(k, v.to_vec()).unwrap();
    }
    s.commit(repo, None).await.unwrap();
}
