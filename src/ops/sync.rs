//! Replication between two buckets of one repository (`spec/protocols.md` §7).
//!
//! Every object crzarr writes is immutable and content-addressed, so a sync is a set
//! union: copy what one side has and the other lacks. What is missing is decided from
//! names alone (one LIST each of `.crdt/ops/` and `.crdt/snapshots/` per side), plus,
//! when the listings differ, a side's newest snapshot where it decides something: a
//! destination's, so that history it compacted and garbage-collected is not copied
//! back to it and a source snapshot can be judged against it; a source's, when the
//! destination does not list it.
//!
//! Writes follow the writer's order, so no reader on the destination ever sees part
//! of a change: a change's blobs land before its file; a snapshot's manifest pieces,
//! archive shards and blobs land before its metadata. Every object is checked against
//! its name before it is written; a bad one is reported and not copied, and neither is
//! anything that needs it (a snapshot refused part-way may leave pieces and blobs that
//! nothing names, as a killed sync does). Killing a sync at any point and running it
//! again completes it: every write is idempotent.

use crate::error::{Error, Result};
use crate::format::change::Op;
use crate::format::ids::{BlobHash, ChangeHash, ObjectHash, RepoId};
use crate::format::snapshot::{
    ArchiveShard, CoveredChange, ManifestPiece, SnapChunk, SnapshotMeta,
};
use crate::io::progress::Progress;
use crate::io::store::{ListedChange, ListedSnapshot, Problem, RepoStore};
use crate::repo::Repo;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

/// Change files copied per batch: each batch fetches its changes, copies their blobs,
/// then writes the change files, so memory stays bounded on a large first sync.
const BATCH: usize = 4096;

/// Which way objects move between the two sides `a` and `b`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Both ways: afterwards each side holds the union.
    #[default]
    Both,
    /// From `a` to `b` only.
    Push,
    /// From `b` to `a` only.
    Pull,
}

impl Direction {
    fn a_to_b(self) -> bool {
        self != Direction::Pull
    }
    fn b_to_a(self) -> bool {
        self != Direction::Push
    }
}

/// One of the two sides of a sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The first location.
    A,
    /// The second location.
    B,
}

/// How to sync.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Which way to copy.
    pub direction: Direction,
    /// Requests in flight per direction.
    pub concurrency: usize,
    /// Let a side whose repository id differs, but which holds no changes and no
    /// snapshots (initialized by mistake), become a replica of the other.
    pub force: bool,
    /// Live counters for a progress display.
    pub progress: Option<Arc<Progress>>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            direction: Direction::Both,
            concurrency: crate::io::store::DEFAULT_CONCURRENCY,
            force: false,
            progress: None,
        }
    }
}

impl SyncOptions {
    /// One way only, from `b` to `a`: with [`Repo::sync`](crate::Repo::sync), copy
    /// what `other` holds into this repository's bucket (the step before modifying a
    /// replica that others also write).
    pub fn pull() -> Self {
        SyncOptions {
            direction: Direction::Pull,
            ..SyncOptions::default()
        }
    }

    /// One way only, from `a` to `b` (creating the repository there if it has none).
    pub fn push() -> Self {
        SyncOptions {
            direction: Direction::Push,
            ..SyncOptions::default()
        }
    }
}

/// What moved in one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Transfer {
    /// Change files copied.
    pub changes: u64,
    /// Blobs copied.
    pub blobs: u64,
    /// Snapshot metadata objects copied.
    pub snapshots: u64,
    /// Manifest pieces and archive shards copied.
    pub manifests: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Damaged change files on the destination replaced by the source's good copy.
    pub repaired: u64,
}

impl Transfer {
    /// Objects written.
    pub fn objects(&self) -> u64 {
        self.changes + self.blobs + self.snapshots + self.manifests + self.repaired
    }
}

/// What a sync did.
#[derive(Clone, Debug, Serialize)]
pub struct SyncReport {
    /// The repository id both sides hold.
    pub repo_id: String,
    /// The side that had no repository and was made a replica (or re-identified with
    /// `force`).
    pub initialized: Option<Side>,
    /// Copied from `a` to `b`.
    pub a_to_b: Transfer,
    /// Copied from `b` to `a`.
    pub b_to_a: Transfer,
    /// Objects not copied because they (or something they need) failed verification,
    /// and history that could not be carried over; each with its key.
    pub refused: Vec<Problem>,
    /// Files in the listings that are not crzarr objects: never copied.
    pub ignored: Vec<Problem>,
    /// Snapshots this sync wrote by compacting a side that now held snapshots compacted
    /// apart (their join, spec/merge.md §9.1), so its readers need not join them at
    /// every open: bucket keys.
    pub joins_written: Vec<String>,
    /// Wall time of the sync, in milliseconds.
    pub elapsed_ms: u64,
}

impl SyncReport {
    /// Whether nothing was refused.
    pub fn is_clean(&self) -> bool {
        self.refused.is_empty()
    }

    /// Whether anything was written.
    pub fn copied_anything(&self) -> bool {
        self.a_to_b.objects() + self.b_to_a.objects() > 0 || self.initialized.is_some()
    }
}

