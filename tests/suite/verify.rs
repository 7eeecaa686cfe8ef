//! `verify` (spec/format.md §17) on every backend: a healthy bucket is clean; each kind
//! of damage is found under its key; nothing is modified unless quarantine is asked
//! for, which moves exactly the corrupt objects to `.crdt/quarantine/`, where readers,
//! GC, status and sync never look.

use crate::common::repo::blob;
use crate::common::{Backend, another, array_meta, backends, memory};
use bytes::Bytes;
use crzarr::Error;
use crzarr::format::change::Change;
use crzarr::format::ids::{BlobHash, ChangeHash, Hlc};
use crzarr::format::layout::ChangeName;
use crzarr::io::counting::CountingStore;
use crzarr::io::store::RepoStore;
use crzarr::ops::gc::{GcOptions, ObjectKind};
use crzarr::ops::verify::{FindingKind, Severity, VerifyOptions, VerifyReport, verify};
use crzarr::repo::Repo;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const NOW: GcOptions = GcOptions {
    older_than: Duration::ZERO,
    dry_run: false,
    force: true,
};

fn opts(blobs: bool, quarantine: bool) -> VerifyOptions {
    VerifyOptions {
        blobs,
        quarantine,
        ..Default::default()
    }
}

fn bucket(b: &Backend) -> RepoStore {
    RepoStore::new(b.store.clone(), &b.prefix)
}

/// A group, an array with a blob chunk written twice (the first blob is then only
/// referenced by a superseded write) and an inline chunk, and an attribute: 3 changes.
async fn sample(b: &Backend) -> Repo {
    let mut r = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    let mut s = r.session();
    s.create_group("", Default::default()).unwrap();
    s.create_array("x", &array_meta(&[8], &[2])).unwrap();
    s.set("x/c/0", blob(1)).unwrap();
    s.set("x/c/1", vec![1u8; 4]).unwrap();
    s.commit(&mut r, Some("base")).await.unwrap();
    let mut s = r.session();
    s.set("x/c/0", blob(2)).unwrap();
    s.commit(&mut r, Some("overwrite")).await.unwrap();
    let mut s = r.session();
    s.set_attr("x", "units", "K".into()).unwrap();
    s.commit(&mut r, Some("attr")).await.unwrap();
    r
}

async fn run(b: &Backend, o: &VerifyOptions) -> VerifyReport {
    verify(&bucket(b), o)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", b.name))
}

fn kinds(r: &VerifyReport) -> Vec<(FindingKind, String)> {
    r.findings.iter().map(|f| (f.kind, f.key.clone())).collect()
}

async fn keys_under(b: &Backend, dir: &Path) -> Vec<Path> {
    let mut v: Vec<Path> = b
        .store
        .list(Some(dir))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap();
    v.sort();
    v
}

async fn get(b: &Backend, key: &Path) -> Bytes {
    b.store.get(key).await.unwrap().bytes().await.unwrap()
}

/// Flips one byte in the middle of an object.
async fn flip(b: &Backend, key: &Path) -> Bytes {
    let mut bytes = get(b, key).await.to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    b.store
        .put(key, PutPayload::from(bytes.clone()))
        .await
        .unwrap();
    Bytes::from(bytes)
}

async fn change_key(b: &Backend, hash: ChangeHash) -> Path {
    let (listed, _) = bucket(b).list_changes().await.unwrap();
    listed
        .into_iter()
        .find(|c| c.name.hash == hash)
        .map(|c| c.key)
        .unwrap()
}

/// Puts a hand-made change; returns its key and hash.
async fn put_change(b: &Backend, c: &Change) -> (Path, ChangeHash) {
    let bytes = c.encode();
    let name = ChangeName {
        hash: ChangeHash::of(&bytes),
        actor: c.actor,
        seq: c.seq,
    };
    let key = bucket(b).layout().change(&name);
    b.store.put(&key, PutPayload::from(bytes)).await.unwrap();
    (key, name.hash)
}

