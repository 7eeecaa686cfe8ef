# Sourced by tests/run.sh: start and stop a real S3 server (SeaweedFS) on loopback.
# Exports CRZARR_TEST_S3_* and AWS_* for the tests; stop_s3_server kills it by PID.

s3_free_base() {
  # A base port P such that P..P+9 and P+10000..P+10009 (gRPC) are all free.
  python3 - <<'PY'
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
for _ in range(200):
    b = random.randrange(20000, 30000)
    if all(free(b + i) and free(b + 10000 + i) for i in range(10)):
        print(b); break
else:
    raise SystemExit("no free port range for the S3 server")
PY
}

start_s3_server() {
  local weed="$1" dir="$2"
  local base; base=$(s3_free_base)
  mkdir -p "$dir/data"
  export CRZARR_TEST_S3_ENDPOINT="http://127.0.0.1:$((base + 3))"
  export CRZARR_TEST_S3_BUCKET="crzarr-test"
  export AWS_ACCESS_KEY_ID="crzarr-test" AWS_SECRET_ACCESS_KEY="crzarr-test-secret" AWS_REGION="us-east-1"
  "$weed" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -bucket="$CRZARR_TEST_S3_BUCKET" \
    -master.telemetry=false -admin.ui=false -webdav=false \
    -master.port=$base -volume.port=$((base + 1)) -filer.port=$((base + 2)) -s3.port=$((base + 3)) \
    -admin.port=$((base + 4)) -debug.port=$((base + 5)) -s3.debug.port=$((base + 6)) \
    -metricsPort=$((base + 7)) -s3.metricsPort=$((base + 8)) -s3.port.iceberg=0 -s3.port.lance=0 \
    -volume.max=32 -master.volumeSizeLimitMB=64 \
    >"$dir/weed.log" 2>&1 &
  S3_SERVER_PID=$!
  for _ in $(seq 1 120); do
    if ! kill -0 "$S3_SERVER_PID" 2>/dev/null; then
      echo "S3 server exited during start-up; log:" >&2; tail -n 30 "$dir/weed.log" >&2; return 1
    fi
    # Ready means a signed PUT and GET round-trip: a gateway that answers while its volume
    # server cannot take writes (no free volume slot, disk nearly full) would fail every test.
    if s3_probe "$dir"; then
      echo "S3 server (SeaweedFS, pid $S3_SERVER_PID) ready at $CRZARR_TEST_S3_ENDPOINT"
      return 0
    fi
    sleep 0.5
  done
  echo "S3 server did not take a write within 60 s (last answer: $(cat "$dir/probe.out" 2>/dev/null)); free disk:" >&2
  df -h "$dir" >&2
  echo "log:" >&2; tail -n 30 "$dir/weed.log" >&2
  return 1
}

s3_probe() {
  local dir="$1" url="$CRZARR_TEST_S3_ENDPOINT/$CRZARR_TEST_S3_BUCKET/.ready-probe"
  local sign=(--aws-sigv4 "aws:amz:$AWS_REGION:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY")
  echo "ready $$" >"$dir/probe.in"
  [ "$(curl -s -m 5 -o "$dir/probe.out" -w '%{http_code}' "${sign[@]}" -T "$dir/probe.in" "$url")" = 200 ] || return 1
  [ "$(curl -s -m 5 -o "$dir/probe.got" -w '%{http_code}' "${sign[@]}" "$url")" = 200 ] || return 1
  cmp -s "$dir/probe.in" "$dir/probe.got" || return 1
  curl -s -m 5 -o /dev/null -X DELETE "${sign[@]}" "$url" || true
}

# Called when the test run fails: the server's own account of what went wrong.
s3_server_report() {
  local dir="$1"
  echo "== S3 server log (last 40 lines) and free disk" >&2
  tail -n 40 "$dir/weed.log" >&2 || true
  df -h "$dir" >&2 || true
}

stop_s3_server() {
  if [ -n "${S3_SERVER_PID:-}" ] && kill -0 "$S3_SERVER_PID" 2>/dev/null; then
    kill "$S3_SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$S3_SERVER_PID" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$S3_SERVER_PID" 2>/dev/null || true
  fi
}
