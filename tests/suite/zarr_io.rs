//! Import and export of plain Zarr v3 stores (`Repo::import`, `Repo::export`) on every
//! backend, with snapshots: the view goes out as a plain store and comes back as the
//! same view; re-import records only the difference; bad sources are refused with their
//! key and nothing committed. Real Zarr clients read the exports in `tests/interop/`.

use crate::common::{Backend, array_meta, backends, memory};
use crzarr::Error;
use crzarr::fold::view::Entry;
use crzarr::io::counting::CountingStore;
use crzarr::ops::export::{EXPORT_RECORD, ExportOptions};
use crzarr::ops::gc::GcOptions;
use crzarr::ops::import::{ImportOptions, ImportReport};
use crzarr::repo::Repo;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

fn blob(n: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31) ^ n).collect()
}

/// A plain Zarr store: a root group, an array `x` with four chunks (two of them larger
/// than the inline limit) and a nested group with attributes.
fn plain_store() -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    m.insert(
        "zarr.json".to_string(),
        br#"{"zarr_format": 3, "node_type": "group", "attributes": {"title": "t"}}"#.to_vec(),
    );
    m.insert(
        "x/zarr.json".into(),
        serde_json::to_vec_pretty(&array_meta(&[20000], &[5000])).unwrap(),
    );
    m.insert("x/c/0".into(), blob(1, 5000));
    m.insert("x/c/1".into(), blob(2, 5000));
    m.insert("x/c/2".into(), vec![7; 16]);
    m.insert("x/c/3".into(), blob(3, 5000));
    m.insert(
        "g/zarr.json".into(),
        br#"{"zarr_format": 3, "node_type": "group", "attributes": {"level": 1}}"#.to_vec(),
    );
    m.insert(
        "g/h/zarr.json".into(),
        br#"{"zarr_format": 3, "node_type": "group"}"#.to_vec(),
    );
    m
}

async fn write_plain(store: &Arc<dyn ObjectStore>, prefix: &str, m: &BTreeMap<String, Vec<u8>>) {
    for (k, v) in m {
        store
            .put(
                &Path::from(format!("{prefix}/{k}")),
                PutPayload::from(v.clone()),
            )
            .await
            .unwrap();
    }
}

/// The Zarr store at `prefix`: every object but an export's record of what it wrote.
async fn read_plain(store: &Arc<dyn ObjectStore>, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    use futures::TryStreamExt;
    let root = Path::from(prefix);
    let listed: Vec<_> = store.list(Some(&root)).try_collect().await.unwrap();
    let mut out = BTreeMap::new();
    for m in listed {
        let k = m.location.as_ref()[prefix.len() + 1..].to_string();
        if k == EXPORT_RECORD {
            continue;
        }
        let b = store.get(&m.location).await.unwrap().bytes().await.unwrap();
        out.insert(k, b.to_vec());
    }
    out
}

async fn view_bytes(r: &Repo) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for k in r.list().await.unwrap() {
        out.insert(k.clone(), r.get(&k).await.unwrap().unwrap().to_vec());
    }
    out
}

fn json(b: &[u8]) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(b).unwrap();
    if v.get("attributes").is_none() {
        v["attributes"] = serde_json::json!({});
    }
    v
}

/// Same keys, same chunk bytes, same metadata as parsed JSON.
fn assert_same_store(got: &BTreeMap<String, Vec<u8>>, want: &BTreeMap<String, Vec<u8>>, ctx: &str) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{ctx}"
    );
    for (k, w) in want {
        if k.ends_with("zarr.json") {
            assert_eq!(json(&got[k]), json(w), "{ctx}: {k}");
        } else {
            assert_eq!(&got[k], w, "{ctx}: {k}");
        }
    }
}

