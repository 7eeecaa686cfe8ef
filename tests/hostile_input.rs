//! Hostile input. Bad files are placed directly in the bucket (through the
//! `object_store` API) next to good changes, on `InMemory`, `LocalFileSystem` and the loopback S3 server.
//! Every bad file must be reported by key with a clear message and skipped, the good
//! changes must all apply, nothing may panic, and a refresh must neither re-fetch nor
//! re-report it. Also: session-level refusals of bad keys and metadata, decode-level
//! length bombs, and the byte-level examples quoted by `spec/format.md`.

mod common;

use bytes::Bytes;
use common::{Backend, array_meta, memory};
use crzarr::Error;
use crzarr::fold::view::Entry;
use crzarr::format::change::{
    CHANGE_MAGIC, CHANGE_VERSION, CHANGE_VERSION_PLAIN, Change, ChunkData, DimSize, INLINE_MAX,
    MAX_CHANGE_BYTES, Op, OpRef,
};
use crzarr::format::ids::{ActorId, BlobHash, CAP_HLC, ChangeHash, Hlc, MAX_CLOCK_LEAD_MS, RepoId};
use crzarr::format::layout::{ChangeName, Layout};
use crzarr::repo::Repo;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use serde_json::json;
use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use ulid::Ulid;

// ---------------------------------------------------------------------------------
// A per-thread allocation tracker: decode tests assert how much memory decoding takes.

struct Tracking;

