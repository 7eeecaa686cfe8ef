//! `crzarr demo`: two replicas edited apart on local disk, exchanged, converged.

use crzarr::bucket::Bucket;
use crzarr::change::{Change, ChunkData, Op};
use crzarr::connect::connect;
use crzarr::repo::Repo;
use crzarr::view::{Conflict, ConflictTarget, Entry};
use crzarr::{Error, Result};
use serde_json::json;
use std::collections::HashSet;
use std::path::PathBuf;

const SIDE: u64 = 80;
const CHUNK: u64 = 40;

fn array_metadata() -> serde_json::Value {
    json!({
        "zarr_format": 3, "node_type": "array", "shape": [SIDE, SIDE], "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [CHUNK, CHUNK]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": "NaN", "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "dimension_names": ["y", "x"],
        "attributes": {"long_name": "sea surface temperature"}
    })
}

/// A chunk of float32 values, little-endian.
fn chunk(value: f32) -> Vec<u8> {
    (0..CHUNK * CHUNK)
        .flat_map(|i| (value + i as f32 * 0.001).to_le_bytes())
        .collect()
}

/// One line describing how a conflict was resolved.
pub(crate) fn describe_conflict(c: &Conflict) -> String {
    let what = match &c.target {
        ConflictTarget::Node => "node".to_string(),
        ConflictTarget::Attribute(a) => format!("attribute {a:?}"),
        ConflictTarget::Chunk => "chunk".to_string(),
    };
    // The tail of a ULID is random; its head is a timestamp shared by close writers.
    let actor = |a: &crzarr::ids::ActorId| a.to_string()[18..].to_string();
    let losers: Vec<String> = c
        .losers
        .iter()
        .map(|l| {
            format!(
                "{} (writer …{}, change {})",
                l.value,
                actor(&l.actor),
                l.change.short()
            )
        })
        .collect();
    format!(
        "{} {what}: kept {} (writer …{}, change {}) over {}",
        c.key,
        c.winner.value,
        actor(&c.winner.actor),
        c.winner.change.short(),
        losers.join(", ")
    )
}

/// Copies the change files `to` lacks from `from`, blobs first, so `to` never lists
/// a change whose blobs are missing. (A minimal exchange; `crzarr sync` generalises it.)
async fn exchange(from: &Bucket, to: &Bucket) -> Result<usize> {
    let (src, _) = from.list_changes().await?;
    let (dst, _) = to.list_changes().await?;
    let have: HashSet<_> = dst.iter().map(|c| c.name.hash).collect();
    let mut copied = 0;
    for c in src.into_iter().filter(|c| !have.contains(&c.name.hash)) {
        let key = c.key.to_string();
        let Some(bytes) = from.get(&c.key, crzarr::change::MAX_CHANGE_BYTES).await? else {
            continue;
        };
        let change = Change::decode(&key, &bytes, &c.name.hash)?;
        for op in &change.ops {
            if let Op::SetChunk {
                data: ChunkData::Blob { hash, len },
                ..
            } = op
            {
                let blob_key = from.layout().blob(hash);
                let blob = from
                    .get(&blob_key, *len)
                    .await?
                    .ok_or_else(|| Error::MissingBlob {
                        key: key.clone(),
                        blob_key: blob_key.to_string(),
                    })?;
                to.put_blob(&to.layout().blob(hash), blob).await?;
            }
        }
        to.put_once(&to.layout().change(&c.name), bytes).await?;
        copied += 1;
    }
    Ok(copied)
}

async fn view_digest(repo: &Repo) -> Result<String> {
    let mut h = blake3::Hasher::new();
    for (k, e) in repo.entries().await? {
        h.update(k.as_bytes());
        match e {
            Entry::Metadata(b) => h.update(&b),
            Entry::Chunk(c) => h.update(format!("{c:?}").as_bytes()),
        };
    }
    Ok(h.finalize().to_hex()[..16].to_string())
}

fn say(step: &str, text: &str) {
    println!("\n{step} {text}");
}