/// Copies what each side lacks from the other (see [`SyncOptions`] for one direction
/// only). A side with no repository is created as a replica of the other; two
/// repositories with different ids are refused.
pub async fn sync(a: &RepoStore, b: &RepoStore, opts: &SyncOptions) -> Result<SyncReport> {
    let started = Instant::now();
    let concurrency = opts.concurrency.max(1);
    // One round trip: both markers and all four listings.
    let (ma, mb, la, lb) = futures::join!(
        a.read_marker(),
        b.read_marker(),
        Listing::read(a),
        Listing::read(b)
    );
    // Keys are relative to each store: name the side, or an unreachable one is
    // indistinguishable from the other in `watch`'s warnings.
    let (ma, mb) = (ma.map_err(|e| locate(a, e))?, mb.map_err(|e| locate(b, e))?);
    let mut sa = SideState::new(a, la.map_err(|e| locate(a, e))?);
    let mut sb = SideState::new(b, lb.map_err(|e| locate(b, e))?);
    let (id, initialized) = settle_identity(opts, &sa, &sb, ma, mb).await?;
    let mut report = SyncReport {
        repo_id: id.to_string(),
        initialized,
        a_to_b: Transfer::default(),
        b_to_a: Transfer::default(),
        refused: Vec::new(),
        ignored: sa
            .listing
            .foreign
            .drain(..)
            .chain(sb.listing.foreign.drain(..))
            .collect(),
        joins_written: Vec::new(),
        elapsed_ms: 0,
    };
    let names = |s: &SideState<'_>| -> HashSet<crate::format::layout::SnapshotName> {
        s.listing.snaps.iter().map(|x| x.name).collect()
    };
    let differs =
        sa.listing.hashes != sb.listing.hashes || names(&sa) != names(&sb) || sa.sizes_differ(&sb);
    if differs {
        // The newest readable snapshot of each side that needs it, in one round trip.
        let (a_to_b, b_to_a) = (opts.direction.a_to_b(), opts.direction.b_to_a());
        let need_a = sa.needs_newest(&sb, b_to_a, a_to_b);
        let need_b = sb.needs_newest(&sa, a_to_b, b_to_a);
        let (na, nb) = futures::join!(
            async {
                match need_a {
                    true => sa.read_newest(id).await,
                    false => Ok(Vec::new()),
                }
            },
            async {
                match need_b {
                    true => sb.read_newest(id).await,
                    false => Ok(Vec::new()),
                }
            }
        );
        report.refused.extend(na?);
        report.refused.extend(nb?);
        let mut ab = if a_to_b {
            Some(plan(&mut sa, &mut sb, id, &mut report.refused).await?)
        } else {
            None
        };
        let mut ba = if b_to_a {
            Some(plan(&mut sb, &mut sa, id, &mut report.refused).await?)
        } else {
            None
        };
        // A change listed on both sides with different sizes: each side's copy is
        // fetched and verified before anything is written, so that which one is
        // damaged does not depend on how the two directions interleave (one would
        // otherwise read the copy the other had just repaired).
        let (ra, rb) = futures::join!(
            prefetch_repairs(ab.as_mut(), a, id, concurrency),
            prefetch_repairs(ba.as_mut(), b, id, concurrency)
        );
        ra?;
        rb?;
        let copy = |p: Option<Plan>, from: &RepoStore, to: &RepoStore| {
            let copier = Copier::new(
                from.clone(),
                to.clone(),
                id,
                concurrency,
                opts.progress.clone(),
            );
            async move {
                match p {
                    Some(p) => copier.run(p).await,
                    None => Ok((Transfer::default(), Vec::new())),
                }
            }
        };
        // Both directions at once: their writes never touch the same bucket.
        let (rab, rba) = futures::join!(copy(ab, a, b), copy(ba, b, a));
        let (tab, mut pab) = rab?;
        let (tba, mut pba) = rba?;
        // A side that received a snapshot may now hold two compacted apart: their join
        // is written once here, rather than computed by every reader there.
        for (t, to) in [(&tab, b), (&tba, a)] {
            if t.snapshots > 0 {
                write_join(to, &mut report).await?;
            }
        }
        report.a_to_b = tab;
        report.b_to_a = tba;
        report.refused.append(&mut pab);
        report.refused.append(&mut pba);
    }
    report.refused.sort_by(|x, y| x.key.cmp(&y.key));
    report.refused.dedup();
    report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

/// Compacts `bucket` if its readers join several snapshots (protocols.md §7.3). A
/// compaction that fails for another reason than the store is reported in `refused`
/// (readers still join at open; `crzarr compact` retries it).
async fn write_join(bucket: &RepoStore, report: &mut SyncReport) -> Result<()> {
    let mut repo = match Repo::open_bucket(bucket.clone()).await {
        Ok(r) => r,
        Err(e @ Error::Store { .. }) => return Err(locate(bucket, e)),
        Err(_) => return Ok(()),
    };
    if repo
        .fold()
        .snapshot_base()
        .is_none_or(|b| b.joined.is_empty())
    {
        return Ok(());
    }
    match repo.compact().await {
        Ok(c) => {
            if let Some(name) = c.snapshot {
                report
                    .joins_written
                    .push(format!("{}/{name}", bucket.layout.snapshots_dir()));
            }
            Ok(())
        }
        Err(e @ Error::Store { .. }) => Err(locate(bucket, e)),
        Err(e) => {
            report.refused.push(Problem {
                key: bucket.layout.snapshots_dir().to_string(),
                error: format!(
                    "the join of the snapshots here was not written ({e}); readers join them \
                     at open, and `crzarr compact` writes it"
                ),
            });
            Ok(())
        }
    }
}

/// A store error with the store named in its key.
fn locate(bucket: &RepoStore, e: Error) -> Error {
    match e {
        Error::Store { key, source } => Error::Store {
            key: format!("{} {key}", bucket.store),
            source,
        },
        e => e,
    }
}

