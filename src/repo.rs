//! A repository handle: open (list, fetch in parallel, fold), refresh, read the view,
//! and publish changes written by a [`WriteSession`](crate::WriteSession).

use crate::error::{Error, Result};
use crate::fold::view::{ChunkRef, Conflict, Entry, View, ViewIndex};
use crate::fold::{
    ChangeInfo, Fold, Fork, InsertOutcome, LoadedPiece, PendingChange, RejectedChange,
};
use crate::format::change::{Change, MAX_CHANGE_BYTES, Op};
use crate::format::ids::{ActorId, BlobHash, ChangeHash, HARD_MAX_HLC, Hlc, ObjectHash, RepoId};
use crate::format::layout::{ChangeName, SnapshotName};
use crate::format::snapshot::{ArchiveShard, CoveredChange, MAX_META_BYTES, PieceRef};
use crate::io::reference::ReferenceSources;
use crate::io::store::{DEFAULT_CONCURRENCY, ListedChange, ListedSnapshot, Problem, RepoStore};
use bytes::Bytes;
use futures::StreamExt;
use object_store::ObjectStore;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// What a refresh (or open) did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RefreshReport {
    /// Change files listed.
    pub listed: usize,
    /// Change files fetched (new since the last refresh).
    pub fetched: usize,
    /// Changes applied to the fold.
    pub applied: usize,
    /// Changes now waiting for dependencies.
    pub pending: usize,
    /// Files skipped in this refresh, with reasons.
    pub problems: Vec<Problem>,
    /// Snapshot the state was (re)loaded from in this refresh, if any.
    pub snapshot: Option<String>,
    /// Listed change files the snapshot already covers (not fetched).
    pub covered: usize,
}

/// How many times open restarts when garbage collection removes what it listed.
const OPEN_ATTEMPTS: usize = 4;

/// An open repository: the folded state of every change it has read, and the
/// Zarr v3 view of that state.
pub struct Repo {
    bucket: RepoStore,
    id: RepoId,
    /// Shared with write sessions, which stage against it; changed copy-on-write.
    fold: Arc<Fold>,
    view: Arc<ViewIndex>,
    /// Changes already fetched and decoded: never fetched twice. (Bad files are
    /// remembered by key in `problems`, so they cannot hide a good file's hash.)
    seen: HashSet<ChangeHash>,
    problems: BTreeMap<String, String>,
    /// Keys of changes inserted as pending, to report them if later rejected.
    pending_keys: HashMap<ChangeHash, String>,
    actor: ActorId,
    next_seq: u64,
    concurrency: usize,
    /// Coverage archive shards read so far.
    archive: HashMap<ObjectHash, Arc<ArchiveShard>>,
    /// Snapshots known not to hold anything this fold lacks.
    known_snapshots: HashSet<SnapshotName>,
    /// Pending changes needing changes that are neither listed nor covered.
    missing_history: Vec<Problem>,
    /// Keys of change files that can never apply here, whatever arrives later: they
    /// fail their hash, decoding or structure, or are invalid against their causal
    /// past. (Not newer-version or foreign files, which a newer build or another
    /// repository reads.) Garbage collection moves old ones to quarantine. The flag
    /// says the verdict came from the bytes alone (they failed to read as a change).
    rejected_files: BTreeMap<String, (String, bool)>,
    /// Where chunks adopted in place are read from.
    sources: Arc<ReferenceSources>,
}