async fn import(r: &mut Repo, b: &Backend, prefix: &str) -> ImportReport {
    r.import(b.store.clone(), prefix, &ImportOptions::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn import_then_export_gives_the_same_store_on_every_backend() {
    for b in backends() {
        let src = format!("{}-src", b.prefix);
        let plain = plain_store();
        write_plain(&b.store, &src, &plain).await;
        let mut r = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        let rep = import(&mut r, &b, &src).await;
        assert!(rep.change.is_some(), "{}", b.name);
        assert_eq!(
            (rep.nodes_created, rep.chunks_written, rep.chunks_unchanged),
            (4, 4, 0),
            "{}: {rep:?}",
            b.name
        );
        assert_same_store(&view_bytes(&r).await, &plain, b.name);
        // A new handle (a cold reader) shows the same.
        let cold = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_same_store(&view_bytes(&cold).await, &plain, b.name);

        let dst = format!("{}-out", b.prefix);
        let e = r
            .export(b.store.clone(), &dst, &ExportOptions::default())
            .await
            .unwrap();
        assert_eq!((e.written, e.unchanged, e.deleted), (8, 0, 0), "{}", b.name);
        assert_same_store(&read_plain(&b.store, &dst).await, &plain, b.name);
        let e = r
            .export(b.store.clone(), &dst, &ExportOptions::default())
            .await
            .unwrap();
        assert_eq!((e.written, e.unchanged, e.deleted), (0, 8, 0), "{}", b.name);
    }
}

#[tokio::test]
async fn reimport_records_only_the_difference_also_over_a_compacted_and_collected_repo() {
    for b in backends() {
        let src = format!("{}-src", b.prefix);
        let mut plain = plain_store();
        write_plain(&b.store, &src, &plain).await;
        let mut r = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        import(&mut r, &b, &src).await;
        // The chunk manifests now live in snapshot pieces, not in change files.
        r.compact().await.unwrap();
        r.gc(&GcOptions {
            older_than: Duration::ZERO,
            dry_run: false,
            force: true,
        })
        .await
        .unwrap();
        let mut r = Repo::open(b.store.clone(), &b.prefix).await.unwrap();

        // A zarr-python session: one chunk changed, one deleted, one added, an attribute
        // changed, a group deleted, a resize.
        plain.insert("x/c/1".into(), blob(9, 5000));
        plain.remove("x/c/2");
        plain.insert("x/c/4".into(), vec![4; 10]);
        plain.insert(
            "zarr.json".into(),
            br#"{"zarr_format": 3, "node_type": "group", "attributes": {"title": "u"}}"#.to_vec(),
        );
        plain.remove("g/h/zarr.json");
        let mut meta = array_meta(&[25000], &[5000]);
        meta["attributes"] = serde_json::json!({"units": "K"});
        plain.insert("x/zarr.json".into(), serde_json::to_vec(&meta).unwrap());
        for k in ["x/c/2", "g/h/zarr.json"] {
            b.store
                .delete(&Path::from(format!("{src}/{k}")))
                .await
                .unwrap();
        }
        write_plain(&b.store, &src, &plain).await;

        let before = r.fold().len();
        let rep = import(&mut r, &b, &src).await;
        assert_eq!(r.fold().len(), before + 1, "{}: one change", b.name);
        assert_eq!(
            (
                rep.nodes_created,
                rep.nodes_updated,
                rep.nodes_deleted,
                rep.chunks_written,
                rep.chunks_unchanged,
                rep.chunks_deleted
            ),
            (0, 2, 1, 2, 2, 1),
            "{}: {rep:?}",
            b.name
        );
        assert_same_store(&view_bytes(&r).await, &plain, b.name);
        let again = import(&mut r, &b, &src).await;
        assert_eq!(again.change, None, "{}: {again:?}", b.name);
        assert_eq!(again.chunks_unchanged, 4, "{}", b.name);
    }
}

#[tokio::test]
async fn invalid_or_v2_metadata_refuses_the_import_naming_the_key_and_commits_nothing() {
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "bad/zarr.json",
            br#"{"zarr_format": 3, "node_type": "array", "shape": [2]}"#,
            "missing",
        ),
        (
            "bad/zarr.json",
            br#"{"zarr_format": 3, "node_type": "group", "wat": 1}"#,
            "wat",
        ),
        ("bad/zarr.json", b"{not json", "not JSON"),
        ("old/.zarray", br#"{"zarr_format": 2}"#, "Zarr v2"),
    ];
    for (key, bytes, want) in cases {
        let b = memory();
        let mut plain = plain_store();
        plain.insert(key.into(), bytes.to_vec());
        write_plain(&b.store, "src", &plain).await;
        let mut r = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        let err = r
            .import(b.store.clone(), "src", &ImportOptions::default())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::InvalidMetadata { .. }),
            "{key}: {err:?}"
        );
        assert!(
            msg.contains(&format!("src/{key}")) && msg.contains(want),
            "{msg}"
        );
        assert_eq!(r.fold().len(), 0, "{key}: nothing committed");
        assert!(
            Repo::open(b.store.clone(), &b.prefix)
                .await
                .unwrap()
                .list()
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn stray_files_are_reported_not_imported() {
    let b = memory();
    let mut plain = plain_store();
    plain.insert("README.txt".into(), b"hello".to_vec());
    plain.insert("g/notes.md".into(), b"notes".to_vec());
    write_plain(&b.store, "src", &plain).await;
    let mut r = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    let rep = import(&mut r, &b, "src").await;
    assert_eq!(rep.ignored, ["src/README.txt", "src/g/notes.md"]);
    plain.remove("README.txt");
    plain.remove("g/notes.md");
    assert_same_store(&view_bytes(&r).await, &plain, "memory");
}

#[tokio::test]
async fn export_deletes_what_the_view_dropped_and_never_touches_a_repository() {
    let b = memory();
    write_plain(&b.store, "src", &plain_store()).await;
    let mut r = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    import(&mut r, &b, "src").await;
    let counting = Arc::new(CountingStore::new(b.store.clone()));
    let dst: Arc<dyn ObjectStore> = counting.clone();
    r.export(dst.clone(), "out", &ExportOptions::default())
        .await
        .unwrap();
    let mut s = r.session();
    s.delete("x/zarr.json").unwrap();
    s.commit(&mut r, None).await.unwrap();
    counting.reset();
    let e = r
        .export(dst.clone(), "out", &ExportOptions::default())
        .await
        .unwrap();
    assert_eq!((e.written, e.deleted), (0, 5), "{e:?}");
    let c = counting.take();
    // One PUT: the record of what the export wrote, now without `x`.
    assert_eq!((c.puts, c.deletes), (1, 5), "{c:?}");
    let got = read_plain(&b.store, "out").await;
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        ["g/h/zarr.json", "g/zarr.json", "zarr.json"]
    );
    // Exporting onto a repository is refused before anything is written.
    let err = r
        .export(b.store.clone(), &b.prefix, &ExportOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("holds a crzarr repository"),
        "{err}"
    );
    assert!(
        Repo::open(b.store.clone(), &b.prefix)
            .await
            .unwrap()
            .problems()
            .is_empty()
    );
}

#[tokio::test]
async fn two_replicas_importing_edits_of_one_store_merge() {
    let b = memory();
    let plain = plain_store();
    write_plain(&b.store, "src", &plain).await;
    let mut a = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    import(&mut a, &b, "src").await;
    let other = memory();
    let mut c = {
        crzarr::sync(
            a.bucket(),
            &crzarr::io::store::RepoStore::new(other.store.clone(), &other.prefix),
            &crzarr::SyncOptions::push(),
        )
        .await
        .unwrap();
        Repo::open(other.store.clone(), &other.prefix)
            .await
            .unwrap()
    };
    // Each team edits its own copy of the directory and re-imports it.
    let mut pa = plain.clone();
    pa.insert("x/c/0".into(), vec![1; 20]);
    write_plain(&b.store, "src-a", &pa).await;
    let mut pc = plain.clone();
    pc.insert("x/c/3".into(), vec![3; 20]);
    write_plain(&b.store, "src-c", &pc).await;
    import(&mut a, &b, "src-a").await;
    c.import(b.store.clone(), "src-c", &ImportOptions::default())
        .await
        .unwrap();
    c.sync(a.bucket(), &crzarr::SyncOptions::pull())
        .await
        .unwrap();
    a.sync(c.bucket(), &crzarr::SyncOptions::pull())
        .await
        .unwrap();
    let (va, vc) = (view_bytes(&a).await, view_bytes(&c).await);
    assert_eq!(va, vc);
    assert_eq!(va["x/c/0"], vec![1; 20]);
    assert_eq!(va["x/c/3"], vec![3; 20]);
    assert!(matches!(
        a.entries().await.unwrap().get("x/c/1"),
        Some(Entry::Chunk(_))
    ));
}

// ---------------------------------------------------------------------------
// Adopting an archive in place (`import --by-reference`)
// ---------------------------------------------------------------------------

/// A plain store on local disk, its URL, and a repository in another directory.
async fn adopted() -> (
    tempfile::TempDir,
    Arc<dyn ObjectStore>,
    String,
    Backend,
    Repo,
) {
    let dir = tempfile::tempdir().unwrap();
    let src: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    write_plain(&src, "archive", &plain_store()).await;
    let url = format!(
        "file://{}/archive",
        dir.path().canonicalize().unwrap().display()
    );
    let b = crate::common::local();
    let mut r = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    let rep = adopt(&mut r, &src, &url).await;
    // Only metadata is read: the chunks stay where they are.
    let metadata: usize = plain_store()
        .iter()
        .filter(|(k, _)| k.ends_with("zarr.json"))
        .map(|(_, v)| v.len())
        .sum();
    assert_eq!((rep.chunks_written, rep.bytes_read), (4, metadata as u64));
    (dir, src, url, b, r)
}

/// Imports `archive` from `src` by reference to `url`.
async fn adopt(r: &mut Repo, src: &Arc<dyn ObjectStore>, url: &str) -> ImportReport {
    let opts = ImportOptions {
        by_reference: Some(url.to_string()),
        ..ImportOptions::default()
    };
    r.import(src.clone(), "archive", &opts).await.unwrap()
}

async fn blob_count(b: &Backend) -> usize {
    use futures::TryStreamExt;
    let dir = Path::from(format!("{}/.crdt/blobs", b.prefix));
    let v: Vec<_> = b.store.list(Some(&dir)).try_collect().await.unwrap();
    v.len()
}

#[tokio::test]
async fn by_reference_import_copies_no_chunk_and_reads_and_exports_the_originals() {
    let (_dir, src, _url, b, r) = adopted().await;
    assert_eq!(blob_count(&b).await, 0, "no chunk was copied");
    let plain = plain_store();
    assert_same_store(&view_bytes(&r).await, &plain, "adopted");
    let cold = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    assert_same_store(&view_bytes(&cold).await, &plain, "cold");
    // The change that records them is format 2; plain changes stay format 1.
    let changes = crzarr::io::store::RepoStore::new(b.store.clone(), &b.prefix)
        .list_changes()
        .await
        .unwrap()
        .0;
    let bytes = b
        .store
        .get(&changes[0].key)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes[4], crzarr::format::change::CHANGE_VERSION_REFERENCES);
    // Export resolves references: a plain store with the original bytes.
    let out = memory();
    r.export(out.store.clone(), "out", &ExportOptions::default())
        .await
        .unwrap();
    assert_same_store(&read_plain(&out.store, "out").await, &plain, "export");
    // Compaction puts references in manifest pieces; after GC a cold reader still reads.
    let mut r = r;
    r.compact().await.unwrap();
    r.gc(&GcOptions {
        older_than: Duration::ZERO,
        dry_run: false,
        force: true,
    })
    .await
    .unwrap();
    let cold = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
    assert!(cold.problems().is_empty(), "{:?}", cold.problems());
    assert_same_store(&view_bytes(&cold).await, &plain, "after compaction and GC");
    let _ = src;
}

