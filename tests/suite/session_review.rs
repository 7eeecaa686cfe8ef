//! Review of the owned `WriteSession` (e0b6191): a session shares the handle's state
//! copy-on-write and may stay open while the handle refreshes, reloads or commits
//! other sessions. Each test holds a session across something the borrowing session
//! (before e0b6191) could not be open across, and checks that what it commits is
//! what an independent writer that started from the same state would have committed.

use crate::common::repo::{fold_state, stash, state};
use crate::common::witness::gc_opts;
use crate::common::{array_meta, memory};
use bytes::Bytes;
use crzarr::format::ids::ChangeHash;
use crzarr::io::testing::{FaultConfig, FaultyStore};
use crzarr::ops::verify::{VerifyOptions, verify};
use crzarr::repo::Repo;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use serde_json::{Map, json};
use std::sync::Arc;
use std::time::Duration;

const P: &str = "repo";

fn deps_of(r: &Repo, h: ChangeHash) -> Option<Vec<ChangeHash>> {
    r.log().iter().find(|c| c.hash == h).map(|c| c.deps.clone())
}

fn seq_of(r: &Repo, h: ChangeHash) -> u64 {
    r.log().iter().find(|c| c.hash == h).map(|c| c.seq).unwrap()
}

async fn change_files(r: &Repo) -> usize {
    r.bucket().list_changes().await.unwrap().0.len()
}

/// The handle shows what a fresh reader shows, and (when every change file is still
/// there) what the pure fold of all change files shows.
async fn converges(a: &Repo, all_files: bool) {
    let fresh = Repo::open(a.bucket().store().clone(), P).await.unwrap();
    assert_eq!(
        state(a).await,
        state(&fresh).await,
        "handle vs fresh reader"
    );
    if all_files {
        let all = stash(a.bucket()).await;
        assert_eq!(
            state(a).await,
            fold_state(a, all.iter()),
            "handle vs pure fold"
        );
    }
}

/// Root group and array `x` (4x4, chunks 2x2) with one chunk and one attribute.
async fn setup(store: Arc<dyn ObjectStore>) -> (Repo, ChangeHash) {
    let mut a = Repo::init(store, P).await.unwrap();
    let mut s = a.session();
    s.create_group("", Map::new()).unwrap();
    s.create_array("x", &array_meta(&[4, 4], &[2, 2])).unwrap();
    s.set("x/c/0/0", vec![1u8; 4]).unwrap();
    s.set_attr("x", "k", json!(0)).unwrap();
    let h = s.commit(&mut a, Some("setup")).await.unwrap().unwrap();
    (a, h)
}

/// A session open across a refresh that brings a concurrent delete, resize, attribute
/// write or chunk write to the node it writes to: the commit applies (the node's
/// tombstone resolves), its deps are the state it started from, and the handle shows
/// what a fresh reader and the pure fold of every change file show.
#[tokio::test]
async fn session_open_across_a_concurrent_edit_commits_and_converges() {
    for kind in ["delete", "resize", "attr", "chunk"] {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let (mut a, root) = setup(store.clone()).await;
        let mut b = Repo::open(store.clone(), P).await.unwrap();

        let mut s = a.session();
        s.set_attr("x", "k", json!("a")).unwrap();
        s.set("x/c/0/0", vec![2u8; 4]).unwrap();
        s.set("x/c/1/1", vec![3u8; 4]).unwrap();
        s.resize("x", &[8, 8]).unwrap();

        let mut t = b.session();
        match kind {
            "delete" => t.delete("x/zarr.json").unwrap(),
            "resize" => t.resize("x", &[2, 2]).unwrap(),
            "attr" => t.set_attr("x", "k", json!("b")).unwrap(),
            _ => t.set("x/c/0/0", vec![9u8; 4]).unwrap(),
        }
        let hb = t.commit(&mut b, None).await.unwrap().unwrap();
        a.refresh().await.unwrap();
        assert!(a.fold().contains(&hb), "{kind}");

        let ha = s
            .commit(&mut a, None)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"))
            .unwrap();
        assert_eq!(deps_of(&a, ha), Some(vec![root]), "{kind}");
        converges(&a, true).await;
        // Both writers' changes are heads: neither saw the other.
        let mut heads = vec![ha, hb];
        heads.sort();
        assert_eq!(a.fold().heads(), heads, "{kind}");
    }
}

