#!/usr/bin/env bash
# What a scrape of /metrics costs the server: tools/http_server --metrics, 2 shards,
# profiling on (LIBSOCK_PROFILE=1: histograms and the top-connections refresh, the costly
# case), holding 10,000 idle keep-alive connections (//bench:idle_clients).
#   idle      10 s, no scrapes: the baseline (timers, the once-a-second top list refresh)
#   scraping  10 s of back-to-back `curl /metrics`: (server CPU - baseline) / scrapes is the
#             shard time one scrape costs
#   load      wrk -t1 -c64 -d10s keep-alive, alone and then with a scrape every 100 ms: wrk's
#             requests/s and socket errors, side by side
# Server CPU is the process's utime + stime from /proc/PID/stat (clock ticks).
#   bench/scrape_cost.sh [connections=10000]
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-10000}
source tools/deps && deps_ensure --bench --profile
ulimit -n "$(ulimit -Hn)"
port=18096
bazel build -c opt //tools:http_server //bench:idle_clients >/dev/null 2>&1
bin=$(bazel info -c opt bazel-bin 2>/dev/null)
source bench/children.sh
work=$(mktemp -d)
server=""
clients=()
cleanup() {
  for p in "${clients[@]}"; do kill_child "$p"; done
  kill_child "$server"
  exec 3>&- 2>/dev/null || true
  kill_jobs
  rm -rf "$work"
}
trap cleanup EXIT
cp "$bin/tools/http_server" "$bin/bench/idle_clients" "$work/"
mkfifo "$work/hold"
exec 3<>"$work/hold"

LIBSOCK_PROFILE=1 "$work/http_server" --threads 2 --port $port --metrics --idle-timeout-ms 0 \
  >"$work/server.log" 2>&1 &
server=$!
url=http://127.0.0.1:$port
for _ in $(seq 200); do curl -sf "$url/" >/dev/null && break; sleep 0.05; done

per_proc=9000 left=$conns k=0
while ((left > 0)); do
  c=$((left < per_proc ? left : per_proc))
  "$work/idle_clients" $port $c "127.0.0.$((k + 2))" <"$work/hold" >"$work/c$k.log" 2>&1 &
  clients+=($!)
  left=$((left - c)) k=$((k + 1))
done
for ((i = 0; i < k; i++)); do
  for _ in $(seq 1200); do grep -q '^ready' "$work/c$i.log" && break; sleep 0.05; done
  grep -q '^ready' "$work/c$i.log" || { echo "idle clients failed: $(cat "$work/c$i.log")" >&2; exit 1; }
done

cpu() { awk '{print $14 + $15}' "/proc/$server/stat"; }
hz=$(getconf CLK_TCK)
held=$(curl -s "$url/metrics?name=libsock_connections" | awk '/^libsock_connections/ {s += $2} END {print s}')

c0=$(cpu); sleep 10; c1=$(cpu)
idle_ticks=$((c1 - c0))
scrapes=0 bytes=0 end=$((SECONDS + 10))
c0=$(cpu)
while ((SECONDS < end)); do
  n=$(curl -s "$url/metrics" | wc -c)
  bytes=$n scrapes=$((scrapes + 1))
done
c1=$(cpu)
scrape_ticks=$((c1 - c0))

wrk -t1 -c64 -d10s "$url/" >"$work/alone.txt" 2>&1
(while kill -0 $server 2>/dev/null; do curl -s "$url/metrics" >/dev/null; sleep 0.1; done) &
scraper=$!
wrk -t1 -c64 -d10s "$url/" >"$work/scraped.txt" 2>&1
kill_child $scraper

rps() { awk '/Requests\/sec/ {print $2}' "$1"; }
errors() { grep -h 'Socket errors\|Non-2xx' "$1" || echo "no errors"; }
echo "$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) cores"
echo "connections held: $held (the scrape's own included); /metrics body: $bytes bytes"
awk -v s="$scrapes" -v a="$idle_ticks" -v b="$scrape_ticks" -v hz="$hz" 'BEGIN {
  printf "idle 10 s: %.0f ms of server CPU; 10 s of scraping: %.0f ms for %d scrapes\n", a * 1000 / hz, b * 1000 / hz, s
  printf "server CPU per scrape: %.3f ms\n", (b - a) * 1000 / hz / s }'
echo "wrk -t1 -c64 -d10s alone:            $(rps "$work/alone.txt") requests/s, $(errors "$work/alone.txt")"
echo "wrk -t1 -c64 -d10s, scrape / 100 ms: $(rps "$work/scraped.txt") requests/s, $(errors "$work/scraped.txt")"