/// Runs the demo in `dir` (a fresh temporary directory by default).
pub(crate) async fn run(dir: Option<PathBuf>) -> Result<()> {
    let dir = match dir {
        Some(d) => {
            if d.exists() && std::fs::read_dir(&d)?.next().is_some() {
                return Err(Error::Usage(format!(
                    "{}: directory is not empty; give an empty or new directory",
                    d.display()
                )));
            }
            d
        }
        None => std::env::temp_dir().join(format!(
            "crzarr-demo-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        )),
    };
    let path_a = dir.join("laptop-a");
    let path_b = dir.join("laptop-b");
    println!(
        "crzarr demo: two replicas of one Zarr store on local disk, under {}",
        dir.display()
    );

    let a_loc = connect(&path_a.to_string_lossy(), true)?;
    let b_loc = connect(&path_b.to_string_lossy(), true)?;
    let mut a = Repo::init(a_loc.store.clone(), &a_loc.prefix).await?;

    say(
        "1.",
        "Laptop A creates a repository: a root group and an 80x80 float32 array `sst` in four 40x40 chunks.",
    );
    let mut s = a.session();
    s.create_group(
        "",
        serde_json::Map::from_iter([("title".to_string(), json!("crzarr demo"))]),
    )?;
    s.create_array("sst", &array_metadata())?;
    for (i, key) in ["c/0/0", "c/0/1", "c/1/0", "c/1/1"].iter().enumerate() {
        s.set_chunk("sst", key, chunk(10.0 + i as f32).into())?;
    }
    let first = s
        .commit(Some("create sst"))
        .await?
        .ok_or_else(|| Error::Usage("nothing committed".into()))?;
    println!(
        "   One change file, {}…, holds the whole commit; the four chunks went to content-addressed blobs first.",
        first.short()
    );

    say(
        "2.",
        "Laptop B starts as a copy: it receives A's change file and blobs, nothing else.",
    );
    let b_bucket = Bucket::new(b_loc.store.clone(), &b_loc.prefix);
    b_bucket.write_marker(a.id()).await?;
    exchange(a.bucket(), &b_bucket).await?;
    let mut b = Repo::open(b_loc.store.clone(), &b_loc.prefix).await?;
    println!("   B shows the same {} keys as A.", b.list().await?.len());

    say(
        "3.",
        "Both laptops go offline and edit the same array at the same time.",
    );
    let mut s = a.session();
    s.set_attr("sst", "units", json!("K"))?;
    s.set_chunk("sst", "c/0/0", chunk(280.0).into())?;
    s.resize("sst", &[SIDE + CHUNK, SIDE])?;
    s.set_chunk("sst", "c/2/0", chunk(281.0).into())?;
    s.commit(Some("A: kelvin, more rows")).await?;
    println!(
        "   A: units = \"K\", rewrites chunk c/0/0, grows the array to 120 rows and fills the new chunk c/2/0."
    );
    let mut s = b.session();
    s.set_attr("sst", "units", json!("degC"))?;
    s.set_attr("sst", "source", json!("buoy network"))?;
    s.set_chunk("sst", "c/0/0", chunk(7.0).into())?;
    s.delete_chunk("sst", "c/1/1")?;
    s.resize("sst", &[SIDE, SIDE + CHUNK])?;
    s.commit(Some("B: celsius, more columns")).await?;
    println!(
        "   B: units = \"degC\", source = \"buoy network\", rewrites chunk c/0/0, deletes c/1/1 and grows to 120 columns."
    );
    println!(
        "   Now A and B differ: A has {} keys, B has {}.",
        a.list().await?.len(),
        b.list().await?.len()
    );

    say(
        "4.",
        "They reconnect and exchange change files, each copying what it lacks (blobs before the change that uses them).",
    );
    let to_b = exchange(a.bucket(), b.bucket()).await?;
    let to_a = exchange(b.bucket(), a.bucket()).await?;
    a.refresh().await?;
    b.refresh().await?;
    println!("   {to_b} change(s) went to B and {to_a} to A. No locks, no coordinator, no rebase.");

    say(
        "5.",
        "Both replicas now show the same Zarr store, byte for byte:",
    );
    let (da, db) = (view_digest(&a).await?, view_digest(&b).await?);
    println!("   view digest A = {da}, B = {db}");
    if da != db || a.list().await? != b.list().await? {
        return Err(Error::Usage(
            "the replicas did not converge (this is a bug)".into(),
        ));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&a.get("sst/zarr.json").await?.unwrap_or_default())
            .unwrap_or_default();
    println!(
        "   sst shape {} (both grows kept), attributes {}",
        meta["shape"], meta["attributes"]
    );
    for k in a.list().await? {
        println!("     {k}");
    }

    say(
        "6.",
        "Concurrent overwrites were resolved by the same rule everywhere (causal order, then clock, then writer id):",
    );
    let conflicts = a.conflicts().await?;
    if conflicts != b.conflicts().await? {
        return Err(Error::Usage(
            "the replicas report different conflicts (this is a bug)".into(),
        ));
    }
    for c in &conflicts {
        println!("   {}", describe_conflict(c));
    }

    say(
        "7.",
        "A compaction job writes a snapshot of A's bucket; readers then skip the history.",
    );
    let rep = a.compact().await?;
    println!(
        "   {}: {} changes folded, {} manifest piece(s), {} bytes.",
        rep.snapshot.as_deref().unwrap_or("(up to date)"),
        rep.changes_folded,
        rep.manifests_written,
        rep.bytes_written
    );
    let counting = crzarr::testing::CountingStore::new(a_loc.store.clone());
    let c = Repo::open(std::sync::Arc::new(counting.clone()), &a_loc.prefix).await?;
    let n = counting.take();
    println!(
        "   A new reader opens from it with {} requests in {} round trips, fetching {} change files.",
        n.requests(),
        n.round_trips,
        c.log().len()
    );
    // Nothing else writes to this demo bucket, so a zero window is safe here; on a
    // shared bucket use a window longer than any commit (e.g. --older-than 1d).
    let gc = a
        .gc(&crzarr::gc::GcOptions {
            older_than: std::time::Duration::ZERO,
            dry_run: false,
        })
        .await?;
    let freed: u64 = gc.removed.iter().map(|r| r.bytes).sum();
    println!(
        "   Garbage collection removed {} objects ({freed} bytes): covered change files and blobs of overwritten chunks.",
        gc.removed.len()
    );
    let c = Repo::open(a_loc.store.clone(), &a_loc.prefix).await?;
    let dc = view_digest(&c).await?;
    println!("   view digest after compaction and GC = {dc}");
    if dc != da {
        return Err(Error::Usage(
            "the snapshot shows a different view (this is a bug)".into(),
        ));
    }
    println!(
        "\nTry it yourself:\n  crzarr status {}\n  crzarr ls {}\n  crzarr log {}\n  crzarr conflicts {}",
        path_a.display(),
        path_a.display(),
        path_a.display(),
        path_b.display()
    );
    Ok(())
}
