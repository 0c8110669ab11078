#!/usr/bin/env bash
# Side-by-side HTTP hello-world benchmark, same machine, same run, five server processes:
#   ours       tools/http_server --threads 1 (one shard, llhttp parsing; acceptor-thread mode)
#   ours-rp    the same with --accept-mode reuseport (churn loads only)
#   nginx      one worker, master_process off, `return 200 "Hello World!"`, access log off
#   nginx-def  the same with `listen ... deferred` (TCP_DEFER_ACCEPT, as the HTTP tools set by
#              default: --defer-accept-s): nginx at its best on churn (churn loads only)
#   raw        bench/raw_epoll.c, a minimal edge-triggered epoll loop: the ceiling (keep-alive)
#   raw-close  bench/raw_epoll.c --close: the churn ceiling (churn loads only)
#   ours-so    with INSTALLED=PREFIX only: ours built outside Bazel against the libsock
#              installed in PREFIX (tools/install; bench/build_installed.sh), every load
# Keep-alive loads (ours, nginx, raw): wrk -t1 -c64, -t1 -c256, 16-deep pipelining at -c64
# (bench/pipeline.lua), and -c1000 and -c10000 (how CPU per request grows with the number of
# connections; the fd limit is raised to the hard limit for that). Churn loads (ours, ours-rp,
# nginx, nginx-def, raw-close): wrk -t1 -c16 and -c256 with `Connection: close`, so every request is a new
# connection: req/s is connections/s and CPU per request is CPU per connection.
# wrk runs pinned to CPU 0, each server pinned to CPU 1. Every round starts each server once
# and runs all of its loads; the servers are interleaved (A B C, B C A, C A B, ...) so drift on
# a noisy machine hits all alike, and the medians (min-max) are reported. Server CPU per request
# comes from the server's own /proc/PID/stat (utime + stime) divided by the requests wrk
# counted, because on 2 cores one wrk thread saturates near the same req/s for every server;
# that is the figure that separates them, so its ratios are printed at the end (keep-alive:
# ours/raw, ours/nginx; churn: ours and ours-rp over nginx and over raw-close).
# After the rounds, when a churn load ran, each churn server runs once more under
# `strace -c -f` (2 s of wrk -t1 -c16 churn), less an idle run's start and stop, for its
# syscalls per connection.
#   [LOADS="close16 close256"] [STRACE=0] [INSTALLED=PREFIX] bench/compare.sh [rounds=3] [seconds=5]
# LOADS: the loads to run, by name (c64 c256 pipe16 c1000 c10000 close16 close256; default all);
# the tables and ratios of loads not run are left out. STRACE=0: no strace run.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} secs=${2:-5}
source tools/deps && deps_ensure --bench

# The loads: name -> wrk arguments (besides -t1 -d --latency, the churn header and the URL).
configs=(c64 c256 pipe16 c1000 c10000 close16 close256)
declare -A wrk_args=([c64]="-c64" [c256]="-c256" [pipe16]="-c64 -s bench/pipeline.lua"
                     [c1000]="-c1000" [c10000]="-c10000" [close16]="-c16" [close256]="-c256")
declare -A churn=([close16]=1 [close256]=1)  # loads that send `Connection: close`
declare -A config_title=(
  [c64]="wrk -t1 -c64, keep-alive"
  [c256]="wrk -t1 -c256, keep-alive"
  [pipe16]="wrk -t1 -c64, pipelined x16 (bench/pipeline.lua)"
  [c1000]="wrk -t1 -c1000, keep-alive"
  [c10000]="wrk -t1 -c10000, keep-alive"
  [close16]="wrk -t1 -c16, Connection: close (a new connection per request)"
  [close256]="wrk -t1 -c256, Connection: close (a new connection per request)"
)
keepalive_servers=(ours nginx raw)
churn_servers=(ours ours-rp nginx nginx-def raw-close)
if [[ -n ${INSTALLED:-} ]]; then keepalive_servers+=(ours-so) churn_servers+=(ours-so); fi

