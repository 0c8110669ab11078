#!/usr/bin/env bash
# Side-by-side HTTP hello-world benchmark, same machine, same run, three servers:
#   ours   tools/http_server --threads 1 (one shard, llhttp parsing)
#   nginx  one worker, master_process off, `return 200 "Hello World!"`, access log off
#   raw    bench/raw_epoll.c, a minimal edge-triggered epoll loop: the ceiling
# and five loads: wrk -t1 -c64 keep-alive, -t1 -c256, 16-deep pipelining at -c64
# (bench/pipeline.lua), and -c1000 and -c10000 keep-alive (how CPU per request grows with the
# number of connections; the fd limit is raised to the hard limit for that). wrk runs pinned to CPU 0, each server pinned to CPU 1. The servers are
# interleaved (A B C, B C A, C A B, ...) so drift on a noisy machine hits all alike, and the
# medians (min-max) are reported. Server CPU per request comes from the server's own
# /proc/PID/stat (utime + stime) divided by the requests wrk counted, because on 2 cores one
# wrk thread saturates near the same req/s for every server; that is the figure that separates
# them, so its ratios (ours/raw, ours/nginx) are printed at the end.
#   bench/compare.sh [rounds=3] [seconds=5]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} secs=${2:-5}
source tools/deps && deps_ensure --bench

ulimit -n "$(ulimit -Hn)"
bazel build -c opt //tools:http_server //bench:raw_epoll >/dev/null 2>&1
source bench/children.sh
work=$(mktemp -d); trap 'kill_jobs; rm -rf "$work"' EXIT
# Copies of the -c opt binaries: the bazel-bin link follows whichever build ran last, and a
# rebuild during the run must not swap a server under us.
bin=$(bazel info -c opt bazel-bin 2>/dev/null)
cp "$bin/tools/http_server" "$bin/bench/raw_epoll" "$work/"
hz=$(getconf CLK_TCK)

servers=(ours nginx raw)
declare -A port=([ours]=18080 [nginx]=18081 [raw]=18082)

# The loads: name -> wrk arguments (besides -t1 -d --latency and the URL).
configs=(c64 c256 pipe16 c1000 c10000)
declare -A wrk_args=([c64]="-c64" [c256]="-c256" [pipe16]="-c64 -s bench/pipeline.lua"
                     [c1000]="-c1000" [c10000]="-c10000")
declare -A config_title=(
  [c64]="wrk -t1 -c64, keep-alive"
  [c256]="wrk -t1 -c256, keep-alive"
  [pipe16]="wrk -t1 -c64, pipelined x16 (bench/pipeline.lua)"
  [c1000]="wrk -t1 -c1000, keep-alive"
  [c10000]="wrk -t1 -c10000, keep-alive"
)

cat >"$work/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log $work/error.log crit;
pid $work/nginx.pid; worker_rlimit_nofile 20000;
events { worker_connections 20000; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:${port[nginx]} reuseport; location / { return 200 "Hello World!"; } } }
CONF

