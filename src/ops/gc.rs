//! Garbage collection: deleting what the retained snapshot and the uncovered changes
//! do not need (`spec/protocols.md`, "Garbage collection").
//!
//! Safety rests on three rules. Only objects older than the window are deleted, by
//! the store's own last-modified time (the store's clock is read by writing a probe
//! object), so a writer between its blob uploads and its change file, and a reader
//! that listed just before, are not disturbed. Change files are deleted only when the
//! newest snapshot covers them and no other snapshot is unaccounted for. And blobs are
//! re-checked just before deletion, so one re-uploaded by a writer since the listing
//! survives.

use crate::error::{Error, Result};
use crate::fold::Fold;
use crate::format::change::MAX_CHANGE_BYTES;
use crate::format::ids::{BlobHash, ChangeHash, ObjectHash, RepoId};
use crate::format::layout::SnapshotName;
use crate::format::snapshot::{SnapChunk, SnapshotMeta};
use crate::io::store::{ListedChange, ListedSnapshot, Problem, RepoStore};
use crate::repo::Repo;
use bytes::Bytes;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

/// What garbage collection may delete, and how.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Only objects last modified longer ago than this (by the store's clock) go.
    /// It must exceed the longest commit and compaction.
    pub older_than: Duration,
    /// List what would go without deleting.
    pub dry_run: bool,
    /// Accept a window below the repository's minimum ([`crate::io::store::RepoConfig`]):
    /// for tests, demos and repositories nothing else writes to.
    pub force: bool,
}

pub use crate::format::layout::ObjectKind;

/// One object deleted (or, in a dry run, that would be).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// Kind.
    pub kind: ObjectKind,
    /// Bucket key.
    pub key: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// A change file garbage collection moved to quarantine (or, in a dry run, would):
/// it never applies here, so every open would fetch it again for ever.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Quarantined {
    /// Where it was (under `.crdt/ops/`).
    pub from: String,
    /// Where it is now: `.crdt/quarantine/ops/...`. Moving it back to `from` (or a
    /// `crzarr sync` from a replica that has it) undoes the move.
    pub to: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Why it never applies: the reader's problem, or the history horizon.
    pub reason: String,
}

/// What [`Repo::gc`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Whether nothing was deleted on purpose.
    pub dry_run: bool,
    /// The snapshot everything is judged against.
    pub retained_snapshot: Option<String>,
    /// Objects deleted (or that would be).
    pub removed: Vec<Removed>,
    /// Unneeded objects kept because they are younger than the window.
    pub kept_recent: usize,
    /// Why some kinds were left alone, if they were.
    pub notes: Vec<String>,
    /// Snapshot objects that do not read (junk), ignored: they block nothing.
    pub junk: Vec<Problem>,
    /// The retained snapshot, when it could not be verified (and nothing was deleted).
    pub unverified: Option<String>,
    /// Rejected change files, and pending ones past the history horizon, older than
    /// the window: moved to quarantine (spec/protocols.md §5, "Stuck change files").
    pub quarantined: Vec<Quarantined>,
}

impl GcReport {
    /// Objects and bytes removed, by kind.
    pub fn totals(&self) -> BTreeMap<ObjectKind, (usize, u64)> {
        let mut t: BTreeMap<ObjectKind, (usize, u64)> = BTreeMap::new();
        for r in &self.removed {
            let e = t.entry(r.kind).or_default();
            e.0 += 1;
            e.1 += r.bytes;
        }
        t
    }
}

