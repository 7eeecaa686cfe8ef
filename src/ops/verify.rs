//! `verify` (fsck): checks every object in a bucket exactly as readers check it, and
//! reports damage, dangling references, changes that cannot apply, forks and files
//! crzarr does not know (`spec/protocols.md`, "Verify").
//!
//! It never modifies the bucket, except with [`VerifyOptions::quarantine`]: objects
//! that fail their hash or decoding are then moved to `.crdt/quarantine/`, which
//! readers, GC, status and sync never list. The causal fold is not re-implemented:
//! pending changes, the history horizon, rejected changes and forks come from a
//! [`Repo`] opened on the bucket.

use crate::error::{CorruptKind, Error, Result};
use crate::fold::Fold;
use crate::fold::view::{ChunkRef, Entry};
use crate::format::change::{ChunkReference, MAX_CHANGE_BYTES, Op};
use crate::format::ids::{BlobHash, ChangeHash, ObjectHash, RepoId};
use crate::format::layout::ObjectKind;
use crate::format::layout::{BucketKey, ChangeName, SnapshotName};
use crate::format::snapshot::{
    ArchiveShard, MAX_META_BYTES, MAX_PIECE_BYTES, MAX_SHARD_BYTES, ManifestPiece, SnapChunk,
};
use crate::io::store::{DEFAULT_CONCURRENCY, RepoStore};
use crate::repo::Repo;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

/// What [`verify`] checks, and whether it may move corrupt objects aside.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Also read every referenced blob and check its blake3 and length (one GET per
    /// blob), and list blobs nothing references.
    pub blobs: bool,
    /// Move change files, snapshot metadata, manifest pieces and blobs that fail
    /// their hash or decoding to `.crdt/quarantine/<key relative to .crdt/>` (each
    /// checked once more, then copied, then deleted). Archive shards stay: open fails
    /// on a missing shard it needs, and only reports a damaged one. Without it
    /// nothing is modified.
    pub quarantine: bool,
    /// Requests in flight at once for fan-out (GETs, HEADs, moves); the [`Repo`]
    /// opened for the reader's view uses the same bound.
    pub concurrency: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            blobs: false,
            quarantine: false,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

/// Whether a finding makes the bucket unhealthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Something readers trip over, or that needs a person: `crzarr verify` exits 2.
    Problem,
    /// Worth knowing, harmless to readers.
    Info,
}

/// What a finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// `.crdt/repo.json` does not read; nothing else can be checked.
    BadMarker,
    /// The repository does not open (readers fail).
    OpenFailed,
    /// A change file fails its hash, strict decoding, name-vs-header check or size limit.
    CorruptChange,
    /// Snapshot metadata fails its hash, decoding, structural checks or size limit.
    CorruptSnapshot,
    /// A manifest piece fails its hash, decoding, structural checks or size limit.
    CorruptManifest,
    /// An archive shard fails its hash, decoding, structural checks or size limit.
    CorruptArchive,
    /// A blob's bytes do not hash to its name (checked with `blobs`).
    CorruptBlob,
    /// A change or snapshot of another repository.
    ForeignObject,
    /// An object in a format newer than this build reads.
    NewerVersion,
    /// A blob referenced by a change or a manifest piece is not in the bucket.
    MissingBlob,
    /// A manifest piece named by a snapshot is not in the bucket.
    MissingManifest,
    /// An archive shard named by a snapshot is not in the bucket.
    MissingArchive,
    /// A chunk reference gives a length other than its blob's (checked with `blobs`).
    BlobLengthMismatch,
    /// A change invalid against its causal past: it never applies.
    RejectedChange,
    /// A change waiting for changes that are not applied.
    PendingChange,
    /// A pending change needing a change that is neither in the bucket nor covered.
    MissingHistory,
    /// Two different changes claiming one writer and sequence number.
    Fork,
    /// An object under `.crdt/` whose name crzarr does not use.
    UnknownFile,
    /// A file skipped by readers that no other finding explains.
    ReaderProblem,
    /// `.crdt/latest` is not a copy of any listed snapshot.
    StaleHint,
    /// A blob that no change file and no manifest piece references (with `blobs`).
    UnreferencedBlob,
    /// An object already under `.crdt/quarantine/`.
    Quarantined,
    /// A chunk adopted in place whose object changed or vanished since (one HEAD each).
    ReferenceChanged,
}

impl FindingKind {
    /// The kind as JSON names it (`corrupt_change`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::BadMarker => "bad_marker",
            FindingKind::OpenFailed => "open_failed",
            FindingKind::CorruptChange => "corrupt_change",
            FindingKind::CorruptSnapshot => "corrupt_snapshot",
            FindingKind::CorruptManifest => "corrupt_manifest",
            FindingKind::CorruptArchive => "corrupt_archive",
            FindingKind::CorruptBlob => "corrupt_blob",
            FindingKind::ForeignObject => "foreign_object",
            FindingKind::NewerVersion => "newer_version",
            FindingKind::MissingBlob => "missing_blob",
            FindingKind::MissingManifest => "missing_manifest",
            FindingKind::MissingArchive => "missing_archive",
            FindingKind::BlobLengthMismatch => "blob_length_mismatch",
            FindingKind::RejectedChange => "rejected_change",
            FindingKind::PendingChange => "pending_change",
            FindingKind::MissingHistory => "missing_history",
            FindingKind::Fork => "fork",
            FindingKind::UnknownFile => "unknown_file",
            FindingKind::ReaderProblem => "reader_problem",
            FindingKind::StaleHint => "stale_hint",
            FindingKind::UnreferencedBlob => "unreferenced_blob",
            FindingKind::Quarantined => "quarantined",
            FindingKind::ReferenceChanged => "reference_changed",
        }
    }

    /// Whether `quarantine` moves objects with this finding: those that failed their
    /// hash or decoding (or exceed the size limit no writer exceeds). Archive shards
    /// stay: open fails on a missing shard it needs, and only reports a damaged one.
    pub fn quarantinable(self) -> bool {
        matches!(
            self,
            FindingKind::CorruptChange
                | FindingKind::CorruptSnapshot
                | FindingKind::CorruptManifest
                | FindingKind::CorruptBlob
        )
    }

    /// The severity of this kind unless the finding says otherwise (dangling
    /// references are only informative when nothing readers use holds them).
    pub fn default_severity(self) -> Severity {
        match self {
            FindingKind::StaleHint | FindingKind::UnreferencedBlob | FindingKind::Quarantined => {
                Severity::Info
            }
            _ => Severity::Problem,
        }
    }
}

