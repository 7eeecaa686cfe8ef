//! Stable-toolchain fuzzing: a bounded, seeded, coverage-free mutation fuzzer for every
//! decoder of bucket bytes and for the parser of user-supplied `zarr.json`, plus a
//! checked-in corpus of hostile files (`tests/hostile/`) with the exact error each gives.
//!
//! Properties checked on every execution:
//! - the decoder never panics (each call runs under `catch_unwind`; a panic fails the test
//!   with the input in hex);
//! - it returns `Ok` or a typed `crzarr::Error` of an expected kind whose message names
//!   the key it was given;
//! - decoding allocates boundedly (a per-thread counting global allocator measures the peak
//!   of each call, see `check_alloc`);
//! - an input that decodes `Ok` is canonical: re-encoding gives the same bytes (objects), or
//!   rendering and re-parsing gives the same document (`zarr.json`).
//!
//! `CRZARR_FUZZ_EXECS=N` sets the executions per target (default [`DEFAULT_EXECS`]),
//! `CRZARR_FUZZ_SEED=S` the RNG seed, `CRZARR_FUZZ_STRICT=1` turns the known findings
//! below into failures, and `CRZARR_REGENERATE_CORPUS=1` rewrites `tests/hostile/` from
//! [`corpus`]. Run with `--nocapture` to see executions and outcomes per target.

use crzarr::Error;
use crzarr::format::change::{
    CHANGE_MAGIC, CHANGE_VERSION_PLAIN, Change, ChunkData, DimSize, INLINE_MAX, MAX_OPS, Op, OpRef,
};
use crzarr::format::ids::{ActorId, BlobHash, ChangeHash, Hlc, ObjectHash, RepoId};
use crzarr::format::snapshot::{
    ArchiveShard, CoveredChange, ManifestPiece, PieceRef, RegKey, SnapChunk, SnapFork, SnapKind,
    SnapNode, SnapshotMeta, Superseded,
};
use crzarr::ops::gc::GcOptions;
use crzarr::repo::Repo;
use crzarr::zarr::meta::{NodeDoc, canonical_json, parse_node_doc, render_group};
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::memory::InMemory;
use serde_json::json;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use ulid::Ulid;

/// Executions per target when `CRZARR_FUZZ_EXECS` is unset.
const DEFAULT_EXECS: u64 = 100_000;

// ---------------------------------------------------------------------------------
// A per-thread counting allocator: current and peak bytes, resettable. Per thread so
// that the targets, which run as parallel tests, do not see each other's allocations.

struct Counting;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(grow: usize, shrink: usize) {
    let _ = ON.try_with(|on| {
        if on.get() {
            let now = CURRENT.get() + grow as isize;
            PEAK.set(PEAK.get().max(now));
            CURRENT.set(now - shrink as isize);
            LARGEST.set(LARGEST.get().max(grow));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size(), 0);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size(), 0);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        note(0, layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Old and new blocks may coexist during the copy.
            note(new_size, layout.size());
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak bytes live on this thread while `f` ran (from zero), and its largest single
/// allocation.
struct Mem {
    peak: usize,
    largest: usize,
}

fn measure<T>(f: impl FnOnce() -> T) -> (T, Mem) {
    CURRENT.set(0);
    PEAK.set(0);
    LARGEST.set(0);
    ON.set(true);
    let out = f();
    ON.set(false);
    let mem = Mem {
        peak: PEAK.get().max(0) as usize,
        largest: LARGEST.get(),
    };
    (out, mem)
}

// ---------------------------------------------------------------------------------
// RNG and mutations.

/// xorshift64*: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const INTERESTING_BYTES: &[u8] = &[
    0x00, 0x01, 0x7f, 0x80, 0xff, 0xc0, 0xc2, 0xc3, 0xc4, 0xcc, 0xcf, 0xd9, 0xdc, 0xdd, 0xde, 0xdf,
    0x90, 0x91, 0x9f, 0xa0, 0xa1, 0xbf, 0x80, 0x81, b'"', b'{', b'[', b'}', b']', b':', b',', b'-',
    b'0', b'9', b'e', b'\\',
];

const HUGE_COUNTS: &[u32] = &[
    u32::MAX,
    0x7fff_ffff,
    MAX_OPS as u32,
    MAX_OPS as u32 + 1,
    1 << 20,
    65_536,
    65_537,
    4097,
    1025,
    65,
];

/// The wide header of the MessagePack family of `b` (array, map, str, bin), if `b`
/// starts a length-prefixed value, with the number of length bytes that follow `b`.
fn msgpack_length(b: u8) -> Option<(u8, usize)> {
    match b {
        0x90..=0x9f => Some((0xdd, 0)),
        0xdc => Some((0xdd, 2)),
        0xdd => Some((0xdd, 4)),
        0x80..=0x8f => Some((0xdf, 0)),
        0xde => Some((0xdf, 2)),
        0xdf => Some((0xdf, 4)),
        0xa0..=0xbf => Some((0xdb, 0)),
        0xd9 => Some((0xdb, 1)),
        0xda => Some((0xdb, 2)),
        0xdb => Some((0xdb, 4)),
        0xc4 => Some((0xc6, 1)),
        0xc5 => Some((0xc6, 2)),
        0xc6 => Some((0xc6, 4)),
        _ => None,
    }
}

/// One random mutation of `b`; `other` is a second input to splice with.
fn mutate_once(rng: &mut Rng, b: &mut Vec<u8>, other: &[u8]) {
    let len = b.len();
    match rng.below(9) {
        // Bit flip.
        0 if len > 0 => {
            let i = rng.below(len);
            b[i] ^= 1 << rng.below(8);
        }
        // Byte set.
        1 if len > 0 => {
            let i = rng.below(len);
            b[i] = if rng.chance(2) {
                INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())]
            } else {
                rng.next() as u8
            };
        }
        // Insert a run (random or repeated bytes).
        2 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let fill = rng.next() as u8;
            let repeat = rng.chance(2);
            let run: Vec<u8> = (0..n)
                .map(|_| if repeat { fill } else { rng.next() as u8 })
                .collect();
            b.splice(at..at, run);
        }
        // Delete a run.
        3 if len > 0 => {
            let at = rng.below(len);
            let n = (1 + rng.below(32)).min(len - at);
            b.drain(at..at + n);
        }
        // Truncate.
        4 => b.truncate(rng.below(len + 1)),
        // Splice: a prefix of this input, a suffix of the other.
        5 if !other.is_empty() => {
            let cut = rng.below(len + 1);
            let from = rng.below(other.len());
            b.truncate(cut);
            b.extend_from_slice(&other[from..]);
        }
        // Overwrite a MessagePack length prefix with a huge claim.
        6 => {
            let starts: Vec<usize> = (0..len)
                .filter(|&i| msgpack_length(b[i]).is_some())
                .collect();
            if starts.is_empty() {
                return;
            }
            let at = starts[rng.below(starts.len())];
            let (wide, n) = msgpack_length(b[at]).unwrap_or((0xdd, 0));
            let end = (at + 1 + n).min(len);
            let count = if rng.chance(4) {
                (len as u32).wrapping_add(rng.below(8) as u32)
            } else {
                HUGE_COUNTS[rng.below(HUGE_COUNTS.len())]
            };
            let mut header = vec![wide];
            header.extend(count.to_be_bytes());
            b.splice(at..end, header);
        }
        // Duplicate a region.
        7 if len > 0 => {
            let s = rng.below(len);
            let e = s + 1 + rng.below((len - s).min(64));
            let region = b[s..e].to_vec();
            let at = rng.below(len + 1);
            b.splice(at..at, region);
        }
        // Interesting integer at a random place.
        8 if len > 0 => {
            let i = rng.below(len);
            let ints: [&[u8]; 5] = [
                &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                &[0xce, 0xff, 0xff, 0xff, 0xff],
                &[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
                &[0xff],
                &[0xcc, 0x00],
            ];
            let v = ints[rng.below(ints.len())];
            let end = (i + v.len()).min(len);
            b.splice(i..end, v.iter().copied());
        }
        _ => {}
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------------
// Targets.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// `Change::decode`, with the hash of the input (or, now and then, another hash).
    Change,
    /// `Change::decode_unverified`.
    ChangeUnverified,
    /// `SnapshotMeta::decode`.
    SnapshotMeta,
    /// `ManifestPiece::decode`.
    ManifestPiece,
    /// `ArchiveShard::decode`.
    ArchiveShard,
    /// `meta::parse_node_doc`: the parser and validator of a client's `zarr.json`.
    Zarr,
}

impl Target {
    fn key(self) -> &'static str {
        match self {
            Target::Change | Target::ChangeUnverified => {
                "fuzz/.crdt/ops/fuzzed-01ARZ3NDEKTSV4RRFFQ69G5FAV-1.change"
            }
            Target::SnapshotMeta => "fuzz/.crdt/snapshots/00000000000000000002-fuzzed.snap",
            Target::ManifestPiece => "fuzz/.crdt/manifests/fuzzed",
            Target::ArchiveShard => "fuzz/.crdt/archive/fuzzed",
            Target::Zarr => "fuzzed/array/zarr.json",
        }
    }

