#!/usr/bin/env bash
# hello_server with two shards in each way of getting connections to them: the acceptor thread
# with round-robin placement, the acceptor thread with least-loaded placement, and one
# SO_REUSEPORT listener per shard. wrk -t1 and the server share the machine unpinned (pinning
# wrk to one core would leave one core for two shards). Modes are interleaved (A B C, B C A,
# C A B, ...) so drift on a noisy machine hits all alike, and the medians are reported. Server
# CPU per request comes from the server's /proc/PID/stat (utime + stime, all threads); the
# split of the connections over the shards is sampled halfway through each run.
#   bench/accept_modes.sh [rounds=3] [seconds=5] [connections=64]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} secs=${2:-5} conns=${3:-64}
source tools/deps && deps_ensure --bench

bazel build -c opt //tools:hello_server >/dev/null 2>&1
source bench/children.sh
work=$(mktemp -d); trap 'kill_jobs; rm -rf "$work"' EXIT
hz=$(getconf CLK_TCK)

declare -A flags=(
  [thread-rr]="--accept-mode thread --placement round-robin"
  [thread-ll]="--accept-mode thread --placement least-loaded"
  [reuseport]="--accept-mode reuseport"
)
modes=(thread-rr thread-ll reuseport)

# start_server MODE -> sets pid and url (port 0: the server prints the one it got)
start_server() {
  # shellcheck disable=SC2086 # the flags are words
  bazel-bin/tools/hello_server --port 0 --threads 2 ${flags[$1]} >"$work/$1.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    url=$(sed -n 's|^hello_server listening on http://0.0.0.0:\([0-9]*\)/$|http://127.0.0.1:\1/|p' "$work/$1.log")
    [[ -n $url ]] && return
    sleep 0.05
  done
  echo "accept_modes.sh: $1 did not start" >&2; cat "$work/$1.log" >&2; exit 1
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

# One measurement: prints "req_per_s us_per_req p99_ms errors shares".
measure() {
  local before after out reqs shares
  before=$(cpu_ticks "$pid")
  wrk -t1 -c"$conns" -d"${secs}s" --latency "$url" >"$work/wrk.out" &
  sleep "$(awk -v s="$secs" 'BEGIN {print s / 2}')"
  shares=$(shard_split)
  wait $!
  out=$(<"$work/wrk.out")
  after=$(cpu_ticks "$pid")
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
echo "hello_server --threads 2; wrk -t1 -c$conns -d${secs}s, $rounds rounds, median (min-max); $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf "%-10s %-28s %-20s %-26s %-7s %s\n" mode "req/s" "server us/request" "p99" "errors" \
  "connections per shard"
for mode in "${modes[@]}"; do
  rows=${results[$mode]}
  printf "%-10s %-28s %-20s %-26s %-7s %s\n" "$mode" \
    "$(awk '{print $1}' <<<"$rows" | median)" "$(awk '{print $2}' <<<"$rows" | median)" \
    "$(awk '{print $3}' <<<"$rows" | tr '\n' ' ')" "$(awk '{s += $4} END {print s}' <<<"$rows")" \
    "$(awk '{print $5}' <<<"$rows" | tr '\n' ' ')"
done
