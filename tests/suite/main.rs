//! The integration tests of crzarr, one binary: a module per suite, the helpers they
//! share in `tests/common`. Run one suite with `cargo test --test suite sync::`, one
//! test with its name (`cargo test --test suite -- --exact sync::<name>`).
//!
//! Suites that cannot share a process stay binaries of their own: `fuzz_smoke` and
//! `hostile_input` install a counting global allocator, `crash` and `sync_crash`
//! SIGKILL child processes and time them, and `zarrs_adapter` needs the `zarrs`
//! feature.

#[path = "../common/mod.rs"]
mod common;

mod backends;
mod cli;
mod clock;
mod conflict_matrix;
mod convergence;
mod costs;
mod faults;
mod gc_safety;
mod join;
mod join_edges;
mod metadata_edits;
mod objects;
mod request_counts;
mod session_review;
mod snapshots;
mod sync;
mod verify;
mod zarr_io;
