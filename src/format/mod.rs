//! The bytes in the bucket: the mirror of `spec/format.md`.
//!
//! Every object crzarr writes is defined here: its key ([`layout`]), its encoding and the
//! checks a reader applies to it ([`change`], [`snapshot`]), and the identifiers it is
//! named by ([`ids`]). Nothing here does I/O.

pub mod change;
pub mod ids;
pub mod layout;
pub mod limits;
pub mod marker;
pub mod snapshot;