/// Decides the repository id and creates or re-identifies a side when allowed.
async fn settle_identity(
    opts: &SyncOptions,
    sa: &SideState<'_>,
    sb: &SideState<'_>,
    ma: Option<RepoId>,
    mb: Option<RepoId>,
) -> Result<(RepoId, Option<Side>)> {
    let where_ = |s: &SideState<'_>| format!("{}/{}", s.bucket.store, s.bucket.layout.root());
    match (ma, mb) {
        (None, None) => Err(Error::NotARepo {
            location: format!("{} nor {}", where_(sa), where_(sb)),
        }),
        (Some(id), None) if opts.direction.a_to_b() => {
            Ok((sb.bucket.write_marker(id).await?, Some(Side::B)))
        }
        (None, Some(id)) if opts.direction.b_to_a() => {
            Ok((sa.bucket.write_marker(id).await?, Some(Side::A)))
        }
        (Some(_), None) => Err(Error::NotARepo {
            location: where_(sb),
        }),
        (None, Some(_)) => Err(Error::NotARepo {
            location: where_(sa),
        }),
        (Some(x), Some(y)) if x == y => Ok((x, None)),
        (Some(x), Some(y)) => {
            // Only an empty side may take the other's id: its own changes would
            // otherwise become foreign to every reader.
            let target = match (sa.is_empty(), sb.is_empty()) {
                (_, true) if opts.direction.a_to_b() => Some((Side::B, sb, x)),
                (true, _) if opts.direction.b_to_a() => Some((Side::A, sa, y)),
                _ => None,
            };
            match target {
                Some((side, s, id)) if opts.force => {
                    s.bucket.overwrite_marker(id).await?;
                    Ok((id, Some(side)))
                }
                _ => Err(Error::RepoMismatch {
                    a: where_(sa),
                    a_id: x.to_string(),
                    b: where_(sb),
                    b_id: y.to_string(),
                    hint: match target {
                        Some(_) => "the empty side was probably initialized by mistake: pass --force to make it a replica of the other".into(),
                        // An empty side that this direction only reads from.
                        None if sa.is_empty() || sb.is_empty() => "the empty side was probably initialized by mistake, but nothing is copied to it in this direction: sync towards it with --force to make it a replica of the other".into(),
                        None => "both hold changes, and a change belongs to exactly one repository: copy data across with a Zarr client instead".into(),
                    },
                }),
            }
        }
    }
}

/// One side's listings, split into what crzarr names and what it does not.
struct Listing {
    changes: Vec<ListedChange>,
    hashes: HashSet<ChangeHash>,
    snaps: Vec<ListedSnapshot>,
    foreign: Vec<Problem>,
}

impl Listing {
    async fn read(bucket: &RepoStore) -> Result<Listing> {
        let (changes, snaps) = futures::join!(bucket.list_changes(), bucket.list_snapshots());
        let ((changes, mut foreign), (snaps, mut snap_foreign)) = (changes?, snaps?);
        foreign.append(&mut snap_foreign);
        let hashes = changes.iter().map(|c| c.name.hash).collect();
        Ok(Listing {
            changes,
            hashes,
            snaps,
            foreign,
        })
    }

    fn newest_name(&self) -> Option<crate::format::layout::SnapshotName> {
        self.snaps.first().map(|s| s.name)
    }
}

/// The newest snapshot of a side that decodes, with its metadata (its change table
/// moved into the side's [`Coverage`]).
struct Newest {
    listed: ListedSnapshot,
    bytes: Bytes,
    meta: SnapshotMeta,
}

/// Which changes a side's newest snapshot covers: its change table, then archive
/// shards read on demand (each at most once).
#[derive(Clone)]
struct Coverage {
    bucket: RepoStore,
    table: Arc<Vec<CoveredChange>>,
    shards: Vec<Option<ObjectHash>>,
    loaded: HashMap<usize, Option<Arc<ArchiveShard>>>,
}

impl Coverage {
    fn new(bucket: &RepoStore) -> Self {
        Coverage {
            bucket: bucket.clone(),
            table: Arc::new(Vec::new()),
            shards: Vec::new(),
            loaded: HashMap::new(),
        }
    }

    /// Which of `hashes` are covered. Damaged shards are reported and count as
    /// covering nothing (which can only cause extra copying).
    async fn covered(
        &mut self,
        hashes: &[ChangeHash],
        problems: &mut Vec<Problem>,
    ) -> Result<HashSet<ChangeHash>> {
        let table = self.table.clone();
        let in_table = |h: &ChangeHash| table.binary_search_by(|c| c.hash.cmp(h)).is_ok();
        let mut out: HashSet<ChangeHash> = hashes.iter().filter(|h| in_table(h)).copied().collect();
        let rest: Vec<ChangeHash> = hashes.iter().filter(|h| !in_table(h)).copied().collect();
        let shards: std::collections::BTreeSet<usize> =
            rest.iter().map(CoveredChange::shard).collect();
        self.load(shards.into_iter().collect(), problems).await?;
        for h in rest {
            if let Some(Some(s)) = self.loaded.get(&CoveredChange::shard(&h))
                && s.find(&h).is_some()
            {
                out.insert(h);
            }
        }
        Ok(out)
    }

    async fn load(&mut self, shards: Vec<usize>, problems: &mut Vec<Problem>) -> Result<()> {
        let mut todo = Vec::new();
        for i in shards {
            if self.loaded.contains_key(&i) {
                continue;
            }
            match self.shards.get(i).copied().flatten() {
                Some(h) => todo.push((i, h)),
                None => {
                    self.loaded.insert(i, None);
                }
            }
        }
        let bucket = self.bucket.clone();
        let got: Vec<(usize, Result<ArchiveShard>)> = futures::stream::iter(todo)
            .map(|(i, h)| {
                let bucket = bucket.clone();
                async move { (i, crate::io::read::shard(&bucket, &h).await.map(|(s, _)| s)) }
            })
            .buffer_unordered(crate::format::snapshot::ARCHIVE_SHARDS)
            .collect()
            .await;
        for (i, r) in got {
            match r {
                Ok(s) => {
                    self.loaded.insert(i, Some(Arc::new(s)));
                }
                Err(e @ Error::Store { .. }) => return Err(e),
                Err(e) => {
                    problems.push(problem(&e));
                    self.loaded.insert(i, None);
                }
            }
        }
        Ok(())
    }
}