thread_local! {
    static TRACK_ON: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(grow: isize, shrink: isize) {
    let _ = TRACK_ON.try_with(|on| {
        if on.get() {
            let live = LIVE.get() + grow;
            PEAK.set(PEAK.get().max(live));
            LIVE.set(live - shrink);
        }
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize, 0);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize, 0);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        unsafe { System.dealloc(ptr, layout) };
        note(0, layout.size() as isize);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Old and new blocks may coexist during the copy.
            note(new_size as isize, layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Runs `f` and returns its result with the peak bytes allocated on this thread.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LIVE.set(0);
    PEAK.set(0);
    TRACK_ON.set(true);
    let out = f();
    TRACK_ON.set(false);
    (out, PEAK.get().max(0) as usize)
}

// ---------------------------------------------------------------------------------
// A bucket with good changes, and helpers to hand-make changes against it.

fn backends() -> Vec<Backend> {
    common::backends()
}

struct Fixture {
    b: Backend,
    layout: Layout,
    repo: RepoId,
    /// The good changes, in commit order (the second depends on the first).
    good: Vec<(ChangeHash, Change)>,
    /// The view the good changes give.
    expected: BTreeMap<String, Entry>,
    /// Bytes `get` returns for every key of that view.
    expected_bytes: BTreeMap<String, Bytes>,
}

const BLOB_CHUNK: [u8; 5000] = [7u8; 5000];

impl Fixture {
    async fn new(b: Backend) -> Fixture {
        let mut w1 = Repo::init(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = w1.session();
        let mut attrs = serde_json::Map::new();
        attrs.insert("title".into(), json!("good"));
        s.create_group("", attrs).unwrap();
        s.create_array("x", &array_meta(&[4], &[2])).unwrap();
        s.set("x/c/0", vec![1u8, 2]).unwrap();
        s.set("x/c/1", BLOB_CHUNK.to_vec()).unwrap();
        let h1 = s.commit(&mut w1, Some("first")).await.unwrap().unwrap();

        let mut w2 = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        let mut s = w2.session();
        s.set_attr("x", "units", json!("K")).unwrap();
        s.resize("x", &[6]).unwrap();
        s.set("x/c/2", vec![5u8, 6]).unwrap();
        let h2 = s.commit(&mut w2, None).await.unwrap().unwrap();

        let layout = w1.bucket().layout().clone();
        let mut good = Vec::new();
        for (h, actor) in [(h1, w1.actor()), (h2, w2.actor())] {
            let key = layout.change(&ChangeName {
                hash: h,
                actor,
                seq: 1,
            });
            let bytes = get_bytes(&b, &key).await;
            good.push((h, Change::decode(key.as_ref(), &bytes, &h).unwrap()));
        }

        let reader = Repo::open(b.store.clone(), &b.prefix).await.unwrap();
        assert!(reader.problems().is_empty());
        let expected = reader.view().entries();
        let mut expected_bytes = BTreeMap::new();
        for k in reader.list().await.unwrap() {
            let v = reader.get(&k).await.unwrap().unwrap();
            expected_bytes.insert(k, v);
        }
        assert_eq!(
            expected_bytes.keys().collect::<Vec<_>>(),
            ["x/c/0", "x/c/1", "x/c/2", "x/zarr.json", "zarr.json"]
        );
        Fixture {
            layout,
            repo: w1.id(),
            good,
            expected,
            expected_bytes,
            b,
        }
    }

    fn head(&self) -> &(ChangeHash, Change) {
        self.good.last().unwrap()
    }

    fn op_index(&self, want: impl Fn(&Op) -> bool) -> OpRef {
        let (h, c) = &self.good[0];
        let i = c.ops.iter().position(want).unwrap();
        OpRef::Change(*h, i as u32)
    }

    /// The root group's incarnation.
    fn group(&self) -> OpRef {
        self.op_index(|op| matches!(op, Op::CreateGroup { path, .. } if path.is_empty()))
    }

    /// Array `x`'s incarnation.
    fn array(&self) -> OpRef {
        self.op_index(|op| matches!(op, Op::CreateArray { path, .. } if path == "x"))
    }

    /// A valid header on top of the good changes, from a fresh writer.
    fn change(&self, ops: Vec<Op>) -> Change {
        let (h, c) = self.head();
        Change {
            repo: self.repo,
            actor: ActorId::generate(),
            seq: 1,
            deps: vec![*h],
            hlc: Hlc(c.hlc.0 + 1),
            wall_ms: c.wall_ms,
            message: Some("hand-made".into()),
            ops,
        }
    }

    /// A change that is valid and would add attribute `extra` to the root group.
    fn valid_change(&self) -> Change {
        self.change(vec![Op::SetAttr {
            node: self.group(),
            key: "extra".into(),
            value: "1".into(),
            observed: vec![],
        }])
    }

    /// The canonical key of `bytes` claiming `change`'s actor and seq.
    fn key_for(&self, bytes: &[u8], change: &Change) -> Path {
        self.layout.change(&ChangeName {
            hash: ChangeHash::of(bytes),
            actor: change.actor,
            seq: change.seq,
        })
    }

    /// `bytes` under their canonical key.
    fn named(&self, bytes: Vec<u8>, change: &Change) -> (Path, Bytes) {
        (self.key_for(&bytes, change), Bytes::from(bytes))
    }

    /// Arbitrary bytes under a key with their hash, a fresh actor and seq 1.
    fn named_raw(&self, bytes: Vec<u8>) -> (Path, Bytes) {
        let key = self.layout.change(&ChangeName {
            hash: ChangeHash::of(&bytes),
            actor: ActorId::generate(),
            seq: 1,
        });
        (key, Bytes::from(bytes))
    }

    async fn open(&self) -> Repo {
        Repo::open(self.b.store.clone(), &self.b.prefix)
            .await
            .unwrap_or_else(|e| panic!("{}: open failed: {e}", self.b.name))
    }

    /// The view is exactly the good changes' view, and every key reads back.
    async fn assert_good_view(&self, r: &Repo, case: &str) {
        let ctx = format!("{case} on {}", self.b.name);
        assert_eq!(r.view().entries(), self.expected, "{ctx}");
        for (k, v) in &self.expected_bytes {
            assert_eq!(r.get(k).await.unwrap().as_ref(), Some(v), "{ctx}: {k}");
        }
        for (h, _) in &self.good {
            assert!(r.fold().contains(h), "{ctx}: good change not applied");
        }
    }
}

async fn get_bytes(b: &Backend, key: &Path) -> Bytes {
    b.store.get(key).await.unwrap().bytes().await.unwrap()
}

async fn put(b: &Backend, key: &Path, bytes: Bytes) {
    b.store.put(key, PutPayload::from(bytes)).await.unwrap();
}

fn with_name(key: &Path, file_name: &str) -> Path {
    let s = key.as_ref();
    let dir = &s[..s.rfind('/').unwrap()];
    Path::from(format!("{dir}/{file_name}"))
}

// ---------------------------------------------------------------------------------
// Bad change files: each case lists the files it places and the message each gets.

type BadFiles = Vec<(Path, Bytes, &'static str)>;

fn bad_files(case: &str, fx: &Fixture) -> BadFiles {
    let one = |(k, v): (Path, Bytes), msg| vec![(k, v, msg)];
    let hash_mismatch = "content does not match the hash in its name (truncated or altered)";
    let valid = fx.valid_change();
    let valid_bytes = valid.encode();
    let valid_key = fx.key_for(&valid_bytes, &valid);
    match case {
        "truncated_change_file" => {
            // An upload cut short: the name is that of the complete file.
            let cut = valid_bytes[..valid_bytes.len() / 2].to_vec();
            vec![(valid_key, cut.into(), hash_mismatch)]
        }
        "bit_flipped_change_file" => {
            let mut b = valid_bytes.clone();
            let mid = b.len() / 2;
            b[mid] ^= 0x10;
            vec![(valid_key, b.into(), hash_mismatch)]
        }
        "misnamed_wrong_hash" => {
            let key = fx.layout.change(&ChangeName {
                hash: ChangeHash::of(b"something else"),
                actor: valid.actor,
                seq: 1,
            });
            vec![(key, valid_bytes.into(), hash_mismatch)]
        }
        "misnamed_wrong_actor" => {
            let key = fx.layout.change(&ChangeName {
                hash: ChangeHash::of(&valid_bytes),
                actor: ActorId::generate(),
                seq: 1,
            });
            let msg = "actor or seq in the file name does not match its header";
            vec![(key, valid_bytes.into(), msg)]
        }
        "misnamed_wrong_seq" => {
            let key = fx.layout.change(&ChangeName {
                hash: ChangeHash::of(&valid_bytes),
                actor: valid.actor,
                seq: 2,
            });
            let msg = "actor or seq in the file name does not match its header";
            vec![(key, valid_bytes.into(), msg)]
        }
        "misnamed_copy_of_a_good_change" => {
            // A good change's exact bytes under another writer's name.
            let (h, c) = &fx.good[0];
            let key = fx.layout.change(&ChangeName {
                hash: *h,
                actor: ActorId::generate(),
                seq: c.seq,
            });
            let msg = "actor or seq in the file name does not match its header";
            vec![(key, Bytes::from(c.encode()), msg)]
        }
        "non_canonical_file_names" => {
            let hex = ChangeHash::of(&valid_bytes).to_hex();
            let actor = valid.actor.to_string();
            let msg = "foreign file: file name is not <hash>-<actor>-<seq>.change";
            [
                format!("{hex}-{actor}-01.change"),
                format!("{hex}-{actor}-+1.change"),
                format!("{hex}-{actor}-0.change"),
                format!("{hex}-{}-1.change", actor.to_lowercase()),
                format!("{}-{actor}-1.change", hex.to_uppercase()),
                format!("{hex}-{actor}-1.chg"),
                format!("{hex}-{actor}-1-1.change"),
                format!("{hex}-{actor}-18446744073709551616.change"),
                format!("{}-{actor}-1.change", &hex[..63]),
            ]
            .into_iter()
            .map(|n| {
                (
                    with_name(&valid_key, &n),
                    Bytes::from(valid_bytes.clone()),
                    msg,
                )
            })
            .collect()
        }
        "unknown_format_version" => {
            let mut b = valid_bytes.clone();
            b[4] = CHANGE_VERSION + 1;
            one(
                fx.named(b, &valid),
                "format version 5 is not supported (this build reads version 4); upgrade crzarr",
            )
        }
        "wrong_magic" => {
            let mut b = valid_bytes.clone();
            b[..4].copy_from_slice(b"CRZX");
            one(fx.named(b, &valid), "not a crzarr change file (bad magic)")
        }
        "empty_and_tiny_files" => {
            let msg = "not a crzarr change file (bad magic)";
            vec![
                with_msg(fx.named_raw(Vec::new()), msg),
                with_msg(fx.named_raw(b"CRZC".to_vec()), msg),
                with_msg(
                    fx.named_raw(vec![b'C', b'R', b'Z', b'C', CHANGE_VERSION_PLAIN]),
                    "malformed change",
                ),
            ]
        }
        "garbage_msgpack" => {
            let mut b = CHANGE_MAGIC.to_vec();
            b.push(CHANGE_VERSION_PLAIN);
            b.extend_from_slice(b"\xc1\xff\x00garbage that is not msgpack");
            one(fx.named_raw(b), "malformed change")
        }
        "valid_msgpack_wrong_shape" => {
            // Well-formed MessagePack that is not a change: an array of 8 integers.
            let mut b = CHANGE_MAGIC.to_vec();
            b.push(CHANGE_VERSION_PLAIN);
            b.extend_from_slice(&[0x98, 1, 2, 3, 4, 5, 6, 7, 8]);
            one(fx.named_raw(b), "malformed change")
        }
        "trailing_bytes" => {
            let mut b = valid_bytes.clone();
            b.push(0xc0);
            one(
                fx.named(b, &valid),
                "non-canonical encoding or trailing bytes",
            )
        }
        "non_canonical_integer_width" => {
            // `seq` (1) is a positive fixint at offset 42; spell it as a uint64.
            let mut b = valid_bytes.clone();
            assert_eq!(b[SEQ_OFFSET], 0x01);
            b.splice(SEQ_OFFSET..SEQ_OFFSET + 1, [0xcf, 0, 0, 0, 0, 0, 0, 0, 1]);
            one(
                fx.named(b, &valid),
                "non-canonical encoding or trailing bytes",
            )
        }
        "struct_encoded_as_map" => {
            let mut b = CHANGE_MAGIC.to_vec();
            b.push(CHANGE_VERSION_PLAIN);
            b.extend(rmp_serde::to_vec_named(&valid).unwrap());
            one(
                fx.named(b, &valid),
                "non-canonical encoding or trailing bytes",
            )
        }
        "foreign_repo_change" => {
            let mut c = fx.valid_change();
            c.repo = RepoId(Ulid::from_bytes([9; 16]));
            one(
                fx.named(c.encode(), &c),
                "belongs to repository 09144GJ289144GJ289144GJ289, not ",
            )
        }
        "seq_zero_in_header" => {
            // A name cannot say seq 0, so it claims 1; the header says 0.
            let mut c = fx.valid_change();
            c.seq = 0;
            let b = c.encode();
            let key = fx.layout.change(&ChangeName {
                hash: ChangeHash::of(&b),
                actor: c.actor,
                seq: 1,
            });
            vec![(key, b.into(), "seq must start at 1")]
        }
        "unsorted_deps" => {
            let mut c = fx.valid_change();
            c.deps = vec![fx.good[0].0, fx.good[1].0];
            c.deps.sort();
            c.deps.reverse();
            one(
                fx.named(c.encode(), &c),
                "deps must be ascending and unique",
            )
        }
        "duplicate_deps" => {
            let mut c = fx.valid_change();
            c.deps = vec![fx.head().0, fx.head().0];
            one(
                fx.named(c.encode(), &c),
                "deps must be ascending and unique",
            )
        }
        "local_ref_to_later_op" => {
            let c = fx.change(vec![
                Op::SetAttr {
                    node: OpRef::Local(1),
                    key: "k".into(),
                    value: "1".into(),
                    observed: vec![],
                },
                Op::CreateGroup {
                    path: "g".into(),
                    attributes: vec![],
                },
            ]);
            one(
                fx.named(c.encode(), &c),
                "op 0: local reference to a later op",
            )
        }
        "local_node_ref_to_non_create" => {
            let c = fx.change(vec![
                Op::DeleteAttr {
                    node: fx.group(),
                    key: "title".into(),
                    observed: vec![],
                },
                Op::SetAttr {
                    node: OpRef::Local(0),
                    key: "k".into(),
                    value: "1".into(),
                    observed: vec![],
                },
            ]);
            one(
                fx.named(c.encode(), &c),
                "op 1: local node reference to an op that creates no node",
            )
        }
        "inline_chunk_over_limit" => {
            let c = fx.change(vec![Op::SetChunk {
                node: fx.array(),
                key: "c/3".into(),
                data: ChunkData::Inline(vec![0; INLINE_MAX + 1]),
                observed: vec![],
            }]);
            one(
                fx.named(c.encode(), &c),
                "op 0: inline chunk larger than the inline limit",
            )
        }
        "invalid_zarr_metadata_in_create" => {
            let mut meta = array_meta(&[4], &[2]);
            let obj = meta.as_object_mut().unwrap();
            obj.remove("attributes");
            obj.remove("codecs");
            let missing = fx.change(vec![Op::CreateArray {
                path: "y".into(),
                metadata: crzarr::zarr::meta::canonical_json(&meta),
                attributes: vec![],
            }]);
            let not_json = fx.change(vec![Op::CreateArray {
                path: "z".into(),
                metadata: "{not json".into(),
                attributes: vec![],
            }]);
            let v2 = fx.change(vec![Op::CreateArray {
                path: "w".into(),
                metadata: r#"{"zarr_format":2}"#.into(),
                attributes: vec![],
            }]);
            let bad_attr = fx.change(vec![Op::CreateGroup {
                path: "v".into(),
                attributes: vec![("a".into(), "nope".into())],
            }]);
            vec![
                with_msg(
                    fx.named(missing.encode(), &missing),
                    "op 0: missing required field `codecs`",
                ),
                with_msg(fx.named(not_json.encode(), &not_json), "op 0: invalid JSON"),
                with_msg(fx.named(v2.encode(), &v2), "op 0: `zarr_format` must be 3"),
                with_msg(fx.named(bad_attr.encode(), &bad_attr), "op 0: invalid JSON"),
            ]
        }
        "traversal_keys_inside_ops" => {
            let chunk = fx.change(vec![Op::SetChunk {
                node: fx.array(),
                key: "../../.crdt/ops/evil".into(),
                data: ChunkData::Inline(vec![1]),
                observed: vec![],
            }]);
            let node = fx.change(vec![Op::CreateGroup {
                path: "a/.crdt".into(),
                attributes: vec![],
            }]);
            let abs = fx.change(vec![Op::CreateGroup {
                path: "/etc".into(),
                attributes: vec![],
            }]);
            let dunder = fx.change(vec![Op::CreateGroup {
                path: "__x".into(),
                attributes: vec![],
            }]);
            vec![
                with_msg(
                    fx.named(chunk.encode(), &chunk),
                    "`.` and `..` segments are not allowed",
                ),
                with_msg(
                    fx.named(node.encode(), &node),
                    "`.crdt` is reserved for crzarr",
                ),
                with_msg(
                    fx.named(abs.encode(), &abs),
                    "absolute keys are not allowed",
                ),
                with_msg(
                    fx.named(dunder.encode(), &dunder),
                    "node names starting with `__` are reserved by Zarr",
                ),
            ]
        }
        "bad_object_ops" => {
            let meta_key = fx.change(vec![Op::SetObject {
                key: "notes/zarr.json".into(),
                data: ChunkData::Inline(vec![1]),
                observed: vec![],
            }]);
            let reserved = fx.change(vec![Op::DeleteObject {
                key: ".crdt/repo.json".into(),
                observed: vec![],
            }]);
            let too_big = fx.change(vec![Op::SetObject {
                key: "notes".into(),
                data: ChunkData::Inline(vec![0; INLINE_MAX + 1]),
                observed: vec![],
            }]);
            let reference = fx.change(vec![Op::SetObject {
                key: "notes".into(),
                data: ChunkData::Reference(crzarr::format::change::ChunkReference {
                    source: "file:///tmp".into(),
                    key: "x".into(),
                    size: 1,
                    etag: None,
                    modified_ms: 0,
                }),
                observed: vec![],
            }]);
            // A good object op written under an older version byte.
            let good = fx.change(vec![Op::SetObject {
                key: "notes".into(),
                data: ChunkData::Inline(vec![1]),
                observed: vec![],
            }]);
            let mut old_version = good.encode();
            assert_eq!(old_version[4], 3);
            old_version[4] = 2;
            vec![
                with_msg(
                    fx.named(meta_key.encode(), &meta_key),
                    "`zarr.json` is node metadata, not an object key segment",
                ),
                with_msg(
                    fx.named(reserved.encode(), &reserved),
                    "`.crdt` is reserved for crzarr",
                ),
                with_msg(
                    fx.named(too_big.encode(), &too_big),
                    "op 0: inline object larger than the inline limit",
                ),
                with_msg(
                    fx.named(reference.encode(), &reference),
                    "op 0: an object cannot be a reference",
                ),
                with_msg(
                    fx.named(old_version, &good),
                    "format version 2 for a change that is written as version 3",
                ),
            ]
        }
        "clock_not_after_dep" => {
            let mut c = fx.valid_change();
            c.hlc = fx.head().1.hlc;
            one(
                fx.named(c.encode(), &c),
                "invalid change: clock", // "... not greater than dependency <hash>'s"
            )
        }
        "clock_far_ahead_of_deps" => {
            // A broken clock at the very top, and one far ahead but under the cap.
            let mut top = fx.valid_change();
            top.hlc = Hlc(u64::MAX);
            let mut far = fx.valid_change();
            far.hlc = Hlc(CAP_HLC - 1);
            let msg = "invalid change: clock"; // "... too far ahead of the changes it references"
            vec![
                with_msg(fx.named(top.encode(), &top), msg),
                with_msg(fx.named(far.encode(), &far), msg),
            ]
        }
        "chunk_op_on_group" => {
            let c = fx.change(vec![Op::SetChunk {
                node: fx.group(),
                key: "c/0".into(),
                data: ChunkData::Inline(vec![1]),
                observed: vec![],
            }]);
            one(
                fx.named(c.encode(), &c),
                "invalid change: op 0: chunk op on a group",
            )
        }
        "reference_past_last_op" => {
            let (h, c0) = &fx.good[0];
            let c = fx.change(vec![Op::SetAttr {
                node: OpRef::Change(*h, c0.ops.len() as u32),
                key: "k".into(),
                value: "1".into(),
                observed: vec![],
            }]);
            one(fx.named(c.encode(), &c), "which has fewer ops")
        }
        "resize_of_missing_dimension" => {
            let c = fx.change(vec![Op::Resize {
                node: fx.array(),
                dims: vec![DimSize {
                    dim: 1,
                    size: 8,
                    observed: vec![],
                }],
            }]);
            one(
                fx.named(c.encode(), &c),
                "invalid change: op 0: resize of a dimension the array lacks",
            )
        }
        "foreign_files_under_ops" => {
            let ops = fx.layout.ops_dir();
            let nested = "nested directory under .crdt/ops/";
            vec![
                (
                    ops.clone().join("README"),
                    Bytes::from_static(b"hello"),
                    "foreign file: file name is not <hash>-<actor>-<seq>.change",
                ),
                (
                    ops.clone().join("sub").join("x.change"),
                    Bytes::from_static(b"x"),
                    nested,
                ),
                // A valid change file one directory too deep is still foreign.
                (
                    ops.clone()
                        .join("deeper")
                        .join(valid_key.filename().unwrap()),
                    Bytes::from(valid_bytes.clone()),
                    nested,
                ),
            ]
        }
        other => panic!("unknown case {other}"),
    }
}

fn with_msg((k, v): (Path, Bytes), msg: &'static str) -> (Path, Bytes, &'static str) {
    (k, v, msg)
}

/// Offset of `seq` in a change file: 5-byte prefix, array header, two 18-byte bins.
const SEQ_OFFSET: usize = 5 + 1 + 18 + 18;

/// Places the case's files next to the good changes and checks everything the
/// user sees: open works, the view is the good one, each file is reported once by
/// key with its message, a refresh changes nothing, and writing on top still works.
async fn check_case(case: &str) {
    for b in backends() {
        let fx = Fixture::new(b).await;
        let files = bad_files(case, &fx);
        assert!(!files.is_empty());
        for (k, v, _) in &files {
            put(&fx.b, k, v.clone()).await;
        }
        check_reported(&fx, case, &files).await;
    }
}

async fn check_reported(fx: &Fixture, case: &str, files: &BadFiles) {
    let ctx = format!("{case} on {}", fx.b.name);
    let mut r = fx.open().await;
    fx.assert_good_view(&r, case).await;
    let problems = r.problems();
    for (k, _, msg) in files {
        let p: Vec<_> = problems.iter().filter(|p| p.key == k.as_ref()).collect();
        assert_eq!(p.len(), 1, "{ctx}: {k} not reported once: {problems:#?}");
        assert!(
            p[0].error.contains(msg),
            "{ctx}: {k}: expected {msg:?} in {:?}",
            p[0].error
        );
    }
    assert_eq!(problems.len(), files.len(), "{ctx}: {problems:#?}");

    // A refresh neither re-fetches nor re-reports.
    let report = r.refresh().await.unwrap();
    assert_eq!(report.fetched, 0, "{ctx}: refresh re-fetched");
    assert!(report.problems.is_empty(), "{ctx}: {report:?}");
    assert_eq!(r.problems(), problems, "{ctx}");
    fx.assert_good_view(&r, case).await;

    // The repo is not blocked: a writer commits on top and a fresh reader sees it.
    let mut s = r.session();
    s.set_attr("x", "after", json!(case)).unwrap();
    s.commit(&mut r, None).await.unwrap().unwrap();
    let again = fx.open().await;
    assert_eq!(
        again.view().attributes("x").unwrap()["after"],
        json!(case),
        "{ctx}"
    );
    assert_eq!(again.problems(), problems, "{ctx}: reported differently");
}

macro_rules! bad_file_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                check_case(stringify!($name)).await;
            }
        )*
        const ALL_CASES: &[&str] = &[$(stringify!($name)),*];
    };
}