# The loads LOADS names, in the order above.
declare -A wanted=()
for cfg in ${LOADS:-${configs[*]}}; do
  if [[ -z ${wrk_args[$cfg]:-} ]]; then
    echo "compare.sh: unknown load '$cfg' in LOADS (known: ${configs[*]})" >&2; exit 2
  fi
  wanted[$cfg]=1
done
loads=() keepalive_loads=() churn_loads=()
for cfg in "${configs[@]}"; do
  [[ -n ${wanted[$cfg]:-} ]] || continue
  loads+=("$cfg")
  if [[ -n ${churn[$cfg]:-} ]]; then churn_loads+=("$cfg"); else keepalive_loads+=("$cfg"); fi
done
# servers_of CONFIG: the servers that run that load.
servers_of() {
  if [[ -n ${churn[$1]:-} ]]; then echo "${churn_servers[@]}"; else echo "${keepalive_servers[@]}"; fi
}
# The server processes the chosen loads need, each once.
servers=()
for name in ours ours-rp nginx nginx-def raw raw-close ours-so; do
  for cfg in "${loads[@]}"; do
    if [[ " $(servers_of "$cfg") " == *" $name "* ]]; then servers+=("$name"); break; fi
  done
done

ulimit -n "$(ulimit -Hn)"
bazel build -c opt //tools:http_server //bench:raw_epoll >/dev/null 2>&1
source bench/children.sh
# tracee: a server strace runs (below); killing strace, a job, would leave it running.
tracee=""
work=$(mktemp -d); trap 'kill_child "$tracee"; kill_jobs; rm -rf "$work"' EXIT
# Copies of the -c opt binaries: the bazel-bin link follows whichever build ran last, and a
# rebuild during the run must not swap a server under us.
bin=$(bazel info -c opt bazel-bin 2>/dev/null)
cp "$bin/tools/http_server" "$bin/bench/raw_epoll" "$work/"
if [[ -n ${INSTALLED:-} ]]; then bench/build_installed.sh "$INSTALLED" "$work/http_server_so"; fi
hz=$(getconf CLK_TCK)

declare -A port=([ours]=18080 [nginx]=18081 [raw]=18082 [ours-rp]=18087 [raw-close]=18088
                 [nginx-def]=18090 [ours-so]=18091)

cat >"$work/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log $work/error.log crit;
pid $work/nginx.pid; worker_rlimit_nofile 20000;
events { worker_connections 20000; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:${port[nginx]} reuseport; location / { return 200 "Hello World!"; } } }
CONF
mkdir "$work/nginx-def"
sed -e "s|$work/|$work/nginx-def/|g" -e "s|:${port[nginx]} reuseport|:${port[nginx-def]} reuseport deferred|" \
  "$work/nginx.conf" >"$work/nginx-def/nginx.conf"