    /// Error kinds this decoder may return.
    fn allowed(self, e: &Error) -> bool {
        match self {
            Target::Zarr => matches!(e, Error::InvalidMetadata { .. }),
            _ => matches!(
                e,
                Error::Corrupt { .. } | Error::UnsupportedVersion { .. } | Error::TooLarge { .. }
            ),
        }
    }
}

/// What one decode gave: `Ok` with a re-encoding that must equal the input (`None` when
/// the property was checked otherwise), or the error.
type Outcome = Result<Option<Vec<u8>>, Error>;

/// Runs one decoder. `claim` is the hash to pass where the decoder checks one (`None`:
/// the hash of the input itself).
fn decode(target: Target, key: &str, bytes: &[u8], claim: Option<[u8; 32]>) -> Outcome {
    let change_hash = || claim.map_or_else(|| ChangeHash::of(bytes), ChangeHash);
    let object_hash = || claim.map_or_else(|| ObjectHash::of(bytes), ObjectHash);
    match target {
        Target::Change => Change::decode(key, bytes, &change_hash()).map(|c| Some(c.encode())),
        Target::ChangeUnverified => Change::decode_unverified(key, bytes).map(|c| Some(c.encode())),
        Target::SnapshotMeta => {
            SnapshotMeta::decode(key, bytes, &object_hash()).map(|m| Some(m.encode()))
        }
        Target::ManifestPiece => {
            ManifestPiece::decode(key, bytes, &object_hash()).map(|p| Some(p.encode()))
        }
        Target::ArchiveShard => {
            ArchiveShard::decode(key, bytes, &object_hash()).map(|s| Some(s.encode()))
        }
        Target::Zarr => {
            let doc = parse_node_doc(key, bytes)?;
            // Canonical form: the rendering of what was parsed parses to the same document.
            let rendered = match &doc {
                NodeDoc::Group { attributes } => render_group(attributes.clone()),
                NodeDoc::Array { meta, attributes } => {
                    meta.render(meta.shape(), attributes.clone())
                }
            };
            match parse_node_doc(key, &rendered) {
                Ok(again) if again == doc => Ok(None),
                other => panic!(
                    "rendered zarr.json does not parse back to the same document: {other:?}\nrendered: {}",
                    String::from_utf8_lossy(&rendered)
                ),
            }
        }
    }
}

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Corrupt { .. } => "Corrupt",
        Error::TooLarge { .. } => "TooLarge",
        Error::UnsupportedVersion { .. } => "UnsupportedVersion",
        Error::InvalidMetadata { .. } => "InvalidMetadata",
        Error::InvalidKey { .. } => "InvalidKey",
        _ => "other",
    }
}

fn strict() -> bool {
    std::env::var_os("CRZARR_FUZZ_STRICT").is_some_and(|v| v != "0")
}

/// The bound the brief asks for: at most 64 KiB or 16 times the input.
fn soft_bound(len: usize) -> usize {
    (64 << 10).max(16 * len)
}

/// The bound the code itself promises: `decode_refuses_length_bombs` (in
/// `tests/hostile_input.rs`) holds tiny bombs under 4 MiB, and `spec/format.md` §5 notes
/// decoded ops may take up to about 20 times their encoding.
fn hard_bound(len: usize) -> usize {
    (4 << 20) + 64 * len
}

/// Finding F1 (`change-ops-reservation-bomb.bin`, fixed): `deserialize_ops` reserved
/// `claimed * size_of::<Op>()` bytes for any op count up to `MAX_OPS` that the op list's
/// header claimed, before decoding any op: several hundred MB for a ~50-byte file. It
/// now reserves no more than the body's bytes could encode; this detects a regression.
fn is_op_reservation(target: Target, mem: &Mem) -> bool {
    matches!(target, Target::Change | Target::ChangeUnverified)
        && mem.largest > hard_bound(0)
        && mem.largest.is_multiple_of(std::mem::size_of::<Op>())
        && mem.largest <= MAX_OPS * std::mem::size_of::<Op>()
}

#[derive(Default)]
struct Stats {
    execs: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    over_soft: u64,
    worst_soft: Option<(usize, usize, Vec<u8>)>,
    op_reservation: u64,
    worst_reservation: Option<(usize, Vec<u8>)>,
}

/// One execution with every property checked; panics (fails the test) on a violation.
fn check_one(target: Target, input: &[u8], claim: Option<[u8; 32]>, stats: &mut Stats) {
    let key = target.key();
    let (res, mem) =
        measure(|| catch_unwind(AssertUnwindSafe(|| decode(target, key, input, claim))));
    stats.execs += 1;
    let outcome = match res {
        Ok(o) => o,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "{target:?} panicked ({msg}) on input ({} bytes, claim {:?}):\n{}",
                input.len(),
                claim.map(|c| hex(&c)),
                hex(input)
            );
        }
    };
    match outcome {
        Ok(reencoded) => {
            stats.ok += 1;
            if let Some(again) = reencoded {
                assert_eq!(
                    hex(&again),
                    hex(input),
                    "{target:?} accepted a non-canonical input (left: re-encoding, right: input)"
                );
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                target.allowed(&e),
                "{target:?}: unexpected error kind {e:?} for input {}",
                hex(input)
            );
            assert!(
                msg.contains(key),
                "{target:?}: error does not name the key {key:?}: {msg}\ninput: {}",
                hex(input)
            );
            // Tally by kind and the first words of the reason, digits and details cut.
            let reason = msg.find(key).map_or(&msg[..], |i| &msg[i + key.len()..]);
            let mut parts = reason.trim_start_matches(['"', ':', ' ']).split(": ");
            let mut short: String = parts
                .next()
                .unwrap_or("")
                .split(['(', '`'])
                .take(1)
                .collect();
            if let Some(detail) = parts.next().filter(|_| {
                ["op ", "malformed", "not JSON", "invalid"]
                    .iter()
                    .any(|p| short.starts_with(p))
            }) {
                short.push_str(": ");
                short.extend(detail.split(['(', '`', '"', ',']).take(1));
            }
            // Numbers vary from input to input: each run of digits counts as one `N`.
            let mut collapsed = String::new();
            let mut in_number = false;
            for c in short.chars().take(64) {
                if !c.is_ascii_digit() {
                    collapsed.push(c);
                } else if !in_number {
                    collapsed.push('N');
                }
                in_number = c.is_ascii_digit();
            }
            let short = collapsed;
            *stats
                .errors
                .entry(format!("{} {}", error_kind(&e), short.trim()))
                .or_default() += 1;
        }
    }
    check_alloc(target, input, &mem, stats);
}

