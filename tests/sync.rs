//! Replication between buckets: `sync` copies what one side lacks, in writer order,
//! verified; every topology converges.

mod common;

use common::array_meta;
use crzarr::bucket::Bucket;
use crzarr::gc::GcOptions;
use crzarr::repo::Repo;
use crzarr::sync::{SyncOptions, sync};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use std::sync::Arc;
use std::time::Duration;

fn mem() -> Arc<dyn ObjectStore> {
    Arc::new(InMemory::new())
}

#[tokio::test]
async fn smoke_two_ways_then_empty_from_compacted() {
    let (sa, sb) = (mem(), mem());
    let mut a = Repo::init(sa.clone(), "").await.unwrap();
    let mut s = a.session();
    s.create_group("", Default::default()).unwrap();
    s.create_array("x", &array_meta(&[8], &[2])).unwrap();
    s.set("x/c/0", vec![7u8; 5000]).unwrap();
    s.commit(None).await.unwrap();
    let (ba, bb) = (Bucket::new(sa.clone(), ""), Bucket::new(sb.clone(), ""));
    let r = sync(&ba, &bb, &SyncOptions::default()).await.unwrap();
    assert_eq!(r.a_to_b.changes, 1, "{r:?}");
    assert_eq!(r.a_to_b.blobs, 1, "{r:?}");
    let mut b = Repo::open(sb.clone(), "").await.unwrap();
    let mut s = b.session();
    s.set("x/c/1", vec![8u8; 5000]).unwrap();
    s.commit(None).await.unwrap();
    let mut s = a.session();
    s.set_attr("x", "k", "1".into()).unwrap();
    s.commit(None).await.unwrap();
    let r = sync(&ba, &bb, &SyncOptions::default()).await.unwrap();
    assert_eq!((r.a_to_b.changes, r.b_to_a.changes), (1, 1), "{r:?}");
    a.refresh().await.unwrap();
    b.refresh().await.unwrap();
    assert_eq!(a.entries().await.unwrap(), b.entries().await.unwrap());
    let r = sync(&ba, &bb, &SyncOptions::default()).await.unwrap();
    assert!(!r.copied_anything(), "{r:?}");
    a.compact().await.unwrap();
    a.gc(&GcOptions {
        older_than: Duration::ZERO,
        dry_run: false,
    })
    .await
    .unwrap();
    let sc = mem();
    let bc = Bucket::new(sc.clone(), "");
    let r = sync(&ba, &bc, &SyncOptions::default()).await.unwrap();
    assert_eq!((r.a_to_b.changes, r.a_to_b.snapshots), (0, 1), "{r:?}");
    let c = Repo::open(sc.clone(), "").await.unwrap();
    assert_eq!(a.entries().await.unwrap(), c.entries().await.unwrap());
    assert_eq!(c.get("x/c/1").await.unwrap().unwrap().len(), 5000);
    // b still has the full history as files: syncing it with the compacted a copies
    // the snapshot to b, and nothing back to a.
    let r = sync(&ba, &bb, &SyncOptions::default()).await.unwrap();
    assert_eq!(r.b_to_a.changes, 0, "{r:?}");
    assert_eq!(r.a_to_b.snapshots, 1, "{r:?}");
    let r = sync(&ba, &bb, &SyncOptions::default()).await.unwrap();
    assert!(!r.copied_anything(), "{r:?}");
}
