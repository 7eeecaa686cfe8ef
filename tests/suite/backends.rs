//! Core scenarios run against every store: InMemory, LocalFileSystem and a real S3 server.

use crate::common::{Backend, another, array_meta, backends};
use crzarr::repo::Repo;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// Copies every change file and blob `to` lacks (blobs first).
async fn copy_all(from: &Backend, to: &Backend) {
    for dir in ["blobs", "ops", ""] {
        let prefix = object_store::path::Path::from(format!("{}/.crdt/{dir}", from.prefix));
        let metas: Vec<_> = from.store.list(Some(&prefix)).try_collect().await.unwrap();
        for m in metas {
            let rel = m
                .location
                .as_ref()
                .strip_prefix(from.prefix.as_str())
                .unwrap()
                .to_string();
            if dir.is_empty() && !rel.ends_with("repo.json") {
                continue;
            }
            let bytes = from
                .store
                .get(&m.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let dst = object_store::path::Path::from(format!("{}{rel}", to.prefix));
            to.store.put(&dst, PutPayload::from(bytes)).await.unwrap();
        }
    }
}

#[tokio::test]
async fn commit_open_refresh_on_every_backend() {
    for b in backends() {
        let mut a = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = a.session();
        s.create_group("", Default::default()).unwrap();
        s.create_array("x", &array_meta(&[4], &[2])).unwrap();
        s.set("x/c/0", vec![1u8, 2]).unwrap();
        s.set("x/c/1", vec![9u8; 5000]).unwrap();
        s.commit(&mut a, Some("first")).await.unwrap().unwrap();

        let mut reader = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(
            reader.list().await.unwrap(),
            ["x/c/0", "x/c/1", "x/zarr.json", "zarr.json"],
            "{}",
            b.name
        );
        assert_eq!(
            reader.get("x/c/1").await.unwrap().unwrap().len(),
            5000,
            "{}",
            b.name
        );

        let mut s = a.session();
        s.delete("x/c/0").unwrap();
        s.commit(&mut a, None).await.unwrap().unwrap();
        let report = reader.refresh().await.unwrap();
        assert_eq!(
            (report.listed, report.fetched, report.applied),
            (2, 1, 1),
            "{}",
            b.name
        );
        assert_eq!(
            reader.list().await.unwrap(),
            ["x/c/1", "x/zarr.json", "zarr.json"],
            "{}",
            b.name
        );
        assert!(
            reader.problems().is_empty(),
            "{}: {:?}",
            b.name,
            reader.problems()
        );
    }
}

#[tokio::test]
async fn replicas_apart_converge_on_every_backend() {
    for b in backends() {
        let mut a = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = a.session();
        s.create_group("", Default::default()).unwrap();
        s.create_array("x", &array_meta(&[4], &[2])).unwrap();
        s.set("x/c/0", vec![1u8, 2]).unwrap();
        s.commit(&mut a, None).await.unwrap();

        let other = another(&b);
        copy_all(&b, &other).await;
        let mut c = Repo::open(other.store.clone(), &other.prefix)
            .await
            .unwrap();

        let mut s = a.session();
        s.set("x/c/0", vec![3u8; 6000]).unwrap();
        s.set_attr("x", "who", "a".into()).unwrap();
        s.commit(&mut a, None).await.unwrap();
        let mut s = c.session();
        s.set("x/c/0", vec![4u8, 4]).unwrap();
        s.set_attr("x", "who", "c".into()).unwrap();
        s.resize("x", &[8]).unwrap();
        s.commit(&mut c, None).await.unwrap();

        copy_all(&b, &other).await;
        copy_all(&other, &b).await;
        a.refresh().await.unwrap();
        c.refresh().await.unwrap();
        assert_eq!(a.view().entries(), c.view().entries(), "{}", b.name);
        assert_eq!(
            a.conflicts().await.unwrap(),
            c.conflicts().await.unwrap(),
            "{}",
            b.name
        );
        assert_eq!(a.conflicts().await.unwrap().len(), 2, "{}", b.name);
        for k in a.list().await.unwrap() {
            assert_eq!(
                a.get(&k).await.unwrap(),
                c.get(&k).await.unwrap(),
                "{}: {k}",
                b.name
            );
        }
    }
}

#[tokio::test]
async fn concurrent_writers_on_one_bucket_lose_nothing() {
    for b in backends() {
        let mut setup = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = setup.session();
        s.create_array("", &array_meta(&[64], &[1])).unwrap();
        s.commit(&mut setup, None).await.unwrap();
        let mut tasks = Vec::new();
        for w in 0..8u8 {
            let store = b.store.clone();
            let prefix = b.prefix.clone();
            tasks.push(tokio::spawn(async move {
                let mut r = Repo::open(store, &prefix).await.unwrap();
                for i in 0..4u8 {
                    let mut s = r.session();
                    s.set(&format!("c/{}", w * 8 + i), vec![w, i]).unwrap();
                    s.commit(&mut r, None).await.unwrap().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let r = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(r.fold().len(), 1 + 8 * 4, "{}", b.name);
        for w in 0..8u8 {
            for i in 0..4u8 {
                let got = r.get(&format!("c/{}", w * 8 + i)).await.unwrap();
                assert_eq!(got.as_deref(), Some(&[w, i][..]), "{}", b.name);
            }
        }
        assert!(r.conflicts().await.unwrap().is_empty(), "{}", b.name);
    }
}

#[tokio::test]
async fn shrink_then_grow_shows_fill_not_stale_chunks() {
    for b in backends() {
        let mut r = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = r.session();
        s.create_array("a", &array_meta(&[6], &[2])).unwrap();
        for i in 0..3 {
            s.set(&format!("a/c/{i}"), vec![i as u8; 2]).unwrap();
        }
        s.commit(&mut r, None).await.unwrap();
        let mut s = r.session();
        s.resize("a", &[3]).unwrap();
        s.commit(&mut r, Some("shrink")).await.unwrap();
        // c/1 straddles the new edge and stays; c/2 lies wholly outside and goes.
        assert_eq!(
            r.list_prefix("a/c/").await.unwrap(),
            ["a/c/0", "a/c/1"],
            "{}",
            b.name
        );
        let mut s = r.session();
        s.resize("a", &[6]).unwrap();
        s.commit(&mut r, Some("grow")).await.unwrap();
        assert_eq!(
            r.list_prefix("a/c/").await.unwrap(),
            ["a/c/0", "a/c/1"],
            "{}",
            b.name
        );
        let meta: serde_json::Value =
            serde_json::from_slice(&r.get("a/zarr.json").await.unwrap().unwrap()).unwrap();
        assert_eq!(meta["shape"], serde_json::json!([6]));
    }
}

/// A commit whose change file could not be written returns an error and shows
/// nothing; retrying publishes the very same change (same bytes, same seq), not a
/// second one.
#[tokio::test]
async fn failed_commit_retries_the_same_change() {
    let b = crate::common::local();
    let mut r = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    let mut s = r.session();
    s.create_array("a", &array_meta(&[4], &[2])).unwrap();
    s.commit(&mut r, None).await.unwrap();

    let root = b.root().unwrap().join(&b.prefix).join(".crdt");
    // A plain file where the ops directory should be makes the change PUT fail.
    std::fs::rename(root.join("ops"), root.join("ops-aside")).unwrap();
    std::fs::write(root.join("ops"), b"not a directory").unwrap();

    let mut s = r.session();
    s.set("a/c/0", vec![1u8, 2]).unwrap();
    assert!(s.commit(&mut r, Some("retry me")).await.is_err());
    let other = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    assert!(
        !other.exists("a/c/0").await.unwrap(),
        "a failed commit must not show"
    );

    std::fs::remove_file(root.join("ops")).unwrap();
    std::fs::rename(root.join("ops-aside"), root.join("ops")).unwrap();
    let hash = s.commit(&mut r, Some("retry me")).await.unwrap().unwrap();

    let files: Vec<_> = std::fs::read_dir(root.join("ops"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().starts_with(&hash.to_hex()))
    );
    let reader = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    assert_eq!(
        reader.get("a/c/0").await.unwrap().as_deref(),
        Some(&[1u8, 2][..])
    );
    assert_eq!(
        reader.log().iter().map(|c| c.seq).collect::<Vec<_>>(),
        [1, 2]
    );
}
