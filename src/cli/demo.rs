//! `crzarr demo`: a cloud bucket and two laptops edit apart, sync, converge, compact.

use crzarr::fold::view::{Conflict, ConflictTarget, Entry};
use crzarr::io::connect::connect;
use crzarr::io::store::RepoStore;
use crzarr::ops::sync::{SyncOptions, sync};
use crzarr::repo::Repo;
use crzarr::{Error, Result};
use serde_json::json;
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
        ConflictTarget::Object => "object".to_string(),
        ConflictTarget::Field(f) => format!("metadata field {f:?}"),
    };
    // The tail of a ULID is random; its head is a timestamp shared by close writers.
    let actor = |a: &crzarr::format::ids::ActorId| a.to_string()[18..].to_string();
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

async fn view_digest(repo: &Repo) -> Result<String> {
    let mut h = blake3::Hasher::new();
    for (k, e) in repo.entries().await? {
        h.update(k.as_bytes());
        match e {
            Entry::Metadata(b) => h.update(&b),
            Entry::Chunk(c) => h.update(format!("{c:?}").as_bytes()),
            Entry::Object(c) => h.update(format!("object {c:?}").as_bytes()),
        };
    }
    Ok(h.finalize().to_hex()[..16].to_string())
}

fn say(step: &str, text: &str) {
    println!("\n{step} {text}");
}

/// One line about a sync in one direction.
fn moved(t: &crzarr::ops::sync::Transfer) -> String {
    let mut parts = vec![
        format!("{} change file(s)", t.changes),
        format!("{} blob(s)", t.blobs),
    ];
    if t.snapshots > 0 {
        parts.push(format!(
            "{} snapshot(s) with {} manifest object(s)",
            t.snapshots, t.manifests
        ));
    }
    format!("{}, {} bytes", parts.join(", "), t.bytes)
}

fn bucket_at(path: &std::path::Path) -> Result<RepoStore> {
    let loc = connect(&path.to_string_lossy(), true)?;
    Ok(RepoStore::new(loc.store, &loc.prefix))
}

async fn open_at(b: &RepoStore) -> Result<Repo> {
    Repo::open(b.store().clone(), b.layout().root().as_ref()).await
}

fn bug(what: &str) -> Error {
    Error::Internal(what.to_string())
}