#[tokio::test]
async fn writes_overlay_adopted_chunks_and_never_touch_the_originals() {
    let (_dir, src, _url, b, mut r) = adopted().await;
    let mut s = r.session();
    s.set("x/c/1", blob(42, 5000)).unwrap();
    s.delete("x/c/3").unwrap();
    s.commit(&mut r, Some("QA fix")).await.unwrap();
    assert_eq!(r.get("x/c/1").await.unwrap().unwrap(), blob(42, 5000));
    assert_eq!(r.get("x/c/3").await.unwrap(), None);
    assert_eq!(r.get("x/c/0").await.unwrap().unwrap(), blob(1, 5000));
    assert_eq!(blob_count(&b).await, 1);
    // The archive is exactly as it was.
    assert_same_store(
        &read_plain(&src, "archive").await,
        &plain_store(),
        "archive",
    );
}

#[tokio::test]
async fn a_changed_or_vanished_original_is_reported_never_served() {
    let (dir, src, url, b, r) = adopted().await;
    // Rewritten in place with other bytes of the same size, and one removed.
    tokio::time::sleep(Duration::from_millis(20)).await;
    src.put(
        &Path::from("archive/x/c/0"),
        PutPayload::from(blob(99, 5000)),
    )
    .await
    .unwrap();
    src.delete(&Path::from("archive/x/c/1")).await.unwrap();
    for (k, why) in [("x/c/0", "was modified"), ("x/c/1", "is gone")] {
        let err = r.get(k).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::ReferenceChanged { .. }),
            "{k}: {err:?}"
        );
        assert!(
            msg.contains(k) && msg.contains(&format!("{url}/{k}")) && msg.contains(why)
                || msg.contains(k) && msg.contains("ETag") && k == "x/c/0",
            "{msg}"
        );
    }
    // Untouched references still read.
    assert_eq!(r.get("x/c/3").await.unwrap().unwrap(), blob(3, 5000));
    // Export refuses rather than writing stale or wrong bytes.
    let out = memory();
    let err = r
        .export(out.store.clone(), "out", &ExportOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ReferenceChanged { .. }), "{err:?}");
    // verify names both chunks.
    let report = crzarr::ops::verify::verify(
        &crzarr::io::store::RepoStore::new(b.store.clone(), &b.prefix),
        &crzarr::ops::verify::VerifyOptions::default(),
    )
    .await
    .unwrap();
    let keys: Vec<&str> = report
        .of_kind(crzarr::ops::verify::FindingKind::ReferenceChanged)
        .iter()
        .map(|f| f.key.as_str())
        .collect();
    assert_eq!(keys, ["x/c/0", "x/c/1"], "{report:?}");
    // Re-importing by reference adopts the new state.
    let mut r = r;
    let rep = adopt(&mut r, &src, &url).await;
    assert_eq!(
        (rep.chunks_written, rep.chunks_deleted, rep.chunks_unchanged),
        (1, 1, 2),
        "{rep:?}"
    );
    assert_eq!(r.get("x/c/0").await.unwrap().unwrap(), blob(99, 5000));
    assert_eq!(r.get("x/c/1").await.unwrap(), None);
    drop(dir);
}

