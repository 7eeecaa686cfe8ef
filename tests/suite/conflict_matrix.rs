//! The conflict matrix of `spec/merge.md`: one test per row, named as the row names it.
//!
//! Every test builds writers that diverge from a common state (each writer is a
//! separate replica: its own bucket, seeded with a copy of the origin), commits
//! concurrent changes, then [`support::Lab::converge`] delivers the writers' objects to
//! fresh readers in EVERY order (one refresh per writer, so folds see different
//! insertion orders), folds every permutation of the individual changes (with
//! duplicates) through `Fold::from_changes`, makes each writer pull all the others,
//! and asserts that all of these show identical entries, conflicts, pending changes,
//! forks, rejections and heads. The test then asserts the row's visible outcome and its
//! exact conflict report. Store-level rows run on `InMemory` and on `LocalFileSystem`.

use crzarr::fold::view::{ConflictTarget, ViewIndex};
use crzarr::fold::{Fold, Fork, InsertOutcome, PendingChange};
use crzarr::format::change::{Change, ChunkData, Op, OpRef};
use crzarr::format::ids::{ActorId, ChangeHash, Hlc, RepoId};
use serde_json::{Map, json};
use support::*;

mod support {
    use bytes::Bytes;
    use crzarr::fold::view::{Conflict, ConflictTarget, Entry, ViewIndex};
    use crzarr::fold::{Fold, Fork, PendingChange, RejectedChange};
    use crzarr::format::change::Change;
    use crzarr::format::ids::ChangeHash;
    use crzarr::format::layout::{ChangeName, Layout};
    use crzarr::io::store::Problem;
    use crzarr::repo::Repo;
    use futures::TryStreamExt;
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
    use serde_json::{Value, json};
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    /// Repository prefix inside every bucket.
    pub const PREFIX: &str = "ds";

    /// Which object store a site uses.
    #[derive(Clone, Copy, Debug)]
    pub enum Kind {
        Memory,
        Local,
        /// The loopback S3 server of `tests/run.sh`, one unique prefix per site.
        S3,
    }

    /// Every store kind the store-level rows run on: memory, local disk, and S3 when
    /// the test command started it (required under `CRZARR_REQUIRE_S3=1`).
    pub fn kinds() -> Vec<Kind> {
        let mut v = vec![Kind::Memory, Kind::Local];
        if crate::common::s3().is_some() {
            v.push(Kind::S3);
        }
        v
    }

    /// One bucket (a replica's storage). Keeps its temp dir alive.
    pub struct Site {
        pub store: Arc<dyn ObjectStore>,
        _dir: Option<tempfile::TempDir>,
    }

    impl Site {
        pub fn new(kind: Kind) -> Site {
            match kind {
                Kind::Memory => Site {
                    store: Arc::new(InMemory::new()),
                    _dir: None,
                },
                Kind::Local => {
                    let dir = tempfile::tempdir().unwrap();
                    let fs = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
                    Site {
                        store: Arc::new(fs),
                        _dir: Some(dir),
                    }
                }
                Kind::S3 => {
                    let b = crate::common::s3().expect("S3 backend");
                    let store = object_store::prefix::PrefixStore::new(b.store, b.prefix.as_str());
                    Site {
                        store: Arc::new(store),
                        _dir: None,
                    }
                }
            }
        }

        /// Every object under `.crdt/`, with its bytes, sorted by key.
        pub async fn objects(&self) -> BTreeMap<Path, Bytes> {
            let dir = Path::from(format!("{PREFIX}/.crdt"));
            let metas: Vec<_> = self.store.list(Some(&dir)).try_collect().await.unwrap();
            let mut out = BTreeMap::new();
            for m in metas {
                let b = self
                    .store
                    .get(&m.location)
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                out.insert(m.location, b);
            }
            out
        }

        /// Writes objects: blobs, then change files, then the marker.
        pub async fn put_all(&self, objects: &BTreeMap<Path, Bytes>) {
            let rank = |p: &Path| {
                let s = p.as_ref();
                if s.contains("/blobs/") {
                    0
                } else if s.contains("/ops/") {
                    1
                } else {
                    2
                }
            };
            let mut v: Vec<(&Path, &Bytes)> = objects.iter().collect();
            v.sort_by_key(|(p, _)| (rank(p), (*p).clone()));
            for (p, b) in v {
                self.store
                    .put(p, PutPayload::from(b.clone()))
                    .await
                    .unwrap();
            }
        }
    }

    /// Decoded change files among `objects`.
    pub fn changes_in(objects: &BTreeMap<Path, Bytes>) -> Vec<(ChangeHash, Change)> {
        let layout = Layout::new(PREFIX);
        objects
            .iter()
            .filter_map(|(p, b)| {
                let name = layout.parse_change_key(p).ok()?;
                Some((
                    name.hash,
                    Change::decode(p.as_ref(), b, &name.hash).unwrap(),
                ))
            })
            .collect()
    }

    /// Everything two replicas must agree on.
    #[derive(Debug, PartialEq)]
    pub struct State {
        pub entries: BTreeMap<String, Entry>,
        pub conflicts: Vec<Conflict>,
        pub pending: Vec<PendingChange>,
        pub forks: Vec<Fork>,
        pub rejected: Vec<RejectedChange>,
        pub heads: Vec<ChangeHash>,
    }

    impl State {
        pub fn of_fold(fold: &Fold) -> State {
            let view_index = ViewIndex::build(fold);
            let view = view_index.with(fold);
            State {
                entries: view.entries(),
                conflicts: view.conflicts(),
                pending: fold.pending(),
                forks: fold.forks(),
                rejected: fold.rejected(),
                heads: fold.heads(),
            }
        }

        pub async fn of_repo(repo: &Repo) -> State {
            let s = State::of_fold(repo.fold());
            assert_eq!(s.entries, repo.view().entries());
            assert_eq!(
                repo.list().await.unwrap(),
                s.entries.keys().cloned().collect::<Vec<_>>(),
                "list() must equal the entry keys"
            );
            s
        }
    }

    /// A replica that takes writes: its own bucket and its own Repo handle (actor).
    pub struct Writer {
        pub site: Site,
        pub repo: Repo,
        /// Objects it received from elsewhere (origin, pulls, hand deliveries).
        known: BTreeSet<Path>,
    }

    impl Writer {
        /// Objects this writer produced itself (commits and hand-built changes).
        pub async fn own(&self) -> BTreeMap<Path, Bytes> {
            let mut all = self.site.objects().await;
            all.retain(|p, _| !self.known.contains(p));
            all
        }

        /// Receives objects from elsewhere and refreshes.
        pub async fn receive(&mut self, objects: &BTreeMap<Path, Bytes>) {
            self.site.put_all(objects).await;
            self.known.extend(objects.keys().cloned());
            self.repo.refresh().await.unwrap();
        }

        /// Copies everything `other` holds that this writer lacks, and refreshes.
        pub async fn pull(&mut self, other: &Writer) {
            let objects = other.site.objects().await;
            self.receive(&objects).await;
        }

        /// Writes a hand-built change file into this writer's bucket (no refresh).
        pub async fn put_change(&mut self, change: &Change) -> ChangeHash {
            let bytes = change.encode();
            let hash = ChangeHash::of(&bytes);
            let key = Layout::new(PREFIX).change(&ChangeName {
                hash,
                actor: change.actor,
                seq: change.seq,
            });
            self.site
                .store
                .put(&key, PutPayload::from(bytes))
                .await
                .unwrap();
            hash
        }

        /// A change this writer's bucket holds.
        pub async fn change(&self, hash: ChangeHash) -> Change {
            changes_in(&self.site.objects().await)
                .into_iter()
                .find(|(h, _)| *h == hash)
                .map(|(_, c)| c)
                .unwrap()
        }
    }

    /// A reader that received everything; keeps its bucket alive for blob reads.
    pub struct Reader {
        _site: Site,
        pub repo: Repo,
    }

    impl Reader {
        pub async fn bytes(&self, key: &str) -> Option<Vec<u8>> {
            self.repo.get(key).await.unwrap().map(|b| b.to_vec())
        }

        pub async fn json(&self, key: &str) -> Value {
            let b = self.bytes(key).await.unwrap_or_else(|| panic!("no {key}"));
            serde_json::from_slice(&b).unwrap()
        }

        pub async fn attrs(&self, node: &str) -> Value {
            let key = if node.is_empty() {
                "zarr.json".to_string()
            } else {
                format!("{node}/zarr.json")
            };
            self.json(&key).await["attributes"].clone()
        }

        pub async fn shape(&self, node: &str) -> Value {
            self.json(&format!("{node}/zarr.json")).await["shape"].clone()
        }

        pub async fn list(&self) -> Vec<String> {
            self.repo.list().await.unwrap()
        }

        pub async fn conflicts(&self) -> Vec<Summary> {
            summary(&self.repo.conflicts().await.unwrap())
        }
    }

    /// One side of a conflict: the change and op that wrote it.
    pub type Side = (ChangeHash, u32);
    /// A conflict reduced to what the matrix specifies: key, target, winner, losers.
    pub type Summary = (String, ConflictTarget, Side, Vec<Side>);

    pub fn summary(cs: &[Conflict]) -> Vec<Summary> {
        cs.iter()
            .map(|c| {
                (
                    c.key.clone(),
                    c.target.clone(),
                    (c.winner.change, c.winner.op),
                    c.losers.iter().map(|l| (l.change, l.op)).collect(),
                )
            })
            .collect()
    }