#[tokio::test]
async fn a_clean_repository_verifies_clean_with_a_snapshot_and_after_gc() {
    for b in backends() {
        let mut r = sample(&b).await;
        for blobs in [false, true] {
            let rep = run(&b, &opts(blobs, false)).await;
            assert_eq!(rep.findings, vec![], "{} blobs={blobs}", b.name);
            assert!(rep.is_clean());
            assert_eq!(rep.repo_id, Some(r.id().to_string()));
            assert_eq!(rep.checked.get(&ObjectKind::Change), Some(&3), "{}", b.name);
            assert_eq!(
                rep.checked.get(&ObjectKind::Blob).copied().unwrap_or(0),
                if blobs { 2 } else { 0 },
                "{}",
                b.name
            );
            let files: u64 = if blobs { 2 * 5000 } else { 0 };
            assert!(rep.bytes_hashed > files, "{}", b.name);
        }
        r.compact().await.unwrap();
        let rep = run(&b, &opts(true, false)).await;
        assert_eq!(rep.findings, vec![], "{}: with a snapshot", b.name);
        assert!(rep.snapshot.is_some());
        assert_eq!(rep.checked.get(&ObjectKind::Snapshot), Some(&1));
        assert!(
            rep.checked
                .get(&ObjectKind::Manifest)
                .is_some_and(|n| *n >= 1)
        );
        r.gc(&NOW).await.unwrap();
        let rep = run(&b, &opts(true, false)).await;
        assert_eq!(rep.findings, vec![], "{}: after GC", b.name);
        assert_eq!(rep.checked.get(&ObjectKind::Change), None, "{}", b.name);
        assert_eq!(rep.checked.get(&ObjectKind::Blob), Some(&1), "{}", b.name);
        // A later change on top of the collected history.
        let mut s = r.session();
        s.set("x/c/2", blob(3)).unwrap();
        s.commit(&mut r, None).await.unwrap();
        let rep = run(&b, &opts(true, false)).await;
        assert_eq!(rep.findings, vec![], "{}: after GC and a commit", b.name);
    }
}

#[tokio::test]
async fn verify_modifies_nothing_and_bounds_its_requests() {
    let b = memory();
    let mut r = sample(&b).await;
    for i in 0..30u8 {
        let mut s = r.session();
        s.set_attr("x", "n", i.into()).unwrap();
        s.commit(&mut r, None).await.unwrap();
    }
    let (listed, _) = bucket(&b).list_changes().await.unwrap();
    flip(&b, &listed[0].key).await;
    let counting = Arc::new(CountingStore::new(b.store.clone()));
    let counted = RepoStore::new(counting.clone() as Arc<dyn ObjectStore>, &b.prefix);
    let o = VerifyOptions {
        blobs: true,
        quarantine: false,
        concurrency: 2,
    };
    let fut = verify(&counted, &o);
    fn assert_send<T: Send>(_: &T) {}
    assert_send(&fut);
    let rep = fut.await.unwrap();
    assert!(!rep.is_clean());
    let n = counting.snapshot();
    assert_eq!(
        (n.puts, n.deletes, n.copies, n.renames, n.multipart),
        (0, 0, 0, 0, 0),
        "verify wrote: {n:?}"
    );
    assert!(n.gets >= 33 + 33, "each change is read: {n:?}");
    // The reader's open (2 in flight), its listings and the marker and hint GETs run
    // beside verify's own listing; never the 33 change GETs at once.
    assert!(n.max_in_flight <= 8, "{n:?}");
}

#[tokio::test]
async fn a_flipped_byte_in_a_change_file_is_found_under_its_key() {
    for b in backends() {
        let mut r = sample(&b).await;
        let mut s = r.session();
        s.set_attr("x", "late", true.into()).unwrap();
        let h = s.commit(&mut r, None).await.unwrap().unwrap();
        let key = change_key(&b, h).await;
        flip(&b, &key).await;
        let rep = run(&b, &opts(false, false)).await;
        assert_eq!(
            kinds(&rep),
            vec![(FindingKind::CorruptChange, key.to_string())],
            "{}",
            b.name
        );
        let f = &rep.findings[0];
        assert_eq!(f.severity, Severity::Problem);
        assert!(
            f.message
                .contains("content does not match the hash in its name"),
            "{}",
            f.message
        );
        assert!(f.message.contains("--quarantine"), "{}", f.message);
        assert_eq!((rep.problems, rep.infos), (1, 0));
    }
}

