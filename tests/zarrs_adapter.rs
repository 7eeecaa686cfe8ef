//! The zarrs storage adapter (`crzarr::adapters::zarrs`): zarrs' own store test helpers,
//! arrays and groups through a write session, staging, two writers and sync, sharding.

use crzarr::adapters::zarrs::{BlockingZarrsStore, ZarrsStore};
use crzarr::io::store::RepoStore;
use crzarr::repo::Repo;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use std::sync::Arc;
use zarrs::array::{Array, ArrayBuilder, data_type};
use zarrs::group::{Group, GroupBuilder};
use zarrs_storage::byte_range::ByteRange;
use zarrs_storage::{
    AsyncListableStorageTraits, AsyncReadableStorageTraits, AsyncWritableStorageTraits,
    ListableStorageTraits, ReadableStorageTraits, StorePrefix, WritableStorageTraits, store_test,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn new_store() -> crzarr::Result<(Arc<dyn ObjectStore>, Arc<ZarrsStore>)> {
    let bucket: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let repo = Repo::init(bucket.clone(), "").await?;
    Ok((bucket, Arc::new(ZarrsStore::new(repo))))
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn blocking(rt: &tokio::runtime::Runtime, store: &Arc<ZarrsStore>) -> Arc<BlockingZarrsStore> {
    Arc::new(store.clone().blocking(rt.handle().clone()))
}

/// v = row * 8 + col over rows `rows` of an 8-column array.
fn values(rows: std::ops::Range<u16>) -> Vec<u16> {
    rows.flat_map(|r| (0..8).map(move |c| r * 8 + c)).collect()
}

// ---------------------------------------------------------------------------
// zarrs' own store test helpers.
//
// `store_test::store_write` writes keys such as `a/b`, `i/j/k` and `erase` that are
// neither a `zarr.json` nor inside an array: crzarr keeps them as objects (change
// format 3). Each helper runs on the staged writes, then again after commit on a
// second handle opened from the bucket, which sees only what was committed.
// ---------------------------------------------------------------------------

#[test]
fn zarrs_store_test_helpers_sync() -> TestResult {
    let rt = runtime()?;
    let (bucket, store) = rt.block_on(new_store())?;
    let sync = blocking(&rt, &store);
    store_test::store_write(&*sync)?;
    store_test::store_read(&*sync)?;
    store_test::store_list(&*sync)?;
    store_test::store_list_size(&*sync)?;
    let hash = rt.block_on(store.commit(Some("zarrs store_write")))?;
    assert!(hash.is_some(), "the helper's writes make one change");
    // The same helpers against the committed state, from another handle.
    let other = Arc::new(ZarrsStore::new(rt.block_on(Repo::open(bucket, ""))?));
    let other_sync = blocking(&rt, &other);
    store_test::store_read(&*other_sync)?;
    store_test::store_list(&*other_sync)?;
    store_test::store_list_size(&*other_sync)?;
    // And the committed handle itself, now that nothing is staged.
    assert_eq!(rt.block_on(store.staged()), 0);
    store_test::store_read(&*sync)?;
    store_test::store_list(&*sync)?;
    Ok(())
}

#[tokio::test]
async fn zarrs_store_test_helpers_async() -> TestResult {
    let (bucket, store) = new_store().await?;
    store_test::async_store_write(&*store).await?;
    store_test::async_store_read(&*store).await?;
    store_test::async_store_list(&*store).await?;
    store_test::async_store_list_size(&*store).await?;
    assert!(store.commit(None).await?.is_some());
    let other = ZarrsStore::new(Repo::open(bucket, "").await?);
    store_test::async_store_read(&other).await?;
    store_test::async_store_list(&other).await?;
    store_test::async_store_list_size(&other).await?;
    // Running `store_write` again over the committed state starts with
    // `erase_prefix("")`, deletes and rewrites everything: the result is the same.
    store_test::async_store_write(&other).await?;
    other.commit(Some("again")).await?;
    store_test::async_store_read(&other).await?;
    store_test::async_store_list(&other).await?;
    store_test::async_store_list_size(&other).await?;
    Ok(())
}

/// Objects and arrays side by side: `store_write`'s keys next to a zarrs array, an
/// object key an array takes over, and deleting the array's subtree.
#[tokio::test]
async fn objects_next_to_arrays() -> TestResult {
    let (bucket, store) = new_store().await?;
    store_test::async_store_write(&*store).await?;
    store
        .set(&"v/zarr.json".try_into()?, array_meta().into())
        .await?;
    store
        .set(&"v/c/0/0".try_into()?, vec![7u8; 8].into())
        .await?;
    store.commit(None).await?;
    let repo = Repo::open(bucket.clone(), "").await?;
    assert_eq!(
        repo.list().await?,
        [
            "a/b",
            "a/c",
            "a/d/e",
            "a/f/g",
            "a/f/h",
            "i/j/k",
            "v/c/0/0",
            "v/zarr.json",
            "zarr.json" // the implicit root group above `v`
        ]
    );
    assert_eq!(repo.get("a/b").await?.as_deref(), Some(&[0u8, 1, 2, 3][..]));
    // Deleting the array's subtree leaves the objects; deleting `a/` removes them.
    store.erase_prefix(&"v/".try_into()?).await?;
    store.erase_prefix(&"a/".try_into()?).await?;
    store.commit(None).await?;
    let repo = Repo::open(bucket, "").await?;
    assert_eq!(repo.list().await?, ["i/j/k"]);
    // An array staged over a staged object owns its key: reads agree before and after.
    store.set(&"w/extra".try_into()?, vec![1u8].into()).await?;
    assert_eq!(
        store.get(&"w/extra".try_into()?).await?.as_deref(),
        Some(&[1u8][..])
    );
    store
        .set(&"w/zarr.json".try_into()?, array_meta().into())
        .await?;
    assert_eq!(store.get(&"w/extra".try_into()?).await?, None);
    let staged = store.list_prefix(&"w/".try_into()?).await?;
    store.commit(None).await?;
    assert_eq!(store.get(&"w/extra".try_into()?).await?, None);
    assert_eq!(store.list_prefix(&"w/".try_into()?).await?, staged);
    Ok(())
}

// ---------------------------------------------------------------------------
// The same calls on keys crzarr accepts: `a`, `i` and `x` are arrays, and the
// helper's keys are chunk keys inside them.
// ---------------------------------------------------------------------------

fn array_meta() -> Vec<u8> {
    serde_json::json!({
        "zarr_format": 3, "node_type": "array", "shape": [4], "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0, "codecs": [{"name": "bytes"}]
    })
    .to_string()
    .into_bytes()
}

async fn conformance_write(store: &ZarrsStore) -> TestResult {
    store.erase_prefix(&StorePrefix::root()).await?;
    for k in ["a/zarr.json", "i/zarr.json", "x/zarr.json"] {
        store.set(&k.try_into()?, array_meta().into()).await?;
    }
    store
        .set(&"a/b".try_into()?, vec![255, 255, 255].into())
        .await?;
    store
        .set_partial(&"a/b".try_into()?, 1, vec![1, 2].into())
        .await?;
    store
        .set_partial(&"a/b".try_into()?, 3, vec![3].into())
        .await?;
    store
        .set_partial(&"a/b".try_into()?, 0, vec![0].into())
        .await?;
    store.set(&"a/c".try_into()?, vec![0].into()).await?;
    store.set(&"a/d/e".try_into()?, vec![].into()).await?;
    store.set(&"a/f/g".try_into()?, vec![].into()).await?;
    store.set(&"a/f/h".try_into()?, vec![].into()).await?;
    store.set(&"i/j/k".try_into()?, vec![0, 1].into()).await?;
    store.set(&"x/erase".try_into()?, vec![].into()).await?;
    store.erase(&"x/erase".try_into()?).await?;
    store.erase(&"x/erase".try_into()?).await?;
    store.set(&"x/m0".try_into()?, vec![].into()).await?;
    store.set(&"x/m1".try_into()?, vec![].into()).await?;
    store
        .erase_many(&["x/m0".try_into()?, "x/m1".try_into()?])
        .await?;
    store.set(&"x/p/0".try_into()?, vec![].into()).await?;
    store.set(&"x/p/1".try_into()?, vec![].into()).await?;
    store.erase_prefix(&"x/p/".try_into()?).await?;
    Ok(())
}

async fn conformance_check(store: &ZarrsStore) -> TestResult {
    use futures::TryStreamExt;
    // Metadata reads give the view's rendering of what was written.
    let meta_len = store
        .size_key(&"a/zarr.json".try_into()?)
        .await?
        .expect("a/zarr.json");
    let group_len = store
        .size_key(&"zarr.json".try_into()?)
        .await?
        .expect("implicit root group");
    let root = store
        .get(&"zarr.json".try_into()?)
        .await?
        .expect("implicit root group");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&root)?,
        serde_json::json!({"zarr_format": 3, "node_type": "group", "attributes": {}})
    );
    assert!(store.get(&"notfound".try_into()?).await?.is_none());
    assert!(store.size_key(&"notfound".try_into()?).await?.is_none());
    assert_eq!(
        store.get(&"a/b".try_into()?).await?,
        Some(vec![0, 1, 2, 3].into())
    );
    assert_eq!(store.size_key(&"a/b".try_into()?).await?, Some(4));
    assert_eq!(store.size_key(&"a/c".try_into()?).await?, Some(1));
    assert_eq!(store.size_key(&"i/j/k".try_into()?).await?, Some(2));
    let parts = store
        .get_partial_many(
            &"a/b".try_into()?,
            Box::new([ByteRange::FromStart(1, Some(1)), ByteRange::Suffix(1)].into_iter()),
        )
        .await?
        .expect("a/b exists")
        .try_collect::<Vec<_>>()
        .await?;
    assert_eq!(parts, vec![vec![1u8], vec![3]]);
    assert_eq!(
        store
            .get_partial(&"a/b".try_into()?, ByteRange::Suffix(2))
            .await?,
        Some(vec![2, 3].into())
    );
    assert!(
        store
            .get_partial(&"a/b".try_into()?, ByteRange::FromStart(1, Some(10)))
            .await
            .is_err()
    );
    assert_eq!(
        store
            .get_partial(&"notfound".try_into()?, ByteRange::FromStart(1, Some(10)))
            .await?,
        None
    );
    let all = [
        "a/b",
        "a/c",
        "a/d/e",
        "a/f/g",
        "a/f/h",
        "a/zarr.json",
        "i/j/k",
        "i/zarr.json",
        "x/zarr.json",
        "zarr.json",
    ];
    let keys = |ks: &[&str]| -> Result<Vec<zarrs_storage::StoreKey>, zarrs_storage::StoreKeyError> {
        ks.iter().map(|k| (*k).try_into()).collect()
    };
    assert_eq!(store.list().await?, keys(&all)?);
    assert_eq!(store.list_prefix(&"".try_into()?).await?, keys(&all)?);
    assert_eq!(
        store.list_prefix(&"a/".try_into()?).await?,
        keys(&all[..6])?
    );
    assert_eq!(
        store.list_prefix(&"i/".try_into()?).await?,
        keys(&["i/j/k", "i/zarr.json"])?
    );
    assert!(
        store
            .list_prefix(&"notfound/".try_into()?)
            .await?
            .is_empty()
    );
    let dir = store.list_dir(&"a/".try_into()?).await?;
    assert_eq!(dir.keys(), &keys(&["a/b", "a/c", "a/zarr.json"])?);
    let want: Vec<StorePrefix> = vec!["a/d/".try_into()?, "a/f/".try_into()?];
    assert_eq!(dir.prefixes(), &want);
    let root = store.list_dir(&StorePrefix::root()).await?;
    assert_eq!(root.keys(), &keys(&["zarr.json"])?);
    assert_eq!(root.prefixes().len(), 3);
    let empty = store.list_dir(&"notfound/".try_into()?).await?;
    assert!(empty.keys().is_empty() && empty.prefixes().is_empty());
    assert_eq!(store.size().await?, 7 + 3 * meta_len + group_len);
    assert_eq!(store.size_prefix(&"a/".try_into()?).await?, 5 + meta_len);
    assert_eq!(store.size_prefix(&"i/".try_into()?).await?, 2 + meta_len);
    assert_eq!(store.size_prefix(&"notfound/".try_into()?).await?, 0);
    Ok(())
}

