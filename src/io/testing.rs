//! Test and benchmark support: an [`ObjectStore`] wrapper that counts requests,
//! [`FaultyStore`], one that injects seeded, reproducible faults, and [`ClockStore`], one
//! whose clock the test moves.
//!
//! [`CountingStore`] forwards every call to the store it wraps and records, per
//! request kind, how many requests were made, plus the number of *sequential round
//! trips*: the length of the longest chain of requests in which each one started
//! only after the previous one had completed. That is the figure latency multiplies:
//! against a store with 20 ms per request, 2 round trips cost about 40 ms however
//! many requests run in parallel inside each.
//!
//! # How round trips are measured
//!
//! Every request gets a *depth*: 1 + the greatest depth of all requests that had
//! completed before it started. The round-trip count is the greatest depth seen.
//! A request starts when its future (or stream) is first polled and completes when
//! its future resolves (or its stream ends); a request dropped before that counts as
//! completed when dropped.
//!
//! In-memory stores answer within a single poll, so requests issued together (with
//! `join!`, `buffer_unordered` or `FuturesUnordered`) would look sequential if the
//! completion were recorded at once. The wrapper therefore yields to the executor
//! once after the inner store answers and records the completion only then, as if
//! every request took a moment on the wire: requests polled in the same sweep of a
//! combinator overlap, requests awaited one after the other do not. Counts are thus
//! deterministic for work driven from one task; requests issued by separate tasks are
//! ordered by when they actually ran.
//!
//! # Limitations
//!
//! * A listing (`list`, `list_with_offset`) counts as **one** request whatever the
//!   number of pages the real store would fetch.
//! * A GET completes when the store's answer (metadata and body handle) arrives;
//!   reading the body is not tracked. `get_bytes` counts the bytes the answer
//!   carries, whether or not the caller reads them.
//! * `get_ranges` is not forwarded: the trait's default splits it into coalesced
//!   range GETs through this wrapper, so each range request is counted, as on S3.
//! * `delete_stream` counts one delete per location, and the whole stream as one
//!   step of the round-trip chain (S3 batches up to 1000 keys per request).
//! * [`reset`](CountingStore::reset) while requests are in flight: their completions
//!   are ignored, so requests that follow them may get a smaller depth.

use async_trait::async_trait;
use futures::stream::{BoxStream, Stream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

/// Requests counted by a [`CountingStore`] since it was created or last reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    /// `put_opts` calls (single-request uploads).
    pub puts: u64,
    /// GET requests (`get_opts` without `head`, and each range of `get_ranges`).
    pub gets: u64,
    /// HEAD requests (`get_opts` with `head = true`, as `ObjectStoreExt::head` sends).
    pub heads: u64,
    /// Listings: `list`, `list_with_offset` (one per stream) and `list_with_delimiter`.
    pub lists: u64,
    /// Objects deleted through `delete_stream` (one per location).
    pub deletes: u64,
    /// `copy_opts` calls.
    pub copies: u64,
    /// `rename_opts` calls.
    pub renames: u64,
    /// Multipart requests: initiation, each part, completion and abort.
    pub multipart: u64,
    /// Payload bytes sent by `put_opts` and multipart parts.
    pub put_bytes: u64,
    /// Bytes carried by GET answers (the returned range), read or not.
    pub get_bytes: u64,
    /// Sequential round trips: the greatest request depth (see the module docs).
    pub round_trips: u64,
    /// Most requests in flight at once.
    pub max_in_flight: u64,
}

impl RequestCounts {
    /// Total number of requests of every kind (deletes count one per object).
    pub fn requests(&self) -> u64 {
        self.puts
            + self.gets
            + self.heads
            + self.lists
            + self.deletes
            + self.copies
            + self.renames
            + self.multipart
    }
}

/// What a request is, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Put,
    Get,
    Head,
    List,
    Copy,
    Rename,
    Multipart,
    /// A step of the round-trip chain whose requests are counted elsewhere.
    Uncounted,
}

