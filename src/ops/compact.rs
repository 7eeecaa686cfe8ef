//! Compaction: writing a snapshot of the current state, beside writers and other
//! compactors, without locks (`spec/protocols.md`, "Compaction").
//!
//! Pieces and archive shards are written first, the metadata object last: a snapshot
//! is visible all at once, under an immutable name no other compactor can take.

use crate::error::{Error, Result};
use crate::format::ids::{ActorId, ChangeHash, ObjectHash, now_millis};
use crate::format::layout::SnapshotName;
use crate::format::snapshot::{
    ARCHIVE_SHARDS, ArchiveShard, CoveredChange, MAX_META_BYTES, MAX_PIECE_BYTES, MAX_SHARD_BYTES,
    SnapFork, check_write_size,
};
use crate::io::store::RepoStore;
use crate::repo::Repo;
use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

/// A compaction that runs longer than this writes nothing: garbage collection's
/// safety argument assumes compactions finish well inside its window.
pub const DEFAULT_COMPACTION_TIME_LIMIT: Duration = Duration::from_secs(10 * 60);

/// What [`Repo::compact`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    /// The snapshot written (`None` when already up to date).
    pub snapshot: Option<String>,
    /// The snapshot the state was based on.
    pub based_on: Option<String>,
    /// Changes folded in that no earlier snapshot covered.
    pub changes_folded: usize,
    /// Changes the new snapshot covers in all.
    pub covered: u64,
    /// Changes left pending (waiting for dependencies): not covered.
    pub pending: usize,
    /// Manifest pieces written.
    pub manifests_written: usize,
    /// Manifest pieces carried over unchanged.
    pub manifests_reused: usize,
    /// Archive shards written.
    pub archive_shards_written: usize,
    /// Bytes written (metadata, pieces, shards).
    pub bytes_written: u64,
    /// Snapshots the new one covers entirely.
    pub supersedes: Vec<String>,
}

impl Repo {
    /// Writes a snapshot of everything this bucket holds that is causally complete.
    /// Idempotent: with nothing new since the newest snapshot, it writes nothing.
    pub async fn compact(&mut self) -> Result<CompactReport> {
        self.compact_within(DEFAULT_COMPACTION_TIME_LIMIT).await
    }

