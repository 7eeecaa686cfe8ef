//! What a replica shows and what a bucket holds: a replica's state, the pure fold of a
//! set of changes, and every change file of a bucket.

use crzarr::fold::Fold;
use crzarr::fold::view::{Conflict, Entry, ViewIndex};
use crzarr::format::change::Change;
use crzarr::format::ids::ChangeHash;
use crzarr::io::store::RepoStore;
use crzarr::repo::Repo;
use object_store::ObjectStoreExt;
use std::collections::BTreeMap;

/// What a reader shows: entries, conflicts and heads.
pub type State = (BTreeMap<String, Entry>, Vec<Conflict>, Vec<ChangeHash>);

pub async fn state(repo: &Repo) -> State {
    (
        repo.entries().await.unwrap(),
        repo.conflicts().await.unwrap(),
        repo.fold().heads(),
    )
}

/// What a reader of exactly these changes shows: their pure fold.
pub fn fold_state<'a>(
    repo: &Repo,
    changes: impl IntoIterator<Item = (&'a ChangeHash, &'a Change)>,
) -> State {
    let fold = Fold::from_changes(repo.id(), changes.into_iter().map(|(h, c)| (*h, c.clone())));
    let view_index = ViewIndex::build(&fold);
    let view = view_index.with(&fold);
    (view.entries(), view.conflicts(), fold.heads())
}

/// Every change file in a bucket, decoded (kept before GC removes them). Reads through
/// the bucket's own store: give it the bare store to read without faults.
pub async fn stash(b: &RepoStore) -> BTreeMap<ChangeHash, Change> {
    let (listed, _) = b.list_changes().await.unwrap();
    let mut out = BTreeMap::new();
    for c in listed {
        let bytes = b.store().get(&c.key).await.unwrap().bytes().await.unwrap();
        out.insert(
            c.name.hash,
            Change::decode(c.key.as_ref(), &bytes, &c.name.hash).unwrap(),
        );
    }
    out
}

/// Chunk bytes over the inline limit (4096): the chunk is stored as a blob.
pub fn blob(i: u8) -> Vec<u8> {
    vec![i; 5000]
}
