//! `crzarr import` and `crzarr export`: plain Zarr v3 stores in and out.

use super::sync::{draw, progress_bar};
use super::{open, print_json};
use crzarr::io::connect::connect;
use crzarr::io::progress::Progress;
use crzarr::ops::export::ExportOptions;
use crzarr::ops::import::ImportOptions;
use crzarr::repo::Repo;
use crzarr::{Error, Result};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Runs `work` with a progress bar on stderr (drawn only on a terminal).
async fn with_bar<T>(progress: Arc<Progress>, work: impl Future<Output = T>) -> T {
    let bar = progress_bar();
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                draw(&bar, &progress);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let out = work.await;
    ticker.abort();
    bar.finish_and_clear();
    out
}

/// `crzarr import SRC REPO`: creates the repository when the URL holds none.
pub(crate) async fn run_import(
    src: &str,
    repo: &str,
    message: Option<String>,
    by_reference: bool,
    json: bool,
    concurrency: usize,
) -> Result<()> {
    // `connect` reports a missing local directory as "not a repository", which for
    // the source of an import is the wrong advice.
    let from = connect(src, false).map_err(|e| match e {
        Error::NotARepo { .. } => Error::Usage(format!(
            "{src}: no such directory (the source of an import is a Zarr v3 store: a \
             directory or a URL)"
        )),
        e => e,
    })?;
    // A reference must resolve from any working directory: local paths go absolute.
    let source_url = match src.split_once("://") {
        Some(_) => src.to_string(),
        None => format!("file://{}", std::fs::canonicalize(src)?.display()),
    };
    let mut r = match open(repo, concurrency).await {
        Ok(r) => r,
        Err(Error::NotARepo { .. }) => {
            let loc = connect(repo, true)?;
            let mut r = Repo::init(loc.store, &loc.prefix).await?;
            r.set_concurrency(concurrency);
            r
        }
        Err(e) => return Err(e),
    };
    let progress = Arc::new(Progress::new());
    let opts = ImportOptions {
        message: Some(message.unwrap_or_else(|| format!("import {src}"))),
        concurrency,
        progress: Some(progress.clone()),
        by_reference: by_reference.then_some(source_url),
    };
    let report = with_bar(progress, r.import(from.store, &from.prefix, &opts)).await?;
    for k in &report.ignored {
        eprintln!("warning: not imported (neither metadata nor a chunk of an array): {k}");
    }
    if json {
        let mut v = serde_json::to_value(&report).unwrap_or_default();
        v["change"] = json!(report.change.map(|h| h.to_hex()));
        v["src"] = json!(src);
        v["repo"] = json!(repo);
        return print_json(&v);
    }
    match report.change {
        Some(h) => println!(
            "committed {}: nodes +{} ~{} -{}, chunks {} written, {} unchanged, {} deleted ({} read)",
            h.short(),
            report.nodes_created,
            report.nodes_updated,
            report.nodes_deleted,
            report.chunks_written,
            report.chunks_unchanged,
            report.chunks_deleted,
            indicatif::HumanBytes(report.bytes_read)
        ),
        None => println!(
            "nothing to commit: {src} equals the repository's view ({} chunks compared)",
            report.chunks_unchanged
        ),
    }
    Ok(())
}

/// `crzarr export REPO DST`.
pub(crate) async fn run_export(
    repo: &str,
    dst: &str,
    json: bool,
    concurrency: usize,
) -> Result<()> {
    let r = open(repo, concurrency).await?;
    let to = connect(dst, true)?;
    let progress = Arc::new(Progress::new());
    let opts = ExportOptions {
        concurrency,
        progress: Some(progress.clone()),
    };
    let report = with_bar(progress, r.export(to.store, &to.prefix, &opts)).await?;
    if json {
        let mut v = serde_json::to_value(&report).unwrap_or_default();
        v["repo"] = json!(repo);
        v["dst"] = json!(dst);
        return print_json(&v);
    }
    let foreign = match report.foreign {
        0 => String::new(),
        n => format!(", {n} not written by an export left as they are"),
    };
    println!(
        "exported to {dst}: {} written ({}), {} unchanged, {} deleted{foreign}",
        report.written,
        indicatif::HumanBytes(report.bytes_written),
        report.unchanged,
        report.deleted
    );
    Ok(())
}
