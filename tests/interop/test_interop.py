"""Interop with real Zarr clients: zarr-python writes the fixtures, crzarr imports,
edits, syncs and exports them, and zarr-python and tensorstore read the exports.

Run by tests/run.sh (`pytest tests/interop`) with CRZARR_BIN set to the built binary.
Test ids name the client and the fixture, e.g. `test_round_trip[zstd]` checks the zstd
fixture with both clients; each assertion message says which client disagreed.

Edits "through crzarr" are made with the CLI: `set-attr`, `put` (a chunk or a zarr.json,
e.g. a resize) and `rm`. The bytes crzarr is given come from zarr-python applying the
same edit to a scratch copy, so every codec is exercised without re-implementing it; the
scratch copy, read by zarr-python, is the expected result.
"""

import filecmp
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ShardingCodec, ZstdCodec

CRZARR = os.environ.get("CRZARR_BIN", "crzarr")


def crzarr(*args, ok=True):
    """Runs the crzarr CLI; returns the completed process."""
    p = subprocess.run([CRZARR, *map(str, args)], capture_output=True, text=True)
    if ok and p.returncode != 0:
        raise AssertionError(f"crzarr {' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr}")
    return p


def crzarr_json(*args):
    return json.loads(crzarr(*args, "--json").stdout)


# ---------------------------------------------------------------------------
# Fixtures written by zarr-python. Each builder returns the edits to apply: a function
# that edits a zarr-python group (the scratch copy) and lists the attribute edits crzarr
# makes with `set-attr`.
# ---------------------------------------------------------------------------


def _edit_chunk_and_attr(path, region, value, attrs=None):
    def edit(root):
        a = root[path]
        a[region] = value
        for k, v in (attrs or {}).items():
            a.attrs[k] = v
    return edit


def fx_float64_nan(root):
    a = root.create_array("temp", shape=(10, 8), chunks=(4, 4), dtype="f8", fill_value=np.nan,
                          compressors=None)
    a[:6, :] = np.arange(48, dtype="f8").reshape(6, 8)
    a.attrs["units"] = "K"
    return [("temp", "long_name", "temperature")], _edit_chunk_and_attr(
        "temp", (slice(8, 10), slice(0, 4)), 7.5)


def fx_int32_raw(root):
    a = root.create_array("counts", shape=(12,), chunks=(5,), dtype="i4", fill_value=-1,
                          compressors=None)
    a[:] = np.arange(12, dtype="i4") * 3

    def edit(g):
        g["counts"].resize((17,))
        g["counts"][12:17] = np.array([1, 2, 3, 4, 5], dtype="i4")
    return [("counts", "flag", 1)], edit


def fx_gzip(root):
    a = root.create_array("g", shape=(6, 6), chunks=(3, 3), dtype="u2", fill_value=0,
                          compressors=GzipCodec(level=5))
    a[:] = np.arange(36, dtype="u2").reshape(6, 6)

    def edit(g):
        g["g"].resize((3, 6))  # shrink: zarr-python deletes the outside chunks
    return [("", "title", "gzip fixture")], edit


def fx_zstd(root):
    a = root.create_array("z", shape=(9, 9), chunks=(3, 3), dtype="f4", fill_value=0.0,
                          compressors=ZstdCodec(level=3))
    a[:] = np.linspace(0, 1, 81, dtype="f4").reshape(9, 9)
    return [("z", "scale", 0.5)], _edit_chunk_and_attr("z", (slice(0, 3), slice(3, 6)), -2.0)


def fx_sharded(root):
    a = root.create_array("s", shape=(16, 16), chunks=(4, 4), shards=(8, 8), dtype="i2",
                          fill_value=0, compressors=ZstdCodec(level=1))
    a[:] = np.arange(256, dtype="i2").reshape(16, 16)
    return [("s", "sharded", True)], _edit_chunk_and_attr("s", (slice(0, 2), slice(0, 2)), 99)


