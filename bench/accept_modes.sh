#!/usr/bin/env bash
# hello_server with two shards in each way of getting connections to them: the acceptor thread
# with round-robin placement, the acceptor thread with least-loaded placement, and one
# SO_REUSEPORT listener per shard. wrk -t1 and the server share the machine unpinned (pinning
# wrk to one core would leave one core for two shards). Modes are interleaved (A B C, B C A,
# C A B, ...) so drift on a noisy machine hits all alike, and the medians are reported. Server
# CPU per request comes from the server's /proc/PID/stat (utime + stime, all threads); the
# split of the connections over the shards is sampled halfway through each run.
#   bench/accept_modes.sh [rounds=3] [seconds=5] [connections=64] [close]
# close: churn instead (issue 11). wrk sends `Connection: close`, so every request is a new
# connection, and the split is how many connections each shard accepted during the run (a
# snapshot of the few live ones says nothing under churn), with its imbalance (the busier
# shard's count over the mean). The server is then tools/http_server --metrics (hello_server
# answers keep-alive whatever the request says, so wrk would never reconnect), run with
# LIBSOCK_PROFILE=1: no counter of connections opened per shard exists, and the profiler's
# per-shard histogram of peak queued bytes, observed once at each connection's close, counts
# the connections each shard served and closed (read from GET /metrics after wrk ends, when
# wrk's last connections are closed too). The profiler's own cost is in the CPU column for
# every mode alike (within this machine's noise in a check of reuseport churn at -c16).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} secs=${2:-5} conns=${3:-64} churn=${4:-}
if [[ -n $churn && $churn != close ]]; then
  echo "usage: bench/accept_modes.sh [rounds=3] [seconds=5] [connections=64] [close]" >&2; exit 2
fi
source tools/deps && deps_ensure --bench

server=hello_server server_flags=() wrk_header=()
if [[ -n $churn ]]; then
  server=http_server server_flags=(--metrics) wrk_header=(-H "Connection: close")
  export LIBSOCK_PROFILE=1
fi
bazel build -c opt "//tools:$server" >/dev/null 2>&1
source bench/children.sh
work=$(mktemp -d); trap 'kill_jobs; rm -rf "$work"' EXIT
hz=$(getconf CLK_TCK)

declare -A flags=(
  [thread-rr]="--accept-mode thread --placement round-robin"
  [thread-ll]="--accept-mode thread --placement least-loaded"
  [reuseport]="--accept-mode reuseport"
)
modes=(thread-rr thread-ll reuseport)

# start_server MODE -> sets pid, port and url (port 0: the server prints the one it got)
start_server() {
  # shellcheck disable=SC2086 # the flags are words
  "bazel-bin/tools/$server" --port 0 --threads 2 ${flags[$1]} "${server_flags[@]}" \
    >"$work/$1.log" 2>&1 &
  pid=$!
  if ! port=$(printed_port "$pid" "$work/$1.log" "$server"); then
    echo "accept_modes.sh: $1 did not start" >&2; cat "$work/$1.log" >&2; exit 1
  fi
  url=http://127.0.0.1:$port/
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# The sockets each of the server's epoll sets watches, largest first, for its 2 shards:
# "32/32" (in reuseport mode each count includes that shard's listener).
shard_split() {
  local fd t n counts=()
  for fd in /proc/"$pid"/fd/*; do
    [[ $(readlink "$fd") == "anon_inode:[eventpoll]" ]] || continue
    n=0
    for t in $(awk '/^tfd:/ {print $2}' "/proc/$pid/fdinfo/${fd##*/}"); do
      if [[ $(readlink "/proc/$pid/fd/$t") == socket:* ]]; then n=$((n + 1)); fi
    done
    counts+=("$n")
  done
  printf '%s\n' "${counts[@]}" | sort -rn | head -2 | paste -sd/
}

