//! The store both systems run on: a base store (a local directory, or memory for the
//! concurrent-writer runs), `object_store`'s `ThrottledStore` adding the same latency
//! to every request, and crzarr's `CountingStore` outermost counting requests and
//! sequential round trips.
//!
//! Icechunk reaches the very same stack through its own `object_store`-backed
//! storage (`ObjectStorage`): its backends are a serde-registered trait, so this
//! module registers one more backend whose client is a stack kept in a table here.
//! Every Icechunk request then goes through Icechunk's real `ObjectStorage` code,
//! the same latency layer and the same counter as crzarr's.

use async_trait::async_trait;
use crzarr::io::counting::{CountingStore, RequestCounts};
use futures::stream::BoxStream;
use icechunk::storage::{
    ObjectStoreBackend, RetriesSettings, Role, Settings, StorageError, StorageInfo,
};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::num::NonZeroU16;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the stack stores objects in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// `object_store::local::LocalFileSystem` over a fresh temporary directory.
    Dir,
    /// `object_store::memory::InMemory` (supports conditional updates, which
    /// Icechunk needs for safe concurrent commits; a local directory does not).
    Mem,
}

/// `LocalFileSystem` answering GETs with a byte stream instead of an open file:
/// `ThrottledStore` only handles streams (it panics on a file payload).
#[derive(Debug)]
struct Streaming(LocalFileSystem);

impl fmt::Display for Streaming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Streaming({})", self.0)
    }
}

#[async_trait]
impl ObjectStore for Streaming {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let got = self.0.get_opts(location, options).await?;
        let (meta, range, attributes, extensions) = (
            got.meta.clone(),
            got.range.clone(),
            got.attributes.clone(),
            got.extensions.clone(),
        );
        Ok(GetResult {
            payload: GetResultPayload::Stream(got.into_stream()),
            meta,
            range,
            attributes,
            extensions,
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.0.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&ObjectPath>,
        offset: &ObjectPath,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.0.rename_opts(from, to, options).await
    }
}

/// One store stack: base, latency, counter.
pub struct Stack {
    throttle: Arc<ThrottledStore<Arc<dyn ObjectStore>>>,
    counting: Arc<CountingStore>,
    base: Base,
    /// Removed when the stack is dropped.
    _dir: Option<tempfile::TempDir>,
}

impl Stack {
    pub fn new(base: Base, workdir: &Path) -> Stack {
        let (inner, dir): (Arc<dyn ObjectStore>, _) = match base {
            Base::Dir => {
                let dir = tempfile::tempdir_in(workdir).expect("temporary directory");
                let fs = LocalFileSystem::new_with_prefix(dir.path()).expect("local store");
                (Arc::new(Streaming(fs)), Some(dir))
            }
            Base::Mem => (Arc::new(InMemory::new()), None),
        };
        let throttle = Arc::new(ThrottledStore::new(inner, ThrottleConfig::default()));
        let counting = Arc::new(CountingStore::new(throttle.clone() as Arc<dyn ObjectStore>));
        Stack {
            throttle,
            counting,
            base,
            _dir: dir,
        }
    }

    /// The store as the systems see it.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.counting.clone()
    }

    /// Sets the latency every request waits before reaching the base store.
    pub fn set_latency(&self, latency: Duration) {
        self.throttle.config_mut(|c| {
            c.wait_put_per_call = latency;
            c.wait_get_per_call = latency;
            c.wait_list_per_call = latency;
            c.wait_list_with_delimiter_per_call = latency;
            c.wait_delete_per_call = latency;
        });
    }

    pub fn reset(&self) {
        self.counting.reset();
    }

    pub fn counts(&self) -> RequestCounts {
        self.counting.snapshot()
    }

    /// A new Icechunk `Storage` over this stack (a new instance each call: nothing
    /// cached is shared between two of them).
    pub fn icechunk_storage(&self) -> Arc<dyn icechunk::Storage + Send + Sync> {
        let slot = {
            let mut slots = SLOTS.lock().expect("slot table");
            slots.push(self.store());
            slots.len() - 1
        };
        let json = serde_json::json!({
            "backend": {
                "object_store_provider_type": BACKEND_NAME,
                "slot": slot,
                "local_dir": self.base == Base::Dir,
            }
        });
        let storage: icechunk::ObjectStorage =
            serde_json::from_value(json).expect("ObjectStorage from the slot backend");
        Arc::new(storage)
    }
}

const BACKEND_NAME: &str = "vs_icechunk_counted_stack";

/// Stacks handed to Icechunk, by slot.
static SLOTS: Mutex<Vec<Arc<dyn ObjectStore>>> = Mutex::new(Vec::new());

/// An Icechunk `ObjectStoreBackend` whose client is a stack from [`SLOTS`]. Its
/// settings are those of Icechunk's own backend for the same base: for a local
/// directory (`LocalFileSystemObjectStoreBackend`) no conditional updates, no object
/// metadata, no storage class, and listings sorted in memory; for memory, the
/// defaults (conditional create and update, as on S3). Default concurrency settings
/// (S3's) in both, and one try per request (no retries), as both of Icechunk's
/// local backends use.
#[derive(Debug, Serialize, Deserialize)]
struct SlotBackend {
    slot: usize,
    local_dir: bool,
}

impl fmt::Display for SlotBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CountedStack(slot={}, local_dir={})",
            self.slot, self.local_dir
        )
    }
}

#[typetag::serde(name = "vs_icechunk_counted_stack")]
impl ObjectStoreBackend for SlotBackend {
    fn mk_object_store(
        &self,
        _settings: &Settings,
        _role: Role,
    ) -> Result<Arc<dyn ObjectStore>, StorageError> {
        Ok(SLOTS.lock().expect("slot table")[self.slot].clone())
    }

    fn prefix(&self) -> String {
        String::new()
    }

    fn storage_info(&self) -> StorageInfo {
        StorageInfo {
            backend_type: "counted stack",
            fields: vec![("slot", self.slot.to_string())],
        }
    }

    fn artificially_sort_refs_in_mem(&self) -> bool {
        self.local_dir
    }

    fn supports_storage_class(&self) -> bool {
        !self.local_dir
    }

    fn default_settings(&self) -> Settings {
        Settings {
            retries: Some(RetriesSettings {
                max_tries: Some(NonZeroU16::MIN),
                initial_backoff_ms: Some(0),
                max_backoff_ms: Some(0),
            }),
            unsafe_use_conditional_update: self.local_dir.then_some(false),
            unsafe_use_metadata: self.local_dir.then_some(false),
            ..Default::default()
        }
    }
}