/// What is known of one side while planning.
struct SideState<'a> {
    bucket: &'a RepoStore,
    listing: Listing,
    newest: Option<Newest>,
    coverage: Coverage,
}

impl<'a> SideState<'a> {
    fn new(bucket: &'a RepoStore, listing: Listing) -> Self {
        SideState {
            bucket,
            listing,
            newest: None,
            coverage: Coverage::new(bucket),
        }
    }

    fn is_empty(&self) -> bool {
        self.listing.changes.is_empty() && self.listing.snaps.is_empty()
    }

    /// Whether this side's newest snapshot must be read: as a destination
    /// (`receives`), when the other side lists change files this one lacks (this
    /// side's snapshot may cover them) or a newest snapshot this one does not list
    /// (to judge whether it replaces this side's); as a source (`sends`), when this
    /// side's newest snapshot is not listed on the other (to copy or judge it).
    fn needs_newest(&self, other: &SideState<'_>, receives: bool, sends: bool) -> bool {
        let lists = |s: &SideState<'_>, name| s.listing.snaps.iter().any(|x| x.name == name);
        let lacks_changes = other
            .listing
            .hashes
            .iter()
            .any(|h| !self.listing.hashes.contains(h));
        let theirs_new = other.listing.newest_name().is_some_and(|n| !lists(self, n));
        // Any snapshot of ours the other lacks: a concurrent one holds history too.
        let mine_new = self.listing.snaps.iter().any(|x| !lists(other, x.name));
        (receives && (lacks_changes || theirs_new)) || (sends && mine_new)
    }

    /// Whether a change listed on both sides has different sizes (one copy is damaged).
    fn sizes_differ(&self, other: &SideState<'_>) -> bool {
        let theirs: HashMap<ChangeHash, u64> = other
            .listing
            .changes
            .iter()
            .map(|c| (c.name.hash, c.size))
            .collect();
        self.listing
            .changes
            .iter()
            .any(|c| theirs.get(&c.name.hash).is_some_and(|s| *s != c.size))
    }

    /// Reads the newest snapshot that decodes; damaged ones are returned as problems
    /// (and never copied).
    async fn read_newest(&mut self, id: RepoId) -> Result<Vec<Problem>> {
        let mut problems = Vec::new();
        for snap in &self.listing.snaps {
            // `None`: damaged (reported) or removed by GC since the listing: the next.
            if let Some(mut n) = read_snapshot_meta(self.bucket, snap, id, &mut problems).await? {
                self.coverage.table = Arc::new(std::mem::take(&mut n.meta.changes));
                self.coverage.shards = n.meta.archive.clone();
                self.newest = Some(n);
                break;
            }
        }
        Ok(problems)
    }
}

/// An error about one object, as a reported problem.
fn problem(e: &Error) -> Problem {
    Problem {
        key: e.key().unwrap_or_default().to_string(),
        error: e.to_string(),
    }
}

/// What to copy in one direction.
struct Plan {
    changes: Vec<ListedChange>,
    /// Listed on both sides with different sizes: the destination's copy is replaced
    /// by the source's once that is verified (a damaged copy never has the right size
    /// and hash both, and the right one is never replaced by a wrong one).
    repairs: Vec<ListedChange>,
    /// The source's copies of `repairs`, fetched and verified before any write.
    fetched_repairs: FetchedBatch,
    /// Snapshots to copy, the source's newest first.
    snapshots: Vec<SnapshotCopy>,
}

/// A snapshot to copy, and what the destination already has of it.
struct SnapshotCopy {
    listed: ListedSnapshot,
    bytes: Bytes,
    meta: SnapshotMeta,
    /// Pieces and shards of the destination's newest snapshot: already there.
    present: HashSet<ObjectHash>,
    /// Changes listed on the destination: their blobs are there.
    dst_listed: HashSet<ChangeHash>,
    /// The destination's snapshot coverage: those changes' live blobs are there.
    dst_coverage: Coverage,
    /// Whether it becomes the destination's newest snapshot (then the hint follows).
    newest: bool,
    /// Whether the source lists other snapshots: its readers join them, and the join
    /// may drop a value of this one, whose blob the source may then have collected.
    siblings: bool,
}

