//! Change files built by hand (a forger's, a late one, one naming what never arrives)
//! and written straight into a bucket.

use crzarr::format::change::{Change, Op};
use crzarr::format::ids::{ActorId, ChangeHash, Hlc};
use crzarr::format::layout::{ChangeName, Layout};
use crzarr::repo::Repo;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::sync::Arc;
use ulid::Ulid;

/// An actor no handle is: its id is `n` sixteen times.
pub fn forger(n: u8) -> ActorId {
    ActorId(Ulid::from_bytes([n; 16]))
}

/// A change by `actor` on top of `repo`'s heads, one stamp past the greatest of them.
pub fn on_top(repo: &Repo, actor: ActorId, seq: u64, ops: Vec<Op>) -> Change {
    let deps = repo.fold().heads();
    let hlc = deps
        .iter()
        .filter_map(|h| repo.fold().hlc_of(h))
        .max()
        .unwrap();
    Change {
        repo: repo.id(),
        actor,
        seq,
        deps,
        hlc: Hlc(hlc.0 + 1),
        wall_ms: 1,
        message: None,
        ops,
    }
}

/// Writes a hand-built change through `store`, canonically named; returns its hash
/// and key.
pub async fn put_change(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    c: &Change,
) -> (ChangeHash, Path) {
    let bytes = c.encode();
    let hash = ChangeHash::of(&bytes);
    let key = Layout::new(prefix).change(&ChangeName {
        hash,
        actor: c.actor,
        seq: c.seq,
    });
    store
        .put(&key, PutPayload::from(bytes::Bytes::from(bytes)))
        .await
        .unwrap();
    (hash, key)
}
