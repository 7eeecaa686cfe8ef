//! Hybrid logical clocks (issue 14): an honest writer's stamp is always one readers
//! accept, never saturated or wrapped, and a commit whose change readers would reject
//! fails with a typed error instead of saying Ok.

use crate::common::{array_meta, backends};
use crzarr::Error;
use crzarr::fold::{Fold, InsertOutcome};
use crzarr::format::change::{Change, Op, OpRef};
use crzarr::format::ids::{
    ActorId, CAP_HLC, ChangeHash, HARD_MAX_HLC, Hlc, MAX_CLOCK_LEAD_MS, ObjectHash, RepoId,
};
use crzarr::format::layout::{Layout, SnapshotName};
use crzarr::format::snapshot::SnapshotMeta;
use crzarr::repo::Repo;
use object_store::{ObjectStoreExt, PutPayload};
use proptest::prelude::*;
use serde_json::json;

/// A change on `deps` stamped `hlc` that edits the root group made by `root`.
fn change(repo: RepoId, deps: Vec<ChangeHash>, hlc: Hlc, root: Option<ChangeHash>) -> Change {
    let ops = match root {
        Some(r) => vec![Op::SetAttr {
            node: OpRef::Change(r, 0),
            key: "k".into(),
            value: "1".into(),
            observed: vec![],
        }],
        None => vec![Op::CreateGroup {
            path: String::new(),
            attributes: vec![],
        }],
    };
    Change {
        repo,
        actor: ActorId::generate(),
        seq: 1,
        deps,
        hlc,
        wall_ms: 0,
        message: None,
        ops,
    }
}

/// Stamps that matter: tiny, around today, around the cap, around the hard maximum
/// and the top of the range, plus anything.
fn stamp() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..1 << 20,
        (1_700_000_000_000u64 << 16)..(1_900_000_000_000u64 << 16),
        (CAP_HLC - (1 << 40))..(CAP_HLC + (1 << 40)),
        (HARD_MAX_HLC - (1 << 20))..=HARD_MAX_HLC,
        (u64::MAX - (1 << 20))..=u64::MAX,
        any::<u64>(),
    ]
}

fn now_ms() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(u64::MAX >> 16),
        Just((u64::MAX >> 16) + 1),
        1_700_000_000_000u64..1_900_000_000_000,
        any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// `Hlc::next` never panics, wraps or saturates: it exceeds the greatest
    /// reference, stays within the readers' bound (so within the hard maximum), and
    /// refuses only when the reference is at or past the hard maximum.
    #[test]
    fn honest_clock_never_saturates(r in proptest::option::of(stamp()), now in now_ms()) {
        let r = r.map(Hlc);
        let bound = Hlc::bound(r);
        prop_assert!(bound.0 <= HARD_MAX_HLC);
        match Hlc::next(now, r) {
            Some(h) => {
                prop_assert!(r.is_none_or(|r| h > r));
                prop_assert!(h <= bound, "{h:?} over {bound:?}");
                // Following the clock, but never more than the lead ahead.
                if let Some(r) = r {
                    prop_assert!(h.millis() <= r.millis().saturating_add(MAX_CLOCK_LEAD_MS).max(r.millis() + 1));
                } else {
                    prop_assert!(h.0 <= CAP_HLC);
                }
            }
            None => prop_assert!(r.is_some_and(|r| r.0 >= HARD_MAX_HLC)),
        }
    }

    /// The same through the reader's own check: a change stamped by `Hlc::next` on a
    /// dep with any valid root stamp is applied by a fold, and so is the next one on it.
    #[test]
    fn honest_clock_is_accepted_by_the_fold(root in 0..=CAP_HLC, now in now_ms()) {
        let repo = RepoId::generate();
        let mut fold = Fold::new(repo);
        let c0 = change(repo, vec![], Hlc(root), None);
        let h0 = ChangeHash::of(&c0.encode());
        let out = fold.insert(h0, c0, 0);
        prop_assert!(matches!(out, InsertOutcome::Applied { .. }), "{:?}", out);
        let mut prev = (h0, Hlc(root));
        for _ in 0..2 {
            let hlc = Hlc::next(now, Some(prev.1));
            prop_assert!(hlc.is_some());
            let c = change(repo, vec![prev.0], hlc.unwrap_or(Hlc(0)), Some(h0));
            prop_assert_eq!(fold.check(&c), Ok(()));
            let h = ChangeHash::of(&c.encode());
            let out = fold.insert(h, c, 0);
            prop_assert!(matches!(out, InsertOutcome::Applied { .. }), "{:?}", out);
            prev = (h, hlc.unwrap_or(Hlc(0)));
        }
    }
}

