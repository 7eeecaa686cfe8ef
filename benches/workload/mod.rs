//! Shared by the benchmarks: a synthetic change log (fold, memory) and reading
//! criterion's results back for summary tables (fold, commit).
//!
//! Change 0 creates the root group and one 2-d array `data` (chunks of 1x1, so any
//! `c/<i>/<j>` key is a valid chunk). Every later change depends on the one before
//! (a linear history, as one busy writer or a few taking turns produce), rotates
//! among 8 actors, and writes `ops_per_change` chunk references to blobs:
//! `c/<change>/<op>`, new keys, except that the last `overwrites` ops of a change
//! overwrite chunks of the previous change, naming them in `observed` (the
//! read-modify-write a Zarr client does on a partial chunk). Live chunk refs after
//! n changes: (n - 1) x (ops_per_change - overwrites) + overwrites.
#![allow(dead_code)]

use crzarr::format::change::{Change, ChunkData, Op, OpRef};
use crzarr::format::ids::{ActorId, BlobHash, ChangeHash, Hlc, RepoId};
use std::path::PathBuf;

/// Generates encoded changes one at a time (nothing is kept but the last hash).
pub struct Workload {
    /// The repository every change belongs to.
    pub repo: RepoId,
    actors: Vec<ActorId>,
    seqs: Vec<u64>,
    ops_per_change: u32,
    overwrites: u32,
    array: Option<OpRef>,
    prev: Option<ChangeHash>,
    index: u64,
}

/// One encoded change: its hash (as named in the bucket), its bytes, and its op count.
pub struct Encoded {
    pub hash: ChangeHash,
    pub bytes: Vec<u8>,
    pub ops: usize,
}

fn fake_blob(n: u64) -> BlobHash {
    // splitmix64: distinct, incompressible-looking hashes without hashing anything.
    let mut x = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut out = [0u8; 32];
    for chunk in out.chunks_exact_mut(8) {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    BlobHash(out)
}

impl Workload {
    /// A workload whose changes (after the first) hold `ops_per_change` chunk ops, of
    /// which `overwrites` replace chunks of the previous change.
    pub fn new(ops_per_change: u32, overwrites: u32) -> Self {
        assert!(overwrites <= ops_per_change);
        Workload {
            repo: RepoId::generate(),
            actors: (0..8).map(|_| ActorId::generate()).collect(),
            seqs: vec![0; 8],
            ops_per_change,
            overwrites,
            array: None,
            prev: None,
            index: 0,
        }
    }

    /// The next change: the first creates the hierarchy, the others write chunks.
    pub fn next_change(&mut self) -> Encoded {
        let i = self.index;
        self.index += 1;
        let a = (i % 8) as usize;
        self.seqs[a] += 1;
        let ops = match (self.array, self.prev) {
            (Some(array), Some(prev)) => {
                let fresh = self.ops_per_change - self.overwrites;
                let mut ops = Vec::with_capacity(self.ops_per_change as usize);
                for j in 0..fresh {
                    ops.push(Op::SetChunk {
                        node: array,
                        key: format!("c/{i}/{j}"),
                        data: ChunkData::Blob {
                            hash: fake_blob(i << 24 | j as u64),
                            len: 1 << 20,
                        },
                        observed: vec![],
                    });
                }
                // Overwrite what op j of the previous change wrote.
                for j in 0..self.overwrites {
                    ops.push(Op::SetChunk {
                        node: array,
                        key: format!("c/{}/{j}", i - 1),
                        data: ChunkData::Blob {
                            hash: fake_blob(i << 24 | (fresh + j) as u64),
                            len: 1 << 20,
                        },
                        // Change 1 follows the genesis, which wrote no chunks.
                        observed: if i > 1 {
                            vec![OpRef::Change(prev, j)]
                        } else {
                            vec![]
                        },
                    });
                }
                ops
            }
            _ => {
                let meta = serde_json::json!({
                    "zarr_format": 3, "node_type": "array", "shape": [1u64 << 40, 1u64 << 20],
                    "data_type": "float32",
                    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, 1]}},
                    "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                    "fill_value": 0.0, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}]
                });
                vec![
                    Op::CreateGroup {
                        path: String::new(),
                        attributes: vec![],
                    },
                    Op::CreateArray {
                        path: "data".into(),
                        metadata: crzarr::zarr::meta::canonical_json(&meta),
                        attributes: vec![("units".into(), "\"K\"".into())],
                    },
                ]
            }
        };
        let change = Change {
            repo: self.repo,
            actor: self.actors[a],
            seq: self.seqs[a],
            deps: self.prev.into_iter().collect(),
            hlc: Hlc((1_800_000_000_000u64 << 16) + i),
            wall_ms: 1_800_000_000_000 + i,
            message: None,
            ops,
        };
        let bytes = change.encode();
        let hash = ChangeHash::of(&bytes);
        if self.array.is_none() {
            self.array = Some(OpRef::Change(hash, 1));
        }
        self.prev = Some(hash);
        Encoded {
            hash,
            bytes,
            ops: change.ops.len(),
        }
    }

    /// The first `n` changes, encoded.
    pub fn take(&mut self, n: usize) -> Vec<Encoded> {
        (0..n).map(|_| self.next_change()).collect()
    }
}

/// Where criterion writes its results (the same search criterion does).
pub fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/criterion")
}

/// Median time per iteration (ns) of a benchmark that ran, from criterion's results.
pub fn median_ns(id: &str) -> Option<f64> {
    let path = criterion_dir().join(format!("{id}/new/estimates.json"));
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}