/// Every key under `prefix` with its bytes, the record included.
async fn all_objects(store: &Arc<dyn ObjectStore>, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let mut m = read_plain(store, prefix).await;
    if let Ok(g) = store
        .get(&Path::from(format!("{prefix}/{EXPORT_RECORD}")))
        .await
    {
        m.insert(EXPORT_RECORD.into(), g.bytes().await.unwrap().to_vec());
    }
    m
}

#[tokio::test]
async fn export_never_deletes_files_it_did_not_write() {
    for b in backends() {
        write_plain(&b.store, &format!("{}-src", b.prefix), &plain_store()).await;
        let mut r = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        import(&mut r, &b, &format!("{}-src", b.prefix)).await;
        // A directory that is not an export: notes, a git checkout, a key.
        let dst = format!("{}-home", b.prefix);
        let mut home = BTreeMap::new();
        home.insert("notes.md".to_string(), b"# notes".to_vec());
        home.insert(".git/config".into(), b"[core]".to_vec());
        home.insert(".ssh/id".into(), b"secret".to_vec());
        // Even a file at a key the view has is not overwritten.
        home.insert("zarr.json".into(), b"{}".to_vec());
        write_plain(&b.store, &dst, &home).await;
        let err = r
            .export(b.store.clone(), &dst, &ExportOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::ExportRefused { .. }),
            "{}: {err:?}",
            b.name
        );
        let msg = err.to_string();
        assert!(
            msg.contains("notes.md") && msg.contains(".ssh/id") && msg.contains("no record"),
            "{msg}"
        );
        // Nothing was written, deleted or overwritten.
        assert_eq!(all_objects(&b.store, &dst).await, home, "{}", b.name);
        // A new location works, and a second export there is incremental.
        let out = format!("{}-out", b.prefix);
        r.export(b.store.clone(), &out, &ExportOptions::default())
            .await
            .unwrap();
        let e = r
            .export(b.store.clone(), &out, &ExportOptions::default())
            .await
            .unwrap();
        assert_eq!((e.written, e.unchanged, e.deleted), (0, 8, 0), "{}", b.name);
    }
}