#[tokio::test]
async fn a_flipped_byte_in_a_blob_is_found_only_with_blobs() {
    for b in backends() {
        sample(&b).await;
        let key = bucket(&b).layout().blob(&BlobHash::of(&blob(2)));
        flip(&b, &key).await;
        assert_eq!(
            run(&b, &opts(false, false)).await.findings,
            vec![],
            "{}",
            b.name
        );
        let rep = run(&b, &opts(true, false)).await;
        assert_eq!(
            kinds(&rep),
            vec![(FindingKind::CorruptBlob, key.to_string())],
            "{}",
            b.name
        );
        assert!(
            rep.findings[0]
                .message
                .contains("blob content does not match its hash")
        );
    }
}

#[tokio::test]
async fn a_flipped_byte_in_a_snapshot_piece_or_shard_is_found_under_its_key() {
    for b in backends() {
        let mut r = sample(&b).await;
        r.compact().await.unwrap();
        let lay = bucket(&b).layout().clone();

        let snap = keys_under(&b, &lay.snapshots_dir()).await.remove(0);
        let good = get(&b, &snap).await;
        flip(&b, &snap).await;
        let rep = run(&b, &opts(true, false)).await;
        assert_eq!(
            kinds(&rep),
            vec![(FindingKind::CorruptSnapshot, snap.to_string())],
            "{}",
            b.name
        );
        assert!(
            rep.findings[0]
                .message
                .contains("snapshot content does not match")
        );
        // Readers still open from it: the `latest` hint holds a good copy of its bytes.
        assert_eq!(
            rep.snapshot.as_deref(),
            snap.filename(),
            "{}: served from the hint",
            b.name
        );
        b.store.put(&snap, PutPayload::from(good)).await.unwrap();

        let pieces = keys_under(&b, &lay.manifests_dir()).await;
        assert_eq!(pieces.len(), 1, "{}", b.name);
        flip(&b, &pieces[0]).await;
        let rep = run(&b, &opts(true, false)).await;
        assert_eq!(
            kinds(&rep),
            vec![(FindingKind::CorruptManifest, pieces[0].to_string())],
            "{}",
            b.name
        );

        // An archive shard: a second snapshot after GC archives the first's table.
        let mut b2 = another(&b);
        b2.prefix = format!("{}-shard", b.prefix);
        let mut r = sample(&b2).await;
        r.compact().await.unwrap();
        r.gc(&NOW).await.unwrap();
        let mut s = r.session();
        s.set("x/c/3", vec![3u8; 4]).unwrap();
        s.commit(&mut r, None).await.unwrap();
        r.compact().await.unwrap();
        r.gc(&NOW).await.unwrap();
        assert_eq!(run(&b2, &opts(true, false)).await.findings, vec![]);
        let shards = keys_under(&b2, &bucket(&b2).layout().archive_dir()).await;
        assert!(!shards.is_empty(), "{}: no archive shard", b.name);
        let damaged = flip(&b2, &shards[0]).await;
        let rep = run(&b2, &opts(true, true)).await;
        assert_eq!(
            kinds(&rep),
            vec![(FindingKind::CorruptArchive, shards[0].to_string())],
            "{}",
            b.name
        );
        // Quarantine leaves a shard in place, and says why.
        assert_eq!(rep.moved, vec![], "{}", b.name);
        assert!(rep.findings[0].message.contains("leaves it in place"));
        assert_eq!(get(&b2, &shards[0]).await, damaged);
    }
}