def fx_dot_separator(root):
    a = root.create_array("dot", shape=(6, 4), chunks=(2, 2), dtype="u1", fill_value=0,
                          compressors=None,
                          chunk_key_encoding={"name": "default", "separator": "."})
    a[:] = np.arange(24, dtype="u1").reshape(6, 4)
    return [("dot", "sep", ".")], _edit_chunk_and_attr("dot", (slice(2, 4), slice(0, 2)), 200)


def fx_v2_key_encoding(root):
    a = root.create_array("v2keys", shape=(6, 4), chunks=(3, 2), dtype="i8", fill_value=0,
                          compressors=None, chunk_key_encoding={"name": "v2", "separator": "."})
    a[:] = np.arange(24, dtype="i8").reshape(6, 4)
    return [("v2keys", "enc", "v2")], _edit_chunk_and_attr("v2keys", (slice(3, 6), slice(2, 4)), -5)


def fx_zero_d(root):
    a = root.create_array("scalar", shape=(), dtype="f8", fill_value=0.0, compressors=None)
    a[()] = 3.25

    def edit(g):
        g["scalar"][()] = -1.5
    return [("scalar", "what", "a 0-d array")], edit


def fx_sparse(root):
    a = root.create_array("sparse", shape=(100, 100), chunks=(10, 10), dtype="f4",
                          fill_value=np.nan, compressors=None)
    a[0:10, 0:10] = 1.0
    a[50:60, 90:100] = 2.0
    return [("sparse", "density", 0.02)], _edit_chunk_and_attr(
        "sparse", (slice(90, 100), slice(0, 10)), 3.0)


def fx_nested_groups(root):
    root.attrs["project"] = "crzarr"
    g = root.create_group("a")
    g.attrs["level"] = 1
    h = g.create_group("b")
    h.attrs["level"] = 2
    arr = h.create_array("leaf", shape=(4,), chunks=(2,), dtype="u1", fill_value=0,
                         compressors=None)
    arr[:] = [1, 2, 3, 4]
    root.create_group("gone").create_array("x", shape=(2,), chunks=(2,), dtype="u1",
                                            fill_value=0, compressors=None)[:] = [5, 6]

    def edit(g):
        del g["gone"]
        g["a/b"].attrs["level"] = 3
    return [("a", "note", "nested")], edit


def fx_all_fill_deleted(root):
    a = root.create_array("holes", shape=(8,), chunks=(2,), dtype="i4", fill_value=0,
                          compressors=None)
    a[:] = np.arange(1, 9, dtype="i4")

    def edit(g):
        g["holes"][2:6] = 0  # zarr-python deletes the two chunks that became all fill
    return [("holes", "holes", True)], edit


def fx_blosc(root):
    a = root.create_array("b", shape=(32, 32), chunks=(16, 16), dtype="f8", fill_value=0.0,
                          compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"))
    a[:] = np.random.default_rng(7).random((32, 32))
    return [("b", "codec", "blosc")], _edit_chunk_and_attr("b", (slice(16, 32), slice(16, 32)), 0.25)


FIXTURES = {
    "float64-nan-fill": fx_float64_nan,
    "int32-no-compressor": fx_int32_raw,
    "gzip": fx_gzip,
    "zstd": fx_zstd,
    "sharded": fx_sharded,
    "dot-separator": fx_dot_separator,
    "v2-key-encoding": fx_v2_key_encoding,
    "0-d": fx_zero_d,
    "sparse-missing-chunks": fx_sparse,
    "nested-groups-attributes": fx_nested_groups,
    "all-fill-chunks-deleted": fx_all_fill_deleted,
    "blosc": fx_blosc,
}


def build(name, path):
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    return FIXTURES[name](root)


def files(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def arrays(root: Path):
    """{array path: (metadata dict, numpy values)} of a store, read by zarr-python."""
    out = {}
    g = zarr.open_group(str(root), mode="r")

    def walk(group, prefix):
        for name, node in group.members():
            p = f"{prefix}{name}"
            if isinstance(node, zarr.Array):
                out[p] = (node.metadata.to_dict(), node[...])
            else:
                walk(node, p + "/")
    walk(g, "")
    return out


def groups(root: Path):
    """{group path: attributes} of a store, read by zarr-python."""
    out = {}
    def walk(group, prefix):
        out[prefix.rstrip("/")] = dict(group.attrs)
        for name, node in group.members():
            if isinstance(node, zarr.Group):
                walk(node, f"{prefix}{name}/")
    walk(zarr.open_group(str(root), mode="r"), "")
    return out


def assert_same_values(got, want, what):
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert np.array_equal(got, want, equal_nan=want.dtype.kind == "f"), f"{what}: values differ"


CLIENTS = ["zarr-python", "tensorstore"]


def tensorstore_read(out: Path, path: str):
    t = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(out / path)}}).result()
    return t.read().result()