/// A session open across a refresh that reloads the handle from a snapshot another
/// writer compacted (and garbage collection then removed the change files): the
/// session's deps are the heads of the state it started from, which the reloaded
/// state only knows through the snapshot's coverage archive. An independent writer
/// that started from the same state (and never refreshed) commits the same edit; the
/// session, committed through the refreshed handle, should too.
#[tokio::test]
async fn session_commits_after_its_handle_reloads_from_a_newer_snapshot() {
    let b0 = memory();
    let store = b0.store.clone();
    let mut a = Repo::init(store.clone(), P).await.unwrap();
    let mut s = a.session();
    s.create_group("", Map::new()).unwrap();
    s.commit(&mut a, None).await.unwrap().unwrap();
    let mut s = a.session();
    s.set_attr("", "k", json!(1)).unwrap();
    let c1 = s.commit(&mut a, None).await.unwrap().unwrap();

    // Staged against heads {c1}; an independent writer starts from the same state.
    let mut open = a.session();
    open.set_attr("", "from_session", json!(1)).unwrap();
    let mut indep = Repo::open(store.clone(), P).await.unwrap();
    let mut other = indep.session();
    other.set_attr("", "from_independent", json!(1)).unwrap();

    // Another writer overwrites c1's entry, compacts, collects, and does it again:
    // the second snapshot's table no longer lists c1 (no head, no live entry, no file).
    let mut b = Repo::open(store.clone(), P).await.unwrap();
    for v in [2, 3] {
        let mut t = b.session();
        t.set_attr("", "k", json!(v)).unwrap();
        t.commit(&mut b, None).await.unwrap().unwrap();
        b.compact().await.unwrap();
        b.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
    }

    a.refresh().await.unwrap();
    assert!(
        !a.fold().contains(&c1),
        "precondition: the reloaded state does not list c1 in memory"
    );
    let attempt = open.commit(&mut a, None).await;
    // A retry after another refresh does no better (nothing new to read).
    let retry = match &attempt {
        Ok(_) => None,
        Err(_) => {
            a.refresh().await.unwrap();
            Some(open.commit(&mut a, None).await)
        }
    };

    // The independent writer (its state still holds c1) commits the same kind of
    // edit, and readers of the new snapshot apply it (c1 is found in the archive;
    // once a handle reads a change that names c1, c1 is back in its state and the
    // session would commit: the refusal is not about validity).
    let hi = other.commit(&mut indep, None).await.unwrap().unwrap();
    assert_eq!(deps_of(&indep, hi), Some(vec![c1]));
    let mut reader = Repo::open(store.clone(), P).await.unwrap();
    assert!(reader.fold().contains(&hi));
    assert_eq!(
        reader
            .view()
            .attributes("")
            .unwrap()
            .get("from_independent"),
        Some(&json!(1))
    );

    let ha = attempt
        .unwrap_or_else(|e| {
            panic!("session open across a reload does not commit: {e}; retry: {retry:?}")
        })
        .unwrap();
    assert!(a.fold().contains(&ha));
    a.refresh().await.unwrap();
    let attrs = a.view().attributes("").unwrap();
    assert_eq!(attrs.get("from_session"), Some(&json!(1)));
    assert_eq!(attrs.get("from_independent"), Some(&json!(1)));
    reader.refresh().await.unwrap();
    assert!(reader.fold().contains(&ha));
    converges(&a, false).await;
}

/// A session staged against a state read from a snapshot whose manifest pieces it has
/// not loaded (a chunk write to an array kept in pieces defers work to commit). Another
/// writer compacts anew and garbage collection removes the old snapshot's pieces; the
/// handle refreshes (and so moves to the new snapshot, as `refresh` does precisely so
/// that collected pieces are not needed). The session still reads the old pieces at
/// commit, from its own copy of the old state.
#[tokio::test]
#[ignore = "issue 15, open: a session cannot yet finish deferred work once the pieces of the \
            state it staged against are collected; it is refused clearly instead \
            (a_session_whose_pieces_are_collected_is_refused_and_a_new_one_commits)"]