/// One thing verify found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The bucket key it is about.
    pub key: String,
    /// What it is.
    pub kind: FindingKind,
    /// Problem or info.
    pub severity: Severity,
    /// What is wrong and what to do.
    pub message: String,
    /// Other keys or change hashes involved: the objects referencing a missing one,
    /// the changes a pending change waits for, the changes of a fork.
    pub related: Vec<String>,
}

impl Finding {
    fn new(kind: FindingKind, key: impl Into<String>, message: impl Into<String>) -> Self {
        Finding {
            key: key.into(),
            kind,
            severity: kind.default_severity(),
            message: message.into(),
            related: Vec::new(),
        }
    }

    fn related(mut self, related: Vec<String>) -> Self {
        self.related = related;
        self
    }

    fn severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }
}

/// One object moved to quarantine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Moved {
    /// Where it was.
    pub from: String,
    /// Where it is now.
    pub to: String,
}

/// What [`verify`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The marker's repository id (`None` when the marker does not read).
    pub repo_id: Option<String>,
    /// The snapshot readers open from, if any.
    pub snapshot: Option<String>,
    /// Everything found, sorted by key, then kind.
    pub findings: Vec<Finding>,
    /// Objects moved to quarantine (only with `quarantine`).
    pub moved: Vec<Moved>,
    /// Objects whose bytes were read and checked, by kind.
    pub checked: BTreeMap<ObjectKind, u64>,
    /// Bytes read and hashed.
    pub bytes_hashed: u64,
    /// Findings of severity problem.
    pub problems: usize,
    /// Findings of severity info.
    pub infos: usize,
    /// Wall-clock time taken.
    pub elapsed_ms: u64,
}

impl VerifyReport {
    /// Whether no finding is a problem (info findings allowed).
    pub fn is_clean(&self) -> bool {
        self.problems == 0
    }

    /// The findings of one kind.
    pub fn of_kind(&self, kind: FindingKind) -> Vec<&Finding> {
        self.findings.iter().filter(|f| f.kind == kind).collect()
    }

    fn finish(mut self, started: Instant) -> Self {
        self.findings
            .sort_by(|a, b| (&a.key, a.kind).cmp(&(&b.key, b.kind)));
        self.problems = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Problem)
            .count();
        self.infos = self.findings.len() - self.problems;
        self.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self
    }
}