# start_server NAME -> sets pid; waits until the port accepts connections.
start_server() {  # exec: $! is then the server itself, whose /proc/PID/stat we read
  case $1 in
    ours)  exec taskset -c 1 "$work/http_server" --threads 1 --port "${port[ours]}" ;;
    nginx) exec taskset -c 1 nginx -c "$work/nginx.conf" -p "$work" ;;
    raw)   exec taskset -c 1 "$work/raw_epoll" --port "${port[raw]}" ;;
  esac >"$work/$1.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/${port[$1]}") 2>/dev/null && return
    sleep 0.05
  done
  echo "compare.sh: $1 did not start:" >&2; cat "$work/$1.log" >&2; exit 1
}
stop_server() { stop_child "$pid"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Steady-state CPU per request, for the loads with many connections: a run's CPU includes
# accepting and closing every connection once (about 30 us each here), which a 5 s run at
# 10,000 connections spreads over too few requests to hide. So these loads also run for
# $short_secs first, and (CPU_long - CPU_short) / (requests_long - requests_short) is the
# cost of a request once the connections exist, the set-up cancelling out.
short_secs=$((secs >= 4 ? 2 : 0))  # runs shorter than 4 s report no separate steady state
declare -A steady_state=([c1000]=1 [c10000]=1)

# wrk_run CONFIG URL SECONDS: prints "ticks requests" and saves wrk's output in $work/wrk.out.
wrk_run() {
  local before after
  before=$(cpu_ticks "$pid")
  # shellcheck disable=SC2086 # wrk_args holds several words
  taskset -c 0 wrk -t1 ${wrk_args[$1]} -d"$3s" --latency "$2" >"$work/wrk.out"
  after=$(cpu_ticks "$pid")
  echo "$((after - before)) $(awk '/requests in/ {print $1}' "$work/wrk.out")"
}

# measure CONFIG URL: one wrk run against the server in $pid (two for steady_state loads);
# prints "req_per_s us_per_req p99_ms errors steady_us_per_req" (the last is us_per_req
# again for the other loads).
measure() {
  local out reqs ticks short_ticks=0 short_reqs=0 short_out=""
  if [[ -n ${steady_state[$1]:-} ]] && ((short_secs > 0)); then
    read -r short_ticks short_reqs <<<"$(wrk_run "$1" "$2" "$short_secs")"
    short_out=$(grep -E 'Socket errors|Non-2xx' "$work/wrk.out" || true)  # its errors count too
  fi
  read -r ticks reqs <<<"$(wrk_run "$1" "$2" "$secs")"
  out=$(cat "$work/wrk.out")$'\n'"$short_out"
  awk -v out="$out" -v reqs="$reqs" -v ticks="$ticks" -v hz="$hz" \
      -v sticks="$short_ticks" -v sreqs="$short_reqs" '
    # wrk prints latencies with a unit (us, ms, s); normalize to ms.
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; return v * 1000 }
    BEGIN {
      n = split(out, l, "\n"); rps = 0; p99 = -1; errs = 0
      for (i = 1; i <= n; i++) {
        if (l[i] ~ /Requests\/sec/) { split(l[i], f, " "); rps = f[2] }
        if (l[i] ~ /^ +99%/) { split(l[i], f, " "); p99 = ms(f[2]) }
        # "Socket errors: connect 0, read 0, write 0, timeout 0" and "Non-2xx or 3xx responses: N"
        if (l[i] ~ /Socket errors|Non-2xx/) {
          m = l[i]; sub(/^[^:]*:/, "", m); gsub(/[^0-9 ]/, " ", m)
          split(m, f, " "); for (k in f) errs += f[k]
        }
      }
      us = ticks * 1e6 / hz / reqs
      steady = sreqs > 0 && reqs > sreqs ? (ticks - sticks) * 1e6 / hz / (reqs - sreqs) : us
      printf "%.0f %.3f %.3f %d %.3f\n", rps, us, p99, errs, steady }'
}

# Every round starts each server once and runs every load against it; the server order
# rotates each round.
declare -A results   # "config/server" -> one line per round from measure
order=("${servers[@]}")
for ((r = 1; r <= rounds; r++)); do
  for name in "${order[@]}"; do
    start_server "$name"
    for cfg in "${configs[@]}"; do
      results[$cfg/$name]+="$(measure "$cfg" "http://127.0.0.1:${port[$name]}/")"$'\n'
    done
    stop_server
  done
  echo "compare.sh: round $r/$rounds done (${order[*]})" >&2
  order=("${order[@]:1}" "${order[0]}")  # A B C, B C A, C A B, ...
done