/// Decides what `src` has that `dst` lacks.
async fn plan(
    src: &mut SideState<'_>,
    dst: &mut SideState<'_>,
    id: RepoId,
    problems: &mut Vec<Problem>,
) -> Result<Plan> {
    let dst_sizes: HashMap<ChangeHash, u64> = dst
        .listing
        .changes
        .iter()
        .map(|c| (c.name.hash, c.size))
        .collect();
    let mut changes = Vec::new();
    let mut repairs = Vec::new();
    for c in &src.listing.changes {
        match dst_sizes.get(&c.name.hash) {
            None => changes.push(c.clone()),
            Some(s) if *s != c.size => repairs.push(c.clone()),
            Some(_) => {}
        }
    }
    // History the destination compacted (and maybe collected) is not copied back.
    if !changes.is_empty() && dst.newest.is_some() {
        let hashes: Vec<ChangeHash> = changes.iter().map(|c| c.name.hash).collect();
        let covered = dst.coverage.covered(&hashes, problems).await?;
        changes.retain(|c| !covered.contains(&c.name.hash));
    }
    let mut snapshots: Vec<SnapshotCopy> = plan_snapshot(src, dst, problems)
        .await?
        .into_iter()
        .collect();
    // The source's other snapshots that its newest does not supersede: history
    // joined by its readers (spec/merge.md §9) that the destination may lack.
    let mut superseded: HashSet<String> = src
        .newest
        .as_ref()
        .map(|n| n.meta.supersedes.iter().cloned().collect())
        .unwrap_or_default();
    let newest = src.newest.as_ref().map(|n| n.listed.name);
    let others: Vec<ListedSnapshot> = src
        .listing
        .snaps
        .iter()
        .filter(|s| Some(s.name) != newest && !dst.listing.snaps.iter().any(|d| d.name == s.name))
        .cloned()
        .collect();
    for snap in others {
        if superseded.contains(&snap.name.file_name()) {
            continue;
        }
        let Some(other) = read_snapshot_meta(src.bucket, &snap, id, problems).await? else {
            continue;
        };
        superseded.extend(other.meta.supersedes.iter().cloned());
        // Already covered there: nothing to join.
        if dst.newest.is_some() {
            let heads = other.meta.heads.clone();
            if dst.coverage.covered(&heads, problems).await?.len() == heads.len() {
                continue;
            }
        }
        snapshots.push(snapshot_copy(other, dst, false));
    }
    let several = src.listing.snaps.len() > 1;
    for c in &mut snapshots {
        c.siblings = several;
    }
    Ok(Plan {
        changes,
        repairs,
        fetched_repairs: Vec::new(),
        snapshots,
    })
}

/// What copying snapshot `s` to `dst` needs: the pieces and shards of the
/// destination's newest snapshot are there already.
fn snapshot_copy(s: Newest, dst: &SideState<'_>, newest: bool) -> SnapshotCopy {
    let present = dst
        .newest
        .as_ref()
        .map(|d| {
            d.meta
                .nodes
                .iter()
                .flat_map(|n| n.pieces.iter().map(|p| p.hash))
                .chain(d.meta.archive.iter().flatten().copied())
                .collect()
        })
        .unwrap_or_default();
    SnapshotCopy {
        listed: s.listed,
        bytes: s.bytes,
        meta: s.meta,
        present,
        dst_listed: dst.listing.hashes.clone(),
        dst_coverage: dst.coverage.clone(),
        newest,
        siblings: false,
    }
}

/// Reads and checks one listed snapshot's metadata; a damaged one is reported (and
/// never copied), one gone since the listing is `None`.
async fn read_snapshot_meta(
    bucket: &RepoStore,
    snap: &ListedSnapshot,
    id: RepoId,
    problems: &mut Vec<Problem>,
) -> Result<Option<Newest>> {
    let key = snap.key.to_string();
    let got = match crate::io::read::snapshot_meta(bucket, id, snap).await {
        Ok(None) => return Ok(None),
        Ok(Some((meta, bytes))) => Ok((bytes, meta)),
        Err(e) => Err(e),
    };
    match got {
        Ok((bytes, meta)) => Ok(Some(Newest {
            listed: snap.clone(),
            bytes,
            meta,
        })),
        Err(e @ (Error::Store { .. } | Error::UnsupportedVersion { .. })) => Err(e),
        Err(e) => {
            problems.push(Problem {
                key,
                error: e.to_string(),
            });
            Ok(None)
        }
    }
}

/// Whether the source's newest snapshot goes across: unless the destination lists it
/// or its own newest snapshot covers everything it covers. A snapshot concurrent with
/// the destination's (the two sides compacted and collected apart) goes too: readers
/// there join the two (spec/merge.md §9), so no history is lost to either side.
async fn plan_snapshot(
    src: &mut SideState<'_>,
    dst: &mut SideState<'_>,
    problems: &mut Vec<Problem>,
) -> Result<Option<SnapshotCopy>> {
    let Some(s) = &src.newest else {
        return Ok(None);
    };
    let (name, s_heads) = (s.listed.name, s.meta.heads.clone());
    if dst.listing.snaps.iter().any(|d| d.name == name) {
        return Ok(None);
    }
    if dst.newest.is_some()
        && dst.coverage.covered(&s_heads, problems).await?.len() == s_heads.len()
    {
        return Ok(None);
    }
    let newest = match &dst.newest {
        Some(d) => name > d.listed.name,
        None => dst.listing.snaps.iter().all(|d| d.name < name),
    };
    let Some(s) = src.newest.as_ref() else {
        return Ok(None);
    };
    let copy = Newest {
        listed: s.listed.clone(),
        bytes: s.bytes.clone(),
        meta: s.meta.clone(),
    };
    Ok(Some(snapshot_copy(copy, dst, newest)))
}

/// Blobs of live values, by the change that wrote them (if known).
type WriterBlobs = (Option<ChangeHash>, Vec<(BlobHash, u64)>);

/// Executes a plan from one bucket to another.
struct Copier {
    src: RepoStore,
    dst: RepoStore,
    id: RepoId,
    concurrency: usize,
    progress: Option<Arc<Progress>>,
    done: Transfer,
    refused: Vec<Problem>,
    /// Blobs written (or found bad) in this sync: never twice.
    blobs: HashMap<BlobHash, bool>,
    /// Blobs the source's state uses, once read ([`Copier::source_blobs`]).
    source_blobs: Option<Option<Arc<HashSet<BlobHash>>>>,
}

/// A change file fetched from the source and verified.
struct Fetched {
    listed: ListedChange,
    bytes: Bytes,
    blobs: Vec<(BlobHash, u64)>,
}

/// Changes fetched from the source, each verified or not.
type FetchedBatch = Vec<(ListedChange, Result<Fetched>)>;

