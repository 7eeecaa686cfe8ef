//! Command-line adapter over the library: argument parsing, output, exit codes.

mod demo;
mod graph;
mod sync;
mod zarr;

use clap::{Parser, Subcommand};
use crzarr::io::connect::connect;
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
    #[arg(long, global = true, default_value_t = crzarr::io::store::DEFAULT_CONCURRENCY, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
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
        /// The shortest window `crzarr gc` accepts without --force; it must exceed the
        /// longest commit, import, sync and compaction on this repository.
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        min_gc_window: std::time::Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write one key (a zarr.json, a chunk, or any other key as an object) from a file
    /// or stdin, as one change.
    #[command(
        after_help = "Example:\n  crzarr put ./data temp/zarr.json temp.json\n  crzarr put ./data temp/c/0/0 - < chunk.bin\n  crzarr put ./data README.md README.md"
    )]
    Put {
        /// Repository URL.
        repo: String,
        /// Store key, like `zarr.json`, `temp/zarr.json`, `temp/c/0/0` or `README.md`.
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
    #[command(after_help = "Example:\n  crzarr log ./data --graph\n  crzarr log ./data --json")]
    Log {
        /// Repository URL.
        repo: String,
        /// Draw the change DAG, newest first, one lane per line of descent.
        #[arg(long)]
        graph: bool,
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
    /// Show or change the repository's settings (the minimum GC window).
    #[command(
        after_help = "DURATION is a number with a unit: 90s, 30m, 6h, 7d.\n\nExample:\n  crzarr config ./data\n  crzarr config s3://bucket/sst --min-gc-window 3d"
    )]
    Config {
        /// Repository URL.
        repo: String,
        /// Set the shortest window `crzarr gc` accepts without --force.
        #[arg(long, value_parser = parse_duration)]
        min_gc_window: Option<std::time::Duration>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a snapshot so readers skip the history (idempotent; safe beside writers).
    #[command(
        after_help = "Example:\n  crzarr compact ./data\n  crzarr compact s3://bucket/sst --json"
    )]
    Compact {
        /// Repository URL.
        repo: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete what the newest snapshot makes unnecessary, if older than the window.
    #[command(
        after_help = "DURATION is a number with a unit: 90s, 30m, 6h, 7d.\nThe window must exceed your longest commit, import, sync and compaction (by the store's clock).\nA window below the repository's minimum (crzarr config; 24h unless set) is refused unless --force is given.\n\nExample:\n  crzarr gc ./data --older-than 7d --dry-run\n  crzarr gc s3://bucket/sst --older-than 24h --json"
    )]
    Gc {
        /// Repository URL.
        repo: String,
        /// Only objects last modified longer ago than this.
        #[arg(long, value_parser = parse_duration)]
        older_than: std::time::Duration,
        /// List what would be deleted, with sizes, and delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Accept a window below the repository's minimum (only when nothing else
        /// writes to this repository meanwhile).
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the newest snapshot, what it does not cover, and objects by kind.
    #[command(after_help = "Example:\n  crzarr status ./data --json")]
    Status {
        /// Repository URL.
        repo: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check every object as readers do; report damage, dangling references, pending changes, forks and unknown files.
    #[command(
        after_help = "Read-only: nothing is modified unless --quarantine is given, which moves objects that fail their hash or decoding to .crdt/quarantine/ (readers, GC and sync ignore it) and lists what it moved.\n\nExit status: 0 when no problem was found (informational findings allowed), 2 when a problem was found, 1 on error.\n\nExample:\n  crzarr verify ./data\n  crzarr verify s3://bucket/sst --blobs --json\n  crzarr verify ./data --quarantine"
    )]
    Verify {
        /// Repository URL.
        repo: String,
        /// Also read every referenced blob and check its hash and length, and list blobs nothing references.
        #[arg(long)]
        blobs: bool,
        /// Move objects that fail their hash or decoding to .crdt/quarantine/.
        #[arg(long)]
        quarantine: bool,
        /// Print JSON (the report).
        #[arg(long)]
        json: bool,
    },
    /// Copy what each of two replicas lacks from the other, so both hold the union.
    #[command(
        after_help = "Only what is missing moves: decided from listings of change and snapshot names, never by listing blobs.\nEvery object is checked against its hash before it is written; a corrupt one is reported and not copied.\nSafe to interrupt and rerun, and to run in both directions at once.\n\nExit status: 0 when done (also when there was nothing to do), 2 when an object was refused, 1 on error.\n\nExample:\n  crzarr sync ./laptop s3://bucket/sst\n  crzarr sync s3://bucket/sst gs://mirror/sst --push --json\n\nScheduled, every 15 minutes (crontab -e):\n  */15 * * * * crzarr sync /data/sst s3://bucket/sst >> /var/log/crzarr-sync.log 2>&1"
    )]
    Sync {
        #[command(flatten)]
        args: sync::SyncArgs,
    },
    /// Keep two replicas in sync: run `sync` every interval until Ctrl-C.
    #[command(
        after_help = "A round that fails (a side unreachable) is reported and retried at the next interval.\nCtrl-C stops at once; an interrupted round is completed by the next sync.\n\nExample:\n  crzarr watch ./laptop s3://bucket/sst --interval 30s\n  crzarr watch s3://bucket/sst gs://mirror/sst --interval 5m --json"
    )]
    Watch {
        #[command(flatten)]
        args: sync::SyncArgs,
        /// Time between rounds: a number with a unit (30s, 5m, 1h).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        interval: std::time::Duration,
    },
    /// Ingest a plain Zarr v3 store (a directory or URL) as one change: what differs from the view.
    #[command(
        after_help = "Creates the repository when REPO holds none. Re-importing a modified source records only\nthe difference (nodes and chunks added, changed or deleted), so a team can keep editing a\ndirectory with zarr-python and commit what changed. Invalid Zarr v3 metadata refuses the\nwhole import, naming the key; files that are neither metadata nor chunks are reported.\n\nExample:\n  crzarr import ./sst.zarr s3://bucket/sst\n  crzarr import ./sst.zarr ./repo -m 'QA flags fixed' --json\n  crzarr import --by-reference s3://archive/sst-1990-2020 s3://bucket/sst"
    )]
    Import {
        /// Plain Zarr v3 store: a path or URL.
        src: String,
        /// Repository URL (created if absent).
        repo: String,
        /// Commit message (default: "import SRC").
        #[arg(short, long)]
        message: Option<String>,
        /// Adopt the chunks in place: record references to SRC's objects (key, size,
        /// ETag, modification time) instead of copying them. Later writes overlay them;
        /// a referenced object that changes or vanishes is reported on read, never served.
        #[arg(long)]
        by_reference: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the current view as a plain Zarr v3 store that any Zarr client opens.
    #[command(
        after_help = "DST must be new, empty, or an earlier export of the same repository: export keeps a record\n(.crzarr-export.json in DST) of the keys it wrote and never overwrites nor deletes anything else.\nA non-empty DST without that record, or holding other files at keys the view has, is refused.\nIncremental: identical objects are not rewritten and keys an earlier export wrote that the view\nno longer has are deleted; other files in DST are left as they are. No consolidated metadata is written.\n\nExample:\n  crzarr export s3://bucket/sst ./sst.zarr\n  python -c \"import zarr; print(zarr.open_group('./sst.zarr').tree())\""
    )]
    Export {
        /// Repository URL.
        repo: String,
        /// Destination: a path or URL.
        dst: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the whole story on local disk: a cloud bucket and two laptops edit apart, sync, converge.
    #[command(after_help = "Example:\n  crzarr demo\n  crzarr demo /tmp/crzarr-demo")]
    Demo {
        /// Empty or new directory to work in (default: a new directory under the system temp dir).
        dir: Option<std::path::PathBuf>,
    },
}