# start_server NAME [LAUNCHER...] -> sets pid; waits until the port accepts connections. The
# launcher (strace below) runs the pinned server; without one, pid is the server itself.
start_server() {  # exec: $! is then the server (or its launcher), whose /proc/PID/stat we read
  local name=$1
  shift
  if (exec 3<>"/dev/tcp/127.0.0.1/${port[$name]}") 2>/dev/null; then
    echo "compare.sh: port ${port[$name]} for $name is in use" >&2; exit 1
  fi
  case $name in
    ours)      exec "$@" taskset -c 1 "$work/http_server" --threads 1 --port "${port[ours]}" ;;
    ours-rp)   exec "$@" taskset -c 1 "$work/http_server" --threads 1 --port "${port[ours-rp]}" \
                 --accept-mode reuseport ;;
    nginx)     exec "$@" taskset -c 1 nginx -c "$work/nginx.conf" -p "$work" ;;
    nginx-def) exec "$@" taskset -c 1 nginx -c "$work/nginx-def/nginx.conf" -p "$work/nginx-def" ;;
    raw)       exec "$@" taskset -c 1 "$work/raw_epoll" --port "${port[raw]}" ;;
    raw-close) exec "$@" taskset -c 1 "$work/raw_epoll" --port "${port[raw-close]}" --close ;;
    ours-so)   exec "$@" taskset -c 1 "$work/http_server_so" --threads 1 --port "${port[ours-so]}" ;;
  esac >"$work/$name.log" 2>&1 &
  pid=$!
  wait_listening "${port[$name]}" && return
  echo "compare.sh: $name did not start:" >&2; cat "$work/$name.log" >&2; exit 1
}
stop_server() { stop_child "$pid"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# load_argv CONFIG: sets argv to the load's wrk arguments besides -t1 -d --latency and the URL
# (the churn header is one word with a space, which wrk_args, split on spaces, cannot hold).
load_argv() {
  read -ra argv <<<"${wrk_args[$1]}"
  if [[ -n ${churn[$1]:-} ]]; then argv+=(-H "Connection: close"); fi
}

# Steady-state CPU per request, for the loads with many connections: a run's CPU includes
# accepting and closing every connection once (about 30 us each here), which a 5 s run at
# 10,000 connections spreads over too few requests to hide. So these loads also run for
# $short_secs first, and (CPU_long - CPU_short) / (requests_long - requests_short) is the
# cost of a request once the connections exist, the set-up cancelling out.
short_secs=$((secs >= 4 ? 2 : 0))  # runs shorter than 4 s report no separate steady state
declare -A steady_state=([c1000]=1 [c10000]=1)

# wrk_run CONFIG URL SECONDS: prints "ticks requests" and saves wrk's output in $work/wrk.out.
wrk_run() {
  local before after argv
  load_argv "$1"
  before=$(cpu_ticks "$pid")
  taskset -c 0 wrk -t1 "${argv[@]}" -d"$3s" --latency "$2" >"$work/wrk.out"
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

# Every round starts each server once and runs every chosen load it serves; the server order
# rotates each round.
declare -A results   # "config/server" -> one line per round from measure
order=("${servers[@]}")
for ((r = 1; r <= rounds; r++)); do
  for name in "${order[@]}"; do
    start_server "$name"
    for cfg in "${loads[@]}"; do
      [[ " $(servers_of "$cfg") " == *" $name "* ]] || continue
      results[$cfg/$name]+="$(measure "$cfg" "http://127.0.0.1:${port[$name]}/")"$'\n'
    done
    stop_server
  done
  echo "compare.sh: round $r/$rounds done (${order[*]})" >&2
  order=("${order[@]:1}" "${order[0]}")  # A B C, B C A, C A B, ...
done

# column_of CONFIG SERVER N: column N of that pair's rows, sorted (nothing for a pair that did
# not run); summary (same arguments plus a printf format) -> "median (min-max)"; median_of ->
# the median alone; min_of -> the minimum.
column_of() { awk -v c="$3" 'NF {print $c}' <<<"${results[$1/$2]:-}" | sort -g; }
summary() {
  column_of "$@" | awk -v fmt="$4" '{a[NR] = $1} END {
    printf fmt " (" fmt "-" fmt ")", a[int((NR + 1) / 2)], a[1], a[NR] }'
}
median_of() { column_of "$@" | awk '{a[NR] = $1} END {if (NR) print a[int((NR + 1) / 2)]}'; }
min_of() { column_of "$@" | head -1; }
# ratio A B: A / B to two places, or "-" when either is missing or B is 0.
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b}'
}
# has_ratio CELL...: true when some cell holds a number (a row worth printing).
has_ratio() { local c; for c in "$@"; do [[ $c == - ]] || return 0; done; return 1; }

machine="$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "$machine, Linux $(uname -r); $(nginx -v 2>&1 | sed 's/.*: //');" \
     "wrk pinned to CPU 0, servers to CPU 1; ${secs}s per run, $rounds rounds, median (min-max)"

