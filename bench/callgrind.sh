#!/usr/bin/env bash
# User-space instructions per request, our http_server (one shard) against bench/raw_epoll.c,
# counted by valgrind's callgrind under the same short wrk loads: -t1 -c64 keep-alive, and
# 16-deep pipelining at -c64 (bench/pipeline.lua); and per connection under churn, -t1 -c16
# with `Connection: close` (every request a new connection), for ours in both accept modes
# (the acceptor thread, and --accept-mode reuseport: "ours-rp") against raw_epoll --close.
# Instruction counts are stable on a noisy machine where timings are not (perf counters are
# not available here), so this is the profile that says where our cycles go beside the ceiling.
#
# Each server runs under callgrind; a 1 s warm-up load fills pools and caches, the counters
# are zeroed (callgrind_control -z), the measured load runs, and the counters are dumped
# (callgrind_control -d). Instructions per request = the dump's total (every thread, ours
# has an acceptor and a shard) / the requests wrk counted. The kernel's work (syscalls, TCP)
# is not counted: compare bench/compare.sh's CPU per request for that.
# INSTALLED=PREFIX adds "ours-so" to every load: the same http_server built outside Bazel
# against the libsock installed in PREFIX (tools/install; bench/build_installed.sh).
#   [INSTALLED=PREFIX] bench/callgrind.sh [seconds=3]
# Leaves the dumps in bench/callgrind-out/ for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
source tools/deps && deps_ensure --bench

bazel build -c opt //tools:http_server //bench:raw_epoll >/dev/null 2>&1
bin=$(bazel info -c opt bazel-bin 2>/dev/null)
out=bench/callgrind-out
rm -rf "$out" && mkdir -p "$out"
source bench/children.sh
work=$(mktemp -d); trap 'kill_jobs; rm -rf "$work"' EXIT
cp "$bin/tools/http_server" "$bin/bench/raw_epoll" "$work/"
if [[ -n ${INSTALLED:-} ]]; then bench/build_installed.sh "$INSTALLED" "$work/http_server_so"; fi

declare -A port=([ours]=18085 [raw]=18086 [ours-rp]=18089 [ours-so]=18091)
declare -A loads=([c64]="-c64" [pipe16]="-c64 -s bench/pipeline.lua" [close16]="-c16")
declare -A churn=([close16]=1)  # loads that send `Connection: close`; raw runs with --close
declare -A servers=([c64]="ours raw" [pipe16]="ours raw" [close16]="ours ours-rp raw")
if [[ -n ${INSTALLED:-} ]]; then
  for load in "${!servers[@]}"; do servers[$load]+=" ours-so"; done
fi

start_server() {  # NAME LOAD -> sets pid
  local cmd
  case $1 in
    ours)    cmd=("$work/http_server" --threads 1 --port "${port[ours]}") ;;
    ours-rp) cmd=("$work/http_server" --threads 1 --port "${port[ours-rp]}"
                  --accept-mode reuseport) ;;
    ours-so) cmd=("$work/http_server_so" --threads 1 --port "${port[ours-so]}") ;;
    raw)     cmd=("$work/raw_epoll" --port "${port[raw]}") ;;
  esac
  if [[ $1 == raw && -n ${churn[$2]:-} ]]; then cmd+=(--close); fi
  valgrind --tool=callgrind --callgrind-out-file="$out/$1-$2.out" "${cmd[@]}" \
    >"$work/$1.log" 2>&1 &
  pid=$!
  wait_listening "${port[$1]}" 400 && return
  echo "callgrind.sh: $1 did not start:" >&2; cat "$work/$1.log" >&2; exit 1
}

# total_ir FILE: the "totals:" (or "summary:") line of a callgrind dump.
total_ir() { awk '/^(totals|summary):/ {print $2; exit}' "$1"; }
# load_argv LOAD: sets argv to the load's wrk arguments (the churn header is one word with a
# space, which loads, split on spaces, cannot hold).
load_argv() {
  read -ra argv <<<"${loads[$1]}"
  if [[ -n ${churn[$1]:-} ]]; then argv+=(-H "Connection: close"); fi
}

printf '%-7s %-7s %12s %14s %12s\n' load server requests instructions "per request"
declare -A per
for load in c64 pipe16 close16; do
  load_argv "$load"
  for name in ${servers[$load]}; do
    start_server "$name" "$load"
    url="http://127.0.0.1:${port[$name]}/"
    wrk -t1 "${argv[@]}" -d1s "$url" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    reqs=$(wrk -t1 "${argv[@]}" -d"${secs}s" "$url" | awk '/requests in/ {print $1}')
    callgrind_control -d "$pid" >/dev/null 2>&1
    stop_child "$pid"
    dump="$out/$name-$load.out.1"  # the -d dump; the exit writes the file without suffix
    ir=$(total_ir "$dump")
    per[$load/$name]=$(awk -v i="$ir" -v r="$reqs" 'BEGIN {printf "%.0f", i / r}')
    printf '%-7s %-7s %12s %14s %12s\n' "$load" "$name" "$reqs" "$ir" "${per[$load/$name]}"
  done
done
echo
for load in c64 pipe16; do
  awk -v a="${per[$load/ours]}" -v b="${per[$load/raw]}" -v l="$load" \
    'BEGIN {printf "%s: ours/raw instructions per request %.2f (%+d)\n", l, a / b, a - b}'
done
# Under churn each request is a connection: the figures above are per connection.
for name in ours ours-rp; do
  awk -v a="${per[close16/$name]}" -v b="${per[close16/raw]}" -v n="$name" \
    'BEGIN {printf "close16: %s/raw instructions per connection %.2f (%+d)\n", n, a / b, a - b}'
done
if [[ -n ${INSTALLED:-} ]]; then
  for load in c64 pipe16 close16; do
    awk -v a="${per[$load/ours-so]}" -v b="${per[$load/ours]}" -v l="$load" \
      'BEGIN {printf "%s: ours-so/ours (installed libsock.so over the Bazel binary) %.3f (%+d)\n", l, a / b, a - b}'
  done
fi