async fn session_commits_after_the_pieces_it_started_from_are_collected() {
    let b0 = memory();
    let store = b0.store.clone();
    let (mut w, _) = setup(store.clone()).await;
    w.compact().await.unwrap();

    let mut a = Repo::open(store.clone(), P).await.unwrap();
    assert!(a.fold().snapshot_base().is_some());
    let mut s = a.session();
    s.set("x/c/1/1", vec![7u8; 4]).unwrap();

    let mut t = w.session();
    t.set("x/c/0/0", vec![2u8; 4]).unwrap();
    t.commit(&mut w, None).await.unwrap().unwrap();
    w.compact().await.unwrap();
    let gc = w.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
    assert!(gc.removed.iter().any(|r| r.key.contains("/manifests/")));

    a.refresh().await.unwrap();
    let first = s.commit(&mut a, None).await;
    let retry = match &first {
        Ok(_) => None,
        Err(_) => {
            a.refresh().await.unwrap();
            Some(s.commit(&mut a, None).await)
        }
    };
    assert!(
        first.is_ok(),
        "session open across a refresh does not commit once its pieces are collected: \
         {first:?}; after another refresh: {retry:?}"
    );
    assert_eq!(
        a.get("x/c/1/1").await.unwrap(),
        Some(Bytes::from(vec![7u8; 4]))
    );
    assert_eq!(
        a.get("x/c/0/0").await.unwrap(),
        Some(Bytes::from(vec![2u8; 4]))
    );
    converges(&a, false).await;
}

