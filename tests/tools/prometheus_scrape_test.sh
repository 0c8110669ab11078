#!/usr/bin/env bash
# Tests that a real Prometheus (Debian's /usr/bin/prometheus) scrapes tools/http_server
# --metrics: a prometheus.yml with one job, "libsock", scraping it every second; then through
# Prometheus' HTTP API, up{job="libsock"} is 1 and libsock_connections and
# libsock_pool_packet_bytes have series for shards 0 and 1, packet bytes > 0.
#   bazel test //tests/tools:prometheus_scrape_test   or   bash tests/tools/prometheus_scrape_test.sh
# (HTTP_SERVER=path and PROMETHEUS=path override the binaries when run by hand.)
set -euo pipefail

if [[ -n ${TEST_SRCDIR:-} ]]; then
  root=$TEST_SRCDIR/$TEST_WORKSPACE
else
  root=$(cd "$(dirname "$0")/../.." && pwd)
fi
source "$root/tests/testing/wait_for.sh"
http_server=${HTTP_SERVER:-$root/tools/http_server}
prometheus=${PROMETHEUS:-/usr/bin/prometheus}
tmp=$(mktemp -d "${TEST_TMPDIR:-/tmp}/prometheus_scrape_test.XXXXXX")
server_pid=
prometheus_pid=

cleanup() {
  [[ -z $prometheus_pid ]] || kill "$prometheus_pid" 2>/dev/null || true
  [[ -z $server_pid ]] || kill "$server_pid" 2>/dev/null || true
  # Prometheus may still be writing its data directory.
  [[ -z $prometheus_pid ]] || wait "$prometheus_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  for log in server.out server.err prometheus.log; do
    echo "--- $log:" >&2
    tail -n 60 "$tmp/$log" >&2 || true
  done
  exit 1
}


alive() { kill -0 "$1" 2>/dev/null || fail "$2 exited"; }
exited() { ! kill -0 "$1" 2>/dev/null; }

# A port the kernel just handed out as free (for Prometheus, which cannot print the port it
# picked); taken again if Prometheus finds it gone.
free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

[[ -x $prometheus ]] || fail "no Prometheus at $prometheus"

echo "http_server --metrics on a port it picks"
"$http_server" --port 0 --threads 2 --metrics >"$tmp/server.out" 2>"$tmp/server.err" &
server_pid=$!
server_listening() {
  alive "$server_pid" http_server
  grep -q '^http_server listening on http://0\.0\.0\.0:[0-9]*/$' "$tmp/server.out"
}
wait_for 20 "http_server to listen" server_listening
port=$(sed -n 's|^http_server listening on http://0\.0\.0\.0:\([0-9]*\)/$|\1|p' "$tmp/server.out")

cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: libsock
    static_configs:
      - targets: ["127.0.0.1:$port"]
EOF

# api_ready: Prometheus answers /-/ready (it is up, its storage open); fails the test if
# Prometheus exited, unless that was for its port being taken, then tries another port.
api_ready() {
  if exited "$prometheus_pid"; then
    grep -q 'address already in use' "$tmp/prometheus.log" || fail "Prometheus exited"
    ((++tries <= 5)) || fail "Prometheus found its port taken $tries times"
    start_prometheus
    return 1
  fi
  curl -sf -o /dev/null --max-time 5 "$api/-/ready"
}

start_prometheus() {
  local web_port
  web_port=$(free_port)
  api=http://127.0.0.1:$web_port
  "$prometheus" --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data.$tries" \
    --web.listen-address="127.0.0.1:$web_port" >"$tmp/prometheus.log" 2>&1 &
  prometheus_pid=$!
}

echo "Prometheus scraping it every second"
tries=0
start_prometheus
wait_for 60 "Prometheus to be ready" api_ready

# query PROMQL: the API's JSON answer to an instant query, for query.py.
query() {
  curl -sf --max-time 5 -G "$api/api/v1/query" --data-urlencode "query=$1"
}

# has PROMQL CHECK: the query's answer is a success whose vector passes CHECK, a Python
# expression over r, the list of results: [{"metric": {label: value}, "value": [t, "v"]}].
has() {
  local answer
  answer=$(query "$1") || return 1
  /usr/bin/python3 -c '
import json, sys
doc = json.loads(sys.argv[1])
r = doc["data"]["result"] if doc.get("status") == "success" else None
sys.exit(0 if r is not None and eval(sys.argv[2]) else 1)' "$answer" "$2"
}

shards='sorted(x["metric"].get("shard") for x in r) == ["0", "1"]'
all_labelled='all(x["metric"].get("job") == "libsock" and x["metric"].get("instance") == "127.0.0.1:'$port'" for x in r)'

echo "the API: libsock_connections for shards 0 and 1"
alive_and_has() { alive "$server_pid" http_server; alive "$prometheus_pid" Prometheus; has "$@"; }
wait_for 60 "libsock_connections for shards 0 and 1" \
  alive_and_has libsock_connections "$shards and $all_labelled"

echo "the API: up{job=\"libsock\"} is 1"
has 'up{job="libsock"}' 'len(r) == 1 and r[0]["value"][1] == "1"' ||
  fail "up{job=\"libsock\"} is not 1: $(query 'up{job="libsock"}')"

echo "the API: libsock_pool_packet_bytes > 0 for shards 0 and 1"
has libsock_pool_packet_bytes "$shards and all(float(x[\"value\"][1]) > 0 for x in r)" ||
  fail "libsock_pool_packet_bytes: $(query libsock_pool_packet_bytes)"

echo "the API: Prometheus took every sample of the exposition"
samples=$(curl -sf --max-time 10 "http://127.0.0.1:$port/metrics" | grep -vc '^#') ||
  fail "GET /metrics from http_server failed"
has 'scrape_samples_scraped{job="libsock"}' "len(r) == 1 and r[0][\"value\"][1] == \"$samples\"" ||
  fail "scrape_samples_scraped is not the $samples samples of /metrics:" \
    "$(query 'scrape_samples_scraped{job="libsock"}')"

echo "SIGTERM: both exit, http_server with status 0"
kill -TERM "$prometheus_pid"
wait_for 30 "Prometheus to exit after SIGTERM" exited "$prometheus_pid"
rc=0
wait "$prometheus_pid" || rc=$?
prometheus_pid=
((rc == 0)) || fail "Prometheus exited with status $rc after SIGTERM"
kill -TERM "$server_pid"
wait_for 20 "http_server to exit after SIGTERM" exited "$server_pid"
rc=0
wait "$server_pid" || rc=$?
server_pid=
((rc == 0)) || fail "http_server exited with status $rc after SIGTERM"

echo "PASS"