/// Fetches and verifies changes from `src`, in parallel.
async fn fetch_changes(
    src: &RepoStore,
    id: RepoId,
    batch: &[ListedChange],
    concurrency: usize,
) -> FetchedBatch {
    futures::stream::iter(batch.iter().cloned())
        .map(|c| {
            let src = src.clone();
            async move {
                let r = fetch_change(&src, id, &c).await;
                (c, r)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Fetches and verifies the source's copies of the changes a plan repairs.
async fn prefetch_repairs(
    plan: Option<&mut Plan>,
    src: &RepoStore,
    id: RepoId,
    concurrency: usize,
) -> Result<()> {
    if let Some(p) = plan
        && !p.repairs.is_empty()
    {
        let mut fetched = fetch_changes(src, id, &p.repairs, concurrency).await;
        // A store error fails the sync now, before anything is written.
        if let Some(i) = fetched
            .iter()
            .position(|(_, r)| matches!(r, Err(Error::Store { .. })))
            && let (_, Err(e)) = fetched.swap_remove(i)
        {
            return Err(e);
        }
        p.fetched_repairs = fetched;
    }
    Ok(())
}

impl Copier {
    fn new(
        src: RepoStore,
        dst: RepoStore,
        id: RepoId,
        concurrency: usize,
        progress: Option<Arc<Progress>>,
    ) -> Self {
        Copier {
            src,
            dst,
            id,
            concurrency,
            progress,
            done: Transfer::default(),
            refused: Vec::new(),
            blobs: HashMap::new(),
            source_blobs: None,
        }
    }

    fn plan_progress(&self, objects: u64, bytes: u64) {
        if let Some(p) = &self.progress {
            p.plan(objects, bytes);
        }
    }

    fn unplan_progress(&self, objects: u64, bytes: u64) {
        if let Some(p) = &self.progress {
            p.unplan(objects, bytes);
        }
    }

    fn tick(&self, bytes: u64) {
        if let Some(p) = &self.progress {
            p.done(bytes);
        }
    }

    fn refuse(&mut self, key: impl Into<String>, error: impl Into<String>) {
        self.refused.push(Problem {
            key: key.into(),
            error: error.into(),
        });
    }

    async fn run(mut self, mut plan: Plan) -> Result<(Transfer, Vec<Problem>)> {
        self.plan_progress(
            (plan.changes.len() + plan.fetched_repairs.len()) as u64,
            plan.changes
                .iter()
                .map(|c| c.size)
                .chain(plan.fetched_repairs.iter().map(|(c, _)| c.size))
                .sum(),
        );
        for batch in plan.changes.chunks(BATCH) {
            let fetched = fetch_changes(&self.src, self.id, batch, self.concurrency).await;
            self.land_changes(fetched, false).await?;
        }
        let repairs = std::mem::take(&mut plan.fetched_repairs);
        if !repairs.is_empty() {
            self.land_changes(repairs, true).await?;
        }
        for s in plan.snapshots {
            self.copy_snapshot(s).await?;
        }
        Ok((self.done, self.refused))
    }

    /// Copies the blobs of verified changes, then writes the change files whose
    /// blobs all landed (`repair`: overwriting the destination's damaged copy).
    async fn land_changes(&mut self, fetched: FetchedBatch, repair: bool) -> Result<()> {
        let mut good = Vec::with_capacity(fetched.len());
        for (c, r) in fetched {
            match r {
                Ok(f) => good.push(f),
                Err(e @ Error::Store { .. }) => return Err(e),
                // Removed by garbage collection after the listing: a newer snapshot
                // covers it, and the next sync copies that.
                Err(Error::Vanished { .. }) => self.unplan_progress(1, c.size),
                Err(e) => {
                    self.unplan_progress(1, c.size);
                    self.refuse(c.key.to_string(), e.to_string());
                }
            }
        }
        let wanted: BTreeMap<BlobHash, u64> = good
            .iter()
            .flat_map(|f| f.blobs.iter().copied())
            .filter(|(h, _)| !self.blobs.contains_key(h))
            .collect();
        // A blob missing or damaged here is reported by `copy_blobs` and not copied,
        // but the change is: it is valid, and its descendants must not wait for ever
        // (protocols.md §7.4). Only reads of the chunks using that blob fail, naming both,
        // until a writer puts or deletes those chunks again.
        self.copy_blobs(wanted, false).await?;
        let writes = good;
        let dst = self.dst.clone();
        let written: Vec<Result<u64>> = futures::stream::iter(writes)
            .map(|f| {
                let dst = dst.clone();
                async move {
                    let key = dst.layout.change(&f.listed.name);
                    let n = f.bytes.len() as u64;
                    if repair {
                        dst.put_blob(&key, f.bytes).await?;
                    } else {
                        dst.put_once(&key, f.bytes).await?;
                    }
                    Ok(n)
                }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        for w in written {
            let n = w?;
            self.tick(n);
            self.done.bytes += n;
            if repair {
                self.done.repaired += 1;
            } else {
                self.done.changes += 1;
            }
        }
        Ok(())
    }

    /// Copies blobs (each GET verified against its name, then PUT), in parallel.
    /// Copies blobs; one missing or damaged at the source is reported, or with
    /// `defer` returned for the caller to judge.
    async fn copy_blobs(
        &mut self,
        wanted: BTreeMap<BlobHash, u64>,
        defer: bool,
    ) -> Result<Vec<(BlobHash, Error)>> {
        let mut deferred = Vec::new();
        self.plan_progress(wanted.len() as u64, wanted.values().sum());
        let (src, dst) = (self.src.clone(), self.dst.clone());
        let results: Vec<(BlobHash, u64, Result<()>)> = futures::stream::iter(wanted)
            .map(|(h, len)| {
                let (src, dst) = (src.clone(), dst.clone());
                async move {
                    let r = async {
                        let bytes = src.get_blob(&h, len).await?.ok_or_else(|| {
                            Error::corrupt(src.layout.blob(&h).as_ref(), "blob is missing")
                        })?;
                        dst.put_blob(&dst.layout.blob(&h), bytes).await
                    }
                    .await;
                    (h, len, r)
                }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        for (h, n, r) in results {
            match r {
                Ok(()) => {
                    self.blobs.insert(h, true);
                    self.tick(n);
                    self.done.blobs += 1;
                    self.done.bytes += n;
                }
                Err(e @ Error::Store { .. }) => return Err(e),
                Err(e) if defer => {
                    self.unplan_progress(1, n);
                    deferred.push((h, e));
                }
                Err(e) => {
                    self.unplan_progress(1, n);
                    self.blobs.insert(h, false);
                    self.refused.push(problem(&e));
                }
            }
        }
        Ok(deferred)
    }

    /// Copies the blobs of the snapshot's objects (see [`Self::copy_values`]).
    async fn copy_object_blobs(&mut self, s: &mut SnapshotCopy) -> Result<()> {
        let mut values: BTreeMap<Option<ChangeHash>, Vec<(BlobHash, u64)>> = BTreeMap::new();
        for (_, entries) in &s.meta.objects {
            for ((change, _), v) in entries {
                if let SnapChunk::Blob { hash, len } = v {
                    let writer = s.meta.changes.get(*change as usize).map(|c| c.hash);
                    values.entry(writer).or_default().push((*hash, *len));
                }
            }
        }
        self.copy_values(s, values).await
    }

    /// Copies the blobs of live values, by the change that wrote them, whose writer
    /// the destination does not know (a known writer's blobs are there already).
    /// A blob missing or damaged here is reported and not copied; the snapshot still
    /// is (only reads of the chunks that use the blob fail).
    async fn copy_values(
        &mut self,
        s: &mut SnapshotCopy,
        values: BTreeMap<Option<ChangeHash>, Vec<(BlobHash, u64)>>,
    ) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let writers: Vec<ChangeHash> = values
            .keys()
            .filter_map(|w| *w)
            .filter(|w| !s.dst_listed.contains(w))
            .collect();
        let mut coverage_problems = Vec::new();
        let known = s
            .dst_coverage
            .covered(&writers, &mut coverage_problems)
            .await?;
        self.refused.append(&mut coverage_problems);
        let values: Vec<WriterBlobs> = values
            .into_iter()
            .filter(|(w, _)| !w.is_some_and(|w| s.dst_listed.contains(&w) || known.contains(&w)))
            .collect();
        let wanted: BTreeMap<BlobHash, u64> = values
            .into_iter()
            .flat_map(|(_, blobs)| blobs)
            .filter(|(h, _)| self.blobs.get(h) != Some(&true))
            .collect();
        // As for changes: a lost blob is reported, and costs only its chunks. With
        // several snapshots at the source, a value one of them holds may be dropped by
        // their join (merge.md §9.1) and its blob rightly collected there: a missing
        // blob is reported only if the source's own state still uses it.
        let missing = self.copy_blobs(wanted, s.siblings).await?;
        if missing.is_empty() {
            return Ok(());
        }
        let used = self.source_blobs().await?;
        for (h, e) in missing {
            if used.as_ref().is_none_or(|u| u.contains(&h)) {
                self.blobs.insert(h, false);
                self.refused.push(problem(&e));
            }
        }
        Ok(())
    }

    /// Blobs the source's state uses (every live value of the join of its snapshots
    /// and its changes), read once per sync; `None` if the source does not open.
    async fn source_blobs(&mut self) -> Result<Option<Arc<HashSet<BlobHash>>>> {
        if let Some(u) = &self.source_blobs {
            return Ok(u.clone());
        }
        let used = match Repo::open_bucket(self.src.clone()).await {
            Ok(r) => match r.live_blobs().await {
                Ok(u) => Some(Arc::new(u)),
                Err(e @ Error::Store { .. }) => return Err(e),
                Err(_) => None,
            },
            Err(e @ Error::Store { .. }) => return Err(e),
            Err(_) => None,
        };
        self.source_blobs = Some(used.clone());
        Ok(used)
    }

    /// Copies a snapshot: the shards and pieces the destination lacks, in waves of
    /// `concurrency` (so memory holds one wave), each object verified then written,
    /// then the blobs of the wave's live values written by changes the destination
    /// does not know; the metadata last. If a piece or shard fails verification the
    /// metadata is not written: pieces, shards and blobs already written are named by
    /// nothing there (like those of a killed sync), and garbage collection removes them.
    async fn copy_snapshot(&mut self, mut s: SnapshotCopy) -> Result<()> {
        let key = s.listed.key.to_string();
        let pieces: Vec<(ObjectHash, u64)> = s
            .meta
            .nodes
            .iter()
            .flat_map(|n| n.pieces.iter().map(|p| (p.hash, p.bytes)))
            .filter(|(h, _)| !s.present.contains(h))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
        let shards: Vec<ObjectHash> = s
            .meta
            .archive
            .iter()
            .flatten()
            .filter(|h| !s.present.contains(h))
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        // Shard sizes are learnt when they are read.
        let objects = (pieces.len() + shards.len() + 1) as u64;
        let mut planned = s.listed.size + pieces.iter().map(|(_, n)| n).sum::<u64>();
        self.plan_progress(objects, planned);
        let (src, dst) = (self.src.clone(), self.dst.clone());
        let todo: Vec<(ObjectHash, bool)> = shards
            .into_iter()
            .map(|h| (h, false))
            .chain(pieces.into_iter().map(|(h, _)| (h, true)))
            .collect();
        let (mut written, mut written_bytes) = (0u64, 0u64);
        let mut failed = None;
        // In waves of `concurrency` objects, each wave collected whole (no request
        // is left waiting unpolled while blobs are copied), then its pieces' blobs.
        'waves: for wave in todo.chunks(self.concurrency) {
            let results: Vec<Result<(u64, Option<ManifestPiece>)>> =
                futures::stream::iter(wave.iter().copied())
                    .map(|(h, is_piece)| {
                        let (src, dst) = (src.clone(), dst.clone());
                        async move {
                            let (key, bytes, piece) = if is_piece {
                                let (piece, bytes) = crate::io::read::piece(&src, &h).await?;
                                (dst.layout.manifest(&h), bytes, Some(piece))
                            } else {
                                let (_, bytes) = crate::io::read::shard(&src, &h).await?;
                                (dst.layout.archive_shard(&h), bytes, None)
                            };
                            let n = bytes.len() as u64;
                            dst.put_blob(&key, bytes).await?;
                            Ok((n, piece))
                        }
                    })
                    .buffer_unordered(self.concurrency)
                    .collect()
                    .await;
            // Blob values of this wave's pieces, by the change that wrote them.
            let mut values: BTreeMap<Option<ChangeHash>, Vec<(BlobHash, u64)>> = BTreeMap::new();
            for r in results {
                let (n, piece) = match r {
                    Ok(x) => x,
                    Err(e @ Error::Store { .. }) => return Err(e),
                    // Collected since the listing: a newer snapshot replaced this
                    // one there, and the next sync copies that.
                    Err(Error::Vanished { .. }) => {
                        failed.get_or_insert(None);
                        continue;
                    }
                    Err(e) => {
                        if !matches!(failed, Some(Some(_))) {
                            failed = Some(Some(format!(
                                "not copied: one of its objects failed verification: {e}"
                            )));
                        }
                        continue;
                    }
                };
                if piece.is_none() {
                    self.plan_progress(0, n);
                    planned += n;
                }
                self.tick(n);
                (written, written_bytes) = (written + 1, written_bytes + n);
                self.done.manifests += 1;
                self.done.bytes += n;
                if let Some(piece) = &piece {
                    for (_, entries) in &piece.entries {
                        for ((change, _), v) in entries {
                            if let SnapChunk::Blob { hash, len } = v {
                                let writer = piece.changes.get(*change as usize).map(|c| c.hash);
                                values.entry(writer).or_default().push((*hash, *len));
                            }
                        }
                    }
                }
            }
            if failed.is_some() {
                break 'waves;
            }
            self.copy_values(&mut s, values).await?;
        }
        if failed.is_none() {
            self.copy_object_blobs(&mut s).await?;
        }
        if let Some(why) = failed {
            self.unplan_progress(
                objects.saturating_sub(written),
                planned.saturating_sub(written_bytes),
            );
            if let Some(why) = why {
                self.refuse(key, why);
            }
            return Ok(());
        }
        // The metadata last: the snapshot appears whole or not at all.
        let meta_key = self.dst.layout.snapshot(&s.listed.name);
        self.dst.put_once(&meta_key, s.bytes.clone()).await?;
        let n = s.bytes.len() as u64;
        self.tick(n);
        self.done.snapshots += 1;
        self.done.bytes += n;
        if s.newest {
            // Only a hint: a lost race with a compactor costs readers one round trip.
            self.dst
                .put_blob(&self.dst.layout.latest_hint(), s.bytes)
                .await?;
        }
        Ok(())
    }
}

/// Fetches a change from the source and checks it like a reader would: size, hash,
/// strict decoding, name against header, repository.
async fn fetch_change(src: &RepoStore, id: RepoId, c: &ListedChange) -> Result<Fetched> {
    let (change, bytes) = crate::io::read::change_bytes(src, id, c)
        .await?
        .ok_or_else(|| Error::Vanished {
            key: c.key.to_string(),
        })?;
    let blobs = change.ops.iter().filter_map(Op::blob).collect();
    Ok(Fetched {
        listed: c.clone(),
        bytes,
        blobs,
    })
}

impl crate::repo::Repo {
    /// Syncs this repository's bucket with `other` (both ways unless `opts` says
    /// otherwise), then refreshes this handle.
    pub async fn sync(&mut self, other: &RepoStore, opts: &SyncOptions) -> Result<SyncReport> {
        let report = sync(self.bucket(), other, opts).await?;
        self.refresh().await?;
        Ok(report)
    }

    /// Copies what `other` holds and this repository's bucket lacks, then refreshes:
    /// the step before modifying a replica that others also write.
    #[deprecated(note = "use `repo.sync(other, &SyncOptions::pull())`")]
    pub async fn pull_from(&mut self, other: &RepoStore) -> Result<SyncReport> {
        let opts = SyncOptions {
            direction: Direction::Pull,
            concurrency: self.concurrency(),
            ..SyncOptions::default()
        };
        self.sync(other, &opts).await
    }

    /// Copies what this repository's bucket holds and `other` lacks (creating the
    /// repository there if it has none).
    #[deprecated(note = "use `crzarr::sync(repo.bucket(), other, &SyncOptions::push())`")]
    pub async fn push_to(&self, other: &RepoStore) -> Result<SyncReport> {
        let opts = SyncOptions {
            direction: Direction::Push,
            concurrency: self.concurrency(),
            ..SyncOptions::default()
        };
        sync(self.bucket(), other, &opts).await
    }
}