fn check_alloc(target: Target, input: &[u8], mem: &Mem, stats: &mut Stats) {
    if mem.peak > hard_bound(input.len()) {
        if is_op_reservation(target, mem) && !strict() {
            stats.op_reservation += 1;
            if stats
                .worst_reservation
                .as_ref()
                .is_none_or(|w| w.0 < mem.peak)
            {
                stats.worst_reservation = Some((mem.peak, input.to_vec()));
            }
            return;
        }
        panic!(
            "{target:?}: decoding {} bytes allocated {} bytes at peak (largest block {}), over {}:\n{}",
            input.len(),
            mem.peak,
            mem.largest,
            hard_bound(input.len()),
            hex(input)
        );
    }
    if mem.peak > soft_bound(input.len()) {
        if strict() {
            panic!(
                "{target:?}: decoding {} bytes allocated {} bytes at peak, over {}:\n{}",
                input.len(),
                mem.peak,
                soft_bound(input.len()),
                hex(input)
            );
        }
        stats.over_soft += 1;
        let ratio = mem.peak / input.len().max(1);
        if stats
            .worst_soft
            .as_ref()
            .is_none_or(|w| w.0 / w.1.max(1) < ratio)
        {
            stats.worst_soft = Some((mem.peak, input.len(), input.to_vec()));
        }
    }
}

fn execs() -> u64 {
    std::env::var("CRZARR_FUZZ_EXECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_EXECS)
}

fn fuzz(target: Target) {
    let seeds = seeds_for(target);
    let real = real_objects().get(seed_kind(target)).map_or(0, Vec::len);
    assert!(
        real > 0,
        "{target:?}: the real repository wrote no object of this kind"
    );
    println!(
        "{target:?}: {} seeds ({real} from a real repository, the rest from the corpus)",
        seeds.len()
    );
    // Seeds first, unmutated: valid ones must decode Ok, hostile ones must fail cleanly.
    let mut stats = Stats::default();
    for s in &seeds {
        check_one(target, s, None, &mut stats);
    }
    let base: u64 = std::env::var("CRZARR_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = Rng::new(base ^ (target as u64 + 1).wrapping_mul(0x1000_0000_01b3));
    let n = execs();
    let start = Instant::now();
    for _ in 0..n {
        let a = &seeds[rng.below(seeds.len())];
        let b = &seeds[rng.below(seeds.len())];
        let mut input = a.clone();
        for _ in 0..1 + rng.below(4) {
            mutate_once(&mut rng, &mut input, b);
        }
        // Now and then a hash that does not match, for the verifying decoders.
        let claim = (target != Target::Zarr && rng.chance(16)).then(|| *blake3::hash(a).as_bytes());
        check_one(target, &input, claim, &mut stats);
    }
    let took = start.elapsed();
    println!(
        "{target:?}: {} executions ({} seeds + {n} mutated) in {took:.2?} ({:.0}/s); {} Ok",
        stats.execs,
        seeds.len(),
        n as f64 / took.as_secs_f64().max(1e-9),
        stats.ok
    );
    for (what, count) in &stats.errors {
        println!("    {count:>6}  {what}");
    }
    if let Some((peak, len, input)) = &stats.worst_soft {
        println!(
            "  note: {} inputs over max(64 KiB, 16 x len); worst {len} bytes -> {peak} bytes peak: {}",
            stats.over_soft,
            hex(&input[..input.len().min(96)])
        );
    }
    if let Some((peak, input)) = &stats.worst_reservation {
        println!(
            "  FINDING F1 (op-list reservation): {} inputs; worst {} bytes -> {peak} bytes reserved: {}",
            stats.op_reservation,
            input.len(),
            hex(&input[..input.len().min(96)])
        );
    }
    assert!(stats.ok > 0, "{target:?}: not one input decoded Ok");
    assert_eq!(
        stats.op_reservation, 0,
        "{target:?}: finding F1 regressed: an op-list header claim was reserved in full"
    );
}

#[test]
fn fuzz_change_decode() {
    fuzz(Target::Change);
}

#[test]
fn fuzz_change_decode_unverified() {
    fuzz(Target::ChangeUnverified);
}

#[test]
fn fuzz_snapshot_meta_decode() {
    fuzz(Target::SnapshotMeta);
}

#[test]
fn fuzz_manifest_piece_decode() {
    fuzz(Target::ManifestPiece);
}

#[test]
fn fuzz_archive_shard_decode() {
    fuzz(Target::ArchiveShard);
}

#[test]
fn fuzz_zarr_metadata_parse() {
    fuzz(Target::Zarr);
}

// ---------------------------------------------------------------------------------
// Seeds: real objects made through the public API, plus the hostile corpus.

/// Objects of a real repository: changes committed by a `Repo` on `InMemory` and the
/// snapshot objects two compactions wrote, read back from the bucket, by kind.
fn real_objects() -> &'static BTreeMap<&'static str, Vec<Vec<u8>>> {
    static OBJECTS: OnceLock<BTreeMap<&'static str, Vec<Vec<u8>>>> = OnceLock::new();
    OBJECTS.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(build_real_objects())
    })
}