#[tokio::test]
async fn missing_blobs_pieces_and_shards_are_dangling_references() {
    for b in backends() {
        let mut r = sample(&b).await;
        let lay = bucket(&b).layout().clone();
        let (first, second) = (
            lay.blob(&BlobHash::of(&blob(1))),
            lay.blob(&BlobHash::of(&blob(2))),
        );
        // Referenced by an uncovered change: a problem.
        b.store.delete(&first).await.unwrap();
        let rep = run(&b, &opts(false, false)).await;
        assert_eq!(
            kinds(&rep),
            vec![(FindingKind::MissingBlob, first.to_string())],
            "{}",
            b.name
        );
        let f = &rep.findings[0];
        assert_eq!(f.severity, Severity::Problem);
        let (listed, _) = bucket(&b).list_changes().await.unwrap();
        assert_eq!(f.related.len(), 1);
        assert!(listed.iter().any(|c| c.key.as_ref() == f.related[0]));
        assert!(
            f.message
                .contains("copy the object at this key from a replica"),
            "{}",
            f.message
        );

        // Once a snapshot covers that change, readers never read its file: info.
        r.compact().await.unwrap();
        let rep = run(&b, &opts(false, false)).await;
        assert_eq!(
            kinds(&rep),
            vec![(FindingKind::MissingBlob, first.to_string())]
        );
        assert_eq!(rep.findings[0].severity, Severity::Info, "{}", b.name);
        assert!(rep.is_clean(), "{}", b.name);
        // The live chunk's blob is held by the snapshot's piece: a problem.
        b.store.delete(&second).await.unwrap();
        let rep = run(&b, &opts(false, false)).await;
        let f = rep
            .findings
            .iter()
            .find(|f| f.key == second.as_ref())
            .unwrap();
        assert_eq!(
            (f.kind, f.severity),
            (FindingKind::MissingBlob, Severity::Problem)
        );
        let pieces = keys_under(&b, &lay.manifests_dir()).await;
        assert!(
            f.related.contains(&pieces[0].to_string()),
            "{:?}",
            f.related
        );

        // A missing manifest piece, named by the snapshot.
        b.store.delete(&pieces[0]).await.unwrap();
        let rep = run(&b, &opts(false, false)).await;
        let f = rep
            .findings
            .iter()
            .find(|f| f.key == pieces[0].as_ref())
            .unwrap();
        assert_eq!(
            (f.kind, f.severity),
            (FindingKind::MissingManifest, Severity::Problem)
        );
        let snaps = keys_under(&b, &lay.snapshots_dir()).await;
        assert_eq!(f.related, vec![snaps[0].to_string()]);
    }
}

#[tokio::test]
async fn a_missing_archive_shard_is_reported() {
    let b = memory();
    let mut r = sample(&b).await;
    r.compact().await.unwrap();
    r.gc(&NOW).await.unwrap();
    let mut s = r.session();
    s.set("x/c/3", vec![3u8; 4]).unwrap();
    s.commit(&mut r, None).await.unwrap();
    r.compact().await.unwrap();
    r.gc(&NOW).await.unwrap();
    let lay = bucket(&b).layout().clone();
    let shards = keys_under(&b, &lay.archive_dir()).await;
    b.store.delete(&shards[0]).await.unwrap();
    let rep = run(&b, &opts(false, false)).await;
    assert_eq!(
        kinds(&rep),
        vec![(FindingKind::MissingArchive, shards[0].to_string())]
    );
    assert_eq!(rep.findings[0].severity, Severity::Problem);
}

#[tokio::test]
async fn a_blob_shorter_than_its_reference_is_a_length_mismatch() {
    let b = memory();
    let mut r = sample(&b).await;
    // A hand-made change referencing blob(2) with a wrong length.
    let info = r.log().last().map(|c| (*c).clone()).unwrap();
    let c = Change {
        repo: r.id(),
        actor: crzarr::format::ids::ActorId::generate(),
        seq: 1,
        deps: vec![info.hash],
        hlc: Hlc(info.hlc.0 + 1),
        wall_ms: 0,
        message: None,
        ops: vec![crzarr::format::change::Op::SetChunk {
            node: crzarr::format::change::OpRef::Change(r.log()[0].hash, 1),
            key: "c/5".into(),
            data: crzarr::format::change::ChunkData::Blob {
                hash: BlobHash::of(&blob(2)),
                len: 4999,
            },
            observed: vec![],
        }],
    };
    let (key, _) = put_change(&b, &c).await;
    r.refresh().await.unwrap();
    assert_eq!(r.problems(), vec![], "the change itself is valid");
    assert_eq!(run(&b, &opts(false, false)).await.findings, vec![]);
    let rep = run(&b, &opts(true, false)).await;
    assert_eq!(
        kinds(&rep),
        vec![(FindingKind::BlobLengthMismatch, key.to_string())]
    );
    assert!(rep.findings[0].message.contains("as 4999 bytes"));
}