bad_file_tests!(
    truncated_change_file,
    bit_flipped_change_file,
    misnamed_wrong_hash,
    misnamed_wrong_actor,
    misnamed_wrong_seq,
    misnamed_copy_of_a_good_change,
    non_canonical_file_names,
    unknown_format_version,
    wrong_magic,
    empty_and_tiny_files,
    garbage_msgpack,
    valid_msgpack_wrong_shape,
    trailing_bytes,
    non_canonical_integer_width,
    struct_encoded_as_map,
    foreign_repo_change,
    seq_zero_in_header,
    unsorted_deps,
    duplicate_deps,
    local_ref_to_later_op,
    local_node_ref_to_non_create,
    inline_chunk_over_limit,
    invalid_zarr_metadata_in_create,
    traversal_keys_inside_ops,
    bad_object_ops,
    clock_not_after_dep,
    clock_far_ahead_of_deps,
    chunk_op_on_group,
    reference_past_last_op,
    resize_of_missing_dimension,
    foreign_files_under_ops,
);

/// Every bad file of every case in one bucket at once.
#[tokio::test]
async fn every_bad_file_at_once() {
    for b in backends() {
        let fx = Fixture::new(b).await;
        let mut all: BadFiles = Vec::new();
        for case in ALL_CASES {
            for f in bad_files(case, &fx) {
                // Cases built on the same valid change may name the same key.
                if !all.iter().any(|(k, _, _)| *k == f.0) {
                    all.push(f);
                }
            }
        }
        for (k, v, _) in &all {
            put(&fx.b, k, v.clone()).await;
        }
        let r = fx.open().await;
        fx.assert_good_view(&r, "all").await;
        for (k, _, _) in &all {
            assert!(
                r.problems().iter().any(|p| p.key == k.as_ref()),
                "{k} not reported"
            );
        }
        assert_eq!(r.problems().len(), all.len());
    }
}

/// Positive control: the hand-made changes the cases corrupt are valid as they are.
#[tokio::test]
async fn hand_made_valid_change_is_applied() {
    for b in backends() {
        let fx = Fixture::new(b).await;
        let c = fx.valid_change();
        let (k, v) = fx.named(c.encode(), &c);
        put(&fx.b, &k, v).await;
        let r = fx.open().await;
        assert!(r.problems().is_empty(), "{:?}", r.problems());
        assert_eq!(r.view().attributes("").unwrap()["extra"], json!(1));
    }
}