async fn build_real_objects() -> BTreeMap<&'static str, Vec<Vec<u8>>> {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let mut repo = Repo::init(store.clone(), "fuzz").await.expect("init");
    let mut s = repo.session();
    let mut attrs = serde_json::Map::new();
    attrs.insert("title".into(), json!("fuzz seed"));
    s.create_group("", attrs).expect("group");
    s.set(
        "temp/zarr.json",
        array_doc(json!({"units": "K"})).to_string(),
    )
    .expect("array");
    s.set("temp/c/0/0", vec![1u8, 2, 3, 4]).expect("chunk");
    s.set("temp/c/1/0", vec![7u8; INLINE_MAX + 100])
        .expect("blob chunk");
    s.commit(&mut repo, Some("create temp"))
        .await
        .expect("commit");
    let mut s = repo.session();
    s.set_attr("temp", "scale", json!(0.5)).expect("attr");
    s.resize("temp", &[8, 4]).expect("resize");
    s.set("temp/c/3/1", vec![9u8; 8]).expect("chunk");
    s.create_group("g", Default::default()).expect("group");
    s.commit(&mut repo, None).await.expect("commit");
    // A change of chunk writes only: nothing in the snapshot metadata refers to it, so
    // once its file is collected the next compaction archives it.
    let mut s = repo.session();
    s.set("temp/c/2/0", vec![5u8; 4]).expect("chunk");
    s.commit(&mut repo, Some("chunks only"))
        .await
        .expect("commit");
    repo.compact().await.expect("compact");
    // Every object so far (gc removes the covered change files)...
    let mut out: BTreeMap<&'static str, BTreeSet<Vec<u8>>> = BTreeMap::new();
    collect_objects(&store, &mut out).await;
    // ...then a collection and a second compaction, which moves the covered changes whose
    // files are gone into coverage archive shards.
    let now = GcOptions {
        older_than: Duration::ZERO,
        dry_run: false,
        force: true,
    };
    repo.gc(&now).await.expect("gc");
    let mut s = repo.session();
    s.delete("temp/c/0/0").expect("delete chunk");
    s.delete_attr("temp", "scale").expect("delete attr");
    s.delete_prefix("g").expect("delete node");
    s.commit(&mut repo, Some("deletes")).await.expect("commit");
    repo.compact().await.expect("compact");
    collect_objects(&store, &mut out).await;
    // The `zarr.json` documents the view renders: what clients read, and write back.
    for key in ["zarr.json", "temp/zarr.json"] {
        let doc = repo
            .get(key)
            .await
            .expect("get")
            .expect("rendered zarr.json");
        out.entry("zarr").or_default().insert(doc.to_vec());
    }
    out.into_iter()
        .map(|(k, v)| (k, v.into_iter().collect()))
        .collect()
}

/// Adds every change file and snapshot object in the bucket to `out`, by kind.
async fn collect_objects(
    store: &Arc<dyn ObjectStore>,
    out: &mut BTreeMap<&'static str, BTreeSet<Vec<u8>>>,
) {
    let listed: Vec<_> = futures::TryStreamExt::try_collect(store.list(None))
        .await
        .expect("list");
    for meta in listed {
        let key = meta.location.to_string();
        let kind = if key.contains("/.crdt/ops/") {
            "change"
        } else if key.contains("/.crdt/snapshots/") && key.ends_with(".snap") {
            "snapshot"
        } else if key.contains("/.crdt/manifests/") {
            "piece"
        } else if key.contains("/.crdt/archive/") {
            "shard"
        } else {
            continue;
        };
        let bytes = store
            .get(&meta.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        out.entry(kind).or_default().insert(bytes.to_vec());
    }
}

fn seed_kind(target: Target) -> &'static str {
    match target {
        Target::Change | Target::ChangeUnverified => "change",
        Target::SnapshotMeta => "snapshot",
        Target::ManifestPiece => "piece",
        Target::ArchiveShard => "shard",
        Target::Zarr => "zarr",
    }
}

fn seeds_for(target: Target) -> Vec<Vec<u8>> {
    let kind = seed_kind(target);
    let mut seeds: Vec<Vec<u8>> = real_objects().get(kind).cloned().unwrap_or_default();
    if target == Target::Zarr {
        seeds.push(
            array_doc(json!({"units": "K", "nested": {"a": [1, 2.5, null]}}))
                .to_string()
                .into_bytes(),
        );
        seeds.push(render_group(serde_json::Map::new()));
    }
    // The hostile corpus, as checked in (the generator if the directory is missing).
    let prefix = match kind {
        "change" => "change-",
        "snapshot" => "snapshot-",
        "piece" => "piece-",
        "shard" => "shard-",
        _ => "zarr-",
    };
    let files = read_corpus().unwrap_or_else(|| {
        corpus()
            .into_iter()
            .map(|c| (c.name.to_string(), c.bytes))
            .collect()
    });
    seeds.extend(
        files
            .into_iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, b)| b),
    );
    seeds
}

// ---------------------------------------------------------------------------------
// The hostile corpus: generated once by `corpus`, checked into `tests/hostile/`.

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/hostile")
}

fn read_corpus() -> Option<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(corpus_dir()).ok()? {
        let entry = entry.ok()?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".bin") || name.ends_with(".json") {
            files.push((name, std::fs::read(entry.path()).ok()?));
        }
    }
    files.sort();
    Some(files)
}