/// Two sessions open on one handle, committed in either order: both apply, each has
/// the next sequence number of the handle when it commits, both depend on the state
/// they started from, and readers show what the handle shows.
#[tokio::test]
async fn two_sessions_on_one_handle_commit_in_either_order() {
    for first_two in [false, true] {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let (mut a, root) = setup(store.clone()).await;
        let mut s1 = a.session();
        s1.set_attr("x", "one", json!(1)).unwrap();
        s1.set("x/c/0/0", vec![5u8; 4]).unwrap();
        let mut s2 = a.session();
        s2.set_attr("x", "two", json!(2)).unwrap();
        s2.set("x/c/1/0", vec![6u8; 4]).unwrap();
        let (h_first, h_second) = if first_two {
            let h2 = s2.commit(&mut a, None).await.unwrap().unwrap();
            let h1 = s1.commit(&mut a, None).await.unwrap().unwrap();
            (h2, h1)
        } else {
            let h1 = s1.commit(&mut a, None).await.unwrap().unwrap();
            let h2 = s2.commit(&mut a, None).await.unwrap().unwrap();
            (h1, h2)
        };
        assert_eq!(seq_of(&a, h_second), seq_of(&a, h_first) + 1);
        assert_eq!(deps_of(&a, h_first), Some(vec![root]));
        assert_eq!(deps_of(&a, h_second), Some(vec![root]));
        let attrs = a.view().attributes("x").unwrap();
        assert_eq!(
            (attrs["one"].clone(), attrs["two"].clone()),
            (json!(1), json!(2))
        );
        assert_eq!(
            a.get("x/c/0/0").await.unwrap(),
            Some(Bytes::from(vec![5u8; 4]))
        );
        assert_eq!(
            a.get("x/c/1/0").await.unwrap(),
            Some(Bytes::from(vec![6u8; 4]))
        );
        assert!(a.problems().is_empty() && a.forks().is_empty());
        let v = verify(
            a.bucket(),
            &VerifyOptions {
                blobs: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(v.is_clean(), "{v:?}");
        converges(&a, true).await;
    }
}

/// Two sessions of one handle write the same attribute: the later commit does not
/// overwrite the earlier one (it never saw it); the register shows both as a conflict,
/// as for two writers. Documents the semantics the owned session brings: with the
/// borrowing session the second write would have followed the first.
#[tokio::test]
async fn two_sessions_on_one_handle_writing_one_key_conflict() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let (mut a, _) = setup(store.clone()).await;
    let mut s1 = a.session();
    s1.set_attr("x", "k", json!(1)).unwrap();
    let mut s2 = a.session();
    s2.set_attr("x", "k", json!(2)).unwrap();
    s1.commit(&mut a, None).await.unwrap().unwrap();
    s2.commit(&mut a, None).await.unwrap().unwrap();
    let conflicts = a.conflicts().await.unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    converges(&a, true).await;
}

/// A commit whose upload fails (nothing lands, or the change lands but the reply is
/// lost), then a refresh, then a retry: the same change (same hash, deps of the state
/// the session started from), one change file, applied once.
#[tokio::test]
async fn a_failed_commit_retried_after_a_refresh_publishes_the_same_change_once() {
    for lands in [false, true] {
        let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let faulty = FaultyStore::new(
            mem.clone(),
            FaultConfig {
                seed: 7,
                p_fail_put: if lands { 0.0 } else { 1.0 },
                p_put_lands_but_fails: if lands { 1.0 } else { 0.0 },
                ..Default::default()
            },
        );
        faulty.set_enabled(false);
        let (mut a, root) = setup(Arc::new(faulty.clone())).await;
        let mut b = Repo::open(mem.clone(), P).await.unwrap();

        let mut s = a.session();
        s.set_attr("x", "from_a", json!(1)).unwrap();
        s.set("x/c/1/1", crate::common::repo::blob(3)).unwrap();
        faulty.set_enabled(true);
        assert!(s.commit(&mut a, None).await.is_err(), "lands={lands}");
        faulty.set_enabled(false);

        let mut t = b.session();
        t.set_attr("x", "from_b", json!(2)).unwrap();
        let hb = t.commit(&mut b, None).await.unwrap().unwrap();
        a.refresh().await.unwrap();
        assert!(a.fold().contains(&hb));

        let h = s.commit(&mut a, None).await.unwrap().unwrap();
        assert_eq!(deps_of(&a, h), Some(vec![root]), "lands={lands}");
        assert_eq!(change_files(&a).await, 3, "lands={lands}");
        assert!(s.is_empty());
        assert_eq!(s.commit(&mut a, None).await.unwrap(), None);
        assert_eq!(change_files(&a).await, 3, "lands={lands}");
        converges(&a, true).await;
    }
}

/// The session's contract: "the change a session commits depends on the state the
/// session started from". A commit that fails on upload drops the session's share of
/// that state and takes the handle's current one; staging one more op (which discards
/// the prepared bytes) then commits against the handle's heads, not the start state's.
/// The ops staged before the failure were computed against the start state, so the
/// change claims to have seen a concurrent write it does not overwrite. (Before
/// e0b6191 the handle could not move while its session was open, so a change's deps
/// were always the state its ops were staged against.)
#[tokio::test]
async fn a_failed_commit_keeps_the_state_the_session_started_from() {
    let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = FaultyStore::new(
        mem.clone(),
        FaultConfig {
            seed: 7,
            p_fail_put: 1.0,
            ..Default::default()
        },
    );
    faulty.set_enabled(false);
    let (mut a, root) = setup(Arc::new(faulty.clone())).await;
    let mut b = Repo::open(mem.clone(), P).await.unwrap();

    let mut s = a.session();
    s.set_attr("x", "k", json!("a")).unwrap();
    // A concurrent write of the same attribute, read by the handle.
    let mut t = b.session();
    t.set_attr("x", "k", json!("b")).unwrap();
    let hb = t.commit(&mut b, None).await.unwrap().unwrap();
    a.refresh().await.unwrap();

    faulty.set_enabled(true);
    assert!(s.commit(&mut a, None).await.is_err());
    faulty.set_enabled(false);
    s.set_attr("x", "more", json!(1)).unwrap();
    let h = s.commit(&mut a, None).await.unwrap().unwrap();
    let deps = deps_of(&a, h).unwrap();
    // Causally after hb, yet hb's value is still there beside the session's.
    let conflicts = a.conflicts().await.unwrap();
    assert_eq!(
        deps,
        vec![root],
        "deps moved to the handle's heads after a failed commit (hb={hb}); \
         conflicts: {conflicts:?}"
    );
    converges(&a, true).await;
}

/// A dropped session writes nothing and consumes no sequence number; a session used
/// after its commit stages against the handle's state with its own change in.
#[tokio::test]
async fn a_dropped_session_leaves_no_trace_and_a_reused_one_follows_its_commit() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let (mut a, root) = setup(store.clone()).await;
    let root_seq = seq_of(&a, root);
    {
        let mut s = a.session();
        s.set_attr("x", "k", json!("dropped")).unwrap();
        s.set("x/c/1/1", crate::common::repo::blob(1)).unwrap();
    }
    assert_eq!(change_files(&a).await, 1);
    let mut s = a.session();
    s.set_attr("x", "k", json!(1)).unwrap();
    let h1 = s.commit(&mut a, None).await.unwrap().unwrap();
    assert_eq!(seq_of(&a, h1), root_seq + 1);
    s.set_attr("x", "k", json!(2)).unwrap();
    let h2 = s.commit(&mut a, None).await.unwrap().unwrap();
    assert_eq!(deps_of(&a, h2), Some(vec![h1]));
    assert_eq!(a.view().attributes("x").unwrap()["k"], json!(2));
    assert!(a.conflicts().await.unwrap().is_empty());
    converges(&a, true).await;
}

