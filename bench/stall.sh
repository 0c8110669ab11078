#!/usr/bin/env bash
# One fast download beside many small requests on one shard (failure mode 31 of the research
# notes, nginx's reason for sendfile_max_chunk): does the download starve the shard's other
# connections? tools/http_server --threads 1 --root serves a sparse file (no disk) that curl
# downloads over loopback again and again, while wrk -t1 -c50 sends small keep-alive requests
# to the same shard. Each round runs wrk alone on a fresh server (the baseline), then wrk with
# the downloads on another fresh one; the server is pinned to CPU 0, the clients (wrk and curl
# alike, so wrk's latency in the download runs includes its share of that CPU) to CPU 1.
# Reported per run: wrk's p50 and p99 latency, the bytes downloaded, and from the shard's own
# figures (GET /metrics, engine/metrics.h) its longest loop iteration and the iterations over
# 12.3 ms (the bucket bound above 10 ms). Targets: p99 <= 20 ms, longest iteration <= 10 ms.
#   bench/stall.sh [rounds=3] [seconds=5] [file_mib=1024]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} secs=${2:-5} mib=${3:-1024}
for n in "$rounds" "$secs" "$mib"; do
  if [[ ! $n =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: bench/stall.sh [rounds] [seconds] [file_mib]" >&2
    exit 2
  fi
done
source tools/deps && deps_ensure --bench --profile  # wrk; curl
if ! out=$(bazel build -c opt //tools:http_server 2>&1); then
  echo "$out" >&2; echo "stall.sh: the build failed" >&2; exit 1
fi
source bench/children.sh
work=$(mktemp -d); trap 'kill_jobs; rm -rf "$work"' EXIT
cp "$(bazel info -c opt bazel-bin 2>/dev/null)/tools/http_server" "$work/"
mkdir "$work/root"
truncate -s "${mib}M" "$work/root/big"
cpus=$(nproc)
server_cpu=0 client_cpu=$((cpus > 1 ? 1 : 0))

# start_server -> sets pid and port (port 0: the server prints the one it got)
start_server() {
  taskset -c "$server_cpu" "$work/http_server" --port 0 --threads 1 --metrics \
    --root "$work/root" >"$work/server.log" 2>&1 &
  pid=$!
  if ! port=$(printed_port "$pid" "$work/server.log"); then
    echo "stall.sh: the server did not start" >&2; cat "$work/server.log" >&2; exit 1
  fi
}

# metric TEXT SERIES: the value of one series of a Prometheus text.
metric() { awk -v s="$2" '$1 == s {print $2}' <<<"$1"; }

# run MODE (alone | download): one run on a fresh server; prints its row.
run() {
  start_server
  local got=0 dl=""
  if [[ $1 == download ]]; then
    # Downloads back to back until wrk ends; the last is cut there (curl still prints the
    # bytes it got). In microseconds (EPOCHREALTIME): whole seconds would end up to one early.
    local end_us=$((${EPOCHREALTIME/./} + secs * 1000000))
    (while left=$((end_us - ${EPOCHREALTIME/./})); ((left > 10000)); do
       taskset -c "$client_cpu" curl -s -o /dev/null -w '%{size_download}\n' \
         --max-time "$((left / 1000000)).$(printf %06d $((left % 1000000)))" \
         "http://127.0.0.1:$port/big" || true
     done >"$work/downloads") &
    dl=$!
  fi
  if ! taskset -c "$client_cpu" wrk -t1 -c50 -d"${secs}s" --latency \
      "http://127.0.0.1:$port/" >"$work/wrk.txt" 2>&1; then
    cat "$work/wrk.txt" >&2; echo "stall.sh: wrk failed" >&2; exit 1
  fi
  if [[ -n $dl ]]; then
    wait "$dl" 2>/dev/null || true
    got=$(awk '{s += $1} END {printf "%.0f", s / 1048576}' "$work/downloads")
  fi
  local text
  text=$(curl -sS "http://127.0.0.1:$port/metrics?name=libsock_loop_iteration" 2>&1) || true
  local longest all below
  longest=$(metric "$text" 'libsock_loop_iteration_longest_seconds{shard="0"}')
  all=$(metric "$text" 'libsock_loop_iteration_seconds_count{shard="0"}')
  below=$(metric "$text" 'libsock_loop_iteration_seconds_bucket{shard="0",le="0.012288"}')
  if [[ -z $longest || -z $all || -z $below ]]; then
    local status=0
    kill -0 "$pid" 2>/dev/null || wait "$pid" || status=$?
    echo "stall.sh: no loop figures in the server's /metrics (its exit status: $status):" >&2
    echo "$text" >&2; cat "$work/server.log" >&2; exit 1
  fi
  stop_child "$pid"
  local p50 p99 reqs errors
  p50=$(awk '$1 == "50%" {print $2}' "$work/wrk.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$work/wrk.txt")
  reqs=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  errors=$(awk '/Socket errors|Non-2xx/ {print}' "$work/wrk.txt" | tr '\n' ' ')
  printf '%-9s %9s %8s %8s %10s %12s %11s %9s %s\n' "$1" "$reqs" "$p50" "$p99" "$got" \
    "$(awk -v s="$longest" 'BEGIN {printf "%.2f ms", s * 1000}')" "$((all - below))" "$all" \
    "$errors"
}

echo "file ${mib} MiB, wrk -t1 -c50 -d${secs}s, http_server --threads 1 on CPU $server_cpu," \
  "clients on CPU $client_cpu"
printf '%-9s %9s %8s %8s %10s %12s %11s %9s\n' run requests p50 p99 "MiB down" longest \
  ">12.3ms" iterations
for ((r = 1; r <= rounds; ++r)); do
  run alone
  run download
done
