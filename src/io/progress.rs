//! Progress of long transfers (sync, export, import), shared with a caller that draws it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters a transfer updates as it goes, for a progress bar. Totals grow as it
/// learns what to copy (for a sync, a change's blobs are known once it is read) and
/// shrink by what it refuses or finds gone, so that when it completes, what was done
/// equals the total (the objects and bytes its report counts).
#[derive(Debug, Default)]
pub struct Progress {
    objects_total: AtomicU64,
    objects_done: AtomicU64,
    bytes_total: AtomicU64,
    bytes_done: AtomicU64,
}

impl Progress {
    /// New counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Objects written so far, and objects known to need writing.
    pub fn objects(&self) -> (u64, u64) {
        (
            self.objects_done.load(Ordering::Relaxed),
            self.objects_total.load(Ordering::Relaxed),
        )
    }

    /// Bytes written so far, and bytes known to need writing.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.bytes_done.load(Ordering::Relaxed),
            self.bytes_total.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn plan(&self, objects: u64, bytes: u64) {
        self.objects_total.fetch_add(objects, Ordering::Relaxed);
        self.bytes_total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Takes back planned work that will not be done (refused, or gone).
    pub(crate) fn unplan(&self, objects: u64, bytes: u64) {
        let sub = |total: &AtomicU64, n: u64| {
            let _ = total.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(n))
            });
        };
        sub(&self.objects_total, objects);
        sub(&self.bytes_total, bytes);
    }

    pub(crate) fn done(&self, bytes: u64) {
        self.objects_done.fetch_add(1, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }
}
