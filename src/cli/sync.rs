//! `crzarr sync` and `crzarr watch`: replication between two locations, with a
//! progress bar on a terminal and a summary (or JSON) at the end.

use crzarr::io::connect::connect;
use crzarr::io::progress::Progress;
use crzarr::io::store::RepoStore;
use crzarr::ops::sync::{Direction, SyncOptions, SyncReport, Transfer, sync};
use crzarr::{Error, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Exit code when a sync finished but refused something (a corrupt source object).
const EXIT_REFUSED: u8 = 2;

/// Arguments shared by `sync` and `watch`.
#[derive(clap::Args)]
pub(crate) struct SyncArgs {
    /// First repository URL.
    a: String,
    /// Second repository URL (created as a replica of A if it holds no repository).
    b: String,
    /// Only copy from A to B.
    #[arg(long, conflicts_with = "pull")]
    push: bool,
    /// Only copy from B to A.
    #[arg(long)]
    pull: bool,
    /// Let a side initialized by mistake (holding no changes and no snapshots) take
    /// the other's repository id.
    #[arg(long)]
    force: bool,
    /// Print JSON (for `watch`, one object per line per round).
    #[arg(long)]
    json: bool,
}

impl SyncArgs {
    fn direction(&self) -> Direction {
        match (self.push, self.pull) {
            (true, _) => Direction::Push,
            (_, true) => Direction::Pull,
            _ => Direction::Both,
        }
    }

    fn buckets(&self) -> Result<(RepoStore, RepoStore)> {
        if self.a == self.b {
            return Err(Error::Usage(format!(
                "{}: both sides are the same location",
                self.a
            )));
        }
        // A side with no repository becomes a replica: local directories may be new.
        let a = connect(&self.a, true)?;
        let b = connect(&self.b, true)?;
        Ok((
            RepoStore::new(a.store, &a.prefix),
            RepoStore::new(b.store, &b.prefix),
        ))
    }

    /// Names the sides by their URLs in a mismatch error.
    fn name_sides(&self, e: Error) -> Error {
        match e {
            Error::RepoMismatch {
                a_id, b_id, hint, ..
            } => Error::RepoMismatch {
                a: self.a.clone(),
                a_id,
                b: self.b.clone(),
                b_id,
                hint,
            },
            e => e,
        }
    }

    fn options(&self, concurrency: usize, progress: Option<Arc<Progress>>) -> SyncOptions {
        SyncOptions {
            direction: self.direction(),
            concurrency,
            force: self.force,
            progress,
        }
    }
}

/// `crzarr sync A B`.
pub(crate) async fn run_sync(args: SyncArgs, concurrency: usize) -> Result<ExitCode> {
    let (a, b) = args.buckets()?;
    let progress = Arc::new(Progress::new());
    let bar = progress_bar();
    let ticker = {
        let (bar, progress) = (bar.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                draw(&bar, &progress);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let result = sync(&a, &b, &args.options(concurrency, Some(progress.clone()))).await;
    ticker.abort();
    bar.finish_and_clear();
    let report = result.map_err(|e| args.name_sides(e))?;
    print_report(&args, &report)?;
    Ok(exit_code(&report))
}

/// `crzarr watch A B --interval 30s`: sync, sleep, repeat until Ctrl-C. A failed
/// round (a side unreachable) is reported and retried at the next interval.
pub(crate) async fn run_watch(
    args: SyncArgs,
    interval: Duration,
    concurrency: usize,
) -> Result<ExitCode> {
    let (a, b) = args.buckets()?;
    let opts = args.options(concurrency, None);
    if !args.json {
        eprintln!(
            "watching {} <-> {} every {}s; Ctrl-C stops",
            args.a,
            args.b,
            interval.as_secs_f64()
        );
    }
    let mut refused_any = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        // A sync cut short is safe: the next run completes it.
        let round = tokio::select! {
            r = sync(&a, &b, &opts) => r,
            _ = &mut ctrl_c => break,
        };
        match round {
            Ok(report) => {
                refused_any |= !report.is_clean();
                if args.json {
                    print_json_line(&report_json(&args, &report))?;
                } else if report.copied_anything() || !report.is_clean() {
                    print_report(&args, &report)?;
                }
            }
            Err(e) => {
                let e = args.name_sides(e);
                if args.json {
                    print_json_line(&json!({"error": e.to_string()}))?;
                } else {
                    eprintln!("warning: this round failed, retrying in {interval:?}: {e}");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut ctrl_c => break,
        }
    }
    if !args.json {
        eprintln!("stopped");
    }
    Ok(if refused_any {
        ExitCode::from(EXIT_REFUSED)
    } else {
        ExitCode::SUCCESS
    })
}

fn exit_code(report: &SyncReport) -> ExitCode {
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_REFUSED)
    }
}

/// A bar on stderr when it is a terminal; drawing nothing otherwise.
pub(crate) fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} objects {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

pub(crate) fn draw(bar: &ProgressBar, progress: &Progress) {
    let (done, total) = progress.objects();
    let (bytes, bytes_total) = progress.bytes();
    bar.set_length(total);
    bar.set_position(done);
    bar.set_message(format!(
        "{} / {}",
        indicatif::HumanBytes(bytes),
        indicatif::HumanBytes(bytes_total)
    ));
}

fn report_json(args: &SyncArgs, r: &SyncReport) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["a"] = json!(args.a);
    v["b"] = json!(args.b);
    v["direction"] = json!(args.direction());
    v
}

fn print_json_line(v: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v).map_err(|e| Error::Io(e.into()))?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn describe(t: &Transfer) -> String {
    if t.objects() == 0 {
        return "nothing to copy".into();
    }
    let mut parts = vec![count(t.changes, "change"), count(t.blobs, "blob")];
    if t.snapshots + t.manifests > 0 {
        parts.push(format!(
            "{} ({})",
            count(t.snapshots, "snapshot"),
            count(t.manifests, "manifest object")
        ));
    }
    if t.repaired > 0 {
        parts.push(format!(
            "{} repaired",
            count(t.repaired, "damaged change file")
        ));
    }
    format!("{}, {}", parts.join(", "), indicatif::HumanBytes(t.bytes))
}

fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn print_report(args: &SyncArgs, r: &SyncReport) -> Result<()> {
    if args.json {
        return super::print_json(&report_json(args, r));
    }
    let mut out = std::io::stdout().lock();
    if let Some(side) = r.initialized {
        let url = match side {
            crzarr::ops::sync::Side::A => &args.a,
            crzarr::ops::sync::Side::B => &args.b,
        };
        writeln!(out, "{url} is now a replica of repository {}", r.repo_id)?;
    }
    let dir = args.direction();
    if dir != Direction::Pull {
        writeln!(out, "{} -> {}: {}", args.a, args.b, describe(&r.a_to_b))?;
    }
    if dir != Direction::Push {
        writeln!(out, "{} -> {}: {}", args.b, args.a, describe(&r.b_to_a))?;
    }
    for key in &r.joins_written {
        writeln!(
            out,
            "wrote {key}: the join of snapshots compacted apart, so readers there open one"
        )?;
    }
    for p in &r.ignored {
        writeln!(out, "ignored {}: {}", p.key, p.error)?;
    }
    if !r.refused.is_empty() {
        writeln!(
            out,
            "refused {} objects (not copied; the rest was):",
            r.refused.len()
        )?;
        for p in &r.refused {
            // Errors about an object usually start with its key already.
            let error = p
                .error
                .strip_prefix(&format!("{}: ", p.key))
                .unwrap_or(&p.error);
            writeln!(out, "  {}: {error}", p.key)?;
        }
    }
    writeln!(out, "done in {:.1} s", r.elapsed_ms as f64 / 1000.0)?;
    Ok(())
}