def assert_store_reads_as(out: Path, want: Path, fixture: str, client: str = "zarr-python"):
    """`client` reads `out` exactly as zarr-python reads `want` (the expected store)."""
    got_arrays, want_arrays = arrays(out), arrays(want)
    assert sorted(got_arrays) == sorted(want_arrays), f"zarr-python/{fixture}: arrays differ"
    for path, (want_meta, want_values) in want_arrays.items():
        got_meta, got_values = got_arrays[path]
        if client == "tensorstore":
            assert_same_values(tensorstore_read(out, path), want_values, f"tensorstore/{fixture}/{path}")
            continue
        assert got_meta == want_meta, f"zarr-python/{fixture}/{path}: metadata differs"
        assert_same_values(got_values, want_values, f"zarr-python/{fixture}/{path}")
    if client == "tensorstore":
        return
    assert groups(out) == groups(want), f"zarr-python/{fixture}: groups or attributes differ"
    # Parsed JSON of every zarr.json (zarr-python adds defaults when it writes; compare
    # what both documents say).
    for f in files(want):
        if f.endswith("zarr.json"):
            w = json.loads((want / f).read_text())
            g = json.loads((out / f).read_text())
            for doc in (w, g):
                doc.setdefault("attributes", {})
                doc.pop("consolidated_metadata", None)
                doc.pop("storage_transformers", None)
            assert g == w, f"{fixture}/{f}: zarr.json differs as JSON"
        assert not f.endswith(".zmetadata")


def apply_through_crzarr(repo, before: Path, after: Path, attr_edits):
    """Replays the difference between two zarr-python stores with `put` and `rm`, and the
    attribute edits with `set-attr`."""
    b, a = set(files(before)), set(files(after))
    # Metadata first (a resize must come before chunks outside the old shape).
    changed = sorted((f for f in a if f not in b or not filecmp.cmp(before / f, after / f, shallow=False)),
                     key=lambda f: (not f.endswith("zarr.json"), f))
    for f in changed:
        crzarr("put", repo, f, after / f, "-m", f"put {f}")
    for f in sorted(b - a, key=lambda f: f.endswith("zarr.json")):
        # A deleted node goes with its subtree.
        if f.endswith("zarr.json"):
            node = f[: -len("zarr.json")]
            if node and not any(x.startswith(node) for x in a):
                crzarr("rm", repo, node)
        elif not any(f.startswith(g[: -len("zarr.json")]) and g not in a
                     for g in b if g.endswith("zarr.json") and g != "zarr.json"):
            crzarr("rm", repo, f)
    for node, name, value in attr_edits:
        crzarr("set-attr", repo, node, name, json.dumps(value))


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
@pytest.mark.parametrize("client", CLIENTS)
def test_round_trip(client, fixture, tmp_path):
    """import -> edit through crzarr -> export; `client` reads the edit (ids: client-fixture)."""
    src, scratch, repo, out = (tmp_path / n for n in ("src", "scratch", "repo", "out"))
    attr_edits, edit = build(fixture, src)

    report = crzarr_json("import", src, repo)
    assert report["change"] is not None
    assert report["ignored"] == []
    crzarr("export", repo, out)
    assert_store_reads_as(out, src, fixture, client)

    shutil.copytree(src, scratch)
    g = zarr.open_group(str(scratch), mode="r+")
    edit(g)
    for node, name, value in attr_edits:
        (g[node] if node else g).attrs[name] = value
    apply_through_crzarr(repo, src, scratch, attr_edits)
    report = crzarr_json("export", repo, out)
    assert report["written"] > 0
    assert_store_reads_as(out, scratch, fixture, client)
    # Re-export: nothing changed, nothing written.
    report = crzarr_json("export", repo, out)
    assert (report["written"], report["deleted"]) == (0, 0), report


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_reimport_records_only_the_difference(fixture, tmp_path):
    """A team edits a directory with zarr-python; re-import commits only what changed."""
    work, repo, out = (tmp_path / n for n in ("work", "repo", "out"))
    attr_edits, edit = build(fixture, work)
    crzarr_json("import", work, repo)
    before = files(work)
    g = zarr.open_group(str(work), mode="r+")
    edit(g)
    for node, name, value in attr_edits:
        (g[node] if node else g).attrs[name] = value
    report = crzarr_json("import", work, repo)
    assert report["change"] is not None
    assert report["chunks_unchanged"] > 0 or len(before) <= 3, report
    touched = report["chunks_written"] + report["chunks_deleted"]
    assert touched < sum(1 for f in files(work) if not f.endswith("zarr.json")) + 1 or \
        fixture in ("0-d",), report
    again = crzarr_json("import", work, repo)
    assert again["change"] is None, again
    crzarr("export", repo, out)
    assert_store_reads_as(out, work, fixture)


