//! Crash safety of `crzarr sync` (`spec/format.md` §16.3): the real binary, killed with
//! SIGKILL at random moments while it copies a repository between two directories on
//! local disk. After every kill, each side the killed run wrote to must hold only whole
//! objects as a reader sees them: every listed change decodes and has all its blobs,
//! every snapshot has all its manifest pieces, archive shards and blobs, and
//! `Repo::open` succeeds and reports no problem (leftover staging files of
//! `LocalFileSystem` included). A final uninterrupted sync completes the copy.
//!
//! The run is seeded; the seed is printed, and `CRZARR_CRASH_SEED=<n>` replays one: it
//! fixes the data, the writers between runs, the directions and the kill delays (where
//! in its work a run is when the kill lands still depends on the machine's speed). Each
//! run prints one line (`--nocapture` shows them) saying what the destination held.

mod common;

use common::array_meta;
use common::crash::{Finished, Rng, local_store, present_or_covered, run_killing};
use common::repo::State;
use crzarr::fold::view::{ChunkRef, Entry};
use crzarr::format::change::{Change, Op};
use crzarr::format::ids::{BlobHash, ChangeHash, ObjectHash, RepoId};
use crzarr::format::layout::SnapshotName;
use crzarr::format::snapshot::{ArchiveShard, ManifestPiece, SnapChunk, SnapshotMeta};
use crzarr::io::store::RepoStore;
use crzarr::ops::gc::GcOptions;
use crzarr::repo::Repo;
use futures::TryStreamExt;
use object_store::ObjectStore;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEFAULT_SEED: u64 = 0x5EED_C0FF_EE15_2026;
/// Runs killed mid-way to aim for, and the least that must have happened.
const TARGET_KILLS: usize = 32;
const MIN_KILLS: usize = 25;
/// Bound on runs, killed or not, so the test stays well under a minute.
const MAX_RUNS: usize = 80;
/// Kills in one episode before an uninterrupted sync completes it anyway.
const MAX_EPISODE_KILLS: usize = 8;
const CONCURRENCY: [usize; 3] = [2, 8, 32];

/// Chunks of `big` go to blobs (20-100 KB), chunks of `small` travel inline.
const BIG_CHUNK: u64 = 131_072;
const CHUNKS: u64 = 48;

/// One random commit to the source's arrays; `None` when it changed nothing.
async fn source_commit(repo: &mut Repo, rng: &mut Rng, n: usize) -> Option<ChangeHash> {
    let mut s = repo.session();
    match rng.below(10) {
        0..=3 => {
            for _ in 0..rng.range(1, 3) {
                let len = rng.range(20_000, 100_001) as usize;
                let k = rng.below(CHUNKS);
                s.set(&format!("big/c/{k}"), rng.bytes(len)).unwrap();
            }
        }
        4..=6 => {
            for _ in 0..rng.range(1, 4) {
                let len = rng.range(1, 2_000) as usize;
                let k = rng.below(CHUNKS);
                s.set(&format!("small/c/{k}"), rng.bytes(len)).unwrap();
            }
        }
        7 => {
            let node = ["", "big", "small"][rng.below(3) as usize];
            let name = format!("a{}", rng.below(6));
            s.set_attr(node, &name, serde_json::json!(n)).unwrap();
        }
        8 => {
            let arr = ["big", "small"][rng.below(2) as usize];
            s.delete(&format!("{arr}/c/{}", rng.below(CHUNKS))).unwrap();
        }
        _ => {
            let len = rng.range(20_000, 60_000) as usize;
            s.set(&format!("big/c/{}", rng.below(CHUNKS)), rng.bytes(len))
                .unwrap();
            s.set(&format!("small/c/{}", rng.below(CHUNKS)), rng.bytes(100))
                .unwrap();
            s.set_attr("", "step", serde_json::json!(n)).unwrap();
        }
    }
    s.commit(repo, Some(&format!("source {n}"))).await.unwrap()
}

