//! The `crzarr` binary, driven as a user would.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn crzarr(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crzarr"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(b) = stdin {
        input.write_all(b).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = crzarr(args, stdin);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Exit code 1 and exactly one line on stderr, containing `needle`.
fn fails(args: &[&str], needle: &str) {
    let out = crzarr(args, None);
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.lines().count(),
        1,
        "{args:?}: error should be one line: {err}"
    );
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "{args:?}: {err}"
    );
}

const ARRAY: &str = r#"{"zarr_format":3,"node_type":"array","shape":[4],"data_type":"uint8",
 "chunk_grid":{"name":"regular","configuration":{"chunk_shape":[2]}},
 "chunk_key_encoding":{"name":"default","configuration":{"separator":"/"}},
 "fill_value":0,"codecs":[{"name":"bytes"}]}"#;

#[test]
fn edit_and_read_a_repository() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("data");
    let repo = repo.to_str().unwrap();
    assert!(ok(&["init", repo], None).contains("repository"));
    let meta = dir.path().join("group.json");
    std::fs::write(&meta, br#"{"zarr_format":3,"node_type":"group"}"#).unwrap();
    ok(&["put", repo, "zarr.json", meta.to_str().unwrap()], None);
    ok(
        &["put", repo, "temp/zarr.json", "-", "-m", "make temp"],
        Some(ARRAY.as_bytes()),
    );
    ok(&["put", repo, "temp/c/0", "-"], Some(&[1, 2]));
    ok(&["put", repo, "temp/c/1", "-"], Some(&[3, 4]));
    ok(&["set-attr", repo, "temp", "units", "\"K\""], None);

    assert_eq!(
        ok(&["ls", repo], None),
        "temp/c/0\ntemp/c/1\ntemp/zarr.json\nzarr.json\n"
    );
    assert_eq!(
        ok(&["--concurrency", "2", "ls", repo], None),
        ok(&["ls", repo], None)
    );
    let listed: Vec<String> =
        serde_json::from_str(&ok(&["ls", repo, "temp/c/", "--json"], None)).unwrap();
    assert_eq!(listed, ["temp/c/0", "temp/c/1"]);
    assert_eq!(crzarr(&["cat", repo, "temp/c/1"], None).stdout, vec![3, 4]);
    let meta: serde_json::Value =
        serde_json::from_str(&ok(&["cat", repo, "temp/zarr.json"], None)).unwrap();
    assert_eq!(meta["attributes"]["units"], "K");

    ok(&["rm", repo, "temp/c/0"], None);
    assert_eq!(
        ok(&["ls", repo, "temp/"], None),
        "temp/c/1\ntemp/zarr.json\n"
    );
    assert_eq!(
        ok(&["rm", repo, "temp/c/0"], None).trim(),
        "nothing to commit"
    );

    let log: serde_json::Value = serde_json::from_str(&ok(&["log", repo, "--json"], None)).unwrap();
    let changes = log["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 6);
    assert_eq!(changes[1]["message"], "make temp");
    assert!(log["pending"].as_array().unwrap().is_empty());
    assert!(ok(&["log", repo], None).contains("make temp"));
    assert_eq!(ok(&["conflicts", repo], None).trim(), "no conflicts");
    let conflicts: serde_json::Value =
        serde_json::from_str(&ok(&["conflicts", repo, "--json"], None)).unwrap();
    assert_eq!(conflicts, serde_json::json!([]));

    ok(&["rm", repo, "temp/"], None);
    assert_eq!(ok(&["ls", repo], None), "zarr.json\n");
}

#[test]
fn errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("data");
    let repo = repo.to_str().unwrap();
    fails(&["ls", repo], "no crzarr repository");
    ok(&["init", repo], None);
    fails(&["put", repo, "../escape", "/dev/null"], "..");
    fails(&["put", repo, ".crdt/ops/x", "/dev/null"], ".crdt");
    fails(
        &["put", repo, "nowhere/c/0", "/dev/null"],
        "not inside any array",
    );
    fails(&["set-attr", repo, "", "k", "not json"], "not JSON");
    fails(&["set-attr", repo, "missing", "k", "1"], "no node");
    fails(&["cat", repo, "zarr.json"], "no key");
    fails(&["ls", "ftp://host/x"], "unsupported scheme");
}