/// Holding a session across many refreshes copies the handle's state once (the first
/// write after the session took its share), not on every refresh.
#[tokio::test]
async fn a_session_held_across_refreshes_copies_the_state_once() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let (mut a, _) = setup(store.clone()).await;
    let mut b = Repo::open(store.clone(), P).await.unwrap();
    let mut s = a.session();
    s.set_attr("x", "held", json!(true)).unwrap();
    let mut addrs = Vec::new();
    for i in 0..5 {
        let mut t = b.session();
        t.set_attr("x", &format!("b{i}"), json!(i)).unwrap();
        t.commit(&mut b, None).await.unwrap().unwrap();
        a.refresh().await.unwrap();
        addrs.push(a.fold() as *const _ as usize);
    }
    assert!(addrs.windows(2).all(|w| w[0] == w[1]), "{addrs:?}");
    s.commit(&mut a, None).await.unwrap().unwrap();
    converges(&a, true).await;
}

/// Cost, not correctness: a session kept after its commit (the pattern of a binding
/// that holds one session and commits now and then) re-takes a share of the handle's
/// state at once, so the first refresh after each commit copies the whole fold
/// (`Arc::make_mut`), although the session has nothing staged. Counts the copies over
/// five commit-then-refresh rounds; taking the share lazily (at the next staged write)
/// would make it zero.
#[tokio::test]
#[ignore = "issue 15, open: a session kept after its commit shares the handle's state at once \
            (it cannot reach the handle later to take it lazily); drop sessions when done"]
async fn a_committed_session_holding_nothing_does_not_make_refreshes_copy() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let (mut a, _) = setup(store.clone()).await;
    let mut b = Repo::open(store.clone(), P).await.unwrap();
    let mut s = a.session();
    let mut copies = 0;
    for i in 0..5 {
        s.set_attr("x", &format!("a{i}"), json!(i)).unwrap();
        s.commit(&mut a, None).await.unwrap().unwrap();
        assert!(s.is_empty());
        let mut t = b.session();
        t.set_attr("x", &format!("b{i}"), json!(i)).unwrap();
        t.commit(&mut b, None).await.unwrap().unwrap();
        let before = a.fold() as *const _ as usize;
        a.refresh().await.unwrap();
        if a.fold() as *const _ as usize != before {
            copies += 1;
        }
    }
    assert_eq!(copies, 0, "refreshes that copied the whole state");
    converges(&a, true).await;
}

