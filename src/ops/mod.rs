//! Maintenance and transfer operations over a repository: each works through
//! [`Repo`](crate::Repo) and [`io`](crate::io) and never through another operation.

pub mod compact;
pub mod export;
pub mod gc;
pub mod import;
pub mod status;
pub mod sync;
pub mod verify;
