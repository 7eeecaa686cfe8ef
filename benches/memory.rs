//! Peak memory per live chunk reference in the folded state (issue 2, section 6).
//! Target: at most 128 bytes per live chunk reference.
//!
//! `cargo bench --bench memory` prints one row per size (1M and 2M live chunk refs).
//!
//! # Method
//!
//! * Each size runs in a fresh child process (this binary re-run with `--child N`),
//!   so the kernel's high-water mark `VmHWM` belongs to that measurement alone.
//! * Baseline: `VmRSS` once the process is set up and a tiny log has been folded
//!   (code and allocator warm), just before the measured fold.
//! * The log (see `workload`: N thousand changes of 1000 new blob chunk refs each,
//!   linear history) is generated, encoded, decoded with the hash check and inserted
//!   one change at a time; each change's bytes are dropped before the next is made.
//!   The input therefore never accumulates: at the peak, besides the folded state,
//!   only one change (1000 ops, a few hundred KB) is in flight.
//! * Then `ViewIndex::build`.
//! * Peak: `VmHWM` at the end, minus the baseline. It includes transients such as a
//!   hash table's or vector's old and new arrays both alive while it grows.
//!   Steady: `VmRSS` at the end, minus the baseline ("before view": the same just
//!   before `ViewIndex::build`).
//! * Bytes per live chunk ref = delta / live chunk refs, counted from the view after
//!   the readings were taken.
//! * The allocator is the system one (glibc malloc): its per-allocation headers and
//!   rounding are part of what is measured.

mod workload;

use crzarr::fold::Fold;
use crzarr::fold::view::ViewIndex;
use crzarr::format::change::Change;
use std::process::Command;
use std::time::Instant;
use workload::Workload;

/// A field of `/proc/self/status` in kB (`VmRSS`, `VmHWM`).
fn status_kb(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Folds `thousands` x 1000 chunk refs and prints one `RESULT` line.
fn child(thousands: usize) {
    let ops_per_change = 1000u32;
    // Warm-up: allocator arenas, code pages, lazy statics.
    {
        let mut w = Workload::new(ops_per_change, 0);
        let mut fold = Fold::new(w.repo);
        for _ in 0..3 {
            let e = w.next_change();
            let c = Change::decode("warm", &e.bytes, &e.hash).expect("valid change");
            fold.insert(e.hash, c, e.bytes.len() as u64);
        }
        let _ = ViewIndex::build(&fold);
    }
    let mut w = Workload::new(ops_per_change, 0);
    let repo = w.repo;
    let base_rss = status_kb("VmRSS").unwrap_or(0);
    let start = Instant::now();
    let mut fold = Fold::new(repo);
    let mut ops = 0usize;
    for _ in 0..=thousands {
        let e = w.next_change();
        ops += e.ops;
        let c = Change::decode("mem", &e.bytes, &e.hash).expect("valid change");
        fold.insert(e.hash, c, e.bytes.len() as u64);
    }
    let rss_loose = status_kb("VmRSS").unwrap_or(0);
    let view = ViewIndex::build(&fold);
    let secs = start.elapsed().as_secs_f64();
    let hwm = status_kb("VmHWM").unwrap_or(0);
    let rss = status_kb("VmRSS").unwrap_or(0);
    let live = view.with(&fold).chunk_keys("data").len();
    println!(
        "RESULT live={live} ops={ops} base_kb={base_rss} hwm_kb={hwm} loose_kb={rss_loose} rss_kb={rss} secs={secs:.3}"
    );
}

fn field(line: &str, name: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let n = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(1000);
        child(n);
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if status_kb("VmHWM").is_none() {
        println!("memory bench: /proc/self/status not readable here; skipped");
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    println!("folded state memory, per live chunk ref (target: <= 128 B)");
    println!(
        "{:>10} {:>10} {:>10} {:>10} {:>12} {:>13} {:>22} {:>8}",
        "live refs",
        "ops",
        "peak MB",
        "steady MB",
        "peak B/ref",
        "steady B/ref",
        "before view B/ref",
        "fold s"
    );
    for thousands in [1000usize, 2000] {
        let out = Command::new(&exe)
            .args(["--child", &thousands.to_string()])
            .output()
            .expect("run child");
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find(|l| l.starts_with("RESULT")) else {
            println!(
                "child for {thousands}k changes failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        };
        let get = |n| field(line, n).unwrap_or(0.0);
        let (live, base) = (get("live").max(1.0), get("base_kb"));
        let peak = (get("hwm_kb") - base) * 1024.0;
        let steady = (get("rss_kb") - base) * 1024.0;
        let loose = (get("loose_kb") - base) * 1024.0;
        println!(
            "{:>10} {:>10} {:>10.1} {:>10.1} {:>12.1} {:>13.1} {:>22.1} {:>8.2}",
            live,
            get("ops"),
            peak / 1e6,
            steady / 1e6,
            peak / live,
            steady / live,
            loose / live,
            get("secs")
        );
    }
}