#[derive(Debug, Default)]
struct State {
    counts: RequestCounts,
    /// Bumped by `reset`: completions of older requests are ignored.
    epoch: u64,
    /// Greatest depth among requests completed in this epoch.
    done_depth: u64,
    in_flight: u64,
}

#[derive(Debug, Default)]
struct Tracker {
    state: Mutex<State>,
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind: keep using them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(self: &Arc<Self>, kind: Kind, bytes: u64) -> Ticket {
        let mut s = self.lock();
        let c = &mut s.counts;
        match kind {
            Kind::Put => c.puts += 1,
            Kind::Get => c.gets += 1,
            Kind::Head => c.heads += 1,
            Kind::List => c.lists += 1,
            Kind::Copy => c.copies += 1,
            Kind::Rename => c.renames += 1,
            Kind::Multipart => c.multipart += 1,
            Kind::Uncounted => {}
        }
        c.put_bytes += bytes;
        let depth = s.done_depth + 1;
        s.counts.round_trips = s.counts.round_trips.max(depth);
        s.in_flight += 1;
        s.counts.max_in_flight = s.counts.max_in_flight.max(s.in_flight);
        Ticket {
            tracker: self.clone(),
            epoch: s.epoch,
            depth,
        }
    }

    fn add_deletes(&self, n: u64) {
        self.lock().counts.deletes += n;
    }

    fn add_get_bytes(&self, n: u64) {
        self.lock().counts.get_bytes += n;
    }
}

/// One request in flight; its completion is recorded when dropped.
struct Ticket {
    tracker: Arc<Tracker>,
    epoch: u64,
    depth: u64,
}

impl Ticket {
    /// Yields to the executor once, then records the completion (see module docs).
    async fn finish(self) {
        YieldOnce(false).await;
        drop(self);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.tracker.lock();
        if s.epoch == self.epoch {
            s.done_depth = s.done_depth.max(self.depth);
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }
}

/// Returns `Pending` once (waking itself at once), then `Ready`.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

enum StreamState {
    NotStarted,
    Running(Ticket),
    Ending(Ticket),
    Done,
}

/// A stream counted as one request: starts at its first poll, completes when it ends
/// (after one yield, like every other request) or is dropped.
struct CountedStream<T> {
    inner: BoxStream<'static, T>,
    tracker: Arc<Tracker>,
    kind: Kind,
    state: StreamState,
}

impl<T> CountedStream<T> {
    fn new(tracker: Arc<Tracker>, kind: Kind, inner: BoxStream<'static, T>) -> Self {
        CountedStream {
            inner,
            tracker,
            kind,
            state: StreamState::NotStarted,
        }
    }
}

impl<T> Stream for CountedStream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        // Every field is `Unpin`, so the stream can be handled through `&mut`.
        let this = &mut *self;
        loop {
            match std::mem::replace(&mut this.state, StreamState::Done) {
                StreamState::NotStarted => {
                    this.state = StreamState::Running(this.tracker.start(this.kind, 0));
                }
                StreamState::Running(ticket) => match this.inner.poll_next_unpin(cx) {
                    Poll::Ready(Some(item)) => {
                        this.state = StreamState::Running(ticket);
                        return Poll::Ready(Some(item));
                    }
                    Poll::Ready(None) => {
                        this.state = StreamState::Ending(ticket);
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    Poll::Pending => {
                        this.state = StreamState::Running(ticket);
                        return Poll::Pending;
                    }
                },
                StreamState::Ending(ticket) => {
                    drop(ticket);
                    return Poll::Ready(None);
                }
                StreamState::Done => return Poll::Ready(None),
            }
        }
    }
}