    /// [`Repo::compact`] with a time limit other than the default.
    pub async fn compact_within(&mut self, limit: Duration) -> Result<CompactReport> {
        let started = Instant::now();
        let bucket = self.bucket().clone();
        // One pair of listings serves the refresh and the compaction. The store's
        // clock is read before them: the time limit is judged by the clock garbage
        // collection judges ages by, which keeps counting while a laptop sleeps.
        let started_store: SystemTime = bucket.now().await?.last_modified.into();
        let (listing, snap_listing) =
            futures::join!(bucket.list_changes(), bucket.list_snapshots());
        let (listing, snap_listing) = (listing?, snap_listing?);
        let listed: HashSet<ChangeHash> = listing.0.iter().map(|c| c.name.hash).collect();
        let snaps = snap_listing.0.clone();
        self.refresh_from(listing, snap_listing).await?;
        let base = self.fold().snapshot_base().cloned();
        let base_name = base.as_ref().map(|b| b.name);
        // A state joined from several snapshots (spec/merge.md §9) is written as one
        // snapshot that supersedes them all, even with no change since.
        let joined: Vec<SnapshotName> = base
            .as_ref()
            .map(|b| b.joined.iter().map(|j| j.0).collect())
            .unwrap_or_default();

        // Snapshots this state covers entirely, so garbage collection may drop them.
        let listed_names: HashSet<String> = snaps.iter().map(|s| s.name.file_name()).collect();
        let mut supersedes: Vec<String> = base
            .as_ref()
            .map(|b| {
                b.supersedes
                    .iter()
                    .filter(|n| listed_names.contains(*n))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for snap in &snaps {
            let name = snap.name.file_name();
            if Some(snap.name) == base_name
                || joined.contains(&snap.name)
                || supersedes.contains(&name)
            {
                continue;
            }
            if self.covers_snapshot(&bucket, snap.name).await? {
                supersedes.push(name);
            }
        }
        supersedes.extend(
            base_name
                .into_iter()
                .chain(joined.iter().copied())
                .map(|n| n.file_name()),
        );
        supersedes.sort();
        supersedes.dedup();
        let mut report = CompactReport {
            based_on: base_name.map(|n| n.file_name()),
            changes_folded: self.fold().uncompacted(),
            pending: self.fold().pending().len(),
            ..Default::default()
        };
        // A snapshot this state merely covers is not a reason to write one: GC retires
        // it by coverage (protocols.md §5 step 5), and a snapshot written only for that
        // would tie its base's count and might not even sort above it.
        if self.fold().is_empty() || (!self.fold().has_uncompacted() && joined.is_empty()) {
            report.covered = base_name.map_or(0, |n| n.covered);
            return Ok(report);
        }

        // Read what the export needs: pieces of changed arrays, and the archive.
        self.load_pieces(self.fold().pieces_for_export()).await?;
        // Every archive the state was read from, merged shard by shard (joined
        // snapshots' coverage overlaps).
        let mut old_shards: Vec<Vec<CoveredChange>> = vec![Vec::new(); ARCHIVE_SHARDS];
        let mut old_hashes: Vec<Option<ObjectHash>> = vec![None; ARCHIVE_SHARDS];
        if let Some(b) = &base {
            for (n, archive) in b.archives().enumerate() {
                for (i, shard) in crate::io::read::shards(&bucket, Some(archive))
                    .await?
                    .into_iter()
                    .enumerate()
                {
                    let Some(shard) = shard.filter(|_| i < ARCHIVE_SHARDS) else {
                        continue;
                    };
                    if n == 0 {
                        old_hashes[i] = archive[i];
                    } else if !shard.changes.is_empty() {
                        // Merged from several: written anew below.
                        old_hashes[i] = None;
                    }
                    old_shards[i].extend(shard.changes);
                }
            }
            for s in &mut old_shards {
                s.sort_by_key(|c| c.hash);
                s.dedup_by_key(|c| c.hash);
            }
        }
        let mut archived: HashSet<ChangeHash> = HashSet::new();
        let mut archived_claims: HashMap<(ActorId, u64), Vec<ChangeHash>> = HashMap::new();
        for s in &old_shards {
            for c in s {
                archived.insert(c.hash);
                let v = archived_claims.entry((c.actor, c.seq)).or_default();
                if !v.contains(&c.hash) {
                    v.push(c.hash);
                }
            }
        }
        // Superseded records naming a change nobody delivered for a whole window
        // stop costing: the base that carried them is older than the repository's
        // minimum GC window by the store's clock (protocols.md §4 step 4).
        let base_past_horizon = match base_name {
            Some(b) if self.fold().has_unknown_base_records() => {
                let min = bucket.read_config().await?.min_gc_window();
                snaps.iter().find(|s| s.name == b).is_some_and(|s| {
                    started_store.duration_since(s.modified).unwrap_or_default() >= min
                })
            }
            _ => false,
        };
        let fold = self.fold();
        let is_covered = |h: &ChangeHash| fold.contains(h) || archived.contains(h);
        let expired = |h: &ChangeHash| {
            base_past_horizon && !fold.knows(h) && !listed.contains(h) && !archived.contains(h)
        };
        let covered = if joined.is_empty() {
            fold.covered_count().ok_or_else(|| {
                Error::Limit("covered change count overflows u64: no snapshot written".into())
            })?
        } else {
            let mut all: HashSet<ChangeHash> = archived.clone();
            all.extend(fold.log_all().map(|c| c.hash));
            all.len() as u64
        };
        let mut exported = fold.export(covered, &listed, &is_covered, &expired)?;

        // Forks against archived history are found here, and kept in the snapshot.
        let mut forks: BTreeMap<(ActorId, u64), Vec<ChangeHash>> = exported
            .meta
            .forks
            .drain(..)
            .map(|f| ((f.actor, f.seq), f.changes))
            .collect();
        // Against changes applied from files; for a joined state also against the
        // other sides' tables, and archive against archive (two replicas archived the
        // two changes of one fork apart).
        let compared: Vec<&crate::fold::ChangeInfo> = if joined.is_empty() {
            fold.log()
        } else {
            fold.log_all().collect()
        };
        let mut add_fork = |claim: (ActorId, u64), hs: &[ChangeHash]| {
            let v = forks.entry(claim).or_default();
            v.extend_from_slice(hs);
            v.sort();
            v.dedup();
        };
        for info in compared {
            if let Some(hs) = archived_claims.get(&(info.actor, info.seq))
                && hs.iter().any(|h| *h != info.hash)
            {
                let mut all = hs.clone();
                all.push(info.hash);
                add_fork((info.actor, info.seq), &all);
            }
        }
        for (claim, hs) in &archived_claims {
            if hs.len() > 1 {
                add_fork(*claim, hs);
            }
        }
        exported.meta.forks = forks
            .into_iter()
            .map(|((actor, seq), changes)| SnapFork {
                actor,
                seq,
                changes,
            })
            .collect();

        // The archive: old shards plus what leaves the table; unchanged shards reused.
        let mut add: Vec<Vec<CoveredChange>> = vec![Vec::new(); ARCHIVE_SHARDS];
        for c in exported.to_archive.drain(..) {
            if !archived.contains(&c.hash) {
                add[CoveredChange::shard(&c.hash)].push(c);
            }
        }
        let mut shard_hashes: Vec<Option<ObjectHash>> = Vec::with_capacity(ARCHIVE_SHARDS);
        // Each with what it is and the limit its readers read it with.
        let mut uploads: Vec<(Path, Bytes, &'static str, u64)> = Vec::new();
        for (i, extra) in add.into_iter().enumerate() {
            if extra.is_empty() && (old_hashes[i].is_some() || old_shards[i].is_empty()) {
                shard_hashes.push(old_hashes[i]);
                continue;
            }
            let mut changes: Vec<CoveredChange> = std::mem::take(&mut old_shards[i]);
            changes.extend(extra);
            changes.sort_by_key(|c| c.hash);
            changes.dedup_by_key(|c| c.hash);
            let bytes = ArchiveShard { changes }.encode();
            let h = ObjectHash::of(&bytes);
            uploads.push((
                bucket.layout.archive_shard(&h),
                Bytes::from(bytes),
                "archive shard",
                MAX_SHARD_BYTES,
            ));
            report.archive_shards_written += 1;
            shard_hashes.push(Some(h));
        }
        for (h, bytes) in exported.new_pieces.drain(..) {
            uploads.push((
                bucket.layout.manifest(&h),
                Bytes::from(bytes),
                "manifest piece",
                MAX_PIECE_BYTES,
            ));
            report.manifests_written += 1;
        }
        report.manifests_reused = exported.reused_pieces;
        exported.meta.archive = shard_hashes;
        exported.meta.supersedes = supersedes.clone();
        exported.meta.written_ms = now_millis();
        let meta_bytes = Bytes::from(exported.meta.encode());
        let name = SnapshotName {
            covered: exported.meta.covered,
            hash: ObjectHash::of(&meta_bytes),
        };
        // Nothing is written unless every object is one readers accept: a piece,
        // shard or metadata over its read limit would make the repository unreadable.
        check_write_size(
            "snapshot",
            bucket.layout.snapshot(&name).as_ref(),
            meta_bytes.len(),
            MAX_META_BYTES,
        )?;
        for (key, bytes, what, limit) in &uploads {
            check_write_size(what, key.as_ref(), bytes.len(), *limit)?;
        }

        let over = |started: Instant| -> Result<()> {
            if started.elapsed() > limit {
                return Err(Error::Limit(format!(
                    "compaction ran {:?}, over its {limit:?} limit: no snapshot written \
                     (garbage collection assumes compactions finish well inside its window)",
                    started.elapsed()
                )));
            }
            Ok(())
        };
        over(started)?;
        report.bytes_written =
            meta_bytes.len() as u64 + uploads.iter().map(|u| u.1.len() as u64).sum::<u64>();
        // Owned items only keep the future `Send` (borrowed ones defeat the compiler's proof).
        let uploads: Vec<(Path, Bytes)> = uploads.into_iter().map(|(k, b, _, _)| (k, b)).collect();
        let results: Vec<Result<()>> = futures::stream::iter(uploads)
            .map(|(key, bytes)| {
                let bucket = bucket.clone();
                // A plain PUT, not create-once: an identical object left by a failed
                // compaction becomes young again, so garbage collection (which
                // re-checks ages just before deleting) keeps what this snapshot names.
                async move { bucket.put_blob(&key, bytes).await }
            })
            .buffer_unordered(self.concurrency())
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>>>()?;
        // Pieces and shards written past the limit are orphans GC later removes.
        over(started)?;
        let elapsed = bucket
            .now()
            .await
            .map(|m| SystemTime::from(m.last_modified))?
            .duration_since(started_store)
            .unwrap_or_default();
        if elapsed > limit {
            return Err(Error::Limit(format!(
                "compaction ran {elapsed:?} by the store's clock, over its {limit:?} limit: no \
                 snapshot written (garbage collection assumes compactions finish well inside \
                 its window)"
            )));
        }
        bucket
            .put_once(&bucket.layout.snapshot(&name), meta_bytes.clone())
            .await?;
        // Only a hint: readers check it against the listing.
        bucket
            .put_blob(&bucket.layout.latest_hint(), meta_bytes)
            .await?;
        // Continue from the snapshot just written, so the next compaction is
        // incremental and this handle holds no more than a fresh reader.
        self.reload().await?;
        self.note_snapshot(name);
        report.snapshot = Some(name.file_name());
        report.covered = name.covered;
        report.supersedes = supersedes;
        Ok(report)
    }

    /// Whether this state holds everything snapshot `name` covers.
    async fn covers_snapshot(&mut self, bucket: &RepoStore, name: SnapshotName) -> Result<bool> {
        let key = bucket.layout.snapshot(&name);
        let bytes = match bucket.get(&key, MAX_META_BYTES).await {
            Ok(Some(b)) => b,
            Err(e @ Error::Store { .. }) => return Err(e),
            // Gone, or too large to read: never superseded by us.
            Ok(None) | Err(_) => return Ok(false),
        };
        // Judged as readers judge it: one they would skip is not ours to retire.
        // Its heads applied here, or in an archive this state was read from.
        match crate::fold::Fold::decode_snapshot(key.as_ref(), &bytes, name, self.id()) {
            Ok(f) => self.covers_heads(&f.heads()).await,
            Err(_) => Ok(false),
        }
    }
}