/// A commit whose change lands but whose reply is lost, retried after the handle
/// reloaded from a snapshot that covers that change and no longer lists it in its
/// table (another writer overwrote its entry, compacted, collected and compacted
/// again): the retry must not apply the change a second time on top of a state that
/// already holds its effect. Readers (a fresh open) know it is covered; the handle
/// must show what they show.
#[tokio::test]
async fn a_lost_reply_retried_after_a_reload_does_not_apply_the_change_twice() {
    let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = FaultyStore::new(
        mem.clone(),
        FaultConfig {
            seed: 7,
            p_put_lands_but_fails: 1.0,
            ..Default::default()
        },
    );
    faulty.set_enabled(false);
    let mut a = Repo::init(Arc::new(faulty.clone()), P).await.unwrap();
    let mut s = a.session();
    s.create_group("", Map::new()).unwrap();
    s.commit(&mut a, None).await.unwrap().unwrap();

    let mut s = a.session();
    s.set_attr("", "k", json!(1)).unwrap();
    faulty.set_enabled(true);
    assert!(s.commit(&mut a, None).await.is_err());
    faulty.set_enabled(false);

    // Another writer reads the landed change, overwrites its value, and compacts
    // twice with collections between: the landed change ends in the archive only.
    let mut b = Repo::open(mem.clone(), P).await.unwrap();
    assert_eq!(b.view().attributes("").unwrap()["k"], json!(1));
    for v in [2, 3] {
        let mut t = b.session();
        t.set_attr("", "k", json!(v)).unwrap();
        t.commit(&mut b, None).await.unwrap().unwrap();
        b.compact().await.unwrap();
        b.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();
    }

    a.refresh().await.unwrap();
    assert_eq!(a.view().attributes("").unwrap()["k"], json!(3));
    let retried = s.commit(&mut a, None).await;
    let reader = Repo::open(mem.clone(), P).await.unwrap();
    assert_eq!(reader.view().attributes("").unwrap()["k"], json!(3));
    assert_eq!(
        state(&a).await,
        state(&reader).await,
        "the retry ({retried:?}) left the handle unlike a fresh reader"
    );
}

/// What holds today where the ignored test above wants more: a session whose deferred
/// work needs pieces of a state that was compacted and collected is refused, naming
/// the piece and saying what to do; nothing is written, the handle is unharmed, and a
/// new session commits the same write.
#[tokio::test]
async fn a_session_whose_pieces_are_collected_is_refused_and_a_new_one_commits() {
    let b0 = memory();
    let store = b0.store.clone();
    let (mut w, _) = setup(store.clone()).await;
    w.compact().await.unwrap();

    let mut a = Repo::open(store.clone(), P).await.unwrap();
    let mut s = a.session();
    s.set("x/c/1/1", vec![7u8; 4]).unwrap();

    let mut t = w.session();
    t.set("x/c/0/0", vec![2u8; 4]).unwrap();
    t.commit(&mut w, None).await.unwrap().unwrap();
    w.compact().await.unwrap();
    w.gc(&gc_opts(Duration::ZERO, true)).await.unwrap();

    a.refresh().await.unwrap();
    let files = change_files(&a).await;
    match s.commit(&mut a, None).await {
        Err(crzarr::Error::CommitRefused { key, reason }) => {
            assert!(key.contains("/manifests/"), "{key}");
            assert!(reason.contains("new session"), "{reason}");
        }
        other => panic!("expected a clear refusal, got {other:?}"),
    }
    assert_eq!(change_files(&a).await, files);
    let mut again = a.session();
    again.set("x/c/1/1", vec![7u8; 4]).unwrap();
    again.commit(&mut a, None).await.unwrap().unwrap();
    assert_eq!(
        a.get("x/c/1/1").await.unwrap(),
        Some(Bytes::from(vec![7u8; 4]))
    );
    assert_eq!(
        a.get("x/c/0/0").await.unwrap(),
        Some(Bytes::from(vec![2u8; 4]))
    );
    converges(&a, false).await;
}
