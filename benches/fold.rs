//! Decode + fold throughput (issue 2, section 6).
//!
//! The encoded change files are built before timing. The timed part is what a reader
//! does with fetched bytes: `Change::decode` (hash check, strict decode, canonical
//! re-encode check, validation) and `Fold::insert` for every change, then
//! `ViewIndex::build`. Dropping the folded state is not timed.
//!
//! Cases: 1k, 10k and 100k changes of 4 chunk ops each (3 new chunks, 1 overwrite of
//! the previous change's chunk), and 1M chunk ops as 1000 changes of 1000 new
//! chunks. Target: at least 2M chunk ops/s on one core.
//!
//! `cargo bench --bench fold` runs it (a few minutes); add `-- --quick` for a first
//! look. A summary with medians in changes/s and ops/s is printed at the end.

mod workload;
use workload::median_ns;

use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput};
use crzarr::fold::view::ViewIndex;
use crzarr::fold::{Fold, InsertOutcome};
use crzarr::format::change::Change;
use crzarr::format::ids::{ChangeHash, RepoId};
use std::cell::RefCell;
use std::time::Duration;
use workload::{Encoded, Workload};

/// One benchmark case.
struct Case {
    id: &'static str,
    changes: usize,
    ops_per_change: u32,
    overwrites: u32,
}

const CASES: &[Case] = &[
    Case {
        id: "1k_changes_x4",
        changes: 1_000,
        ops_per_change: 4,
        overwrites: 1,
    },
    Case {
        id: "10k_changes_x4",
        changes: 10_000,
        ops_per_change: 4,
        overwrites: 1,
    },
    Case {
        id: "100k_changes_x4",
        changes: 100_000,
        ops_per_change: 4,
        overwrites: 1,
    },
    Case {
        id: "1M_chunk_ops_1k_x1000",
        // The first change creates the array; 1000 more hold 1000 chunk ops each.
        changes: 1_001,
        ops_per_change: 1000,
        overwrites: 0,
    },
];

/// The timed work: decode every change (with hash check), fold, build the view.
fn decode_fold(repo: RepoId, input: &[Encoded]) -> (Fold, ViewIndex) {
    let mut fold = Fold::new(repo);
    for e in input {
        let change = Change::decode("bench", &e.bytes, &e.hash).expect("valid change");
        fold.insert(e.hash, change, e.bytes.len() as u64);
    }
    let view = ViewIndex::build(&fold);
    (fold, view)
}

/// Checks once, untimed, that the workload folds as intended.
fn check(repo: RepoId, input: &[Encoded], case: &Case) {
    let mut fold = Fold::new(repo);
    for e in input {
        let change = Change::decode("bench", &e.bytes, &e.hash).expect("valid change");
        let outcome = fold.insert(e.hash, change, e.bytes.len() as u64);
        assert_eq!(outcome, InsertOutcome::Applied { unblocked: 0 });
    }
    let view = ViewIndex::build(&fold);
    let live = view.with(&fold).chunk_keys("data").len();
    let fresh = (case.ops_per_change - case.overwrites) as usize;
    let expected = (case.changes - 1) * fresh + case.overwrites as usize;
    assert_eq!(live, expected, "{}", case.id);
}

struct Ran {
    id: &'static str,
    changes: usize,
    ops: usize,
}

/// Under `--profile-time` (for a profiler) only the timed work runs: no check.
fn profiling() -> bool {
    std::env::args().any(|a| a == "--profile-time")
}

fn bench(c: &mut Criterion, ran: &RefCell<Vec<Ran>>) {
    let mut group = c.benchmark_group("decode_fold");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(8));
    for case in CASES {
        let mut w = Workload::new(case.ops_per_change, case.overwrites);
        let input = w.take(case.changes);
        let ops: usize = input.iter().map(|e| e.ops).sum();
        let repo = w.repo;
        let mut checked = false;
        group.throughput(Throughput::Elements(ops as u64));
        group.bench_function(BenchmarkId::from_parameter(case.id), |b| {
            if !checked {
                if !profiling() {
                    check(repo, &input, case);
                }
                checked = true;
                ran.borrow_mut().push(Ran {
                    id: case.id,
                    changes: case.changes,
                    ops,
                });
            }
            b.iter_with_large_drop(|| decode_fold(repo, &input))
        });
    }
    group.finish();
}

