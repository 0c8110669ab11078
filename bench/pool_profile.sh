#!/usr/bin/env bash
# The packet pool profile of tools/http_server (2 shards, LIBSOCK_PROFILE=1, --metrics) under
# the loads that matter to its pools, each recorded from /metrics every 0.5 s by
# tools/pool_record and drawn by tools/pool_plot:
#   keepalive   wrk -t2 -c64 keep-alive: replies go out directly, the pools stay empty
#   pipelined   wrk -t2 -c64, 16 requests per write (bench/pipeline.lua)
#   slow        2,000 slow readers (bench/slow_readers.py, 1,000 pipelined requests each):
#               queues build and drain
#   files       wrk -t2 -c16 on a 16 MiB static file (--root): sendfile, no packets
#   churn       wrk -t2 -c64 with Connection: close: a connection per request
#   burst_idle  a 20 s Connection: close storm, then 15 s idle: does the memory come back?
# Writes bench/pool_profile/REPORT.md (a table per scenario and what each chart shows) and
# each scenario's charts (SVG and PNG) and CSV under bench/pool_profile/SCENARIO/.
#   bench/pool_profile.sh [scenario...]        (default: all, about 3 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/deps && deps_ensure --bench --profile
ulimit -n "$(ulimit -Hn)"

scenarios=("$@"); ((${#scenarios[@]})) || scenarios=(keepalive pipelined slow files churn burst_idle)
out=bench/pool_profile
port=18095
bazel build -c opt //tools:http_server >/dev/null 2>&1
bin=$(bazel info -c opt bazel-bin 2>/dev/null)
source bench/children.sh
work=$(mktemp -d); trap 'kill_jobs; rm -rf "$work"' EXIT
cp "$bin/tools/http_server" "$work/"
mkdir -p "$work/root" "$out"
head -c $((16 << 20)) /dev/urandom >"$work/root/big.bin"
url=http://127.0.0.1:$port

# run_scenario NAME: server, recorder, load, then a few idle seconds; leaves NAME/run.csv.
run_scenario() {
  local name=$1 dir=$out/$1 server recorder idle=3
  rm -rf "$dir" && mkdir -p "$dir"
  LIBSOCK_PROFILE=1 "$work/http_server" --threads 2 --port $port --metrics --root "$work/root" \
    >"$work/server.log" 2>&1 &
  server=$!
  for _ in $(seq 200); do curl -sf "$url/" >/dev/null && break; sleep 0.05; done
  # A busy shard answers a scrape late, not never: wait for it rather than skip the sample.
  tools/pool_record --url "$url/metrics" --interval 0.5 --timeout 10 --out "$dir/run.csv" \
    2>"$work/record.log" &
  recorder=$!
  sleep 2  # a baseline before the load
  local t0=$SECONDS
  case $name in
    keepalive) wrk -t2 -c64 -d10s "$url/" ;;
    pipelined) wrk -t2 -c64 -d10s -s bench/pipeline.lua "$url/" ;;
    slow) bench/slow_readers.py $port 2000 1000 4096 90 ;;
    files) wrk -t2 -c16 -d10s "$url/big.bin" ;;
    churn) wrk -t2 -c64 -d10s -H 'Connection: close' "$url/" ;;
    burst_idle) wrk -t2 -c64 -d20s -H 'Connection: close' "$url/"; idle=15 ;;
  esac >"$dir/load.txt" 2>&1
  echo "load_end_s $((SECONDS - t0 + 2))" >>"$dir/load.txt"
  sleep $idle
  stop_child "$recorder"
  curl -s "$url/status" >"$dir/status.html" || true
  stop_child "$server"
  tools/pool_plot "$dir/run.csv" --out "$dir" --title "http_server, 2 shards: $name" >/dev/null
  rm -f "$dir"/*.dat "$dir"/*.gp
}

for s in "${scenarios[@]}"; do
  echo "pool_profile.sh: $s" >&2
  run_scenario "$s"
done
/usr/bin/python3 bench/pool_report.py "$out" "${scenarios[@]}" >"$out/REPORT.md"
echo "pool_profile.sh: wrote $out/REPORT.md" >&2
