//! I/O over `object_store`: the repository's prefixed store with its limits, create-once
//! writes and listings; chunks adopted in place; repository URLs; and store wrappers
//! that count or inject faults.

pub mod connect;
pub mod counting;
pub mod progress;
pub(crate) mod read;
pub mod reference;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