/// How a corpus file is decoded.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// `Change::decode` with the hash of the file itself.
    Change,
    /// `Change::decode` claiming the hash of the named corpus file.
    ChangeClaiming(&'static str),
    /// `SnapshotMeta::decode` with the hash of the file.
    Snapshot,
    /// `SnapshotMeta::decode` claiming the hash of the named corpus file.
    SnapshotClaiming(&'static str),
    /// `ManifestPiece::decode`.
    Piece,
    /// `ArchiveShard::decode`.
    Shard,
    /// `meta::parse_node_doc` for `fuzzed/array/zarr.json`.
    Zarr,
    /// `WriteSession::set` of the document at this store key.
    SessionSet(&'static str),
}

/// What decoding a corpus file must give.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Decodes.
    Ok,
    /// This error kind, with a message containing this text.
    Err(&'static str, &'static str),
}

struct CorpusFile {
    name: &'static str,
    bytes: Vec<u8>,
    via: Via,
    expect: Expect,
}

fn repo_id() -> RepoId {
    RepoId(Ulid(0x0180_0000_0000_0000_0000_0000_0000_0001))
}

fn actor() -> ActorId {
    ActorId(Ulid(0x0180_0000_0000_0000_0000_0000_0000_0002))
}

fn array_doc(attributes: serde_json::Value) -> serde_json::Value {
    json!({
        "zarr_format": 3, "node_type": "array", "shape": [4, 4], "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 2]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0, "codecs": [{"name": "bytes"}],
        "attributes": attributes
    })
}

/// Stored array metadata: canonical JSON without attributes.
fn stored_meta() -> String {
    let mut doc = array_doc(json!({}));
    doc.as_object_mut().map(|o| o.remove("attributes"));
    canonical_json(&doc)
}

/// A chunk write adopting an object in place (change format 2).
fn object_op(key: &str) -> Op {
    Op::SetObject {
        key: key.into(),
        data: ChunkData::Inline(b"notes".to_vec()),
        observed: vec![],
    }
}

fn reference_op(key: &str) -> Op {
    Op::SetChunk {
        node: OpRef::Local(0),
        key: key.into(),
        data: ChunkData::Reference(crzarr::format::change::ChunkReference {
            source: "s3://archive/sst".into(),
            key: format!("x/{key}"),
            size: 4096,
            etag: Some("\"9b2cf535f27731c974343645a3985328\"".into()),
            modified_ms: 1_700_000_000_000,
        }),
        observed: vec![],
    }
}

fn valid_change() -> Change {
    let earlier = ChangeHash([4; 32]);
    Change {
        repo: repo_id(),
        actor: actor(),
        seq: 3,
        deps: vec![ChangeHash([3; 32]), earlier],
        hlc: Hlc(1_700_000_000_000 << 16),
        wall_ms: 1_700_000_000_000,
        message: Some("hand-made valid change".into()),
        ops: vec![
            Op::CreateArray {
                path: "x".into(),
                metadata: stored_meta(),
                attributes: vec![("units".into(), "\"K\"".into())],
            },
            Op::SetChunk {
                node: OpRef::Local(0),
                key: "c/0/0".into(),
                data: ChunkData::Inline(vec![1, 2, 3, 4]),
                observed: vec![],
            },
            Op::SetChunk {
                node: OpRef::Local(0),
                key: "c/1/1".into(),
                data: ChunkData::Blob {
                    hash: BlobHash([5; 32]),
                    len: 5000,
                },
                observed: vec![OpRef::Change(earlier, 1)],
            },
            Op::SetAttr {
                node: OpRef::Change(earlier, 0),
                key: "scale".into(),
                value: "0.5".into(),
                observed: vec![OpRef::Local(1)],
            },
            Op::DeleteAttr {
                node: OpRef::Local(0),
                key: "units".into(),
                observed: vec![],
            },
            Op::Resize {
                node: OpRef::Local(0),
                dims: vec![DimSize {
                    dim: 0,
                    size: 8,
                    observed: vec![],
                }],
            },
            Op::DeleteChunk {
                node: OpRef::Change(earlier, 0),
                key: "c/0/1".into(),
                observed: vec![OpRef::Change(earlier, 2)],
            },
            Op::CreateGroup {
                path: "g".into(),
                attributes: vec![("a".into(), "[1,2]".into())],
            },
            Op::DeleteNode {
                path: "old".into(),
                incarnations: vec![OpRef::Change(earlier, 3)],
            },
        ],
    }
}

/// A change file header (magic, version, the fields before `ops`), written by hand, so
/// that the op list (or a field before it) can be anything.
fn change_header(deps: &[u8], message: &[u8]) -> Vec<u8> {
    let mut b = CHANGE_MAGIC.to_vec();
    b.push(CHANGE_VERSION_PLAIN);
    b.push(0x98);
    b.extend([0xc4, 16]);
    b.extend(repo_id().0.to_bytes());
    b.extend([0xc4, 16]);
    b.extend(actor().0.to_bytes());
    b.push(0x01); // seq
    b.extend_from_slice(deps);
    b.extend([0x01, 0x01]); // hlc, wall_ms
    b.extend_from_slice(message);
    b
}

fn covered(h: u8, seq: u64) -> CoveredChange {
    CoveredChange {
        hash: ChangeHash([h; 32]),
        actor: actor(),
        seq,
        hlc: Hlc(100 + seq),
        ops: 3,
    }
}

/// Two object registers: a blob and a tombstone.
fn snapshot_objects() -> Vec<crzarr::format::snapshot::ObjectRegister> {
    vec![
        (
            "a/b".into(),
            vec![(
                (0, 1),
                SnapChunk::Blob {
                    hash: crzarr::format::ids::BlobHash([0x44; 32]),
                    len: 5000,
                },
            )],
        ),
        ("notes".into(), vec![((1, 0), SnapChunk::Deleted)]),
    ]
}

fn valid_snapshot() -> SnapshotMeta {
    let mut archive = vec![None; 16];
    archive[3] = Some(ObjectHash([0x33; 32]));
    SnapshotMeta {
        repo: repo_id(),
        covered: 3,
        max_hlc: Hlc(102),
        heads: vec![ChangeHash([0x20; 32])],
        changes: vec![covered(0x10, 1), covered(0x20, 2)],
        nodes: vec![
            SnapNode {
                stamp: (0, 0),
                path: String::new(),
                kind: SnapKind::Group,
                deleted: false,
                attrs: vec![("title".into(), vec![((0, 0), Some("\"t\"".into()))])],
                dims: vec![],
                pieces: vec![],
                fields: vec![],
            },
            SnapNode {
                stamp: (0, 1),
                path: "x".into(),
                kind: SnapKind::Array(stored_meta()),
                deleted: false,
                attrs: vec![(
                    "units".into(),
                    vec![((1, 0), None), ((1, 1), Some("1".into()))],
                )],
                dims: vec![Some(vec![((1, 2), 8)]), None],
                fields: vec![],
                pieces: vec![PieceRef {
                    first: vec![],
                    hash: ObjectHash([0x44; 32]),
                    keys: 2,
                    bytes: 120,
                    first_key: String::new(),
                }],
            },
        ],
        superseded: vec![Superseded {
            path: "x".into(),
            reg: RegKey::Chunk("c/0/0".into()),
            entry: (ChangeHash([0x30; 32]), 1),
        }],
        archive,
        forks: vec![SnapFork {
            actor: actor(),
            seq: 2,
            changes: vec![ChangeHash([0x20; 32]), ChangeHash([0x21; 32])],
        }],
        supersedes: vec!["00000000000000000001-aa.snap".into()],
        written_ms: 1_700_000_000_000,
        objects: Vec::new(),
    }
}

fn valid_piece() -> ManifestPiece {
    ManifestPiece {
        changes: vec![covered(0x10, 1), covered(0x20, 2)],
        entries: vec![
            (
                "c/0/0".into(),
                vec![((0, 1), SnapChunk::Inline(vec![1, 2]))],
            ),
            (
                "c/0/1".into(),
                vec![
                    ((0, 2), SnapChunk::Deleted),
                    (
                        (1, 0),
                        SnapChunk::Blob {
                            hash: BlobHash([6; 32]),
                            len: 9000,
                        },
                    ),
                ],
            ),
        ],
    }
}

/// The hostile corpus and the exact outcome of each file.
fn corpus() -> Vec<CorpusFile> {
    use Expect::{Err, Ok};
    let file = |name, bytes, via, expect| CorpusFile {
        name,
        bytes,
        via,
        expect,
    };
    let valid = valid_change().encode();
    let one_dep = [&[0x91, 0xc4, 0x20][..], &[3; 32]].concat();
    let msg = [0xa1, b'm'];
    let with = |f: &dyn Fn(&mut Change)| {
        let mut c = valid_change();
        f(&mut c);
        c.encode()
    };
    let snap = valid_snapshot().encode();
    let snap_with = |f: &dyn Fn(&mut SnapshotMeta)| {
        let mut m = valid_snapshot();
        f(&mut m);
        m.encode()
    };
    let piece_with = |f: &dyn Fn(&mut ManifestPiece)| {
        let mut p = valid_piece();
        f(&mut p);
        p.encode()
    };
    let shard = ArchiveShard {
        changes: vec![covered(0x01, 1), covered(0x02, 2), covered(0x0f, 3)],
    };
    let zarr = |v: serde_json::Value| v.to_string().into_bytes();
    let zarr_with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = array_doc(json!({"units": "K"}));
        f(&mut v);
        v.to_string().into_bytes()
    };

    let mut files = vec![
        // ---- change files
        file("change-valid.bin", valid.clone(), Via::Change, Ok),
        file(
            "change-wrong-hash.bin",
            {
                let mut b = valid.clone();
                let last = b.len() - 1;
                b[last] ^= 1;
                b
            },
            Via::ChangeClaiming("change-valid.bin"),
            Err("Corrupt", "content does not match the hash in its name"),
        ),
        file(
            "change-empty.bin",
            vec![],
            Via::Change,
            Err("Corrupt", "not a crzarr change file (bad magic)"),
        ),
        file(
            "change-bad-magic.bin",
            [b"CRZS", &valid[4..]].concat(),
            Via::Change,
            Err("Corrupt", "not a crzarr change file (bad magic)"),
        ),
        file(
            "change-unknown-version.bin",
            [&valid[..4], &[5], &valid[5..]].concat(),
            Via::Change,
            Err("UnsupportedVersion", "format version 5 is not supported"),
        ),
        file(
            "change-version-4-without-field-op.bin",
            [&valid[..4], &[4], &valid[5..]].concat(),
            Via::Change,
            Err(
                "Corrupt",
                "format version 4 for a change that is written as version 1",
            ),
        ),
        file(
            "change-version-2-without-reference.bin",
            [&valid[..4], &[2], &valid[5..]].concat(),
            Via::Change,
            Err(
                "Corrupt",
                "format version 2 for a change that is written as version 1",
            ),
        ),
        file(
            "change-valid-reference.bin",
            with(&|c| c.ops.push(reference_op("c/2/2"))),
            Via::Change,
            Ok,
        ),
        file(
            "change-reference-as-version-1.bin",
            {
                let mut b = with(&|c| c.ops.push(reference_op("c/2/2")));
                b[4] = 1;
                b
            },
            Via::Change,
            Err(
                "Corrupt",
                "format version 1 for a change that is written as version 2",
            ),
        ),
        file(
            "change-valid-object.bin",
            with(&|c| c.ops.push(object_op("notes/readme.txt"))),
            Via::Change,
            Ok,
        ),
        file(
            "change-object-as-version-2.bin",
            {
                let mut b = with(&|c| c.ops.push(object_op("notes/readme.txt")));
                b[4] = 2;
                b
            },
            Via::Change,
            Err(
                "Corrupt",
                "format version 2 for a change that is written as version 3",
            ),
        ),
        file(
            "change-object-metadata-key.bin",
            with(&|c| c.ops.push(object_op("x/zarr.json"))),
            Via::Change,
            Err(
                "Corrupt",
                "`zarr.json` is node metadata, not an object key segment",
            ),
        ),
        file(
            "change-reference-traversal.bin",
            with(&|c| {
                let mut op = reference_op("c/2/2");
                if let Op::SetChunk {
                    data: ChunkData::Reference(r),
                    ..
                } = &mut op
                {
                    r.key = "x/../../etc/passwd".into();
                }
                c.ops.push(op)
            }),
            Via::Change,
            Err("Corrupt", "is not a plain key"),
        ),
        file(
            "change-huge-count.bin",
            [
                &change_header(&one_dep, &msg)[..],
                &[0xdd],
                &(MAX_OPS as u32 + 1).to_be_bytes(),
            ]
            .concat(),
            Via::Change,
            Err("Corrupt", "4000001 ops exceeds the limit of 4000000"),
        ),
        file(
            "change-ops-reservation-bomb.bin",
            [
                &change_header(&one_dep, &msg)[..],
                &[0xdd],
                &(MAX_OPS as u32).to_be_bytes(),
            ]
            .concat(),
            Via::Change,
            Err("Corrupt", "malformed change"),
        ),
        file(
            "change-length-bomb-deps.bin",
            [
                &change_header(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc4, 0x20], &[])[..],
                &[3; 32],
            ]
            .concat(),
            Via::Change,
            Err("Corrupt", "malformed change"),
        ),
        file(
            "change-length-bomb-message.bin",
            [
                &change_header(&one_dep, &[0xdb, 0xff, 0xff, 0xff, 0xff])[..],
                b"m",
            ]
            .concat(),
            Via::Change,
            Err("Corrupt", "malformed change"),
        ),
        file(
            "change-length-bomb-inline.bin",
            [
                &change_header(&one_dep, &msg)[..],
                // [{"sc": [{"l": 0}, "c/0", {"i": bin32 4 GiB}, []]}]
                &[
                    0x91, 0x81, 0xa2, b's', b'c', 0x94, 0x81, 0xa1, b'l', 0x00, 0xa3, b'c', b'/',
                    b'0',
                ],
                &[0x81, 0xa1, b'i', 0xc6, 0xff, 0xff, 0xff, 0xff, 0x01],
            ]
            .concat(),
            Via::Change,
            Err("Corrupt", "malformed change"),
        ),
        file(
            "change-deep-nesting.bin",
            [&change_header(&one_dep, &msg)[..], &[0x91; 4096]].concat(),
            Via::Change,
            Err("Corrupt", "malformed change"),
        ),
        file(
            "change-trailing-bytes.bin",
            [&valid[..], &[0xc0]].concat(),
            Via::Change,
            Err("Corrupt", "non-canonical encoding or trailing bytes"),
        ),
        file(
            "change-non-canonical-int.bin",
            {
                // seq 3 (positive fixint at offset 42) written as uint8.
                assert_eq!(valid[42], 0x03);
                [&valid[..42], &[0xcc, 0x03], &valid[43..]].concat()
            },
            Via::Change,
            Err("Corrupt", "non-canonical encoding or trailing bytes"),
        ),
        file(
            "change-seq-zero.bin",
            with(&|c| c.seq = 0),
            Via::Change,
            Err("Corrupt", "seq must start at 1"),
        ),
        file(
            "change-unsorted-deps.bin",
            with(&|c| c.deps.reverse()),
            Via::Change,
            Err("Corrupt", "deps must be ascending and unique"),
        ),
        file(
            "change-traversal-key.bin",
            with(&|c| {
                c.ops[1] = Op::SetChunk {
                    node: OpRef::Local(0),
                    key: "c/../../../etc/passwd".into(),
                    data: ChunkData::Inline(vec![1]),
                    observed: vec![],
                }
            }),
            Via::Change,
            Err(
                "Corrupt",
                "op 1: invalid key \"c/../../../etc/passwd\": `.` and `..`",
            ),
        ),
        file(
            "change-local-ref-to-later-op.bin",
            with(&|c| {
                c.ops[4] = Op::DeleteAttr {
                    node: OpRef::Local(0),
                    key: "units".into(),
                    observed: vec![OpRef::Local(7)],
                }
            }),
            Via::Change,
            Err("Corrupt", "op 4: local reference to a later op"),
        ),
        file(
            "change-inline-over-limit.bin",
            with(&|c| {
                c.ops[1] = Op::SetChunk {
                    node: OpRef::Local(0),
                    key: "c/0/0".into(),
                    data: ChunkData::Inline(vec![0; INLINE_MAX + 1]),
                    observed: vec![],
                }
            }),
            Via::Change,
            Err("Corrupt", "op 1: inline chunk larger than the inline limit"),
        ),
        file(
            "change-invalid-array-metadata.bin",
            with(&|c| {
                c.ops[0] = Op::CreateArray {
                    path: "x".into(),
                    metadata: stored_meta().replace("\"codecs\"", "\"codex\""),
                    attributes: vec![],
                }
            }),
            Via::Change,
            Err("Corrupt", "op 0: unknown field `codex`"),
        ),
        // ---- snapshot metadata
        file("snapshot-valid.bin", snap.clone(), Via::Snapshot, Ok),
        file(
            "snapshot-valid-objects.bin",
            snap_with(&|m| m.objects = snapshot_objects()),
            Via::Snapshot,
            Ok,
        ),
        file(
            "snapshot-objects-as-version-1.bin",
            {
                let mut b = snap_with(&|m| m.objects = snapshot_objects());
                b[4] = 1;
                b
            },
            Via::Snapshot,
            Err(
                "Corrupt",
                "format version 1 for a snapshot that is written as version 2",
            ),
        ),
        file(
            "snapshot-objects-unsorted.bin",
            snap_with(&|m| {
                m.objects = snapshot_objects();
                m.objects.reverse();
            }),
            Via::Snapshot,
            Err("Corrupt", "objects not sorted by key"),
        ),
        file(
            "snapshot-wrong-hash.bin",
            {
                let mut b = snap.clone();
                let last = b.len() - 1;
                b[last] ^= 1;
                b
            },
            Via::SnapshotClaiming("snapshot-valid.bin"),
            Err("Corrupt", "snapshot content does not match its hash"),
        ),
        file(
            "snapshot-unknown-version.bin",
            [&snap[..4], &[7], &snap[5..]].concat(),
            Via::Snapshot,
            Err("UnsupportedVersion", "format version 7 is not supported"),
        ),
        file(
            "snapshot-length-bomb.bin",
            [
                &b"CRZS\x01\x9b\xc4\x10"[..],
                &repo_id().0.to_bytes(),
                // covered 2, max_hlc 10, heads [], changes [], nodes: 4G claimed
                &[0x02, 0x0a, 0x90, 0x90, 0xdd, 0xff, 0xff, 0xff, 0xff, 0x97],
            ]
            .concat(),
            Via::Snapshot,
            Err("Corrupt", "malformed snapshot"),
        ),
        file(
            "snapshot-nested-length-bombs.bin",
            [
                &b"CRZS\x01\x9b\xc4\x10"[..],
                &repo_id().0.to_bytes(),
                &[0x02, 0x0a, 0x90, 0x90],
                // nodes: 4G claimed; node 0 = [stamp, "", "g", false, attrs...]
                &[
                    0xdd, 0xff, 0xff, 0xff, 0xff, 0x97, 0x92, 0x00, 0x00, 0xa0, 0xa1, b'g', 0xc2,
                ],
                // attrs: 4G claimed; attr 0 = ["a", register: 4G claimed, entry 0, then EOF]
                &[0xdd, 0xff, 0xff, 0xff, 0xff, 0x92, 0xa1, b'a'],
                &[0xdd, 0xff, 0xff, 0xff, 0xff, 0x92, 0x92, 0x00, 0x00, 0xc0],
            ]
            .concat(),
            Via::Snapshot,
            Err("Corrupt", "malformed snapshot"),
        ),
        file(
            "snapshot-unsorted-heads.bin",
            snap_with(&|m| m.heads = vec![ChangeHash([0x20; 32]), ChangeHash([0x10; 32])]),
            Via::Snapshot,
            Err("Corrupt", "heads not sorted"),
        ),
        file(
            "snapshot-unsorted-nodes.bin",
            snap_with(&|m| m.nodes.reverse()),
            Via::Snapshot,
            Err("Corrupt", "nodes not sorted by path and stamp"),
        ),
        file(
            "snapshot-wrong-shard-count.bin",
            snap_with(&|m| m.archive.truncate(3)),
            Via::Snapshot,
            Err("Corrupt", "archive has 3 shards, not 16"),
        ),
        file(
            "snapshot-stamp-out-of-range.bin",
            snap_with(&|m| m.nodes[1].attrs[0].1[0].0 = (2, 0)),
            Via::Snapshot,
            Err("Corrupt", "node \"x\": stamp out of range"),
        ),
        file(
            "snapshot-empty-register.bin",
            snap_with(&|m| m.nodes[0].attrs[0].1.clear()),
            Via::Snapshot,
            Err("Corrupt", "node \"\": empty register"),
        ),
        file(
            "snapshot-unsorted-table.bin",
            snap_with(&|m| m.changes.reverse()),
            Via::Snapshot,
            Err("Corrupt", "change table not sorted by hash"),
        ),
        file(
            "snapshot-head-missing.bin",
            snap_with(&|m| m.heads = vec![ChangeHash([0x99; 32])]),
            Via::Snapshot,
            Err("Corrupt", "a head is missing from the change table"),
        ),
        // ---- manifest pieces
        file("piece-valid.bin", valid_piece().encode(), Via::Piece, Ok),
        file(
            "piece-length-bomb.bin",
            b"CRZM\x01\x92\xdd\xff\xff\xff\xff\x95".to_vec(),
            Via::Piece,
            Err("Corrupt", "malformed manifest piece"),
        ),
        file(
            "piece-stamp-out-of-range.bin",
            piece_with(&|p| p.entries[0].1[0].0 = (5, 0)),
            Via::Piece,
            Err("Corrupt", "manifest entry with a bad stamp or no value"),
        ),
        file(
            "piece-empty-register.bin",
            piece_with(&|p| p.entries[1].1.clear()),
            Via::Piece,
            Err("Corrupt", "manifest entry with a bad stamp or no value"),
        ),
        file(
            "piece-bad-magic.bin",
            [b"CRZA", &valid_piece().encode()[4..]].concat(),
            Via::Piece,
            Err("Corrupt", "not a crzarr manifest piece (bad magic)"),
        ),
        file(
            "piece-unsorted.bin",
            piece_with(&|p| {
                p.changes.reverse();
                p.entries.reverse();
            }),
            Via::Piece,
            Err("Corrupt", "manifest piece change table not sorted by hash"),
        ),
        file(
            "piece-duplicate-key.bin",
            piece_with(&|p| p.entries[1].0 = "c/0/0".into()),
            Via::Piece,
            Err("Corrupt", "manifest piece holds chunk key \"c/0/0\" twice"),
        ),
        // ---- archive shards
        file("shard-valid.bin", shard.encode(), Via::Shard, Ok),
        file(
            "shard-unsorted.bin",
            ArchiveShard {
                changes: shard.changes.iter().rev().copied().collect(),
            }
            .encode(),
            Via::Shard,
            Err("Corrupt", "archive shard not sorted by hash"),
        ),
        file(
            "shard-length-bomb.bin",
            b"CRZA\x01\x91\xdd\xff\xff\xff\xff\x95".to_vec(),
            Via::Shard,
            Err("Corrupt", "malformed archive shard"),
        ),
        file(
            "shard-truncated.bin",
            shard.encode()[..40].to_vec(),
            Via::Shard,
            Err("Corrupt", "malformed archive shard"),
        ),
        // ---- zarr.json
        file(
            "zarr-valid-array.json",
            zarr(array_doc(json!({"units": "K"}))),
            Via::Zarr,
            Ok,
        ),
        file(
            "zarr-valid-group.json",
            zarr(
                json!({"zarr_format": 3, "node_type": "group", "attributes": {"a": 1},
                "consolidated_metadata": null}),
            ),
            Via::Zarr,
            Ok,
        ),
        file(
            "zarr-traversal-key.json",
            zarr(array_doc(json!({}))),
            Via::SessionSet("a/../../b/zarr.json"),
            Err("InvalidKey", "`.` and `..` segments are not allowed"),
        ),
        file(
            "zarr-unknown-field-must-understand.json",
            zarr_with(&|v| v["ext"] = json!({"must_understand": true, "x": 1})),
            Via::Zarr,
            Err(
                "InvalidMetadata",
                "unknown field `ext` without `\"must_understand\": false`",
            ),
        ),
        file(
            "zarr-unknown-field-ignorable.json",
            zarr_with(&|v| v["ext"] = json!({"must_understand": false})),
            Via::Zarr,
            Ok,
        ),
        file(
            "zarr-wrong-format.json",
            zarr_with(&|v| v["zarr_format"] = json!(2)),
            Via::Zarr,
            Err("InvalidMetadata", "this is Zarr v2 metadata"),
        ),
        file(
            "zarr-missing-codecs.json",
            zarr_with(&|v| {
                v.as_object_mut().map(|o| o.remove("codecs"));
            }),
            Via::Zarr,
            Err("InvalidMetadata", "missing required field `codecs`"),
        ),
        file(
            "zarr-negative-shape.json",
            zarr_with(&|v| v["shape"] = json!([4, -1])),
            Via::Zarr,
            Err(
                "InvalidMetadata",
                "`shape` entries must be non-negative integers",
            ),
        ),
        file(
            "zarr-too-many-dims.json",
            zarr_with(&|v| v["shape"] = json!(vec![1; 65])),
            Via::Zarr,
            Err("InvalidMetadata", "too many dimensions"),
        ),
        file(
            "zarr-dimension-names-mismatch.json",
            zarr_with(&|v| v["dimension_names"] = json!(["y"])),
            Via::Zarr,
            Err(
                "InvalidMetadata",
                "`dimension_names` must list one entry per dimension",
            ),
        ),
        file(
            "zarr-attributes-not-object.json",
            zarr_with(&|v| v["attributes"] = json!([1])),
            Via::Zarr,
            Err("InvalidMetadata", "`attributes` must be an object"),
        ),
        file(
            "zarr-bad-node-type.json",
            zarr_with(&|v| v["node_type"] = json!("folder")),
            Via::Zarr,
            Err(
                "InvalidMetadata",
                "`node_type` must be \"group\" or \"array\"",
            ),
        ),
        file(
            "zarr-not-object.json",
            b"[3, \"array\"]".to_vec(),
            Via::Zarr,
            Err("InvalidMetadata", "not a JSON object"),
        ),
        file(
            "zarr-deep-nesting.json",
            format!(
                "{{\"zarr_format\":3,\"node_type\":\"group\",\"attributes\":{{\"a\":{}{}}}}}",
                "[".repeat(4096),
                "]".repeat(4096)
            )
            .into_bytes(),
            Via::Zarr,
            Err("InvalidMetadata", "not JSON: recursion limit exceeded"),
        ),
        file(
            "zarr-truncated.json",
            zarr(array_doc(json!({})))[..60].to_vec(),
            Via::Zarr,
            Err("InvalidMetadata", "not JSON: EOF while parsing"),
        ),
    ];
    files.sort_by_key(|f| f.name);
    files
}

