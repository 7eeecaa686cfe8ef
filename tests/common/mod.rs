//! Shared test support: the object stores every suite runs against (here), and by
//! concern: [`repo`] (what a replica shows, what a bucket holds), [`changes`] (change
//! files built by hand), [`props`] and [`edits`] (the property suites' case counts,
//! runtime and random Zarr edits), [`witness`] (the join suites' bucket of every change
//! ever written) and [`crash`] (the crash tests' RNG, killed runs, what a replica holds).
//!
//! Included by `tests/suite/main.rs` (`#[path]`) and by the binaries that cannot share
//! its process (`mod common;`); each uses part of it.
#![allow(dead_code)]

pub mod changes;
pub mod crash;
pub mod edits;
pub mod props;
pub mod repo;
pub mod witness;

use crzarr::io::store::RepoStore;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use std::sync::Arc;

/// A store under test; keeps its temp dir alive.
pub struct Backend {
    pub name: &'static str,
    pub store: Arc<dyn ObjectStore>,
    /// A prefix unique to this backend instance (S3 tests share one bucket).
    pub prefix: String,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    /// The directory behind a local-disk backend.
    pub fn root(&self) -> Option<&std::path::Path> {
        self._dir.as_ref().map(|d| d.path())
    }

    /// The bucket: this store under this prefix.
    pub fn bucket(&self) -> RepoStore {
        RepoStore::new(self.store.clone(), &self.prefix)
    }
}

pub fn memory() -> Backend {
    Backend {
        name: "memory",
        store: Arc::new(InMemory::new()),
        prefix: "repo".into(),
        _dir: None,
    }
}

pub fn local() -> Backend {
    let dir = tempfile::tempdir().expect("temp dir");
    let fs = LocalFileSystem::new_with_prefix(dir.path()).expect("local store");
    Backend {
        name: "local",
        store: Arc::new(fs),
        prefix: "repo".into(),
        _dir: Some(dir),
    }
}

/// The loopback S3 server started by `tests/run.sh`, or `None` when not configured.
/// Under `CRZARR_REQUIRE_S3=1` (the test command, CI) a missing server is a failure.
pub fn s3() -> Option<Backend> {
    let Ok(endpoint) = std::env::var("CRZARR_TEST_S3_ENDPOINT") else {
        if std::env::var("CRZARR_REQUIRE_S3").is_ok_and(|v| v == "1") {
            panic!(
                "CRZARR_REQUIRE_S3=1 but CRZARR_TEST_S3_ENDPOINT is unset: the S3 server was not started"
            );
        }
        eprintln!("note: S3 backend not configured (run tests/run.sh to include it)");
        return None;
    };
    let bucket = std::env::var("CRZARR_TEST_S3_BUCKET").unwrap_or_else(|_| "crzarr-test".into());
    let store = AmazonS3Builder::from_env()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .build()
        .expect("S3 store");
    let prefix = format!("t/{}", ulid::Ulid::new().to_string().to_lowercase());
    Some(Backend {
        name: "s3",
        store: Arc::new(store),
        prefix,
        _dir: None,
    })
}

/// Every backend: InMemory, LocalFileSystem, and S3 when available.
pub fn backends() -> Vec<Backend> {
    let mut v = vec![memory(), local()];
    v.extend(s3());
    v
}

/// Fresh backend of the same kind as `b` (a separate replica).
pub fn another(b: &Backend) -> Backend {
    match b.name {
        "memory" => memory(),
        "local" => local(),
        _ => s3().expect("s3 backend"),
    }
}

/// Zarr v3 metadata of a small uint8 array.
pub fn array_meta(shape: &[u64], chunks: &[u64]) -> serde_json::Value {
    serde_json::json!({
        "zarr_format": 3, "node_type": "array", "shape": shape, "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0, "codecs": [{"name": "bytes"}], "attributes": {}
    })
}
