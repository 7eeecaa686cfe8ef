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
fn put_says_what_a_key_became() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("data");
    let repo = repo.to_str().unwrap();
    ok(&["init", repo], None);
    ok(
        &["put", repo, "temp/zarr.json", "-"],
        Some(ARRAY.as_bytes()),
    );
    assert!(ok(&["put", repo, "temp/c/0", "-"], Some(&[1, 2])).contains(": chunk temp/c/0"));
    // A key no array owns is kept as an object, and `put` says so.
    let out = ok(&["put", repo, "tmp/c/0", "-"], Some(&[9]));
    assert!(
        out.contains(": object tmp/c/0 (no array owns this key"),
        "{out}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["put", repo, "tmp/c/0", "-", "--json"], Some(&[8]))).unwrap();
    assert_eq!(
        (&v["kind"], &v["key"]),
        (&serde_json::json!("object"), &serde_json::json!("tmp/c/0"))
    );
    ok(&["rm", repo, "tmp/c/0"], None);
    assert_eq!(
        ok(&["ls", repo], None),
        "temp/c/0\ntemp/zarr.json\nzarr.json\n"
    );
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
        &["put", repo, "notes/zarr.json/x", "/dev/null"],
        "`zarr.json` is node metadata",
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
    // "view digest cloud = X, laptop A = Y, laptop B = Z": all three equal.
    let line = out
        .lines()
        .find(|l| l.contains("view digest cloud = "))
        .unwrap_or_else(|| panic!("{out}"));
    let digests: Vec<&str> = line
        .split(", ")
        .map(|p| p.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(digests.len(), 3, "{line}");
    assert!(digests.iter().all(|d| *d == digests[0]), "{line}");
    let digest = digests[0];
    // After compaction and GC, a new laptop synced from the cloud (snapshot, no history)
    // and laptop A (history plus the copied snapshot) show the same view.
    let after = out
        .lines()
        .find(|l| l.contains("view digest new laptop = "))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        after,
        format!("   view digest new laptop = {digest}, laptop A = {digest}"),
        "{out}"
    );
    assert!(
        out.contains("opens from the snapshot with 4 requests in 1 round trip(s)"),
        "{out}"
    );
    // The new laptop got the snapshot and no change files; laptop A got the snapshot
    // and sent nothing back.
    assert!(
        out.contains("cloud -> new laptop: 0 change file(s), 5 blob(s), 1 snapshot(s)"),
        "{out}"
    );
    assert!(
        out.contains("cloud -> laptop A: 0 change file(s), 0 blob(s), 1 snapshot(s)"),
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
    // Issue 14 item 8: below the minimum window (24 hours unless set), GC refuses
    // unless forced, and deletes nothing.
    let out = crzarr(&["gc", repo, "--older-than", "1h"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("below this repository's minimum GC window"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    let cfg: serde_json::Value = serde_json::from_str(&ok(
        &["config", repo, "--min-gc-window", "30m", "--json"],
        None,
    ))
    .unwrap();
    assert_eq!(cfg["min_gc_window_secs"], 1800, "{cfg}");
    assert!(ok(&["config", repo], None).contains("min-gc-window 1800s"));
    let out = crzarr(&["gc", repo, "--older-than", "10m"], None);
    assert_eq!(out.status.code(), Some(1), "10m is still below 30m");
    let g: serde_json::Value = serde_json::from_str(&ok(
        &["gc", repo, "--older-than", "0s", "--force", "--json"],
        None,
    ))
    .unwrap();
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

/// Sorted names of the files directly in `dir` (none if it is missing), staging files
/// (`name#<digits>`, left by an interrupted local write) excluded.
fn files_in(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.contains('#'))
        .collect();
    v.sort();
    v
}

fn ops(repo: &std::path::Path) -> Vec<String> {
    files_in(&repo.join(".crdt").join("ops"))
}

/// Whether the change whose hash starts its file name is in `repo`.
fn has_change(repo: &std::path::Path, hash: &str) -> bool {
    ops(repo).iter().any(|n| n.starts_with(hash))
}

/// The change hash `put --json` / `set-attr --json` printed.
fn committed(out: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(out).unwrap();
    v["change"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"))
        .to_string()
}

fn json_of(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

const SIDES: [&str; 2] = ["a_to_b", "b_to_a"];
const TRANSFER: [&str; 5] = ["changes", "blobs", "snapshots", "manifests", "bytes"];

/// A report that copied nothing either way.
fn assert_noop(v: &serde_json::Value) {
    for side in SIDES {
        for f in TRANSFER {
            assert_eq!(v[side][f], 0, "{side}.{f}: {v}");
        }
    }
    assert_eq!(v["initialized"], serde_json::Value::Null, "{v}");
    assert_eq!(v["refused"], serde_json::json!([]), "{v}");
}

/// Total size of the files in these `.crdt/` directories.
fn bytes_in(repo: &std::path::Path, dirs: &[&str]) -> u64 {
    dirs.iter()
        .flat_map(|d| {
            let dir = repo.join(".crdt").join(d);
            files_in(&dir).into_iter().map(move |n| dir.join(n))
        })
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn version_and_an_example_for_every_command() {
    assert_eq!(
        ok(&["--version"], None),
        format!("crzarr {}\n", env!("CARGO_PKG_VERSION"))
    );
    let help = ok(&["--help"], None);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    for expected in ["init", "put", "sync", "watch", "demo"] {
        assert!(commands.contains(&expected), "{expected} in {commands:?}");
    }
    for cmd in commands {
        let h = ok(&[cmd, "--help"], None);
        let example: Vec<&str> = h
            .lines()
            .skip_while(|l| l.trim() != "Example:")
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .collect();
        assert!(
            example
                .iter()
                .any(|l| l.trim().starts_with(&format!("crzarr {cmd} "))),
            "`crzarr {cmd} --help` lacks an Example section showing `crzarr {cmd}`:\n{h}"
        );
    }
}

/// A repository with a group, an array, a blob chunk and an inline chunk, compacted,
/// then one more change: 5 changes, 1 blob, 1 snapshot. Returns its id.
fn sample_repo(repo: &str, blob: &[u8]) -> String {
    let init: serde_json::Value =
        serde_json::from_str(&ok(&["init", repo, "--json"], None)).unwrap();
    ok(
        &["put", repo, "zarr.json", "-"],
        Some(br#"{"zarr_format":3,"node_type":"group"}"#),
    );
    ok(&["put", repo, "x/zarr.json", "-"], Some(ARRAY.as_bytes()));
    ok(&["put", repo, "x/c/0", "-"], Some(blob));
    ok(&["put", repo, "x/c/1", "-"], Some(&[3, 4]));
    ok(&["compact", repo], None);
    ok(&["set-attr", repo, "x", "units", "\"K\""], None);
    init["repo_id"].as_str().unwrap().to_string()
}

#[test]
fn sync_makes_a_replica_then_has_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("new").join("b"));
    let blob: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let id = sample_repo(s(&a), &blob);

    let out = crzarr(&["sync", s(&a), s(&b), "--json"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    for side in SIDES {
        for f in TRANSFER {
            assert!(v[side][f].is_u64(), "{side}.{f}: {v}");
        }
    }
    assert!(v["refused"].is_array() && v["ignored"].is_array(), "{v}");
    assert!(v["elapsed_ms"].is_u64(), "{v}");
    assert_eq!(v["repo_id"], id.as_str(), "{v}");
    assert_eq!(v["initialized"], "b", "{v}");
    assert_eq!((&v["a"], &v["b"]), (&s(&a).into(), &s(&b).into()), "{v}");
    assert_eq!(v["direction"], "both", "{v}");
    assert_eq!(v["refused"], serde_json::json!([]), "{v}");
    assert_eq!(v["ignored"], serde_json::json!([]), "{v}");
    // B is now a replica: same repository, same objects, same view.
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join(".crdt").join("repo.json")).unwrap()).unwrap();
    assert_eq!(marker["repo_id"], id.as_str());
    let t = &v["a_to_b"];
    assert_eq!(t["changes"], 5, "{v}");
    assert_eq!(ops(&b), ops(&a));
    assert_eq!(t["blobs"], 1, "{v}");
    assert_eq!(files_in(&b.join(".crdt/blobs")).len(), 1);
    assert_eq!(t["snapshots"], 1, "{v}");
    assert_eq!(files_in(&b.join(".crdt/snapshots")).len(), 1);
    let manifests = files_in(&b.join(".crdt/manifests")).len();
    assert!(
        manifests >= 1,
        "the snapshot's manifest piece was not copied"
    );
    let shards = files_in(&b.join(".crdt/archive")).len();
    assert_eq!(t["manifests"], (manifests + shards) as u64, "{v}");
    let copied = bytes_in(&b, &["ops", "blobs", "snapshots", "manifests", "archive"]);
    // The `.crdt/latest` hint is a copy of the snapshot metadata: counted or not.
    let hint = std::fs::metadata(b.join(".crdt/latest")).map_or(0, |m| m.len());
    let bytes = t["bytes"].as_u64().unwrap();
    assert!(
        (copied..=copied + hint).contains(&bytes),
        "bytes {bytes}, objects copied {copied}: {v}"
    );
    for f in TRANSFER {
        assert_eq!(v["b_to_a"][f], 0, "b_to_a.{f}: {v}");
    }
    assert_eq!(ok(&["ls", s(&b)], None), ok(&["ls", s(&a)], None));
    assert_eq!(crzarr(&["cat", s(&b), "x/c/0"], None).stdout, blob);
    assert_eq!(
        ok(&["cat", s(&b), "x/zarr.json"], None),
        ok(&["cat", s(&a), "x/zarr.json"], None)
    );

    // A second run finds nothing to do, and says so with exit 0.
    let out = crzarr(&["sync", s(&a), s(&b), "--json"], None);
    assert_eq!(out.status.code(), Some(0));
    assert_noop(&json_of(&out));
    let text = ok(&["sync", s(&a), s(&b)], None);
    assert!(text.contains("nothing to copy"), "{text}");

    // The summary without --json names the new replica.
    let c = dir.path().join("c");
    let text = ok(&["sync", s(&a), s(&c)], None);
    assert!(
        text.contains(&format!("is now a replica of repository {id}")),
        "{text}"
    );
    assert!(text.contains("done in"), "{text}");
    assert_eq!(ok(&["ls", s(&c)], None), ok(&["ls", s(&a)], None));
}

#[test]
fn sync_refuses_a_corrupt_change_and_copies_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ok(&["init", s(&a)], None);
    ok(&["put", s(&a), "x/zarr.json", "-"], Some(ARRAY.as_bytes()));
    ok(&["sync", s(&a), s(&b)], None);
    let good = committed(&ok(&["put", s(&a), "x/c/1", "-", "--json"], Some(&[5, 6])));
    let bad = committed(&ok(
        &["set-attr", s(&a), "x", "units", "\"K\"", "--json"],
        None,
    ));
    let name = ops(&a).into_iter().find(|n| n.starts_with(&bad)).unwrap();
    let path = a.join(".crdt").join("ops").join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    for x in &mut bytes[mid..mid + 4] {
        *x ^= 0xff;
    }
    std::fs::write(&path, &bytes).unwrap();

    let out = crzarr(&["sync", s(&a), s(&b), "--json"], None);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    let refused = v["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{v}");
    assert!(
        refused[0]["key"]
            .as_str()
            .unwrap()
            .ends_with(&format!(".crdt/ops/{name}")),
        "{v}"
    );
    assert!(!refused[0]["error"].as_str().unwrap().is_empty(), "{v}");
    assert_eq!(v["a_to_b"]["changes"], 1, "the good change is copied: {v}");
    assert!(has_change(&b, &good));
    assert!(!has_change(&b, &bad), "the corrupt change was copied");
    assert!(ok(&["ls", s(&b)], None).contains("x/c/1"));
    // Without --json too: exit 2, the key named; still not copied.
    let out = crzarr(&["sync", s(&a), s(&b)], None);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&name), "{text}");
    assert!(!has_change(&b, &bad));
}

#[test]
fn sync_refuses_two_different_repositories() {
    let dir = tempfile::tempdir().unwrap();
    let (a, c, d) = (
        dir.path().join("a"),
        dir.path().join("c"),
        dir.path().join("d"),
    );
    for r in [&a, &c] {
        ok(&["init", s(r)], None);
        ok(
            &["put", s(r), "zarr.json", "-"],
            Some(br#"{"zarr_format":3,"node_type":"group"}"#),
        );
    }
    let before = ops(&c);
    for args in [
        vec!["sync", s(&a), s(&c)],
        vec!["sync", s(&a), s(&c), "--push"],
        vec!["sync", s(&a), s(&c), "--force"],
    ] {
        let out = crzarr(&args, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains(s(&a)) && err.contains(s(&c)), "{err}");
    }
    assert_eq!(ops(&c), before, "nothing was copied");
    assert_eq!(ops(&a).len(), 1, "nothing was copied");

    // An empty repository initialized by mistake: refused, unless --force.
    ok(&["init", s(&d)], None);
    let out = crzarr(&["sync", s(&a), s(&d)], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--force"), "{err}");
    let out = crzarr(&["sync", s(&a), s(&d), "--force", "--json"], None);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json_of(&out)["initialized"], "b");
    assert_eq!(ok(&["ls", s(&d)], None), ok(&["ls", s(&a)], None));
}

/// A running `crzarr watch`, killed if the test ends before it does.
struct Watch(std::process::Child);

impl Watch {
    fn start(a: &std::path::Path, b: &std::path::Path) -> Watch {
        Watch(
            Command::new(env!("CARGO_BIN_EXE_crzarr"))
                .args(["watch", s(a), s(b), "--interval", "1s"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }

    /// SIGINT, as Ctrl-C sends; the exit status and stdout, stderr once it has exited.
    fn interrupt(mut self, within: std::time::Duration) -> (Option<i32>, String, String) {
        use std::io::Read;
        let pid = self.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = std::time::Instant::now() + within;
        while self.running() {
            assert!(
                std::time::Instant::now() < deadline,
                "watch did not stop within {within:?} of SIGINT"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut out = String::new();
        let mut err = String::new();
        self.0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        self.0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (self.0.try_wait().unwrap().unwrap().code(), out, err)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Polls `cond` until it holds or `within` passes; returns whether it held.
fn eventually(within: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn watch_carries_new_commits_across_and_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ok(&["init", s(&a)], None);
    let first = committed(&ok(
        &["put", s(&a), "x/zarr.json", "-", "--json"],
        Some(ARRAY.as_bytes()),
    ));
    let mut w = Watch::start(&a, &b);
    let secs = std::time::Duration::from_secs;
    assert!(
        eventually(secs(10), || has_change(&b, &first)),
        "first round"
    );
    let h = committed(&ok(
        &["put", s(&a), "x/c/0", "-", "--json"],
        Some(&[7u8; 5000]),
    ));
    let t = std::time::Instant::now();
    assert!(
        eventually(secs(5), || has_change(&b, &h)),
        "a commit to A did not reach B within 5 s"
    );
    eprintln!("reached B after {:?}", t.elapsed());
    assert!(w.running());
    let (code, out, err) = w.interrupt(secs(3));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.lines().any(|l| l.trim() == "stopped"), "{err}");
    assert!(
        out.contains("1 change"),
        "a round reports what it copied: {out}"
    );
    assert_eq!(ok(&["ls", s(&b)], None), ok(&["ls", s(&a)], None));
    assert_eq!(
        crzarr(&["cat", s(&b), "x/c/0"], None).stdout,
        vec![7u8; 5000]
    );
}

#[test]
fn watch_keeps_going_while_a_side_is_unusable() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let parent = dir.path().join("mount");
    let b = parent.join("b");
    ok(&["init", s(&a)], None);
    let first = committed(&ok(
        &["put", s(&a), "x/zarr.json", "-", "--json"],
        Some(ARRAY.as_bytes()),
    ));
    let mut w = Watch::start(&a, &b);
    let secs = std::time::Duration::from_secs;
    assert!(
        eventually(secs(10), || has_change(&b, &first)),
        "first round"
    );
    // B's location becomes unusable (its parent is now a file), and A moves on.
    std::fs::remove_dir_all(&parent).unwrap();
    std::fs::write(&parent, b"not a directory").unwrap();
    let h = committed(&ok(&["put", s(&a), "x/c/1", "-", "--json"], Some(&[1, 2])));
    std::thread::sleep(std::time::Duration::from_millis(3500));
    assert!(w.running(), "watch gave up on a failed round");
    // Back again (empty): the next round makes B a replica once more.
    std::fs::remove_file(&parent).unwrap();
    assert!(
        eventually(secs(5), || has_change(&b, &h) && has_change(&b, &first)),
        "B did not catch up after it came back"
    );
    let (code, out, err) = w.interrupt(secs(3));
    assert_eq!(code, Some(0), "{out}{err}");
    let warnings = err.lines().filter(|l| l.starts_with("warning:")).count();
    assert!(
        (2..=6).contains(&warnings),
        "one warning per failed round (about 3 in 3.5 s at 1 s): {err}"
    );
    assert!(err.lines().any(|l| l.trim() == "stopped"), "{err}");
    assert_eq!(ok(&["ls", s(&b)], None), ok(&["ls", s(&a)], None));
}

#[test]
fn verify_exit_codes_json_and_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("data");
    ok(&["init", s(&repo)], None);
    ok(
        &["put", s(&repo), "x/zarr.json", "-"],
        Some(ARRAY.as_bytes()),
    );
    ok(&["put", s(&repo), "x/c/0", "-"], Some(&[7u8; 5000]));
    let head = committed(&ok(
        &["set-attr", s(&repo), "x", "units", "\"K\"", "--json"],
        None,
    ));

    // Clean: exit 0, a summary, and the report as JSON.
    let text = ok(&["verify", s(&repo)], None);
    assert!(
        text.contains(
            "checked 3 change files, 0 snapshots, 0 manifest pieces, 0 archive shards, 0 blobs"
        ),
        "{text}"
    );
    assert!(text.contains("blobs not read: use --blobs"), "{text}");
    assert!(text.contains("clean: 0 problems, 0 info"), "{text}");
    let out = crzarr(&["verify", s(&repo), "--blobs", "--json"], None);
    assert_eq!(out.status.code(), Some(0));
    let v = json_of(&out);
    assert_eq!(v["findings"], serde_json::json!([]), "{v}");
    assert_eq!(v["problems"], 0, "{v}");
    assert_eq!(v["checked"]["change"], 3, "{v}");
    assert_eq!(v["checked"]["blob"], 1, "{v}");
    assert!(v["bytes_hashed"].as_u64().unwrap() > 5000, "{v}");
    assert!(v["elapsed_ms"].is_u64() && v["repo_id"].is_string(), "{v}");
    assert_eq!(v["moved"], serde_json::json!([]), "{v}");

    // A damaged change: exit 2, one line naming it, and the same in JSON.
    let name = ops(&repo)
        .into_iter()
        .find(|n| n.starts_with(&head))
        .unwrap();
    let path = repo.join(".crdt").join("ops").join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let out = crzarr(&["verify", s(&repo)], None);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("problem: corrupt_change: "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(&name), "{line}");
    assert!(text.contains("NOT clean: 1 problem,"), "{text}");
    let out = crzarr(&["verify", s(&repo), "--json"], None);
    assert_eq!(out.status.code(), Some(2));
    let v = json_of(&out);
    assert_eq!(v["problems"], 1, "{v}");
    let f = &v["findings"][0];
    assert_eq!(
        (&f["kind"], &f["severity"]),
        (&"corrupt_change".into(), &"problem".into()),
        "{v}"
    );
    assert!(
        f["key"]
            .as_str()
            .unwrap()
            .ends_with(&format!(".crdt/ops/{name}"))
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "verify modified it");

    // --quarantine moves it and says so; afterwards only information remains.
    let out = crzarr(&["verify", s(&repo), "--quarantine", "--json"], None);
    assert_eq!(out.status.code(), Some(2), "the problem was found");
    let v = json_of(&out);
    let moved = v["moved"].as_array().unwrap();
    assert_eq!(moved.len(), 1, "{v}");
    assert!(moved[0]["from"].as_str().unwrap().ends_with(&name), "{v}");
    let moved_to = repo
        .join(".crdt")
        .join("quarantine")
        .join("ops")
        .join(&name);
    assert_eq!(std::fs::read(&moved_to).unwrap(), bytes);
    assert!(!path.exists());
    let out = crzarr(&["verify", s(&repo)], None);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("info: quarantined: "), "{text}");
    assert!(text.contains("clean: 0 problems, 1 info"), "{text}");
    assert_eq!(
        ok(&["ls", s(&repo)], None),
        "x/c/0\nx/zarr.json\nzarr.json\n"
    );

    fails(
        &["verify", s(&dir.path().join("nothing"))],
        "no crzarr repository",
    );
}

#[test]
fn export_never_deletes_files_it_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    sample_repo(s(&repo), b"chunk");
    // A home directory: notes, a git checkout, an SSH key.
    let home = dir.path().join("home");
    for (f, body) in [
        ("notes.md", "# notes"),
        (".git/config", "[core]"),
        (".ssh/id", "secret"),
    ] {
        let p = home.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
    }
    // Every file under `home`, with its bytes.
    let tree = || {
        let mut out = Vec::new();
        let mut dirs = vec![home.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    out.push((p.clone(), std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    };
    let before = tree();
    assert_eq!(before.len(), 3);
    fails(
        &["export", s(&repo), s(&home)],
        "no record of an earlier export",
    );
    let out = crzarr(&["export", s(&repo), s(&home)], None);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("notes.md") && err.contains(".ssh/id"), "{err}");
    assert_eq!(tree(), before);
    // A new directory works; re-exporting there deletes nothing.
    let out = dir.path().join("out");
    ok(&["export", s(&repo), s(&out)], None);
    let again = ok(&["export", s(&repo), s(&out)], None);
    assert!(
        again.contains(" 0 written") && again.contains(" 0 deleted"),
        "{again}"
    );
}

/// A new repository `r` in a temp dir (kept alive by the returned dir).
fn new_repo() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("r").to_str().unwrap().to_string();
    ok(&["init", &repo], None);
    (dir, repo)
}

/// Issue 17 item 4: `crzarr ls REPO | head -1` ends quietly when the reader closes the
/// pipe, as Unix tools do: no "Broken pipe" error; killed by SIGPIPE (or exit 0).
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (_dir, repo) = new_repo();
    let repo = repo.as_str();
    ok(
        &["put", repo, "zarr.json", "-"],
        Some(br#"{"zarr_format":3,"node_type":"group","attributes":{}}"#),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_crzarr"))
        .args(["ls", repo])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the command writes (it opens the repository first).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.is_empty(), "stderr: {err}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}",
        out.status
    );
}

/// Issue 17 item 4: a URL with one slash after its scheme is refused with a hint, and
/// no local directory named like it is created.
#[test]
fn a_malformed_url_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_crzarr"))
        .args(["init", "s3:/bucket/x"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean s3://bucket/x"), "{err}");
    assert!(!dir.path().join("s3:").exists(), "a directory was created");
}

/// Issue 17 item 4: `put` of a file that does not exist names the file.
#[test]
fn put_of_a_missing_file_names_it() {
    let (_dir, repo) = new_repo();
    fails(
        &["put", &repo, "k", "missing.json"],
        "cannot read missing.json",
    );
}

/// Issue 17 item 4: `import` of a source that does not exist says so, rather than
/// advising `crzarr init`.
#[test]
fn import_of_a_missing_source_says_it_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("missing.zarr");
    let repo = dir.path().join("r");
    fails(
        &["import", src.to_str().unwrap(), repo.to_str().unwrap()],
        "no such directory",
    );
    assert!(!repo.exists(), "the repository was created anyway");
}

/// Issue 17 item 4: a usage error exits 2 with a usage hint, as the README says.
#[test]
fn a_usage_error_exits_2_with_a_usage_hint() {
    let out = crzarr(&["ls"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Usage:"), "{err}");
    let readme = include_str!("../../README.md");
    assert!(
        readme.contains("exits with status 2"),
        "README states the usage exit code"
    );
}

/// Issue 17 item 4: Zarr v2 metadata (a `.zarray` key, or a `zarr.json` of format 2) is
/// refused with what it is and how to convert it, not a complaint about `node_type`.
#[test]
fn zarr_v2_metadata_is_named_as_such() {
    let (dir, repo) = new_repo();
    let repo = repo.as_str();
    let v2 = br#"{"zarr_format":2,"shape":[4],"chunks":[2],"dtype":"<i4","compressor":null,"fill_value":0,"order":"C","filters":null}"#;
    let file = dir.path().join("za");
    std::fs::write(&file, v2).unwrap();
    let file = file.to_str().unwrap();
    fails(&["put", repo, "a/.zarray", file], "Zarr v2 metadata");
    fails(&["put", repo, "zarr.json", file], "Zarr v2 metadata");
    fails(&["put", repo, "zarr.json", file], "zarr_format=3");
}