/// A misnamed or damaged file claiming a change's hash must not stop the real file,
/// arriving later under its proper name, from being fetched and applied.
#[tokio::test]
async fn bad_file_claiming_a_hash_does_not_block_the_real_change() {
    for b in backends() {
        let fx = Fixture::new(b).await;
        let c = fx.valid_change();
        let bytes = c.encode();
        let hash = ChangeHash::of(&bytes);
        let misnamed = fx.layout.change(&ChangeName {
            hash,
            actor: ActorId::generate(),
            seq: 1,
        });
        let damaged = fx.layout.change(&ChangeName {
            hash,
            actor: c.actor,
            seq: 7,
        });
        put(&fx.b, &misnamed, Bytes::from(bytes.clone())).await;
        put(&fx.b, &damaged, Bytes::from_static(b"CRZC\x01junk")).await;
        let mut r = fx.open().await;
        assert_eq!(r.problems().len(), 2, "{}", fx.b.name);
        fx.assert_good_view(&r, "before").await;

        let (k, v) = fx.named(bytes, &c);
        put(&fx.b, &k, v).await;
        let report = r.refresh().await.unwrap();
        assert_eq!(
            (report.fetched, report.applied),
            (1, 1),
            "{}: {report:?}",
            fx.b.name
        );
        assert!(r.fold().contains(&hash));
        assert_eq!(r.view().attributes("").unwrap()["extra"], json!(1));
        assert_eq!(r.problems().len(), 2);
    }
}

/// A change that waits for a missing dep and proves invalid once the dep arrives is
/// reported like one rejected on arrival (whatever order the files come in).
#[tokio::test]
async fn invalid_change_found_after_pending_is_reported() {
    for b in backends() {
        let fx = Fixture::new(b).await;
        let dep = fx.valid_change();
        let dep_bytes = dep.encode();
        let dep_hash = ChangeHash::of(&dep_bytes);
        let mut bad = fx.valid_change();
        bad.deps = vec![dep_hash];
        bad.hlc = dep.hlc; // not greater than its dep's
        let (bad_key, bad_bytes) = fx.named(bad.encode(), &bad);
        put(&fx.b, &bad_key, bad_bytes).await;
        let mut r = fx.open().await;
        assert!(r.problems().is_empty(), "{:?}", r.problems());
        assert_eq!(r.pending().len(), 1);

        let (k, v) = fx.named(dep_bytes, &dep);
        put(&fx.b, &k, v).await;
        let report = r.refresh().await.unwrap();
        assert_eq!((report.fetched, report.applied), (1, 1), "{report:?}");
        assert_eq!(report.problems.len(), 1, "{report:?}");
        assert!(r.pending().is_empty());
        assert_eq!(r.rejected().len(), 1);
        let p = r.problems();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, bad_key.as_ref());
        assert!(
            p[0].error.starts_with("invalid change: clock"),
            "{}",
            p[0].error
        );
        // A fresh reader that gets both at once reports the same.
        let fresh = fx.open().await;
        assert_eq!(fresh.problems(), p);
        let report = r.refresh().await.unwrap();
        assert!(report.problems.is_empty() && report.fetched == 0);
    }
}

// ---------------------------------------------------------------------------------
// Clocks far ahead (issue 14): a forged stamp must not freeze the repository.

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// `hlc` plus `ms` milliseconds, counter unchanged.
fn ahead(hlc: Hlc, ms: u64) -> Hlc {
    Hlc(hlc.0 + (ms << 16))
}

/// Forged changes with clocks at the top of the range (one on the good head, one with
/// no deps), just under the cap, and a year ahead of their deps: each is reported by
/// key and skipped, and an honest writer that saw them goes on committing, every
/// commit seen by a fresh reader. Before the fix the top stamp was applied, every later
/// stamp saturated to it, and readers rejected every commit while `commit` said Ok.
#[tokio::test]
async fn huge_clock_change_does_not_freeze_repository() {
    for b in backends() {
        let ctx = b.name;
        let fx = Fixture::new(b).await;
        let head_hlc = fx.head().1.hlc;
        let mut forged = Vec::new();
        for (i, hlc) in [
            Hlc(u64::MAX),
            Hlc(CAP_HLC - 1),
            ahead(head_hlc, 365 * DAY_MS),
        ]
        .into_iter()
        .enumerate()
        {
            let mut c = fx.valid_change();
            c.hlc = hlc;
            c.ops = vec![Op::SetAttr {
                node: fx.group(),
                key: "forged".into(),
                value: i.to_string(),
                observed: vec![],
            }];
            forged.push(c);
        }
        let mut rootless = fx.change(vec![Op::CreateGroup {
            path: "forged".into(),
            attributes: vec![],
        }]);
        rootless.deps = vec![];
        rootless.hlc = Hlc(u64::MAX);
        forged.push(rootless);
        let mut keys = Vec::new();
        for c in &forged {
            let (k, v) = fx.named(c.encode(), c);
            put(&fx.b, &k, v).await;
            keys.push(k.to_string());
        }
        keys.sort();

        let mut w = fx.open().await;
        let mut commits = Vec::new();
        for i in 0..3 {
            let mut s = w.session();
            s.set_attr("x", "honest", json!(i)).unwrap();
            let h = s.commit(&mut w, None).await.unwrap().unwrap();
            assert!(
                w.fold().contains(&h),
                "{ctx}: commit {i} not applied locally"
            );
            let hlc = w.fold().hlc_of(&h).unwrap();
            assert!(
                hlc.millis() <= head_hlc.millis() + MAX_CLOCK_LEAD_MS,
                "{ctx}: honest clock dragged ahead: {hlc:?}"
            );
            commits.push(h);
        }

        let r = fx.open().await;
        for h in &commits {
            assert!(r.fold().contains(h), "{ctx}: honest commit {h:?} not seen");
        }
        assert_eq!(r.view().attributes("x").unwrap()["honest"], json!(2));
        assert!(!r.view().attributes("").unwrap().contains_key("forged"));
        assert!(r.pending().is_empty(), "{ctx}: {:?}", r.pending());
        let problems = r.problems();
        let reported: Vec<String> = problems.iter().map(|p| p.key.clone()).collect();
        assert_eq!(reported, keys, "{ctx}: {problems:#?}");
        for p in &problems {
            assert!(
                p.error.starts_with("invalid change: clock") && p.error.contains("too far ahead"),
                "{ctx}: {}",
                p.error
            );
        }
        assert_eq!(r.rejected().len(), forged.len(), "{ctx}");
    }
}

/// The bound is 30 days ahead of the deps, decided from the change alone: a change a
/// year ahead of its deps is rejected, one 29 days ahead (a month offline with a right
/// clock) is accepted, and an honest writer goes on from it.
#[tokio::test]
async fn clock_a_year_ahead_of_deps_is_rejected_29_days_ahead_is_accepted() {
    for b in backends() {
        let ctx = b.name;
        let fx = Fixture::new(b).await;
        let head_hlc = fx.head().1.hlc;
        let mut year = fx.valid_change();
        year.hlc = ahead(head_hlc, 365 * DAY_MS);
        let mut month = fx.valid_change();
        month.hlc = ahead(head_hlc, 29 * DAY_MS);
        month.ops = vec![Op::SetAttr {
            node: fx.group(),
            key: "offline".into(),
            value: "29".into(),
            observed: vec![],
        }];
        let (year_key, v) = fx.named(year.encode(), &year);
        put(&fx.b, &year_key, v).await;
        let (k, v) = fx.named(month.encode(), &month);
        put(&fx.b, &k, v).await;

        let mut r = fx.open().await;
        let p = r.problems();
        assert_eq!(p.len(), 1, "{ctx}: {p:#?}");
        assert_eq!(p[0].key, year_key.as_ref(), "{ctx}");
        assert!(
            p[0].error.contains("too far ahead"),
            "{ctx}: {}",
            p[0].error
        );
        let root = r.view().attributes("").unwrap();
        assert_eq!(root["offline"], json!(29), "{ctx}");
        assert!(
            !root.contains_key("extra"),
            "{ctx}: the year-ahead change applied"
        );

        let mut s = r.session();
        s.set_attr("x", "after", json!(1)).unwrap();
        let h = s.commit(&mut r, None).await.unwrap().unwrap();
        assert_eq!(r.fold().hlc_of(&h), Some(Hlc(month.hlc.0 + 1)), "{ctx}");
        assert!(fx.open().await.fold().contains(&h), "{ctx}");
    }
}

// ---------------------------------------------------------------------------------
// Oversized change files: judged by the LIST size (no GET at all) and by the GET.

/// Wraps a store: counts GETs of one key and can misreport its size in listings.
#[derive(Debug)]
struct Lying {
    inner: Arc<dyn ObjectStore>,
    key: Path,
    listed_size: Option<u64>,
    gets: AtomicUsize,
}