# Churn: the connections each shard closed so far, "shard0/shard1", from the server's
# /metrics (HTTP/1.0: the server closes after the answer). This scrape's own connection is
# still open while the answer is made, so it is not among them.
accepted_split() {
  local metrics
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf 'GET /metrics?name=libsock_connection_peak_queued_bytes HTTP/1.0\r\n\r\n' >&3
  metrics=$(cat <&3)
  exec 3<&-
  awk '/^libsock_connection_peak_queued_bytes_count\{shard="[0-9]+"\}/ {
         split($1, f, "\""); n[f[2]] = $2; if (f[2] + 1 > shards) shards = f[2] + 1 }
       END {for (i = 0; i < shards; i++) printf "%s%d", i ? "/" : "", n[i]; print ""}' \
    <<<"${metrics//$'\r'/}"
}

# One measurement: prints "req_per_s us_per_req p99_ms errors shares".
measure() {
  local before after out reqs shares
  before=$(cpu_ticks "$pid")
  wrk -t1 -c"$conns" -d"${secs}s" --latency "${wrk_header[@]}" "$url" >"$work/wrk.out" &
  if [[ -z $churn ]]; then
    sleep "$(awk -v s="$secs" 'BEGIN {print s / 2}')"
    shares=$(shard_split)
  fi
  wait $!
  out=$(<"$work/wrk.out")
  after=$(cpu_ticks "$pid")
  if [[ -n $churn ]]; then shares=$(accepted_split); fi
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v out="$out" -v reqs="$reqs" -v ticks=$((after - before)) -v hz="$hz" -v shares="$shares" 'BEGIN {
    n = split(out, l, "\n"); rps = 0; p99 = "?"; errs = 0
    for (i = 1; i <= n; i++) {
      if (l[i] ~ /Requests\/sec/) { split(l[i], f, " "); rps = f[2] }
      if (l[i] ~ /^ +99%/) { split(l[i], f, " "); p99 = f[2] }
      if (l[i] ~ /Socket errors|Non-2xx/) { m = l[i]; gsub(/[^0-9 ]/, " ", m); split(m, f, " "); for (k in f) errs += f[k] }
    }
    printf "%.0f %.2f %s %d %s\n", rps, ticks * 1e6 / hz / reqs, p99, errs, shares }'
}

declare -A results
order=("${modes[@]}")
for ((r = 0; r < rounds; r++)); do
  for mode in "${order[@]}"; do
    start_server "$mode"
    results[$mode]+="$(measure)"$'\n'
    stop_child "$pid"
  done
  order=("${order[@]:1}" "${order[0]}")  # rotate: A B C, B C A, C A B, ...
done

median() { grep . | sort -n | awk '{a[NR] = $1} END {m = a[int((NR + 1) / 2)]; printf "%s (%s-%s)", m, a[1], a[NR]}'; }
machine="$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
row() { printf "%-10s %-28s %-20s %-26s %-7s %-34s %s\n" "$@" | sed 's/ *$//'; }
if [[ -n $churn ]]; then
  echo "http_server --threads 2 --metrics, LIBSOCK_PROFILE=1; wrk -t1 -c$conns -d${secs}s" \
       "-H 'Connection: close' (a new connection per request), $rounds rounds, median (min-max); $machine"
  row mode "connections/s" "server us/connection" "p99" "errors" \
    "accepted per shard (0/1), by round" "imbalance (max/mean)"
else
  echo "hello_server --threads 2; wrk -t1 -c$conns -d${secs}s, $rounds rounds, median (min-max); $machine"
  row mode "req/s" "server us/request" "p99" "errors" "connections per shard" ""
fi
for mode in "${modes[@]}"; do
  rows=${results[$mode]}
  imbalance=""
  if [[ -n $churn ]]; then
    imbalance=$(awk 'NF {n = split($5, c, "/"); s = m = 0
                         for (i = 1; i <= n; i++) {s += c[i]; if (c[i] > m) m = c[i]}
                         if (s > 0) printf "%.3f\n", m * n / s}' <<<"$rows" | median)
  fi
  row "$mode" \
    "$(awk '{print $1}' <<<"$rows" | median)" "$(awk '{print $2}' <<<"$rows" | median)" \
    "$(awk '{print $3}' <<<"$rows" | tr '\n' ' ')" "$(awk '{s += $4} END {print s}' <<<"$rows")" \
    "$(awk '{print $5}' <<<"$rows" | tr '\n' ' ')" "$imbalance"
done