    /// An origin bucket with the common state, and writers forked from it.
    pub struct Lab {
        pub kind: Kind,
        pub origin: Site,
        /// The handle that writes the common state into the origin.
        pub base: Repo,
    }

    impl Lab {
        pub async fn new(kind: Kind) -> Lab {
            let origin = Site::new(kind);
            let base = Repo::init(origin.store.clone(), PREFIX).await.unwrap();
            Lab { kind, origin, base }
        }

        /// A new writer: its own bucket holding a copy of the origin.
        pub async fn writer(&self) -> Writer {
            let site = Site::new(self.kind);
            let objects = self.origin.objects().await;
            site.put_all(&objects).await;
            let repo = Repo::open(site.store.clone(), PREFIX).await.unwrap();
            Writer {
                site,
                repo,
                known: objects.into_keys().collect(),
            }
        }

        pub async fn writers(&self, n: usize) -> Vec<Writer> {
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(self.writer().await);
            }
            v
        }

        /// Delivers what the writers produced to fresh readers in every order (and all
        /// at once), folds every order of the individual changes (with duplicates),
        /// lets every writer pull every other, and asserts that all agree. Returns the
        /// reader of the first order.
        pub async fn converge(&self, writers: &mut [Writer]) -> Reader {
            let origin = self.origin.objects().await;
            let mut groups = Vec::new();
            for w in writers.iter() {
                groups.push(w.own().await);
            }
            let mut reference: Option<State> = None;
            let mut check = |st: State, what: String| match &reference {
                None => reference = Some(st),
                Some(r) => assert_eq!(&st, r, "diverged: {what}"),
            };
            // Files reported as skipped (e.g. rejected changes), by key: every reader
            // that listed the same files reports the same ones.
            let mut reported: Option<Vec<Problem>> = None;
            let mut check_problems = |p: Vec<Problem>, what: String| match &reported {
                None => reported = Some(p),
                Some(r) => assert_eq!(&p, r, "problems differ: {what}"),
            };

            // 1. Store level: one refresh per writer's objects, in every order.
            let mut first = None;
            for perm in permutations(groups.len()) {
                let site = Site::new(self.kind);
                site.put_all(&origin).await;
                let mut repo = Repo::open(site.store.clone(), PREFIX).await.unwrap();
                for &g in &perm {
                    site.put_all(&groups[g]).await;
                    repo.refresh().await.unwrap();
                }
                check(
                    State::of_repo(&repo).await,
                    format!("delivery order {perm:?}"),
                );
                check_problems(repo.problems(), format!("delivery order {perm:?}"));
                if first.is_none() {
                    first = Some(Reader { _site: site, repo });
                }
            }

            // 2. Store level: everything at once.
            let site = Site::new(self.kind);
            site.put_all(&origin).await;
            for g in &groups {
                site.put_all(g).await;
            }
            let repo = Repo::open(site.store.clone(), PREFIX).await.unwrap();
            check(State::of_repo(&repo).await, "one open of everything".into());
            check_problems(repo.problems(), "one open of everything".into());

            // 3. Fold level: every order of the individual changes, and duplicates.
            let mut all: BTreeMap<ChangeHash, Change> = changes_in(&origin).into_iter().collect();
            for g in &groups {
                all.extend(changes_in(g));
            }
            let all: Vec<(ChangeHash, Change)> = all.into_iter().collect();
            let id = self.base.id();
            let orders = change_orders(all.len());
            for (i, order) in orders.iter().enumerate() {
                let seq = order.iter().map(|&k| all[k].clone());
                let fold = Fold::from_changes(id, seq.clone());
                check(State::of_fold(&fold), format!("fold order {order:?}"));
                if i < 4 {
                    let twice = Fold::from_changes(id, seq.clone().chain(seq.rev()));
                    check(
                        State::of_fold(&twice),
                        format!("fold order {order:?} twice"),
                    );
                }
            }

            // 4. Every writer pulls every other writer's objects.
            for (i, w) in writers.iter_mut().enumerate() {
                for (j, g) in groups.iter().enumerate() {
                    if i != j {
                        w.receive(g).await;
                    }
                }
                check(State::of_repo(&w.repo).await, format!("writer {i}"));
            }
            first.unwrap()
        }
    }

    /// Every permutation of `0..n`.
    pub fn permutations(n: usize) -> Vec<Vec<usize>> {
        fn go(prefix: &mut Vec<usize>, left: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            if left.is_empty() {
                out.push(prefix.clone());
                return;
            }
            for i in 0..left.len() {
                let x = left.remove(i);
                prefix.push(x);
                go(prefix, left, out);
                prefix.pop();
                left.insert(i, x);
            }
        }
        let mut out = Vec::new();
        go(&mut Vec::new(), &mut (0..n).collect(), &mut out);
        out
    }

    /// Orders of `n` changes to fold: all of them up to 6, else a fixed sample.
    fn change_orders(n: usize) -> Vec<Vec<usize>> {
        if n <= 6 {
            return permutations(n);
        }
        let mut out = vec![(0..n).collect::<Vec<_>>(), (0..n).rev().collect()];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200 {
            let mut v: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.swap(i, (x % (i as u64 + 1)) as usize);
            }
            out.push(v);
        }
        out
    }

    /// Lets the clock advance so the next commit's HLC is strictly greater.
    pub async fn later() {
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }

    /// Zarr v3 metadata of a small array.
    pub fn array(shape: &[u64], chunks: &[u64], dtype: &str) -> Value {
        json!({
            "zarr_format": 3, "node_type": "array", "shape": shape, "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0, "codecs": [{"name": "bytes"}]
        })
    }

    /// 1-D uint8 array of 8 elements in chunks of 2.
    pub fn u8x8() -> Value {
        array(&[8], &[2], "uint8")
    }

    pub fn attrs(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// The side of a commit whose op `op` is concerned.
    pub fn at(h: ChangeHash, op: u32) -> Side {
        (h, op)
    }

    pub fn conflict(key: &str, target: ConflictTarget, winner: Side, losers: &[Side]) -> Summary {
        (key.to_string(), target, winner, losers.to_vec())
    }

    pub fn attr(k: &str) -> ConflictTarget {
        ConflictTarget::Attribute(k.to_string())
    }
}

/// Commits the session; the change hash.
macro_rules! commit {
    ($w:expr, |$s:ident| $body:block) => {{
        let mut $s = $w.session();
        $body;
        $s.commit(&mut $w, None).await.unwrap().unwrap()
    }};
}

/// Root group plus the given setup, committed into the origin.
async fn lab_with(kind: Kind, setup: impl FnOnce(&mut crzarr::WriteSession)) -> Lab {
    let mut lab = Lab::new(kind).await;
    {
        let mut s = lab.base.session();
        s.create_group("", Map::new()).unwrap();
        setup(&mut s);
        s.commit(&mut lab.base, Some("base"))
            .await
            .unwrap()
            .unwrap();
    }
    lab
}

fn base_head(lab: &Lab) -> (ChangeHash, Hlc) {
    let heads = lab.base.fold().heads();
    assert_eq!(heads.len(), 1);
    (heads[0], lab.base.fold().hlc_of(&heads[0]).unwrap())
}

// =====================================================================================
// Nodes: concurrent creates at one path
// =====================================================================================

#[tokio::test]
async fn matrix_create_group_vs_group_merges() {
    for kind in kinds() {
        let lab = lab_with(kind, |_| {}).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| {
            s.create_group("g", attrs(json!({"a": 1, "k": "A"})))
                .unwrap()
        });
        later().await;
        let hb = commit!(w[1].repo, |s| {
            s.create_group("g", attrs(json!({"b": 2, "k": "B"})))
                .unwrap()
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.list().await, ["g/zarr.json", "zarr.json"]);
        assert_eq!(r.attrs("g").await, json!({"a": 1, "b": 2, "k": "B"}));
        assert_eq!(
            r.conflicts().await,
            [conflict("g/zarr.json", attr("k"), at(hb, 0), &[at(ha, 0)])]
        );
    }
}