# column_of CONFIG SERVER N: column N of that pair's rows, sorted; summary (same arguments
# plus a printf format) -> "median (min-max)"; median_of -> the median alone.
column_of() { awk -v c="$3" 'NF {print $c}' <<<"${results[$1/$2]}" | sort -g; }
summary() {
  column_of "$@" | awk -v fmt="$4" '{a[NR] = $1} END {
    printf fmt " (" fmt "-" fmt ")", a[int((NR + 1) / 2)], a[1], a[NR] }'
}
median_of() { column_of "$@" | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
min_of() { column_of "$@" | head -1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

machine="$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "$machine, Linux $(uname -r); $(nginx -v 2>&1 | sed 's/.*: //');" \
     "wrk pinned to CPU 0, servers to CPU 1; ${secs}s per run, $rounds rounds, median (min-max)"

# wrk 4.1 records one latency per pipelined batch (not per response) and with pipeline.lua its
# percentiles read 0 (github.com/wg/wrk/issues/236), so the pipelined load has no p99.
p99_cell() {
  if [[ $1 == pipe16 ]]; then echo "n/a (wrk bug)"; else summary "$1" "$2" 3 %.2f; fi
}
errors_total() { awk 'NF {s += $4} END {print s}' <<<"${results[$1/$2]}"; }
row() { printf "  %-6s %-28s %-26s %-24s %-11s %s\n" "$@"; }

for cfg in "${configs[@]}"; do
  echo
  echo "${config_title[$cfg]}"
  if [[ -n ${steady_state[$cfg]:-} ]]; then
    row server "req/s" "server CPU us/request" "p99 ms" "wrk errors" "steady CPU us/request"
  else
    row server "req/s" "server CPU us/request" "p99 ms" "wrk errors" ""
  fi
  for name in "${servers[@]}"; do
    steady=""
    [[ -n ${steady_state[$cfg]:-} ]] && steady=$(summary "$cfg" "$name" 5 %.2f)
    row "$name" "$(summary "$cfg" "$name" 1 %d)" "$(summary "$cfg" "$name" 2 %.2f)" \
        "$(p99_cell "$cfg" "$name")" "$(errors_total "$cfg" "$name")" "$steady"
  done
done

# The targets (issue 4) are ratios from the same run: CPU per request at c64 <= 1.05 x raw,
# pipelined req/s >= 0.7 x raw, CPU per request at c10000 <= 1.15 x its value at c64.
ratio_row() { printf "  %-7s %-18s %-20s %-16s %s\n" "$@"; }
echo
echo "Ratios of the medians (CPU per request: lower is better for ours)"
ratio_row load "CPU ours/raw" "CPU ours/nginx" "req/s ours/raw" "req/s ours/nginx"
for cfg in "${configs[@]}"; do
  ratio_row "$cfg" \
    "$(ratio "$(median_of "$cfg" ours 2)" "$(median_of "$cfg" raw 2)")" \
    "$(ratio "$(median_of "$cfg" ours 2)" "$(median_of "$cfg" nginx 2)")" \
    "$(ratio "$(median_of "$cfg" ours 1)" "$(median_of "$cfg" raw 1)")" \
    "$(ratio "$(median_of "$cfg" ours 1)" "$(median_of "$cfg" nginx 1)")"
done

# Noise on a shared machine only ever adds time, in phases of minutes that can catch one server
# in several rounds: the least-disturbed run of each server is the steadier comparison.
echo
echo "Ratios of the minimums (each server's least-disturbed run)"
ratio_row load "CPU ours/raw" "CPU ours/nginx" "" ""
for cfg in "${configs[@]}"; do
  ratio_row "$cfg" "$(ratio "$(min_of "$cfg" ours 2)" "$(min_of "$cfg" raw 2)")" \
    "$(ratio "$(min_of "$cfg" ours 2)" "$(min_of "$cfg" nginx 2)")" "" ""
done
printf "  %-7s %-18s %-20s %s\n" "" "c10000/c64 steady" "c1000/c64 steady" ""
for name in "${servers[@]}"; do
  printf "  %-7s %-18s %-20s %s\n" "$name" "$(ratio "$(min_of c10000 "$name" 5)" "$(min_of c64 "$name" 2)")" \
    "$(ratio "$(min_of c1000 "$name" 5)" "$(min_of c64 "$name" 2)")" ""
done

echo
echo "How CPU per request grows with connections (each server's median over its own c64 median;"
echo "whole run: accepting and closing every connection included; steady: once they exist)"
printf "  %-7s %-10s %-20s %-20s %-18s %s\n" server c256/c64 "c1000/c64 whole" "c10000/c64 whole" \
  "c1000/c64 steady" "c10000/c64 steady"
for name in "${servers[@]}"; do
  base=$(median_of c64 "$name" 2)
  printf "  %-7s %-10s %-20s %-20s %-18s %s\n" "$name" "$(ratio "$(median_of c256 "$name" 2)" "$base")" \
    "$(ratio "$(median_of c1000 "$name" 2)" "$base")" "$(ratio "$(median_of c10000 "$name" 2)" "$base")" \
    "$(ratio "$(median_of c1000 "$name" 5)" "$base")" "$(ratio "$(median_of c10000 "$name" 5)" "$base")"
done