/// An [`ObjectStore`] that forwards to another and counts requests and sequential
/// round trips (see the [module docs](self) for the method and its limits).
///
/// Clones share their counters, so a test can keep one handle and give the store to
/// a [`Repo`](crate::repo::Repo):
///
/// ```
/// use crzarr::testing::CountingStore;
/// use object_store::memory::InMemory;
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> crzarr::error::Result<()> {
/// let store = CountingStore::new(Arc::new(InMemory::new()));
/// let mut repo = crzarr::Repo::init(Arc::new(store.clone()), "data").await?;
/// store.reset();
/// repo.refresh().await?;
/// let counts = store.snapshot();
/// // Changes and snapshots are listed side by side: two requests, one round trip.
/// assert_eq!((counts.lists, counts.gets, counts.round_trips), (2, 0, 1));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    tracker: Arc<Tracker>,
}

impl CountingStore {
    /// Wraps `inner` with all counters at zero.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        CountingStore {
            inner,
            tracker: Arc::new(Tracker::default()),
        }
    }

    /// The wrapped store (requests made through it directly are not counted).
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// The counts so far.
    pub fn snapshot(&self) -> RequestCounts {
        self.tracker.lock().counts
    }

    /// Sets every counter and the round-trip chain back to zero.
    pub fn reset(&self) {
        let mut s = self.tracker.lock();
        s.epoch += 1;
        s.counts = RequestCounts::default();
        s.done_depth = 0;
        s.in_flight = 0;
    }

    /// The counts so far, then resets (atomically).
    pub fn take(&self) -> RequestCounts {
        let mut s = self.tracker.lock();
        let counts = s.counts;
        s.epoch += 1;
        s.counts = RequestCounts::default();
        s.done_depth = 0;
        s.in_flight = 0;
        counts
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountingStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let ticket = self
            .tracker
            .start(Kind::Put, payload.content_length() as u64);
        let r = self.inner.put_opts(location, payload, opts).await;
        ticket.finish().await;
        r
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let ticket = self.tracker.start(Kind::Multipart, 0);
        let r = self.inner.put_multipart_opts(location, opts).await;
        ticket.finish().await;
        let upload = r?;
        Ok(Box::new(CountedUpload {
            inner: upload,
            tracker: self.tracker.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let head = options.head;
        let ticket = self
            .tracker
            .start(if head { Kind::Head } else { Kind::Get }, 0);
        let r = self.inner.get_opts(location, options).await;
        if let (Ok(res), false) = (&r, head) {
            self.tracker
                .add_get_bytes(res.range.end.saturating_sub(res.range.start));
        }
        ticket.finish().await;
        r
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let tracker = self.tracker.clone();
        let counted = locations
            .inspect(move |r| {
                if r.is_ok() {
                    tracker.add_deletes(1);
                }
            })
            .boxed();
        CountedStream::new(
            self.tracker.clone(),
            Kind::Uncounted,
            self.inner.delete_stream(counted),
        )
        .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        CountedStream::new(self.tracker.clone(), Kind::List, self.inner.list(prefix)).boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        CountedStream::new(
            self.tracker.clone(),
            Kind::List,
            self.inner.list_with_offset(prefix, offset),
        )
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let ticket = self.tracker.start(Kind::List, 0);
        let r = self.inner.list_with_delimiter(prefix).await;
        ticket.finish().await;
        r
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let ticket = self.tracker.start(Kind::Copy, 0);
        let r = self.inner.copy_opts(from, to, options).await;
        ticket.finish().await;
        r
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let ticket = self.tracker.start(Kind::Rename, 0);
        let r = self.inner.rename_opts(from, to, options).await;
        ticket.finish().await;
        r
    }
}

/// A multipart upload whose part, completion and abort requests are counted.
#[derive(Debug)]
struct CountedUpload {
    inner: Box<dyn MultipartUpload>,
    tracker: Arc<Tracker>,
}

#[async_trait]
impl MultipartUpload for CountedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let len = data.content_length() as u64;
        let tracker = self.tracker.clone();
        let part = self.inner.put_part(data);
        Box::pin(async move {
            let ticket = tracker.start(Kind::Multipart, len);
            let r = part.await;
            ticket.finish().await;
            r
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let ticket = self.tracker.start(Kind::Multipart, 0);
        let r = self.inner.complete().await;
        ticket.finish().await;
        r
    }

    async fn abort(&mut self) -> Result<()> {
        let ticket = self.tracker.start(Kind::Multipart, 0);
        let r = self.inner.abort().await;
        ticket.finish().await;
        r
    }
}

// ---------------------------------------------------------------------------
// Fault injection
// ---------------------------------------------------------------------------

/// Which faults a [`FaultyStore`] injects, and how often. Every probability is in
/// `0.0..=1.0` (values outside are clamped); the default injects nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Seed of the store's random generator: the same seed and the same sequence of
    /// requests give the same faults.
    pub seed: u64,
    /// A PUT (or copy, rename, multipart initiation) fails without writing anything.
    pub p_fail_put: f64,
    /// A PUT is written, but its caller gets an error (a reply lost on the wire).
    pub p_put_lands_but_fails: f64,
    /// A GET or HEAD fails.
    pub p_fail_get: f64,
    /// A listing fails (the stream yields one error and ends).
    pub p_fail_list: f64,
    /// The deletion of one object fails without deleting it.
    pub p_fail_delete: f64,
    /// A listing omits the objects written by the last [`stale_window`] PUTs
    /// (an eventually consistent listing that lags behind writes).
    ///
    /// [`stale_window`]: FaultConfig::stale_window
    pub p_stale_list: f64,
    /// How many of the most recent PUTs a stale listing omits.
    pub stale_window: usize,
    /// An object a listing just returned vanishes before the GET that follows: the
    /// next GET or HEAD of it answers `NotFound`, as if a concurrent garbage
    /// collection had removed it. The object itself is deleted from the wrapped store
    /// only with [`vanish_deletes`](FaultConfig::vanish_deletes).
    pub p_vanish_between_list_and_get: f64,
    /// Whether a vanishing object is really deleted from the wrapped store (which
    /// loses data a test may still need) rather than only hidden from one GET.
    pub vanish_deletes: bool,
    /// A request fails with a timeout error after sleeping [`timeout`].
    ///
    /// [`timeout`]: FaultConfig::timeout
    pub p_timeout: f64,
    /// How long a timed-out request waits before failing.
    pub timeout: std::time::Duration,
    /// Every request sleeps a random duration up to this before it runs.
    pub max_latency: std::time::Duration,
}

/// Faults a [`FaultyStore`] injected since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FaultCounts {
    /// PUTs (copies, renames, multipart initiations) failed without writing.
    pub failed_puts: u64,
    /// PUTs written whose caller got an error.
    pub lost_replies: u64,
    /// GETs and HEADs failed.
    pub failed_gets: u64,
    /// Listings failed.
    pub failed_lists: u64,
    /// Object deletions failed.
    pub failed_deletes: u64,
    /// Listings that omitted recently written objects (counted when they did omit one).
    pub stale_lists: u64,
    /// Objects that vanished between a listing and a GET.
    pub vanished: u64,
    /// Requests failed as timeouts.
    pub timeouts: u64,
}