/// Every corpus file gives exactly the outcome in the table; the checked-in files are the
/// generator's output (`CRZARR_REGENERATE_CORPUS=1` rewrites them).
#[test]
fn hostile_corpus_gives_clear_errors() {
    let table = corpus();
    let dir = corpus_dir();
    if std::env::var_os("CRZARR_REGENERATE_CORPUS").is_some_and(|v| v != "0") {
        if dir.exists() {
            for entry in std::fs::read_dir(&dir).expect("read corpus dir") {
                let path = entry.expect("entry").path();
                if path.extension().is_some_and(|e| e == "bin" || e == "json") {
                    std::fs::remove_file(&path).expect("remove old corpus file");
                }
            }
        }
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        for f in &table {
            std::fs::write(dir.join(f.name), &f.bytes).expect("write corpus file");
        }
        println!("regenerated {} files in {}", table.len(), dir.display());
    }
    let on_disk: BTreeMap<String, Vec<u8>> = read_corpus()
        .expect("tests/hostile/ is missing: run with CRZARR_REGENERATE_CORPUS=1")
        .into_iter()
        .collect();
    let names: Vec<&str> = table.iter().map(|f| f.name).collect();
    let disk_names: Vec<&str> = on_disk.keys().map(String::as_str).collect();
    assert_eq!(
        disk_names, names,
        "tests/hostile/ differs from the generator: run with CRZARR_REGENERATE_CORPUS=1"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let repo = rt
        .block_on(Repo::init(Arc::new(InMemory::new()), "corpus"))
        .expect("init");

    let mut failures = Vec::new();
    for f in &table {
        let bytes = &on_disk[f.name];
        if *bytes != f.bytes {
            failures.push(format!(
                "{}: checked-in bytes differ from the generator (CRZARR_REGENERATE_CORPUS=1)",
                f.name
            ));
            continue;
        }
        let claim = |other: &str| Some(*blake3::hash(&on_disk[other]).as_bytes());
        let key = format!("corpus/{}", f.name);
        let (res, mem) = measure(|| {
            catch_unwind(AssertUnwindSafe(|| match f.via {
                Via::Change => decode(Target::Change, &key, bytes, None),
                Via::ChangeClaiming(o) => decode(Target::Change, &key, bytes, claim(o)),
                Via::Snapshot => decode(Target::SnapshotMeta, &key, bytes, None),
                Via::SnapshotClaiming(o) => decode(Target::SnapshotMeta, &key, bytes, claim(o)),
                Via::Piece => decode(Target::ManifestPiece, &key, bytes, None),
                Via::Shard => decode(Target::ArchiveShard, &key, bytes, None),
                Via::Zarr => decode(Target::Zarr, &key, bytes, None),
                Via::SessionSet(k) => repo.session().set(k, bytes.clone()).map(|()| None),
            }))
        });
        let Result::Ok(res) = res else {
            failures.push(format!("{}: panicked", f.name));
            continue;
        };
        if mem.peak > soft_bound(bytes.len()) {
            println!(
                "{}: {} bytes, {} bytes allocated at peak (over max(64 KiB, 16 x len))",
                f.name,
                bytes.len(),
                mem.peak
            );
        }
        let reproducer = f.name == "change-ops-reservation-bomb.bin";
        if (strict() || !reproducer) && mem.peak > hard_bound(bytes.len()) {
            failures.push(format!(
                "{}: {} bytes allocated {} bytes at peak",
                f.name,
                bytes.len(),
                mem.peak
            ));
        }
        match (&f.expect, res) {
            (Expect::Ok, Result::Ok(_)) => {}
            (Expect::Err(kind, text), Result::Err(e)) => {
                let msg = e.to_string();
                let named = match f.via {
                    Via::SessionSet(k) => msg.contains(k),
                    _ => msg.contains(&key),
                };
                if error_kind(&e) != *kind || !msg.contains(text) || !named {
                    failures.push(format!(
                        "{}: expected {kind} containing {text:?} and naming its key, got {e:?} ({msg})",
                        f.name
                    ));
                }
            }
            (expect, got) => failures.push(format!("{}: expected {expect:?}, got {got:?}", f.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Finding F1 (fixed): a change whose op list's header claimed up to `MAX_OPS` ops
/// reserved memory for all of them before decoding one (`deserialize_ops` in
/// `src/change.rs`): `change-ops-reservation-bomb.bin` (87 bytes) reserved
/// `MAX_OPS * size_of::<Op>()`. Spec §5 says headers claiming more than the file holds
/// fail "without allocating for the claim".
#[test]
fn finding_op_list_claim_is_not_reserved_up_front() {
    let bytes =
        std::fs::read(corpus_dir().join("change-ops-reservation-bomb.bin")).expect("corpus file");
    let hash = ChangeHash::of(&bytes);
    let (res, mem) = measure(|| Change::decode("bomb", &bytes, &hash));
    assert!(res.is_err());
    assert!(
        mem.peak <= hard_bound(bytes.len()),
        "decoding {} bytes allocated {} bytes at peak (size_of::<Op>() = {})",
        bytes.len(),
        mem.peak,
        std::mem::size_of::<Op>()
    );
}
