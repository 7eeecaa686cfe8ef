//! crzarr versus Icechunk, side by side, on the same latency-injected store.
//! Prints markdown tables; see `benches/README.md` for what each workload measures.
//!
//! `cargo run --release -- [--quick] [--out RESULTS.md]` (from this directory, with
//! `CARGO_TARGET_DIR` wherever you like).

mod stack;
mod systems;

use clap::Parser;
use crzarr::io::counting::RequestCounts;
use stack::{Base, Stack};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use systems::*;

#[derive(Parser, Debug)]
#[command(about = "crzarr vs Icechunk on the same latency-injected object store")]
struct Args {
    /// Runs per measurement; tables show medians.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Latencies injected per request, in milliseconds.
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 2, 20])]
    latencies: Vec<u64>,
    /// Workload 1: chunks per commit.
    #[arg(long, value_delimiter = ',', default_values_t = [1u64, 100, 1000])]
    commit_sizes: Vec<u64>,
    /// Workload 2: commits before the cold open.
    #[arg(long, default_value_t = 1000)]
    open_history: u64,
    /// Workload 3: numbers of concurrent writers.
    #[arg(long, value_delimiter = ',', default_values_t = [2usize, 8, 32])]
    writers: Vec<usize>,
    /// Workload 3: commits per writer (one chunk each, disjoint between writers).
    #[arg(long, default_value_t = 20)]
    commits_per_writer: u64,
    /// Workload 3: runs per measurement (slow for Icechunk at 32 writers).
    #[arg(long, default_value_t = 3)]
    concurrent_runs: usize,
    /// Workload 3 and 4: rebases Icechunk may do before a commit counts as failed.
    #[arg(long, default_value_t = 50)]
    max_retries: u32,
    /// Workload 4: commits landing while the offline writer is away.
    #[arg(long, default_value_t = 100)]
    reconnect_behind: u64,
    /// Workload 4: chunks in the offline writer's change.
    #[arg(long, default_value_t = 10)]
    reconnect_chunks: u64,
    /// Workload 5: history lengths (commits) at which opens are measured.
    #[arg(long, value_delimiter = ',', default_values_t = [100u64, 1000, 10000])]
    history: Vec<u64>,
    /// Workload 5: seconds either system may spend building history before the
    /// longer lengths are skipped for it.
    #[arg(long, default_value_t = 900)]
    history_budget_secs: u64,
    /// A first look in a few minutes: 2 runs (1 concurrent), latencies 0 and 20 ms,
    /// commits of 1 and 100 chunks, 2 and 8 writers, history 100 and 1000.
    #[arg(long)]
    quick: bool,
    /// Only these workloads: commit, open, concurrent, reconnect, history.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also write the report (markdown) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where temporary store directories go (default: the system temp dir).
    #[arg(long)]
    workdir: Option<PathBuf>,
}

impl Args {
    fn apply_quick(&mut self) {
        if self.quick {
            self.runs = 2;
            self.concurrent_runs = 1;
            self.latencies = vec![0, 20];
            self.commit_sizes = vec![1, 100];
            self.writers = vec![2, 8];
            self.history = vec![100, 1000];
        }
    }

    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

/// The report: printed as it goes, and kept for `--out`.
struct Report {
    text: String,
    headline: Vec<String>,
    out: Option<PathBuf>,
}

impl Report {
    fn line(&mut self, s: impl AsRef<str>) {
        println!("{}", s.as_ref());
        self.text.push_str(s.as_ref());
        self.text.push('\n');
    }

