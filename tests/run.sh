#!/usr/bin/env bash
# Runs every test of crzarr on a fresh machine: installs what the tests need (a Python
# venv with the S3 server), starts a real S3 server on loopback, runs lints and all
# tests against it, and stops it. Any set-up failure fails the run; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work="$root/.ci/tmp"
rm -rf "$work" && mkdir -p "$work"

# Line tables are enough for test backtraces and keep the build a fraction of full debug
# info on disk: CI machines can be short of disk, and the S3 server needs some too.
export CARGO_PROFILE_DEV_DEBUG=line-tables-only CARGO_PROFILE_TEST_DEBUG=line-tables-only
echo "== set-up: free disk"
df -h "$root" | tail -n 1

echo "== set-up: Python venv with test requirements"
python3 -m venv "$root/.venv"
"$root/.venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt

echo "== set-up: S3 server on loopback"
# shellcheck source=tests/s3-server.sh
source tests/s3-server.sh
on_exit() {
  local status=$?
  [ "$status" -eq 0 ] || s3_server_report "$work/s3"
  stop_s3_server
  exit "$status"
}
trap on_exit EXIT
start_s3_server "$root/.venv/bin/weed" "$work/s3"
# Tests that need the S3 server fail (rather than skip) when this is set.
export CRZARR_REQUIRE_S3=1

echo "== lint"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo clippy --all-targets --features zarrs --quiet -- -D warnings
echo "== docs: the public API documented, every intra-doc link resolved"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --features zarrs --quiet

echo "== tests (benchmarks are built by clippy above and run by 'cargo bench')"
cargo test --lib --bins --tests --quiet
cargo test --doc --quiet
echo "== zarrs adapter (feature zarrs): zarrs' own store tests, arrays written through it"
cargo test --features zarrs --test zarrs_adapter --lib --quiet
cargo test --features zarrs --doc --quiet

echo "== interop: zarr-python and tensorstore read what crzarr exports (tests/interop)"
# The test profile: the artifacts `cargo test` just built are reused (disk and time).
cargo build --quiet --profile test --bin crzarr
cargo build --quiet --profile test --features zarrs --example zarrs_two_writers
export CRZARR_BIN="$root/target/debug/crzarr"
export CRZARR_ZARRS_EXAMPLE="$root/target/debug/examples/zarrs_two_writers"
"$root/.venv/bin/python" -m pytest tests/interop -q -p no:cacheprovider -rs | tee "$work/interop.log"
# Every test must run: a skip is a failure here.
if grep -Eq '[0-9]+ (skipped|xfailed|deselected)' "$work/interop.log"; then
  echo "interop tests were skipped; failing" >&2
  exit 1
fi
echo "== interop: $(grep -Eo '[0-9]+ passed' "$work/interop.log" | tail -n 1) (zarr-python $("$root/.venv/bin/python" -c 'import zarr; print(zarr.__version__)'), tensorstore)"

echo "== the vs-Icechunk harness builds (benches/vs-icechunk, run by hand: see benches/README.md)"
cargo check --quiet --manifest-path benches/vs-icechunk/Cargo.toml
echo "== all tests passed"
