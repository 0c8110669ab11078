#!/usr/bin/env bash
# Tests bench/scale_bench: with --requests R each run must exit 0 having counted exactly R
# responses (R is a multiple of every variant's batch here, so nothing is rounded up), for
# every variant on one shard and two (cross and cross-kernel need two; accept in both accept
# modes).
#   bazel test //tests/bench:scale_bench_test
set -euo pipefail

if [[ -n ${TEST_SRCDIR:-} ]]; then
  root=$TEST_SRCDIR/$TEST_WORKSPACE
else
  root=$(cd "$(dirname "$0")/../.." && pwd)/bazel-bin
fi
bench=$root/bench/scale_bench
fail() { echo "FAIL: $*" >&2; exit 1; }

# run ARGS...: runs scale_bench with ARGS, which must ask for 512 requests, and checks its line.
run() {
  local out
  out=$("$bench" --timeout-s 30 "$@") || fail "scale_bench $* exited $?"
  [[ $out == *" requests=512 "* ]] || fail "scale_bench $*: expected requests=512 in: $out"
  [[ $out == *" errors=0" ]] || fail "scale_bench $*: errors in: $out"
  # -1.00 where /proc/net/snmp cannot be read (a sandbox of its own)
  [[ $out =~ \ segments=(-1\.00|[0-9]+\.[0-9]+)\  ]] || fail "scale_bench $*: no segments figure in: $out"
  echo "ok: $out"
}

# 4 connections a shard: 512 = 1 shard * 4 * 128 = 2 * 4 * 64, and 16 divides each share.
run --variant local --threads 1 --connections 4 --requests 512
run --variant local --threads 2 --connections 4 --requests 512
run --variant pipelined --threads 1 --connections 4 --requests 512
run --variant pipelined --threads 2 --connections 4 --requests 512
run --variant cross --threads 2 --connections 4 --requests 512
run --variant cross-shape --threads 1 --connections 4 --requests 512
run --variant cross-shape --threads 2 --connections 4 --requests 512
run --variant cross-kernel --threads 2 --connections 4 --requests 512
run --variant accept --threads 1 --connections 4 --requests 512
run --variant accept --threads 2 --connections 4 --requests 512 --accept-mode thread
run --variant accept --threads 2 --connections 4 --requests 512 --accept-mode reuseport

# Refusals are messages and a non-zero exit, not crashes.
for v in cross cross-kernel; do
  if "$bench" --variant $v --threads 1 2>"${TEST_TMPDIR:-/tmp}/err"; then
    fail "$v on one shard was not refused"
  fi
  grep -q "needs --threads 2" "${TEST_TMPDIR:-/tmp}/err" || fail "no message for $v on one shard"
done
echo "PASS"