/// A commit made on a replica between runs: a new array of its own, one chunk.
async fn replica_commit(repo: &mut Repo, rng: &mut Rng, path: &str) -> ChangeHash {
    let mut s = repo.session();
    s.create_array(path, &array_meta(&[4 * BIG_CHUNK], &[BIG_CHUNK]))
        .unwrap();
    let len = if rng.chance(50) {
        rng.range(20_000, 60_000)
    } else {
        rng.range(1, 3_000)
    } as usize;
    s.set(&format!("{path}/c/{}", rng.below(4)), rng.bytes(len))
        .unwrap();
    s.commit(repo, Some(path))
        .await
        .unwrap()
        .expect("a new array")
}

/// The source: ~210 changes, some with blobs, some inline; compacted, collected and
/// compacted again midway, so the newest snapshot has manifest pieces and coverage
/// archive shards, and changes follow it.
async fn build_source(root: &Path, rng: &mut Rng, commits: &mut Vec<ChangeHash>) -> Repo {
    let mut repo = Repo::init(local_store(root), "").await.unwrap();
    let mut s = repo.session();
    s.create_group("", Default::default()).unwrap();
    s.create_array("big", &array_meta(&[CHUNKS * BIG_CHUNK], &[BIG_CHUNK]))
        .unwrap();
    s.create_array("small", &array_meta(&[CHUNKS * 16], &[16]))
        .unwrap();
    commits.push(s.commit(&mut repo, Some("create")).await.unwrap().unwrap());
    let mut n = 0;
    for phase in 0..3 {
        for _ in 0..[110, 60, 40][phase] {
            n += 1;
            commits.extend(source_commit(&mut repo, rng, n).await);
        }
        if phase == 0 {
            let r = repo.compact().await.unwrap();
            assert!(r.manifests_written > 0, "{r:?}");
            let g = repo
                .gc(&GcOptions {
                    older_than: Duration::ZERO,
                    dry_run: false,
                    force: true,
                })
                .await
                .unwrap();
            assert!(!g.removed.is_empty(), "{g:?}");
        }
        if phase == 1 {
            let r = repo.compact().await.unwrap();
            assert!(r.manifests_written > 0, "{r:?}");
            assert!(r.archive_shards_written > 0, "{r:?}");
        }
    }
    repo
}

/// What a side holds, as counted by the checks.
#[derive(Debug, Default)]
struct Seen {
    marker: bool,
    changes: usize,
    blobs_checked: usize,
    snapshots: usize,
    pieces: usize,
    shards: usize,
    /// Files under `.crdt/blobs/`, `.crdt/manifests/` and `.crdt/archive/`, referenced
    /// or not (a killed run leaves unreferenced ones).
    files: [usize; 3],
    /// `<key>#<digits>` files `LocalFileSystem` leaves when killed mid-write.
    staging: usize,
}

fn staging_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            staging_files(&p, out);
        } else if let Some((_, suffix)) = e.file_name().to_string_lossy().rsplit_once('#')
            && !suffix.is_empty()
            && suffix.bytes().all(|b| b.is_ascii_digit())
        {
            out.push(p);
        }
    }
}

struct Checker {
    bucket: RepoStore,
    id: RepoId,
    blobs: HashMap<BlobHash, Result<(), String>>,
    violations: Vec<String>,
}

impl Checker {
    async fn get(&self, key: &object_store::path::Path) -> Option<bytes::Bytes> {
        self.bucket.get(key, u64::MAX).await.expect("local read")
    }

    /// A referenced blob is there, whole.
    async fn blob(&mut self, hash: BlobHash, len: u64, by: &str) {
        if !self.blobs.contains_key(&hash) {
            let key = self.bucket.layout().blob(&hash);
            let r = match self.get(&key).await {
                None => Err(format!("blob {key} is missing")),
                Some(b) if b.len() as u64 != len || BlobHash::of(&b) != hash => Err(format!(
                    "blob {key} is damaged ({} bytes, reference says {len})",
                    b.len()
                )),
                Some(_) => Ok(()),
            };
            self.blobs.insert(hash, r);
        }
        if let Some(Err(e)) = self.blobs.get(&hash) {
            self.violations
                .push(format!("{by} references a bad blob: {e}"));
        }
    }