impl FaultCounts {
    /// Total number of injected faults of every kind.
    pub fn total(&self) -> u64 {
        self.failed_puts
            + self.lost_replies
            + self.failed_gets
            + self.failed_lists
            + self.failed_deletes
            + self.stale_lists
            + self.vanished
            + self.timeouts
    }
}

#[derive(Debug)]
struct FaultState {
    rng: u64,
    enabled: bool,
    /// Listings are never stale while set.
    consistent_listings: bool,
    counts: FaultCounts,
    /// Locations of the most recent PUTs, newest last, at most `stale_window`.
    recent: std::collections::VecDeque<Path>,
    /// Locations whose next GET answers `NotFound`.
    vanishing: std::collections::BTreeSet<Path>,
}

impl FaultState {
    /// splitmix64.
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in `0.0..1.0`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether a fault of probability `p` happens (never when disabled; a draw is
    /// taken only for a positive probability, so unused faults do not shift others).
    fn roll(&mut self, p: f64) -> bool {
        self.enabled && p > 0.0 && self.unit() < p.min(1.0)
    }
}

/// What to do with one request, decided up front.
enum Fate {
    Forward,
    Fail,
    Timeout,
}

/// An [`ObjectStore`] that forwards to another and injects faults at random, from a
/// seeded generator: failed requests, PUTs that land but report failure, timeouts,
/// stale listings, objects vanishing between a listing and a GET, and latency (see
/// [`FaultConfig`]). Injected failures are `object_store::Error::Generic` with store
/// `"faulty"`, as a transient network error looks.
///
/// Faults are drawn in the order requests start, so a run driven from one task on a
/// current-thread runtime is reproducible from its seed. Clones share the generator,
/// the switch and the counters.
///
/// ```
/// use crzarr::testing::{FaultConfig, FaultyStore};
/// use object_store::memory::InMemory;
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = FaultyStore::new(
///     Arc::new(InMemory::new()),
///     FaultConfig { seed: 7, p_fail_put: 1.0, ..FaultConfig::default() },
/// );
/// assert!(crzarr::Repo::init(Arc::new(store.clone()), "data").await.is_err());
/// assert!(store.counts().failed_puts > 0);
/// store.set_enabled(false);
/// assert!(crzarr::Repo::init(Arc::new(store.clone()), "data").await.is_ok());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    config: Arc<FaultConfig>,
    state: Arc<Mutex<FaultState>>,
}

impl FaultyStore {
    /// Wraps `inner`, faults enabled.
    pub fn new(inner: Arc<dyn ObjectStore>, config: FaultConfig) -> Self {
        let state = FaultState {
            rng: config.seed,
            enabled: true,
            consistent_listings: false,
            counts: FaultCounts::default(),
            recent: Default::default(),
            vanishing: Default::default(),
        };
        FaultyStore {
            inner,
            config: Arc::new(config),
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// The wrapped store (requests made through it directly see no faults).
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// The configuration.
    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    /// Turns fault injection on or off. Off, every request is forwarded as is (with
    /// no latency), and objects marked to vanish are forgotten.
    pub fn set_enabled(&self, enabled: bool) {
        let mut s = self.lock();
        s.enabled = enabled;
        if !enabled {
            s.vanishing.clear();
        }
    }

    /// Makes listings consistent (never stale) while set, other faults unchanged: the
    /// precondition of a garbage collection whose window is shorter than the listings'
    /// lag (spec/format.md §14, choosing the window), as tests with a zero window need.
    pub fn set_consistent_listings(&self, consistent: bool) {
        self.lock().consistent_listings = consistent;
    }

    /// Whether faults are being injected.
    pub fn is_enabled(&self) -> bool {
        self.lock().enabled
    }

    /// The faults injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.lock().counts
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn error(what: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "faulty",
            source: format!("injected fault: {what}").into(),
        }
    }

    /// Sleeps the random latency, if any is configured and faults are on.
    async fn latency(&self) {
        let max = self.config.max_latency;
        if max.is_zero() {
            return;
        }
        let wait = {
            let mut s = self.lock();
            if !s.enabled {
                return;
            }
            max.mul_f64(s.unit())
        };
        tokio::time::sleep(wait).await;
    }

    /// Decides a request's fate: a timeout, a failure of probability `p`, or none.
    fn fate(&self, p: f64, count: impl FnOnce(&mut FaultCounts)) -> Fate {
        let mut s = self.lock();
        if s.roll(self.config.p_timeout) {
            s.counts.timeouts += 1;
            Fate::Timeout
        } else if s.roll(p) {
            count(&mut s.counts);
            Fate::Fail
        } else {
            Fate::Forward
        }
    }

    async fn timeout(&self) -> object_store::Error {
        tokio::time::sleep(self.config.timeout).await;
        Self::error("request timed out")
    }

    fn note_put(&self, location: &Path) {
        let window = self.config.stale_window;
        if window == 0 {
            return;
        }
        let mut s = self.lock();
        s.recent.push_back(location.clone());
        while s.recent.len() > window {
            s.recent.pop_front();
        }
    }

    /// Wraps a listing: fails it, makes it stale, marks what it returns to vanish.
    fn faulty_list(
        &self,
        inner: BoxStream<'static, Result<ObjectMeta>>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let (fail, omit) = {
            let mut s = self.lock();
            let fail = s.roll(self.config.p_fail_list);
            if fail {
                s.counts.failed_lists += 1;
            }
            let omit: std::collections::BTreeSet<Path> =
                if !fail && !s.consistent_listings && s.roll(self.config.p_stale_list) {
                    s.recent.iter().cloned().collect()
                } else {
                    Default::default()
                };
            (fail, omit)
        };
        if fail {
            return futures::stream::once(async { Err(Self::error("listing failed")) }).boxed();
        }
        let this = self.clone();
        let mut counted_stale = false;
        inner
            .filter_map(move |r| {
                let out = match r {
                    Ok(meta) if omit.contains(&meta.location) => {
                        if !counted_stale {
                            counted_stale = true;
                            this.lock().counts.stale_lists += 1;
                        }
                        None
                    }
                    Ok(meta) => {
                        let mut s = this.lock();
                        if s.roll(this.config.p_vanish_between_list_and_get) {
                            s.vanishing.insert(meta.location.clone());
                        }
                        Some(Ok(meta))
                    }
                    Err(e) => Some(Err(e)),
                };
                futures::future::ready(out)
            })
            .boxed()
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.latency().await;
        let (fate, lose) = {
            let fate = self.fate(self.config.p_fail_put, |c| c.failed_puts += 1);
            let mut s = self.lock();
            let lose = matches!(fate, Fate::Forward) && s.roll(self.config.p_put_lands_but_fails);
            if lose {
                s.counts.lost_replies += 1;
            }
            (fate, lose)
        };
        match fate {
            Fate::Timeout => Err(self.timeout().await),
            Fate::Fail => Err(Self::error("PUT failed")),
            Fate::Forward => {
                let r = self.inner.put_opts(location, payload, opts).await;
                if r.is_ok() {
                    self.note_put(location);
                }
                if lose {
                    r.and(Err(Self::error("PUT reply lost")))
                } else {
                    r
                }
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.latency().await;
        match self.fate(self.config.p_fail_put, |c| c.failed_puts += 1) {
            Fate::Timeout => Err(self.timeout().await),
            Fate::Fail => Err(Self::error("multipart upload failed")),
            Fate::Forward => self.inner.put_multipart_opts(location, opts).await,
        }
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.latency().await;
        let vanish = self.lock().vanishing.remove(location);
        if vanish {
            self.lock().counts.vanished += 1;
            if self.config.vanish_deletes {
                object_store::ObjectStoreExt::delete(&self.inner, location).await?;
            }
            return Err(object_store::Error::NotFound {
                path: location.to_string(),
                source: "injected fault: object vanished after it was listed".into(),
            });
        }
        match self.fate(self.config.p_fail_get, |c| c.failed_gets += 1) {
            Fate::Timeout => Err(self.timeout().await),
            Fate::Fail => Err(Self::error("GET failed")),
            Fate::Forward => self.inner.get_opts(location, options).await,
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let this = self.clone();
        locations
            .then(move |r| {
                let this = this.clone();
                async move {
                    let path = r?;
                    this.latency().await;
                    match this.fate(this.config.p_fail_delete, |c| c.failed_deletes += 1) {
                        Fate::Timeout => Err(this.timeout().await),
                        Fate::Fail => Err(Self::error("DELETE failed")),
                        Fate::Forward => {
                            let mut out = this
                                .inner
                                .delete_stream(futures::stream::once(async { Ok(path) }).boxed());
                            out.next()
                                .await
                                .unwrap_or_else(|| Err(Self::error("delete stream ended early")))
                        }
                    }
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.faulty_list(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.faulty_list(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.latency().await;
        match self.fate(self.config.p_fail_list, |c| c.failed_lists += 1) {
            Fate::Timeout => Err(self.timeout().await),
            Fate::Fail => Err(Self::error("listing failed")),
            Fate::Forward => self.inner.list_with_delimiter(prefix).await,
        }
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.latency().await;
        match self.fate(self.config.p_fail_put, |c| c.failed_puts += 1) {
            Fate::Timeout => Err(self.timeout().await),
            Fate::Fail => Err(Self::error("copy failed")),
            Fate::Forward => self.inner.copy_opts(from, to, options).await,
        }
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.latency().await;
        match self.fate(self.config.p_fail_put, |c| c.failed_puts += 1) {
            Fate::Timeout => Err(self.timeout().await),
            Fate::Fail => Err(Self::error("rename failed")),
            Fate::Forward => self.inner.rename_opts(from, to, options).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    fn store() -> CountingStore {
        CountingStore::new(Arc::new(InMemory::new()))
    }

    #[tokio::test]
    async fn parallel_requests_are_one_round_trip_sequential_ones_are_not() {
        let s = store();
        let paths: Vec<Path> = (0..5).map(|i| Path::from(format!("k{i}"))).collect();
        let puts = paths
            .iter()
            .map(|p| s.put(p, PutPayload::from_static(b"abc")));
        for r in futures::future::join_all(puts).await {
            r.unwrap();
        }
        let c = s.take();
        assert_eq!((c.puts, c.put_bytes, c.round_trips), (5, 15, 1));
        assert_eq!(c.max_in_flight, 5);

        for p in &paths {
            s.get(p).await.unwrap().bytes().await.unwrap();
        }
        let c = s.take();
        assert_eq!((c.gets, c.get_bytes, c.round_trips), (5, 15, 5));
        assert_eq!(c.max_in_flight, 1);
    }

    #[tokio::test]
    async fn buffer_unordered_overlaps_up_to_its_limit() {
        let s = store();
        let results: Vec<Result<PutResult>> = futures::stream::iter(0..10)
            .map(|i| {
                let s = s.clone();
                async move {
                    s.put(&Path::from(format!("k{i}")), PutPayload::from_static(b"x"))
                        .await
                }
            })
            .buffer_unordered(4)
            .collect()
            .await;
        assert!(results.iter().all(|r| r.is_ok()));
        let c = s.snapshot();
        assert_eq!(c.puts, 10);
        assert_eq!(c.max_in_flight, 4);
        // 10 requests, 4 at a time: 3 waves.
        assert_eq!(c.round_trips, 3, "{c:?}");
    }

    #[tokio::test]
    async fn kinds_are_told_apart() {
        let s = store();
        let p = Path::from("a/b");
        s.put(&p, PutPayload::from_static(b"hello")).await.unwrap();
        s.head(&p).await.unwrap();
        let got = s.get_range(&p, 1..3).await.unwrap();
        assert_eq!(&got[..], b"el");
        let listed: Vec<ObjectMeta> = s
            .list(Some(&Path::from("a")))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(listed.len(), 1);
        s.list_with_delimiter(None).await.unwrap();
        s.copy(&p, &Path::from("a/c")).await.unwrap();
        s.rename(&Path::from("a/c"), &Path::from("a/d"))
            .await
            .unwrap();
        s.delete(&Path::from("a/d")).await.unwrap();
        let mut up = s.put_multipart(&Path::from("m")).await.unwrap();
        up.put_part(PutPayload::from_static(b"12")).await.unwrap();
        up.complete().await.unwrap();
        let c = s.snapshot();
        assert_eq!(
            c,
            RequestCounts {
                puts: 1,
                gets: 1,
                heads: 1,
                lists: 2,
                deletes: 1,
                copies: 1,
                renames: 1,
                multipart: 3,
                put_bytes: 7,
                get_bytes: 2,
                round_trips: 11,
                max_in_flight: 1,
            }
        );
        assert_eq!(c.requests(), 11);
        s.reset();
        assert_eq!(s.snapshot(), RequestCounts::default());
    }

    #[tokio::test]
    async fn a_dropped_list_counts_as_completed() {
        let s = store();
        s.put(&Path::from("x"), PutPayload::from_static(b"1"))
            .await
            .unwrap();
        s.reset();
        let mut stream = s.list(None);
        assert!(stream.next().await.is_some());
        drop(stream);
        s.get(&Path::from("x")).await.unwrap();
        let c = s.snapshot();
        assert_eq!((c.lists, c.gets, c.round_trips), (1, 1, 2));
    }
}

// ---------------------------------------------------------------------------
// A store clock under the test's control
// ---------------------------------------------------------------------------

/// An [`ObjectStore`] that forwards to another but stamps every object it writes
/// with a clock the test controls, so garbage collection's windows (judged by the
/// store's last-modified times) can be crossed without waiting.
///
/// Objects written through this wrapper report the virtual time of their last
/// write in `head`, `get` and listings; objects it never wrote report the inner
/// store's time. The clock starts at the real time and only moves by
/// [`ClockStore::advance`]. Clones share the clock.
///
/// ```
/// use crzarr::testing::ClockStore;
/// use object_store::memory::InMemory;
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> crzarr::error::Result<()> {
/// let store = ClockStore::new(Arc::new(InMemory::new()));
/// crzarr::Repo::init(Arc::new(store.clone()), "data").await?;
/// store.advance(Duration::from_secs(3600)); // an hour passes, for the store
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ClockStore {
    inner: Arc<dyn ObjectStore>,
    state: Arc<Mutex<ClockState>>,
}

#[derive(Debug)]
struct ClockState {
    now: std::time::SystemTime,
    written: std::collections::HashMap<Path, std::time::SystemTime>,
}

impl ClockStore {
    /// Wraps `inner`; the clock starts at the real time.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        ClockStore {
            inner,
            state: Arc::new(Mutex::new(ClockState {
                now: std::time::SystemTime::now(),
                written: Default::default(),
            })),
        }
    }

    /// Moves the store's clock forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let mut s = self.lock();
        s.now += by;
    }

    /// The store's current time.
    pub fn now(&self) -> std::time::SystemTime {
        self.lock().now
    }

    /// The wrapped store (writes made through it directly keep the real time).
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    fn lock(&self) -> MutexGuard<'_, ClockState> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stamp(&self, location: &Path) {
        let mut s = self.lock();
        let now = s.now;
        s.written.insert(location.clone(), now);
    }

    fn restamp(state: &Mutex<ClockState>, meta: &mut ObjectMeta) {
        let s = state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = s.written.get(&meta.location) {
            meta.last_modified = (*t).into();
        }
    }

    fn restamp_list(
        &self,
        inner: BoxStream<'static, Result<ObjectMeta>>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let state = self.state.clone();
        inner
            .map(move |r| {
                r.map(|mut m| {
                    Self::restamp(&state, &mut m);
                    m
                })
            })
            .boxed()
    }
}

impl fmt::Display for ClockStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClockStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for ClockStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let r = self.inner.put_opts(location, payload, opts).await;
        if r.is_ok() {
            self.stamp(location);
        }
        r
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        // Stamped when started: close enough for a clock that moves only on request.
        let r = self.inner.put_multipart_opts(location, opts).await;
        if r.is_ok() {
            self.stamp(location);
        }
        r
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let mut r = self.inner.get_opts(location, options).await;
        if let Ok(res) = &mut r {
            Self::restamp(&self.state, &mut res.meta);
        }
        r
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let state = self.state.clone();
        self.inner
            .delete_stream(locations)
            .inspect(move |r| {
                if let Ok(p) = r {
                    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                    s.written.remove(p);
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.restamp_list(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.restamp_list(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut r = self.inner.list_with_delimiter(prefix).await?;
        for m in &mut r.objects {
            Self::restamp(&self.state, m);
        }
        Ok(r)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.stamp(to);
        Ok(())
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        self.stamp(to);
        self.lock().written.remove(from);
        Ok(())
    }
}