#[tokio::test]
async fn incremental_export_deletes_only_its_own_keys() {
    let b = memory();
    write_plain(&b.store, "src", &plain_store()).await;
    let mut r = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    import(&mut r, &b, "src").await;
    let dst = b.store.clone();
    r.export(dst.clone(), "out", &ExportOptions::default())
        .await
        .unwrap();
    assert!(
        all_objects(&b.store, "out")
            .await
            .contains_key(EXPORT_RECORD)
    );
    // Someone adds files beside the export, one inside the array's directory.
    let foreign: BTreeMap<String, Vec<u8>> = [
        ("notes.md".to_string(), b"mine".to_vec()),
        ("x/c/notes.md".to_string(), b"mine too".to_vec()),
    ]
    .into();
    write_plain(&b.store, "out", &foreign).await;
    // The repository drops array `x`.
    let mut s = r.session();
    s.delete("x/zarr.json").unwrap();
    s.commit(&mut r, None).await.unwrap();
    let e = r
        .export(dst.clone(), "out", &ExportOptions::default())
        .await
        .unwrap();
    assert_eq!((e.written, e.deleted, e.foreign), (0, 5, 2), "{e:?}");
    let got = read_plain(&b.store, "out").await;
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        [
            "g/h/zarr.json",
            "g/zarr.json",
            "notes.md",
            "x/c/notes.md",
            "zarr.json"
        ]
    );
    for (k, v) in &foreign {
        assert_eq!(&got[k], v, "{k}");
    }

    // A foreign file at a key the view gets is refused, not overwritten.
    write_plain(
        &b.store,
        "out",
        &[("y/zarr.json".to_string(), b"{}".to_vec())].into(),
    )
    .await;
    let mut s = r.session();
    s.create_array("y", &array_meta(&[4], &[2])).unwrap();
    s.commit(&mut r, None).await.unwrap();
    let before = all_objects(&b.store, "out").await;
    let err = r
        .export(dst.clone(), "out", &ExportOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ExportRefused { .. }), "{err:?}");
    assert!(err.to_string().contains("y/zarr.json"), "{err}");
    assert_eq!(all_objects(&b.store, "out").await, before);

    // Another repository's export is refused too.
    let other = Repo::init(b.store.clone(), "other").await.unwrap();
    let err = other
        .export(dst.clone(), "out", &ExportOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("export of repository"), "{err}");
    assert_eq!(all_objects(&b.store, "out").await, before);
}
