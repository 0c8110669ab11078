#!/usr/bin/env bash
# RSS per idle keep-alive connection, and how it grows: our http_server (one shard) and nginx
# (one worker), each holding 1, 1,000, 5,000, 10,000 and 19,000 idle connections (one request
# each, then silence). Prints the server's VmRSS at each N and (RSS_N - RSS_1) / (N - 1).
#
# The fd limit is 20,000 per process, so the connections are spread over several
# //bench:idle_clients processes of at most $per_proc each, each bound to its own source address
# 127.0.0.2, 127.0.0.3, ... Each N gets a freshly started server (so an allocator that kept freed
# memory from a larger N does not hide growth) and is measured within a few seconds, well inside
# the server's 30 s keep-alive idle timeout.
#   bench/idle_rss.sh [N...]        (default: 1000 5000 10000 19000)
set -euo pipefail
cd "$(dirname "$0")/.."

counts=("$@"); [ ${#counts[@]} -gt 0 ] || counts=(1000 5000 10000 19000)
per_proc=9000
ours_port=18090
nginx_port=18091

bazel build -c opt //tools:http_server //bench:idle_clients >/dev/null 2>&1
work=$(mktemp -d)
server_pid=""
client_pids=()
source bench/children.sh
cleanup() {
  for p in "${client_pids[@]}"; do kill_child "$p"; done
  kill_child "$server_pid"
  exec 3>&- 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# Copies of the -c opt binaries: the bazel-bin link follows whichever build ran last.
bin=$(bazel info -c opt bazel-bin 2>/dev/null)
cp "$bin/tools/http_server" "$bin/bench/idle_clients" "$work/"

# Clients hold their connections until this fifo's only writer (fd 3 of this script) closes.
mkfifo "$work/hold"
exec 3<>"$work/hold"

cat >"$work/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log $work/error.log crit;
pid $work/nginx.pid; worker_rlimit_nofile 20000;
events { worker_connections 20000; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 30s;
  server { listen 127.0.0.1:$nginx_port reuseport; location / { return 200 "Hello World!"; } } }
CONF

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

start_server() {  # NAME
  case $1 in
    ours) "$work/http_server" --threads 1 --port $ours_port >"$work/server.log" 2>&1 & ;;
    nginx) nginx -c "$work/nginx.conf" -p "$work" >"$work/server.log" 2>&1 & ;;
  esac
  server_pid=$!
  local port; [ "$1" = ours ] && port=$ours_port || port=$nginx_port
  wait_listening "$port" && return 0
  echo "$1 did not start" >&2; cat "$work/server.log" >&2; return 1
}

stop_all() {
  for p in "${client_pids[@]}"; do kill_child "$p"; done
  for p in "${client_pids[@]}"; do stop_child "$p"; done
  client_pids=()
  stop_child "$server_pid"
  server_pid=""
}

# spawn PORT COUNT SRC LOG: one idle_clients process in the background.
spawn() {
  "$work/idle_clients" "$1" "$2" "$3" <"$work/hold" >"$4" 2>&1 &
  client_pids+=($!)
}

# wait_ready LOG...: 0 once each log says "ready", 1 if a client exited first.
wait_ready() {
  local log
  for log in "$@"; do
    for _ in $(seq 1200); do
      grep -q '^ready' "$log" 2>/dev/null && continue 2
      grep -q 'idle_clients:' "$log" 2>/dev/null && { cat "$log" >&2; return 1; }
      sleep 0.05
    done
    echo "timeout waiting for $log" >&2; return 1
  done
}

# measure NAME PORT N: prints "RSS_1_kB RSS_N_kB seconds", or "fail" when N could not be held.
measure() {
  local name=$1 port=$2 n=$3
  start_server "$name"
  # Warm-up: one connection, one request, held (from its own source address).
  spawn "$port" 1 127.0.0.250 "$work/warm.log"
  wait_ready "$work/warm.log" || { stop_all; echo fail; return; }
  sleep 0.5
  local rss1; rss1=$(rss_kb "$server_pid")
  local start=$SECONDS left=$((n - 1)) k=0 logs=()
  while [ "$left" -gt 0 ]; do
    local c=$(( left < per_proc ? left : per_proc ))
    logs+=("$work/c$k.log")
    spawn "$port" "$c" "127.0.0.$((k + 2))" "$work/c$k.log"
    left=$((left - c)); k=$((k + 1))
  done
  if ! wait_ready "${logs[@]}"; then
    echo "fail (server log: $(tail -c 300 "$work/server.log" | tr '\n' ' '))"; stop_all; return
  fi
  sleep 1
  local rssn; rssn=$(rss_kb "$server_pid")
  echo "$rss1 $rssn $((SECONDS - start))"
  stop_all
}

servers=(ours)
command -v nginx >/dev/null && servers+=(nginx)
echo "$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) cores, Linux $(uname -r);" \
  "fd limit $(ulimit -Hn); $(command -v nginx >/dev/null && nginx -v 2>&1 | sed 's/.*: //')"
printf '%-6s %7s %12s %12s %14s %8s\n' server N "RSS_1 (kB)" "RSS_N (kB)" "B per conn" "held s"
for name in "${servers[@]}"; do
  [ "$name" = ours ] && port=$ours_port || port=$nginx_port
  for n in "${counts[@]}"; do
    read -r r1 rn secs <<<"$(measure "$name" "$port" "$n")"
    if [ "$r1" = fail ]; then
      printf '%-6s %7s %s\n' "$name" "$n" "FAILED: $rn $secs"
      continue
    fi
    per=$(awk -v a="$r1" -v b="$rn" -v n="$n" 'BEGIN { printf "%.1f", (b - a) * 1024 / (n - 1) }')
    printf '%-6s %7s %12s %12s %14s %8s\n' "$name" "$n" "$r1" "$rn" "$per" "$secs"
  done
done
