//! Editing an array's `zarr.json` (spec/merge.md §3–§5): a write that keeps the chunk
//! layout updates the array's registers and keeps its chunks; one that changes the
//! layout replaces the array and says so; a shrink deletes the chunks outside the new
//! shape on every write path, so a later regrow never shows old data.

use crate::common::{array_meta, backends};
use crzarr::repo::Repo;
use serde_json::{Value, json};

async fn doc(r: &Repo, key: &str) -> Value {
    serde_json::from_slice(&r.get(key).await.unwrap().expect("metadata")).unwrap()
}

/// `array_meta(&[8], &[2])` with fields replaced.
fn meta_with(fields: Value) -> Vec<u8> {
    let mut m = array_meta(&[8], &[2]);
    for (k, v) in fields.as_object().unwrap() {
        m[k] = v.clone();
    }
    m.to_string().into_bytes()
}

#[tokio::test]
async fn editing_fill_value_or_dimension_names_keeps_the_chunks() {
    for b in backends() {
        let mut r = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = r.session();
        s.set(
            "zarr.json",
            br#"{"zarr_format":3,"node_type":"group"}"#.to_vec(),
        )
        .unwrap();
        s.set("x/zarr.json", meta_with(json!({}))).unwrap();
        s.set("x/c/0", vec![1u8, 2]).unwrap();
        s.set("x/c/3", vec![7u8; 5000]).unwrap();
        s.commit(&mut r, None).await.unwrap();

        // What xarray and zarr-python do: add dimension names, write the fill value as
        // a float, add an attribute, in one rewrite of zarr.json.
        let mut s = r.session();
        s.set(
            "x/zarr.json",
            meta_with(json!({
                "fill_value": 0.0,
                "dimension_names": ["time"],
                "attributes": {"_ARRAY_DIMENSIONS": ["time"]},
            })),
        )
        .unwrap();
        assert_eq!(s.replaced().count(), 0, "{}", b.name);
        s.commit(&mut r, None).await.unwrap();

        for reader in [r, Repo::open(b.store.clone(), &b.prefix).await.unwrap()] {
            let d = doc(&reader, "x/zarr.json").await;
            assert_eq!(d["fill_value"], json!(0.0), "{}", b.name);
            assert_eq!(d["dimension_names"], json!(["time"]), "{}", b.name);
            assert_eq!(d["attributes"]["_ARRAY_DIMENSIONS"], json!(["time"]));
            assert_eq!(
                reader.get("x/c/0").await.unwrap().as_deref(),
                Some(&[1u8, 2][..]),
                "{}",
                b.name
            );
            assert_eq!(reader.get("x/c/3").await.unwrap().unwrap().len(), 5000);
            assert_eq!(reader.conflicts().await.unwrap(), []);
        }

        // Through a snapshot (the field registers are part of the state) and back.
        let mut r = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let before = r.entries().await.unwrap();
        r.compact().await.unwrap();
        let fresh = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert_eq!(fresh.entries().await.unwrap(), before, "{}", b.name);
        // Removing dimension names again, from the snapshot's state.
        let mut r = fresh;
        let mut s = r.session();
        s.set("x/zarr.json", meta_with(json!({"fill_value": 0.0})))
            .unwrap();
        s.commit(&mut r, None).await.unwrap();
        let d = doc(&r, "x/zarr.json").await;
        assert!(d.get("dimension_names").is_none(), "{}: {d}", b.name);
        assert_eq!(
            r.get("x/c/0").await.unwrap().as_deref(),
            Some(&[1u8, 2][..])
        );
    }
}

#[tokio::test]
async fn changing_the_chunk_layout_replaces_the_array_and_says_so() {
    let b = crate::common::memory();
    let mut r = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
    let mut s = r.session();
    s.set("x/zarr.json", meta_with(json!({}))).unwrap();
    s.set("x/c/0", vec![1u8, 2]).unwrap();
    s.commit(&mut r, None).await.unwrap();
    for (field, value) in [
        ("data_type", json!("int16")),
        ("codecs", json!([{"name": "bytes"}, {"name": "crc32c"}])),
        (
            "chunk_grid",
            json!({"name": "regular", "configuration": {"chunk_shape": [4]}}),
        ),
        (
            "chunk_key_encoding",
            json!({"name": "default", "configuration": {"separator": "."}}),
        ),
    ] {
        let mut s = r.session();
        s.set("x/c/0", vec![1u8, 2]).unwrap();
        s.commit(&mut r, None).await.unwrap();
        let mut s = r.session();
        s.set("x/zarr.json", meta_with(json!({ field: value })))
            .unwrap();
        assert_eq!(s.replaced().collect::<Vec<_>>(), ["x"], "{field}");
        s.commit(&mut r, None).await.unwrap();
        // The old chunks went with the old array.
        assert_eq!(
            r.list().await.unwrap(),
            ["x/zarr.json", "zarr.json"],
            "{field}"
        );
        // Back to the first layout for the next round (another replace).
        let mut s = r.session();
        s.set("x/zarr.json", meta_with(json!({}))).unwrap();
        s.commit(&mut r, None).await.unwrap();
    }
}

#[tokio::test]
async fn shrink_then_regrow_through_zarr_json_never_shows_old_chunks() {
    for b in backends() {
        let mut r = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = r.session();
        s.set("x/zarr.json", meta_with(json!({}))).unwrap();
        for i in 0..4u8 {
            s.set(&format!("x/c/{i}"), vec![i; 2]).unwrap();
        }
        s.commit(&mut r, None).await.unwrap();
        // [8] -> [4] -> [8] by writing zarr.json, in separate commits.
        for shape in [4u64, 8] {
            let mut s = r.session();
            s.set("x/zarr.json", meta_with(json!({ "shape": [shape] })))
                .unwrap();
            s.commit(&mut r, None).await.unwrap();
        }
        assert_eq!(doc(&r, "x/zarr.json").await["shape"], json!([8]));
        assert_eq!(
            r.list().await.unwrap(),
            ["x/c/0", "x/c/1", "x/zarr.json", "zarr.json"],
            "{}",
            b.name
        );
        assert_eq!(r.get("x/c/3").await.unwrap(), None, "{}", b.name);

        // Within one session too, and from a snapshot (the chunks in manifest pieces).
        let mut s = r.session();
        s.set("x/c/3", vec![3u8; 2]).unwrap();
        s.commit(&mut r, None).await.unwrap();
        r.compact().await.unwrap();
        let mut r = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = r.session();
        s.set("x/zarr.json", meta_with(json!({"shape": [2]})))
            .unwrap();
        s.set("x/zarr.json", meta_with(json!({"shape": [8]})))
            .unwrap();
        s.commit(&mut r, None).await.unwrap();
        assert_eq!(
            r.list().await.unwrap(),
            ["x/c/0", "x/zarr.json", "zarr.json"],
            "{}",
            b.name
        );
    }
}