def test_two_replicas_edit_concurrently_sync_and_export_the_same_merge(tmp_path):
    src, ra, rb = tmp_path / "src", tmp_path / "a", tmp_path / "b"
    root = zarr.open_group(str(src), mode="w", zarr_format=3)
    arr = root.create_array("grid", shape=(8, 8), chunks=(4, 4), dtype="i4", fill_value=0,
                            compressors=ZstdCodec(level=1))
    arr[:] = 1
    crzarr("import", src, ra)
    crzarr("sync", ra, rb)
    # Replica A edits the top half and an attribute; B the bottom half and another one.
    for repo, region, value, attr in ((ra, (slice(0, 4), slice(None)), 10, "a"),
                                      (rb, (slice(4, 8), slice(None)), 20, "b")):
        scratch = tmp_path / f"scratch-{repo.name}"
        shutil.copytree(src, scratch)
        g = zarr.open_group(str(scratch), mode="r+")
        g["grid"][region] = value
        apply_through_crzarr(repo, src, scratch, [("grid", "edited_by_" + attr, True)])
    crzarr("sync", ra, rb)
    outs = []
    for repo in (ra, rb):
        out = tmp_path / f"out-{repo.name}"
        crzarr("export", repo, out)
        outs.append(out)
    want = np.ones((8, 8), dtype="i4")
    want[:4] = 10
    want[4:] = 20
    for out in outs:
        a = zarr.open_array(str(out / "grid"), mode="r")
        assert_same_values(a[...], want, f"zarr-python/merged/{out.name}")
        assert dict(a.attrs) == {"edited_by_a": True, "edited_by_b": True}
        assert_same_values(tensorstore_read(out, "grid"), want, f"tensorstore/merged/{out.name}")
    assert files(outs[0]) == files(outs[1])
    for f in files(outs[0]):
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f


def test_export_has_no_consolidated_metadata_and_deletes_what_the_view_dropped(tmp_path):
    src, repo, out = tmp_path / "src", tmp_path / "repo", tmp_path / "out"
    root = zarr.open_group(str(src), mode="w", zarr_format=3)
    root.create_array("keep", shape=(4,), chunks=(2,), dtype="u1", fill_value=0)[:] = 1
    root.create_array("drop", shape=(4,), chunks=(2,), dtype="u1", fill_value=0)[:] = 2
    zarr.consolidate_metadata(str(src))
    crzarr("import", src, repo)
    crzarr("export", repo, out)
    assert "consolidated_metadata" not in json.loads((out / "zarr.json").read_text())
    crzarr("rm", repo, "drop/")
    report = crzarr_json("export", repo, out)
    assert report["deleted"] == 3, report  # drop/zarr.json and its two chunks
    assert sorted(n for n, _ in zarr.open_group(str(out), mode="r").members()) == ["keep"]