impl std::fmt::Display for Lying {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lying({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Lying {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if *location == self.key {
            self.gets.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let key = self.key.clone();
        let size = self.listed_size;
        self.inner
            .list(prefix)
            .map_ok(move |mut m| {
                if let Some(s) = size.filter(|_| m.location == key) {
                    m.size = s;
                }
                m
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A file one byte over the limit is refused from its LIST size, never fetched;
/// if the listing under-reports it, the GET refuses it from the object's size.
#[tokio::test]
async fn oversized_change_file() {
    let limit_msg = format!(
        "{} bytes exceeds the limit of {MAX_CHANGE_BYTES} bytes",
        MAX_CHANGE_BYTES + 1
    );
    for b in backends() {
        let fx = Fixture::new(b).await;
        let big = vec![0u8; MAX_CHANGE_BYTES as usize + 1];
        let (key, bytes) = fx.named_raw(big);
        put(&fx.b, &key, bytes).await;

        for listed_size in [None, Some(100)] {
            let store = Arc::new(Lying {
                inner: fx.b.store.clone(),
                key: key.clone(),
                listed_size,
                gets: AtomicUsize::new(0),
            });
            let mut r = Repo::open(store.clone(), &fx.b.prefix).await.unwrap();
            fx.assert_good_view(&r, "oversized").await;
            let p = r.problems();
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(p[0].key, key.as_ref());
            assert!(p[0].error.contains(&limit_msg), "{}", p[0].error);
            let expected_gets = usize::from(listed_size.is_some());
            assert_eq!(store.gets.load(Ordering::SeqCst), expected_gets);
            let report = r.refresh().await.unwrap();
            assert_eq!(report.fetched, 0);
            assert!(report.problems.is_empty());
            assert_eq!(r.problems(), p);
            assert_eq!(store.gets.load(Ordering::SeqCst), expected_gets);
        }
    }
}

/// A listing that claims an absurd size for a small file: refused without a GET.
#[tokio::test]
async fn oversized_by_listing_alone() {
    for b in backends() {
        let fx = Fixture::new(b).await;
        let c = fx.valid_change();
        let (key, bytes) = fx.named(c.encode(), &c);
        put(&fx.b, &key, bytes).await;
        let store = Arc::new(Lying {
            inner: fx.b.store.clone(),
            key: key.clone(),
            listed_size: Some(u64::MAX),
            gets: AtomicUsize::new(0),
        });
        let r = Repo::open(store.clone(), &fx.b.prefix).await.unwrap();
        fx.assert_good_view(&r, "listed huge").await;
        assert_eq!(store.gets.load(Ordering::SeqCst), 0);
        let p = r.problems();
        assert_eq!(p.len(), 1);
        assert!(p[0].error.contains("exceeds the limit"), "{}", p[0].error);
    }
}

// ---------------------------------------------------------------------------------
// Blobs.

#[tokio::test]
async fn corrupt_or_missing_blob() {
    for b in backends() {
        let fx = Fixture::new(b).await;
        let blob_key = fx.layout.blob(&BlobHash::of(&BLOB_CHUNK));
        let mut flipped = BLOB_CHUNK.to_vec();
        flipped[100] ^= 1;
        let mut longer = BLOB_CHUNK.to_vec();
        longer.push(7);
        let variants: [(&str, Option<Vec<u8>>); 5] = [
            ("bit flipped", Some(flipped)),
            ("truncated", Some(BLOB_CHUNK[..10].to_vec())),
            ("empty", Some(Vec::new())),
            ("longer", Some(longer)),
            ("missing", None),
        ];
        for (what, content) in variants {
            let ctx = format!("{what} blob on {}", fx.b.name);
            match &content {
                Some(c) => put(&fx.b, &blob_key, Bytes::from(c.clone())).await,
                None => fx.b.store.delete(&blob_key).await.unwrap(),
            }
            // Blobs are not read on open: open works and reports nothing.
            let r = fx.open().await;
            assert!(r.problems().is_empty(), "{ctx}");
            let err = r.get("x/c/1").await.unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(blob_key.as_ref()), "{ctx}: {msg}");
            match (&content, &err) {
                (Some(_), Error::Corrupt { key, .. }) => {
                    assert_eq!(key, blob_key.as_ref(), "{ctx}");
                    assert!(
                        msg.contains("blob content does not match its hash"),
                        "{ctx}: {msg}"
                    );
                }
                (None, Error::MissingBlob { key, blob_key: bk }) => {
                    assert_eq!((key.as_str(), bk.as_str()), ("x/c/1", blob_key.as_ref()));
                    assert!(msg.contains("which is missing from the bucket"), "{msg}");
                }
                _ => panic!("{ctx}: unexpected error {err:?}"),
            }
            // Other keys still read; nothing is cached: a repaired blob reads again.
            assert_eq!(
                r.get("x/c/0").await.unwrap().as_deref(),
                Some(&[1u8, 2][..])
            );
            put(&fx.b, &blob_key, Bytes::from_static(&BLOB_CHUNK)).await;
            assert_eq!(
                r.get("x/c/1").await.unwrap().as_deref(),
                Some(&BLOB_CHUNK[..]),
                "{ctx}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// The marker.

#[tokio::test]
async fn marker_with_unknown_format_version() {
    for b in backends() {
        let fx = Fixture::new(b).await;
        let marker = fx.layout.marker();
        let id = fx.repo.to_string();
        let newer = [
            json!({"format": "crzarr", "format_version": 99, "repo_id": id}),
            // A newer marker may also carry fields this build does not know.
            json!({"format": "crzarr", "format_version": 99, "repo_id": id, "snapshots": "v2"}),
        ];
        for m in newer {
            put(&fx.b, &marker, Bytes::from(m.to_string())).await;
            let err = match Repo::open(fx.b.store.clone(), &fx.b.prefix).await {
                Err(e) => e,
                Ok(_) => panic!("opened a version-99 repo"),
            };
            assert!(
                matches!(&err, Error::UnsupportedVersion { key, found: 99, supported: 2 } if key == marker.as_ref()),
                "{m}: {err:?}"
            );
            assert!(
                err.to_string().contains(
                    "format version 99 is not supported (this build reads version 2); upgrade crzarr"
                ),
                "{err}"
            );
        }
    }
}

#[tokio::test]
async fn garbage_marker() {
    for b in backends() {
        let fx = Fixture::new(b).await;
        let marker = fx.layout.marker();
        let id = fx.repo.to_string();
        let cases: [(Vec<u8>, &str); 6] = [
            (b"\x00\xffnot json".to_vec(), "not a crzarr marker"),
            (b"".to_vec(), "not a crzarr marker"),
            (b"[1,2]".to_vec(), "not a crzarr marker"),
            (
                json!({"format": "other", "format_version": 2, "repo_id": id})
                    .to_string()
                    .into_bytes(),
                "unknown format \"other\"",
            ),
            (
                json!({"format": "crzarr", "format_version": 2, "repo_id": "nope"})
                    .to_string()
                    .into_bytes(),
                "not a ULID",
            ),
            (
                json!({"format": "crzarr", "format_version": 2})
                    .to_string()
                    .into_bytes(),
                "missing field `repo_id`",
            ),
        ];
        for (bytes, want) in cases {
            put(&fx.b, &marker, Bytes::from(bytes)).await;
            let err = match Repo::open(fx.b.store.clone(), &fx.b.prefix).await {
                Err(e) => e,
                Ok(_) => panic!("opened with a garbage marker"),
            };
            assert!(
                matches!(&err, Error::Corrupt { key, .. } if key == marker.as_ref()),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains(want) && msg.contains(marker.as_ref()), "{msg}");
            // `init` on top of it refuses too, rather than overwriting.
            assert!(
                Repo::init(fx.b.store.clone(), &fx.b.prefix).await.is_err(),
                "init over a garbage marker"
            );
        }
        fx.b.store.delete(&marker).await.unwrap();
        let err = match Repo::open(fx.b.store.clone(), &fx.b.prefix).await {
            Err(e) => e,
            Ok(_) => panic!("opened without a marker"),
        };
        assert!(matches!(err, Error::NotARepo { .. }), "{err:?}");
        assert!(err.to_string().contains("run `crzarr init` first"));
    }
}

// ---------------------------------------------------------------------------------
// Session-level refusals.

#[tokio::test]
async fn session_refuses_bad_keys() {
    for b in backends() {
        let fx = Fixture::new(b).await;
        let mut r = fx.open().await;
        let group = json!({"zarr_format": 3, "node_type": "group"}).to_string();
        let mut s = r.session();
        let bad_keys: &[(&str, &str)] = &[
            ("../x/c/0", "`.` and `..` segments are not allowed"),
            ("x/c/../../y", "`.` and `..` segments are not allowed"),
            ("x/./c/0", "`.` and `..` segments are not allowed"),
            ("/x/c/0", "absolute keys are not allowed"),
            ("/zarr.json", "absolute keys are not allowed"),
            ("x//c/0", "empty path segment"),
            ("x/c/0/", "empty path segment"),
            ("", "empty key"),
            (".crdt/ops/evil", "`.crdt` is reserved for crzarr"),
            (".crdt/repo.json", "`.crdt` is reserved for crzarr"),
            ("x/.CRDT/0", "`.crdt` is reserved for crzarr"),
            ("x\\c\\0", "control characters and `\\` are not allowed"),
            ("x/c/\n", "control characters and `\\` are not allowed"),
            // Not inside any array: an object, whose key must not name node metadata.
            (
                "nothere/zarr.json/0",
                "`zarr.json` is node metadata, not an object key segment",
            ),
        ];
        for (k, reason) in bad_keys {
            let err = s.set(k, vec![1u8]).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(&err, Error::InvalidKey { key, .. } if key == k),
                "{k:?}: {err:?}"
            );
            assert!(msg.contains(reason), "{k:?}: {msg}");
            assert!(msg.contains(&format!("{k:?}")), "{k:?}: {msg}");
        }
        let long = "a/".repeat(600) + "zarr.json";
        assert!(matches!(
            s.set(&long, group.clone()),
            Err(Error::InvalidKey { .. })
        ));
        // Node names: `__` prefix and `.crdt` anywhere in the path.
        for (k, path, reason) in [
            (
                "__meta/zarr.json",
                "__meta",
                "node names starting with `__` are reserved by Zarr",
            ),
            (
                "g/__x/zarr.json",
                "g/__x",
                "node names starting with `__` are reserved by Zarr",
            ),
            (
                "g/.crdt/zarr.json",
                "g/.crdt/zarr.json",
                "`.crdt` is reserved for crzarr",
            ),
            ("../zarr.json", "../zarr.json", "`..` segments"),
        ] {
            let err = s.set(k, group.clone()).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidKey { key, .. } if key == path),
                "{k}: {err:?}"
            );
            assert!(err.to_string().contains(reason), "{err}");
        }
        for p in ["__g", "a/../b", "/a", "a//b", ".crdt", "zarr.json"] {
            let err = s.create_group(p, Default::default()).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidKey { key, .. } if key == p),
                "{p}: {err:?}"
            );
            let err = s.create_array(p, &array_meta(&[2], &[1])).unwrap_err();
            assert!(matches!(&err, Error::InvalidKey { .. }), "{p}: {err:?}");
        }
        for c in ["../c/0", "c//0", "/c/0", "c/zarr.json", ".crdt/x", ""] {
            let err = s.set_chunk("x", c, Bytes::from_static(b"1")).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidKey { key, .. } if key == c),
                "{c:?}: {err:?}"
            );
            let err = s.delete_chunk("x", c).unwrap_err();
            assert!(matches!(&err, Error::InvalidKey { .. }), "{c:?}: {err:?}");
        }
        for k in ["../x", "/x", "x//c", ".crdt/ops"] {
            assert!(
                matches!(s.delete(k), Err(Error::InvalidKey { .. })),
                "delete {k}"
            );
            assert!(
                matches!(s.delete_prefix(k), Err(Error::InvalidKey { .. })),
                "delete_prefix {k}"
            );
        }
        // A node inside an array.
        let err = s.set("x/inner/zarr.json", group.clone()).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidKey { key, .. } if key == "x/inner/zarr.json"),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("cannot put a node inside array \"x\"")
        );

        // Nothing was staged by any refusal; the session still works.
        assert!(s.is_empty(), "{} ops staged by refused calls", s.len());
        s.set("x/c/3", vec![9u8]).unwrap();
        s.commit(&mut r, None).await.unwrap().unwrap();
        assert_eq!(r.get("x/c/3").await.unwrap().as_deref(), Some(&[9u8][..]));
    }
}

#[tokio::test]
async fn session_refuses_invalid_metadata() {
    for b in backends() {
        let fx = Fixture::new(b).await;
        let mut r = fx.open().await;
        let mut s = r.session();
        let arr = array_meta(&[4], &[2]);
        let without = |f: &str| {
            let mut v = arr.clone();
            v.as_object_mut().unwrap().remove(f);
            v.to_string()
        };
        let with = |f: &str, val: serde_json::Value| {
            let mut v = arr.clone();
            v[f] = val;
            v.to_string()
        };
        let cases: Vec<(String, &str)> = vec![
            ("{not json".into(), "not JSON"),
            ("[1]".into(), "not a JSON object"),
            (without("shape"), "missing required field `shape`"),
            (without("data_type"), "missing required field `data_type`"),
            (without("chunk_grid"), "missing required field `chunk_grid`"),
            (
                without("chunk_key_encoding"),
                "missing required field `chunk_key_encoding`",
            ),
            (without("fill_value"), "missing required field `fill_value`"),
            (without("codecs"), "missing required field `codecs`"),
            (without("zarr_format"), "`zarr_format` must be 3"),
            (with("zarr_format", json!(2)), "this is Zarr v2 metadata"),
            (
                without("node_type"),
                "`node_type` must be \"group\" or \"array\"",
            ),
            (
                with("bogus", json!(1)),
                "unknown field `bogus` without `\"must_understand\": false`",
            ),
            (
                with("ext", json!({"must_understand": true})),
                "unknown field `ext`",
            ),
            (
                with("shape", json!([-1])),
                "`shape` entries must be non-negative integers",
            ),
            (with("shape", json!("4")), "`shape` must be an array"),
            (with("codecs", json!({})), "`codecs` must be an array"),
            (
                with("attributes", json!([1])),
                "`attributes` must be an object",
            ),
            (
                with("dimension_names", json!(["a", "b"])),
                "`dimension_names` must list one entry per dimension",
            ),
            (
                json!({"zarr_format": 3, "node_type": "group", "shape": [1]}).to_string(),
                "unknown field `shape`",
            ),
        ];
        for (doc, reason) in &cases {
            let err = s.set("y/zarr.json", doc.clone()).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidMetadata { key, .. } if key == "y/zarr.json"),
                "{doc}: {err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains(reason), "{doc}: {msg}");
            assert!(msg.contains("\"y/zarr.json\""), "{msg}");
        }
        let err = s.create_array("y", &json!({"zarr_format": 3, "node_type": "array"}));
        assert!(
            matches!(&err, Err(Error::InvalidMetadata { key, .. }) if key == "y/zarr.json"),
            "{err:?}"
        );
        // A shape with the wrong number of dimensions.
        let err = s.resize("x", &[4, 4]).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidMetadata { key, .. } if key == "x/zarr.json"),
            "{err:?}"
        );
        assert!(s.is_empty(), "{} ops staged by refused calls", s.len());

        // Accepted: an ignorable unknown field, and consolidated metadata (dropped).
        s.set(
            "y/zarr.json",
            with("ext", json!({"must_understand": false, "v": 1})),
        )
        .unwrap();
        s.set(
            "g/zarr.json",
            json!({"zarr_format": 3, "node_type": "group", "consolidated_metadata": {"kind": "inline"}})
                .to_string(),
        )
        .unwrap();
        s.commit(&mut r, None).await.unwrap().unwrap();
        let g = r.get("g/zarr.json").await.unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&g).contains("consolidated_metadata"));
    }
}