#[tokio::test]
async fn unknown_files_under_crdt_are_found_and_quarantine_leaves_them() {
    for b in backends() {
        sample(&b).await;
        let lay = bucket(&b).layout().clone();
        let crdt = lay.crdt_dir();
        let unknown = [
            crdt.clone().join("notes.txt"),
            lay.ops_dir().join("README"),
            lay.blobs_dir().join("xyz"),
            crdt.clone().join("weird").join("dir").join("file"),
        ];
        for k in &unknown {
            b.store.put(k, PutPayload::from_static(b"?")).await.unwrap();
        }
        let rep = run(&b, &opts(true, true)).await;
        let mut want: Vec<(FindingKind, String)> = unknown
            .iter()
            .map(|k| (FindingKind::UnknownFile, k.to_string()))
            .collect();
        want.sort();
        let mut got = kinds(&rep);
        got.sort();
        assert_eq!(got, want, "{}", b.name);
        assert_eq!(rep.moved, vec![]);
        assert!(!rep.is_clean());
        for k in &unknown {
            assert_eq!(get(&b, k).await.as_ref(), b"?");
        }
    }
}

#[tokio::test]
async fn pending_changes_name_what_they_wait_for_and_the_horizon_is_reported() {
    for b in backends() {
        sample(&b).await;
        let mut w = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = w.session();
        s.set_attr("x", "a", 1.into()).unwrap();
        let c1 = s.commit(&mut w, None).await.unwrap().unwrap();
        let mut s = w.session();
        s.set_attr("x", "b", 2.into()).unwrap();
        let c2 = s.commit(&mut w, None).await.unwrap().unwrap();
        let (k1, k2) = (change_key(&b, c1).await, change_key(&b, c2).await);
        flip(&b, &k1).await;
        let rep = run(&b, &opts(false, false)).await;
        let mut want = vec![
            (FindingKind::CorruptChange, k1.to_string()),
            (FindingKind::PendingChange, k2.to_string()),
        ];
        want.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
        assert_eq!(kinds(&rep), want, "{}", b.name);
        let p = rep
            .findings
            .iter()
            .find(|f| f.kind == FindingKind::PendingChange)
            .unwrap();
        assert_eq!(p.related, vec![c1.to_hex()]);
        assert!(p.message.contains(&c1.short()), "{}", p.message);

        // A change needing a change nobody has: past the history horizon.
        let head = w.fold().heads()[0];
        let lost = ChangeHash([7; 32]);
        let mut deps = vec![head, lost];
        deps.sort();
        let (key, _) = put_change(
            &b,
            &Change {
                repo: w.id(),
                actor: crzarr::format::ids::ActorId::generate(),
                seq: 1,
                deps,
                hlc: Hlc(w.fold().hlc_of(&head).unwrap().0 + 10),
                wall_ms: 0,
                message: None,
                ops: vec![],
            },
        )
        .await;
        let rep = run(&b, &opts(false, false)).await;
        let h = rep
            .findings
            .iter()
            .find(|f| f.key == key.as_ref())
            .unwrap_or_else(|| panic!("{}: {:?}", b.name, rep.findings));
        assert_eq!(h.kind, FindingKind::MissingHistory);
        assert!(h.message.contains(&lost.to_hex()), "{}", h.message);
        assert!(h.message.contains("sync the replica that has it"));
        assert!(h.related.contains(&lost.to_hex()));
    }
}

