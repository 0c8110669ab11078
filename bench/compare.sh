#!/usr/bin/env bash
# Side-by-side HTTP hello-world benchmark: our hello_server (one shard) against nginx with one
# worker, same machine, same run. wrk runs pinned to CPU 0, each server pinned to CPU 1; the
# servers are interleaved (A B, B A, ...) so drift on a noisy machine hits both alike, and the
# medians are reported. Server CPU per request comes from the server's own /proc/PID/stat
# (utime + stime), because on 2 cores one wrk thread saturates near the same req/s for every
# server.
#   bench/compare.sh [rounds=3] [seconds=5] [connections=64]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} secs=${2:-5} conns=${3:-64}
source tools/deps && deps_ensure --bench

bazel build -c opt //tools:hello_server >/dev/null 2>&1
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
hz=$(getconf CLK_TCK)

cat >"$work/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log $work/error.log crit;
pid $work/nginx.pid;
events { worker_connections 20000; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18081 reuseport; location / { return 200 "Hello World!"; } } }
CONF

# start_server NAME -> sets pid and url
start_server() {
  case $1 in
    ours) taskset -c 1 bazel-bin/tools/hello_server --threads 1 --port 18080 >"$work/ours.log" 2>&1 &
          pid=$! url=http://127.0.0.1:18080/ ;;
    nginx) taskset -c 1 nginx -c "$work/nginx.conf" -p "$work" >"$work/nginx.log" 2>&1 &
           pid=$! url=http://127.0.0.1:18081/ ;;
  esac
  local port=${url#http://127.0.0.1:}; port=${port%/}
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.05; done
  echo "compare.sh: $1 did not start" >&2; exit 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# One measurement: prints "req_per_s us_per_req p99_ms errors".
measure() {
  local before after out reqs
  before=$(cpu_ticks "$pid")
  out=$(taskset -c 0 wrk -t1 -c"$conns" -d"${secs}s" --latency "$url")
  after=$(cpu_ticks "$pid")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v out="$out" -v reqs="$reqs" -v ticks=$((after - before)) -v hz="$hz" 'BEGIN {
    n = split(out, l, "\n"); rps = 0; p99 = "?"; errs = 0
    for (i = 1; i <= n; i++) {
      if (l[i] ~ /Requests\/sec/) { split(l[i], f, " "); rps = f[2] }
      if (l[i] ~ /^ +99%/) { split(l[i], f, " "); p99 = f[2] }
      if (l[i] ~ /Socket errors|Non-2xx/) { m = l[i]; gsub(/[^0-9 ]/, " ", m); split(m, f, " "); for (k in f) errs += f[k] }
    }
    printf "%.0f %.2f %s %d\n", rps, ticks * 1e6 / hz / reqs, p99, errs }'
}

declare -A results
order=(ours nginx)
for ((r = 0; r < rounds; r++)); do
  for name in "${order[@]}"; do
    start_server "$name"
    results[$name]+="$(measure)"$'\n'
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
  order=("${order[1]}" "${order[0]}")  # interleave: A B, B A, A B, ...
done

median() { grep . | sort -n | awk '{a[NR] = $1} END {m = a[int((NR + 1) / 2)]; printf "%s (%s-%s)", m, a[1], a[NR]}'; }
echo "wrk -t1 -c$conns -d${secs}s, $rounds rounds, median (min-max); $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf "%-8s %-28s %-24s %-22s %s\n" server "req/s" "server us/request" "p99" "errors"
for name in ours nginx; do
  rows=${results[$name]}
  printf "%-8s %-28s %-24s %-22s %s\n" "$name" \
    "$(awk '{print $1}' <<<"$rows" | median)" "$(awk '{print $2}' <<<"$rows" | median)" \
    "$(awk '{print $3}' <<<"$rows" | tr '\n' ' ')" "$(awk '{s += $4} END {print s}' <<<"$rows")"
done