    /// Writes what there is so far, so an interrupted run leaves its tables.
    fn flush(&self) {
        if let Some(path) = &self.out {
            let mut text = self.text.clone();
            if !self.headline.is_empty() {
                text.push_str("\n## Headline (goals)\n\n");
                for h in &self.headline {
                    let _ = writeln!(text, "- {h}");
                }
            }
            if let Err(e) = std::fs::write(path, text) {
                eprintln!("cannot write {}: {e}", path.display());
            }
        }
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One measured run.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    /// Wall time, milliseconds.
    ms: f64,
    counts: RequestCounts,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians over runs.
#[derive(Clone, Copy, Debug)]
struct Med {
    ms: f64,
    req: f64,
    rt: f64,
    /// KiB carried by GET answers.
    kib: f64,
}

fn med(samples: &[Sample]) -> Med {
    Med {
        ms: median(samples.iter().map(|s| s.ms).collect()),
        req: median(samples.iter().map(|s| s.counts.requests() as f64).collect()),
        rt: median(
            samples
                .iter()
                .map(|s| s.counts.round_trips as f64)
                .collect(),
        ),
        kib: median(
            samples
                .iter()
                .map(|s| s.counts.get_bytes as f64 / 1024.0)
                .collect(),
        ),
    }
}

fn f1(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn num(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

fn elapsed_ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> R<()> {
    let mut args = Args::parse();
    args.apply_quick();
    let workdir = args.workdir.clone().unwrap_or_else(std::env::temp_dir);
    let mut rep = Report {
        text: String::new(),
        headline: Vec::new(),
        out: args.out.clone(),
    };
    header(&mut rep, &args);
    let started = Instant::now();
    if args.wants("commit") {
        commit_workload(&mut rep, &args, &workdir).await?;
        rep.flush();
    }
    if args.wants("open") {
        open_workload(&mut rep, &args, &workdir).await?;
        rep.flush();
    }
    if args.wants("concurrent") {
        concurrent_workload(&mut rep, &args, &workdir).await?;
        rep.flush();
    }
    if args.wants("reconnect") {
        reconnect_workload(&mut rep, &args, &workdir).await?;
        rep.flush();
    }
    if args.wants("history") {
        history_workload(&mut rep, &args, &workdir).await?;
        rep.flush();
    }
    rep.line("");
    rep.line(format!(
        "Total harness time: {:.0} s.",
        started.elapsed().as_secs_f64()
    ));
    rep.line("");
    rep.line("## Headline (goals)");
    rep.line("");
    for h in rep.headline.clone() {
        rep.line(format!("- {h}"));
    }
    let headline = std::mem::take(&mut rep.headline);
    rep.flush();
    rep.headline = headline;
    Ok(())
}

fn header(rep: &mut Report, args: &Args) {
    rep.line("# crzarr vs Icechunk");
    rep.line("");
    rep.line(format!(
        "crzarr (this repository, path dependency) vs icechunk 2.3.1 (crates.io, `default-features = false`), \
         object_store 0.14, {} CPUs. Medians of {} runs ({} for concurrent writers); wall times in ms unless marked.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.runs,
        args.concurrent_runs
    ));
    let git = |a: &[&str]| {
        std::process::Command::new("git")
            .args(["-C", env!("CARGO_MANIFEST_DIR")])
            .args(a)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(head) = git(&["rev-parse", "--short", "HEAD"]) {
        let dirty =
            git(&["status", "--porcelain", "--", "../../src"]).is_some_and(|s| !s.is_empty());
        rep.line(format!(
            "crzarr at commit {head}{} (when the harness was run; the binary is built from the working tree).",
            if dirty { " with uncommitted changes in src/" } else { "" }
        ));
    }
    rep.line("");
    rep.line(format!(
        "**Injected latency**: `object_store::throttle::ThrottledStore` with `wait_put_per_call`, `wait_get_per_call`, \
         `wait_list_per_call`, `wait_list_with_delimiter_per_call` and `wait_delete_per_call` all = L, everything per \
         byte or per entry 0 (copies and renames wait as puts), for L in {:?} ms. A listing waits once however many \
         keys it returns (real S3 pages every 1000 keys).",
        args.latencies
    ));
    rep.line("");
    rep.line(
        "**Store**: base store -> ThrottledStore -> `crzarr::io::counting::CountingStore` (requests and sequential round \
         trips; a LIST counts as one request). crzarr gets that stack as its `Arc<dyn ObjectStore>`; Icechunk gets the \
         same stack through its own `ObjectStorage` (its object_store-backed storage), via a registered \
         `ObjectStoreBackend` whose client is the stack and whose settings are those of Icechunk's backend for the same \
         base store. Base: a fresh local directory (`LocalFileSystem`) per run, except concurrent writers: in-memory \
         (`InMemory`), because Icechunk's local-filesystem storage is not safe for concurrent commits (no conditional \
         update; Icechunk itself warns so). Each system has its own store.",
    );
    rep.line("");
    rep.line(format!(
        "**Data**: one 1-d uint8 array, chunks of {} bytes, `bytes` codec only (uncompressed), written through each \
         system's Zarr-store interface (`WriteSession::set` / `icechunk::Store::set`); every chunk is its own object in \
         both (above both inline thresholds). **Concurrency**: {} requests in flight for both (crzarr \
         `open_with_concurrency`, Icechunk `max_concurrent_requests`, and {} parallel `Store::set` calls for Icechunk's \
         chunk uploads). **Cold reads**: a new `Repo` / a new `Storage` + `Repository` each time.",
        CHUNK_BYTES, CONCURRENCY, CONCURRENCY
    ));
    rep.line("");
    rep.line(
        "`min` columns: the physical minimum of the crzarr operation, one dependent step per round trip \
         (see benches/README.md). Ratios are crzarr / Icechunk (below 1: crzarr faster).",
    );
}

// ---------------------------------------------------------------- 1. commit

async fn commit_crz(k: u64, lat: u64, wd: &std::path::Path) -> R<Sample> {
    let st = Stack::new(Base::Dir, wd);
    crz_init(st.store()).await?;
    let mut repo = crz_open(st.store()).await?;
    let chunks: Vec<u64> = (0..k).collect();
    st.set_latency(ms(lat));
    st.reset();
    let t = Instant::now();
    crz_commit(&mut repo, &chunks, 1).await?;
    let s = Sample {
        ms: elapsed_ms(t),
        counts: st.counts(),
    };
    st.set_latency(Duration::ZERO);
    let check = crz_open(st.store()).await?;
    if crz_get(&check, k - 1).await?.as_deref() != Some(&chunk_bytes(k - 1, 1)[..]) {
        return Err("crzarr commit: chunk missing afterwards".into());
    }
    Ok(s)
}

async fn commit_ice(k: u64, lat: u64, wd: &std::path::Path) -> R<Sample> {
    let st = Stack::new(Base::Dir, wd);
    ice_init(st.icechunk_storage()).await?;
    let repo = ice_open(st.icechunk_storage()).await?;
    let store = ice_begin(&repo).await?;
    let chunks: Vec<u64> = (0..k).collect();
    st.set_latency(ms(lat));
    st.reset();
    let t = Instant::now();
    ice_write(&store, &chunks, 1).await?;
    let p = ice_publish(&store, 0).await;
    let s = Sample {
        ms: elapsed_ms(t),
        counts: st.counts(),
    };
    if let Some(f) = p.failure {
        return Err(format!("icechunk commit failed: {f}").into());
    }
    st.set_latency(Duration::ZERO);
    let check = ice_reader(&ice_open(st.icechunk_storage()).await?).await?;
    if ice_get(&check, k - 1).await?.as_deref() != Some(&chunk_bytes(k - 1, 1)[..]) {
        return Err("icechunk commit: chunk missing afterwards".into());
    }
    Ok(s)
}

async fn commit_workload(rep: &mut Report, args: &Args, wd: &std::path::Path) -> R<()> {
    rep.line("");
    rep.line("## 1. Commit of k chunks to one array");
    rep.line("");
    rep.line(
        "A writer with an open repository (crzarr: a `Repo`; Icechunk: a writable session on the branch tip, \
         not timed) writes k new chunks and commits. Timed: crzarr `set` x k + `commit` (uploads happen in commit); \
         Icechunk `Store::set` x k (uploads, 32 at a time) + `commit`. Fresh repository each run.",
    );
    rep.line("");
    rep.line(
        "| L ms | k | crzarr ms | crzarr req | crzarr RT | min req / RT | Icechunk ms | Icechunk req | Icechunk RT | ratio ms |",
    );
    rep.line("|---|---|---|---|---|---|---|---|---|---|");
    for &lat in &args.latencies {
        for &k in &args.commit_sizes {
            let (mut cz, mut ic) = (Vec::new(), Vec::new());
            for _ in 0..args.runs {
                cz.push(commit_crz(k, lat, wd).await?);
                ic.push(commit_ice(k, lat, wd).await?);
            }
            let (c, i) = (med(&cz), med(&ic));
            rep.line(format!(
                "| {lat} | {k} | {} | {} | {} | {} / 2 ({} at {CONCURRENCY} in flight) | {} | {} | {} | {} |",
                f1(c.ms),
                num(c.req),
                num(c.rt),
                k + 1,
                k.div_ceil(CONCURRENCY as u64) + 1,
                f1(i.ms),
                num(i.req),
                num(i.rt),
                ratio(c.ms, i.ms)
            ));
            if lat == 20 {
                let r = c.ms / i.ms;
                rep.headline.push(format!(
                    "Commit k={k} at 20 ms: crzarr {} ms vs Icechunk {} ms, ratio {:.2} (goal <= 0.5: {}).",
                    f1(c.ms),
                    f1(i.ms),
                    r,
                    if r <= 0.5 { "met" } else { "MISSED" }
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- cold reads

/// A cold open and the read of one chunk: wall time and requests to the end of the
/// open and to the end of the read.
#[derive(Clone, Copy, Debug, Default)]
struct Cold {
    open: Sample,
    total: Sample,
}

async fn cold_crz(st: &Stack, chunk: u64, expect: &[u8]) -> R<Cold> {
    st.reset();
    let t = Instant::now();
    let repo = crz_open(st.store()).await?;
    let open = Sample {
        ms: elapsed_ms(t),
        counts: st.counts(),
    };
    let got = crz_get(&repo, chunk).await?;
    let total = Sample {
        ms: elapsed_ms(t),
        counts: st.counts(),
    };
    if got.as_deref() != Some(expect) {
        return Err(format!("crzarr: chunk {chunk} wrong or missing on cold read").into());
    }
    Ok(Cold { open, total })
}

async fn cold_ice(st: &Stack, chunk: u64, expect: &[u8]) -> R<Cold> {
    let storage = st.icechunk_storage();
    st.reset();
    let t = Instant::now();
    let repo = ice_open(storage).await?;
    let store = ice_reader(&repo).await?;
    let open = Sample {
        ms: elapsed_ms(t),
        counts: st.counts(),
    };
    let got = ice_get(&store, chunk).await?;
    let total = Sample {
        ms: elapsed_ms(t),
        counts: st.counts(),
    };
    if got.as_deref() != Some(expect) {
        return Err(format!("icechunk: chunk {chunk} wrong or missing on cold read").into());
    }
    Ok(Cold { open, total })
}

const HISTORY_TAG: u64 = 5;

/// Commits chunks `from..to`, one per commit (the history the open workloads read).
async fn grow_crz(repo: &mut crzarr::repo::Repo, from: u64, to: u64) -> R<()> {
    for i in from..to {
        crz_commit(repo, &[i], HISTORY_TAG).await?;
    }
    Ok(())
}

async fn grow_ice(repo: &icechunk::Repository, from: u64, to: u64) -> R<()> {
    for i in from..to {
        let store = ice_begin(repo).await?;
        ice_write(&store, &[i], HISTORY_TAG).await?;
        if let Some(f) = ice_publish(&store, 0).await.failure {
            return Err(f.into());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- 2. open

async fn open_workload(rep: &mut Report, args: &Args, wd: &std::path::Path) -> R<()> {
    let n = args.open_history;
    rep.line("");
    rep.line(format!(
        "## 2. Cold open and first chunk read after {n} commits"
    ));
    rep.line("");
    rep.line(format!(
        "History: {n} commits of one chunk each, built at 0 ms; then each row injects L and measures a cold open \
         (crzarr `Repo::open`; Icechunk `Repository::open` + `readonly_session` on the branch tip) and the read of \
         chunk 0. Maintenance as each system recommends: crzarr `compact` + `gc` (covered change files removed); \
         Icechunk `rewrite_manifests` (snapshot expiry not applied: it deletes history)."
    ));
    let expect = chunk_bytes(0, HISTORY_TAG);

    let t = Instant::now();
    let cst = Stack::new(Base::Dir, wd);
    crz_init(cst.store()).await?;
    let mut w = crz_open(cst.store()).await?;
    grow_crz(&mut w, 0, n).await?;
    drop(w);
    let crz_build = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let ist = Stack::new(Base::Dir, wd);
    ice_init(ist.icechunk_storage()).await?;
    let w = ice_open(ist.icechunk_storage()).await?;
    grow_ice(&w, 0, n).await?;
    drop(w);
    let ice_build = t.elapsed().as_secs_f64();
    rep.line(format!(
        "Building the history at 0 ms took crzarr {crz_build:.1} s, Icechunk {ice_build:.1} s."
    ));
    rep.line("");
    rep.line(
        "| maintenance | L ms | crzarr open ms | crzarr open+read ms | crzarr req | crzarr RT | min req / RT | crzarr KiB read | Icechunk open ms | Icechunk open+read ms | Icechunk req | Icechunk RT | Icechunk KiB read | ratio open+read |",
    );
    rep.line("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for phase in ["none", "applied"] {
        if phase == "applied" {
            let t = Instant::now();
            crz_compact(cst.store()).await?;
            let c = t.elapsed().as_secs_f64();
            let t = Instant::now();
            ice_compact(ist.icechunk_storage()).await?;
            let i = t.elapsed().as_secs_f64();
            rep.line(format!(
                "| (maintenance at 0 ms: crzarr compact+gc {c:.2} s, Icechunk rewrite_manifests {i:.2} s) | | | | | | | | | | | | | |"
            ));
        }
        for &lat in &args.latencies {
            cst.set_latency(ms(lat));
            ist.set_latency(ms(lat));
            let (mut cz, mut ic) = (Vec::new(), Vec::new());
            for _ in 0..args.runs {
                cz.push(cold_crz(&cst, 0, &expect).await?);
                ic.push(cold_ice(&ist, 0, &expect).await?);
            }
            cst.set_latency(Duration::ZERO);
            ist.set_latency(Duration::ZERO);
            let co: Vec<Sample> = cz.iter().map(|c| c.open).collect();
            let ct: Vec<Sample> = cz.iter().map(|c| c.total).collect();
            let io: Vec<Sample> = ic.iter().map(|c| c.open).collect();
            let it: Vec<Sample> = ic.iter().map(|c| c.total).collect();
            let (co, ct, io, it) = (med(&co), med(&ct), med(&io), med(&it));
            let min = if phase == "none" {
                format!("{} / 3", n + 3)
            } else {
                "3 / 3".to_string()
            };
            rep.line(format!(
                "| {phase} | {lat} | {} | {} | {} | {} | {min} | {} | {} | {} | {} | {} | {} | {} |",
                f1(co.ms),
                f1(ct.ms),
                num(ct.req),
                num(ct.rt),
                f1(ct.kib),
                f1(io.ms),
                f1(it.ms),
                num(it.req),
                num(it.rt),
                f1(it.kib),
                ratio(ct.ms, it.ms)
            ));
            if lat == 20 && phase == "applied" {
                let r = ct.ms / it.ms;
                rep.headline.push(format!(
                    "Cold open + first chunk after {n} commits (maintenance applied) at 20 ms: crzarr {} ms, {} round \
                     trips vs Icechunk {} ms, {} round trips; ratio {:.2} (goal <= 1: {}; goal <= 3 round trips: {}).",
                    f1(ct.ms),
                    num(ct.rt),
                    f1(it.ms),
                    num(it.rt),
                    r,
                    if r <= 1.0 { "met" } else { "MISSED" },
                    if ct.rt <= 3.0 { "met" } else { "MISSED" }
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- 3. concurrent

/// One concurrent-writers run, either system.
#[derive(Clone, Debug, Default)]
struct Conc {
    ms: f64,
    ok: u64,
    failed: u64,
    retries: u64,
    /// Chunks whose commit reported success but that a cold reader misses.
    lost: u64,
    counts: RequestCounts,
    first_error: Option<String>,
}

const CONC_TAG: u64 = 3;

/// What one writer task reports: chunks committed, failed commits, rebases, first error.
type WriterOutcome = (Vec<u64>, u64, u64, Option<String>);

/// Sums the writers' outcomes; returns the chunks whose commits succeeded.
async fn collect(tasks: Vec<tokio::task::JoinHandle<WriterOutcome>>) -> R<(Conc, Vec<u64>)> {
    let mut out = Conc::default();
    let mut all = Vec::new();
    for task in tasks {
        let (done, failed, retries, err) = task.await?;
        out.ok += done.len() as u64;
        out.failed += failed;
        out.retries += retries;
        if out.first_error.is_none() {
            out.first_error = err;
        }
        all.extend(done);
    }
    Ok((out, all))
}

async fn conc_crz(n: usize, cpw: u64, lat: u64, wd: &std::path::Path) -> R<Conc> {
    let st = Stack::new(Base::Mem, wd);
    crz_init(st.store()).await?;
    let mut repos = Vec::new();
    for _ in 0..n {
        repos.push(crz_open(st.store()).await?);
    }
    st.set_latency(ms(lat));
    st.reset();
    let t = Instant::now();
    let tasks: Vec<_> = repos
        .into_iter()
        .enumerate()
        .map(|(w, mut repo)| {
            tokio::spawn(async move {
                let (mut done, mut failed, mut err) = (Vec::new(), 0u64, None);
                for i in 0..cpw {
                    let c = w as u64 * cpw + i;
                    match crz_commit(&mut repo, &[c], CONC_TAG).await {
                        Ok(()) => done.push(c),
                        Err(e) => {
                            failed += 1;
                            err.get_or_insert(e.to_string());
                        }
                    }
                }
                (done, failed, 0u64, err)
            })
        })
        .collect();
    let (mut out, done) = collect(tasks).await?;
    out.ms = elapsed_ms(t);
    out.counts = st.counts();
    st.set_latency(Duration::ZERO);
    let check = crz_open(st.store()).await?;
    for c in done {
        if crz_get(&check, c).await?.as_deref() != Some(&chunk_bytes(c, CONC_TAG)[..]) {
            out.lost += 1;
        }
    }
    Ok(out)
}

async fn conc_ice(n: usize, cpw: u64, lat: u64, max_retries: u32, wd: &std::path::Path) -> R<Conc> {
    let st = Stack::new(Base::Mem, wd);
    ice_init(st.icechunk_storage()).await?;
    let mut repos = Vec::new();
    for _ in 0..n {
        repos.push(ice_open(st.icechunk_storage()).await?);
    }
    st.set_latency(ms(lat));
    st.reset();
    let t = Instant::now();
    let tasks: Vec<_> = repos
        .into_iter()
        .enumerate()
        .map(|(w, repo)| {
            tokio::spawn(async move {
                let (mut done, mut failed, mut retries, mut err) = (Vec::new(), 0u64, 0u64, None);
                for i in 0..cpw {
                    let c = w as u64 * cpw + i;
                    let attempt = async {
                        let store = ice_begin(&repo).await?;
                        ice_write(&store, &[c], CONC_TAG).await?;
                        R::Ok(ice_publish(&store, max_retries).await)
                    };
                    match attempt.await {
                        Ok(p) => {
                            retries += u64::from(p.retries);
                            match p.failure {
                                None => done.push(c),
                                Some(f) => {
                                    failed += 1;
                                    err.get_or_insert(f);
                                }
                            }
                        }
                        Err(e) => {
                            failed += 1;
                            err.get_or_insert(e.to_string());
                        }
                    }
                }
                (done, failed, retries, err)
            })
        })
        .collect();
    let (mut out, done) = collect(tasks).await?;
    out.ms = elapsed_ms(t);
    out.counts = st.counts();
    st.set_latency(Duration::ZERO);
    let check = ice_reader(&ice_open(st.icechunk_storage()).await?).await?;
    for c in done {
        if ice_get(&check, c).await?.as_deref() != Some(&chunk_bytes(c, CONC_TAG)[..]) {
            out.lost += 1;
        }
    }
    Ok(out)
}

struct ConcMed {
    secs: f64,
    cps: f64,
    failed: f64,
    retries: f64,
    lost: f64,
    req_per_commit: f64,
    rt: f64,
}

fn conc_med(v: &[Conc]) -> ConcMed {
    let m = |f: &dyn Fn(&Conc) -> f64| median(v.iter().map(f).collect());
    ConcMed {
        secs: m(&|c| c.ms / 1e3),
        cps: m(&|c| c.ok as f64 / (c.ms / 1e3)),
        failed: m(&|c| c.failed as f64),
        retries: m(&|c| c.retries as f64),
        lost: m(&|c| c.lost as f64),
        req_per_commit: m(&|c| c.counts.requests() as f64 / (c.ok + c.failed).max(1) as f64),
        rt: m(&|c| c.counts.round_trips as f64),
    }
}

async fn concurrent_workload(rep: &mut Report, args: &Args, wd: &std::path::Path) -> R<()> {
    let cpw = args.commits_per_writer;
    rep.line("");
    rep.line("## 3. Concurrent writers");
    rep.line("");
    rep.line(format!(
        "N writers (tokio tasks, each with its own `Repo` / `Repository` opened beforehand, not timed) each commit \
         {cpw} changes of one chunk, disjoint between writers, to the same array, all at once. In-memory base store. \
         Icechunk: a writable session per commit; on a conflict, `Session::rebase(&ConflictDetector)` and retry, \
         at most {} times, then the commit counts as failed (its writer is told; its chunk is then absent). Lost \
         writes: chunks whose commit reported success but that a cold reader afterwards misses or reads wrong (every \
         successful commit checked, in both). Throughput = successful commits / wall time. \
         RT = longest chain of sequential round trips across all writers (min for crzarr: 2 per commit, {} in all).",
        args.max_retries,
        2 * cpw
    ));
    rep.line("");
    rep.line(
        "| N | L ms | crzarr s | crzarr commits/s | crzarr failed | crzarr lost | crzarr req/commit (min 2) | crzarr RT | Icechunk s | Icechunk commits/s | Icechunk rebases | Icechunk failed | Icechunk lost | Icechunk req/commit | Icechunk RT | throughput ratio |",
    );
    rep.line("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut errors = Vec::new();
    for &n in &args.writers {
        for &lat in &args.latencies {
            let (mut cz, mut ic) = (Vec::new(), Vec::new());
            for _ in 0..args.concurrent_runs {
                cz.push(conc_crz(n, cpw, lat, wd).await?);
                ic.push(conc_ice(n, cpw, lat, args.max_retries, wd).await?);
            }
            for (who, v) in [("crzarr", &cz), ("Icechunk", &ic)] {
                if let Some(e) = v.iter().find_map(|c| c.first_error.clone()) {
                    errors.push(format!("N={n}, L={lat} ms, {who}: {e}"));
                }
            }
            let (c, i) = (conc_med(&cz), conc_med(&ic));
            rep.line(format!(
                "| {n} | {lat} | {:.2} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
                c.secs,
                f1(c.cps),
                num(c.failed),
                num(c.lost),
                f1(c.req_per_commit),
                num(c.rt),
                i.secs,
                f1(i.cps),
                num(i.retries),
                num(i.failed),
                num(i.lost),
                f1(i.req_per_commit),
                num(i.rt),
                ratio(c.cps, i.cps)
            ));
            if n == 32 && lat == 20 {
                let r = c.cps / i.cps;
                rep.headline.push(format!(
                    "32 writers at 20 ms: crzarr {} commits/s, {} failed, {} lost vs Icechunk {} commits/s, {} failed, \
                     {} lost ({} rebases); throughput ratio {:.1} (goal zero failed: {}; goal >= 10x: {}).",
                    f1(c.cps),
                    num(c.failed),
                    num(c.lost),
                    f1(i.cps),
                    num(i.failed),
                    num(i.lost),
                    num(i.retries),
                    r,
                    if c.failed == 0.0 { "met" } else { "MISSED" },
                    if r >= 10.0 { "met" } else { "MISSED" }
                ));
            }
            rep.flush();
        }
    }
    if !errors.is_empty() {
        rep.line("");
        rep.line("First error per cell (failed commits):");
        rep.line("");
        for e in errors {
            rep.line(format!("- {e}"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- 4. reconnect

const OFFLINE_TAG: u64 = 9;
const OFFLINE_BASE: u64 = 1 << 20;

struct Reconnect {
    s: Sample,
    retries: u32,
}

async fn reconnect_crz(behind: u64, k: u64, lat: u64, wd: &std::path::Path) -> R<Reconnect> {
    let st = Stack::new(Base::Dir, wd);
    crz_init(st.store()).await?;
    let mut offline = crz_open(st.store()).await?;
    let mut other = crz_open(st.store()).await?;
    let mut session = offline.session();
    for j in 0..k {
        session.set(
            &chunk_key(OFFLINE_BASE + j),
            chunk_bytes(OFFLINE_BASE + j, OFFLINE_TAG),
        )?;
    }
    grow_crz(&mut other, 0, behind).await?;
    st.set_latency(ms(lat));
    st.reset();
    let t = Instant::now();
    session.commit(&mut offline, Some("offline")).await?;
    let s = Sample {
        ms: elapsed_ms(t),
        counts: st.counts(),
    };
    st.set_latency(Duration::ZERO);
    let check = crz_open(st.store()).await?;
    for (c, tag) in (0..behind)
        .map(|c| (c, HISTORY_TAG))
        .chain((0..k).map(|j| (OFFLINE_BASE + j, OFFLINE_TAG)))
    {
        if crz_get(&check, c).await?.as_deref() != Some(&chunk_bytes(c, tag)[..]) {
            return Err(format!("crzarr reconnect: chunk {c} lost").into());
        }
    }
    Ok(Reconnect { s, retries: 0 })
}

async fn reconnect_ice(
    behind: u64,
    k: u64,
    lat: u64,
    max_retries: u32,
    wd: &std::path::Path,
) -> R<Reconnect> {
    let st = Stack::new(Base::Dir, wd);
    ice_init(st.icechunk_storage()).await?;
    let offline = ice_open(st.icechunk_storage()).await?;
    let store = ice_begin(&offline).await?;
    let chunks: Vec<u64> = (0..k).map(|j| OFFLINE_BASE + j).collect();
    ice_write(&store, &chunks, OFFLINE_TAG).await?;
    let other = ice_open(st.icechunk_storage()).await?;
    grow_ice(&other, 0, behind).await?;
    st.set_latency(ms(lat));
    st.reset();
    let t = Instant::now();
    let p = ice_publish(&store, max_retries).await;
    let s = Sample {
        ms: elapsed_ms(t),
        counts: st.counts(),
    };
    if let Some(f) = p.failure {
        return Err(format!("icechunk reconnect failed: {f}").into());
    }
    st.set_latency(Duration::ZERO);
    let check = ice_reader(&ice_open(st.icechunk_storage()).await?).await?;
    for (c, tag) in (0..behind)
        .map(|c| (c, HISTORY_TAG))
        .chain(chunks.iter().map(|&c| (c, OFFLINE_TAG)))
    {
        if ice_get(&check, c).await?.as_deref() != Some(&chunk_bytes(c, tag)[..]) {
            return Err(format!("icechunk reconnect: chunk {c} lost").into());
        }
    }
    Ok(Reconnect {
        s,
        retries: p.retries,
    })
}

async fn reconnect_workload(rep: &mut Report, args: &Args, wd: &std::path::Path) -> R<()> {
    let (behind, k) = (args.reconnect_behind, args.reconnect_chunks);
    rep.line("");
    rep.line("## 4. Offline writer reconnects");
    rep.line("");
    rep.line(format!(
        "A writer opens the repository and prepares a change of {k} chunks; meanwhile another writer lands {behind} \
         commits (at 0 ms); then the first publishes, timed at latency L. crzarr: the staged session's `commit` \
         (a plain append: it uploads the {k} chunks then the change file). Icechunk: `commit`, which finds the branch \
         moved, then `rebase(&ConflictDetector)` over the {behind} commits and commit again (its {k} chunks were \
         already uploaded by `Store::set` while preparing, not timed). Both verified afterwards: all {} chunks present.",
        behind + k
    ));
    rep.line("");
    rep.line(
        "| L ms | crzarr ms | crzarr req | crzarr RT | min req / RT | Icechunk ms | Icechunk req | Icechunk RT | Icechunk rebases | ratio ms |",
    );
    rep.line("|---|---|---|---|---|---|---|---|---|---|");
    for &lat in &args.latencies {
        let (mut cz, mut ic, mut rb) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.runs {
            cz.push(reconnect_crz(behind, k, lat, wd).await?.s);
            let r = reconnect_ice(behind, k, lat, args.max_retries, wd).await?;
            ic.push(r.s);
            rb.push(f64::from(r.retries));
        }
        let (c, i) = (med(&cz), med(&ic));
        if lat == 20 {
            rep.headline.push(format!(
                "Offline writer publishing after {behind} commits elsewhere, 20 ms: crzarr {} ms ({} requests, {} \
                 round trips) vs Icechunk {} ms ({} requests, {} round trips, rebase included); ratio {}.",
                f1(c.ms),
                num(c.req),
                num(c.rt),
                f1(i.ms),
                num(i.req),
                num(i.rt),
                ratio(c.ms, i.ms)
            ));
        }
        rep.line(format!(
            "| {lat} | {} | {} | {} | {} / 2 | {} | {} | {} | {} | {} |",
            f1(c.ms),
            num(c.req),
            num(c.rt),
            k + 1,
            f1(i.ms),
            num(i.req),
            num(i.rt),
            num(median(rb)),
            ratio(c.ms, i.ms)
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- 5. history

async fn history_workload(rep: &mut Report, args: &Args, wd: &std::path::Path) -> R<()> {
    let mut lengths = args.history.clone();
    lengths.sort_unstable();
    lengths.dedup();
    let budget = Duration::from_secs(args.history_budget_secs);
    rep.line("");
    rep.line("## 5. Open time versus length of history");
    rep.line("");
    rep.line(format!(
        "One history per system, one chunk per commit, grown at 0 ms latency to each length in turn; at each length \
         a cold open, then the read of chunk 0 (as in 2; in parentheses: to the end of the read), at each latency. crzarr twice: never compacted, and compacted \
         + garbage-collected at each length. Icechunk as committed (its open does not read manifests). A system \
         stops growing once building has taken {} s.",
        args.history_budget_secs
    ));
    rep.line("");
    rep.line(
        "| commits | L ms | crzarr raw: open (+read) ms | raw req / RT (+read, KiB read) | raw min (+read) | crzarr compacted: open (+read) ms | compacted req / RT (+read, KiB read) | compacted min (+read) | Icechunk: open (+read) ms | Icechunk req / RT (+read, KiB read) | ratio open, compacted | ratio open, raw |",
    );
    rep.line("|---|---|---|---|---|---|---|---|---|---|---|---|");

    let raw = Stack::new(Base::Dir, wd);
    let cmp = Stack::new(Base::Dir, wd);
    let ice = Stack::new(Base::Dir, wd);
    crz_init(raw.store()).await?;
    crz_init(cmp.store()).await?;
    ice_init(ice.icechunk_storage()).await?;
    let mut raw_w = crz_open(raw.store()).await?;
    let mut cmp_w = crz_open(cmp.store()).await?;
    let ice_w = ice_open(ice.icechunk_storage()).await?;
    let (mut crz_spent, mut ice_spent) = (Duration::ZERO, Duration::ZERO);
    let (mut crz_at, mut ice_at) = (0u64, 0u64);
    let mut notes = Vec::new();
    let expect = chunk_bytes(0, HISTORY_TAG);
    let mut worst_rt = 0f64;
    let mut last_ratio = None;
    for &len in &lengths {
        let crz_ok = crz_spent < budget;
        if crz_ok {
            let t = Instant::now();
            grow_crz(&mut raw_w, crz_at, len).await?;
            grow_crz(&mut cmp_w, crz_at, len).await?;
            crz_compact(cmp.store()).await?;
            crz_spent += t.elapsed();
            crz_at = len;
            notes.push(format!(
                "crzarr: {len} commits (twice, plus compaction) built after {:.1} s in all",
                crz_spent.as_secs_f64()
            ));
        }
        let ice_ok = ice_spent < budget;
        if ice_ok {
            let t = Instant::now();
            grow_ice(&ice_w, ice_at, len).await?;
            ice_spent += t.elapsed();
            ice_at = len;
            notes.push(format!(
                "Icechunk: {len} commits built after {:.1} s in all",
                ice_spent.as_secs_f64()
            ));
        }
        if !crz_ok && !ice_ok {
            break;
        }
        for &lat in &args.latencies {
            let mut cells = Vec::new();
            let mut meds = Vec::new();
            for (st, on, is_ice) in [
                (&raw, crz_ok, false),
                (&cmp, crz_ok, false),
                (&ice, ice_ok, true),
            ] {
                if !on {
                    cells.push("not built (budget)".to_string());
                    cells.push("-".to_string());
                    meds.push((f64::NAN, f64::NAN));
                    continue;
                }
                st.set_latency(ms(lat));
                let (mut open, mut total) = (Vec::new(), Vec::new());
                for _ in 0..args.runs {
                    let c = if is_ice {
                        cold_ice(st, 0, &expect).await?
                    } else {
                        cold_crz(st, 0, &expect).await?
                    };
                    open.push(c.open);
                    total.push(c.total);
                }
                st.set_latency(Duration::ZERO);
                let (o, t) = (med(&open), med(&total));
                cells.push(format!("{} ({})", f1(o.ms), f1(t.ms)));
                cells.push(format!(
                    "{} / {} ({} / {}, {} KiB)",
                    num(o.req),
                    num(o.rt),
                    num(t.req),
                    num(t.rt),
                    f1(t.kib)
                ));
                meds.push((o.ms, t.rt));
            }
            rep.line(format!(
                "| {len} | {lat} | {} | {} | {} / 2 ({} / 3) | {} | {} | 1 / 1 (3 / 3) | {} | {} | {} | {} |",
                cells[0],
                cells[1],
                len + 2,
                len + 4,
                cells[2],
                cells[3],
                cells[4],
                cells[5],
                ratio(meds[1].0, meds[2].0),
                ratio(meds[0].0, meds[2].0)
            ));
            if lat == 20 && crz_ok {
                worst_rt = worst_rt.max(meds[1].1);
                if ice_ok {
                    last_ratio = Some((len, meds[1].0 / meds[2].0, meds[0].0 / meds[2].0));
                }
            }
        }
        rep.flush();
    }
    rep.line("");
    for n in notes {
        rep.line(format!("- {n}"));
    }
    if args.latencies.contains(&20) {
        rep.headline.push(format!(
            "History: compacted crzarr cold open + first chunk at 20 ms took at most {} round trips at any length \
             up to {crz_at} commits (goal <= 3: {}).",
            num(worst_rt),
            if worst_rt <= 3.0 { "met" } else { "MISSED" }
        ));
        if let Some((len, rc, rr)) = last_ratio {
            rep.headline.push(format!(
                "History: open at {len} commits, 20 ms: crzarr compacted / Icechunk = {rc:.2}, crzarr never \
                 compacted / Icechunk = {rr:.2}."
            ));
        }
    }
    Ok(())
}