@pytest.mark.parametrize("case,doc,expect", [
    ("missing-required-field", {"zarr_format": 3, "node_type": "array", "shape": [2]}, "missing"),
    ("unknown-field-must-understand",
     {"zarr_format": 3, "node_type": "group", "attributes": {}, "frobnicate": {"x": 1}}, "frobnicate"),
    ("not-zarr-v3", {"zarr_format": 2, "node_type": "group"}, "zarr_format"),
])
def test_import_refuses_invalid_metadata_naming_the_key(case, doc, expect, tmp_path):
    src, repo = tmp_path / "src", tmp_path / "repo"
    zarr.open_group(str(src), mode="w", zarr_format=3)
    (src / "bad").mkdir()
    (src / "bad" / "zarr.json").write_text(json.dumps(doc))
    p = crzarr("import", src, repo, ok=False)
    assert p.returncode == 1, p.stderr
    assert "bad/zarr.json" in p.stderr and expect in p.stderr, p.stderr
    # Nothing was committed.
    assert crzarr("log", repo, ok=False).stdout.count("import") == 0


def test_import_refuses_an_invalid_node_name(tmp_path):
    src, repo = tmp_path / "src", tmp_path / "repo"
    zarr.open_group(str(src), mode="w", zarr_format=3)
    (src / "__bad").mkdir()
    (src / "__bad" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    p = crzarr("import", src, repo, ok=False)
    assert p.returncode == 1 and "__bad/zarr.json" in p.stderr, p.stderr


def test_an_unknown_field_with_must_understand_false_is_accepted(tmp_path):
    src, repo, out = tmp_path / "src", tmp_path / "repo", tmp_path / "out"
    zarr.open_group(str(src), mode="w", zarr_format=3)
    (src / "ok").mkdir()
    (src / "ok" / "zarr.json").write_text(json.dumps(
        {"zarr_format": 3, "node_type": "group", "attributes": {"a": 1},
         "extra": {"must_understand": False, "note": "ignorable"}}))
    crzarr("import", src, repo)
    crzarr("export", repo, out)
    assert dict(zarr.open_group(str(out / "ok"), mode="r").attrs) == {"a": 1}


def test_an_array_written_through_the_zarrs_adapter_reads_in_zarr_python(tmp_path):
    example = os.environ.get("CRZARR_ZARRS_EXAMPLE")
    assert example, "CRZARR_ZARRS_EXAMPLE is not set: tests/run.sh builds the zarrs example"
    repo, out = tmp_path / "repo", tmp_path / "out"
    p = subprocess.run([example, str(repo)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    crzarr("export", repo, out)
    g = zarr.open_group(str(out), mode="r")
    arrays_ = [a for _, a in g.arrays()]
    assert arrays_, f"no array in the export: {files(out)}"
    a = arrays_[0]
    want = (np.arange(64).reshape(8, 8)).astype(a.dtype)
    assert_same_values(a[...], want, "zarr-python/zarrs-two-writers")
    path = a.path
    assert_same_values(tensorstore_read(out, path), want, "tensorstore/zarrs-two-writers")


@pytest.mark.parametrize("client", CLIENTS)
def test_objects_beside_the_hierarchy_export_and_leave_reads_unchanged(client, tmp_path):
    """Keys that are not Zarr (a README, notes in a folder) put through crzarr are exported
    as they are, and `client` reads the nested-groups-attributes fixture exactly as before (ids: client)."""
    src, repo, out = tmp_path / "src", tmp_path / "repo", tmp_path / "out"
    build("nested-groups-attributes", src)
    crzarr("import", src, repo)
    note = tmp_path / "note.txt"
    note.write_text("# calibration notes\n")
    crzarr("put", repo, "README.md", note)
    crzarr("put", repo, "notes/2026/todo.txt", note)
    listed = crzarr_json("ls", repo)
    keys = listed["keys"] if isinstance(listed, dict) else listed
    assert "README.md" in keys and "notes/2026/todo.txt" in keys, keys
    crzarr("export", repo, out)
    assert (out / "README.md").read_text() == "# calibration notes\n"
    assert (out / "notes" / "2026" / "todo.txt").read_text() == "# calibration notes\n"
    assert_store_reads_as(out, src, "nested-groups-attributes", client)