# wrk 4.1 records one latency per pipelined batch (not per response) and with pipeline.lua its
# percentiles read 0 (github.com/wg/wrk/issues/236), so the pipelined load has no p99.
p99_cell() {
  if [[ $1 == pipe16 ]]; then echo "n/a (wrk bug)"; else summary "$1" "$2" 3 %.2f; fi
}
errors_total() { awk 'NF {s += $4} END {print s}' <<<"${results[$1/$2]}"; }
row() { printf "  %-9s %-28s %-26s %-24s %-11s %s\n" "$@"; }

for cfg in "${loads[@]}"; do
  echo
  echo "${config_title[$cfg]}"
  if [[ -n ${churn[$cfg]:-} ]]; then
    row server "req/s (connections/s)" "server CPU us/connection" "p99 ms" "wrk errors" ""
  elif [[ -n ${steady_state[$cfg]:-} ]]; then
    row server "req/s" "server CPU us/request" "p99 ms" "wrk errors" "steady CPU us/request"
  else
    row server "req/s" "server CPU us/request" "p99 ms" "wrk errors" ""
  fi
  for name in $(servers_of "$cfg"); do
    steady=""
    [[ -n ${steady_state[$cfg]:-} ]] && steady=$(summary "$cfg" "$name" 5 %.2f)
    row "$name" "$(summary "$cfg" "$name" 1 %d)" "$(summary "$cfg" "$name" 2 %.2f)" \
        "$(p99_cell "$cfg" "$name")" "$(errors_total "$cfg" "$name")" "$steady"
  done
done

