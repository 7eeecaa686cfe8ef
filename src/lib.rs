//! # crzarr: Conflict-free Replicated Zarr
//!
//! A Zarr v3 store kept as an operation-based CRDT log inside any object store.
//! Writers append immutable, content-addressed *change* files under `.crdt/ops/`
//! with no locks and no conditional writes beyond create-once; readers fold the
//! change DAG into a Zarr v3 view. Replicas holding the same changes show the same
//! view, byte for byte.
//!
//! The modules follow the data's path:
//!
//! | module | concern |
//! |---|---|
//! | [`ids`] | hashes, actor and repo ids, hybrid logical clocks |
//! | [`key`], [`meta`] | Zarr keys and node metadata: validation and rendering |
//! | [`change`] | a change and its one canonical, strictly decoded encoding |
//! | [`layout`] | every bucket key, built in one place |
//! | [`bucket`] | I/O over `object_store`: limits, create-once writes, listing |
//! | [`fold`] | the causal fold: a pure function from a set of changes to state |
//! | [`snapshot`] | snapshot objects: metadata, chunk-manifest pieces, coverage archive |
//! | [`view`] | the Zarr view of a fold: `zarr.json`, chunks, listings, conflicts |
//! | [`session`] | staging Zarr-store writes as ops and committing them |
//! | [`repo`] | a repository handle: open, refresh, read, commit |
//! | [`compact`], [`gc`], [`status`] | snapshots; removing what nothing needs; what a bucket holds |
//! | [`sync`] | replication between buckets: copy what one side lacks, verified, in writer order |
//! | [`verify`] | fsck: every object checked as readers check it, dangling references, quarantine |
//! | [`import`], [`export`] | plain Zarr v3 stores in and out: one change per import, incremental export |
//! | [`reference`] | chunks adopted in place: where they are read from, the integrity rule |
//! | [`progress`] | counters of long transfers, for progress bars |
//! | [`connect`] | repository URLs (`file://`, `s3://`, `gs://`, `az://`, `memory://`) |
//! | [`testing`] | a request-counting store and a fault-injecting store for tests and benchmarks |
//! | `zarrs_store` | (feature `zarrs`) crzarr as a store for the `zarrs` crate, writes staged until commit |
//!
//! The normative format and merge rules are in `spec/`.
//!
//! # Example
//!
//! ```
//! use crzarr::repo::Repo;
//! use object_store::memory::InMemory;
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> crzarr::error::Result<()> {
//! let bucket = Arc::new(InMemory::new());
//! let mut laptop = Repo::init(bucket.clone(), "dataset").await?;
//! let mut cluster = Repo::open(bucket.clone(), "dataset").await?;
//!
//! // Two writers, no coordination: each commits one change.
//! let mut s = laptop.session();
//! s.create_group("", Default::default())?;
//! s.set("temp/zarr.json", serde_json::json!({
//!     "zarr_format": 3, "node_type": "array", "shape": [4], "data_type": "uint8",
//!     "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2]}},
//!     "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
//!     "fill_value": 0, "codecs": [{"name": "bytes"}]
//! }).to_string())?;
//! s.set("temp/c/0", vec![1u8, 2])?;
//! s.commit(Some("create temp")).await?;
//!
//! cluster.refresh().await?;
//! let mut s = cluster.session();
//! s.set("temp/c/1", vec![3u8, 4])?;
//! s.set_attr("temp", "units", "K".into())?;
//! s.commit(None).await?;
//!
//! laptop.refresh().await?;
//! assert_eq!(laptop.list().await?, ["temp/c/0", "temp/c/1", "temp/zarr.json", "zarr.json"]);
//! assert_eq!(laptop.get("temp/c/1").await?.as_deref(), Some(&[3u8, 4][..]));
//! assert_eq!(laptop.list().await?, cluster.list().await?);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod adapters;
pub mod error;
pub mod fold;
pub mod format;
pub mod io;
pub mod ops;
pub mod repo;
pub mod session;
pub mod zarr;

// Paths of the flat layout before the redesign.
#[cfg(feature = "zarrs")]
pub use adapters::zarrs as zarrs_store;
pub use fold::view;
pub use format::{change, ids, layout, snapshot};
pub use io::{connect, progress, reference, testing};
#[doc(hidden)]
pub mod bucket {
    //! The flat layout's `bucket` module: [`crate::io::store`].
    pub use crate::io::store::*;
    /// The flat layout's name for [`RepoStore`].
    pub type Bucket = RepoStore;
}
pub use ops::{compact, export, gc, import, status, sync, verify};
pub use zarr::{key, meta};

pub use error::{Error, Result};
pub use repo::Repo;
pub use session::WriteSession;