#[tokio::test]
async fn a_fork_is_reported_with_both_changes() {
    for b in backends() {
        let r = sample(&b).await;
        let info = r.log().last().map(|c| (*c).clone()).unwrap();
        let (key, forged) = put_change(
            &b,
            &Change {
                repo: r.id(),
                actor: info.actor,
                seq: info.seq,
                deps: info.deps.clone(),
                hlc: Hlc(info.hlc.0 + 1),
                wall_ms: 0,
                message: Some("clone".into()),
                ops: vec![],
            },
        )
        .await;
        let rep = run(&b, &opts(true, false)).await;
        let orig = change_key(&b, info.hash).await;
        assert_eq!(
            rep.findings.iter().map(|f| f.kind).collect::<Vec<_>>(),
            vec![FindingKind::Fork],
            "{}: {:?}",
            b.name,
            rep.findings
        );
        let f = &rep.findings[0];
        assert!(f.key == key.as_ref() || f.key == orig.as_ref(), "{}", f.key);
        let mut want = vec![info.hash.to_hex(), forged.to_hex()];
        want.sort();
        assert_eq!(f.related, want);
        assert!(f.message.contains(&format!("used seq {}", info.seq)));
        assert!(!rep.is_clean());
    }
}

#[tokio::test]
async fn quarantine_moves_exactly_the_corrupt_objects_and_readers_ignore_them() {
    for b in backends() {
        sample(&b).await;
        let lay = bucket(&b).layout().clone();
        let mut w = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = w.session();
        s.set_attr("x", "late", true.into()).unwrap();
        let head = s.commit(&mut w, None).await.unwrap().unwrap();
        let change = change_key(&b, head).await;
        let blob_key = lay.blob(&BlobHash::of(&blob(1)));
        let stray = lay.crdt_dir().join("stray.txt");
        b.store
            .put(&stray, PutPayload::from_static(b"?"))
            .await
            .unwrap();
        let bad_change = flip(&b, &change).await;
        let bad_blob = flip(&b, &blob_key).await;

        let rep = run(&b, &opts(true, true)).await;
        let mut want = vec![
            (FindingKind::CorruptBlob, blob_key.to_string()),
            (FindingKind::CorruptChange, change.to_string()),
            (FindingKind::UnknownFile, stray.to_string()),
        ];
        want.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
        assert_eq!(kinds(&rep), want, "{}", b.name);
        let moved: BTreeSet<(String, String)> = rep
            .moved
            .iter()
            .map(|m| (m.from.clone(), m.to.clone()))
            .collect();
        let to_change = lay.quarantine(&change).unwrap();
        let to_blob = lay.quarantine(&blob_key).unwrap();
        assert!(to_change.as_ref().contains("/.crdt/quarantine/ops/"));
        let expect: BTreeSet<(String, String)> = [
            (change.to_string(), to_change.to_string()),
            (blob_key.to_string(), to_blob.to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(moved, expect, "{}", b.name);
        assert_eq!(get(&b, &to_change).await, bad_change);
        assert_eq!(get(&b, &to_blob).await, bad_blob);
        for gone in [&change, &blob_key] {
            assert!(matches!(
                b.store.head(gone).await,
                Err(object_store::Error::NotFound { .. })
            ));
        }
        assert_eq!(
            get(&b, &stray).await.as_ref(),
            b"?",
            "not corrupt: not moved"
        );

        // Readers see no problem; verify reports the reference the move left dangling.
        b.store.delete(&stray).await.unwrap();
        let mut r = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(r.problems(), vec![], "{}", b.name);
        assert!(!r.fold().knows(&head), "the corrupt change is gone");
        let rep = run(&b, &opts(true, false)).await;
        let mut got = kinds(&rep);
        got.sort();
        let mut want = vec![
            (FindingKind::MissingBlob, blob_key.to_string()),
            (FindingKind::Quarantined, to_blob.to_string()),
            (FindingKind::Quarantined, to_change.to_string()),
        ];
        want.sort();
        assert_eq!(got, want, "{}", b.name);
        assert_eq!(rep.problems, 1, "the missing blob");
        assert_eq!(rep.moved, vec![]);

        // Status, compaction and GC do not see or touch the quarantine.
        let st = r.status().await.unwrap();
        assert_eq!(st.problems, 0);
        r.compact().await.unwrap();
        r.gc(&NOW).await.unwrap();
        assert_eq!(
            keys_under(&b, &lay.quarantine_dir()).await,
            {
                let mut v = vec![to_change.clone(), to_blob.clone()];
                v.sort();
                v
            },
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn quarantine_of_a_snapshot_and_its_piece_leaves_a_clean_repository_sync_ignores() {
    for b in backends() {
        let mut r = sample(&b).await;
        r.compact().await.unwrap();
        let lay = bucket(&b).layout().clone();
        let snap = keys_under(&b, &lay.snapshots_dir()).await.remove(0);
        let piece = keys_under(&b, &lay.manifests_dir()).await.remove(0);
        flip(&b, &snap).await;
        flip(&b, &piece).await;
        let rep = run(&b, &opts(true, true)).await;
        let mut got = kinds(&rep);
        got.sort();
        let mut want = vec![
            (FindingKind::CorruptManifest, piece.to_string()),
            (FindingKind::CorruptSnapshot, snap.to_string()),
        ];
        want.sort();
        assert_eq!(got, want, "{}", b.name);
        assert_eq!(rep.moved.len(), 2);
        assert!(
            rep.findings.iter().all(|f| f.message.contains("moved to ")),
            "{:?}",
            rep.findings
        );

        // Nothing referenced them once moved: clean, the hint now only informs.
        let rep = run(&b, &opts(true, false)).await;
        assert!(rep.is_clean(), "{}: {:?}", b.name, rep.findings);
        let mut got: Vec<FindingKind> = rep.findings.iter().map(|f| f.kind).collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                FindingKind::StaleHint,
                FindingKind::Quarantined,
                FindingKind::Quarantined
            ]
        );
        let r = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(r.problems(), vec![], "{}", b.name);
        assert_eq!(r.get("x/c/0").await.unwrap().as_deref(), Some(&blob(2)[..]));

        // Sync neither copies nor reports the quarantine.
        let mut dst = another(&b);
        dst.prefix = format!("{}-replica", b.prefix);
        let report = crzarr::ops::sync::sync(
            &bucket(&b),
            &bucket(&dst),
            &crzarr::ops::sync::SyncOptions::default(),
        )
        .await
        .unwrap();
        assert!(report.is_clean(), "{}: {:?}", b.name, report.refused);
        assert_eq!(report.ignored, vec![], "{}", b.name);
        assert_eq!(
            keys_under(&dst, &bucket(&dst).layout().quarantine_dir()).await,
            Vec::<Path>::new()
        );
        assert!(run(&dst, &opts(true, false)).await.is_clean());
    }
}

#[tokio::test]
async fn marker_hint_and_foreign_changes() {
    let b = memory();
    let err = verify(&bucket(&b), &opts(false, false)).await.unwrap_err();
    assert!(matches!(err, Error::NotARepo { .. }), "{err}");

    let r = sample(&b).await;
    let lay = bucket(&b).layout().clone();
    // A hint that is no snapshot's copy only informs.
    b.store
        .put(&lay.latest_hint(), PutPayload::from_static(b"junk"))
        .await
        .unwrap();
    let rep = run(&b, &opts(false, false)).await;
    assert_eq!(
        kinds(&rep),
        vec![(FindingKind::StaleHint, lay.latest_hint().to_string())]
    );
    assert_eq!(rep.findings[0].severity, Severity::Info);
    assert!(rep.is_clean());
    b.store.delete(&lay.latest_hint()).await.unwrap();

    // A change of another repository, copied in.
    let mut other = memory();
    other.store = b.store.clone();
    other.prefix = "other".into();
    let o = sample(&other).await;
    let (listed, _) = bucket(&other).list_changes().await.unwrap();
    let c = &listed[0];
    let copy = lay.change(&c.name);
    b.store
        .put(&copy, PutPayload::from(get(&other, &c.key).await))
        .await
        .unwrap();
    let rep = run(&b, &opts(false, true)).await;
    assert_eq!(
        kinds(&rep),
        vec![(FindingKind::ForeignObject, copy.to_string())]
    );
    assert!(rep.findings[0].message.contains(&o.id().to_string()));
    assert_eq!(rep.moved, vec![], "not corrupt: left in place");
    b.store.delete(&copy).await.unwrap();

    // A damaged marker: nothing else can be checked.
    b.store
        .put(&lay.marker(), PutPayload::from_static(b"{}"))
        .await
        .unwrap();
    let rep = run(&b, &opts(false, false)).await;
    assert_eq!(
        kinds(&rep),
        vec![(FindingKind::BadMarker, lay.marker().to_string())]
    );
    assert_eq!(rep.repo_id, None);
    assert!(!rep.is_clean());
    let _ = r;
}

#[test]
fn kinds_are_named_as_json_names_them() {
    use FindingKind::*;
    for k in [
        BadMarker,
        OpenFailed,
        CorruptChange,
        CorruptSnapshot,
        CorruptManifest,
        CorruptArchive,
        CorruptBlob,
        ForeignObject,
        NewerVersion,
        MissingBlob,
        MissingManifest,
        MissingArchive,
        BlobLengthMismatch,
        RejectedChange,
        PendingChange,
        MissingHistory,
        Fork,
        UnknownFile,
        ReaderProblem,
        StaleHint,
        UnreferencedBlob,
        Quarantined,
    ] {
        assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
    }
}

/// Issue 14 item 3: the newest snapshot names a manifest piece that is gone (as the
/// old GC race left it). Verify names the snapshot, and the documented repair,
/// `verify --quarantine` then `compact`, gives a repository whose every chunk reads.
#[tokio::test]
async fn a_snapshot_naming_a_missing_piece_is_reported_and_repaired() {
    for b in backends() {
        let mut r = sample(&b).await;
        r.compact().await.unwrap();
        let mut s = r.session();
        s.set("x/c/2", vec![5u8; 4]).unwrap();
        s.commit(&mut r, None).await.unwrap();
        let before: BTreeSet<Path> = keys_under(&b, &bucket(&b).layout().manifests_dir())
            .await
            .into_iter()
            .collect();
        r.compact().await.unwrap();
        let lay = bucket(&b).layout().clone();
        let newest = keys_under(&b, &lay.snapshots_dir())
            .await
            .into_iter()
            .max_by_key(|k| lay.parse_snapshot_key(k).unwrap())
            .unwrap();
        let piece = keys_under(&b, &lay.manifests_dir())
            .await
            .into_iter()
            .find(|k| !before.contains(k))
            .unwrap();
        b.store.delete(&piece).await.unwrap();
        let broken = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert!(broken.get("x/c/2").await.is_err(), "{}", b.name);

        let rep = run(&b, &opts(false, false)).await;
        let f = rep
            .findings
            .iter()
            .find(|f| f.kind == FindingKind::MissingManifest)
            .unwrap_or_else(|| panic!("{}: {:?}", b.name, rep.findings));
        assert_eq!(f.key, piece.to_string());
        assert!(f.related.contains(&newest.to_string()), "{f:?}");

        let rep = run(&b, &opts(false, true)).await;
        assert!(
            rep.moved.iter().any(|m| m.from == newest.to_string()),
            "{}: {:?}",
            b.name,
            rep.moved
        );
        let mut r = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(
            r.get("x/c/2").await.unwrap().as_deref(),
            Some(&[5u8; 4][..])
        );
        assert_eq!(r.get("x/c/0").await.unwrap().as_deref(), Some(&blob(2)[..]));
        r.compact().await.unwrap();
        let rep = run(&b, &opts(true, false)).await;
        assert!(rep.is_clean(), "{}: {:?}", b.name, rep.findings);
    }
}