/// Parses arguments, runs the command, maps errors to one line and exit code 1.
pub fn main() -> ExitCode {
    restore_sigpipe();
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
        Ok(code) => code,
        Err(e) => {
            match advice(&e) {
                Some(a) => eprintln!("error: {e}; {a}"),
                None => eprintln!("error: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// A reader that closes the pipe early (`crzarr ls REPO | head -1`) ends the command
/// quietly, as it ends other Unix tools, instead of an error about a broken pipe. Rust
/// ignores SIGPIPE by default; a command-line tool wants the default action back.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in `main`, before any thread exists; setting the
    // disposition of SIGPIPE to its default touches no memory of this process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// What to do about an error whose message does not already say.
fn advice(e: &Error) -> Option<&'static str> {
    match e {
        Error::Store { .. } => Some(
            "check the URL, credentials and network, then rerun (every command is safe to repeat)",
        ),
        Error::Corrupt { .. } | Error::TooLarge { .. } => {
            Some("the object is damaged here: `crzarr sync` from a replica restores what it can")
        }
        Error::MissingBlob { .. } => Some("sync from a replica that has it"),
        Error::ForeignRepo { .. } => Some("this file was copied in from another repository"),
        Error::Vanished { .. } => Some("rerun the command"),
        _ => None,
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

fn report_commit(hash: Option<crzarr::format::ids::ChangeHash>, json: bool) -> Result<()> {
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

async fn run(cmd: Command, concurrency: usize) -> Result<ExitCode> {
    match cmd {
        Command::Sync { args } => sync::run_sync(args, concurrency).await,
        Command::Watch { args, interval } => sync::run_watch(args, interval, concurrency).await,
        Command::Verify {
            repo,
            blobs,
            quarantine,
            json,
        } => {
            run_verify(
                &repo,
                &crzarr::ops::verify::VerifyOptions {
                    blobs,
                    quarantine,
                    concurrency,
                },
                json,
            )
            .await
        }
        cmd => run_command(cmd, concurrency)
            .await
            .map(|()| ExitCode::SUCCESS),
    }
}

/// Commands whose only outcomes are success and error.
async fn run_command(cmd: Command, concurrency: usize) -> Result<()> {
    match cmd {
        // Dispatched by `run`: they have a third outcome (something refused or found).
        Command::Sync { .. } | Command::Watch { .. } | Command::Verify { .. } => Ok(()),
        Command::Import {
            src,
            repo,
            message,
            by_reference,
            json,
        } => zarr::run_import(&src, &repo, message, by_reference, json, concurrency).await,
        Command::Export { repo, dst, json } => {
            zarr::run_export(&repo, &dst, json, concurrency).await
        }
        Command::Init {
            repo,
            min_gc_window,
            json,
        } => {
            let loc = connect(&repo, true)?;
            let r = Repo::init(loc.store, &loc.prefix).await?;
            let config = crzarr::io::store::RepoConfig {
                min_gc_window_secs: min_gc_window.as_secs(),
            };
            r.bucket().write_config(&config).await?;
            if json {
                print_json(&json!({
                    "repo": repo,
                    "repo_id": r.id().to_string(),
                    "changes": r.fold().len(),
                    "config": config,
                }))
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
            let name = key.rsplit('/').next().unwrap_or(&key);
            if [".zarray", ".zgroup", ".zattrs", ".zmetadata"].contains(&name) {
                return Err(Error::Refused {
                    what: key,
                    reason: crzarr::zarr::meta::V2_ADVICE.into(),
                });
            }
            let bytes = if file == "-" {
                let mut b = Vec::new();
                std::io::stdin().read_to_end(&mut b)?;
                b
            } else {
                std::fs::read(&file)
                    .map_err(|e| Error::Usage(format!("cannot read {file}: {e}")))?
            };
            let mut r = open(&repo, concurrency).await?;
            let mut s = r.session();
            s.set(&key, bytes)?;
            let h = s.commit(&mut r, message.as_deref()).await?;
            // Say what the key became: a mistyped array path writes an object, not a chunk.
            let kind = match r.view().get(&key) {
                Some(crzarr::fold::view::Entry::Metadata(_)) => "metadata",
                Some(crzarr::fold::view::Entry::Chunk(_)) => "chunk",
                Some(crzarr::fold::view::Entry::Object(_)) => "object",
                None => "absent",
            };
            match (h, json) {
                (Some(h), true) => {
                    print_json(&json!({"change": h.to_hex(), "key": key, "kind": kind}))
                }
                (Some(h), false) => {
                    let note = if kind == "object" {
                        " (no array owns this key: kept as an object beside the hierarchy)"
                    } else {
                        ""
                    };
                    println!("committed {}: {kind} {key}{note}", h.short());
                    Ok(())
                }
                (None, _) => report_commit(None, json),
            }
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
            let h = s.commit(&mut r, message.as_deref()).await?;
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
            let h = s.commit(&mut r, message.as_deref()).await?;
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
        Command::Log { repo, graph, json } => {
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
                let snapshot = r.fold().snapshot_base().map(|b| b.name.file_name());
                return print_json(
                    &json!({"snapshot": snapshot, "changes": changes, "pending": pending, "forks": forks}),
                );
            }
            let mut out = std::io::stdout().lock();
            if let Some(b) = r.fold().snapshot_base() {
                writeln!(
                    out,
                    "snapshot {}: {} earlier changes compacted",
                    b.name.file_name(),
                    b.name.covered
                )?;
            }
            if graph {
                for line in graph::render(&log) {
                    writeln!(out, "{line}")?;
                }
            } else {
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
            for m in r.missing_history() {
                writeln!(out, "warning: {}", m.error)?;
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
        Command::Compact { repo, json } => {
            let mut r = open(&repo, concurrency).await?;
            if !json {
                eprintln!("compacting {} changes...", r.log().len());
            }
            let rep = r.compact().await?;
            if json {
                return print_json(&serde_json::to_value(&rep).unwrap_or_default());
            }
            match &rep.snapshot {
                None => println!(
                    "up to date: {} changes covered, nothing written",
                    rep.covered
                ),
                Some(name) => println!(
                    "wrote {name}: {} changes folded ({} covered in all, {} pending), {} manifest pieces written, {} reused, {} archive shards, {} bytes",
                    rep.changes_folded,
                    rep.covered,
                    rep.pending,
                    rep.manifests_written,
                    rep.manifests_reused,
                    rep.archive_shards_written,
                    rep.bytes_written
                ),
            }
            Ok(())
        }
        Command::Config {
            repo,
            min_gc_window,
            json,
        } => {
            let r = open(&repo, concurrency).await?;
            let mut config = r.bucket().read_config().await?;
            if let Some(w) = min_gc_window {
                config.min_gc_window_secs = w.as_secs();
                r.bucket().write_config(&config).await?;
            }
            if json {
                return print_json(&json!(config));
            }
            println!(
                "min-gc-window {}s ({:.1} h)",
                config.min_gc_window_secs,
                config.min_gc_window_secs as f64 / 3600.0
            );
            Ok(())
        }
        Command::Gc {
            repo,
            older_than,
            dry_run,
            force,
            json,
        } => {
            let mut r = open(&repo, concurrency).await?;
            let rep = r
                .gc(&crzarr::ops::gc::GcOptions {
                    older_than,
                    dry_run,
                    force,
                })
                .await?;
            if force && rep.notes.iter().any(|n| n.contains("(forced)")) {
                eprintln!(
                    "warning: window {older_than:?} is below this repository's minimum: safe only while nothing else writes to, imports into, syncs to or compacts this repository"
                );
            }
            if json {
                let mut v = serde_json::to_value(&rep).unwrap_or_default();
                v["totals"] = json!(
                    rep.totals()
                        .iter()
                        .map(|(k, (n, b))| (
                            format!("{k:?}").to_lowercase(),
                            json!({"count": n, "bytes": b})
                        ))
                        .collect::<serde_json::Map<_, _>>()
                );
                return print_json(&v);
            }
            let mut out = std::io::stdout().lock();
            let verb = if dry_run { "would delete" } else { "deleted" };
            if dry_run {
                for x in &rep.removed {
                    writeln!(out, "{:>12}  {}", x.bytes, x.key)?;
                }
            }
            for (k, (n, b)) in rep.totals() {
                writeln!(
                    out,
                    "{verb} {n} {} ({b} bytes)",
                    format!("{k:?}").to_lowercase()
                )?;
            }
            if rep.removed.is_empty() {
                writeln!(out, "{verb} nothing")?;
            }
            let qverb = if dry_run {
                "would quarantine"
            } else {
                "quarantined"
            };
            for q in &rep.quarantined {
                writeln!(out, "{qverb} {} -> {} ({})", q.from, q.to, q.reason)?;
            }
            writeln!(
                out,
                "kept {} unneeded objects younger than the window",
                rep.kept_recent
            )?;
            for n in &rep.notes {
                writeln!(out, "note: {n}")?;
            }
            Ok(())
        }
        Command::Status { repo, json } => {
            let r = open(&repo, concurrency).await?;
            let st = r.status().await?;
            if json {
                return print_json(&serde_json::to_value(&st).unwrap_or_default());
            }
            let mut out = std::io::stdout().lock();
            match (&st.snapshot, st.snapshot_age_secs) {
                (Some(n), Some(age)) => {
                    writeln!(out, "snapshot: {n} ({} changes, {age} s old)", st.covered)?
                }
                _ => writeln!(out, "snapshot: none (run `crzarr compact`)")?,
            }
            writeln!(
                out,
                "changes not in the snapshot: {}  pending: {}  forks: {}  problems: {}",
                st.uncovered_changes, st.pending, st.forks, st.problems
            )?;
            for m in r.missing_history() {
                writeln!(out, "warning: {}", m.error)?;
            }
            for (k, t) in &st.objects {
                writeln!(
                    out,
                    "{:<10} {:>8} objects {:>14} bytes",
                    format!("{k:?}").to_lowercase(),
                    t.count,
                    t.bytes
                )?;
            }
            Ok(())
        }
        Command::Demo { dir } => demo::run(dir).await,
    }
}

/// Exit code when `verify` found a problem.
const EXIT_PROBLEMS: u8 = 2;

/// `crzarr verify`: one line per finding, then what was moved and a summary (or the
/// report as JSON); exit 2 when a finding is a problem.
async fn run_verify(
    url: &str,
    opts: &crzarr::ops::verify::VerifyOptions,
    json: bool,
) -> Result<ExitCode> {
    use crzarr::ops::verify::{Severity, verify};
    let loc = connect(url, false)?;
    let bucket = crzarr::io::store::RepoStore::new(loc.store, &loc.prefix);
    let rep = verify(&bucket, opts).await?;
    if json {
        print_json(&serde_json::to_value(&rep).unwrap_or_default())?;
    } else {
        let mut out = std::io::stdout().lock();
        for f in &rep.findings {
            let severity = match f.severity {
                Severity::Problem => "problem",
                Severity::Info => "info",
            };
            writeln!(
                out,
                "{severity}: {}: {}: {}",
                f.kind.as_str(),
                f.key,
                f.message
            )?;
        }
        for m in &rep.moved {
            writeln!(out, "moved {} -> {}", m.from, m.to)?;
        }
        use crzarr::format::layout::ObjectKind;
        let checked: Vec<String> = [
            (ObjectKind::Change, "change file"),
            (ObjectKind::Snapshot, "snapshot"),
            (ObjectKind::Manifest, "manifest piece"),
            (ObjectKind::Archive, "archive shard"),
            (ObjectKind::Blob, "blob"),
        ]
        .iter()
        .map(|(k, name)| {
            let n = rep.checked.get(k).copied().unwrap_or(0);
            format!("{n} {name}{}", if n == 1 { "" } else { "s" })
        })
        .collect();
        writeln!(
            out,
            "checked {} ({} bytes hashed{})",
            checked.join(", "),
            rep.bytes_hashed,
            if opts.blobs {
                ""
            } else {
                "; blobs not read: use --blobs"
            }
        )?;
        writeln!(
            out,
            "{}: {} problem{}, {} info in {:.2} s",
            if rep.is_clean() { "clean" } else { "NOT clean" },
            rep.problems,
            if rep.problems == 1 { "" } else { "s" },
            rep.infos,
            rep.elapsed_ms as f64 / 1000.0
        )?;
    }
    Ok(if rep.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PROBLEMS)
    })
}

/// Parses `90s`, `30m`, `6h`, `7d` (and `0s`).
fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?}: add a unit (s, m, h or d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number then a unit, like 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    n.checked_mul(secs)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: too long"))
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
    fn parses_durations() {
        use std::time::Duration;
        assert_eq!(super::parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            super::parse_duration("7d"),
            Ok(Duration::from_secs(604_800))
        );
        assert_eq!(super::parse_duration("0s"), Ok(Duration::ZERO));
        assert!(super::parse_duration("7").is_err());
        assert!(super::parse_duration("7w").is_err());
        assert!(super::parse_duration("d").is_err());
    }

    #[test]
    fn formats_time() {
        assert_eq!(super::format_millis(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::format_millis(1_795_451_679_000),
            "2026-11-23T16:34:39Z"
        );
    }
}