#[test]
fn demo_converges() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&["demo", dir.path().join("demo").to_str().unwrap()], None);
    let digests: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("view digest A"))
        .collect();
    assert_eq!(digests.len(), 1, "{out}");
    let (a, b) = digests[0].split_once(", B = ").unwrap();
    assert_eq!(a.rsplit(' ').next().unwrap(), b.trim());
    // Compaction and GC leave the view as it was.
    let after = out
        .lines()
        .find(|l| l.contains("view digest after compaction and GC = "))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(after.rsplit(' ').next().unwrap(), b.trim());
    assert!(
        out.contains("opens from it with 4 requests in 1 round trips"),
        "{out}"
    );
    assert!(out.contains("attribute \"units\": kept"), "{out}");
    assert!(out.contains("[120,120]"), "{out}");
    // The two laptops' concurrent changes, drawn as two lines of descent that meet.
    let b = dir.path().join("demo").join("laptop-b");
    let graph = ok(&["log", b.to_str().unwrap(), "--graph"], None);
    let shape: Vec<&str> = graph
        .lines()
        .map(|l| l.split("  ").next().unwrap_or("").trim_end())
        .collect();
    assert_eq!(shape, ["*", "| *", "|/", "*"], "{graph}");
    assert!(graph.contains("create sst"), "{graph}");
    // A non-empty directory is refused rather than mixed into.
    fails(&["demo", dir.path().to_str().unwrap()], "not empty");
}

#[test]
fn help_and_version() {
    assert!(ok(&["--version"], None).starts_with("crzarr "));
    for cmd in [
        "init",
        "put",
        "rm",
        "set-attr",
        "ls",
        "cat",
        "log",
        "conflicts",
        "demo",
    ] {
        let h = ok(&[cmd, "--help"], None);
        assert!(h.contains("Example"), "{cmd} --help lacks an example");
    }
}

#[test]
fn compact_gc_and_status_report_what_they_did() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("data");
    let repo = repo.to_str().unwrap();
    ok(&["init", repo], None);
    ok(&["put", repo, "x/zarr.json", "-"], Some(ARRAY.as_bytes()));
    ok(&["put", repo, "x/c/0", "-"], Some(&[1u8; 5000]));
    ok(&["put", repo, "x/c/0", "-"], Some(&[2u8; 5000]));
    let st: serde_json::Value =
        serde_json::from_str(&ok(&["status", repo, "--json"], None)).unwrap();
    assert_eq!(st["snapshot"], serde_json::Value::Null);
    assert_eq!(st["uncovered_changes"], 3);
    assert_eq!(st["objects"]["change"]["count"], 3);

    let c: serde_json::Value =
        serde_json::from_str(&ok(&["compact", repo, "--json"], None)).unwrap();
    assert_eq!(c["changes_folded"], 3, "{c}");
    assert!(c["snapshot"].as_str().unwrap().ends_with(".snap"));
    assert!(ok(&["compact", repo], None).starts_with("up to date"));

    let dry = ok(&["gc", repo, "--older-than", "0s", "--dry-run"], None);
    assert!(dry.contains("would delete 3 change"), "{dry}");
    assert!(dry.contains("would delete 1 blob (5000 bytes)"), "{dry}");
    let kept = ok(&["gc", repo, "--older-than", "1d"], None);
    assert!(kept.contains("deleted nothing"), "{kept}");
    let g: serde_json::Value =
        serde_json::from_str(&ok(&["gc", repo, "--older-than", "0s", "--json"], None)).unwrap();
    assert_eq!(g["totals"]["change"]["count"], 3, "{g}");
    assert_eq!(g["totals"]["blob"]["count"], 1, "{g}");

    let st: serde_json::Value =
        serde_json::from_str(&ok(&["status", repo, "--json"], None)).unwrap();
    assert_eq!(st["covered"], 3);
    assert_eq!(st["uncovered_changes"], 0);
    assert_eq!(st["objects"]["change"]["count"], 0);
    assert_eq!(ok(&["cat", repo, "x/c/0"], None).len(), 5000);
    // A bad duration is a usage error (clap's exit code 2), said in one place.
    let out = crzarr(&["gc", repo, "--older-than", "7w"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unit must be s, m, h or d"));
}