    async fn changes(&mut self, seen: &mut Seen) {
        let layout = self.bucket.layout().clone();
        for m in self.bucket.list_all(&layout.ops_dir()).await.unwrap() {
            let key = m.location.to_string();
            let name = match layout.parse_change_key(&m.location) {
                Ok(n) => n,
                Err(e) => {
                    self.violations
                        .push(format!("{key}: listed under .crdt/ops/ but {e}"));
                    continue;
                }
            };
            seen.changes += 1;
            let Some(bytes) = self.get(&m.location).await else {
                self.violations
                    .push(format!("{key}: listed but gone (nothing deletes here)"));
                continue;
            };
            let change = match Change::decode(&key, &bytes, &name.hash) {
                Ok(c) => c,
                Err(e) => {
                    self.violations.push(format!(
                        "partial or damaged change file ({} bytes): {e}",
                        bytes.len()
                    ));
                    continue;
                }
            };
            if change.actor != name.actor || change.seq != name.seq || change.repo != self.id {
                self.violations.push(format!(
                    "{key}: header does not match its name or repository"
                ));
            }
            for (hash, len) in change.ops.iter().filter_map(Op::blob) {
                self.blob(hash, len, &format!("change {key}")).await;
            }
        }
    }

    async fn snapshots(&mut self, seen: &mut Seen) -> HashSet<SnapshotName> {
        let layout = self.bucket.layout().clone();
        let mut names = HashSet::new();
        for m in self.bucket.list_all(&layout.snapshots_dir()).await.unwrap() {
            let key = m.location.to_string();
            let name = match layout.parse_snapshot_key(&m.location) {
                Ok(n) => n,
                Err(e) => {
                    self.violations
                        .push(format!("{key}: listed under .crdt/snapshots/ but {e}"));
                    continue;
                }
            };
            seen.snapshots += 1;
            names.insert(name);
            let Some(bytes) = self.get(&m.location).await else {
                self.violations.push(format!("{key}: listed but gone"));
                continue;
            };
            let meta = match SnapshotMeta::decode(&key, &bytes, &name.hash) {
                Ok(m) => m,
                Err(e) => {
                    self.violations
                        .push(format!("partial or damaged snapshot metadata: {e}"));
                    continue;
                }
            };
            if meta.covered != name.covered || meta.repo != self.id {
                self.violations
                    .push(format!("{key}: covered count or repository differs"));
            }
            for (hash, len) in meta.object_blobs() {
                self.blob(hash, len, &format!("snapshot {key}")).await;
            }
            let pieces: Vec<ObjectHash> = meta
                .nodes
                .iter()
                .flat_map(|n| n.pieces.iter().map(|p| p.hash))
                .collect();
            for h in pieces {
                seen.pieces += 1;
                let pkey = layout.manifest(&h);
                let Some(pb) = self.get(&pkey).await else {
                    self.violations.push(format!(
                        "snapshot {key} is visible but its manifest piece {pkey} is missing"
                    ));
                    continue;
                };
                let piece = match ManifestPiece::decode(pkey.as_ref(), &pb, &h) {
                    Ok(p) => p,
                    Err(e) => {
                        self.violations
                            .push(format!("snapshot {key}: damaged manifest piece: {e}"));
                        continue;
                    }
                };
                for (chunk, entries) in &piece.entries {
                    for (_, v) in entries {
                        if let SnapChunk::Blob { hash, len } = v {
                            let by = format!("snapshot {key} (piece {pkey}, chunk {chunk})");
                            self.blob(*hash, *len, &by).await;
                        }
                    }
                }
            }
            for h in meta.archive.iter().flatten() {
                seen.shards += 1;
                let skey = layout.archive_shard(h);
                match self.get(&skey).await {
                    None => self.violations.push(format!(
                        "snapshot {key} is visible but its archive shard {skey} is missing"
                    )),
                    Some(b) => {
                        if let Err(e) = ArchiveShard::decode(skey.as_ref(), &b, h) {
                            self.violations
                                .push(format!("snapshot {key}: damaged archive shard: {e}"));
                        }
                    }
                }
            }
        }
        names
    }