/// Where the time goes, for the larger cases: hash check alone, strict decode alone
/// (`decode_unverified`: msgpack, canonical re-encode check, validation), and
/// `Fold::insert` of already decoded changes + `ViewIndex::build`. The three add up to
/// about the full measurement.
fn bench_parts(c: &mut Criterion, ran: &RefCell<Vec<RanPart>>) {
    let mut group = c.benchmark_group("decode_fold_parts");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for case in CASES
        .iter()
        .filter(|c| c.changes * c.ops_per_change as usize >= 400_000)
    {
        let mut w = Workload::new(case.ops_per_change, case.overwrites);
        let input = w.take(case.changes);
        let ops: usize = input.iter().map(|e| e.ops).sum();
        let repo = w.repo;
        group.throughput(Throughput::Elements(ops as u64));
        let record = |part: &'static str| {
            let mut ran = ran.borrow_mut();
            if !ran.iter().any(|r| r.case == case.id && r.part == part) {
                ran.push(RanPart {
                    case: case.id,
                    part,
                    ops,
                });
            }
        };
        group.bench_function(BenchmarkId::new(case.id, "hash"), |b| {
            record("hash");
            b.iter(|| {
                for e in &input {
                    std::hint::black_box(ChangeHash::of(&e.bytes));
                }
            })
        });
        group.bench_function(BenchmarkId::new(case.id, "decode"), |b| {
            record("decode");
            b.iter_with_large_drop(|| {
                input
                    .iter()
                    .map(|e| Change::decode_unverified("bench", &e.bytes).expect("valid change"))
                    .collect::<Vec<Change>>()
            })
        });
        let decoded: Vec<(ChangeHash, Change, u64)> = input
            .iter()
            .map(|e| {
                let c = Change::decode_unverified("bench", &e.bytes).expect("valid change");
                (e.hash, c, e.bytes.len() as u64)
            })
            .collect();
        drop(input);
        group.bench_function(BenchmarkId::new(case.id, "insert_view"), |b| {
            record("insert_view");
            b.iter_batched(
                || decoded.clone(),
                |changes| {
                    let mut fold = Fold::new(repo);
                    for (h, c, size) in changes {
                        fold.insert(h, c, size);
                    }
                    let view = ViewIndex::build(&fold);
                    (fold, view)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

struct RanPart {
    case: &'static str,
    part: &'static str,
    ops: usize,
}

fn main() {
    let ran = RefCell::new(Vec::new());
    let ran_parts = RefCell::new(Vec::new());
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &ran);
    bench_parts(&mut c, &ran_parts);
    c.final_summary();

    println!("\ndecode + fold + view, medians (one core):");
    println!(
        "{:<24} {:>9} {:>10} {:>12} {:>14} {:>14}",
        "case", "changes", "ops", "median ms", "changes/s", "ops/s"
    );
    for r in ran.borrow().iter() {
        match median_ns(&format!("decode_fold/{}", r.id)) {
            Some(ns) => {
                let s = ns / 1e9;
                println!(
                    "{:<24} {:>9} {:>10} {:>12.2} {:>14.0} {:>14.0}",
                    r.id,
                    r.changes,
                    r.ops,
                    ns / 1e6,
                    r.changes as f64 / s,
                    r.ops as f64 / s
                );
            }
            None => println!("{:<24} (no criterion estimate found)", r.id),
        }
    }

    if !ran_parts.borrow().is_empty() {
        println!("\nwhere the time goes, medians:");
        println!(
            "{:<24} {:<12} {:>12} {:>10}",
            "case", "part", "median ms", "ns/op"
        );
        for r in ran_parts.borrow().iter() {
            match median_ns(&format!("decode_fold_parts/{}/{}", r.case, r.part)) {
                Some(ns) => println!(
                    "{:<24} {:<12} {:>12.2} {:>10.0}",
                    r.case,
                    r.part,
                    ns / 1e6,
                    ns / r.ops as f64
                ),
                None => println!(
                    "{:<24} {:<12} (no criterion estimate found)",
                    r.case, r.part
                ),
            }
        }
    }
}