impl Repo {
    /// Deletes change files the newest snapshot covers, superseded snapshots,
    /// unreferenced manifest pieces and archive shards, and blobs that neither the
    /// newest snapshot nor any uncovered change references, all only when older than
    /// `opts.older_than` by the store's clock.
    pub async fn gc(&mut self, opts: &GcOptions) -> Result<GcReport> {
        let bucket = self.bucket().clone();
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        let window = opts.older_than;
        let min = bucket.read_config().await?.min_gc_window();
        if window < min && !opts.dry_run {
            if !opts.force {
                return Err(Error::WindowTooShort { window, min });
            }
            report.notes.push(format!(
                "window {window:?} is below the repository's minimum {min:?} (forced): a commit, \
                 import, sync or compaction running longer than {window:?} may lose objects it names"
            ));
        }
        let now: SystemTime = bucket.now().await?.last_modified.into();
        // Age by the store's clock; a time in the store's future counts as new.
        let old = move |t: SystemTime| now.duration_since(t).unwrap_or_default() >= window;
        let lay = &bucket.layout;
        let (manifests_dir, archive_dir, blobs_dir) =
            (lay.manifests_dir(), lay.archive_dir(), lay.blobs_dir());
        let (changes, snaps, manifests, archive, blobs) = futures::join!(
            bucket.list_changes(),
            bucket.list_snapshots(),
            bucket.list_all(&manifests_dir),
            bucket.list_all(&archive_dir),
            bucket.list_all(&blobs_dir),
        );
        // Foreign files are never ours to delete: only parsed names are considered.
        let (mut changes, snaps) = (changes?, snaps?);
        let (manifests, archive, blobs) = (manifests?, archive?, blobs?);

        // Change files that never apply cost every open a GET, for ever: the old ones
        // go to quarantine. Judged by a refresh from these very listings, so "past the
        // horizon" means its missing change is not in this listing either.
        self.refresh_from(changes.clone(), snaps.clone()).await?;
        let stuck = self.stuck_files();
        let mut moving: Vec<(ListedChange, String, bool)> = Vec::new();
        for c in &changes.0 {
            if let Some((reason, unreadable)) = stuck.get(c.key.as_ref()) {
                if old(c.modified) {
                    moving.push((c.clone(), reason.clone(), *unreadable));
                } else {
                    report.kept_recent += 1;
                }
            }
        }
        if !moving.is_empty() {
            report.quarantined = self.quarantine_stuck(moving, opts.dry_run).await?;
            let gone: HashSet<&str> = report.quarantined.iter().map(|q| q.from.as_str()).collect();
            changes.0.retain(|c| !gone.contains(c.key.as_ref()));
            // The handle must show what a fresh open shows: without the moved files.
            if !opts.dry_run && !report.quarantined.is_empty() {
                self.reload_from(changes.clone(), snaps.clone()).await?;
            }
        }

        // Every listed snapshot, judged exactly as a reader judges it: what open would
        // skip is junk here too, reported and never in the way.
        let judged = judge_snapshots(&bucket, &snaps.0, self.id(), self.concurrency()).await?;
        let mut valid: Vec<(&ListedSnapshot, SnapshotMeta)> = Vec::new();
        for (snap, verdict) in judged {
            match verdict {
                Ok(meta) => valid.push((snap, meta)),
                Err(error) => report.junk.push(Problem {
                    key: snap.key.to_string(),
                    error,
                }),
            }
        }
        if !report.junk.is_empty() {
            report.notes.push(format!(
                "{} snapshot object(s) do not read and were ignored; `crzarr verify --quarantine` \
                 moves them aside",
                report.junk.len()
            ));
        }
        // The retained snapshot: the newest one older than the window. A compactor
        // lands a snapshot only within its time limit, which the window exceeds, so
        // every compactor still running started after the retained snapshot landed
        // and builds on it or on a younger one; younger snapshots are protected whole.
        let Some(ri) = valid.iter().position(|(s, _)| old(s.modified)) else {
            report.notes.push(if valid.is_empty() {
                "no snapshot: run `crzarr compact` first; nothing deleted".into()
            } else {
                "every snapshot is younger than the window: nothing deleted yet".into()
            });
            return Ok(report);
        };
        let (retained_listed, meta) = valid.swap_remove(ri);
        let retained_snapshot = retained_listed.name;
        let retained_name = retained_snapshot.file_name();
        report.retained_snapshot = Some(retained_name.clone());
        let mut doomed: Vec<(ObjectKind, Path, u64)> = Vec::new();

        // The other snapshots: superseded by the retained one (collected), younger and
        // including it (protected), or a second line of history that only a
        // compaction joining both may retire.
        // R's coverage (table and archive) decides which others it covers entirely,
        // named or not: coverage is causally closed, so covering the heads is enough.
        let retained_shards = crate::io::read::shards(&bucket, Some(&meta.archive)).await?;
        let mut r_covers: HashSet<ChangeHash> = meta.changes.iter().map(|c| c.hash).collect();
        for shard in retained_shards.iter().flatten() {
            r_covers.extend(shard.changes.iter().map(|c| c.hash));
        }
        let superseded: HashSet<&str> = meta.supersedes.iter().map(String::as_str).collect();
        let mut protected: Vec<&SnapshotMeta> = vec![&meta];
        let mut concurrent: Vec<String> = Vec::new();
        for (snap, m) in &valid {
            let name = snap.name.file_name();
            let covered = m.heads.iter().all(|h| r_covers.contains(h));
            if superseded.contains(name.as_str())
                || (covered && !m.supersedes.contains(&retained_name))
            {
                if old(snap.modified) {
                    doomed.push((ObjectKind::Snapshot, snap.key.clone(), snap.size));
                } else {
                    // Kept, so what it names is kept too: it stays readable (it may even
                    // sort above R, with R's count and a greater hash).
                    report.kept_recent += 1;
                    protected.push(m);
                }
            } else if !old(snap.modified) && m.supersedes.contains(&retained_name) {
                protected.push(m);
            } else {
                concurrent.push(name);
            }
        }
        if !concurrent.is_empty() {
            report.notes.push(format!(
                "snapshots {concurrent:?} are not covered by {retained_name}: run `crzarr compact` \
                 so one snapshot holds them all; nothing deleted"
            ));
            return Ok(report);
        }

        // Before anything is deleted on its account, the retained snapshot must be what
        // its predecessor and the change files it claims give (protocols.md §5 step 5a): a
        // planted or wrong snapshot cannot make GC destroy the history it hides.
        if let Err(why) = self
            .check_retained(&bucket, retained_listed, &meta, &valid, &changes.0)
            .await?
        {
            report.notes.push(format!(
                "{retained_name} is not verified, so nothing was deleted: {why}"
            ));
            report.unverified = Some(retained_name);
            return Ok(report);
        }

        // Change files the retained snapshot covers.
        let covered: HashSet<ChangeHash> = meta.changes.iter().map(|c| c.hash).collect();
        let mut uncovered = Vec::new();
        for c in &changes.0 {
            if !covered.contains(&c.name.hash) {
                uncovered.push((c.name, c.key.clone()));
            } else if old(c.modified) {
                doomed.push((ObjectKind::Change, c.key.clone(), c.size));
            } else {
                report.kept_recent += 1;
            }
        }

        // Manifest pieces and archive shards no kept snapshot names.
        let pieces: HashSet<ObjectHash> = protected
            .iter()
            .flat_map(|m| m.nodes.iter().flat_map(|n| n.pieces.iter().map(|p| p.hash)))
            .collect();
        let shards: HashSet<ObjectHash> = protected
            .iter()
            .flat_map(|m| m.archive.iter().flatten().copied())
            .collect();
        for (kind, list, keep) in [
            (ObjectKind::Manifest, &manifests, &pieces),
            (ObjectKind::Archive, &archive, &shards),
        ] {
            let dir = match kind {
                ObjectKind::Manifest => &manifests_dir,
                _ => &archive_dir,
            };
            for m in list {
                let Some(h) = lay.parse_object_key(dir, &m.location) else {
                    continue; // foreign: never ours to delete
                };
                if keep.contains(&h) {
                    continue;
                }
                if old(m.last_modified.into()) {
                    doomed.push((kind, m.location.clone(), m.size));
                } else {
                    report.kept_recent += 1;
                }
            }
        }

        // Blobs: referenced by the retained snapshot (its objects and its pieces) or
        // an uncovered change.
        let mut live: HashSet<BlobHash> = protected
            .iter()
            .flat_map(|m| m.object_blobs().map(|b| b.0))
            .collect();
        let mut blobs_known = true;
        let piece_list: Vec<ObjectHash> = pieces.iter().copied().collect();
        for (_, piece) in crate::io::read::pieces(&bucket, piece_list, self.concurrency()).await? {
            for (_, es) in &piece.entries {
                for (_, v) in es {
                    if let SnapChunk::Blob { hash, .. } = v {
                        live.insert(*hash);
                    }
                }
            }
        }
        let fetched: Vec<Result<Option<Bytes>>> = futures::stream::iter(uncovered.clone())
            .map(|(_, key)| {
                let bucket = bucket.clone();
                async move { bucket.get(&key, MAX_CHANGE_BYTES).await }
            })
            // In order: results are paired with `uncovered` below.
            .buffered(self.concurrency())
            .collect()
            .await;
        for ((name, key), r) in uncovered.iter().zip(fetched) {
            let decoded = match r {
                Ok(b) => {
                    b.map(|b| crate::format::change::Change::decode(key.as_ref(), &b, &name.hash))
                }
                Err(e @ Error::Store { .. }) => return Err(e),
                // Too large to read: its blobs are unknown.
                Err(e) => Some(Err(e)),
            };
            match decoded {
                Some(Ok(change)) => {
                    live.extend(change.ops.iter().filter_map(|op| op.blob()).map(|b| b.0));
                }
                // Gone: it was covered and collected; its blobs are in the pieces.
                None => {}
                // Unreadable: its blobs are unknown, so none are deleted.
                Some(Err(_)) => blobs_known = false,
            }
        }
        if blobs_known {
            for m in &blobs {
                let Some(h) = lay
                    .parse_object_key(&blobs_dir, &m.location)
                    .map(|h| BlobHash(h.0))
                else {
                    continue;
                };
                if live.contains(&h) {
                    continue;
                }
                if old(m.last_modified.into()) {
                    doomed.push((ObjectKind::Blob, m.location.clone(), m.size));
                } else {
                    report.kept_recent += 1;
                }
            }
        } else {
            report
                .notes
                .push("an uncovered change file does not read, so no blob was deleted".into());
        }

        doomed.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        if !opts.dry_run {
            let store = bucket.store.clone();
            let results: Vec<Result<bool>> = futures::stream::iter(doomed.clone())
                .map(|(kind, key, _)| {
                    let store = store.clone();
                    async move {
                        // A writer or compactor may have re-uploaded this object since
                        // the listing, to name it again (protocols.md §5).
                        if matches!(
                            kind,
                            ObjectKind::Blob | ObjectKind::Manifest | ObjectKind::Archive
                        ) {
                            match store.head(&key).await {
                                Ok(m) if !old(m.last_modified.into()) => return Ok(false),
                                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                                Err(e) => return Err(Error::store(key.as_ref(), e)),
                                Ok(_) => {}
                            }
                        }
                        match store.delete(&key).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
                            Err(e) => Err(Error::store(key.as_ref(), e)),
                        }
                    }
                })
                .buffered(self.concurrency())
                .collect()
                .await;
            let mut kept = Vec::new();
            let mut failed = None;
            for ((kind, key, bytes), r) in doomed.into_iter().zip(results) {
                match r {
                    Ok(true) => kept.push((kind, key, bytes)),
                    Ok(false) => report.kept_recent += 1,
                    Err(e) => {
                        failed.get_or_insert(e);
                        // It may have been deleted before the error was reported.
                        kept.push((kind, key, bytes));
                    }
                }
            }
            doomed = kept;
            if let Some(e) = failed {
                // Some deletes happened: the handle must not keep reading what they took.
                self.rebase_after_gc(&retained_snapshot, &doomed, changes, snaps)
                    .await?;
                return Err(e);
            }
        }
        if !opts.dry_run {
            self.rebase_after_gc(&retained_snapshot, &doomed, changes, snaps)
                .await?;
        }
        report.removed = doomed
            .into_iter()
            .map(|(kind, key, bytes)| Removed {
                kind,
                key: key.to_string(),
                bytes,
            })
            .collect();
        Ok(report)
    }

    /// Checks the retained snapshot `r` by re-folding: the newest readable snapshot it
    /// supersedes (or nothing), plus the listed change files `r`'s table names, must
    /// give exactly `r`'s heads, changes and view. `Ok(Err(why))` when it does not, or
    /// when `r` covers changes that are neither listed nor in that predecessor (history
    /// this bucket cannot show, as after a sync from a replica that collected it): GC
    /// then deletes nothing until a compaction here builds on `r`.
    async fn check_retained(
        &self,
        bucket: &RepoStore,
        r: &ListedSnapshot,
        meta: &SnapshotMeta,
        valid: &[(&ListedSnapshot, SnapshotMeta)],
        changes: &[ListedChange],
    ) -> Result<std::result::Result<(), String>> {
        // Its predecessors still listed: a reader opening them joins those that do not
        // supersede one another, as the compaction that wrote `r` did.
        let superseded: HashSet<&str> = meta.supersedes.iter().map(String::as_str).collect();
        let previous: Vec<ListedSnapshot> = valid
            .iter()
            .filter(|(s, _)| superseded.contains(s.name.file_name().as_str()))
            .map(|(s, _)| (*s).clone())
            .collect();
        let table: HashSet<ChangeHash> = meta.changes.iter().map(|c| c.hash).collect();
        let claimed: Vec<ListedChange> = changes
            .iter()
            .filter(|c| table.contains(&c.name.hash))
            .cloned()
            .collect();
        let open = |listing: Vec<ListedChange>, snaps: Vec<ListedSnapshot>| {
            Repo::open_from(
                bucket.clone(),
                self.id(),
                (listing, Vec::new()),
                (snaps, Vec::new()),
                None,
                self.concurrency(),
            )
        };
        let prev = match previous
            .iter()
            .map(|s| s.name.file_name())
            .collect::<Vec<_>>()
        {
            v if v.is_empty() => "no snapshot".to_string(),
            v => v.join(" joined with "),
        };
        let (refold, _) = open(claimed, previous).await?;
        let (claim, _) = open(Vec::new(), vec![r.clone()]).await?;
        let (want, got) = (claim.fold(), refold.fold());
        if !refold.problems().is_empty() || !got.pending().is_empty() {
            return Ok(Err(format!(
                "re-folding {prev} and the change files it covers leaves changes unread or \
                 pending (history not in this bucket); compact here, then collect"
            )));
        }
        if got.heads() != want.heads() || refold.covered_total().await.ok() != Some(r.name.covered)
        {
            return Ok(Err(format!(
                "{prev} and the change files it covers give other heads or another count of \
                 changes than it claims (it covers history not in this bucket, or it is wrong); \
                 compact here, then collect"
            )));
        }
        if refold.entries().await? != claim.entries().await?
            || refold.conflicts().await? != claim.conflicts().await?
        {
            return Ok(Err(format!(
                "its state is not the fold of {prev} and the change files it covers: \
                 the snapshot is wrong (planted or damaged); `crzarr verify` names it"
            )));
        }
        Ok(Ok(()))
    }

    /// Moves stuck change files to quarantine (unless `dry_run`), in parallel, sorted
    /// by key. One gone meanwhile is left out.
    async fn quarantine_stuck(
        &self,
        moving: Vec<(ListedChange, String, bool)>,
        dry_run: bool,
    ) -> Result<Vec<Quarantined>> {
        let bucket = self.bucket().clone();
        let id = self.id();
        let results: Vec<Result<Option<Quarantined>>> = futures::stream::iter(moving)
            .map(|(c, reason, unreadable)| {
                let bucket = bucket.clone();
                async move {
                    let (from, bytes) = (c.key.clone(), c.size);
                    // A file that did not read may have been repaired since this
                    // handle read it (as verify re-checks): read it once more.
                    if unreadable && !dry_run {
                        match crate::io::read::change(&bucket, id, &c).await {
                            Ok(_) => return Ok(None),
                            Err(e @ Error::Store { .. }) => return Err(e),
                            Err(_) => {}
                        }
                    }
                    let to = if dry_run {
                        bucket.layout.quarantine(&from)
                    } else {
                        bucket.move_to_quarantine(&from).await?
                    };
                    Ok(to.map(|to| Quarantined {
                        from: from.to_string(),
                        to: to.to_string(),
                        bytes,
                        reason,
                    }))
                }
            })
            .buffer_unordered(self.concurrency())
            .collect()
            .await;
        let mut out: Vec<Quarantined> = results
            .into_iter()
            .filter_map(Result::transpose)
            .collect::<Result<_>>()?;
        out.sort_by(|a, b| a.from.cmp(&b.from));
        Ok(out)
    }

    /// After deleting `removed`, rebases this handle on the retained snapshot when it
    /// still reads an older one, whose pieces may be gone: its own compaction's
    /// snapshot may have landed but reported failure, or a listing missed it. The
    /// listings just made are used, so this does not depend on a later listing.
    async fn rebase_after_gc(
        &mut self,
        retained: &SnapshotName,
        removed: &[(ObjectKind, Path, u64)],
        changes: (Vec<ListedChange>, Vec<Problem>),
        snaps: (Vec<ListedSnapshot>, Vec<Problem>),
    ) -> Result<()> {
        let gone: HashSet<&Path> = removed.iter().map(|d| &d.1).collect();
        let lay = &self.bucket().layout;
        let base_gone = self.fold().snapshot_base().is_some_and(|b| {
            b.names()
                .any(|n| n != *retained && gone.contains(&lay.snapshot(&n)))
        });
        if !base_gone {
            return Ok(());
        }
        let (changes, change_problems) = changes;
        let (snaps, snap_problems) = snaps;
        let changes = changes
            .into_iter()
            .filter(|c| !gone.contains(&c.key))
            .collect();
        let snaps = snaps
            .into_iter()
            .filter(|s| !gone.contains(&s.key))
            .collect();
        self.reload_from((changes, change_problems), (snaps, snap_problems))
            .await
            .map(|_| ())
    }
}

