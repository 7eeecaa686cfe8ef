//! crzarr as a store for other Zarr libraries.

#[cfg(feature = "zarrs")]
pub mod zarrs;