// ---------------------------------------------------------------------------------
// Decode-level checks: length bombs, non-canonical forms, memory per byte.

fn sample_change() -> Change {
    let repo = RepoId(Ulid::from_bytes([1; 16]));
    let actor = ActorId(Ulid::from_bytes([2; 16]));
    let meta = array_meta(&[4], &[2]);
    let mut meta = meta.as_object().unwrap().clone();
    meta.remove("attributes");
    Change {
        repo,
        actor,
        seq: 1,
        deps: vec![ChangeHash([3; 32])],
        hlc: Hlc((1_700_000_000_000 << 16) | 1),
        wall_ms: 1_700_000_000_000,
        message: Some("m".into()),
        ops: vec![
            Op::CreateGroup {
                path: "".into(),
                attributes: vec![("a".into(), "1".into())],
            },
            Op::CreateArray {
                path: "x".into(),
                metadata: crzarr::zarr::meta::canonical_json(&serde_json::Value::Object(meta)),
                attributes: vec![],
            },
            Op::SetAttr {
                node: OpRef::Local(0),
                key: "k".into(),
                value: "true".into(),
                observed: vec![],
            },
            Op::DeleteAttr {
                node: OpRef::Change(ChangeHash([4; 32]), 7),
                key: "k".into(),
                observed: vec![OpRef::Local(2)],
            },
            Op::Resize {
                node: OpRef::Local(1),
                dims: vec![DimSize {
                    dim: 0,
                    size: 8,
                    observed: vec![OpRef::Local(1)],
                }],
            },
            Op::SetChunk {
                node: OpRef::Local(1),
                key: "c/0".into(),
                data: ChunkData::Inline(vec![1, 2]),
                observed: vec![],
            },
            Op::SetChunk {
                node: OpRef::Local(1),
                key: "c/1".into(),
                data: ChunkData::Blob {
                    hash: BlobHash([5; 32]),
                    len: 5000,
                },
                observed: vec![],
            },
            Op::DeleteChunk {
                node: OpRef::Local(1),
                key: "c/0".into(),
                observed: vec![OpRef::Local(5)],
            },
            Op::DeleteNode {
                path: "x".into(),
                incarnations: vec![OpRef::Local(1)],
            },
        ],
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The header of `sample_change()` as `spec/format.md` spells it out.
const SPEC_HEADER_HEX: &str = "
    43525a43 01 98
    c410 01010101010101010101010101010101
    c410 02020202020202020202020202020202
    01
    91 c420 0303030303030303030303030303030303030303030303030303030303030303
    cf 018bcfe568000001
    cf 0000018bcfe56800
    a1 6d
    99";

/// The array metadata of `sample_change()`'s create-array op: canonical JSON text.
const SPEC_ARRAY_METADATA: &str = r#"{"chunk_grid":{"configuration":{"chunk_shape":[2]},"name":"regular"},"chunk_key_encoding":{"configuration":{"separator":"/"},"name":"default"},"codecs":[{"name":"bytes"}],"data_type":"uint8","fill_value":0,"node_type":"array","shape":[4],"zarr_format":3}"#;

/// Each op of `sample_change()` as `spec/format.md` spells it out.
const SPEC_OP_HEX: &[&str] = &[
    "81 a2 6367 92 a0 91 92 a1 61 a1 31",
    "",
    "81 a2 7361 94 81 a1 6c 00 a1 6b a4 74727565 90",
    "81 a2 6461 93 81 a1 63 92 c420 0404040404040404040404040404040404040404040404040404040404040404 07
     a1 6b 91 81 a1 6c 02",
    "81 a2 7273 92 81 a1 6c 01 91 93 00 08 91 81 a1 6c 01",
    "81 a2 7363 94 81 a1 6c 01 a3 632f30 81 a1 69 c4 02 0102 90",
    "81 a2 7363 94 81 a1 6c 01 a3 632f31 81 a1 62 92 c420
     0505050505050505050505050505050505050505050505050505050505050505 cd 1388 90",
    "81 a2 6463 93 81 a1 6c 01 a3 632f30 91 81 a1 6c 05",
    "81 a2 646e 92 a1 78 91 81 a1 6c 01",
];

/// Verifies every byte-level claim of `spec/format.md` against the encoder and a
/// real file written by a session.
#[tokio::test]
async fn format_spec_example_bytes() {
    let c = sample_change();
    assert!(c.validate().is_ok());
    let bytes = c.encode();
    let header = unhex(SPEC_HEADER_HEX);
    assert_eq!(hex(&bytes[..header.len()]), hex(&header));
    let mut at = header.len();
    for (i, op_hex) in SPEC_OP_HEX.iter().enumerate() {
        let want = if op_hex.is_empty() {
            // CreateArray: {"ca": [path, metadata JSON text (str8, 254 bytes), attributes]}.
            let Op::CreateArray { metadata, .. } = &c.ops[i] else {
                unreachable!()
            };
            assert_eq!(metadata, SPEC_ARRAY_METADATA);
            assert_eq!(metadata.len(), 0xfe);
            [
                &unhex("81 a2 6361 93 a1 78 d9 fe")[..],
                metadata.as_bytes(),
                &[0x90],
            ]
            .concat()
        } else {
            unhex(op_hex)
        };
        assert_eq!(hex(&bytes[at..at + want.len()]), hex(&want), "op {i}");
        at += want.len();
    }
    assert_eq!(at, bytes.len(), "no bytes after the last op");
    let hash = ChangeHash::of(&bytes);
    assert_eq!(Change::decode("k", &bytes, &hash).unwrap(), c);
    // The example's identity and file name, as the spec quotes them.
    assert_eq!(bytes.len(), 567);
    assert_eq!(c.repo.to_string(), "01040G2081040G2081040G2081");
    assert_eq!(
        ChangeName {
            hash,
            actor: c.actor,
            seq: c.seq
        }
        .file_name(),
        "1e1f6483250288da7309f1a1bb9b3742adf38045f7d6737cad39c72be742cb5e-02081040G2081040G2081040G2-1.change"
    );
    // The HLC packing: milliseconds in the high 48 bits, counter in the low 16.
    assert_eq!(c.hlc.millis(), 1_700_000_000_000);
    assert_eq!(c.hlc.0 & 0xffff, 1);

    // A real file written by a session has the same shape.
    let b = memory();
    let fx = Fixture::new(b).await;
    let (h2, c2) = fx.head().clone();
    let key = fx.layout.change(&ChangeName {
        hash: h2,
        actor: c2.actor,
        seq: c2.seq,
    });
    assert!(
        key.as_ref().starts_with(&format!(
            "repo/.crdt/ops/{}-{}-1.change",
            h2.to_hex(),
            c2.actor
        )),
        "{key}"
    );
    let real = get_bytes(&fx.b, &key).await;
    assert_eq!(
        ChangeHash::of(&real),
        h2,
        "identity = blake3 of the exact bytes"
    );
    assert_eq!(&real[..6], b"CRZC\x01\x98");
    assert_eq!(&real[6..8], [0xc4, 0x10]);
    assert_eq!(real[8..24], fx.repo.0.to_bytes());
    assert_eq!(&real[24..26], [0xc4, 0x10]);
    assert_eq!(real[26..42], c2.actor.0.to_bytes());
    assert_eq!(real[SEQ_OFFSET], 0x01);
    assert_eq!(&real[43..46], [0x91, 0xc4, 0x20], "one dep, a 32-byte bin");
    assert_eq!(real[46..78], fx.good[0].0.0);
    assert_eq!(real[78], 0xcf, "a current HLC needs a uint64");
    assert_eq!(
        u64::from_be_bytes(real[79..87].try_into().unwrap()),
        c2.hlc.0
    );
    assert!(c2.hlc > fx.good[0].1.hlc, "hlc > every dep's");
    assert!(c2.hlc.millis().abs_diff(c2.wall_ms) < 60_000);
    assert_eq!(real[87], 0xcf);
    assert_eq!(
        u64::from_be_bytes(real[88..96].try_into().unwrap()),
        c2.wall_ms
    );
    assert_eq!(real[96], 0xc0, "no message: nil");
    assert_eq!(
        Bytes::from(c2.encode()),
        real,
        "decode then encode is identity"
    );
    // The marker.
    let marker: serde_json::Value =
        serde_json::from_slice(&get_bytes(&fx.b, &fx.layout.marker()).await).unwrap();
    assert_eq!(
        marker,
        json!({"format": "crzarr", "format_version": 2, "repo_id": fx.repo.to_string()})
    );
    // zarr.json rendering: sorted keys, 2-space indentation, trailing newline.
    let root = fx.expected_bytes["zarr.json"].clone();
    assert_eq!(
        std::str::from_utf8(&root).unwrap(),
        "{\n  \"attributes\": {\n    \"title\": \"good\"\n  },\n  \"node_type\": \"group\",\n  \"zarr_format\": 3\n}\n"
    );
}

/// Builds a change body from raw parts (for hand-spelled MessagePack).
fn raw_change(deps: &[u8], message: &[u8], ops: &[u8]) -> Vec<u8> {
    let c = sample_change();
    let mut b = CHANGE_MAGIC.to_vec();
    b.push(CHANGE_VERSION_PLAIN);
    b.push(0x98);
    b.extend(rmp_serde::to_vec(&c.repo).unwrap());
    b.extend(rmp_serde::to_vec(&c.actor).unwrap());
    b.extend(rmp_serde::to_vec(&c.seq).unwrap());
    b.extend_from_slice(deps);
    b.extend(rmp_serde::to_vec(&c.hlc).unwrap());
    b.extend(rmp_serde::to_vec(&c.wall_ms).unwrap());
    b.extend_from_slice(message);
    b.extend_from_slice(ops);
    b
}

#[test]
fn raw_change_helper_matches_encoder() {
    let c = Change {
        ops: Vec::new(),
        ..sample_change()
    };
    let deps = [&[0x91, 0xc4, 0x20][..], &[3; 32]].concat();
    assert_eq!(raw_change(&deps, &[0xa1, b'm'], &[0x90]), c.encode());
}

/// MessagePack headers claiming billions of elements with a tiny body: refused
/// quickly, with no large allocation.
#[test]
fn decode_refuses_length_bombs() {
    let huge_arr = [0xdd, 0xff, 0xff, 0xff, 0xff];
    let huge_map = [0xdf, 0xff, 0xff, 0xff, 0xff];
    let huge_str = [0xdb, 0xff, 0xff, 0xff, 0xff];
    let huge_bin = [0xc6, 0xff, 0xff, 0xff, 0xff];
    let dep = [&[0xc4, 0x20][..], &[3; 32]].concat();
    let one_dep = [&[0x91][..], &dep].concat();
    let msg = [0xa1, b'm'];
    let cat = |parts: &[&[u8]]| parts.concat();
    let prefix = [&CHANGE_MAGIC[..], &[CHANGE_VERSION_PLAIN]].concat();
    let bombs: Vec<(&str, Vec<u8>)> = vec![
        ("top-level array", cat(&[&prefix, &huge_arr, &[0x01]])),
        ("top-level map", cat(&[&prefix, &huge_map, &[0xa1, b'r']])),
        ("top-level bin", cat(&[&prefix, &huge_bin, &[0x01]])),
        ("repo id bin", cat(&[&prefix, &[0x98], &huge_bin, &[1; 16]])),
        (
            "deps array",
            raw_change(&cat(&[&huge_arr, &dep]), &msg, &[0x90]),
        ),
        (
            "dep hash bin",
            raw_change(&cat(&[&[0x91], &huge_bin, &[3; 32]]), &msg, &[0x90]),
        ),
        (
            "message str",
            raw_change(&one_dep, &cat(&[&huge_str, b"m"]), &[0x90]),
        ),
        (
            "message bin",
            raw_change(&one_dep, &cat(&[&huge_bin, b"m"]), &[0x90]),
        ),
        (
            "ops array",
            raw_change(
                &one_dep,
                &msg,
                &cat(&[&huge_arr, &unhex("81 a2 646e 92 a0 90")]),
            ),
        ),
        (
            "op variant map",
            raw_change(
                &one_dep,
                &msg,
                &cat(&[&[0x91], &huge_map, &[0xa2, b'd', b'n']]),
            ),
        ),
        (
            "group path str",
            raw_change(
                &one_dep,
                &msg,
                &cat(&[&unhex("91 81 a2 6367 92"), &huge_str, b"a"]),
            ),
        ),
        (
            "attributes array",
            raw_change(
                &one_dep,
                &msg,
                &cat(&[&unhex("91 81 a2 6367 92 a0"), &huge_arr, &[0x92]]),
            ),
        ),
        (
            "attribute value str",
            raw_change(
                &one_dep,
                &msg,
                &cat(&[&unhex("91 81 a2 6367 92 a0 91 92 a1 61"), &huge_str, b"1"]),
            ),
        ),
        (
            "inline chunk bin",
            raw_change(
                &one_dep,
                &msg,
                &cat(&[
                    &unhex("91 81 a2 7363 94 81 a1 6c 00 a3 632f30 81 a1 69"),
                    &huge_bin,
                    &[1],
                ]),
            ),
        ),
        (
            "observed array",
            raw_change(
                &one_dep,
                &msg,
                &cat(&[
                    &unhex("91 81 a2 6461 93 81 a1 6c 00 a1 6b"),
                    &huge_arr,
                    &unhex("81 a1 6c 00"),
                ]),
            ),
        ),
        (
            "resize dims array",
            raw_change(
                &one_dep,
                &msg,
                &cat(&[
                    &unhex("91 81 a2 7273 92 81 a1 6c 00"),
                    &huge_arr,
                    &unhex("93 00 08 90"),
                ]),
            ),
        ),
        (
            "delete-node incarnations",
            raw_change(
                &one_dep,
                &msg,
                &cat(&[
                    &unhex("91 81 a2 646e 92 a0"),
                    &huge_arr,
                    &unhex("81 a1 6c 00"),
                ]),
            ),
        ),
        ("deep nesting", raw_change(&one_dep, &msg, &[0x91; 100_000])),
    ];
    for (what, bytes) in bombs {
        let hash = ChangeHash::of(&bytes);
        let start = Instant::now();
        let (res, peak) = peak_alloc(|| Change::decode("bomb", &bytes, &hash));
        let took = start.elapsed();
        let err = res.expect_err(what);
        let msg = err.to_string();
        assert!(matches!(err, Error::Corrupt { .. }), "{what}: {err:?}");
        assert!(msg.starts_with("bomb: malformed change"), "{what}: {msg}");
        assert!(took < Duration::from_secs(1), "{what}: took {took:?}");
        assert!(
            peak < 4 << 20,
            "{what}: decoding {} bytes allocated {peak} bytes",
            bytes.len()
        );
    }
}

/// Every alternative spelling of a valid change is refused: one encoding per change.
#[test]
fn decode_refuses_non_canonical_spellings() {
    let c = sample_change();
    let good = c.encode();
    let body = &good[5..];
    let prefixed = |b: &[u8]| [&good[..5], b].concat();
    let mut variants: Vec<(&str, Vec<u8>)> = Vec::new();
    // seq as uint8, uint16, uint32, uint64 and as int8 instead of a positive fixint.
    for (name, spelled) in [
        ("uint8", &[0xcc, 1][..]),
        ("uint16", &[0xcd, 0, 1][..]),
        ("uint32", &[0xce, 0, 0, 0, 1][..]),
        ("uint64", &[0xcf, 0, 0, 0, 0, 0, 0, 0, 1][..]),
        ("int8", &[0xd0, 1][..]),
    ] {
        let mut b = good.clone();
        b.splice(SEQ_OFFSET..SEQ_OFFSET + 1, spelled.iter().copied());
        variants.push((name, b));
    }
    // repo id as bin16 instead of bin8.
    let mut b = good.clone();
    b.splice(6..8, [0xc5, 0x00, 0x10]);
    variants.push(("bin16", b));
    // the message as str8 instead of fixstr.
    let at = good.windows(2).position(|w| w == [0xa1, b'm']).unwrap();
    let mut b = good.clone();
    b.splice(at..at + 2, [0xd9, 0x01, b'm']);
    variants.push(("str8", b));
    // the ops array as array16.
    let at = at + 2;
    assert_eq!(good[at], 0x99);
    let mut b = good.clone();
    b.splice(at..at + 1, [0xdc, 0x00, 0x09]);
    variants.push(("array16", b));
    // struct fields by name.
    variants.push((
        "named fields",
        prefixed(&rmp_serde::to_vec_named(&c).unwrap()),
    ));
    // trailing bytes of every kind.
    variants.push(("trailing nil", [&good[..], &[0xc0]].concat()));
    variants.push(("trailing copy", prefixed(&[body, body].concat())));
    // an enum variant by index instead of by name.
    let at = good
        .windows(3)
        .position(|w| w == [0xa2, b'c', b'g'])
        .unwrap();
    let mut b = good.clone();
    b.splice(at..at + 3, [0x00]);
    variants.push(("variant index", b));

    for (what, bytes) in variants {
        let err = Change::decode("k", &bytes, &ChangeHash::of(&bytes)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("non-canonical encoding or trailing bytes")
                || msg.contains("malformed change"),
            "{what}: {msg}"
        );
        // Not even a valid spelling of a different change: nothing decodes.
        assert!(Change::decode_unverified("k", &bytes).is_err(), "{what}");
    }
    // The canonical spelling decodes.
    assert_eq!(
        Change::decode("k", &good, &ChangeHash::of(&good)).unwrap(),
        c
    );
}

/// Decoding a change allocates a bounded multiple of its size, even for the smallest
/// ops (the worst case for in-memory expansion).
#[test]
fn decode_memory_per_byte() {
    let small = |n: usize| Change {
        ops: vec![
            Op::DeleteNode {
                path: String::new(),
                incarnations: vec![],
            };
            n
        ],
        ..sample_change()
    };
    for n in [10_000, 100_000] {
        let bytes = small(n).encode();
        let hash = ChangeHash::of(&bytes);
        let (res, peak) = peak_alloc(|| Change::decode("k", &bytes, &hash));
        assert_eq!(res.unwrap().ops.len(), n);
        let ratio = peak as f64 / bytes.len() as f64;
        eprintln!(
            "decode of {n} minimal ops: {} bytes of file, peak {peak} bytes allocated ({ratio:.1}x)",
            bytes.len()
        );
        assert!(ratio < 64.0, "{ratio}");
    }
    // A typical commit (inline chunks of 1 KiB) stays near its size.
    let chunks = Change {
        ops: (0..1000)
            .map(|i| Op::SetChunk {
                node: OpRef::Change(ChangeHash([4; 32]), 1),
                key: format!("c/{i}"),
                data: ChunkData::Inline(vec![i as u8; 1024]),
                observed: vec![],
            })
            .collect(),
        ..sample_change()
    };
    let bytes = chunks.encode();
    let (res, peak) = peak_alloc(|| Change::decode("k", &bytes, &ChangeHash::of(&bytes)));
    res.unwrap();
    let ratio = peak as f64 / bytes.len() as f64;
    eprintln!(
        "decode of 1000 inline 1 KiB chunks: {} bytes, peak {peak} ({ratio:.1}x)",
        bytes.len()
    );
    assert!(ratio < 4.0, "{ratio}");
}

/// Runs `f` and returns its result with the peak bytes allocated on this thread and
/// the bytes still allocated when it returns (what the result keeps).
fn alloc_profile<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    LIVE.set(0);
    PEAK.set(0);
    TRACK_ON.set(true);
    let out = f();
    TRACK_ON.set(false);
    (out, PEAK.get().max(0) as usize, LIVE.get().max(0) as usize)
}

/// Issue 14 item 9: the pending queue was bounded by file bytes (1 GiB) while decoded
/// changes take up to about 20 times their file. It is bounded by decoded size now:
/// the fold counts each pending change at `Change::decoded_size`, an estimate within
/// a factor of two of the memory the decoded change really keeps.
#[test]
fn pending_bound_counts_decoded_size() {
    use crzarr::fold::{Fold, InsertOutcome, MAX_PENDING_BYTES};
    let smallest = Change {
        ops: vec![
            Op::DeleteNode {
                path: String::new(),
                incarnations: vec![],
            };
            100_000
        ],
        ..sample_change()
    };
    let chunks = Change {
        ops: (0..1000)
            .map(|i| Op::SetChunk {
                node: OpRef::Change(ChangeHash([4; 32]), 1),
                key: format!("c/{i}"),
                data: ChunkData::Inline(vec![i as u8; 1024]),
                observed: vec![OpRef::Change(ChangeHash([6; 32]), i)],
            })
            .collect(),
        ..sample_change()
    };
    let mut ratios = Vec::new();
    for (what, change) in [("smallest ops", smallest), ("1 KiB chunks", chunks)] {
        let bytes = change.encode();
        let hash = ChangeHash::of(&bytes);
        let (decoded, peak, kept) = alloc_profile(|| Change::decode("k", &bytes, &hash).unwrap());
        let estimate = decoded.decoded_size();
        eprintln!(
            "{what}: file {} bytes, decoded keeps {kept} (peak {peak}), estimate {estimate}",
            bytes.len()
        );
        assert!(
            estimate as f64 >= kept as f64 / 2.0 && estimate as f64 <= kept as f64 * 2.0,
            "{what}: estimate {estimate} vs {kept} kept"
        );
        ratios.push(estimate as f64 / bytes.len() as f64);
        // Its dep is absent: it waits, counted at its decoded size, not its file size.
        let mut fold = Fold::new(decoded.repo);
        let outcome = fold.insert(hash, decoded, bytes.len() as u64);
        assert!(matches!(outcome, InsertOutcome::Pending), "{what}");
        assert_eq!(fold.pending_bytes(), estimate, "{what}");
    }
    // Smallest ops: the decoded size is many times the file, so the old bound on file
    // bytes admitted many times MAX_PENDING_BYTES of memory.
    assert!(ratios[0] > 8.0, "{ratios:?}");
    assert!(ratios[1] < 4.0, "{ratios:?}");
    assert_eq!(MAX_PENDING_BYTES, 1 << 30);
}