    /// The hint, when present, is a whole copy of a snapshot that is listed.
    async fn hint(&mut self, listed: &HashSet<SnapshotName>) {
        let key = self.bucket.layout().latest_hint();
        let Some(bytes) = self.get(&key).await else {
            return;
        };
        let hash = ObjectHash::of(&bytes);
        match SnapshotMeta::decode(key.as_ref(), &bytes, &hash) {
            Ok(m) => {
                let name = SnapshotName {
                    covered: m.covered,
                    hash,
                };
                if !listed.contains(&name) {
                    self.violations.push(format!(
                        "{key} copies snapshot {} which is not listed",
                        name.file_name()
                    ));
                }
            }
            Err(e) => self.violations.push(format!("partial latest hint: {e}")),
        }
    }

    /// A reader's view: open reports no problem, and every chunk reads back.
    async fn reader(&mut self, store: Arc<dyn ObjectStore>) {
        let repo = match Repo::open(store, "").await {
            Ok(r) => r,
            Err(e) => {
                self.violations.push(format!("Repo::open failed: {e}"));
                return;
            }
        };
        for p in repo.problems() {
            self.violations
                .push(format!("reader reports a problem: {}: {}", p.key, p.error));
        }
        for r in repo.rejected() {
            self.violations
                .push(format!("reader rejected change {}: {}", r.hash, r.reason));
        }
        if !repo.forks().is_empty() {
            self.violations
                .push(format!("reader sees forks: {:?}", repo.forks()));
        }
        let entries = match repo.entries().await {
            Ok(e) => e,
            Err(e) => {
                self.violations
                    .push(format!("reading the view failed: {e}"));
                return;
            }
        };
        for (k, e) in entries {
            if let Entry::Chunk(ChunkRef::Blob { .. }) = e {
                match repo.get(&k).await {
                    Ok(Some(_)) => {}
                    Ok(None) => self.violations.push(format!("{k}: listed but reads None")),
                    Err(e) => self.violations.push(format!("{k}: read failed: {e}")),
                }
            }
        }
    }
}

/// Checks one side; returns what it holds and every violation found.
async fn check_side(root: &Path) -> (Seen, Vec<String>) {
    let mut seen = Seen::default();
    let mut staging = Vec::new();
    staging_files(root, &mut staging);
    seen.staging = staging.len();
    if !root.exists() {
        return (seen, Vec::new());
    }
    let store = local_store(root);
    let bucket = RepoStore::new(store.clone(), "");
    let id = match bucket.read_marker().await {
        Ok(Some(id)) => id,
        Ok(None) => {
            // Killed before the marker landed: nothing else may be there.
            let all: Vec<_> = store.list(None).try_collect().await.unwrap();
            let v = if all.is_empty() {
                Vec::new()
            } else {
                vec![format!(
                    "objects without a repository marker: {:?}",
                    all.iter()
                        .map(|m| m.location.to_string())
                        .collect::<Vec<_>>()
                )]
            };
            return (seen, v);
        }
        Err(e) => return (seen, vec![format!("marker unreadable: {e}")]),
    };
    seen.marker = true;
    let mut c = Checker {
        bucket,
        id,
        blobs: HashMap::new(),
        violations: Vec::new(),
    };
    let layout = c.bucket.layout().clone();
    for (i, d) in [
        layout.blobs_dir(),
        layout.manifests_dir(),
        layout.archive_dir(),
    ]
    .iter()
    .enumerate()
    {
        seen.files[i] = c.bucket.list_all(d).await.unwrap().len();
    }
    c.changes(&mut seen).await;
    let names = c.snapshots(&mut seen).await;
    c.hint(&names).await;
    c.reader(store).await;
    seen.blobs_checked = c.blobs.len();
    (seen, c.violations)
}

async fn state(root: &Path) -> (State, Repo) {
    let repo = Repo::open(local_store(root), "").await.unwrap();
    let s = common::repo::state(&repo).await;
    (s, repo)
}

