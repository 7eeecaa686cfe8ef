//! An [`ObjectStore`] wrapper that counts requests and sequential round trips, for
//! request-count tests, benchmarks and `crzarr demo`.
//!
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
/// use crzarr::io::counting::CountingStore;
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
