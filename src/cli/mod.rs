//! Command-line adapter over the library: argument parsing, output, exit codes.

mod demo;

use clap::{Parser, Subcommand};
use crzarr::connect::connect;
use crzarr::repo::Repo;
use crzarr::{Error, Result};
use serde_json::json;
use std::io::{Read, Write};
use std::process::ExitCode;

/// Conflict-free Replicated Zarr: many writers, many buckets, one converged Zarr v3 store.
#[derive(Parser)]
#[command(name = "crzarr", version, about, long_about = None, after_help = "REPO is a path, file://PATH, memory://NAME, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or az://CONTAINER/PREFIX.\nCloud credentials and endpoints come from the usual environment variables (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, ...).\n\nExample:\n  crzarr demo\n  crzarr init ./data && crzarr put ./data zarr.json group.json && crzarr ls ./data")]
struct Cli {
    /// Requests in flight at once when fetching changes or uploading blobs.
    #[arg(long, global = true, default_value_t = crzarr::bucket::DEFAULT_CONCURRENCY, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    concurrency: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a repository (or confirm the one already there).
    #[command(
        after_help = "Example:\n  crzarr init ./data\n  crzarr init s3://bucket/datasets/sst"
    )]
    Init {
        /// Repository URL.
        repo: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write one key (a zarr.json or a chunk) from a file or stdin, as one change.
    #[command(
        after_help = "Example:\n  crzarr put ./data temp/zarr.json temp.json\n  crzarr put ./data temp/c/0/0 - < chunk.bin"
    )]
    Put {
        /// Repository URL.
        repo: String,
        /// Zarr key, like `zarr.json`, `temp/zarr.json` or `temp/c/0/0`.
        key: String,
        /// File to read, or `-` for stdin.
        file: String,
        /// Commit message.
        #[arg(short, long)]
        message: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a key; a `zarr.json` or a prefix ending in `/` deletes the node and its subtree.
    #[command(after_help = "Example:\n  crzarr rm ./data temp/c/0/0\n  crzarr rm ./data temp/")]
    Rm {
        /// Repository URL.
        repo: String,
        /// Zarr key or prefix.
        key: String,
        /// Commit message.
        #[arg(short, long)]
        message: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set one attribute of a node to a JSON value.
    #[command(
        name = "set-attr",
        after_help = "Example:\n  crzarr set-attr ./data temp units '\"K\"'\n  crzarr set-attr ./data '' title '\"Sea surface temperature\"'"
    )]
    SetAttr {
        /// Repository URL.
        repo: String,
        /// Node path (`''` for the root).
        node: String,
        /// Attribute name.
        name: String,
        /// JSON value.
        value: String,
        /// Commit message.
        #[arg(short, long)]
        message: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the keys of the view, sorted, one per line.
    #[command(after_help = "Example:\n  crzarr ls ./data\n  crzarr ls ./data temp/ --json")]
    Ls {
        /// Repository URL.
        repo: String,
        /// Only keys starting with this prefix.
        prefix: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the raw bytes the view serves for a key.
    #[command(after_help = "Example:\n  crzarr cat ./data temp/zarr.json")]
    Cat {
        /// Repository URL.
        repo: String,
        /// Zarr key.
        key: String,
    },
    /// Show the changes, oldest first, and any waiting for dependencies.
    #[command(after_help = "Example:\n  crzarr log ./data --json")]
    Log {
        /// Repository URL.
        repo: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show concurrent overwrites and how they were resolved.
    #[command(after_help = "Example:\n  crzarr conflicts ./data")]
    Conflicts {
        /// Repository URL.
        repo: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the whole story on local disk: two replicas edit apart, exchange changes, converge.
    #[command(after_help = "Example:\n  crzarr demo\n  crzarr demo /tmp/crzarr-demo")]
    Demo {
        /// Empty or new directory to work in (default: a new directory under the system temp dir).
        dir: Option<std::path::PathBuf>,
    },
}

/// Parses arguments, runs the command, maps errors to one line and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, cli.concurrency)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn open(url: &str, concurrency: usize) -> Result<Repo> {
    let loc = connect(url, false)?;
    let repo = Repo::open_with_concurrency(loc.store, &loc.prefix, concurrency).await?;
    for p in repo.problems() {
        eprintln!("warning: skipped {}: {}", p.key, p.error);
    }
    Ok(repo)
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).map_err(|e| Error::Io(e.into()))?;
    writeln!(out)?;
    Ok(())
}

fn report_commit(hash: Option<crzarr::ids::ChangeHash>, json: bool) -> Result<()> {
    match (hash, json) {
        (Some(h), true) => print_json(&json!({"change": h.to_hex()})),
        (None, true) => print_json(&json!({"change": null})),
        (Some(h), false) => {
            println!("committed {}", h.short());
            Ok(())
        }
        (None, false) => {
            println!("nothing to commit");
            Ok(())
        }
    }
}

async fn run(cmd: Command, concurrency: usize) -> Result<()> {
    match cmd {
        Command::Init { repo, json } => {
            let loc = connect(&repo, true)?;
            let r = Repo::init(loc.store, &loc.prefix).await?;
            if json {
                print_json(
                    &json!({"repo": repo, "repo_id": r.id().to_string(), "changes": r.fold().len()}),
                )
            } else {
                println!(
                    "repository {} at {repo} ({} changes)",
                    r.id(),
                    r.fold().len()
                );
                Ok(())
            }
        }
        Command::Put {
            repo,
            key,
            file,
            message,
            json,
        } => {
            let bytes = if file == "-" {
                let mut b = Vec::new();
                std::io::stdin().read_to_end(&mut b)?;
                b
            } else {
                std::fs::read(&file)?
            };
            let mut r = open(&repo, concurrency).await?;
            let mut s = r.session();
            s.set(&key, bytes)?;
            let h = s.commit(message.as_deref()).await?;
            report_commit(h, json)
        }
        Command::Rm {
            repo,
            key,
            message,
            json,
        } => {
            let mut r = open(&repo, concurrency).await?;
            let mut s = r.session();
            if key.ends_with('/') || key.is_empty() {
                s.delete_prefix(&key)?;
            } else {
                s.delete(&key)?;
            }
            let h = s.commit(message.as_deref()).await?;
            report_commit(h, json)
        }
        Command::SetAttr {
            repo,
            node,
            name,
            value,
            message,
            json,
        } => {
            let value: serde_json::Value = serde_json::from_str(&value).map_err(|e| {
                Error::Usage(format!(
                    "attribute value is not JSON: {e} (quote strings: '\"text\"')"
                ))
            })?;
            let mut r = open(&repo, concurrency).await?;
            let mut s = r.session();
            s.set_attr(node.trim_matches('/'), &name, value)?;
            let h = s.commit(message.as_deref()).await?;
            report_commit(h, json)
        }
        Command::Ls { repo, prefix, json } => {
            let r = open(&repo, concurrency).await?;
            let keys = match &prefix {
                Some(p) => r.list_prefix(p).await?,
                None => r.list().await?,
            };
            if json {
                return print_json(&json!(keys));
            }
            let mut out = std::io::stdout().lock();
            for k in keys {
                writeln!(out, "{k}")?;
            }
            Ok(())
        }
        Command::Cat { repo, key } => {
            let r = open(&repo, concurrency).await?;
            let bytes = r
                .get(&key)
                .await?
                .ok_or_else(|| Error::Usage(format!("no key {key:?} in the view")))?;
            std::io::stdout().lock().write_all(&bytes)?;
            Ok(())
        }
        Command::Log { repo, json } => {
            let r = open(&repo, concurrency).await?;
            let log = r.log();
            let pending = r.pending();
            let forks = r.forks();
            if json {
                let changes: Vec<_> = log
                    .iter()
                    .map(|c| {
                        json!({
                            "hash": c.hash.to_hex(), "actor": c.actor.to_string(), "seq": c.seq,
                            "hlc": c.hlc.0, "time": format_millis(c.wall_ms), "message": c.message,
                            "ops": c.ops, "deps": c.deps.iter().map(|d| d.to_hex()).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                let pending: Vec<_> = pending
                    .iter()
                    .map(|p| {
                        json!({"hash": p.hash.to_hex(), "actor": p.actor.to_string(), "seq": p.seq,
                        "missing": p.missing.iter().map(|d| d.to_hex()).collect::<Vec<_>>()})
                    })
                    .collect();
                let forks: Vec<_> = forks
                    .iter()
                    .map(|f| json!({"actor": f.actor.to_string(), "seq": f.seq, "changes": f.changes.iter().map(|d| d.to_hex()).collect::<Vec<_>>()}))
                    .collect();
                return print_json(
                    &json!({"changes": changes, "pending": pending, "forks": forks}),
                );
            }
            let mut out = std::io::stdout().lock();
            for c in log {
                writeln!(
                    out,
                    "{}  {}  {} #{}  {} ops  {}",
                    c.hash.short(),
                    format_millis(c.wall_ms),
                    c.actor,
                    c.seq,
                    c.ops,
                    c.message.as_deref().unwrap_or("")
                )?;
            }
            for p in pending {
                let missing: Vec<String> = p.missing.iter().map(|m| m.short()).collect();
                writeln!(
                    out,
                    "{}  pending: waiting for {}",
                    p.hash.short(),
                    missing.join(", ")
                )?;
            }
            for f in forks {
                writeln!(
                    out,
                    "fork: actor {} used seq {} for {} different changes",
                    f.actor,
                    f.seq,
                    f.changes.len()
                )?;
            }
            Ok(())
        }
        Command::Conflicts { repo, json } => {
            let r = open(&repo, concurrency).await?;
            let conflicts = r.conflicts().await?;
            if json {
                return print_json(&serde_json::to_value(&conflicts).unwrap_or_default());
            }
            let mut out = std::io::stdout().lock();
            if conflicts.is_empty() {
                writeln!(out, "no conflicts")?;
            }
            for c in conflicts {
                writeln!(out, "{}", demo::describe_conflict(&c))?;
            }
            Ok(())
        }
        Command::Demo { dir } => demo::run(dir).await,
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` from milliseconds since the Unix epoch (UTC).
pub(crate) fn format_millis(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_time() {
        assert_eq!(super::format_millis(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::format_millis(1_795_451_679_000),
            "2026-11-23T16:34:39Z"
        );
    }
}