/// Checks the repository in `bucket`: the marker; every change file, snapshot
/// metadata object, manifest piece and archive shard, as readers check them; with
/// `blobs`, every referenced blob; references to objects that are missing; pending,
/// rejected and forked changes (from a [`Repo`] opened on the bucket); files under
/// `.crdt/` that crzarr does not name; and the `.crdt/latest` hint.
///
/// Errors: no marker (`NotARepo`), a marker of another format version, and store
/// errors. Everything about the bucket's content is a finding in the report.
pub async fn verify(bucket: &RepoStore, opts: &VerifyOptions) -> Result<VerifyReport> {
    let started = Instant::now();
    let concurrency = opts.concurrency.max(1);
    let lay = bucket.layout();
    let mut report = VerifyReport::default();
    let id = match bucket.read_marker().await {
        Ok(Some(id)) => id,
        Ok(None) => {
            return Err(Error::NotARepo {
                location: format!("{}/{}", bucket.store(), lay.root()),
            });
        }
        Err(e @ (Error::Corrupt { .. } | Error::TooLarge { .. })) => {
            report.findings.push(Finding::new(
                FindingKind::BadMarker,
                lay.marker().to_string(),
                format!(
                    "{}: every other check needs the repository id; copy .crdt/repo.json \
                     from a replica of this repository",
                    e.reason()
                ),
            ));
            return Ok(report.finish(started));
        }
        Err(e) => return Err(e),
    };
    report.repo_id = Some(id.to_string());

    // The reader's view and the inventory, in parallel.
    let prefix = lay.root().to_string();
    let (repo, listing) = futures::join!(
        Repo::open_with_concurrency(bucket.store().clone(), &prefix, concurrency),
        list_crdt(bucket, concurrency),
    );
    let inv = classify(bucket, listing?, &mut report.findings);
    let repo = match repo {
        Ok(r) => Some(r),
        Err(e @ Error::Store { .. }) => return Err(e),
        Err(e) => {
            let key = e
                .key()
                .map_or_else(|| lay.marker().to_string(), str::to_string);
            report.findings.push(Finding::new(
                FindingKind::OpenFailed,
                key,
                format!(
                    "the repository does not open: {e}; see the other findings for what to repair"
                ),
            ));
            None
        }
    };
    report.snapshot = repo
        .as_ref()
        .and_then(|r| r.fold().snapshot_base())
        .map(|b| b.name.file_name());

    // Every change, snapshot, piece and shard, and the hint, with bounded fan-out.
    let mut jobs: Vec<Job> = Vec::new();
    jobs.extend(
        inv.changes
            .iter()
            .map(|(n, m)| Job::Change(*n, m.location.clone(), m.size)),
    );
    jobs.extend(
        inv.snapshots
            .iter()
            .map(|(n, m)| Job::Snapshot(*n, m.location.clone(), m.size)),
    );
    jobs.extend(
        inv.manifests
            .iter()
            .map(|(h, m)| Job::Manifest(*h, m.location.clone(), m.size)),
    );
    jobs.extend(
        inv.archive
            .iter()
            .map(|(h, m)| Job::Archive(*h, m.location.clone(), m.size)),
    );
    let hint_key = lay.latest_hint();
    let (results, hint) = futures::join!(
        run_jobs(bucket, id, jobs, concurrency),
        bucket.get(&hint_key, MAX_META_BYTES),
    );

    let mut refs = References::default();
    let mut corrupt: Vec<Job> = Vec::new();
    let mut undecoded = false;
    for (job, hashed, result) in results {
        report.bytes_hashed += hashed;
        let checked = match result {
            Ok(Some(c)) => c,
            // Gone since the listing: garbage collection removed it.
            Ok(None) | Err(Error::Vanished { .. }) => continue,
            Err(e @ Error::Store { .. }) => return Err(e),
            Err(e) => {
                *report.checked.entry(job.object_kind()).or_default() += 1;
                undecoded |= matches!(job, Job::Change(..) | Job::Manifest(..));
                let f = failure(&job, &e);
                if f.kind.quarantinable() {
                    corrupt.push(job);
                }
                report.findings.push(f);
                continue;
            }
        };
        *report.checked.entry(job.object_kind()).or_default() += 1;
        let key = job.key().to_string();
        match (checked, &job) {
            (Checked::Change { blobs }, Job::Change(name, ..)) => {
                let r = refs.referrer(key, Holder::Change(name.hash));
                for (h, len) in blobs {
                    refs.blobs.entry(h).or_default().push((r, len));
                }
            }
            (
                Checked::Snapshot {
                    pieces,
                    shards,
                    blobs,
                },
                Job::Snapshot(name, ..),
            ) => {
                let r = refs.referrer(key, Holder::Snapshot(*name));
                for (h, len) in blobs {
                    refs.blobs.entry(h).or_default().push((r, len));
                }
                for h in pieces {
                    refs.pieces.entry(h).or_default().push(r);
                    refs.piece_holders.entry(h).or_default().push(*name);
                }
                for h in shards {
                    refs.shards.entry(h).or_default().push(r);
                }
            }
            (Checked::Manifest { blobs }, Job::Manifest(hash, ..)) => {
                let r = refs.referrer(key, Holder::Piece(*hash));
                for (h, len) in blobs {
                    refs.blobs.entry(h).or_default().push((r, len));
                }
            }
            _ => {}
        }
    }
    match hint {
        Ok(Some(bytes)) => {
            report.bytes_hashed += bytes.len() as u64;
            let h = ObjectHash::of(&bytes);
            if !inv.snapshots.iter().any(|(n, _)| n.hash == h) {
                report.findings.push(Finding::new(
                    FindingKind::StaleHint,
                    hint_key.to_string(),
                    "not a copy of any listed snapshot: readers ignore it and fetch the newest \
                     snapshot (one more round trip); the next `crzarr compact` rewrites it",
                ));
            }
        }
        Ok(None) => {}
        Err(e @ Error::Store { .. }) => return Err(e),
        Err(e) => report.findings.push(Finding::new(
            FindingKind::StaleHint,
            hint_key.to_string(),
            format!(
                "{}: readers ignore it and fetch the newest snapshot; the next `crzarr compact` \
                 rewrites it",
                e.reason()
            ),
        )),
    }

    let live = Liveness::new(repo.as_ref(), &inv);

    // With `blobs`: every referenced blob that is listed, hashed as it streams.
    if opts.blobs {
        let jobs: Vec<Job> = refs
            .blobs
            .keys()
            .filter_map(|h| inv.blobs.get(h).map(|m| Job::Blob(*h, m.location.clone())))
            .collect();
        for (job, hashed, result) in run_jobs(bucket, id, jobs, concurrency).await {
            report.bytes_hashed += hashed;
            let Job::Blob(hash, ..) = &job else { continue };
            match result {
                Ok(Some(Checked::Blob { len })) => {
                    *report.checked.entry(ObjectKind::Blob).or_default() += 1;
                    for &(r, claimed) in refs.blobs.get(hash).into_iter().flatten() {
                        if claimed == len {
                            continue;
                        }
                        let referrer = &refs.referrers[r];
                        let mut f = Finding::new(
                            FindingKind::BlobLengthMismatch,
                            referrer.key.clone(),
                            format!(
                                "references blob {hash} as {claimed} bytes, but the blob has \
                                 {len}: reads of that chunk fail; write the chunk again"
                            ),
                        )
                        .related(vec![job.key().to_string()]);
                        if !live.holder(&referrer.holder, &refs) {
                            f.severity = Severity::Info;
                            f.message.push_str(&live.unused_note(&referrer.holder));
                        }
                        report.findings.push(f);
                    }
                }
                Ok(_) | Err(Error::Vanished { .. }) => {}
                Err(e @ Error::Store { .. }) => return Err(e),
                Err(e) => {
                    *report.checked.entry(ObjectKind::Blob).or_default() += 1;
                    corrupt.push(job.clone());
                    report.findings.push(failure(&job, &e));
                }
            }
        }
        let note = if undecoded {
            " (a damaged change file or manifest piece, reported above, may reference it)"
        } else {
            ""
        };
        let mut unreferenced: Vec<&ObjectMeta> = inv
            .blobs
            .iter()
            .filter(|(h, _)| !refs.blobs.contains_key(h))
            .map(|(_, m)| m)
            .collect();
        unreferenced.sort_by(|a, b| a.location.cmp(&b.location));
        for m in unreferenced {
            report.findings.push(Finding::new(
                FindingKind::UnreferencedBlob,
                m.location.to_string(),
                format!(
                    "no change file and no manifest piece references it{note}: `crzarr gc` \
                     deletes it once it is older than the window"
                ),
            ));
        }
    }

    report
        .findings
        .extend(dangling(bucket, &inv, &refs, &live, concurrency).await?);
    if let Some(repo) = &repo {
        let known: HashSet<String> = report.findings.iter().map(|f| f.key.clone()).collect();
        report
            .findings
            .extend(from_reader(bucket, repo, &inv, &known));
        report
            .findings
            .extend(changed_references(repo, concurrency).await?);
    }
    if opts.quarantine {
        report.moved = quarantine(bucket, id, corrupt, concurrency, &mut report.findings).await?;
        let broken = quarantine_broken_snapshots(bucket, &mut report.findings).await?;
        report.moved.extend(broken);
        report.moved.sort_by(|a, b| a.from.cmp(&b.from));
    }
    Ok(report.finish(started))
}