fn sync_command(src: &Path, dst: &Path, both: bool, concurrency: usize) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crzarr"));
    cmd.arg("sync")
        .arg(src)
        .arg(dst)
        .args(if both { None } else { Some("--push") })
        .arg("--json")
        .args(["--concurrency", &concurrency.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs a sync; SIGKILLs it after `kill_after` unless it finished first.
fn run_sync(
    src: &Path,
    dst: &Path,
    both: bool,
    concurrency: usize,
    kill_after: Option<Duration>,
) -> Finished {
    run_killing(
        &mut sync_command(src, dst, both, concurrency),
        kill_after,
        Duration::from_millis(1),
    )
}

/// A complete sync: exit 0, nothing refused or ignored; returns its JSON report.
fn complete_sync(src: &Path, dst: &Path, both: bool, what: &str) -> serde_json::Value {
    let f = run_sync(src, dst, both, 32, None);
    assert_eq!(
        f.status.code(),
        Some(0),
        "{what}: sync failed: {}{}",
        f.stdout,
        f.stderr
    );
    let v: serde_json::Value = serde_json::from_str(&f.stdout)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", f.stdout));
    assert_eq!(v["refused"], serde_json::json!([]), "{what}: {v}");
    // Staging files left by killed runs are not crzarr objects, and not foreign either.
    assert_eq!(v["ignored"], serde_json::json!([]), "{what}: {v}");
    v
}

fn objects(t: &serde_json::Value) -> u64 {
    ["changes", "blobs", "snapshots", "manifests", "repaired"]
        .iter()
        .map(|k| t[*k].as_u64().unwrap_or_else(|| panic!("{k} missing: {t}")))
        .sum()
}

#[test]
fn killed_syncs_leave_only_whole_objects_and_a_rerun_completes() {
    let seed = std::env::var("CRZARR_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("sync crash test: seed {seed} (replay with CRZARR_CRASH_SEED={seed})");
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Every change either side committed.
    let mut commits = Vec::new();
    let mut source = rt.block_on(build_source(&src, &mut rng, &mut commits));
    let (src_seen, v) = rt.block_on(check_side(&src));
    assert!(v.is_empty(), "the source itself: {v:#?}");
    assert_eq!(src_seen.snapshots, 2, "{src_seen:?}");
    assert!(src_seen.pieces > 0 && src_seen.shards > 0, "{src_seen:?}");
    eprintln!(
        "source: {} commits, {src_seen:?}, built in {:?}",
        commits.len(),
        started.elapsed()
    );

    // Calibration: one uninterrupted run per concurrency into a fresh directory.
    let mut full = HashMap::new();
    for c in CONCURRENCY {
        let cal = dir.path().join(format!("calibrate-{c}"));
        let f = run_sync(&src, &cal, false, c, None);
        let took = f.took;
        assert_eq!(f.status.code(), Some(0), "{}{}", f.stdout, f.stderr);
        let (seen, v) = rt.block_on(check_side(&cal));
        assert!(v.is_empty(), "calibration copy, concurrency {c}: {v:#?}");
        assert_eq!(
            rt.block_on(state(&cal)).0,
            rt.block_on(state(&src)).0,
            "calibration copy, concurrency {c}"
        );
        eprintln!("full sync at concurrency {c}: {took:?} ({seen:?})");
        full.insert(c, took);
    }

    let (mut runs, mut kills, mut finished, mut max_staging) = (0, 0, 0, 0);
    let mut replica_commits = 0;
    let (mut ep, mut pieces_without_snapshot) = (0, 0);
    // An episode copies into a fresh destination: runs killed at random moments, until
    // one finishes before its kill (or after a few kills); then one more, uninterrupted,
    // sync completes it.
    while kills < TARGET_KILLS && runs < MAX_RUNS {
        let dst = dir.path().join(format!("dst-{ep}"));
        let (mut episode_kills, mut episode_runs) = (0, 0);
        loop {
            runs += 1;
            episode_runs += 1;
            // Writers between runs: the replica (once it is one) and the source.
            let dst_is_repo = rt.block_on(async {
                dst.exists()
                    && RepoStore::new(local_store(&dst), "")
                        .read_marker()
                        .await
                        .unwrap()
                        .is_some()
            });
            if dst_is_repo && rng.chance(40) {
                replica_commits += 1;
                let path = format!("replica/e{ep}/a{replica_commits}");
                let h = rt.block_on(async {
                    let mut r = Repo::open(local_store(&dst), "").await.unwrap();
                    replica_commit(&mut r, &mut rng, &path).await
                });
                commits.push(h);
            }
            if rng.chance(20) {
                let n = 1000 + runs;
                let h = rt.block_on(async {
                    source.refresh().await.unwrap();
                    source_commit(&mut source, &mut rng, n).await
                });
                commits.extend(h);
            }
            let both = rng.chance(40);
            let c = CONCURRENCY[rng.below(3) as usize];
            // Within the time an uninterrupted run into an empty directory takes; the
            // first run of an episode, one time in three, in its last third, where the
            // snapshot's pieces, shards and metadata are copied.
            let budget = full[&c].as_micros() as u64 * 9 / 10;
            let late = episode_runs == 1 && rng.chance(33);
            let from = if late { budget * 2 / 3 } else { 0 };
            let delay = Duration::from_micros(rng.range(from, budget + 1));
            let f = run_sync(&src, &dst, both, c, Some(delay));
            let what = format!(
                "seed {seed}, run {runs} (episode {ep}, {}, concurrency {c}, kill after {delay:?})",
                if both { "both ways" } else { "--push" }
            );
            if f.killed() {
                kills += 1;
                episode_kills += 1;
            } else {
                finished += 1;
                // A whole copy that finished: the machine's current pace.
                if episode_runs == 1 {
                    full.insert(c, (full[&c] + f.took) / 2);
                }
                assert_eq!(
                    f.status.code(),
                    Some(0),
                    "{what}: finished before the kill but failed: {}{}",
                    f.stdout,
                    f.stderr
                );
            }
            let (seen, v) = rt.block_on(check_side(&dst));
            max_staging = max_staging.max(seen.staging);
            // Killed between a snapshot's pieces and its metadata.
            if f.killed() && seen.snapshots == 0 && seen.files[1] > 0 {
                pieces_without_snapshot += 1;
            }
            eprintln!(
                "{what}: {}; destination: {} changes, {} snapshots, files (blobs, pieces, shards) {:?}, {} staging",
                if f.killed() { "killed" } else { "finished" },
                seen.changes,
                seen.snapshots,
                seen.files,
                seen.staging
            );
            assert!(
                v.is_empty(),
                "{what}: destination after the run ({}): {seen:?}\n{v:#?}",
                if f.killed() { "killed" } else { "finished" }
            );
            if both {
                let (seen, v) = rt.block_on(check_side(&src));
                max_staging = max_staging.max(seen.staging);
                assert!(
                    v.is_empty(),
                    "{what}: source after a two-way run: {seen:?}\n{v:#?}"
                );
            }
            if !f.killed() || episode_kills >= MAX_EPISODE_KILLS || runs >= MAX_RUNS {
                break;
            }
        }

        // One uninterrupted sync completes it: both hold the union and show one view.
        let what = format!("seed {seed}, episode {ep}");
        let report = complete_sync(&src, &dst, true, &what);
        for side in [&src, &dst] {
            let (seen, v) = rt.block_on(check_side(side));
            assert!(
                v.is_empty(),
                "{what}: {side:?} after the final sync: {v:#?}"
            );
            max_staging = max_staging.max(seen.staging);
        }
        let ((s_state, s_repo), (d_state, d_repo)) = rt.block_on(async {
            source.refresh().await.unwrap();
            (state(&src).await, state(&dst).await)
        });
        assert_eq!(s_state.0, d_state.0, "{what}: entries differ ({report})");
        assert_eq!(s_state.1, d_state.1, "{what}: conflicts differ");
        assert_eq!(s_state.2, d_state.2, "{what}: fold heads differ");
        for r in [&s_repo, &d_repo] {
            assert!(r.pending().is_empty(), "{what}: {:?}", r.pending());
            assert!(r.missing_history().is_empty(), "{what}");
            assert!(r.problems().is_empty(), "{what}: {:?}", r.problems());
        }
        let (at_src, at_dst) = rt.block_on(async {
            (
                present_or_covered(&src).await,
                present_or_covered(&dst).await,
            )
        });
        for h in &commits {
            assert!(
                at_dst.contains(h),
                "{what}: change {h} missing at the destination"
            );
            assert!(
                at_src.contains(h),
                "{what}: change {h} missing at the source"
            );
        }
        // Nothing is left to copy.
        let again = complete_sync(&src, &dst, true, &format!("{what}, rerun"));
        assert_eq!(objects(&again["a_to_b"]), 0, "{what}: {again}");
        assert_eq!(objects(&again["b_to_a"]), 0, "{what}: {again}");
        assert_eq!(again["a_to_b"]["bytes"], 0, "{what}: {again}");
        assert_eq!(again["b_to_a"]["bytes"], 0, "{what}: {again}");
        assert_eq!(again["initialized"], serde_json::Value::Null, "{what}");
        ep += 1;
    }
    eprintln!(
        "{runs} runs in {ep} episodes: {kills} killed mid-way ({pieces_without_snapshot} \
         between a snapshot's pieces and its metadata), {finished} finished first; \
         {replica_commits} replica commits; at most {max_staging} staging files left at \
         once; {:?} in all",
        started.elapsed()
    );
    assert!(
        kills >= MIN_KILLS,
        "seed {seed}: only {kills} of {runs} runs were killed mid-way"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn first_file(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.into_iter().next().expect("a file")
}

/// The checks the crash test relies on are not vacuous: each kind of partial state a
/// killed sync could leave is reported.
#[test]
fn the_checks_report_partial_objects() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng::new(7);
    rt.block_on(build_source(&src, &mut rng, &mut Vec::new()));
    let (_, v) = rt.block_on(check_side(&src));
    assert!(v.is_empty(), "{v:#?}");
    let crdt = |root: &Path, sub: &str| root.join(".crdt").join(sub);
    type Tamper = fn(&Path);
    let cases: [(&str, Tamper, &str); 6] = [
        (
            "a change file cut short",
            |p| {
                let f = first_file(p);
                let b = std::fs::read(&f).unwrap();
                std::fs::write(&f, &b[..b.len() / 2]).unwrap();
            },
            "partial or damaged change file",
        ),
        (
            "a blob missing",
            |p| std::fs::remove_file(first_file(p)).unwrap(),
            "is missing",
        ),
        (
            "a manifest piece missing",
            |p| std::fs::remove_file(first_file(p)).unwrap(),
            "manifest piece",
        ),
        (
            "an archive shard missing",
            |p| std::fs::remove_file(first_file(p)).unwrap(),
            "archive shard",
        ),
        (
            "snapshot metadata cut short",
            |p| {
                let f = first_file(p);
                let b = std::fs::read(&f).unwrap();
                std::fs::write(&f, &b[..b.len() - 1]).unwrap();
            },
            "partial or damaged snapshot metadata",
        ),
        (
            "objects without a marker",
            |p| std::fs::remove_file(p.join("repo.json")).unwrap(),
            "without a repository marker",
        ),
    ];
    let subs = ["ops", "blobs", "manifests", "archive", "snapshots", ""];
    for ((what, tamper, expect), sub) in cases.into_iter().zip(subs) {
        let copy = dir.path().join(what.replace(' ', "-"));
        copy_dir(&src, &copy);
        tamper(&crdt(&copy, sub));
        let (_, v) = rt.block_on(check_side(&copy));
        assert!(
            v.iter().any(|x| x.contains(expect)),
            "{what}: expected a violation containing {expect:?}, got {v:#?}"
        );
    }
    // A staging file, as `LocalFileSystem` leaves one when killed mid-write, is not one.
    let copy = dir.path().join("staging");
    copy_dir(&src, &copy);
    let change = first_file(&crdt(&copy, "ops"));
    let mut staged = change.clone().into_os_string();
    staged.push("#1");
    std::fs::write(&staged, b"half a change").unwrap();
    let (seen, v) = rt.block_on(check_side(&copy));
    assert_eq!(seen.staging, 1);
    assert!(v.is_empty(), "{v:#?}");
}
