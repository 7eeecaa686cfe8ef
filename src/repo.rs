//! A repository handle: open (list, fetch in parallel, fold), refresh, read the view,
//! and publish changes written by a [`WriteSession`].

use crate::bucket::{Bucket, DEFAULT_CONCURRENCY, ListedChange, Problem};
use crate::change::{Change, MAX_CHANGE_BYTES};
use crate::error::{Error, Result};
use crate::fold::{ChangeInfo, Fold, Fork, InsertOutcome, PendingChange, RejectedChange};
use crate::ids::{ActorId, BlobHash, ChangeHash, RepoId};
use crate::layout::ChangeName;
use crate::session::WriteSession;
use crate::view::{ChunkRef, Conflict, Entry, View};
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
}

/// An open repository: the folded state of every change it has read, and the
/// Zarr v3 view of that state.
pub struct Repo {
    bucket: Bucket,
    id: RepoId,
    fold: Fold,
    view: View,
    /// Changes already fetched and decoded: never fetched twice. (Bad files are
    /// remembered by key in `problems`, so they cannot hide a good file's hash.)
    seen: HashSet<ChangeHash>,
    problems: BTreeMap<String, String>,
    /// Keys of changes inserted as pending, to report them if later rejected.
    pending_keys: HashMap<ChangeHash, String>,
    actor: ActorId,
    next_seq: u64,
    concurrency: usize,
}