/// Runs the demo in `dir` (a fresh temporary directory by default).
pub(crate) async fn run(dir: Option<PathBuf>) -> Result<()> {
    let dir = match dir {
        Some(d) => {
            if d.exists() && std::fs::read_dir(&d)?.next().is_some() {
                return Err(Error::Refused {
                    what: d.display().to_string(),
                    reason: "directory is not empty; give an empty or new directory".into(),
                });
            }
            d
        }
        None => std::env::temp_dir().join(format!(
            "crzarr-demo-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        )),
    };
    let (path_cloud, path_a, path_b, path_c) = (
        dir.join("cloud"),
        dir.join("laptop-a"),
        dir.join("laptop-b"),
        dir.join("new-laptop"),
    );
    println!(
        "crzarr demo: one Zarr store kept in a \"cloud\" bucket and on two laptops, all on local disk under {}",
        dir.display()
    );
    let (cloud_b, a_b, b_b) = (
        bucket_at(&path_cloud)?,
        bucket_at(&path_a)?,
        bucket_at(&path_b)?,
    );
    let opts = SyncOptions::default();

    say(
        "1.",
        "A cluster job creates the dataset in the cloud bucket: a root group and an 80x80 float32 array `sst` in four 40x40 chunks.",
    );
    let mut cloud = Repo::init(cloud_b.store().clone(), "").await?;
    let mut s = cloud.session();
    s.create_group(
        "",
        serde_json::Map::from_iter([("title".to_string(), json!("crzarr demo"))]),
    )?;
    s.create_array("sst", &array_metadata())?;
    for (i, key) in ["c/0/0", "c/0/1", "c/1/0", "c/1/1"].iter().enumerate() {
        s.set_chunk("sst", key, chunk(10.0 + i as f32).into())?;
    }
    let first = s
        .commit(&mut cloud, Some("create sst"))
        .await?
        .ok_or_else(|| bug("nothing committed"))?;
    println!(
        "   One change file, {}…, holds the whole commit; the four chunks went to content-addressed blobs first.",
        first.short()
    );

    say(
        "2.",
        "Two laptops take a copy with `crzarr sync`: an empty directory becomes a replica of the cloud's repository.",
    );
    let r = sync(&cloud_b, &a_b, &opts).await?;
    sync(&cloud_b, &b_b, &opts).await?;
    println!("   Each laptop received {}.", moved(&r.a_to_b));
    let mut a = open_at(&a_b).await?;
    let mut b = open_at(&b_b).await?;

    say(
        "3.",
        "Both laptops go offline and edit the same array and the same attribute at the same time.",
    );
    let mut s = a.session();
    s.set_attr("sst", "units", json!("K"))?;
    s.set_chunk("sst", "c/0/0", chunk(280.0).into())?;
    s.resize("sst", &[SIDE + CHUNK, SIDE])?;
    s.set_chunk("sst", "c/2/0", chunk(281.0).into())?;
    s.commit(&mut a, Some("A: kelvin, more rows")).await?;
    println!(
        "   A: units = \"K\", rewrites chunk c/0/0, grows the array to 120 rows and fills the new chunk c/2/0."
    );
    let mut s = b.session();
    s.set_attr("sst", "units", json!("degC"))?;
    s.set_attr("sst", "source", json!("buoy network"))?;
    s.set_chunk("sst", "c/0/0", chunk(7.0).into())?;
    s.delete_chunk("sst", "c/1/1")?;
    s.resize("sst", &[SIDE, SIDE + CHUNK])?;
    s.commit(&mut b, Some("B: celsius, more columns")).await?;
    println!(
        "   B: units = \"degC\", source = \"buoy network\", rewrites chunk c/0/0, deletes c/1/1 and grows to 120 columns."
    );
    println!(
        "   Now the laptops differ: A has {} keys, B has {}.",
        a.list().await?.len(),
        b.list().await?.len()
    );

    say(
        "4.",
        "Back online, each laptop syncs with the cloud; then the cloud syncs back to each. No locks, no coordinator, no rebase.",
    );
    let ra = sync(&a_b, &cloud_b, &opts).await?;
    println!("   laptop A -> cloud: {}", moved(&ra.a_to_b));
    let rb = sync(&b_b, &cloud_b, &opts).await?;
    println!("   laptop B -> cloud: {}", moved(&rb.a_to_b));
    println!(
        "   cloud -> laptop B in the same run: {} (A's change, which the cloud had just received)",
        moved(&rb.b_to_a)
    );
    let rc = sync(&cloud_b, &a_b, &opts).await?;
    println!("   cloud -> laptop A: {}", moved(&rc.a_to_b));
    for r in [&ra, &rb, &rc] {
        if !r.is_clean() {
            return Err(bug("a sync refused an object"));
        }
    }
    a.refresh().await?;
    b.refresh().await?;
    cloud.refresh().await?;

    say(
        "5.",
        "All three copies now show the same Zarr store, byte for byte:",
    );
    let digests = [
        view_digest(&cloud).await?,
        view_digest(&a).await?,
        view_digest(&b).await?,
    ];
    println!(
        "   view digest cloud = {}, laptop A = {}, laptop B = {}",
        digests[0], digests[1], digests[2]
    );
    if digests.iter().any(|d| *d != digests[0]) {
        return Err(bug("the replicas did not converge"));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&cloud.get("sst/zarr.json").await?.unwrap_or_default())
            .unwrap_or_default();
    println!(
        "   sst shape {} (both grows kept), attributes {}",
        meta["shape"], meta["attributes"]
    );
    for k in cloud.list().await? {
        println!("     {k}");
    }
    println!(
        "   Concurrent overwrites were resolved by one rule everywhere (causal order, then clock, then writer id):"
    );
    let conflicts = cloud.conflicts().await?;
    if conflicts != a.conflicts().await? || conflicts != b.conflicts().await? {
        return Err(bug("the replicas report different conflicts"));
    }
    for c in &conflicts {
        println!("   {}", describe_conflict(c));
    }

    say(
        "6.",
        "A compaction job writes a snapshot in the cloud; garbage collection then removes what it makes unnecessary.",
    );
    let rep = cloud.compact().await?;
    println!(
        "   {}: {} changes folded, {} manifest piece(s), {} bytes.",
        rep.snapshot.as_deref().unwrap_or("(up to date)"),
        rep.changes_folded,
        rep.manifests_written,
        rep.bytes_written
    );
    // Nothing else writes to this demo bucket, so a zero window is safe here; on a
    // shared bucket use a window longer than any commit (e.g. --older-than 1d).
    let gc = cloud
        .gc(&crzarr::ops::gc::GcOptions {
            older_than: std::time::Duration::ZERO,
            dry_run: false,
            force: true,
        })
        .await?;
    let freed: u64 = gc.removed.iter().map(|r| r.bytes).sum();
    println!(
        "   Garbage collection removed {} objects ({freed} bytes): covered change files and blobs of overwritten chunks.",
        gc.removed.len()
    );
    let counting = crzarr::io::counting::CountingStore::new(cloud_b.store().clone());
    let fresh = Repo::open(std::sync::Arc::new(counting.clone()), "").await?;
    let n = counting.take();
    println!(
        "   A new reader of the cloud opens from the snapshot with {} requests in {} round trip(s), fetching {} change files.",
        n.requests(),
        n.round_trips,
        fresh.log().len()
    );

    say(
        "7.",
        "A new laptop syncs from the compacted cloud: it gets the snapshot and the blobs it uses, not the collected history.",
    );
    let c_b = bucket_at(&path_c)?;
    let r = sync(&cloud_b, &c_b, &opts).await?;
    println!("   cloud -> new laptop: {}", moved(&r.a_to_b));
    let r = sync(&cloud_b, &a_b, &opts).await?;
    println!(
        "   cloud -> laptop A: {} (A still holds the history; the snapshot covers it, nothing goes back)",
        moved(&r.a_to_b)
    );
    let c = open_at(&c_b).await?;
    let dc = view_digest(&c).await?;
    a.refresh().await?;
    let da = view_digest(&a).await?;
    println!("   view digest new laptop = {dc}, laptop A = {da}");
    if dc != digests[0] || da != digests[0] {
        return Err(bug("a replica shows a different view after compaction"));
    }
    println!(
        "\nTry it yourself:\n  crzarr log --graph {}\n  crzarr conflicts {}\n  crzarr status {}\n  crzarr sync {} {}",
        path_b.display(),
        path_a.display(),
        path_cloud.display(),
        path_b.display(),
        path_cloud.display()
    );
    Ok(())
}