#[tokio::test]
async fn matrix_create_array_same_meta_merges() {
    for kind in kinds() {
        let lab = lab_with(kind, |_| {}).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| {
            s.create_array("a", &u8x8()).unwrap();
            s.set("a/c/0", vec![1u8, 1]).unwrap();
            s.set("a/c/1", vec![2u8, 2]).unwrap();
        });
        later().await;
        let hb = commit!(w[1].repo, |s| {
            s.create_array("a", &u8x8()).unwrap();
            s.set("a/c/1", vec![9u8, 9]).unwrap();
            s.set("a/c/2", vec![3u8, 3]).unwrap();
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(
            r.list().await,
            ["a/c/0", "a/c/1", "a/c/2", "a/zarr.json", "zarr.json"]
        );
        assert_eq!(r.bytes("a/c/0").await.unwrap(), [1, 1]);
        assert_eq!(r.bytes("a/c/1").await.unwrap(), [9, 9]);
        assert_eq!(r.bytes("a/c/2").await.unwrap(), [3, 3]);
        assert_eq!(r.shape("a").await, json!([8]));
        // Only the chunk both wrote conflicts; the node itself does not.
        assert_eq!(
            r.conflicts().await,
            [conflict(
                "a/c/1",
                ConflictTarget::Chunk,
                at(hb, 1),
                &[at(ha, 2)]
            )]
        );
    }
}

#[tokio::test]
async fn matrix_create_array_same_meta_different_shape_merges_max() {
    for kind in kinds() {
        let lab = lab_with(kind, |_| {}).await;
        let mut w = lab.writers(2).await;
        commit!(w[0].repo, |s| {
            s.create_array("a", &array(&[8, 2], &[2, 2], "uint8"))
                .unwrap()
        });
        later().await;
        commit!(w[1].repo, |s| {
            s.create_array("a", &array(&[4, 6], &[2, 2], "uint8"))
                .unwrap()
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.shape("a").await, json!([8, 6]));
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_create_array_different_meta_one_winner() {
    for kind in kinds() {
        let lab = lab_with(kind, |_| {}).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| {
            s.create_array("a", &u8x8()).unwrap();
            s.set("a/c/0", vec![1u8, 1]).unwrap();
            s.set("a/c/3", vec![7u8, 7]).unwrap();
            s.set_attr("a", "from", json!("A")).unwrap();
        });
        later().await;
        let hb = commit!(w[1].repo, |s| {
            s.create_array("a", &array(&[8], &[2], "uint16")).unwrap();
            s.set("a/c/0", vec![2u8, 0, 2, 0]).unwrap();
        });
        let r = lab.converge(&mut w).await;
        let meta = r.json("a/zarr.json").await;
        assert_eq!(meta["data_type"], "uint16");
        assert_eq!(meta["attributes"], json!({}));
        // The loser's chunks and attributes never show under the winner.
        assert_eq!(r.list().await, ["a/c/0", "a/zarr.json", "zarr.json"]);
        assert_eq!(r.bytes("a/c/0").await.unwrap(), [2, 0, 2, 0]);
        assert_eq!(r.bytes("a/c/3").await, None);
        assert_eq!(
            r.conflicts().await,
            [conflict(
                "a/zarr.json",
                ConflictTarget::Node,
                at(hb, 0),
                &[at(ha, 0)]
            )]
        );
    }
}

#[tokio::test]
async fn matrix_loser_shows_when_winner_deleted() {
    for kind in kinds() {
        // X (w0) loses to Y (w1); w2 saw only Y and deletes it. X was hidden, never
        // destroyed: it shows again with its own chunks and attributes.
        let lab = lab_with(kind, |_| {}).await;
        let mut w = lab.writers(3).await;
        commit!(w[0].repo, |s| {
            s.create_array("a", &u8x8()).unwrap();
            s.set("a/c/0", vec![1u8, 1]).unwrap();
            s.set_attr("a", "from", json!("X")).unwrap();
        });
        later().await;
        commit!(w[1].repo, |s| {
            s.create_array("a", &array(&[8], &[2], "uint16")).unwrap();
            s.set("a/c/1", vec![2u8, 0, 2, 0]).unwrap();
        });
        let (done, rest) = w.split_at_mut(2);
        rest[0].pull(&done[1]).await;
        commit!(rest[0].repo, |s| { s.delete("a/zarr.json").unwrap() });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.json("a/zarr.json").await["data_type"], "uint8");
        assert_eq!(r.attrs("a").await, json!({"from": "X"}));
        assert_eq!(r.list().await, ["a/c/0", "a/zarr.json", "zarr.json"]);
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_create_array_three_way() {
    for kind in kinds() {
        // Three different metadata: one winner, two losers in descending stamp order.
        let lab = lab_with(kind, |_| {}).await;
        let mut w = lab.writers(3).await;
        let mut h = Vec::new();
        for (i, dtype) in ["uint8", "uint16", "int32"].into_iter().enumerate() {
            h.push(commit!(w[i].repo, |s| {
                s.create_array("a", &array(&[8], &[2], dtype)).unwrap()
            }));
            later().await;
        }
        let r = lab.converge(&mut w).await;
        assert_eq!(r.json("a/zarr.json").await["data_type"], "int32");
        assert_eq!(
            r.conflicts().await,
            [conflict(
                "a/zarr.json",
                ConflictTarget::Node,
                at(h[2], 0),
                &[at(h[1], 0), at(h[0], 0)]
            )]
        );

        // The winner's compatible incarnations merge; only the others lose.
        let lab = lab_with(kind, |_| {}).await;
        let mut w = lab.writers(3).await;
        let mut h = Vec::new();
        for (i, dtype) in ["uint8", "uint16", "uint8"].into_iter().enumerate() {
            h.push(commit!(w[i].repo, |s| {
                s.create_array("a", &array(&[8], &[2], dtype)).unwrap();
                s.set(&format!("a/c/{i}"), vec![i as u8; 2]).unwrap();
            }));
            later().await;
        }
        let r = lab.converge(&mut w).await;
        assert_eq!(r.json("a/zarr.json").await["data_type"], "uint8");
        assert_eq!(
            r.list().await,
            ["a/c/0", "a/c/2", "a/zarr.json", "zarr.json"]
        );
        assert_eq!(
            r.conflicts().await,
            [conflict(
                "a/zarr.json",
                ConflictTarget::Node,
                at(h[2], 0),
                &[at(h[1], 0)]
            )]
        );
    }
}

#[tokio::test]
async fn matrix_group_vs_array_same_path() {
    for kind in kinds() {
        // The group is created last: it wins; the array and its chunks are hidden.
        let lab = lab_with(kind, |_| {}).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| {
            s.create_array("n", &u8x8()).unwrap();
            s.set("n/c/0", vec![1u8, 1]).unwrap();
        });
        later().await;
        let hb = commit!(w[1].repo, |s| {
            s.create_group("n", attrs(json!({"g": true}))).unwrap();
            s.create_group("n/sub", Map::new()).unwrap();
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(
            r.list().await,
            ["n/sub/zarr.json", "n/zarr.json", "zarr.json"]
        );
        assert_eq!(r.json("n/zarr.json").await["node_type"], "group");
        assert_eq!(r.attrs("n").await, json!({"g": true}));
        assert_eq!(
            r.conflicts().await,
            [conflict(
                "n/zarr.json",
                ConflictTarget::Node,
                at(hb, 0),
                &[at(ha, 0)]
            )]
        );

        // The array is created last: it wins; the group and its subtree are hidden.
        let lab = lab_with(kind, |_| {}).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| {
            s.create_group("n", attrs(json!({"g": true}))).unwrap();
            s.create_group("n/sub", Map::new()).unwrap();
        });
        later().await;
        let hb = commit!(w[1].repo, |s| {
            s.create_array("n", &u8x8()).unwrap();
            s.set("n/c/0", vec![1u8, 1]).unwrap();
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.list().await, ["n/c/0", "n/zarr.json", "zarr.json"]);
        assert_eq!(r.json("n/zarr.json").await["node_type"], "array");
        assert_eq!(r.attrs("n").await, json!({}));
        assert_eq!(
            r.conflicts().await,
            [
                conflict(
                    "n/sub/zarr.json",
                    ConflictTarget::Node,
                    at(hb, 0),
                    &[at(ha, 1)]
                ),
                conflict("n/zarr.json", ConflictTarget::Node, at(hb, 0), &[at(ha, 0)]),
            ]
        );
    }
}

#[tokio::test]
async fn matrix_node_under_array_hidden() {
    for kind in kinds() {
        let lab = lab_with(kind, |_| {}).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| { s.create_array("a", &u8x8()).unwrap() });
        let hb = commit!(w[1].repo, |s| {
            s.create_group("a/b", Map::new()).unwrap();
            s.create_array("a/b/x", &u8x8()).unwrap();
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.list().await, ["a/zarr.json", "zarr.json"]);
        assert_eq!(r.json("a/zarr.json").await["node_type"], "array");
        assert_eq!(
            r.conflicts().await,
            [
                conflict(
                    "a/b/x/zarr.json",
                    ConflictTarget::Node,
                    at(ha, 0),
                    &[at(hb, 1)]
                ),
                conflict(
                    "a/b/zarr.json",
                    ConflictTarget::Node,
                    at(ha, 0),
                    &[at(hb, 0)]
                ),
            ]
        );
    }
}

// =====================================================================================
// Nodes: delete against everything
// =====================================================================================

/// Root group and array `a` (uint8, 8 in chunks of 2) with chunk `c/0` and attribute `u`.
async fn lab_with_array(kind: Kind) -> Lab {
    lab_with(kind, |s| {
        s.create_array("a", &u8x8()).unwrap();
        s.set("a/c/0", vec![5u8, 5]).unwrap();
        s.set_attr("a", "u", json!("m")).unwrap();
    })
    .await
}

#[tokio::test]
async fn matrix_delete_node_vs_concurrent_chunk_write() {
    for kind in kinds() {
        let lab = lab_with_array(kind).await;
        let mut w = lab.writers(2).await;
        commit!(w[0].repo, |s| { s.delete("a/zarr.json").unwrap() });
        let hb = commit!(w[1].repo, |s| {
            s.set("a/c/0", vec![1u8, 1]).unwrap();
            s.set("a/c/1", vec![9u8; 5000]).unwrap();
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.list().await, ["zarr.json"]);
        assert_eq!(r.bytes("a/c/1").await, None);
        assert_eq!(r.conflicts().await, []);
        // The write is valid and applied; it just has no effect.
        assert!(r.repo.fold().contains(&hb));
        assert_eq!(r.repo.rejected(), []);
    }
}

#[tokio::test]
async fn matrix_edit_to_deleted_incarnation_dropped() {
    for kind in kinds() {
        let lab = lab_with_array(kind).await;
        let mut w = lab.writers(2).await;
        // The delete is the OLDER change: an edit never brings a node back.
        commit!(w[0].repo, |s| { s.delete("a/zarr.json").unwrap() });
        later().await;
        commit!(w[1].repo, |s| {
            s.set_attr("a", "k", json!(1)).unwrap();
            s.delete_attr("a", "u").unwrap();
            s.resize("a", &[16]).unwrap();
            s.delete("a/c/0").unwrap();
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.list().await, ["zarr.json"]);
        assert_eq!(r.bytes("a/zarr.json").await, None);
        assert_eq!(r.conflicts().await, []);
        assert_eq!(r.repo.rejected(), []);
    }
}

#[tokio::test]
async fn matrix_delete_vs_delete_idempotent() {
    for kind in kinds() {
        let lab = lab_with(kind, |s| {
            s.create_group("g", attrs(json!({"t": 1}))).unwrap();
            s.create_array("g/a", &u8x8()).unwrap();
            s.set("g/a/c/0", vec![1u8, 1]).unwrap();
        })
        .await;
        let mut w = lab.writers(2).await;
        commit!(w[0].repo, |s| { s.delete_prefix("g/").unwrap() });
        commit!(w[1].repo, |s| { s.delete("g/a/zarr.json").unwrap() });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.list().await, ["zarr.json"]);
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_recreate_after_concurrent_delete_survives() {
    for kind in kinds() {
        // Re-create with the same metadata: a new incarnation, untouched by the delete.
        let lab = lab_with_array(kind).await;
        let mut w = lab.writers(2).await;
        commit!(w[0].repo, |s| { s.delete("a/zarr.json").unwrap() });
        later().await;
        commit!(w[1].repo, |s| {
            s.delete("a/zarr.json").unwrap();
            s.create_array("a", &u8x8()).unwrap();
            s.set("a/c/1", vec![4u8, 4]).unwrap();
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.list().await, ["a/c/1", "a/zarr.json", "zarr.json"]);
        assert_eq!(r.bytes("a/c/0").await, None, "old incarnation's chunk");
        assert_eq!(r.attrs("a").await, json!({}), "old incarnation's attribute");
        assert_eq!(r.conflicts().await, []);

        // Replace with different metadata, delete committed AFTER: still survives.
        let lab = lab_with_array(kind).await;
        let mut w = lab.writers(2).await;
        commit!(w[1].repo, |s| {
            s.create_array("a", &array(&[4], &[4], "float32")).unwrap()
        });
        later().await;
        commit!(w[0].repo, |s| { s.delete_prefix("a").unwrap() });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.list().await, ["a/zarr.json", "zarr.json"]);
        assert_eq!(r.json("a/zarr.json").await["data_type"], "float32");
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_delete_vs_unseen_concurrent_create_survives() {
    for kind in kinds() {
        let lab = lab_with(kind, |_| {}).await;
        // w0 creates g; w1 sees it and deletes it; w2 never saw it and creates g too.
        let mut w = lab.writers(3).await;
        commit!(w[0].repo, |s| {
            s.create_group("g", attrs(json!({"from": 0}))).unwrap()
        });
        let (w0, rest) = w.split_at_mut(1);
        rest[0].pull(&w0[0]).await;
        commit!(rest[0].repo, |s| { s.delete("g/zarr.json").unwrap() });
        commit!(rest[1].repo, |s| {
            s.create_group("g", attrs(json!({"from": 2}))).unwrap()
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.list().await, ["g/zarr.json", "zarr.json"]);
        assert_eq!(r.attrs("g").await, json!({"from": 2}));
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_child_created_under_concurrently_deleted_group() {
    for kind in kinds() {
        let lab = lab_with(kind, |s| {
            s.create_group("g", attrs(json!({"title": "x"}))).unwrap();
            s.create_array("g/a", &u8x8()).unwrap();
            s.set("g/a/c/0", vec![1u8, 1]).unwrap();
        })
        .await;
        let mut w = lab.writers(2).await;
        commit!(w[0].repo, |s| { s.delete("g/zarr.json").unwrap() });
        commit!(w[1].repo, |s| {
            s.create_group("g/new", attrs(json!({"k": 1}))).unwrap();
            s.set("g/a/c/1", vec![2u8, 2]).unwrap();
        });
        let r = lab.converge(&mut w).await;
        // The new child survives; the deleted group shows as an implicit empty group;
        // the existing child was in the deleted subtree, so its edit is dropped.
        assert_eq!(
            r.list().await,
            ["g/new/zarr.json", "g/zarr.json", "zarr.json"]
        );
        assert_eq!(r.attrs("g").await, json!({}));
        assert_eq!(r.attrs("g/new").await, json!({"k": 1}));
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_chunks_never_cross_incarnations() {
    for kind in kinds() {
        let lab = lab_with_array(kind).await;
        let mut w = lab.writers(2).await;
        // w0 replaces the uint8 array by a uint16 one; w1 writes to the old one.
        commit!(w[0].repo, |s| {
            s.create_array("a", &array(&[8], &[2], "uint16")).unwrap()
        });
        later().await;
        commit!(w[1].repo, |s| {
            s.set("a/c/0", vec![1u8, 1]).unwrap();
            s.set("a/c/1", vec![2u8, 2]).unwrap();
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.json("a/zarr.json").await["data_type"], "uint16");
        assert_eq!(r.list().await, ["a/zarr.json", "zarr.json"]);
        assert_eq!(r.bytes("a/c/0").await, None);
        assert_eq!(r.bytes("a/c/1").await, None);
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_validity_ignores_concurrent_state() {
    for kind in kinds() {
        // w0 replaces array `a` by a group; w1's chunk ops and resize target the
        // array incarnation. They are valid (their causal past says `a` is an array)
        // whatever arrived first, and have no effect.
        let lab = lab_with_array(kind).await;
        let mut w = lab.writers(2).await;
        commit!(w[0].repo, |s| { s.create_group("a", Map::new()).unwrap() });
        let hb = commit!(w[1].repo, |s| {
            s.set("a/c/1", vec![2u8, 2]).unwrap();
            s.resize("a", &[4]).unwrap();
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.json("a/zarr.json").await["node_type"], "group");
        assert_eq!(r.list().await, ["a/zarr.json", "zarr.json"]);
        assert_eq!(r.repo.rejected(), []);
        assert!(r.repo.fold().contains(&hb));
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_write_through_merged_node_vs_delete_of_its_target() {
    for kind in kinds() {
        // Arrays X (w0, later: the winner) and Y (w1) merge at `a`. w2 saw only X and
        // deletes it. w3 saw both and writes through the merged node: its ops target
        // X and supersede what they observed in X and Y. X's delete drops w3's new
        // values; the supersession of Y's entries still holds, in every order.
        let lab = lab_with(kind, |_| {}).await;
        let mut w = lab.writers(4).await;
        let hy = commit!(w[1].repo, |s| {
            s.create_array("a", &u8x8()).unwrap();
            s.set_attr("a", "k", json!("y")).unwrap();
            s.set_attr("a", "keep", json!("y")).unwrap();
            s.set("a/c/0", vec![1u8, 1]).unwrap();
            s.set("a/c/1", vec![2u8, 2]).unwrap();
        });
        later().await;
        commit!(w[0].repo, |s| { s.create_array("a", &u8x8()).unwrap() });
        let (head, tail) = w.split_at_mut(2);
        tail[0].pull(&head[0]).await;
        commit!(tail[0].repo, |s| { s.delete("a/zarr.json").unwrap() });
        tail[1].pull(&head[0]).await;
        tail[1].pull(&head[1]).await;
        commit!(tail[1].repo, |s| {
            s.set_attr("a", "k", json!("w")).unwrap();
            s.set("a/c/0", vec![3u8, 3]).unwrap();
            s.resize("a", &[16]).unwrap();
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.list().await, ["a/c/1", "a/zarr.json", "zarr.json"]);
        assert_eq!(r.attrs("a").await, json!({"keep": "y"}));
        assert_eq!(r.shape("a").await, json!([8]));
        assert_eq!(r.bytes("a/c/1").await.unwrap(), [2, 2]);
        assert_eq!(r.conflicts().await, []);
        assert!(r.repo.fold().contains(&hy));
    }
}

// =====================================================================================
// Attributes
// =====================================================================================

async fn lab_with_group(kind: Kind) -> Lab {
    lab_with(kind, |s| {
        s.create_group("g", attrs(json!({"k": "old"}))).unwrap()
    })
    .await
}

#[tokio::test]
async fn matrix_attr_different_keys_both_survive() {
    for kind in kinds() {
        let lab = lab_with_group(kind).await;
        let mut w = lab.writers(2).await;
        commit!(w[0].repo, |s| { s.set_attr("g", "x", json!(1)).unwrap() });
        commit!(w[1].repo, |s| {
            s.set_attr("g", "y", json!({"deep": [1, 2]})).unwrap()
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(
            r.attrs("g").await,
            json!({"k": "old", "x": 1, "y": {"deep": [1, 2]}})
        );
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_attr_same_key_winner_reported() {
    for kind in kinds() {
        let lab = lab_with_group(kind).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| { s.set_attr("g", "k", json!("a")).unwrap() });
        later().await;
        let hb = commit!(w[1].repo, |s| { s.set_attr("g", "k", json!("b")).unwrap() });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.attrs("g").await, json!({"k": "b"}));
        let cs = r.repo.conflicts().await.unwrap();
        assert_eq!(
            summary(&cs),
            [conflict("g/zarr.json", attr("k"), at(hb, 0), &[at(ha, 0)])]
        );
        assert_eq!(cs[0].winner.value, "\"b\"");
        assert_eq!(cs[0].losers[0].value, "\"a\"");
    }
}

#[tokio::test]
async fn matrix_attr_set_vs_delete() {
    for kind in kinds() {
        // The set is later: it wins.
        let lab = lab_with_group(kind).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| { s.delete_attr("g", "k").unwrap() });
        later().await;
        let hb = commit!(w[1].repo, |s| {
            s.set_attr("g", "k", json!("new")).unwrap()
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.attrs("g").await, json!({"k": "new"}));
        let cs = r.repo.conflicts().await.unwrap();
        assert_eq!(
            summary(&cs),
            [conflict("g/zarr.json", attr("k"), at(hb, 0), &[at(ha, 0)])]
        );
        assert_eq!(cs[0].losers[0].value, "(deleted)");

        // The delete is later: it wins.
        let lab = lab_with_group(kind).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| {
            s.set_attr("g", "k", json!("new")).unwrap()
        });
        later().await;
        let hb = commit!(w[1].repo, |s| { s.delete_attr("g", "k").unwrap() });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.attrs("g").await, json!({}));
        let cs = r.repo.conflicts().await.unwrap();
        assert_eq!(
            summary(&cs),
            [conflict("g/zarr.json", attr("k"), at(hb, 0), &[at(ha, 0)])]
        );
        assert_eq!(cs[0].winner.value, "(deleted)");
    }
}

#[tokio::test]
async fn matrix_attr_delete_vs_delete() {
    for kind in kinds() {
        let lab = lab_with_group(kind).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| { s.delete_attr("g", "k").unwrap() });
        later().await;
        let hb = commit!(w[1].repo, |s| { s.delete_attr("g", "k").unwrap() });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.attrs("g").await, json!({}));
        // Two live tombstones: reported like any register with two live entries.
        assert_eq!(
            r.conflicts().await,
            [conflict("g/zarr.json", attr("k"), at(hb, 0), &[at(ha, 0)])]
        );
    }
}

// =====================================================================================
// Array metadata fields (registers: fill_value, dimension_names, extension fields)
// =====================================================================================

/// `u8x8()` with the attributes of [`lab_with_array`] and some fields replaced, as a
/// `zarr.json` write.
fn u8x8_with(fields: serde_json::Value) -> Vec<u8> {
    let mut doc = u8x8();
    doc["attributes"] = json!({"u": "m"});
    for (k, v) in fields.as_object().unwrap() {
        doc[k] = v.clone();
    }
    doc.to_string().into_bytes()
}

fn field(k: &str) -> ConflictTarget {
    ConflictTarget::Field(k.to_string())
}

#[tokio::test]
async fn matrix_field_edit_keeps_chunks() {
    for kind in kinds() {
        let lab = lab_with_array(kind).await;
        let mut w = lab.writers(1).await;
        commit!(w[0].repo, |s| {
            s.set(
                "a/zarr.json",
                u8x8_with(json!({"fill_value": 7, "dimension_names": ["x"]})),
            )
            .unwrap();
            assert_eq!(s.replaced().count(), 0);
        });
        let r = lab.converge(&mut w).await;
        let doc = r.json("a/zarr.json").await;
        assert_eq!(doc["fill_value"], json!(7));
        assert_eq!(doc["dimension_names"], json!(["x"]));
        // The chunk and the attribute written before the edit are still there.
        assert_eq!(r.bytes("a/c/0").await.unwrap(), [5, 5]);
        assert_eq!(r.attrs("a").await, json!({"u": "m"}));
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_field_same_field_winner_reported() {
    for kind in kinds() {
        let lab = lab_with_array(kind).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| {
            s.set("a/zarr.json", u8x8_with(json!({"fill_value": 1})))
                .unwrap()
        });
        later().await;
        let hb = commit!(w[1].repo, |s| {
            s.set("a/zarr.json", u8x8_with(json!({"fill_value": 2})))
                .unwrap()
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.json("a/zarr.json").await["fill_value"], json!(2));
        assert_eq!(r.bytes("a/c/0").await.unwrap(), [5, 5]);
        let cs = r.repo.conflicts().await.unwrap();
        assert_eq!(
            summary(&cs),
            [conflict(
                "a/zarr.json",
                field("fill_value"),
                at(hb, 0),
                &[at(ha, 0)]
            )]
        );
        assert_eq!(cs[0].winner.value, "2");
        assert_eq!(cs[0].losers[0].value, "1");
    }
}

#[tokio::test]
async fn matrix_field_different_fields_both_apply() {
    for kind in kinds() {
        let lab = lab_with_array(kind).await;
        let mut w = lab.writers(2).await;
        commit!(w[0].repo, |s| {
            s.set(
                "a/zarr.json",
                u8x8_with(json!({"fill_value": 3, "attributes": {"u": "m"}})),
            )
            .unwrap()
        });
        commit!(w[1].repo, |s| {
            s.set(
                "a/zarr.json",
                u8x8_with(json!({"dimension_names": ["t"], "attributes": {"u": "m", "v": 1}})),
            )
            .unwrap()
        });
        let r = lab.converge(&mut w).await;
        let doc = r.json("a/zarr.json").await;
        assert_eq!(doc["fill_value"], json!(3));
        assert_eq!(doc["dimension_names"], json!(["t"]));
        assert_eq!(doc["attributes"], json!({"u": "m", "v": 1}));
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_field_remove_vs_set() {
    for kind in kinds() {
        let lab = lab_with(kind, |s| {
            let mut doc = u8x8();
            doc["dimension_names"] = json!(["x"]);
            doc["attributes"] = json!({"u": "m"});
            s.create_array("a", &doc).unwrap();
        })
        .await;
        let mut w = lab.writers(2).await;
        // Removing a field the array was created with, then a later concurrent set.
        let ha = commit!(w[0].repo, |s| {
            s.set("a/zarr.json", u8x8_with(json!({}))).unwrap()
        });
        later().await;
        let hb = commit!(w[1].repo, |s| {
            s.set("a/zarr.json", u8x8_with(json!({"dimension_names": ["y"]})))
                .unwrap()
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.json("a/zarr.json").await["dimension_names"], json!(["y"]));
        let cs = r.repo.conflicts().await.unwrap();
        assert_eq!(
            summary(&cs),
            [conflict(
                "a/zarr.json",
                field("dimension_names"),
                at(hb, 0),
                &[at(ha, 0)]
            )]
        );
        assert_eq!(cs[0].losers[0].value, "(deleted)");

        // The removal is later: the field is gone, the create's value does not return.
        let lab = lab_with(kind, |s| {
            let mut doc = u8x8();
            doc["dimension_names"] = json!(["x"]);
            doc["attributes"] = json!({"u": "m"});
            s.create_array("a", &doc).unwrap();
        })
        .await;
        let mut w = lab.writers(2).await;
        commit!(w[0].repo, |s| {
            s.set("a/zarr.json", u8x8_with(json!({"dimension_names": ["y"]})))
                .unwrap()
        });
        later().await;
        commit!(w[1].repo, |s| {
            s.set("a/zarr.json", u8x8_with(json!({}))).unwrap()
        });
        let r = lab.converge(&mut w).await;
        let doc = r.json("a/zarr.json").await;
        assert!(doc.get("dimension_names").is_none(), "{doc}");
    }
}

#[tokio::test]
async fn matrix_field_edit_vs_concurrent_layout_change() {
    for kind in kinds() {
        let lab = lab_with_array(kind).await;
        let mut w = lab.writers(2).await;
        // One writer edits a field; the other changes the codecs, which replaces the
        // array: the edit targeted the old incarnation and is dropped with it.
        commit!(w[0].repo, |s| {
            s.set("a/zarr.json", u8x8_with(json!({"fill_value": 9})))
                .unwrap()
        });
        commit!(w[1].repo, |s| {
            s.set(
                "a/zarr.json",
                u8x8_with(json!({"codecs": [{"name": "bytes"}, {"name": "crc32c"}]})),
            )
            .unwrap();
            assert_eq!(s.replaced().collect::<Vec<_>>(), ["a"]);
        });
        let r = lab.converge(&mut w).await;
        let doc = r.json("a/zarr.json").await;
        assert_eq!(doc["fill_value"], json!(0));
        assert_eq!(
            doc["codecs"],
            json!([{"name": "bytes"}, {"name": "crc32c"}])
        );
        assert_eq!(r.bytes("a/c/0").await, None);
        assert_eq!(r.repo.rejected(), []);
    }
}

#[tokio::test]
async fn matrix_field_edit_of_a_group_or_a_layout_field_is_rejected() {
    let lab = lab_with_array(Kind::Memory).await;
    let (head, hlc) = base_head(&lab);
    // The base change: op 0 creates the root group, op 1 array `a`.
    let (root, array) = (OpRef::Change(head, 0), OpRef::Change(head, 1));
    let op = |node: OpRef, field: &str, value: &str| Op::SetMetaField {
        node,
        field: field.into(),
        value: value.into(),
        observed: vec![],
    };
    let actor = ActorId::generate();
    let mk = |seq, ops| Change {
        repo: lab.base.id(),
        actor,
        seq,
        deps: vec![head],
        hlc: Hlc(hlc.0 + 1),
        wall_ms: 1,
        message: None,
        ops,
    };
    let decode = |c: &Change| {
        let bytes = c.encode();
        let hash = ChangeHash::of(&bytes);
        Change::decode("k", &bytes, &hash).map(|c| (hash, c))
    };
    // The fold refuses a field edit of a group, and dimension names that do not match
    // the array's dimensions.
    let base = changes_in(&lab.origin.objects().await);
    for (seq, ops, why) in [
        (
            1,
            vec![op(root, "fill_value", "0")],
            "op 0: metadata field edit on a group",
        ),
        (
            2,
            vec![op(array, "dimension_names", r#"["x","y"]"#)],
            "dimension",
        ),
    ] {
        let (hash, change) = decode(&mk(seq, ops)).unwrap();
        let fold = Fold::from_changes(lab.base.id(), base.iter().cloned().chain([(hash, change)]));
        let rejected = fold.rejected();
        assert_eq!(rejected.len(), 1, "{why}");
        assert!(rejected[0].reason.contains(why), "{}", rejected[0].reason);
    }
    // Decoding refuses fields that are not registers, and removing `fill_value`.
    for field in [
        "codecs",
        "data_type",
        "shape",
        "attributes",
        "chunk_grid",
        "node_type",
    ] {
        let err = decode(&mk(3, vec![op(array, field, "1")])).unwrap_err();
        assert!(
            err.to_string().contains("not an editable"),
            "{field}: {err}"
        );
    }
    let remove_fill = Op::DeleteMetaField {
        node: array,
        field: "fill_value".into(),
        observed: vec![],
    };
    let err = decode(&mk(4, vec![remove_fill])).unwrap_err();
    assert!(err.to_string().contains("required"), "{err}");
    // An extension field must say it may be ignored.
    let err = decode(&mk(5, vec![op(array, "ext", "1")])).unwrap_err();
    assert!(err.to_string().contains("must_understand"), "{err}");
    decode(&mk(
        6,
        vec![op(array, "ext", r#"{"must_understand":false}"#)],
    ))
    .unwrap();
}

// =====================================================================================
// Array shape
// =====================================================================================

#[tokio::test]
async fn matrix_concurrent_grows_elementwise_max() {
    for kind in kinds() {
        let lab = lab_with(kind, |s| {
            s.create_array("a", &array(&[4, 4], &[2, 2], "uint8"))
                .unwrap()
        })
        .await;
        let mut w = lab.writers(3).await;
        commit!(w[0].repo, |s| { s.resize("a", &[8, 4]).unwrap() });
        commit!(w[1].repo, |s| { s.resize("a", &[4, 6]).unwrap() });
        commit!(w[2].repo, |s| { s.resize("a", &[6, 4]).unwrap() });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.shape("a").await, json!([8, 6]));
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_resize_different_dimensions_independent() {
    for kind in kinds() {
        let lab = lab_with(kind, |s| {
            s.create_array("a", &array(&[4, 4], &[2, 2], "uint8"))
                .unwrap()
        })
        .await;
        let mut w = lab.writers(2).await;
        commit!(w[0].repo, |s| { s.resize("a", &[2, 4]).unwrap() });
        commit!(w[1].repo, |s| { s.resize("a", &[4, 8]).unwrap() });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.shape("a").await, json!([2, 8]));
        assert_eq!(r.conflicts().await, []);
    }
}

/// Array `a` of 8 in chunks of 2 with all four chunks written.
async fn lab_with_full_array(kind: Kind) -> Lab {
    lab_with(kind, |s| {
        s.create_array("a", &u8x8()).unwrap();
        for i in 0..4u8 {
            s.set(&format!("a/c/{i}"), vec![i; 2]).unwrap();
        }
    })
    .await
}

#[tokio::test]
async fn matrix_shrink_vs_concurrent_grow() {
    for kind in kinds() {
        let lab = lab_with_full_array(kind).await;
        let mut w = lab.writers(2).await;
        // Shrinking deletes the chunks it saw outside the new shape (c/2, c/3).
        commit!(w[0].repo, |s| { s.resize("a", &[4]).unwrap() });
        commit!(w[1].repo, |s| {
            s.resize("a", &[12]).unwrap();
            s.set("a/c/5", vec![5u8, 5]).unwrap();
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.shape("a").await, json!([12]));
        assert_eq!(
            r.list().await,
            ["a/c/0", "a/c/1", "a/c/5", "a/zarr.json", "zarr.json"]
        );
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_concurrent_shrinks_larger_survives() {
    for kind in kinds() {
        let lab = lab_with_full_array(kind).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| { s.resize("a", &[2]).unwrap() });
        later().await;
        let hb = commit!(w[1].repo, |s| { s.resize("a", &[4]).unwrap() });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.shape("a").await, json!([4]));
        // c/1 was deleted by the smaller shrink only.
        assert_eq!(r.list().await, ["a/c/0", "a/zarr.json", "zarr.json"]);
        // Both deleted c/2 and c/3: two live tombstones each.
        assert_eq!(
            r.conflicts().await,
            [
                conflict("a/c/2", ConflictTarget::Chunk, at(hb, 1), &[at(ha, 2)]),
                conflict("a/c/3", ConflictTarget::Chunk, at(hb, 2), &[at(ha, 3)]),
            ]
        );
    }
}

#[tokio::test]
async fn matrix_shrink_vs_concurrent_chunk_write_outside() {
    for kind in kinds() {
        let lab = lab_with(kind, |s| {
            s.create_array("a", &u8x8()).unwrap();
            s.set("a/c/0", vec![0u8, 0]).unwrap();
        })
        .await;
        let mut w = lab.writers(2).await;
        commit!(w[0].repo, |s| { s.resize("a", &[4]).unwrap() });
        commit!(w[1].repo, |s| { s.set("a/c/3", vec![3u8, 3]).unwrap() });
        let r = lab.converge(&mut w).await;
        // The shrink did not observe c/3: it survives, outside the shape, and shows
        // again if the array grows.
        assert_eq!(r.shape("a").await, json!([4]));
        assert_eq!(
            r.list().await,
            ["a/c/0", "a/c/3", "a/zarr.json", "zarr.json"]
        );
        assert_eq!(r.bytes("a/c/3").await.unwrap(), [3, 3]);
        assert_eq!(r.conflicts().await, []);
    }
}

// =====================================================================================
// Chunks
// =====================================================================================

#[tokio::test]
async fn matrix_chunk_overwrite_concurrent() {
    for kind in kinds() {
        let lab = lab_with(kind, |s| {
            s.create_array("a", &u8x8()).unwrap();
            s.set("a/c/0", vec![0u8, 0]).unwrap();
            s.create_array("big", &array(&[10000], &[5000], "uint8"))
                .unwrap();
        })
        .await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| {
            s.set("a/c/0", vec![1u8, 1]).unwrap();
            s.set("big/c/0", vec![1u8; 5000]).unwrap();
        });
        later().await;
        let hb = commit!(w[1].repo, |s| {
            s.set("a/c/0", vec![2u8, 2]).unwrap();
            s.set("big/c/0", vec![2u8; 5000]).unwrap();
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.bytes("a/c/0").await.unwrap(), [2, 2]);
        assert_eq!(r.bytes("big/c/0").await.unwrap(), vec![2u8; 5000]);
        let cs = r.repo.conflicts().await.unwrap();
        assert_eq!(
            summary(&cs),
            [
                conflict("a/c/0", ConflictTarget::Chunk, at(hb, 0), &[at(ha, 0)]),
                conflict("big/c/0", ConflictTarget::Chunk, at(hb, 1), &[at(ha, 1)]),
            ]
        );
        assert_eq!(cs[0].winner.value, "inline (2 bytes)");
        assert!(cs[1].winner.value.ends_with("(5000 bytes)"));
    }
}

#[tokio::test]
async fn matrix_chunk_different_keys_both_survive() {
    for kind in kinds() {
        let lab = lab_with_array(kind).await;
        let mut w = lab.writers(2).await;
        commit!(w[0].repo, |s| { s.set("a/c/1", vec![1u8, 1]).unwrap() });
        commit!(w[1].repo, |s| { s.set("a/c/2", vec![2u8, 2]).unwrap() });
        let r = lab.converge(&mut w).await;
        assert_eq!(
            r.list().await,
            ["a/c/0", "a/c/1", "a/c/2", "a/zarr.json", "zarr.json"]
        );
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_chunk_write_vs_delete() {
    for kind in kinds() {
        // The write is later: it wins.
        let lab = lab_with_array(kind).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| { s.delete("a/c/0").unwrap() });
        later().await;
        let hb = commit!(w[1].repo, |s| { s.set("a/c/0", vec![1u8, 1]).unwrap() });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.bytes("a/c/0").await.unwrap(), [1, 1]);
        let cs = r.repo.conflicts().await.unwrap();
        assert_eq!(
            summary(&cs),
            [conflict(
                "a/c/0",
                ConflictTarget::Chunk,
                at(hb, 0),
                &[at(ha, 0)]
            )]
        );
        assert_eq!(cs[0].losers[0].value, "(deleted)");

        // The delete is later: it wins and reads give "not found" (the fill value).
        let lab = lab_with_array(kind).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| { s.set("a/c/0", vec![1u8, 1]).unwrap() });
        later().await;
        let hb = commit!(w[1].repo, |s| { s.delete("a/c/0").unwrap() });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.bytes("a/c/0").await, None);
        assert_eq!(r.list().await, ["a/zarr.json", "zarr.json"]);
        let cs = r.repo.conflicts().await.unwrap();
        assert_eq!(
            summary(&cs),
            [conflict(
                "a/c/0",
                ConflictTarget::Chunk,
                at(hb, 0),
                &[at(ha, 0)]
            )]
        );
        assert_eq!(cs[0].winner.value, "(deleted)");
    }
}

#[tokio::test]
async fn matrix_chunk_delete_vs_delete() {
    for kind in kinds() {
        let lab = lab_with_array(kind).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| { s.delete("a/c/0").unwrap() });
        later().await;
        let hb = commit!(w[1].repo, |s| { s.delete("a/c/0").unwrap() });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.list().await, ["a/zarr.json", "zarr.json"]);
        assert_eq!(
            r.conflicts().await,
            [conflict(
                "a/c/0",
                ConflictTarget::Chunk,
                at(hb, 0),
                &[at(ha, 0)]
            )]
        );
    }
}

// =====================================================================================
// Causality, delivery and validity
// =====================================================================================

#[tokio::test]
async fn matrix_causal_overwrite_is_not_conflict() {
    for kind in kinds() {
        let lab = lab_with_array(kind).await;
        let mut w = lab.writers(2).await;
        commit!(w[0].repo, |s| {
            s.set("a/c/0", vec![1u8, 1]).unwrap();
            s.set_attr("a", "k", json!(1)).unwrap();
            s.create_group("g", Map::new()).unwrap();
        });
        let (a, b) = w.split_at_mut(1);
        b[0].pull(&a[0]).await;
        commit!(b[0].repo, |s| {
            s.set("a/c/0", vec![2u8, 2]).unwrap();
            s.set_attr("a", "k", json!(2)).unwrap();
            s.delete_attr("a", "u").unwrap();
            s.resize("a", &[2]).unwrap();
            // Delete then re-create in a later change: a new incarnation, no conflict.
            s.delete("g/zarr.json").unwrap();
            s.create_array("g", &u8x8()).unwrap();
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.bytes("a/c/0").await.unwrap(), [2, 2]);
        assert_eq!(r.attrs("a").await, json!({"k": 2}));
        assert_eq!(r.shape("a").await, json!([2]));
        assert_eq!(r.json("g/zarr.json").await["node_type"], "array");
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_conflict_resolved_by_later_write() {
    for kind in kinds() {
        let lab = lab_with(kind, |_| {}).await;
        let mut w = lab.writers(3).await;
        commit!(w[0].repo, |s| {
            s.create_group("g", attrs(json!({"k": "A"}))).unwrap();
            s.create_array("a", &u8x8()).unwrap();
            s.set("a/c/0", vec![1u8, 1]).unwrap();
            s.create_array("b", &u8x8()).unwrap();
        });
        later().await;
        commit!(w[1].repo, |s| {
            s.create_group("g", attrs(json!({"k": "B"}))).unwrap();
            s.create_array("a", &u8x8()).unwrap();
            s.set("a/c/0", vec![2u8, 2]).unwrap();
            s.create_array("b", &array(&[8], &[2], "uint16")).unwrap();
        });
        // w2 sees all three conflicts and resolves them: a write that observed every
        // live entry supersedes them all; a node conflict goes away when the path is
        // deleted (every incarnation there, hidden ones included) and re-created.
        let (done, rest) = w.split_at_mut(2);
        rest[0].pull(&done[0]).await;
        rest[0].pull(&done[1]).await;
        assert_eq!(rest[0].repo.conflicts().await.unwrap().len(), 3);
        commit!(rest[0].repo, |s| {
            s.set_attr("g", "k", json!("C")).unwrap();
            s.set("a/c/0", vec![3u8, 3]).unwrap();
            s.delete("b/zarr.json").unwrap();
            s.create_array("b", &u8x8()).unwrap();
        });
        let r = lab.converge(&mut w).await;
        assert_eq!(r.attrs("g").await, json!({"k": "C"}));
        assert_eq!(r.bytes("a/c/0").await.unwrap(), [3, 3]);
        assert_eq!(r.json("b/zarr.json").await["data_type"], "uint8");
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_pending_until_deps_arrive() {
    for kind in kinds() {
        let lab = lab_with_array(kind).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| { s.set("a/c/1", vec![1u8, 1]).unwrap() });
        let (a, b) = w.split_at_mut(1);
        b[0].pull(&a[0]).await;
        let hb = commit!(b[0].repo, |s| { s.set("a/c/1", vec![2u8, 2]).unwrap() });
        let actor_b = b[0].repo.actor();

        // A reader that gets w1's change first holds it pending, applies nothing of it.
        let site = Site::new(kind);
        site.put_all(&lab.origin.objects().await).await;
        let mut reader = crzarr::Repo::open(site.store.clone(), PREFIX)
            .await
            .unwrap();
        let before = reader.list().await.unwrap();
        site.put_all(&w[1].own().await).await;
        let report = reader.refresh().await.unwrap();
        assert_eq!((report.applied, report.pending), (0, 1));
        assert_eq!(
            reader.pending(),
            [PendingChange {
                hash: hb,
                actor: actor_b,
                seq: 1,
                missing: vec![ha],
            }]
        );
        assert_eq!(reader.list().await.unwrap(), before);
        assert!(!reader.fold().contains(&hb));
        // Its dependency arrives: both apply.
        site.put_all(&w[0].own().await).await;
        let report = reader.refresh().await.unwrap();
        assert_eq!((report.applied, report.pending), (2, 0));
        assert_eq!(reader.pending(), []);
        assert_eq!(reader.get("a/c/1").await.unwrap().unwrap(), [2u8, 2][..]);
        assert_eq!(reader.conflicts().await.unwrap(), []);

        let r = lab.converge(&mut w).await;
        assert_eq!(r.bytes("a/c/1").await.unwrap(), [2, 2]);
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_pending_until_referenced_change_arrives() {
    for kind in kinds() {
        let lab = lab_with(kind, |_| {}).await;
        let (base, base_hlc) = base_head(&lab);
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| { s.create_group("h", Map::new()).unwrap() });
        let hlc_a = w[0].repo.fold().hlc_of(&ha).unwrap();
        // A change whose deps are all present but whose op names an op of `ha`.
        let c = Change {
            repo: lab.base.id(),
            actor: ActorId::generate(),
            seq: 1,
            deps: vec![base],
            hlc: Hlc(hlc_a.0.max(base_hlc.0) + 1),
            wall_ms: 0,
            message: None,
            ops: vec![Op::SetAttr {
                node: OpRef::Change(ha, 0),
                key: "k".into(),
                value: "1".into(),
                observed: vec![],
            }],
        };
        let hc = w[1].put_change(&c).await;
        let mut fold = Fold::new(lab.base.id());
        let base_change = w[1].change(base).await;
        assert!(matches!(
            fold.insert(base, base_change, 0),
            InsertOutcome::Applied { .. }
        ));
        assert_eq!(fold.insert(hc, c.clone(), 0), InsertOutcome::Pending);
        assert_eq!(fold.pending()[0].missing, [ha]);

        let r = lab.converge(&mut w).await;
        assert_eq!(r.attrs("h").await, json!({"k": 1}));
        assert!(r.repo.fold().contains(&hc));
        assert_eq!(r.repo.pending(), []);
    }
}

#[tokio::test]
async fn matrix_duplicate_delivery_idempotent() {
    for kind in kinds() {
        let lab = lab_with_array(kind).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| { s.set("a/c/1", vec![1u8, 1]).unwrap() });
        let (a, b) = w.split_at_mut(1);
        b[0].pull(&a[0]).await;
        let hb = commit!(b[0].repo, |s| { s.set_attr("a", "k", json!(1)).unwrap() });

        // Store level: the same change file from two replicas is fetched once.
        let site = Site::new(kind);
        site.put_all(&lab.origin.objects().await).await;
        let mut reader = crzarr::Repo::open(site.store.clone(), PREFIX)
            .await
            .unwrap();
        site.put_all(&w[0].site.objects().await).await;
        assert_eq!(reader.refresh().await.unwrap().applied, 1);
        let once = State::of_repo(&reader).await;
        site.put_all(&w[0].site.objects().await).await;
        let again = reader.refresh().await.unwrap();
        assert_eq!((again.fetched, again.applied), (0, 0));
        assert_eq!(State::of_repo(&reader).await, once);
        site.put_all(&w[1].site.objects().await).await;
        let rep = reader.refresh().await.unwrap();
        assert_eq!((rep.fetched, rep.applied), (1, 1));

        // Fold level: a duplicate is ignored whether the first copy is applied or pending.
        let changes = changes_in(&w[1].site.objects().await);
        let get = |h: ChangeHash| changes.iter().find(|(x, _)| *x == h).unwrap().1.clone();
        let (base, _) = base_head(&lab);
        let mut fold = Fold::new(lab.base.id());
        assert_eq!(fold.insert(hb, get(hb), 0), InsertOutcome::Pending);
        assert_eq!(fold.insert(hb, get(hb), 0), InsertOutcome::Duplicate);
        assert_eq!(fold.insert(ha, get(ha), 0), InsertOutcome::Pending);
        assert_eq!(
            fold.insert(base, get(base), 0),
            InsertOutcome::Applied { unblocked: 2 }
        );
        assert_eq!(fold.insert(ha, get(ha), 0), InsertOutcome::Duplicate);
        assert_eq!(fold.insert(base, get(base), 0), InsertOutcome::Duplicate);
        assert_eq!(State::of_fold(&fold), State::of_repo(&reader).await);

        lab.converge(&mut w).await;
    }
}

#[tokio::test]
async fn matrix_fork_reported() {
    for kind in kinds() {
        let lab = lab_with_group(kind).await;
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| { s.set_attr("g", "k", json!("a")).unwrap() });
        // A clone of writer 0 (same actor, same seq, same clock) wrote something else.
        let mut forged = w[0].change(ha).await;
        let Op::SetAttr { value, .. } = &mut forged.ops[0] else {
            panic!("expected SetAttr")
        };
        *value = "\"clone\"".into();
        let hf = w[1].put_change(&forged).await;
        assert_ne!(ha, hf);

        let r = lab.converge(&mut w).await;
        let (lo, hi) = (ha.min(hf), ha.max(hf));
        assert_eq!(
            r.repo.forks(),
            [Fork {
                actor: w[0].repo.actor(),
                seq: 1,
                changes: vec![lo, hi],
            }]
        );
        // Both are applied and merged like any concurrent changes: equal clock, actor
        // and seq, so the change hash decides.
        assert!(r.repo.fold().contains(&ha) && r.repo.fold().contains(&hf));
        let expect = if hi == ha { "a" } else { "clone" };
        assert_eq!(r.attrs("g").await, json!({"k": expect}));
        assert_eq!(
            r.conflicts().await,
            [conflict("g/zarr.json", attr("k"), at(hi, 0), &[at(lo, 0)])]
        );
    }
}

#[tokio::test]
async fn matrix_invalid_change_rejected_whole() {
    for kind in kinds() {
        let lab = lab_with(kind, |_| {}).await;
        let id = lab.base.id();
        let (base, base_hlc) = base_head(&lab);
        let mut w = lab.writers(2).await;
        let ha = commit!(w[0].repo, |s| { s.create_group("ok", Map::new()).unwrap() });
        let hlc_a = w[0].repo.fold().hlc_of(&ha).unwrap();
        let actor = ActorId::generate();
        let mk = |seq: u64, deps: Vec<ChangeHash>, hlc: Hlc, ops: Vec<Op>| Change {
            repo: id,
            actor,
            seq,
            deps,
            hlc,
            wall_ms: 0,
            message: None,
            ops,
        };
        let group_x = Op::CreateGroup {
            path: "x".into(),
            attributes: vec![],
        };
        let chunk_on = |node| Op::SetChunk {
            node,
            key: "c/0".into(),
            data: ChunkData::Inline(vec![1]),
            observed: vec![],
        };
        // A valid create followed by a chunk op on that group: nothing applies.
        let bad_kind = mk(
            1,
            vec![base],
            Hlc(base_hlc.0 + 1),
            vec![group_x.clone(), chunk_on(OpRef::Local(0))],
        );
        // A clock not greater than its dependency's.
        let bad_clock = mk(2, vec![base], base_hlc, vec![group_x.clone()]);
        // Invalid only given its causal past (the root is a group), delivered after
        // another writer's change it depends on.
        let bad_after = mk(
            3,
            vec![ha],
            Hlc(hlc_a.0 + 1),
            vec![group_x.clone(), chunk_on(OpRef::Change(base, 0))],
        );
        let h1 = w[1].put_change(&bad_kind).await;
        let h2 = w[1].put_change(&bad_clock).await;
        let h3 = w[1].put_change(&bad_after).await;
        // A valid change built on a rejected one never applies.
        let child = mk(4, vec![h1], Hlc(base_hlc.0 + 2), vec![group_x]);
        let h4 = w[1].put_change(&child).await;

        let r = lab.converge(&mut w).await;
        assert_eq!(r.list().await, ["ok/zarr.json", "zarr.json"]);
        let mut expect = vec![
            (h1, "op 1: chunk op on a group".to_string()),
            (
                h2,
                format!(
                    "clock {} not greater than dependency {}'s",
                    base_hlc.0,
                    base.short()
                ),
            ),
            (h3, "op 1: chunk op on a group".to_string()),
        ];
        expect.sort();
        let got: Vec<(ChangeHash, String)> = r
            .repo
            .rejected()
            .into_iter()
            .map(|x| (x.hash, x.reason))
            .collect();
        assert_eq!(got, expect);
        assert_eq!(
            r.repo.pending(),
            [PendingChange {
                hash: h4,
                actor,
                seq: 4,
                missing: vec![h1],
            }]
        );
        // Every rejected file is reported by key on every reader, whatever the order.
        let problems = r.repo.problems();
        for (h, _) in &expect {
            assert!(
                problems
                    .iter()
                    .any(|p| p.key.contains(&h.to_hex()) && p.error.starts_with("invalid change")),
                "{h:?} not in {problems:?}"
            );
        }
        assert_eq!(r.conflicts().await, []);
    }
}

#[tokio::test]
async fn matrix_stamp_order_tiebreaks() {
    // Fold level, hand-built: two concurrent SetAttr ops on one key, each pair
    // differing only in the stamp component under test.
    let id = RepoId::generate();
    let root = Change {
        repo: id,
        actor: ActorId::generate(),
        seq: 1,
        deps: vec![],
        hlc: Hlc(100 << 16),
        wall_ms: 0,
        message: None,
        ops: vec![Op::CreateGroup {
            path: String::new(),
            attributes: vec![],
        }],
    };
    let hr = ChangeHash::of(&root.encode());
    let set = |actor: ActorId, seq: u64, hlc: u64, v: &str| Change {
        repo: id,
        actor,
        seq,
        deps: vec![hr],
        hlc: Hlc(hlc),
        wall_ms: 0,
        message: None,
        ops: vec![Op::SetAttr {
            node: OpRef::Change(hr, 0),
            key: "k".into(),
            value: format!("\"{v}\""),
            observed: vec![],
        }],
    };
    let (lo_actor, hi_actor) = {
        let (a, b) = (ActorId::generate(), ActorId::generate());
        (a.min(b), a.max(b))
    };
    let winner_of = |x: Change, y: Change| -> (String, Vec<Summary>) {
        let hx = ChangeHash::of(&x.encode());
        let hy = ChangeHash::of(&y.encode());
        let all = [(hr, root.clone()), (hx, x), (hy, y)];
        let mut states = Vec::new();
        for perm in permutations(3) {
            let fold = Fold::from_changes(id, perm.iter().map(|&i| all[i].clone()));
            let view_index = ViewIndex::build(&fold);
            let view = view_index.with(&fold);
            let k = view.attributes("").unwrap()["k"].clone();
            states.push((k.as_str().unwrap().to_string(), summary(&view.conflicts())));
        }
        assert!(states.windows(2).all(|w| w[0] == w[1]));
        states.pop().unwrap()
    };
    let t = 200 << 16;
    // 1. A greater clock beats a greater actor.
    let x = set(hi_actor, 1, t, "x");
    let y = set(lo_actor, 1, t + 1, "y");
    let (hx, hy) = (ChangeHash::of(&x.encode()), ChangeHash::of(&y.encode()));
    assert_eq!(
        winner_of(x, y),
        (
            "y".into(),
            vec![conflict("zarr.json", attr("k"), at(hy, 0), &[at(hx, 0)])]
        )
    );
    // 2. Equal clocks: the greater actor wins.
    let x = set(hi_actor, 1, t, "x");
    let y = set(lo_actor, 7, t, "y");
    assert_eq!(winner_of(x, y).0, "x");
    // 3. Equal clock and actor: the greater seq wins.
    let x = set(hi_actor, 2, t, "x");
    let y = set(hi_actor, 3, t, "y");
    assert_eq!(winner_of(x, y).0, "y");
    // 4. Equal clock, actor and seq (a fork): the greater change hash wins.
    let x = set(hi_actor, 2, t, "x");
    let y = set(hi_actor, 2, t, "y");
    let (hx, hy) = (ChangeHash::of(&x.encode()), ChangeHash::of(&y.encode()));
    assert_eq!(winner_of(x, y).0, if hx > hy { "x" } else { "y" });
    // 5. One change: the later op wins (an op that does not observe an earlier op of
    //    its own change is concurrent with it).
    let mut two = set(hi_actor, 1, t, "first");
    two.ops.push(Op::SetAttr {
        node: OpRef::Change(hr, 0),
        key: "k".into(),
        value: "\"second\"".into(),
        observed: vec![],
    });
    let h2 = ChangeHash::of(&two.encode());
    let fold = Fold::from_changes(id, [(h2, two), (hr, root.clone())]);
    let view_index = ViewIndex::build(&fold);
    let view = view_index.with(&fold);
    assert_eq!(view.attributes("").unwrap()["k"], "second");
    assert_eq!(
        summary(&view.conflicts()),
        [conflict("zarr.json", attr("k"), at(h2, 1), &[at(h2, 0)])]
    );
}
