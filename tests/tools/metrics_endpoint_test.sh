#!/usr/bin/env bash
# Tests the metrics endpoints of tools/http_server --metrics (2 shards, LIBSOCK_PROFILE=1) as
# a real process over loopback, with tests/tools/check_exposition.py: load whose responses
# queue (4 connections, 5,000 pipelined requests each, read late); then /metrics in the 0.0.4
# content type parses with prometheus_client, every libsock_* family with HELP and TYPE and
# both shards, histogram buckets cumulative up to +Inf == _count, libsock_profiling 1; at idle
# checkouts - returns == outstanding on each shard, with checkouts > 0; ?name=PREFIX; /status
# (HTML, its JSON block with 2 shards and their histograms); POST /metrics is 405; and without
# --metrics, /metrics is 404.
#   bazel test //tests/tools:metrics_endpoint_test   or   bash tests/tools/metrics_endpoint_test.sh
# (HTTP_SERVER=path overrides the server binary when run by hand.)
set -euo pipefail

if [[ -n ${TEST_SRCDIR:-} ]]; then
  root=$TEST_SRCDIR/$TEST_WORKSPACE
else
  root=$(cd "$(dirname "$0")/../.." && pwd)
fi
source "$root/tests/testing/wait_for.sh"
http_server=${HTTP_SERVER:-$root/tools/http_server}
check=$root/tests/tools/check_exposition.py
tmp=$(mktemp -d "${TEST_TMPDIR:-/tmp}/metrics_endpoint_test.XXXXXX")
server_pids=()
name=

cleanup() {
  for pid in "${server_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  if [[ -n $name ]]; then
    echo "--- the stdout of $name:" >&2
    cat "$tmp/$name.out" >&2 || true
    echo "--- the stderr of $name:" >&2
    cat "$tmp/$name.err" >&2 || true
  fi
  exit 1
}


listening() { grep -q '^http_server listening on http://0\.0\.0\.0:[0-9]*/$' "$tmp/$name.out"; }
alive() { kill -0 "${server_pids[-1]}" 2>/dev/null || fail "$name exited"; }
started() { alive && listening; }
exited() { ! kill -0 "$1" 2>/dev/null; }

# start_server NAME [FLAGS...]: starts http_server on a port it picks (--port 0), 2 shards;
# sets $port to the port of its "listening" line.
start_server() {
  name=$1
  "$http_server" --port 0 --threads 2 "${@:2}" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  server_pids+=($!)
  wait_for 20 "$name to listen" started
  port=$(sed -n 's|^http_server listening on http://0\.0\.0\.0:\([0-9]*\)/$|\1|p' "$tmp/$name.out")
  ((port > 0)) || fail "$name printed port '$port'"
}

# stop_server: SIGTERM to the last server started; it must exit with status 0.
stop_server() {
  local pid=${server_pids[-1]} rc=0
  kill -TERM "$pid"
  wait_for 20 "$name to exit after SIGTERM" exited "$pid"
  wait "$pid" || rc=$?
  unset 'server_pids[-1]'
  ((rc == 0)) || fail "$name exited with status $rc after SIGTERM"
}

# status_of METHOD PATH: the HTTP status of one request to the current server.
status_of() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X "$1" "http://127.0.0.1:$port$2"
}

# check_ WHAT ARGS...: runs check_exposition.py WHAT ARGS..., failing the test if it fails.
check_() { /usr/bin/python3 "$check" "$@" || fail "check_exposition.py $1 failed"; }

echo "http_server --metrics, LIBSOCK_PROFILE=1: the port of --port 0 is printed and answers"
LIBSOCK_PROFILE=1 start_server profiled --metrics
[[ $(curl -s --max-time 10 "http://127.0.0.1:$port/") == "Hello World!" ]] ||
  fail "GET / on the printed port $port does not answer Hello World!"

echo "load: pipelined requests whose responses queue, read late"
check_ load "$port" 4 5000

echo "/metrics: parses, every family with HELP, TYPE and both shards, the histograms' buckets"
check_ exposition "$port"

echo "/metrics at idle: checkouts - returns == outstanding on each shard, checkouts > 0"
check_ idle "$port"

echo "/metrics?name=libsock_pool_out: only libsock_pool_outstanding_packets"
check_ filter "$port"

echo "/status: HTML with 'Packet pools', its JSON block with 2 shards and their histograms"
check_ status "$port"

echo "POST /metrics and POST /status: 405"
code=$(status_of POST /metrics)
[[ $code == 405 ]] || fail "POST /metrics: status $code, not 405"
code=$(status_of POST /status)
[[ $code == 405 ]] || fail "POST /status: status $code, not 405"

echo "SIGTERM: exit status 0"
stop_server

echo "http_server without --metrics: /metrics and /status are 404, GET / still answers"
start_server plain
code=$(status_of GET /metrics)
[[ $code == 404 ]] || fail "GET /metrics without --metrics: status $code, not 404"
code=$(status_of GET /status)
[[ $code == 404 ]] || fail "GET /status without --metrics: status $code, not 404"
[[ $(curl -s --max-time 10 "http://127.0.0.1:$port/") == "Hello World!" ]] ||
  fail "GET / without --metrics does not answer Hello World!"
stop_server
name=

echo "PASS"