impl Repo {
    /// Creates a repository at `prefix` in `store` (or opens the one already there).
    pub async fn init(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Repo> {
        let bucket = RepoStore::new(store, prefix);
        let id = bucket.write_marker(RepoId::generate()).await?;
        Self::open_bucket_with(bucket, Some(id), DEFAULT_CONCURRENCY).await
    }

    /// Opens the repository at `prefix` in `store`: one LIST and one marker GET, then
    /// every change fetched in parallel and folded.
    pub async fn open(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Repo> {
        Self::open_bucket_with(RepoStore::new(store, prefix), None, DEFAULT_CONCURRENCY).await
    }

    /// [`Repo::open`] with `concurrency` requests in flight for fan-out (default 32),
    /// from the first fetch on.
    pub async fn open_with_concurrency(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        concurrency: usize,
    ) -> Result<Repo> {
        Self::open_bucket_with(RepoStore::new(store, prefix), None, concurrency).await
    }

    async fn open_bucket_with(
        bucket: RepoStore,
        known_id: Option<RepoId>,
        concurrency: usize,
    ) -> Result<Repo> {
        Self::open_reporting(bucket, known_id, concurrency)
            .await
            .map(|(r, _)| r)
    }

    async fn open_reporting(
        bucket: RepoStore,
        known_id: Option<RepoId>,
        concurrency: usize,
    ) -> Result<(Repo, RefreshReport)> {
        let mut last = None;
        for _ in 0..OPEN_ATTEMPTS {
            match Self::open_once(bucket.clone(), known_id, concurrency).await {
                Err(e @ Error::Vanished { .. }) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| Error::Vanished {
            key: bucket.layout.root().to_string(),
        }))
    }

    /// One open attempt: in one round trip the marker, both listings and the latest
    /// hint; then the newest snapshot's metadata (unless the hint is it); then the
    /// uncovered changes, in parallel.
    async fn open_once(
        bucket: RepoStore,
        known_id: Option<RepoId>,
        concurrency: usize,
    ) -> Result<(Repo, RefreshReport)> {
        let marker = async {
            match known_id {
                Some(id) => Ok(Some(id)),
                None => bucket.read_marker().await,
            }
        };
        let hint_key = bucket.layout.latest_hint();
        let (id, listing, snaps, hint) = futures::join!(
            marker,
            bucket.list_changes(),
            bucket.list_snapshots(),
            bucket.get(&hint_key, MAX_META_BYTES),
        );
        let id = id?.ok_or_else(|| Error::NotARepo {
            location: format!("{}/{}", bucket.store, bucket.layout.root()),
        })?;
        // A missing or unreadable hint only costs a round trip.
        Self::open_from(
            bucket,
            id,
            listing?,
            snaps?,
            hint.ok().flatten(),
            concurrency,
        )
        .await
    }

    /// Builds a handle from listings already made: the newest snapshot that reads,
    /// then the uncovered changes.
    pub(crate) async fn open_from(
        bucket: RepoStore,
        id: RepoId,
        listing: (Vec<ListedChange>, Vec<Problem>),
        (snaps, snap_problems): (Vec<ListedSnapshot>, Vec<Problem>),
        hint: Option<Bytes>,
        concurrency: usize,
    ) -> Result<(Repo, RefreshReport)> {
        let mut repo = Repo {
            bucket,
            id,
            fold: Arc::new(Fold::new(id)),
            view: Arc::default(),
            seen: HashSet::new(),
            problems: BTreeMap::new(),
            pending_keys: HashMap::new(),
            actor: ActorId::generate(),
            next_seq: 1,
            concurrency: concurrency.max(1),
            archive: HashMap::new(),
            known_snapshots: HashSet::new(),
            missing_history: Vec::new(),
            rejected_files: BTreeMap::new(),
            sources: Arc::default(),
        };
        for p in snap_problems {
            repo.problems.insert(p.key, p.error);
        }
        let mut loaded = None;
        for snap in &snaps {
            match repo.read_snapshot(snap, hint.as_ref()).await {
                Ok(fold) => {
                    repo.fold = Arc::new(fold);
                    loaded = Some(snap.name);
                    break;
                }
                Err(e @ (Error::Store { .. } | Error::Vanished { .. })) => return Err(e),
                // A newer format is not skipped: reading around it could misread.
                Err(e @ Error::UnsupportedVersion { .. }) => return Err(e),
                Err(e) => {
                    repo.problems.insert(snap.key.to_string(), e.to_string());
                }
            }
        }
        if let Some(name) = loaded {
            repo.known_snapshots.insert(name);
            // Every other snapshot the loaded one does not supersede holds history
            // it may lack (compacted apart on another replica, or copied in raw):
            // joined, so readers show the fold of everything any snapshot covers.
            for snap in &snaps {
                if repo.problems.contains_key(snap.key.as_ref())
                    || repo.known_snapshots.contains(&snap.name)
                    || repo
                        .fold
                        .snapshot_base()
                        .is_some_and(|b| b.supersedes.iter().any(|n| *n == snap.name.file_name()))
                {
                    continue;
                }
                match repo.join_listed(snap).await {
                    Ok(()) => {
                        repo.known_snapshots.insert(snap.name);
                    }
                    Err(e @ (Error::Store { .. } | Error::Vanished { .. })) => return Err(e),
                    Err(e @ Error::UnsupportedVersion { .. }) => return Err(e),
                    Err(e) => {
                        repo.problems.insert(snap.key.to_string(), e.to_string());
                    }
                }
            }
        }
        let (mut report, vanished) = repo.ingest(listing).await?;
        if vanished {
            return Err(Error::Vanished {
                key: repo.bucket.layout.ops_dir().to_string(),
            });
        }
        report.snapshot = loaded.map(|n| n.file_name());
        Ok((repo, report))
    }

    /// Reads a snapshot's metadata (from the hint when it is that snapshot) and
    /// starts a fold from it.
    async fn read_snapshot(&self, snap: &ListedSnapshot, hint: Option<&Bytes>) -> Result<Fold> {
        let key = snap.key.to_string();
        let bytes = match hint.filter(|h| ObjectHash::of(h) == snap.name.hash) {
            Some(h) => h.clone(),
            None => crate::io::read::snapshot_meta_bytes(&self.bucket, snap)
                .await?
                .ok_or_else(|| Error::Vanished { key: key.clone() })?,
        };
        Fold::decode_snapshot(&key, &bytes, snap.name, self.id)
    }

    /// Joins listed snapshot `snap` into the fold (spec/merge.md §9), unless the fold
    /// already covers everything it covers. The fold must hold snapshot state only
    /// (nothing applied since).
    async fn join_listed(&mut self, snap: &ListedSnapshot) -> Result<()> {
        let other = self.read_snapshot(snap, None).await?;
        // Subsumed: its heads are covered here (coverage is causally closed).
        if self.covers_heads(&other.heads()).await? {
            return Ok(());
        }
        let (mine, theirs) = self.fold.join_pieces(&other);
        self.load_pieces(mine.clone()).await?;
        for (h, piece) in crate::io::read::pieces(
            &self.bucket,
            theirs.iter().map(|p| p.hash).collect(),
            self.concurrency,
        )
        .await?
        {
            other.insert_piece(h, LoadedPiece::new(piece));
        }
        let my_named = self.fold.named_changes(&mine);
        let their_named = other.named_changes(&theirs);
        // What each side covers beyond its table, among the changes the other names.
        let ask_mine: HashSet<ChangeHash> = their_named
            .iter()
            .filter(|h| !self.fold.contains(h))
            .copied()
            .collect();
        let mine_archived: HashMap<ChangeHash, CoveredChange> = self
            .lookup_archive(&ask_mine)
            .await?
            .into_iter()
            .map(|c| (c.hash, c))
            .collect();
        let ask_theirs: HashSet<ChangeHash> = my_named
            .union(&their_named)
            .filter(|h| !other.contains(h))
            .copied()
            .collect();
        let their_archive = other
            .snapshot_base()
            .map(|b| b.archive.clone())
            .unwrap_or_default();
        let theirs_archived: HashMap<ChangeHash, CoveredChange> = self
            .lookup_in(&[their_archive], &ask_theirs)
            .await?
            .into_iter()
            .map(|c| (c.hash, c))
            .collect();
        Arc::make_mut(&mut self.fold).join(other, &mine_archived, &theirs_archived)
    }

    /// Whether the state covers every change in `heads` (applied, or in the archive of
    /// a snapshot it was read from): then it covers their whole causal past.
    pub(crate) async fn covers_heads(&mut self, heads: &[ChangeHash]) -> Result<bool> {
        let rest: HashSet<ChangeHash> = heads
            .iter()
            .filter(|h| !self.fold.contains(h))
            .copied()
            .collect();
        if rest.is_empty() {
            return Ok(true);
        }
        Ok(self.lookup_archive(&rest).await?.len() == rest.len())
    }

    /// How many requests may be in flight for fan-out.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Records a snapshot known to hold nothing this fold lacks.
    pub(crate) fn note_snapshot(&mut self, name: SnapshotName) {
        self.known_snapshots.insert(name);
    }

    /// Sets how many requests may be in flight at once for fan-out (default 32).
    pub fn set_concurrency(&mut self, n: usize) {
        self.concurrency = n.max(1);
    }

    /// Fetches and folds change files that appeared since the last open or refresh.
    /// Both listings run in one round trip. When a newer snapshot covers changes this
    /// fold never saw (their files may be gone), the state is reloaded from it.
    pub async fn refresh(&mut self) -> Result<RefreshReport> {
        let (listing, snaps) =
            futures::join!(self.bucket.list_changes(), self.bucket.list_snapshots());
        self.refresh_from(listing?, snaps?).await
    }

    /// [`Repo::refresh`] from listings the caller already made.
    pub(crate) async fn refresh_from(
        &mut self,
        listing: (Vec<ListedChange>, Vec<Problem>),
        (snaps, snap_problems): (Vec<ListedSnapshot>, Vec<Problem>),
    ) -> Result<RefreshReport> {
        let mut fresh = Vec::new();
        for p in snap_problems {
            if !self.problems.contains_key(&p.key) {
                self.problems.insert(p.key.clone(), p.error.clone());
                fresh.push(p);
            }
        }
        // The snapshot this handle reads was collected: pieces it has not loaded yet
        // may be gone, so it starts again from what is listed now.
        let base = self.fold.snapshot_base().map(|b| b.name);
        let read_from: Vec<SnapshotName> = self
            .fold
            .snapshot_base()
            .map(|b| b.names().collect())
            .unwrap_or_default();
        if read_from
            .iter()
            .any(|n| !snaps.iter().any(|s| s.name == *n))
        {
            return self.reload().await;
        }
        // A listed snapshot not known yet may hold history this state lacks (a newer
        // compaction, or one a sync or a raw copy brought in): one that does is read,
        // or joined, by a fresh open. A damaged one was reported once and is not read
        // again. A handle that reads an older snapshot's pieces moves to the newest one
        // even when it holds nothing new: garbage collection may remove the older
        // one's pieces.
        let superseded: HashSet<String> = self
            .fold
            .snapshot_base()
            .map(|b| b.supersedes.iter().cloned().collect())
            .unwrap_or_default();
        let newest = snaps.first().map(|s| s.name);
        for snap in &snaps {
            let moves = Some(snap.name) == newest && base.is_some_and(|b| b != snap.name);
            let settled = self.known_snapshots.contains(&snap.name)
                || superseded.contains(&snap.name.file_name());
            if self.problems.contains_key(snap.key.as_ref()) || (settled && !moves) {
                continue;
            }
            match self.read_snapshot(snap, None).await {
                Ok(f) if !moves && self.covers_heads(&f.heads()).await? => {
                    self.known_snapshots.insert(snap.name);
                }
                Ok(_) | Err(Error::Vanished { .. }) => return self.reload().await,
                Err(e @ (Error::Store { .. } | Error::UnsupportedVersion { .. })) => {
                    return Err(e);
                }
                Err(e) => {
                    let p = Problem {
                        key: snap.key.to_string(),
                        error: e.to_string(),
                    };
                    self.problems.insert(p.key.clone(), p.error.clone());
                    fresh.push(p);
                }
            }
        }
        let (mut report, vanished) = match self.ingest(listing).await {
            Err(Error::Vanished { .. }) => return self.reload().await,
            other => other?,
        };
        if vanished {
            return self.reload().await;
        }
        fresh.append(&mut report.problems);
        report.problems = fresh;
        Ok(report)
    }

    /// Replaces the state with a fresh open, keeping this handle's writer identity.
    pub(crate) async fn reload(&mut self) -> Result<RefreshReport> {
        let (fresh, report) =
            Self::open_reporting(self.bucket.clone(), Some(self.id), self.concurrency).await?;
        self.replace_keeping_writer(fresh);
        Ok(report)
    }

    /// Replaces the state with one built from listings the caller made (garbage
    /// collection, which has just listed and deleted), keeping the writer identity.
    /// Falls back to a fresh open when a listed object has vanished since.
    pub(crate) async fn reload_from(
        &mut self,
        listing: (Vec<ListedChange>, Vec<Problem>),
        snaps: (Vec<ListedSnapshot>, Vec<Problem>),
    ) -> Result<RefreshReport> {
        let fresh = Self::open_from(
            self.bucket.clone(),
            self.id,
            listing,
            snaps,
            None,
            self.concurrency,
        )
        .await;
        match fresh {
            Ok((fresh, report)) => {
                self.replace_keeping_writer(fresh);
                Ok(report)
            }
            Err(Error::Vanished { .. }) => self.reload().await,
            Err(e) => Err(e),
        }
    }

    fn replace_keeping_writer(&mut self, mut fresh: Repo) {
        fresh.actor = self.actor;
        fresh.next_seq = self.next_seq;
        fresh.sources = self.sources.clone();
        *self = fresh;
    }

    /// Folds a listing in; the flag says a listed file vanished before it was read.
    async fn ingest(
        &mut self,
        (listed, foreign): (Vec<ListedChange>, Vec<Problem>),
    ) -> Result<(RefreshReport, bool)> {
        let mut report = RefreshReport {
            listed: listed.len(),
            ..Default::default()
        };
        let listed_set: HashSet<ChangeHash> = listed.iter().map(|c| c.name.hash).collect();
        for p in foreign {
            if !self.problems.contains_key(&p.key) {
                self.problems.insert(p.key.clone(), p.error.clone());
                report.problems.push(p);
            }
        }
        let fold = &self.fold;
        report.covered = listed
            .iter()
            .filter(|c| !self.seen.contains(&c.name.hash) && fold.contains(&c.name.hash))
            .count();
        // Files the snapshot covers are decided from their names alone.
        let todo: Vec<ListedChange> = listed
            .into_iter()
            .filter(|c| {
                !self.seen.contains(&c.name.hash)
                    && !fold.knows(&c.name.hash)
                    && !self.problems.contains_key(c.key.as_ref())
            })
            .collect();
        report.fetched = todo.len();
        let id = self.id;
        let fetches: Vec<(RepoStore, ListedChange)> =
            todo.into_iter().map(|c| (self.bucket.clone(), c)).collect();
        let results: Vec<(ListedChange, Result<Option<Change>>)> = futures::stream::iter(fetches)
            .map(|(bucket, c)| async move {
                let r = crate::io::read::change(&bucket, id, &c).await;
                (c, r)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut decoded = Vec::with_capacity(results.len());
        let mut vanished = false;
        for (c, r) in results {
            match r {
                // Marked seen only once folded in: a store error below must not
                // leave it seen but never applied (no later refresh would fetch it).
                Ok(Some(change)) => decoded.push((c, change)),
                // Gone between LIST and GET: garbage collection removed it after a
                // newer snapshot covered it.
                Ok(None) => vanished = true,
                Err(e @ Error::Store { .. }) => return Err(e),
                Err(e) => {
                    let p = Problem {
                        key: c.key.to_string(),
                        error: e.to_string(),
                    };
                    // The bytes are immutable: these failures never go away.
                    if matches!(e, Error::Corrupt { .. } | Error::TooLarge { .. }) {
                        self.rejected_files
                            .insert(p.key.clone(), (p.error.clone(), true));
                    }
                    self.problems.insert(p.key.clone(), p.error.clone());
                    report.problems.push(p);
                }
            }
        }
        self.resolve_archived(&mut decoded, &listed_set).await?;
        for (c, _) in &decoded {
            self.seen.insert(c.name.hash);
        }
        // Any order folds to the same state; stamp order just keeps the queue short.
        decoded.sort_by_key(|(c, ch)| (ch.hlc, ch.actor, ch.seq, c.name.hash));
        for (c, change) in decoded {
            match Arc::make_mut(&mut self.fold).insert(c.name.hash, change, c.size) {
                InsertOutcome::Applied { unblocked } => report.applied += 1 + unblocked,
                InsertOutcome::Rejected(reason) => {
                    let p = Problem {
                        key: c.key.to_string(),
                        error: format!("invalid change: {reason}"),
                    };
                    // Validity depends only on the change and its causal past.
                    self.rejected_files
                        .insert(p.key.clone(), (p.error.clone(), false));
                    self.problems.insert(p.key.clone(), p.error.clone());
                    report.problems.push(p);
                }
                InsertOutcome::QueueFull => {
                    // Not kept: fetch it again on a later refresh.
                    self.seen.remove(&c.name.hash);
                    let p = Problem {
                        key: c.key.to_string(),
                        error: "pending queue is full; will retry".into(),
                    };
                    report.problems.push(p);
                }
                InsertOutcome::Pending => {
                    self.pending_keys.insert(c.name.hash, c.key.to_string());
                }
                InsertOutcome::Duplicate => {}
            }
        }
        // A pending change may prove invalid once its deps arrive: report it like a
        // change rejected on arrival.
        if !self.pending_keys.is_empty() {
            let rejected: HashMap<ChangeHash, String> = self
                .fold
                .rejected()
                .into_iter()
                .map(|r| (r.hash, r.reason))
                .collect();
            let fold = &self.fold;
            let mut newly = Vec::new();
            self.pending_keys.retain(|h, key| match rejected.get(h) {
                Some(reason) => {
                    newly.push(Problem {
                        key: key.clone(),
                        error: format!("invalid change: {reason}"),
                    });
                    false
                }
                None => !fold.contains(h),
            });
            for p in newly {
                self.rejected_files
                    .insert(p.key.clone(), (p.error.clone(), false));
                self.problems.insert(p.key.clone(), p.error.clone());
                report.problems.push(p);
            }
        }
        report.pending = self.fold.pending().len();
        self.missing_history.clear();
        for p in self.fold.pending() {
            let Some(key) = self.pending_keys.get(&p.hash) else {
                continue;
            };
            if let Some(m) = p.missing.iter().find(|m| !listed_set.contains(m)) {
                let problem = Problem {
                    key: key.clone(),
                    error: Error::HistoryHorizon {
                        key: key.clone(),
                        missing: m.to_string(),
                    }
                    .to_string(),
                };
                report.problems.push(problem.clone());
                self.missing_history.push(problem);
            }
        }
        self.view = Arc::new(ViewIndex::build(&self.fold));
        Ok((report, vanished))
    }

    /// Changes at or below the snapshot's clock may be covered although their files
    /// are still listed, and deps not listed may be covered and collected: both are
    /// looked up in the coverage archive (one parallel round trip, only when needed).
    async fn resolve_archived(
        &mut self,
        decoded: &mut Vec<(ListedChange, Change)>,
        listed: &HashSet<ChangeHash>,
    ) -> Result<()> {
        let Some(base) = self.fold.snapshot_base() else {
            return Ok(());
        };
        let batch: HashSet<ChangeHash> = decoded.iter().map(|(c, _)| c.name.hash).collect();
        let mut wanted: HashSet<ChangeHash> = HashSet::new();
        for (c, ch) in decoded.iter() {
            if ch.hlc <= base.max_hlc {
                wanted.insert(c.name.hash);
            }
            for r in crate::fold::required(ch) {
                if !self.fold.knows(&r) && !batch.contains(&r) && !listed.contains(&r) {
                    wanted.insert(r);
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        for c in self.lookup_archive(&wanted).await? {
            Arc::make_mut(&mut self.fold).add_covered(&c);
        }
        decoded.retain(|(c, _)| !self.fold.knows(&c.name.hash));
        Ok(())
    }

    /// Adds to the fold the changes among `hashes` that it does not hold but its
    /// snapshots' coverage archive records (a handle that reloaded from a newer
    /// snapshot knows older history only there); returns those found.
    pub(crate) async fn learn_archived(
        &mut self,
        hashes: impl IntoIterator<Item = ChangeHash>,
    ) -> Result<HashSet<ChangeHash>> {
        let wanted: HashSet<ChangeHash> = hashes
            .into_iter()
            .filter(|h| !self.fold.contains(h))
            .collect();
        if wanted.is_empty() || self.fold.snapshot_base().is_none() {
            return Ok(HashSet::new());
        }
        let mut found = HashSet::new();
        for c in self.lookup_archive(&wanted).await? {
            found.insert(c.hash);
            Arc::make_mut(&mut self.fold).add_covered(&c);
        }
        Ok(found)
    }

    /// Covered changes among `hashes`, read from the archive shards of the snapshots
    /// the fold was read from.
    async fn lookup_archive(&mut self, hashes: &HashSet<ChangeHash>) -> Result<Vec<CoveredChange>> {
        let Some(base) = self.fold.snapshot_base() else {
            return Ok(Vec::new());
        };
        let archives: Vec<Vec<Option<ObjectHash>>> = base.archives().map(<[_]>::to_vec).collect();
        self.lookup_in(&archives, hashes).await
    }

    /// Changes among `hashes` found in the given coverage archives (shards are read
    /// once per handle: they are immutable).
    async fn lookup_in(
        &mut self,
        archives: &[Vec<Option<ObjectHash>>],
        hashes: &HashSet<ChangeHash>,
    ) -> Result<Vec<CoveredChange>> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: std::collections::BTreeSet<usize> =
            hashes.iter().map(CoveredChange::shard).collect();
        let mut shards: Vec<ObjectHash> = archives
            .iter()
            .flat_map(|a| wanted.iter().filter_map(|i| a.get(*i).copied().flatten()))
            .filter(|h| !self.archive.contains_key(h))
            .collect();
        shards.sort();
        shards.dedup();
        let fetched: Vec<Result<(ObjectHash, ArchiveShard)>> = futures::stream::iter(shards)
            .map(|h| {
                let bucket = self.bucket.clone();
                async move { Ok((h, crate::io::read::shard(&bucket, &h).await?.0)) }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        for r in fetched {
            match r {
                Ok((h, shard)) => {
                    self.archive.insert(h, Arc::new(shard));
                }
                // A damaged shard is reported; what it would have covered stays
                // pending (and shows in `missing_history`) instead of failing open.
                Err(Error::Corrupt { key, kind }) => {
                    self.problems.insert(key, kind.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        let mut out = Vec::new();
        for h in hashes {
            let found = archives.iter().find_map(|a| {
                a.get(CoveredChange::shard(h))
                    .copied()
                    .flatten()
                    .and_then(|s| self.archive.get(&s))
                    .and_then(|shard| shard.find(h))
            });
            if let Some(c) = found {
                out.push(*c);
            }
        }
        Ok(out)
    }

    /// Number of changes the state covers: the fold's count, or for a state joined
    /// from several snapshots, the union of their archives and the fold's table
    /// (their coverage overlaps, so counts do not add up).
    pub(crate) async fn covered_total(&self) -> Result<u64> {
        let Some(base) = self.fold.snapshot_base().filter(|b| !b.joined.is_empty()) else {
            return self.fold.covered_count().ok_or_else(|| {
                Error::Limit("covered change count overflows u64: no snapshot written".into())
            });
        };
        let mut all: HashSet<ChangeHash> = self.fold.log_all().map(|c| c.hash).collect();
        for archive in base.archives() {
            for shard in crate::io::read::shards(&self.bucket, Some(archive))
                .await?
                .into_iter()
                .flatten()
            {
                all.extend(shard.changes.iter().map(|c| c.hash));
            }
        }
        Ok(all.len() as u64)
    }

    /// Reads manifest pieces not yet in memory, in parallel.
    pub(crate) async fn load_pieces(&self, pieces: Vec<PieceRef>) -> Result<()> {
        load_pieces(&self.bucket, &self.fold, pieces, self.concurrency).await
    }

    /// Whether `fold` is this handle's state (not a copy it moved on from).
    pub(crate) fn holds_state(&self, fold: &Arc<Fold>) -> bool {
        Arc::ptr_eq(&self.fold, fold)
    }

    /// The state and its view, shared with a write session.
    pub(crate) fn shared_state(&self) -> (Arc<Fold>, Arc<ViewIndex>) {
        (self.fold.clone(), self.view.clone())
    }

    /// Every blob a live value of the state uses: chunk values in memory and in
    /// manifest pieces (all read), and object values.
    pub(crate) async fn live_blobs(&self) -> Result<HashSet<BlobHash>> {
        self.load_all().await?;
        self.fold.live_blobs().map_err(|h| {
            Error::Internal(format!(
                "manifest piece {h} not loaded after reading them all"
            ))
        })
    }

    /// Opens the repository in `bucket` (for sync, which holds buckets).
    pub(crate) async fn open_bucket(bucket: RepoStore) -> Result<Repo> {
        Self::open_bucket_with(bucket, None, DEFAULT_CONCURRENCY).await
    }

    /// Reads every manifest piece of the current state (for listings, conflicts and
    /// whole-state comparisons). Chunk reads load only the piece they need.
    pub async fn load_all(&self) -> Result<()> {
        self.load_pieces(self.fold.all_missing_pieces()).await
    }

    /// The pieces reading store key `key` needs.
    fn pieces_for_key(&self, key: &str) -> Vec<PieceRef> {
        match self.view.split_chunk_key(key) {
            Some((path, chunk)) => match self.view.nodes.get(path) {
                Some(n) => self.fold.missing_pieces(&n.members, Some(chunk)),
                None => Vec::new(),
            },
            None => Vec::new(),
        }
    }

    /// The repository id.
    pub fn id(&self) -> RepoId {
        self.id
    }

    /// The bucket this handle reads and writes.
    pub fn bucket(&self) -> &RepoStore {
        &self.bucket
    }

    /// The folded state.
    pub fn fold(&self) -> &Fold {
        &self.fold
    }

    /// The Zarr view of this handle's state (no I/O; chunk queries see the manifest
    /// pieces loaded so far, see [`View`]).
    pub fn view(&self) -> View<'_> {
        View::new(&self.view, &self.fold)
    }

    /// The view's index, for queries that pass the fold themselves.
    pub(crate) fn view_index(&self) -> &ViewIndex {
        &self.view
    }

    /// The actor this handle commits as.
    pub fn actor(&self) -> ActorId {
        self.actor
    }

    /// The bytes the view serves at a Zarr key; `None` if absent. Blobs are
    /// fetched and verified against their hash.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.load_pieces(self.pieces_for_key(key)).await?;
        match self.view.get(&self.fold, key) {
            None => Ok(None),
            Some(Entry::Metadata(b)) => Ok(Some(Bytes::from(b))),
            Some(Entry::Chunk(c) | Entry::Object(c)) => match c {
                ChunkRef::Inline(b) => Ok(Some(Bytes::from(b))),
                ChunkRef::Blob { hash, len } => self.get_blob(key, &hash, len).await.map(Some),
                ChunkRef::Reference(r) => self.sources.read(key, &r).await.map(Some),
            },
        }
    }

    /// The stores that chunks adopted in place (`import --by-reference`) are read
    /// from; register one a URL cannot reach (an in-memory store, other credentials).
    pub fn reference_sources(&self) -> &ReferenceSources {
        &self.sources
    }

    async fn get_blob(&self, key: &str, hash: &BlobHash, len: u64) -> Result<Bytes> {
        self.bucket
            .get_blob(hash, len)
            .await?
            .ok_or_else(|| Error::MissingBlob {
                key: key.into(),
                blob_key: self.bucket.layout.blob(hash).to_string(),
            })
    }

    /// Whether the view has `key`.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        self.load_pieces(self.pieces_for_key(key)).await?;
        Ok(self.view.get(&self.fold, key).is_some())
    }

    /// Every key of the view, sorted.
    pub async fn list(&self) -> Result<Vec<String>> {
        self.load_all().await?;
        Ok(self.view.keys(&self.fold))
    }

    /// Keys starting with `prefix`, sorted.
    pub async fn list_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        self.load_all().await?;
        Ok(self.view.keys_with_prefix(&self.fold, prefix))
    }

    /// Keys and sub-prefixes directly under `prefix` (empty or ending in `/`).
    pub async fn list_dir(&self, prefix: &str) -> Result<(Vec<String>, Vec<String>)> {
        self.load_all().await?;
        Ok(self.view.list_dir(&self.fold, prefix))
    }

    /// Concurrent overwrites resolved in the current state.
    pub async fn conflicts(&self) -> Result<Vec<Conflict>> {
        self.load_all().await?;
        Ok(self.view.conflicts(&self.fold))
    }

    /// Every key of the view and what it serves (all manifest pieces are read).
    pub async fn entries(&self) -> Result<BTreeMap<String, Entry>> {
        self.load_all().await?;
        Ok(self.view.entries(&self.fold))
    }

    /// Changes waiting for dependencies.
    pub fn pending(&self) -> Vec<PendingChange> {
        self.fold.pending()
    }

    /// Writers that used one sequence number twice.
    pub fn forks(&self) -> Vec<Fork> {
        self.fold.forks()
    }

    /// Changes refused as invalid against their causal past.
    pub fn rejected(&self) -> Vec<RejectedChange> {
        self.fold.rejected()
    }

    /// Files skipped so far (corrupt, foreign, invalid), by key.
    pub fn problems(&self) -> Vec<Problem> {
        self.problems
            .iter()
            .map(|(k, e)| Problem {
                key: k.clone(),
                error: e.clone(),
            })
            .collect()
    }

    /// Pending changes that need a change which is neither in the bucket nor covered
    /// by its snapshots: history that was garbage-collected, or a partial copy. Each
    /// says what to do. (Not yet delivered is indistinguishable from lost: this is
    /// advice, not an error.)
    pub fn missing_history(&self) -> Vec<Problem> {
        self.missing_history.clone()
    }

    /// Listed change files that never apply here, by key, with why (the files
    /// garbage collection may quarantine, spec/protocols.md §5): those that can never
    /// apply (corrupt, or invalid against their causal past), and pending changes
    /// past the history horizon ([`Repo::missing_history`]). The flag says the file
    /// failed to read as a change (worth checking again before moving it).
    pub(crate) fn stuck_files(&self) -> BTreeMap<String, (String, bool)> {
        let mut out = self.rejected_files.clone();
        for p in &self.missing_history {
            out.entry(p.key.clone())
                .or_insert_with(|| (p.error.clone(), false));
        }
        out
    }

    /// Applied changes in causal order.
    pub fn log(&self) -> Vec<&ChangeInfo> {
        self.fold.log()
    }

    /// This handle's actor and next sequence number, which it consumes. A handle
    /// that ran out of sequence numbers refuses to commit rather than wrap.
    pub(crate) fn next_change_header(&mut self) -> Result<(ActorId, u64)> {
        let seq = self.next_seq;
        self.next_seq = seq.checked_add(1).ok_or_else(|| {
            Error::Limit("this handle has used every sequence number: reopen".into())
        })?;
        Ok((self.actor, seq))
    }

    /// The clock stamp for a change with these deps and ops at wall-clock `now_ms`
    /// (spec/format.md §3.6). When no stamp is valid on top of the deps (one carries
    /// the hard maximum), the commit is refused and names that dependency.
    pub(crate) fn stamp(&self, deps: &[ChangeHash], ops: &[Op], now_ms: u64) -> Result<Hlc> {
        let max = self
            .fold
            .max_ref(deps, ops)
            .map_err(|rule| Error::CommitRefused {
                key: self.bucket.layout.ops_dir().to_string(),
                reason: rule.to_string(),
            })?;
        match (max, Hlc::next(now_ms, max.map(|c| c.hlc))) {
            (_, Some(hlc)) => Ok(hlc),
            (Some(c), None) => Err(Error::CommitRefused {
                key: self.change_key(c.hash, c.actor, c.seq),
                reason: format!(
                    "its clock stamp {} leaves no valid stamp for a change on top of it \
                     (no change may carry more than {HARD_MAX_HLC}); it was written with a broken clock",
                    c.hlc.0
                ),
            }),
            // Without references a stamp always exists; kept total rather than panic.
            (None, None) => Err(Error::CommitRefused {
                key: self.bucket.layout.ops_dir().to_string(),
                reason: "no valid clock stamp".into(),
            }),
        }
    }

    pub(crate) fn change_key(&self, hash: ChangeHash, actor: ActorId, seq: u64) -> String {
        self.bucket
            .layout
            .change(&ChangeName { hash, actor, seq })
            .to_string()
    }

    /// Publishes a prepared change: blobs first (in parallel), then the change file.
    /// The change becomes visible to readers all at once when its file lands.
    ///
    /// Before any upload the change is checked against this handle's fold exactly as
    /// readers will check it ([`Fold::check`]); failing that is
    /// [`Error::CommitRefused`] and nothing is written. After the upload it must apply
    /// to the local fold, else [`Error::CommitRejected`] names the written key.
    /// On an upload failure the change is handed back, so the caller can retry the
    /// same bytes; once uploaded it moves into the local fold without a copy.
    pub(crate) async fn publish(
        &mut self,
        change: Change,
        bytes: &Bytes,
        blobs: &BTreeMap<BlobHash, Bytes>,
    ) -> std::result::Result<ChangeHash, (Error, Option<Change>)> {
        let hash = ChangeHash::of(bytes);
        let key = self.change_key(hash, change.actor, change.seq);
        // A retry after an earlier attempt landed and was compacted and collected while
        // the reply was lost: the change is in the state already, covered. Uploading
        // it again would apply it twice here. Only a change within the snapshot's
        // clock range can be covered by it (the rule refresh uses): a fresh change
        // stamped above it costs no archive read.
        let coverable = self
            .fold
            .snapshot_base()
            .is_some_and(|b| change.hlc <= b.max_hlc);
        if coverable && !self.fold.contains(&hash) {
            match self.learn_archived([hash]).await {
                Ok(found) if found.contains(&hash) => return Ok(hash),
                Ok(_) => {}
                Err(e) => return Err((e, Some(change))),
            }
        }
        // A retry after the change was fetched by a refresh: already applied, valid.
        if !self.fold.contains(&hash)
            && let Err(rule) = self.fold.check(&change)
        {
            let reason = rule.to_string();
            return Err((Error::CommitRefused { key, reason }, Some(change)));
        }
        if let Err(e) = self.upload(&change, bytes, blobs).await {
            return Err((e, Some(change)));
        }
        self.seen.insert(hash);
        let outcome = Arc::make_mut(&mut self.fold).insert(hash, change, bytes.len() as u64);
        self.view = Arc::new(ViewIndex::build(&self.fold));
        let reason = match outcome {
            InsertOutcome::Applied { .. } => return Ok(hash),
            InsertOutcome::Duplicate if self.fold.contains(&hash) => return Ok(hash),
            InsertOutcome::Duplicate => {
                "already known to this handle as pending or rejected".into()
            }
            InsertOutcome::Rejected(reason) => format!("invalid change: {reason}"),
            InsertOutcome::Pending => "waits for changes this handle has not applied".into(),
            InsertOutcome::QueueFull => "the pending queue is full".into(),
        };
        Err((Error::CommitRejected { key, reason }, None))
    }

    async fn upload(
        &self,
        change: &Change,
        bytes: &Bytes,
        blobs: &BTreeMap<BlobHash, Bytes>,
    ) -> Result<ChangeHash> {
        if bytes.len() as u64 > MAX_CHANGE_BYTES {
            return Err(Error::Limit(format!(
                "change is {} bytes, over the {MAX_CHANGE_BYTES}-byte limit: commit fewer ops at a time",
                bytes.len()
            )));
        }
        // Owned items keep the future `Send` (borrowed ones defeat the compiler's proof).
        let uploads: Vec<(RepoStore, object_store::path::Path, Bytes)> = blobs
            .iter()
            .map(|(h, b)| (self.bucket.clone(), self.bucket.layout.blob(h), b.clone()))
            .collect();
        let uploads: Vec<Result<()>> = futures::stream::iter(uploads)
            .map(|(bucket, key, b)| async move { bucket.put_blob(&key, b).await })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        uploads.into_iter().collect::<Result<Vec<()>>>()?;
        let hash = ChangeHash::of(bytes);
        let name = ChangeName {
            hash,
            actor: change.actor,
            seq: change.seq,
        };
        self.bucket
            .put_once(&self.bucket.layout.change(&name), bytes.clone())
            .await?;
        Ok(hash)
    }
}

/// Reads manifest pieces into `fold`'s cache (shared by every copy of that state).
pub(crate) async fn load_pieces(
    store: &RepoStore,
    fold: &Fold,
    pieces: Vec<PieceRef>,
    concurrency: usize,
) -> Result<()> {
    let hashes = pieces.iter().map(|p| p.hash).collect();
    for (h, piece) in crate::io::read::pieces(store, hashes, concurrency).await? {
        fold.insert_piece(h, LoadedPiece::new(piece));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ids::{MAX_CLOCK_LEAD_MS, now_millis};
    use object_store::memory::InMemory;

    /// `publish` checks a change as readers will before uploading anything: one a year
    /// ahead of its dep is refused with the key it would have had, nothing is written,
    /// and the same change within the lead is published and applied.
    #[tokio::test]
    async fn publish_refuses_a_change_readers_would_reject() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut w = Repo::init(store, "r").await.unwrap();
        let mut s = w.session();
        s.create_group("", Default::default()).unwrap();
        let root = s.commit(&mut w, None).await.unwrap().unwrap();
        let dep = w.fold.hlc_of(&root).unwrap();
        let (id, actor) = (w.id, w.actor);
        let change = |hlc: Hlc, seq: u64| Change {
            repo: id,
            actor,
            seq,
            deps: vec![root],
            hlc,
            wall_ms: now_millis(),
            message: None,
            ops: vec![Op::SetAttr {
                node: crate::format::change::OpRef::Change(root, 0),
                key: "k".into(),
                value: "1".into(),
                observed: vec![],
            }],
        };
        let year = Hlc(dep.0 + ((365 * 24 * 3600 * 1000) << 16));
        let bad = change(year, 2);
        let bytes = Bytes::from(bad.encode());
        let want_key = w.change_key(ChangeHash::of(&bytes), bad.actor, 2);
        match w.publish(bad, &bytes, &BTreeMap::new()).await {
            Err((Error::CommitRefused { key, reason }, Some(_))) => {
                assert_eq!(key, want_key);
                assert!(reason.contains("too far ahead"), "{reason}");
            }
            other => panic!("expected CommitRefused, got {:?}", other.map_err(|e| e.0)),
        }
        assert_eq!(w.bucket.list_changes().await.unwrap().0.len(), 1);

        let ok = change(Hlc(dep.0 + ((MAX_CLOCK_LEAD_MS - 1) << 16)), 2);
        let bytes = Bytes::from(ok.encode());
        let h = w
            .publish(ok, &bytes, &BTreeMap::new())
            .await
            .map_err(|e| e.0)
            .unwrap();
        assert!(w.fold.contains(&h));
        assert_eq!(w.bucket.list_changes().await.unwrap().0.len(), 2);
    }
}