#[tokio::test]
async fn conformance_async_staged_then_committed() -> TestResult {
    let (bucket, store) = new_store().await?;
    conformance_write(&store).await?;
    conformance_check(&store).await?;
    assert!(store.commit(Some("conformance")).await?.is_some());
    conformance_check(&store).await?;
    // A fresh handle on the bucket sees the same store.
    let fresh = ZarrsStore::new(Repo::open(bucket, "").await?);
    conformance_check(&fresh).await?;
    Ok(())
}

#[test]
fn conformance_sync() -> TestResult {
    let rt = runtime()?;
    let (_, store) = rt.block_on(new_store())?;
    let sync = blocking(&rt, &store);
    rt.block_on(conformance_write(&store))?;
    // The sync view (zarrs' AsyncToSyncStorageAdapter) of the same state.
    assert_eq!(sync.get(&"a/b".try_into()?)?, Some(vec![0, 1, 2, 3].into()));
    assert_eq!(sync.size_key(&"i/j/k".try_into()?)?, Some(2));
    assert_eq!(
        sync.get_partial(&"a/b".try_into()?, ByteRange::FromStart(1, None))?,
        Some(vec![1, 2, 3].into())
    );
    assert_eq!(sync.list_prefix(&"i/".try_into()?)?.len(), 2);
    // Sync writes go to the same staging.
    sync.set(&"i/j/k".try_into()?, vec![9, 9, 9].into())?;
    sync.set_partial(&"i/j/k".try_into()?, 0, vec![0, 1].into())?;
    sync.set(&"x/q".try_into()?, vec![1].into())?;
    sync.erase_prefix(&"x/".try_into()?)?;
    assert_eq!(sync.get(&"i/j/k".try_into()?)?, Some(vec![0, 1, 9].into()));
    assert!(sync.list_prefix(&"x/".try_into()?)?.is_empty());
    let staged_size = sync.size()?;
    rt.block_on(store.commit(None))?;
    assert_eq!(sync.size()?, staged_size, "same sizes staged and committed");
    let meta_len = sync.size_key(&"i/zarr.json".try_into()?)?.unwrap_or(0);
    assert_eq!(sync.size_prefix(&"i/".try_into()?)?, 3 + meta_len);
    assert!(sync.list_prefix(&"x/".try_into()?)?.is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------
// zarrs arrays and groups.
// ---------------------------------------------------------------------------

#[test]
fn array_create_store_retrieve_and_group_open() -> TestResult {
    let rt = runtime()?;
    let (bucket, store) = rt.block_on(new_store())?;
    let sync = blocking(&rt, &store);
    GroupBuilder::new()
        .build(sync.clone(), "/")?
        .store_metadata()?;
    let array = ArrayBuilder::new(vec![8, 8], vec![4, 4], data_type::uint16(), 0u16)
        .build(sync.clone(), "/data/v")?;
    array.store_metadata()?;
    array.store_array_subset(&[0..8, 0..8], values(0..8))?;
    let got: Vec<u16> = array.retrieve_array_subset(&[2..6, 0..8])?;
    assert_eq!(got, values(2..6));
    // Staged writes: the root group, the array, four chunks; `data` is implicit.
    let hash = rt.block_on(store.commit(Some("zarrs round trip")))?;
    assert!(hash.is_some());
    assert_eq!(
        rt.block_on(store.commit(None))?,
        None,
        "nothing left staged"
    );

    // A new handle on the bucket reads it back through zarrs.
    let fresh = Arc::new(ZarrsStore::new(rt.block_on(Repo::open(bucket, ""))?));
    let fresh_sync = blocking(&rt, &fresh);
    let root = Group::open(fresh_sync.clone(), "/")?;
    assert_eq!(root.path().as_str(), "/");
    let reopened = Array::open(fresh_sync.clone(), "/data/v")?;
    assert_eq!(reopened.shape(), &[8, 8]);
    let all: Vec<u16> = reopened.retrieve_array_subset(&[0..8, 0..8])?;
    assert_eq!(all, values(0..8));
    let keys = fresh_sync.list()?;
    assert!(
        keys.iter().any(|k| k.as_str() == "data/v/c/1/1"),
        "{keys:?}"
    );
    Ok(())
}

#[tokio::test]
async fn array_async_api_round_trip() -> TestResult {
    let (_, store) = new_store().await?;
    let array = ArrayBuilder::new(vec![8, 8], vec![4, 4], data_type::uint16(), 0u16)
        .build(store.clone(), "/v")?;
    array.async_store_metadata().await?;
    array
        .async_store_array_subset(&[4..8, 0..8], &values(4..8))
        .await?;
    store.commit(None).await?;
    let reopened = Array::async_open(store.clone(), "/v").await?;
    let all: Vec<u16> = reopened.async_retrieve_array_subset(&[0..8, 0..8]).await?;
    let mut want = vec![0u16; 32];
    want.extend(values(4..8));
    assert_eq!(all, want);
    Ok(())
}

#[tokio::test]
async fn uncommitted_writes_are_invisible_to_another_handle_until_commit() -> TestResult {
    let (bucket, store) = new_store().await?;
    let array = ArrayBuilder::new(vec![8, 8], vec![4, 4], data_type::uint16(), 0u16)
        .build(store.clone(), "/v")?;
    array.async_store_metadata().await?;
    array
        .async_store_array_subset(&[0..8, 0..8], &values(0..8))
        .await?;
    let other = ZarrsStore::new(Repo::open(bucket.clone(), "").await?);
    assert!(store.get(&"v/zarr.json".try_into()?).await?.is_some());
    assert!(other.get(&"v/zarr.json".try_into()?).await?.is_none());
    assert!(other.list().await?.is_empty());
    // Nothing reached the bucket's view either.
    assert!(
        Repo::open(bucket.clone(), "")
            .await?
            .list()
            .await?
            .is_empty()
    );

    store.commit(Some("now")).await?;
    assert!(
        other.list().await?.is_empty(),
        "other has not refreshed yet"
    );
    other.refresh().await?;
    let all: Vec<u16> = Array::async_open(Arc::new(other), "/v")
        .await?
        .async_retrieve_array_subset(&[0..8, 0..8])
        .await?;
    assert_eq!(all, values(0..8));
    Ok(())
}

#[tokio::test]
async fn two_writers_disjoint_regions_then_sync() -> TestResult {
    let (_, a) = new_store().await?;
    let array = ArrayBuilder::new(vec![8, 8], vec![4, 4], data_type::uint16(), 0u16)
        .build(a.clone(), "/v")?;
    array.async_store_metadata().await?;
    a.commit(Some("create v")).await?;

    // B: a replica of A on its own bucket.
    let bucket_b: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    crzarr::sync(
        a.repo().await.bucket(),
        &RepoStore::new(bucket_b.clone(), ""),
        &crzarr::SyncOptions::push(),
    )
    .await?;
    let b = Arc::new(ZarrsStore::new(Repo::open(bucket_b, "").await?));

    // Both write concurrently, neither seeing the other.
    let array_b = Array::async_open(b.clone(), "/v").await?;
    let (top, bottom) = (values(0..4), values(4..8));
    let (ra, rb) = tokio::join!(
        array.async_store_array_subset(&[0..4, 0..8], &top),
        array_b.async_store_array_subset(&[4..8, 0..8], &bottom),
    );
    ra?;
    rb?;
    let (ca, cb) = tokio::join!(a.commit(Some("top")), b.commit(Some("bottom")));
    assert!(ca?.is_some() && cb?.is_some());

    let bucket_b = b.repo().await.bucket().clone();
    let report = a
        .repo_mut()
        .await
        .sync(&bucket_b, &Default::default())
        .await?;
    assert!(report.copied_anything());
    b.refresh().await?;

    for store in [&a, &b] {
        let all: Vec<u16> = Array::async_open(store.clone(), "/v")
            .await?
            .async_retrieve_array_subset(&[0..8, 0..8])
            .await?;
        assert_eq!(all, values(0..8));
    }
    // Byte-identical views.
    let (ea, eb) = (
        a.repo().await.entries().await?,
        b.repo().await.entries().await?,
    );
    assert_eq!(ea, eb);
    assert_eq!(a.list().await?, b.list().await?);
    Ok(())
}

#[test]
fn sharded_array_round_trip() -> TestResult {
    let rt = runtime()?;
    let (bucket, store) = rt.block_on(new_store())?;
    let sync = blocking(&rt, &store);
    let array = ArrayBuilder::new(vec![8, 8], vec![4, 8], data_type::uint16(), 0u16)
        .subchunk_shape(vec![2, 4])
        .bytes_to_bytes_codecs(vec![Arc::new(zarrs::array::codec::GzipCodec::new(5)?)])
        .build(sync.clone(), "/sharded")?;
    array.store_metadata()?;
    array.store_array_subset(&[0..8, 0..8], values(0..8))?;
    // Overwrite part of one shard (read-modify-write of the shard in the overlay).
    let patch: Vec<u16> = vec![7777; 4];
    array.store_array_subset(&[5..6, 2..6], &patch)?;
    rt.block_on(store.commit(Some("sharded")))?;

    let fresh = Arc::new(ZarrsStore::new(rt.block_on(Repo::open(bucket, ""))?));
    let reopened = Array::open(blocking(&rt, &fresh), "/sharded")?;
    let all: Vec<u16> = reopened.retrieve_array_subset(&[0..8, 0..8])?;
    let mut want = values(0..8);
    want[5 * 8 + 2..5 * 8 + 6].copy_from_slice(&patch);
    assert_eq!(all, want);
    // Two shards (chunks of 4x8), each one object.
    let keys: Vec<String> = rt
        .block_on(fresh.list())?
        .iter()
        .map(|k| k.as_str().to_string())
        .collect();
    // The root shows as an implicit group, as crzarr's view renders it.
    assert_eq!(
        keys,
        [
            "sharded/c/0/0",
            "sharded/c/1/0",
            "sharded/zarr.json",
            "zarr.json"
        ]
    );
    // A subset inside one inner chunk, through a partial read of the shard.
    let part: Vec<u16> = reopened.retrieve_array_subset(&[6..8, 4..8])?;
    assert_eq!(part, [52, 53, 54, 55, 60, 61, 62, 63]);
    Ok(())
}

// ---------------------------------------------------------------------------
// crzarr's rules through the adapter.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn invalid_writes_are_refused_at_once() -> TestResult {
    let (_, store) = new_store().await?;
    let err = store
        .set(&"v/zarr.json".try_into()?, b"{not json".to_vec().into())
        .await
        .expect_err("invalid metadata");
    assert!(
        matches!(err, zarrs_storage::StorageError::InvalidMetadata(..)),
        "{err}"
    );
    store
        .set(&"v/zarr.json".try_into()?, array_meta().into())
        .await?;
    // No node inside an array.
    let err = store
        .set(&"v/inner/zarr.json".try_into()?, array_meta().into())
        .await
        .expect_err("node inside array");
    assert!(err.to_string().contains("inside array"), "{err}");
    // Reserved names.
    assert!(
        store
            .set(&".crdt/x/zarr.json".try_into()?, array_meta().into())
            .await
            .is_err()
    );
    assert_eq!(store.staged().await, 1);
    Ok(())
}

#[tokio::test]
async fn erasing_zarr_json_deletes_the_subtree() -> TestResult {
    let (_, store) = new_store().await?;
    let array = ArrayBuilder::new(vec![8, 8], vec![4, 4], data_type::uint16(), 0u16)
        .build(store.clone(), "/g/v")?;
    array.async_store_metadata().await?;
    array
        .async_store_array_subset(&[0..8, 0..8], &values(0..8))
        .await?;
    store.commit(None).await?;
    assert_eq!(store.list_prefix(&"g/v/".try_into()?).await?.len(), 5);
    // As in a crzarr session, deleting a node's zarr.json deletes its chunks too.
    store.erase(&"g/v/zarr.json".try_into()?).await?;
    assert!(store.list().await?.is_empty());
    store.commit(None).await?;
    assert!(store.list().await?.is_empty());
    assert!(store.repo().await.list().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn discard_and_into_repo() -> TestResult {
    let (_, store) = new_store().await?;
    store
        .set(&"v/zarr.json".try_into()?, array_meta().into())
        .await?;
    assert_eq!(store.discard().await, 1);
    assert!(store.list().await?.is_empty());
    store
        .set(&"v/zarr.json".try_into()?, array_meta().into())
        .await?;
    let store = Arc::into_inner(store).expect("one reference");
    let repo = store.into_repo();
    assert!(repo.list().await?.is_empty(), "staged writes are dropped");
    Ok(())
}

#[tokio::test]
async fn replacing_an_array_reads_the_same_staged_and_committed() -> TestResult {
    let (_, store) = new_store().await?;
    let v = ArrayBuilder::new(vec![8, 8], vec![4, 4], data_type::uint16(), 0u16)
        .build(store.clone(), "/v")?;
    v.async_store_metadata().await?;
    v.async_store_array_subset(&[0..8, 0..8], &values(0..8))
        .await?;
    store.commit(None).await?;

    // Same layout, new attributes: an update, the chunks stay.
    let mut attrs = serde_json::Map::new();
    attrs.insert("units".into(), "K".into());
    let same = ArrayBuilder::new(vec![8, 8], vec![4, 4], data_type::uint16(), 0u16)
        .attributes(attrs)
        .build(store.clone(), "/v")?;
    same.async_store_metadata().await?;
    let staged = store.list().await?;
    store.commit(None).await?;
    assert_eq!(store.list().await?, staged);
    assert_eq!(staged.len(), 6, "{staged:?}");

    // Another chunk shape: a new array, the old chunks are gone.
    let other = ArrayBuilder::new(vec![8, 8], vec![8, 8], data_type::uint16(), 0u16)
        .build(store.clone(), "/v")?;
    other.async_store_metadata().await?;
    let staged = store.list().await?;
    let staged_meta = store.get(&"v/zarr.json".try_into()?).await?;
    store.commit(None).await?;
    assert_eq!(store.list().await?, staged);
    assert_eq!(store.get(&"v/zarr.json".try_into()?).await?, staged_meta);
    let keys: Vec<&str> = staged.iter().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["v/zarr.json", "zarr.json"]);
    let all: Vec<u16> = Array::async_open(store.clone(), "/v")
        .await?
        .async_retrieve_array_subset(&[0..8, 0..8])
        .await?;
    assert_eq!(all, vec![0u16; 64]);
    Ok(())
}

#[tokio::test]
async fn implicit_groups_open_staged_and_committed() -> TestResult {
    let (_, store) = new_store().await?;
    let v = ArrayBuilder::new(vec![4], vec![4], data_type::uint16(), 0u16)
        .build(store.clone(), "/a/b/v")?;
    v.async_store_metadata().await?;
    for round in ["staged", "committed"] {
        for path in ["/", "/a", "/a/b"] {
            Group::async_open(store.clone(), path)
                .await
                .map_err(|e| format!("{round} {path}: {e}"))?;
        }
        let keys: Vec<String> = store
            .list()
            .await?
            .iter()
            .map(|k| k.as_str().to_string())
            .collect();
        assert_eq!(
            keys,
            [
                "a/b/v/zarr.json",
                "a/b/zarr.json",
                "a/zarr.json",
                "zarr.json"
            ],
            "{round}"
        );
        store.commit(None).await?;
    }
    Ok(())
}