/// Every object under `.crdt/`: one delimited LIST of `.crdt/`, then each directory
/// found there listed recursively, in parallel.
async fn list_crdt(bucket: &RepoStore, concurrency: usize) -> Result<Vec<ObjectMeta>> {
    let dir = bucket.layout().crdt_dir();
    let top = bucket
        .store()
        .list_with_delimiter(Some(&dir))
        .await
        .map_err(|e| Error::store(dir.as_ref(), e))?;
    let mut all = top.objects;
    let subs: Vec<Result<Vec<ObjectMeta>>> = futures::stream::iter(top.common_prefixes)
        .map(|p| {
            let bucket = bucket.clone();
            async move { bucket.list_all(&p).await }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for s in subs {
        all.extend(s?);
    }
    Ok(all)
}

/// The listing, sorted by kind. Unknown and quarantined files become findings.
#[derive(Default)]
struct Inventory {
    changes: Vec<(ChangeName, ObjectMeta)>,
    snapshots: Vec<(SnapshotName, ObjectMeta)>,
    manifests: HashMap<ObjectHash, ObjectMeta>,
    archive: HashMap<ObjectHash, ObjectMeta>,
    blobs: HashMap<BlobHash, ObjectMeta>,
    change_keys: HashMap<ChangeHash, Path>,
}

fn classify(
    bucket: &RepoStore,
    listing: Vec<ObjectMeta>,
    findings: &mut Vec<Finding>,
) -> Inventory {
    let mut inv = Inventory::default();
    for m in listing {
        match bucket.layout().parse_key(&m.location) {
            Ok(
                BucketKey::Marker
                | BucketKey::LatestHint
                | BucketKey::ClockProbe
                | BucketKey::Config,
            ) => {}
            Ok(BucketKey::Change(n)) => {
                inv.change_keys.insert(n.hash, m.location.clone());
                inv.changes.push((n, m));
            }
            Ok(BucketKey::Snapshot(n)) => inv.snapshots.push((n, m)),
            Ok(BucketKey::Manifest(h)) => {
                inv.manifests.insert(h, m);
            }
            Ok(BucketKey::Archive(h)) => {
                inv.archive.insert(h, m);
            }
            Ok(BucketKey::Blob(h)) => {
                inv.blobs.insert(h, m);
            }
            Ok(BucketKey::Quarantined) => findings.push(Finding::new(
                FindingKind::Quarantined,
                m.location.to_string(),
                "moved aside by `crzarr verify --quarantine`; readers, GC and sync ignore it: \
                 delete it once it is no longer needed for investigation",
            )),
            Err(why) => findings.push(Finding::new(
                FindingKind::UnknownFile,
                m.location.to_string(),
                format!("{why}: readers and GC ignore it; move it out of .crdt/ or delete it"),
            )),
        }
    }
    inv.changes.sort_by_key(|(n, _)| n.hash);
    inv.snapshots.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    inv
}

/// One object to read and check.
#[derive(Clone, Debug)]
enum Job {
    Change(ChangeName, Path, u64),
    Snapshot(SnapshotName, Path, u64),
    Manifest(ObjectHash, Path, u64),
    Archive(ObjectHash, Path, u64),
    Blob(BlobHash, Path),
}

impl Job {
    fn key(&self) -> &Path {
        match self {
            Job::Change(_, k, _)
            | Job::Snapshot(_, k, _)
            | Job::Manifest(_, k, _)
            | Job::Archive(_, k, _)
            | Job::Blob(_, k) => k,
        }
    }

    fn object_kind(&self) -> ObjectKind {
        match self {
            Job::Change(..) => ObjectKind::Change,
            Job::Snapshot(..) => ObjectKind::Snapshot,
            Job::Manifest(..) => ObjectKind::Manifest,
            Job::Archive(..) => ObjectKind::Archive,
            Job::Blob(..) => ObjectKind::Blob,
        }
    }
}

/// What a good object references.
enum Checked {
    Change {
        blobs: Vec<(BlobHash, u64)>,
    },
    Snapshot {
        pieces: Vec<ObjectHash>,
        shards: Vec<ObjectHash>,
        /// Blobs its objects hold.
        blobs: Vec<(BlobHash, u64)>,
    },
    Manifest {
        blobs: Vec<(BlobHash, u64)>,
    },
    Archive,
    Blob {
        len: u64,
    },
}

async fn run_jobs(
    bucket: &RepoStore,
    id: RepoId,
    jobs: Vec<Job>,
    concurrency: usize,
) -> Vec<(Job, u64, Result<Option<Checked>>)> {
    futures::stream::iter(jobs)
        .map(|job| {
            let bucket = bucket.clone();
            async move {
                let (hashed, r) = check(&bucket, id, &job).await;
                (job, hashed, r)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Reads one object and checks it as a reader would. Returns the bytes hashed and
/// what it references (`None`: gone since the listing).
async fn check(bucket: &RepoStore, id: RepoId, job: &Job) -> (u64, Result<Option<Checked>>) {
    let (limit, size) = match job {
        Job::Change(_, _, s) => (MAX_CHANGE_BYTES, *s),
        Job::Snapshot(_, _, s) => (MAX_META_BYTES, *s),
        Job::Manifest(_, _, s) => (MAX_PIECE_BYTES, *s),
        Job::Archive(_, _, s) => (MAX_SHARD_BYTES, *s),
        Job::Blob(hash, key) => return check_blob(bucket, hash, key).await,
    };
    let key = job.key();
    let name = key.to_string();
    if size > limit {
        return (
            0,
            Err(Error::TooLarge {
                key: name,
                size,
                limit,
            }),
        );
    }
    let bytes = match bucket.get(key, limit).await {
        Ok(Some(b)) => b,
        Ok(None) => return (0, Ok(None)),
        Err(e) => return (0, Err(e)),
    };
    let hashed = bytes.len() as u64;
    let checked = match job {
        Job::Change(n, ..) => crate::format::change::Change::decode_named(&name, &bytes, n, id)
            .map(|c| {
                let blobs = c.ops.iter().filter_map(Op::blob).collect();
                Checked::Change { blobs }
            }),
        Job::Snapshot(n, ..) => {
            crate::format::snapshot::SnapshotMeta::decode_named(&name, &bytes, *n, id).and_then(
                |meta| {
                    let pieces = meta
                        .nodes
                        .iter()
                        .flat_map(|node| node.pieces.iter().map(|p| p.hash))
                        .collect();
                    let shards = meta.archive.iter().flatten().copied().collect();
                    let blobs = meta.object_blobs().collect();
                    // The rest of what readers check: node paths, array metadata, stamps,
                    // dimensions, the repository id.
                    Fold::from_snapshot(&name, *n, meta, id)?;
                    Ok(Checked::Snapshot {
                        pieces,
                        shards,
                        blobs,
                    })
                },
            )
        }
        Job::Manifest(h, ..) => ManifestPiece::decode(&name, &bytes, h).map(|p| {
            let blobs = p
                .entries
                .iter()
                .flat_map(|(_, es)| es.iter())
                .filter_map(|(_, v)| match v {
                    SnapChunk::Blob { hash, len } => Some((*hash, *len)),
                    _ => None,
                })
                .collect();
            Checked::Manifest { blobs }
        }),
        Job::Archive(h, ..) => ArchiveShard::decode(&name, &bytes, h).map(|_| Checked::Archive),
        Job::Blob(..) => return (hashed, Ok(None)),
    };
    (hashed, checked.map(Some))
}

/// Streams a blob through blake3: its size does not matter to memory.
async fn check_blob(
    bucket: &RepoStore,
    hash: &BlobHash,
    key: &Path,
) -> (u64, Result<Option<Checked>>) {
    let res = match bucket.store().get(key).await {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => return (0, Ok(None)),
        Err(e) => return (0, Err(Error::store(key.as_ref(), e))),
    };
    let mut stream = res.into_stream();
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    loop {
        match stream.try_next().await {
            Ok(Some(chunk)) => {
                len += chunk.len() as u64;
                hasher.update(&chunk);
            }
            Ok(None) => break,
            Err(e) => return (len, Err(Error::store(key.as_ref(), e))),
        }
    }
    if *hasher.finalize().as_bytes() != hash.0 {
        return (
            len,
            Err(Error::corrupt(
                key.as_ref(),
                CorruptKind::HashMismatch("blob content does not match its hash".into()),
            )),
        );
    }
    (len, Ok(Some(Checked::Blob { len })))
}

/// The finding for an object that failed its checks.
fn failure(job: &Job, e: &Error) -> Finding {
    let key = job.key().to_string();
    let why = e.reason();
    match e {
        Error::ForeignRepo { .. } => Finding::new(
            FindingKind::ForeignObject,
            key,
            format!(
                "{why}: it was copied in from another repository and readers skip it; delete it"
            ),
        ),
        Error::UnsupportedVersion { .. } => Finding::new(FindingKind::NewerVersion, key, why),
        _ => {
            let (kind, advice) = match job {
                Job::Change(..) => (
                    FindingKind::CorruptChange,
                    "readers skip this change, and changes built on it wait for it; move it \
                     aside with `crzarr verify --quarantine`, then `crzarr sync` from a replica \
                     copies a good one"
                        .to_string(),
                ),
                Job::Snapshot(..) => (
                    FindingKind::CorruptSnapshot,
                    "readers skip it and open from the next snapshot; move it aside with \
                     `crzarr verify --quarantine`, then `crzarr sync` from a replica copies a \
                     good one, or `crzarr compact` writes a new one"
                        .to_string(),
                ),
                Job::Manifest(..) => (
                    FindingKind::CorruptManifest,
                    format!(
                        "reads of the chunks it holds fail; {COPY}; `crzarr verify --quarantine` \
                         moves this one aside"
                    ),
                ),
                Job::Archive(..) => (
                    FindingKind::CorruptArchive,
                    format!(
                        "changes it covers cannot be looked up, so late changes needing them stay \
                         pending; {COPY}. `--quarantine` leaves it in place: open fails on a \
                         missing shard it needs, but only reports a damaged one"
                    ),
                ),
                Job::Blob(..) => (
                    FindingKind::CorruptBlob,
                    format!(
                        "reads of the chunks that use it fail; write those chunks again, or \
                         {COPY}; `crzarr verify --quarantine` moves this one aside"
                    ),
                ),
            };
            Finding::new(kind, key, format!("{why}: {advice}"))
        }
    }
}

/// How to restore a content-addressed object. Sync does not: it decides what to copy
/// from change and snapshot names, and never lists or HEADs blobs.
const COPY: &str = "copy the object at this key from a replica that has it (its name is the \
                    hash of its bytes, so any copy that verifies is the right one)";

/// An object holding references.
#[derive(Clone, Copy, Debug)]
enum Holder {
    Change(ChangeHash),
    Snapshot(SnapshotName),
    Piece(ObjectHash),
}

#[derive(Debug)]
struct Referrer {
    key: String,
    holder: Holder,
}

/// Who references what, from the objects that decoded.
#[derive(Default)]
struct References {
    referrers: Vec<Referrer>,
    /// Blob -> (referrer, length it claims).
    blobs: HashMap<BlobHash, Vec<(usize, u64)>>,
    /// Manifest piece -> snapshots (referrers) naming it.
    pieces: HashMap<ObjectHash, Vec<usize>>,
    /// Manifest piece -> names of the snapshots naming it.
    piece_holders: HashMap<ObjectHash, Vec<SnapshotName>>,
    /// Archive shard -> snapshots naming it.
    shards: HashMap<ObjectHash, Vec<usize>>,
}

impl References {
    fn referrer(&mut self, key: String, holder: Holder) -> usize {
        self.referrers.push(Referrer { key, holder });
        self.referrers.len() - 1
    }
}

/// Which holders readers still use: a change file the snapshot readers open covers
/// is never read, nor is a snapshot it supersedes (GC removes both).
struct Liveness {
    base: Option<String>,
    superseded: HashSet<String>,
    /// Changes the reader's snapshot covers.
    covered: HashSet<ChangeHash>,
}

impl Liveness {
    fn new(repo: Option<&Repo>, inv: &Inventory) -> Self {
        let Some(repo) = repo else {
            return Liveness {
                base: None,
                superseded: HashSet::new(),
                covered: HashSet::new(),
            };
        };
        let base = repo.fold().snapshot_base();
        let uncovered: HashSet<ChangeHash> = repo.log().iter().map(|c| c.hash).collect();
        // Covered: applied, but from the snapshot rather than from its file.
        let covered = inv
            .changes
            .iter()
            .map(|(n, _)| n.hash)
            .filter(|h| repo.fold().contains(h) && !uncovered.contains(h))
            .collect();
        Liveness {
            base: base.map(|b| b.name.file_name()),
            superseded: base
                .map(|b| b.supersedes.iter().cloned().collect())
                .unwrap_or_default(),
            covered,
        }
    }

    fn snapshot(&self, name: &SnapshotName) -> bool {
        !self.superseded.contains(&name.file_name())
    }

    fn holder(&self, holder: &Holder, refs: &References) -> bool {
        match holder {
            Holder::Change(h) => !self.covered.contains(h),
            Holder::Snapshot(n) => self.snapshot(n),
            Holder::Piece(h) => refs
                .piece_holders
                .get(h)
                .is_some_and(|names| names.iter().any(|n| self.snapshot(n))),
        }
    }

    fn unused_note(&self, holder: &Holder) -> String {
        let base = self.base.as_deref().unwrap_or("the newest snapshot");
        match holder {
            Holder::Change(_) => format!(
                " (informational: {base} covers this change, so readers never read its file; \
                 `crzarr gc` deletes it)"
            ),
            Holder::Snapshot(_) => format!(
                " (informational: {base} supersedes this snapshot, so readers never use it; \
                 `crzarr gc` deletes it)"
            ),
            Holder::Piece(_) => " (informational: no snapshot readers use names this piece; \
                 `crzarr gc` deletes it)"
                .to_string(),
        }
    }
}

/// References to objects that are not in the bucket. A candidate is confirmed by a
/// HEAD of the missing object (it may have landed since the listing) and of its
/// referrers (garbage collection may have removed them since).
async fn dangling(
    bucket: &RepoStore,
    inv: &Inventory,
    refs: &References,
    live: &Liveness,
    concurrency: usize,
) -> Result<Vec<Finding>> {
    let lay = bucket.layout();
    let mut candidates: Vec<(FindingKind, Path, BTreeSet<usize>)> = Vec::new();
    for (h, rs) in &refs.blobs {
        if !inv.blobs.contains_key(h) {
            let holders = rs.iter().map(|(r, _)| *r).collect();
            candidates.push((FindingKind::MissingBlob, lay.blob(h), holders));
        }
    }
    for (h, rs) in &refs.pieces {
        if !inv.manifests.contains_key(h) {
            let holders = rs.iter().copied().collect();
            candidates.push((FindingKind::MissingManifest, lay.manifest(h), holders));
        }
    }
    for (h, rs) in &refs.shards {
        if !inv.archive.contains_key(h) {
            let holders = rs.iter().copied().collect();
            candidates.push((FindingKind::MissingArchive, lay.archive_shard(h), holders));
        }
    }
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mut probe: BTreeSet<String> = candidates.iter().map(|c| c.1.to_string()).collect();
    for (_, _, holders) in &candidates {
        probe.extend(holders.iter().map(|r| refs.referrers[*r].key.clone()));
    }
    let present: Vec<Result<(String, bool)>> = futures::stream::iter(probe)
        .map(|k| {
            let store = bucket.store().clone();
            async move {
                match store.head(&Path::from(k.as_str())).await {
                    Ok(_) => Ok((k, true)),
                    Err(object_store::Error::NotFound { .. }) => Ok((k, false)),
                    Err(e) => Err(Error::store(k, e)),
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut exists: HashMap<String, bool> = HashMap::new();
    for r in present {
        let (k, there) = r?;
        exists.insert(k, there);
    }
    let there = |k: &str| exists.get(k).copied().unwrap_or(false);
    let mut out = Vec::new();
    for (kind, target, holders) in candidates {
        if there(target.as_ref()) {
            continue;
        }
        let holders: Vec<&Referrer> = holders
            .iter()
            .map(|r| &refs.referrers[*r])
            .filter(|r| there(&r.key))
            .collect();
        let Some(first) = holders.first() else {
            continue;
        };
        let used = holders.iter().any(|r| live.holder(&r.holder, refs));
        let what = match kind {
            FindingKind::MissingBlob => {
                "reads of the chunks that use it fail with a missing-blob error"
            }
            FindingKind::MissingManifest => "reads of the chunks it holds fail",
            _ => {
                "changes it covers cannot be looked up, so a late change needing them stays \
                 pending, and open fails when it needs one"
            }
        };
        let more = match holders.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        let fix = if kind == FindingKind::MissingBlob {
            format!("{COPY}, or write those chunks again")
        } else {
            COPY.to_string()
        };
        let message = format!(
            "missing, but referenced by {}{more}: {what}; {fix}",
            first.key
        );
        let mut f = Finding::new(kind, target.to_string(), message)
            .related(holders.iter().map(|r| r.key.clone()).collect());
        if !used {
            f.message.push_str(&live.unused_note(&first.holder));
            f = f.severity(Severity::Info);
        }
        out.push(f);
    }
    Ok(out)
}

/// What the reader reports: pending changes and their missing deps, the history
/// horizon, rejected changes, forks, and any file it skipped that no finding names.
fn from_reader(
    bucket: &RepoStore,
    repo: &Repo,
    inv: &Inventory,
    known: &HashSet<String>,
) -> Vec<Finding> {
    let lay = bucket.layout();
    let key_of = |h: &ChangeHash| {
        inv.change_keys
            .get(h)
            .map(|k| k.to_string())
            .unwrap_or_else(|| h.to_hex())
    };
    let mut out = Vec::new();
    let mut horizon: BTreeMap<String, String> = repo
        .missing_history()
        .into_iter()
        .map(|p| {
            let msg = p
                .error
                .strip_prefix(&format!("{}: ", p.key))
                .map(str::to_string)
                .unwrap_or(p.error);
            (p.key, msg)
        })
        .collect();
    for p in repo.pending() {
        let key = lay
            .change(&ChangeName {
                hash: p.hash,
                actor: p.actor,
                seq: p.seq,
            })
            .to_string();
        let related: Vec<String> = p.missing.iter().map(|m| m.to_hex()).collect();
        let f = match horizon.remove(&key) {
            Some(msg) => Finding::new(FindingKind::MissingHistory, key, msg),
            None => {
                let shown: Vec<String> = p.missing.iter().take(3).map(|m| m.short()).collect();
                Finding::new(
                    FindingKind::PendingChange,
                    key,
                    format!(
                        "waits for {} change{} not applied here ({}{}), and applies once {}: \
                         `crzarr sync` from the replica that wrote {}; one damaged or \
                         rejected here has its own finding",
                        p.missing.len(),
                        if p.missing.len() == 1 { "" } else { "s" },
                        shown.join(", "),
                        if p.missing.len() > 3 { ", ..." } else { "" },
                        if p.missing.len() == 1 {
                            "it arrives"
                        } else {
                            "they arrive"
                        },
                        if p.missing.len() == 1 { "it" } else { "them" },
                    ),
                )
            }
        };
        out.push(f.related(related));
    }
    for (key, msg) in horizon {
        out.push(Finding::new(FindingKind::MissingHistory, key, msg));
    }
    for r in repo.rejected() {
        out.push(Finding::new(
            FindingKind::RejectedChange,
            key_of(&r.hash),
            format!(
                "invalid change: {}: it never applies, nor does any change built on it; a \
                 faulty or hostile writer wrote it: delete it",
                r.reason
            ),
        ));
    }
    for fork in repo.forks() {
        let key = fork
            .changes
            .iter()
            .find_map(|h| inv.change_keys.get(h))
            .map(|k| k.to_string())
            .or_else(|| {
                repo.fold()
                    .snapshot_base()
                    .map(|b| lay.snapshot(&b.name).to_string())
            })
            .unwrap_or_else(|| lay.ops_dir().to_string());
        out.push(
            Finding::new(
                FindingKind::Fork,
                key,
                format!(
                    "writer {} used seq {} for {} different changes: both apply and nothing is \
                     lost, but a writer's state was copied (a cloned machine, a restored backup, \
                     one handle shared by two processes): give every writing process its own \
                     handle",
                    fork.actor,
                    fork.seq,
                    fork.changes.len()
                ),
            )
            .related(fork.changes.iter().map(|h| h.to_hex()).collect()),
        );
    }
    let named: HashSet<String> = out.iter().map(|f| f.key.clone()).collect();
    for p in repo.problems() {
        if !known.contains(&p.key) && !named.contains(&p.key) {
            let msg = p
                .error
                .strip_prefix(&format!("{}: ", p.key))
                .map(str::to_string)
                .unwrap_or(p.error);
            out.push(Finding::new(FindingKind::ReaderProblem, p.key, msg));
        }
    }
    out
}

/// Moves each corrupt object to quarantine (copy, then delete) after checking it once
/// more: one repaired meanwhile (a blob re-uploaded, a change re-synced) stays.
async fn quarantine(
    bucket: &RepoStore,
    id: RepoId,
    corrupt: Vec<Job>,
    concurrency: usize,
    findings: &mut [Finding],
) -> Result<Vec<Moved>> {
    let results: Vec<(Job, Result<Option<Path>>)> = futures::stream::iter(corrupt)
        .map(|job| {
            let bucket = bucket.clone();
            async move {
                let r = move_aside(&bucket, id, &job).await;
                (job, r)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut moved = Vec::new();
    for (job, r) in results {
        let from = job.key().to_string();
        match r? {
            Some(to) => {
                for f in findings
                    .iter_mut()
                    .filter(|f| f.key == from && f.kind.quarantinable())
                {
                    f.message.push_str(&format!(" (moved to {to} by this run)"));
                }
                moved.push(Moved {
                    from,
                    to: to.to_string(),
                });
            }
            None => {
                for f in findings
                    .iter_mut()
                    .filter(|f| f.key == from && f.kind.quarantinable())
                {
                    f.message
                        .push_str(" (not moved: it was gone or read correctly when checked again)");
                }
            }
        }
    }
    moved.sort_by(|a, b| a.from.cmp(&b.from));
    Ok(moved)
}

/// The repair for a snapshot naming a manifest piece or archive shard that is gone
/// (protocols.md §8.3): the object is checked again by HEAD and, still missing, every
/// snapshot naming it is moved to quarantine. Readers then open from the previous
/// snapshot and the change files still present, and `crzarr compact` writes a whole
/// snapshot again; nothing is deleted, so restoring the missing object and moving the
/// snapshot back undoes it.
async fn quarantine_broken_snapshots(
    bucket: &RepoStore,
    findings: &mut [Finding],
) -> Result<Vec<Moved>> {
    let lay = bucket.layout();
    let mut moved: Vec<Moved> = Vec::new();
    for f in findings.iter_mut().filter(|f| {
        matches!(
            f.kind,
            FindingKind::MissingManifest | FindingKind::MissingArchive
        )
    }) {
        let missing = Path::from(f.key.as_str());
        match bucket.store().head(&missing).await {
            Ok(_) => continue, // restored meanwhile
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::store(f.key.as_str(), e)),
        }
        for holder in &f.related {
            let from = Path::from(holder.as_str());
            if !matches!(lay.parse_key(&from), Ok(BucketKey::Snapshot(_)))
                || moved.iter().any(|m| m.from == *holder)
            {
                continue;
            }
            let Some(to) = bucket.move_to_quarantine(&from).await? else {
                continue;
            };
            f.message.push_str(&format!(
                " (snapshot {holder} moved to {to} by this run: readers now use the previous \
                 snapshot and the change files still present; run `crzarr compact`)"
            ));
            moved.push(Moved {
                from: holder.clone(),
                to: to.to_string(),
            });
        }
    }
    Ok(moved)
}

/// Checks `job` again and, if it still fails, moves it; returns where it went.
async fn move_aside(bucket: &RepoStore, id: RepoId, job: &Job) -> Result<Option<Path>> {
    let from = job.key();
    if bucket.layout().quarantine(from).is_none() {
        return Ok(None);
    }
    match check(bucket, id, job).await.1 {
        Ok(_) | Err(Error::Vanished { .. }) => return Ok(None),
        Err(e @ Error::Store { .. }) => return Err(e),
        Err(_) => {}
    }
    bucket.move_to_quarantine(from).await
}

/// Chunks of the view adopted in place whose objects no longer match (one HEAD each).
async fn changed_references(repo: &Repo, concurrency: usize) -> Result<Vec<Finding>> {
    // A piece that does not load is already a finding of its own, and the view cannot
    // be listed without it: references are checked once the damage is repaired.
    if repo.load_all().await.is_err() {
        return Ok(Vec::new());
    }
    let refs: Vec<(String, ChunkReference)> = repo
        .view_index()
        .entries(repo.fold())
        .into_iter()
        .filter_map(|(k, e)| match e {
            Entry::Chunk(ChunkRef::Reference(r)) => Some((k, r)),
            _ => None,
        })
        .collect();
    let checked: Vec<Result<Option<Finding>>> = futures::stream::iter(refs)
        .map(|(k, r)| async move {
            Ok(repo.reference_sources().check(&r).await?.map(|why| {
                Finding::new(
                    FindingKind::ReferenceChanged,
                    k,
                    format!(
                        "references {}/{}, which {why} since it was adopted; readers refuse it: \
                         re-import it or write the chunk",
                        r.source.trim_end_matches('/'),
                        r.key
                    ),
                )
            }))
        })
        .buffered(concurrency)
        .collect()
        .await;
    checked.into_iter().filter_map(Result::transpose).collect()
}