/// Reads and judges every listed snapshot, in listing order: its metadata, or why a
/// reader would skip it. A newer format stops garbage collection, as it stops
/// readers; a snapshot deleted since the listing is left out.
async fn judge_snapshots<'a>(
    bucket: &RepoStore,
    snaps: &'a [ListedSnapshot],
    id: RepoId,
    concurrency: usize,
) -> Result<
    Vec<(
        &'a ListedSnapshot,
        std::result::Result<SnapshotMeta, String>,
    )>,
> {
    // Owned items keep the future `Send` (borrowed ones defeat the compiler's proof).
    let jobs: Vec<(RepoStore, ListedSnapshot)> = snaps
        .iter()
        .map(|s| (bucket.clone(), (*s).clone()))
        .collect();
    let fetched: Vec<Result<Option<Bytes>>> =
        futures::stream::iter(jobs)
            .map(|(bucket, snap)| async move {
                crate::io::read::snapshot_meta_bytes(&bucket, &snap).await
            })
            .buffered(concurrency)
            .collect()
            .await;
    let mut out = Vec::with_capacity(snaps.len());
    for (snap, got) in snaps.iter().zip(fetched) {
        let key = snap.key.as_ref();
        let bytes = match got {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(e @ Error::Store { .. }) => return Err(e),
            Err(e) => {
                out.push((snap, Err(e.to_string())));
                continue;
            }
        };
        let checked = SnapshotMeta::decode_named(key, &bytes, snap.name, id).and_then(|meta| {
            Fold::from_snapshot(key, snap.name, meta.clone(), id)?;
            Ok(meta)
        });
        match checked {
            Ok(meta) => out.push((snap, Ok(meta))),
            Err(e @ Error::UnsupportedVersion { .. }) => return Err(e),
            Err(e) => out.push((snap, Err(e.to_string()))),
        }
    }
    Ok(out)
}