# The targets (issue 4) are ratios from the same run: CPU per request at c64 <= 1.05 x raw,
# pipelined req/s >= 0.7 x raw, CPU per request at c10000 <= 1.15 x its value at c64.
ratio_row() { printf "  %-7s %-18s %-20s %-16s %s\n" "$@"; }
if ((${#keepalive_loads[@]})); then
  echo
  echo "Ratios of the medians (CPU per request: lower is better for ours)"
  ratio_row load "CPU ours/raw" "CPU ours/nginx" "req/s ours/raw" "req/s ours/nginx"
  for cfg in "${keepalive_loads[@]}"; do
    ratio_row "$cfg" \
      "$(ratio "$(median_of "$cfg" ours 2)" "$(median_of "$cfg" raw 2)")" \
      "$(ratio "$(median_of "$cfg" ours 2)" "$(median_of "$cfg" nginx 2)")" \
      "$(ratio "$(median_of "$cfg" ours 1)" "$(median_of "$cfg" raw 1)")" \
      "$(ratio "$(median_of "$cfg" ours 1)" "$(median_of "$cfg" nginx 1)")"
  done

  # Noise on a shared machine only ever adds time, in phases of minutes that can catch one
  # server in several rounds: the least-disturbed run of each server is the steadier comparison.
  echo
  echo "Ratios of the minimums (each server's least-disturbed run)"
  ratio_row load "CPU ours/raw" "CPU ours/nginx" "" ""
  for cfg in "${keepalive_loads[@]}"; do
    ratio_row "$cfg" "$(ratio "$(min_of "$cfg" ours 2)" "$(min_of "$cfg" raw 2)")" \
      "$(ratio "$(min_of "$cfg" ours 2)" "$(min_of "$cfg" nginx 2)")" "" ""
  done
  header=1
  for name in "${keepalive_servers[@]}"; do
    cells=("$(ratio "$(min_of c10000 "$name" 5)" "$(min_of c64 "$name" 2)")"
           "$(ratio "$(min_of c1000 "$name" 5)" "$(min_of c64 "$name" 2)")")
    has_ratio "${cells[@]}" || continue
    if ((header)); then
      printf "  %-7s %-18s %-20s %s\n" "" "c10000/c64 steady" "c1000/c64 steady" ""
      header=0
    fi
    printf "  %-7s %-18s %-20s %s\n" "$name" "${cells[@]}" ""
  done

  header=1
  for name in "${keepalive_servers[@]}"; do
    base=$(median_of c64 "$name" 2)
    cells=("$(ratio "$(median_of c256 "$name" 2)" "$base")"
           "$(ratio "$(median_of c1000 "$name" 2)" "$base")"
           "$(ratio "$(median_of c10000 "$name" 2)" "$base")"
           "$(ratio "$(median_of c1000 "$name" 5)" "$base")"
           "$(ratio "$(median_of c10000 "$name" 5)" "$base")")
    has_ratio "${cells[@]}" || continue
    if ((header)); then
      echo
      echo "How CPU per request grows with connections (each server's median over its own c64 median;"
      echo "whole run: accepting and closing every connection included; steady: once they exist)"
      printf "  %-7s %-10s %-20s %-20s %-18s %s\n" server c256/c64 "c1000/c64 whole" \
        "c10000/c64 whole" "c1000/c64 steady" "c10000/c64 steady"
      header=0
    fi
    printf "  %-7s %-10s %-20s %-20s %-18s %s\n" "$name" "${cells[@]}"
  done
fi

# Churn (issue 11): CPU per connection of ours in both accept modes over nginx's and over the
# churn ceiling's, each as the ratio of the medians and of the minimums.
if ((${#churn_loads[@]})); then
  echo
  echo "Churn ratios, server CPU per connection (lower is better for ours)"
  line=$(printf "  %-18s" ratio)
  for cfg in "${churn_loads[@]}"; do line+=$(printf " %-16s %-13s" "$cfg median" "$cfg min"); done
  echo "$line"
  for pair in ours/nginx ours-rp/nginx ours/nginx-def ours-rp/nginx-def ours/raw-close \
              ours-rp/raw-close; do
    a=${pair%/*} b=${pair#*/}
    cells=()
    for cfg in "${churn_loads[@]}"; do
      cells+=("$(ratio "$(median_of "$cfg" "$a" 2)" "$(median_of "$cfg" "$b" 2)")"
              "$(ratio "$(min_of "$cfg" "$a" 2)" "$(min_of "$cfg" "$b" 2)")")
    done
    has_ratio "${cells[@]}" || continue
    line=$(printf "  %-18s" "$pair")
    for ((i = 0; i < ${#cells[@]}; i += 2)); do
      line+=$(printf " %-16s %-13s" "${cells[i]}" "${cells[i + 1]}")
    done
    echo "$line"
  done
fi

# The installed library (issue 13): ours-so's CPU per request over ours', for every load.
if [[ -n ${INSTALLED:-} ]]; then
  echo
  echo "Installed libsock.so (ours-so) over the Bazel binary (ours), server CPU per request"
  printf "  %-9s %-8s %s\n" load median min
  for cfg in "${loads[@]}"; do
    printf "  %-9s %-8s %s\n" "$cfg" "$(ratio "$(median_of "$cfg" ours-so 2)" "$(median_of "$cfg" ours 2)")" \
      "$(ratio "$(min_of "$cfg" ours-so 2)" "$(min_of "$cfg" ours 2)")"
  done
fi

# Syscalls per connection: each churn server once more, started under strace -c -f (its
# summary is written when the traced server exits), with 2 s of wrk -t1 -c16 churn. The
# server's own start and stop (allocating pools, threads, the listener) would show as
# fractions of a call per connection, so an idle run (start, one probe connection, stop) of
# the same server is subtracted: what is left is what the connections cost.
strace_secs=2
# catches_sigterm PID: true once PID has a handler for SIGTERM (signal 15: bit 14 of SigCgt).
catches_sigterm() {
  local mask
  mask=$(awk '/^SigCgt:/ {print $2}' "/proc/$1/status" 2>/dev/null) || return 1
  [[ -n $mask ]] && (((0x$mask >> 14) & 1))
}
# strace_run NAME SECONDS: the server under strace, with SECONDS of churn (0: none); prints
# "syscall calls" lines and a last line "connections N" (the requests wrk counted).
strace_run() {
  local reqs=0 argv _
  start_server "$1" strace -f -c -o "$work/strace.txt"
  # The traced server is strace's only child. Ours and nginx listen before they install their
  # SIGTERM handler: wait for it, or the idle run's stop could be a kill that skips the exit
  # path's calls (raw_epoll has no handler: SIGTERM ends it at once either way).
  read -r tracee _ <"/proc/$pid/task/$pid/children" || true  # one line, no newline
  if [[ $1 != raw* ]]; then
    for _ in $(seq 100); do
      catches_sigterm "$tracee" && break
      sleep 0.05
    done
  fi
  if (($2 > 0)); then
    load_argv close16
    reqs=$(taskset -c 0 wrk -t1 "${argv[@]}" -d"$2s" "http://127.0.0.1:${port[$1]}/" |
             awk '/requests in/ {print $1}')
  fi
  # SIGTERM stops each of them (nginx: fast shutdown); strace writes its summary once the
  # server is gone, then exits itself.
  kill_child "$tracee"
  wait "$pid" 2>/dev/null || true
  tracee=""
  # The table between its two dashed lines: calls is column 4, the name the last column (an
  # empty errors column shifts nothing before it).
  awk '/^-+ / {n++; next} n == 1 {print $NF, $4}' "$work/strace.txt"
  echo "connections $reqs"
}

if ((${#churn_loads[@]})) && [[ ${STRACE:-1} != 0 ]]; then
  echo
  if ! command -v strace >/dev/null; then
    echo "Syscalls per connection: skipped, strace is not installed"
  else
    declare -A sys=()  # "server/syscall" -> calls per connection
    declare -A conns_of=() names=()
    for name in "${churn_servers[@]}"; do
      strace_run "$name" 0 >"$work/idle.txt"
      strace_run "$name" "$strace_secs" >"$work/load.txt"
      conns_of[$name]=$(awk '$1 == "connections" {print $2}' "$work/load.txt")
      while read -r call per; do
        sys[$name/$call]=$per
        names[$call]=1
      done < <(awk -v c="${conns_of[$name]}" '
        NR == FNR {idle[$1] = $2; next}
        $1 != "connections" && c > 0 {d = ($2 - idle[$1]) / c; t += d; printf "%s %.4f\n", $1, d}
        END {if (c > 0) printf "total %.4f\n", t}' "$work/idle.txt" "$work/load.txt")
    done
    echo "Syscalls per connection (strace -c -f, wrk -t1 -c16 Connection: close for ${strace_secs} s," \
         "minus an idle start and stop; calls >= 0.01 per connection)"
    echo "  Under strace every syscall is slow, so each epoll_wait (and each accept4 batch) finds"
    echo "  more connections than in a real run: those two are lower here than without strace."
    line=$(printf "  %-16s" syscall)
    for name in "${churn_servers[@]}"; do line+=$(printf " %-10s" "$name"); done
    echo "$line"
    for call in $(printf '%s\n' "${!names[@]}" | sort); do
      [[ $call == total ]] && continue
      shown=0 line=$(printf "  %-16s" "$call")
      for name in "${churn_servers[@]}"; do
        per=${sys[$name/$call]:-0}
        if awk -v p="$per" 'BEGIN {exit !(p >= 0.01)}'; then
          shown=1 line+=$(printf " %-10.2f" "$per")
        else
          line+=$(printf " %-10s" "")
        fi
      done
      ((shown)) && echo "$line"
    done
    line=$(printf "  %-16s" total)
    for name in "${churn_servers[@]}"; do line+=$(printf " %-10.2f" "${sys[$name/total]:-0}"); done
    echo "$line"
    line=$(printf "  %-16s" connections)
    for name in "${churn_servers[@]}"; do line+=$(printf " %-10s" "${conns_of[$name]}"); done
    echo "$line"
  fi
fi