impl Repo {
    /// Creates a repository at `prefix` in `store` (or opens the one already there).
    pub async fn init(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Repo> {
        let bucket = Bucket::new(store, prefix);
        let id = bucket.write_marker(RepoId::generate()).await?;
        Self::open_bucket_with(bucket, Some(id), DEFAULT_CONCURRENCY).await
    }

    /// Opens the repository at `prefix` in `store`: one LIST and one marker GET, then
    /// every change fetched in parallel and folded.
    pub async fn open(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Repo> {
        Self::open_bucket_with(Bucket::new(store, prefix), None, DEFAULT_CONCURRENCY).await
    }

    /// [`Repo::open`] with `concurrency` requests in flight for fan-out (default 32),
    /// from the first fetch on.
    pub async fn open_with_concurrency(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        concurrency: usize,
    ) -> Result<Repo> {
        Self::open_bucket_with(Bucket::new(store, prefix), None, concurrency).await
    }

    async fn open_bucket_with(
        bucket: Bucket,
        known_id: Option<RepoId>,
        concurrency: usize,
    ) -> Result<Repo> {
        let (id, listing) = match known_id {
            Some(id) => (Some(id), bucket.list_changes().await?),
            None => {
                let (m, l) = futures::join!(bucket.read_marker(), bucket.list_changes());
                (m?, l?)
            }
        };
        let id = id.ok_or_else(|| Error::NotARepo {
            location: format!("{}/{}", bucket.store, bucket.layout.root()),
        })?;
        let mut repo = Repo {
            bucket,
            id,
            fold: Fold::new(id),
            view: View::default(),
            seen: HashSet::new(),
            problems: BTreeMap::new(),
            pending_keys: HashMap::new(),
            actor: ActorId::generate(),
            next_seq: 1,
            concurrency: concurrency.max(1),
        };
        repo.ingest(listing).await?;
        Ok(repo)
    }

    /// Sets how many requests may be in flight at once for fan-out (default 32).
    pub fn set_concurrency(&mut self, n: usize) {
        self.concurrency = n.max(1);
    }

    /// Fetches and folds change files that appeared since the last open or refresh.
    pub async fn refresh(&mut self) -> Result<RefreshReport> {
        let listing = self.bucket.list_changes().await?;
        self.ingest(listing).await
    }

    async fn ingest(
        &mut self,
        (listed, foreign): (Vec<ListedChange>, Vec<Problem>),
    ) -> Result<RefreshReport> {
        let mut report = RefreshReport {
            listed: listed.len(),
            ..Default::default()
        };
        for p in foreign {
            if !self.problems.contains_key(&p.key) {
                self.problems.insert(p.key.clone(), p.error.clone());
                report.problems.push(p);
            }
        }
        let todo: Vec<ListedChange> = listed
            .into_iter()
            .filter(|c| {
                !self.seen.contains(&c.name.hash) && !self.problems.contains_key(c.key.as_ref())
            })
            .collect();
        report.fetched = todo.len();
        let id = self.id;
        let fetches: Vec<(Bucket, ListedChange)> =
            todo.into_iter().map(|c| (self.bucket.clone(), c)).collect();
        let results: Vec<(ListedChange, Result<Option<Change>>)> = futures::stream::iter(fetches)
            .map(|(bucket, c)| async move {
                let r = fetch_change(&bucket, id, &c).await;
                (c, r)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut decoded = Vec::with_capacity(results.len());
        for (c, r) in results {
            match r {
                Ok(Some(change)) => {
                    self.seen.insert(c.name.hash);
                    decoded.push((c, change));
                }
                // Vanished between LIST and GET: it will be listed again or is gone.
                Ok(None) => {}
                Err(e @ Error::Store { .. }) => return Err(e),
                Err(e) => {
                    let p = Problem {
                        key: c.key.to_string(),
                        error: e.to_string(),
                    };
                    self.problems.insert(p.key.clone(), p.error.clone());
                    report.problems.push(p);
                }
            }
        }
        // Any order folds to the same state; stamp order just keeps the queue short.
        decoded.sort_by_key(|(c, ch)| (ch.hlc, ch.actor, ch.seq, c.name.hash));
        for (c, change) in decoded {
            match self.fold.insert(c.name.hash, change, c.size) {
                InsertOutcome::Applied { unblocked } => report.applied += 1 + unblocked,
                InsertOutcome::Rejected(reason) => {
                    let p = Problem {
                        key: c.key.to_string(),
                        error: format!("invalid change: {reason}"),
                    };
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
                self.problems.insert(p.key.clone(), p.error.clone());
                report.problems.push(p);
            }
        }
        report.pending = self.fold.pending().len();
        self.view = View::build(&self.fold);
        Ok(report)
    }

    /// The repository id.
    pub fn id(&self) -> RepoId {
        self.id
    }

    /// The bucket this handle reads and writes.
    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// The folded state.
    pub fn fold(&self) -> &Fold {
        &self.fold
    }

    /// The resolved view.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The actor this handle commits as.
    pub fn actor(&self) -> ActorId {
        self.actor
    }

    /// Starts staging writes.
    pub fn session(&mut self) -> WriteSession<'_> {
        WriteSession::new(self)
    }

    /// The bytes the view serves at a Zarr key; `None` if absent. Blobs are
    /// fetched and verified against their hash.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        match self.view.get(&self.fold, key) {
            None => Ok(None),
            Some(Entry::Metadata(b)) => Ok(Some(Bytes::from(b))),
            Some(Entry::Chunk(ChunkRef::Inline(b))) => Ok(Some(Bytes::from(b))),
            Some(Entry::Chunk(ChunkRef::Blob { hash, len })) => {
                self.get_blob(key, &hash, len).await.map(Some)
            }
        }
    }

    async fn get_blob(&self, key: &str, hash: &BlobHash, len: u64) -> Result<Bytes> {
        let blob_key = self.bucket.layout.blob(hash);
        let bytes = match self.bucket.get(&blob_key, len).await {
            // Longer than the chunk reference says: damaged, not merely large.
            Err(Error::TooLarge { .. }) => {
                return Err(Error::corrupt(
                    blob_key.as_ref(),
                    "blob content does not match its hash (longer than its reference)",
                ));
            }
            other => other,
        }?
        .ok_or_else(|| Error::MissingBlob {
            key: key.into(),
            blob_key: blob_key.to_string(),
        })?;
        if bytes.len() as u64 != len || BlobHash::of(&bytes) != *hash {
            return Err(Error::corrupt(
                blob_key.as_ref(),
                "blob content does not match its hash",
            ));
        }
        Ok(bytes)
    }

    /// Whether the view has `key`.
    pub fn exists(&self, key: &str) -> bool {
        self.view.get(&self.fold, key).is_some()
    }

    /// Every key of the view, sorted.
    pub fn list(&self) -> Vec<String> {
        self.view.keys(&self.fold)
    }

    /// Keys starting with `prefix`, sorted.
    pub fn list_prefix(&self, prefix: &str) -> Vec<String> {
        self.view.keys_with_prefix(&self.fold, prefix)
    }

    /// Keys and sub-prefixes directly under `prefix` (empty or ending in `/`).
    pub fn list_dir(&self, prefix: &str) -> (Vec<String>, Vec<String>) {
        self.view.list_dir(&self.fold, prefix)
    }

    /// Concurrent overwrites resolved in the current state.
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.view.conflicts(&self.fold)
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

    /// Applied changes in causal order.
    pub fn log(&self) -> Vec<&ChangeInfo> {
        self.fold.log()
    }

    pub(crate) fn next_change_header(&mut self) -> (ActorId, u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        (self.actor, seq)
    }

    /// Publishes a prepared change: blobs first (in parallel), then the change file.
    /// The change becomes visible to readers all at once when its file lands.
    /// On failure the change is handed back, so the caller can retry the same bytes;
    /// on success it moves into the local fold without a copy.
    pub(crate) async fn publish(
        &mut self,
        change: Change,
        bytes: &Bytes,
        blobs: &BTreeMap<BlobHash, Bytes>,
    ) -> std::result::Result<ChangeHash, (Error, Change)> {
        match self.upload(&change, bytes, blobs).await {
            Ok(hash) => {
                self.seen.insert(hash);
                self.fold.insert(hash, change, bytes.len() as u64);
                self.view = View::build(&self.fold);
                Ok(hash)
            }
            Err(e) => Err((e, change)),
        }
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
        let uploads: Vec<(Bucket, object_store::path::Path, Bytes)> = blobs
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

async fn fetch_change(bucket: &Bucket, id: RepoId, c: &ListedChange) -> Result<Option<Change>> {
    let key = c.key.to_string();
    if c.size > MAX_CHANGE_BYTES {
        return Err(Error::TooLarge {
            key,
            size: c.size,
            limit: MAX_CHANGE_BYTES,
        });
    }
    let Some(bytes) = bucket.get(&c.key, MAX_CHANGE_BYTES).await? else {
        return Ok(None);
    };
    let change = Change::decode(&key, &bytes, &c.name.hash)?;
    if change.actor != c.name.actor || change.seq != c.name.seq {
        return Err(Error::corrupt(
            key,
            "actor or seq in the file name does not match its header",
        ));
    }
    if change.repo != id {
        return Err(Error::ForeignRepo {
            key,
            found: change.repo.to_string(),
            expected: id.to_string(),
        });
    }
    Ok(Some(change))
}
