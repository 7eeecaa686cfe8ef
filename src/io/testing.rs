//! Store wrappers for tests: [`FaultyStore`] injects seeded, reproducible faults, and
//! [`ClockStore`] has a clock the test moves. Built with the `testing` feature (and in
//! this crate's own tests); never part of a shipped binary.

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

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
    /// lag (spec/protocols.md §5, choosing the window), as tests with a zero window need.
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
