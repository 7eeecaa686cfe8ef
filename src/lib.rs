//! # crzarr: Conflict-free Replicated Zarr
//!
//! A Zarr v3 store kept as an operation-based CRDT log inside any object store.
//! Writers append immutable, content-addressed *change* files under `.crdt/ops/`
//! with no locks and no conditional writes beyond create-once; readers fold the
//! change DAG into a Zarr v3 view. Replicas holding the same changes show the same
//! view, byte for byte.
//!
//! Start with [`Repo`] (open, read, refresh) and [`WriteSession`] (stage writes,
//! commit one change); the operations' options and reports are re-exported here too.
//!
//! The folders follow the data's path, each layer using only those below it:
//!
//! | layer | modules | concern |
//! |---|---|---|
//! | [`zarr`] | [`zarr::key`], [`zarr::meta`], plain stores | Zarr v3 keys and node metadata: validation and rendering. A leaf |
//! | [`format`](mod@format) | [`format::ids`], [`format::layout`], [`format::change`], [`format::snapshot`], [`format::limits`] | the bytes in the bucket, the mirror of `spec/format.md`: every key and kind of object, each encoding and its checks, every bound |
//! | [`io`] | [`io::store`], `read`, [`io::reference`], [`io::connect`], [`io::counting`], [`io::progress`] | I/O over `object_store`: the repository's prefixed store (create-once writes, listings), typed reads checked against their names, chunks adopted in place, repository URLs, a request-counting store |
//! | [`fold`] | [`fold::Fold`], snapshot state, joins, [`fold::view`] | the causal fold: a pure function from a set of changes (and snapshots) to state, and the Zarr view of it |
//! | [`repo`], [`session`] | [`Repo`], [`WriteSession`] | a repository handle (open, refresh, read, publish) and staged writes committed as one change |
//! | [`ops`] | [`ops::compact`], [`ops::gc`], [`ops::sync`], [`ops::verify`], [`ops::import`], [`ops::export`], [`ops::status`] | operations over a repository and `io`; none uses another |
//! | [`adapters`] | `zarrs` (feature `zarrs`) | crzarr as a store for other Zarr libraries |
//!
//! [`error`] holds the one error type. The command-line tool (`src/main.rs`, `src/cli/`)
//! is a separate binary over this API. With the `testing` feature, `io::testing` adds
//! store wrappers that inject faults or move the store's clock.
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
//! s.commit(&mut laptop, Some("create temp")).await?;
//!
//! cluster.refresh().await?;
//! let mut s = cluster.session();
//! s.set("temp/c/1", vec![3u8, 4])?;
//! s.set_attr("temp", "units", "K".into())?;
//! s.commit(&mut cluster, None).await?;
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

// The flat layout's paths (before 0.x's layered folders), kept for one release so
// code written against them still builds; new code uses the layered paths.
#[doc(hidden)]
#[cfg(feature = "zarrs")]
pub use adapters::zarrs as zarrs_store;
#[doc(hidden)]
pub use fold::view;
#[doc(hidden)]
pub use format::{change, ids, layout, snapshot};
#[doc(hidden)]
pub use io::{connect, progress, reference};
#[doc(hidden)]
pub use ops::{compact, export, gc, import, status, sync, verify};
#[doc(hidden)]
pub use zarr::{key, meta};
#[doc(hidden)]
pub mod testing {
    //! The flat layout's `testing` module: [`crate::io::counting`] and, with the
    //! `testing` feature, `crate::io::testing`.
    pub use crate::io::counting::*;
    #[cfg(any(test, feature = "testing"))]
    pub use crate::io::testing::*;
}
#[doc(hidden)]
pub mod bucket {
    //! The flat layout's `bucket` module: [`crate::io::store`].
    pub use crate::io::store::*;
    /// The flat layout's name for [`RepoStore`].
    #[deprecated(note = "renamed `crzarr::io::store::RepoStore`")]
    pub type Bucket = RepoStore;
}

pub use error::{Error, Result};
pub use fold::view::{Conflict, Entry, View};
pub use io::connect::{Location, connect};
pub use ops::compact::CompactReport;
pub use ops::export::{ExportOptions, ExportReport};
pub use ops::gc::{GcOptions, GcReport};
pub use ops::import::{ImportOptions, ImportReport};
pub use ops::status::Status;
pub use ops::sync::{Direction, SyncOptions, SyncReport, sync};
pub use ops::verify::{VerifyOptions, VerifyReport, verify};
pub use repo::Repo;
pub use session::WriteSession;