/// Stamps past the cap still step by one: a writer whose deps sit at the cap (or a
/// bit past it) keeps committing, each stamp one more, for 2^62 changes.
#[test]
fn honest_clock_steps_past_the_cap() {
    // A clock past the cap is held at the cap.
    assert_eq!(
        Hlc::next(u64::MAX, Some(Hlc(CAP_HLC - 2))),
        Some(Hlc(CAP_HLC))
    );
    let mut h = Hlc(CAP_HLC);
    for _ in 0..5 {
        let next = Hlc::next(u64::MAX, Some(h)).unwrap_or(Hlc(0));
        assert_eq!(next, Hlc(h.0 + 1));
        assert!(next <= Hlc::bound(Some(h)));
        h = next;
    }
}

/// A bucket compacted by an older build after it folded a change stamped `u64::MAX`
/// leaves a head no valid stamp can follow. Before the fix, `commit` saturated to
/// `u64::MAX`, wrote a change every reader (and its own fold) rejects, and said Ok.
/// Now it fails with a typed error naming that head, and writes nothing.
#[tokio::test]
async fn commit_fails_if_readers_would_reject_its_change() {
    for b in backends() {
        let ctx = b.name;
        let mut w = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = w.session();
        s.create_group("", Default::default()).unwrap();
        s.create_array("x", &array_meta(&[4], &[2])).unwrap();
        s.commit(&mut w, None).await.unwrap().unwrap();
        let report = w.compact().await.unwrap();
        let layout = Layout::new(&b.prefix);
        let name = SnapshotName::parse(&report.snapshot.unwrap()).unwrap();
        let key = layout.snapshot(&name);
        let bytes = b.store.get(&key).await.unwrap().bytes().await.unwrap();
        let mut m = SnapshotMeta::decode("x", &bytes, &name.hash).unwrap();
        assert_eq!(m.heads.len(), 1);
        let head = m.heads[0];
        for c in m.changes.iter_mut().filter(|c| c.hash == head) {
            c.hlc = Hlc(u64::MAX);
        }
        m.max_hlc = Hlc(u64::MAX);
        // Named as covering more, so a reader opens it rather than the real one.
        m.covered += 10;
        let forged = m.encode();
        let forged_name = SnapshotName {
            covered: m.covered,
            hash: ObjectHash::of(&forged),
        };
        b.store
            .put(&layout.snapshot(&forged_name), PutPayload::from(forged))
            .await
            .unwrap();

        let mut w = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert!(w.problems().is_empty(), "{ctx}: {:?}", w.problems());
        assert_eq!(w.fold().hlc_of(&head), Some(Hlc(u64::MAX)), "{ctx}");
        let before = w.bucket().list_changes().await.unwrap().0.len();
        let mut s = w.session();
        s.set_attr("x", "k", json!(1)).unwrap();
        for attempt in 0..2 {
            match s.commit(&mut w, None).await {
                Err(Error::CommitRefused { key, reason }) => {
                    assert!(key.contains(&head.to_hex()), "{ctx}: {key}");
                    assert!(reason.contains("no valid stamp"), "{ctx}: {reason}");
                }
                other => panic!("{ctx} attempt {attempt}: expected CommitRefused, got {other:?}"),
            }
        }
        drop(s);
        assert_eq!(
            w.bucket().list_changes().await.unwrap().0.len(),
            before,
            "{ctx}: a refused commit wrote a change"
        );
    }
}
