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
# each scenario's charts (SVG and PNG) and CSV under bench/pool_profile/SCENARIO/, replaced only
# once that scenario's run is complete. A name that is not one of the scenarios above is refused
# (exit 2) before anything runs. The server listens on a port the kernel picks (--port 0), read
# from its own listening line, and must still run when its scenario ends.
#   bench/pool_profile.sh [scenario...]        (default: all, about 3 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."

known=(keepalive pipelined slow files churn burst_idle)
scenarios=("$@"); ((${#scenarios[@]})) || scenarios=("${known[@]}")
# Exact names only: each is a directory under bench/pool_profile that is replaced ("" or
# "../x" there would be the results' parent or somewhere else), and a name the load's case
# does not know would record an idle server.
is_known() {
  local k
  for k in "${known[@]}"; do [[ $1 == "$k" ]] && return 0; done
  return 1
}
for s in "${scenarios[@]}"; do
  is_known "$s" || { echo "pool_profile.sh: unknown scenario '$s' (scenarios: ${known[*]})" >&2
                     exit 2; }
done

source tools/deps && deps_ensure --bench --profile
ulimit -n "$(ulimit -Hn)"

out=bench/pool_profile
bazel build -c opt //tools:http_server >/dev/null 2>&1
bin=$(bazel info -c opt bazel-bin 2>/dev/null)
source bench/children.sh
work=$(mktemp -d); trap 'kill_jobs; rm -rf "$work"' EXIT
cp "$bin/tools/http_server" "$work/"
mkdir -p "$work/root" "$out"
head -c $((16 << 20)) /dev/urandom >"$work/root/big.bin"

# scenario_fails NAME WHAT: the scenario's message, with the server's log, and exit 1 (the
# results of NAME in $out stay as they were).
scenario_fails() {
  echo "pool_profile.sh: $1: $2; the server's log:" >&2
  cat "$work/server.log" >&2
  exit 1
}

# run_scenario NAME: server, recorder, load, then a few idle seconds, in $work/NAME, which then
# replaces $out/NAME (run.csv, the charts, load.txt, status.html).
run_scenario() {
  local name=$1 dir=$work/$1 server recorder port='' idle=3 t0
  mkdir "$dir"
  LIBSOCK_PROFILE=1 "$work/http_server" --threads 2 --port 0 --metrics --root "$work/root" \
    >"$work/server.log" 2>&1 &
  server=$!
  port=$(printed_port "$server" "$work/server.log") || true
  kill -0 "$server" 2>/dev/null || scenario_fails "$name" "http_server exited at its start"
  [[ -n $port ]] || scenario_fails "$name" "http_server printed no listening line in 10 s"
  local url=http://127.0.0.1:$port
  # A busy shard answers a scrape late, not never: wait for it rather than skip the sample.
  tools/pool_record --url "$url/metrics" --interval 0.5 --timeout 10 --out "$dir/run.csv" \
    2>"$work/record.log" &
  recorder=$!
  # The recording's time 0 is its first sample, after which run.csv appears: the load's end
  # is counted from then (to within this poll's 50 ms).
  for _ in $(seq 200); do
    [[ -e $dir/run.csv ]] || ! kill -0 "$recorder" 2>/dev/null && break
    sleep 0.05
  done
  [[ -e $dir/run.csv ]] ||
    scenario_fails "$name" "no sample of $url/metrics in 10 s: $(<"$work/record.log")"
  t0=$EPOCHREALTIME
  sleep 2  # a baseline before the load
  case $name in
    keepalive) wrk -t2 -c64 -d10s "$url/" ;;
    pipelined) wrk -t2 -c64 -d10s -s bench/pipeline.lua "$url/" ;;
    slow) bench/slow_readers.py "$port" 2000 1000 4096 90 ;;
    files) wrk -t2 -c16 -d10s "$url/big.bin" ;;
    churn) wrk -t2 -c64 -d10s -H 'Connection: close' "$url/" ;;
    burst_idle) wrk -t2 -c64 -d20s -H 'Connection: close' "$url/"; idle=15 ;;
  esac >"$dir/load.txt" 2>&1
  awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "load_end_s %.1f\n", b - a }' \
    >>"$dir/load.txt"
  sleep $idle
  stop_child "$recorder"
  # Still running: a server that died during the run left gaps, not a profile.
  kill -0 "$server" 2>/dev/null || scenario_fails "$name" "http_server exited during the run"
  curl -s "$url/status" >"$dir/status.html" || true
  stop_child "$server"
  tools/pool_plot "$dir/run.csv" --out "$dir" --title "http_server, 2 shards: $name" >/dev/null
  rm -f "$dir"/*.dat "$dir"/*.gp
  rm -rf "${out:?}/$name" && mv "$dir" "$out/$name"
}

for s in "${scenarios[@]}"; do
  echo "pool_profile.sh: $s" >&2
  run_scenario "$s"
done
/usr/bin/python3 bench/pool_report.py "$out" "${scenarios[@]}" >"$out/REPORT.md"
echo "pool_profile.sh: wrote $out/REPORT.md" >&2
