#!/usr/bin/env bash
# How requests/s grow with shards (issue 15), with no outside load generator: for each N,
# bench/scale_bench runs N shards pinned to CPUs 0..N-1, each a closed system that drives the
# client ends of its own loopback connections against the real tools/http core, in each
# variant (scale_bench.cc's top comment has the details):
#   local             ping-pong, client and server ends on the same shard
#   pipelined         the same, 16 requests per write
#   cross             client ends on shard A, server ends on B = (A+1) % N; every response is
#                     written from B to a socket A owns, posted through A's inbox (N >= 2)
#   cross-shape       cross's two one-way pairs per connection, all ends on one shard: the
#                     shape's own cost, with nothing posted or crossing shards
#   cross-kernel      one connection, client end on A, server end on B: crossing shards in the
#                     kernel only, nothing posted (N >= 2)
#   accept-thread     accept storm: a new connection per request, the acceptor thread places
#   accept-reuseport  the same, one SO_REUSEPORT listener per shard
# Each run warms up for $WARMUP s and measures $SECS s; rounds interleave the variants (their
# order rotates) so drift on a noisy machine hits all alike, and the table gives the median
# (min-max) of requests/s, the median (min) CPU per request (the whole process's user + system
# CPU, clients included, over the measured interval), the median cores the process used (CPU
# seconds per second: a closed system is CPU-bound, so under N means other processes had the
# CPUs, and the speedup is the machine's, not the engine's), the median TCP segments the host
# sent per request (local: 2; see scale_bench.cc on cross's ACKs) and each shard's mean
# requests/s.
# Then, for each N, the CPU per request of cross, cross-shape and cross-kernel over local
# (cross over cross-shape: what crossing shards through the door adds), where both ran, as the
# ratio of the medians and as the median (min-max) of the rounds' own ratios, and
# (CALLGRIND=1, the default)
# user-space instructions per request of local ping-pong at N = 1 and N = 2 under callgrind:
# two runs of a fixed number of requests, $CG_REQUESTS and twice that, so that start-up and
# shutdown cancel out: (Ir(2R) - Ir(R)) / (requests(2R) - requests(R)). Last, the speedup of
# local ping-pong at the largest N over N = 1.
#   [ROUNDS=3] [SECS=3] [WARMUP=1] [CONNS=K] [VARIANTS="local cross ..."] [CALLGRIND=0]
#   [CG_REQUESTS=10000] bench/scale.sh [N...]      (default N: 1 2 ... nproc; 1 must be among them)
# CONNS: connections (accept: clients) per shard, default scale_bench's (64; accept 16).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3} secs=${SECS:-3} warmup=${WARMUP:-1}
variants=(${VARIANTS:-local pipelined cross cross-shape cross-kernel accept-thread accept-reuseport})
if (($# > 0)); then shard_counts=("$@"); else mapfile -t shard_counts < <(seq 1 "$(nproc)"); fi
max_n=0 has_one=0
for n in "${shard_counts[@]}"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "scale.sh: '$n' is not a shard count" >&2; exit 2; }
  if ((n > max_n)); then max_n=$n; fi
  if ((n == 1)); then has_one=1; fi
done
((has_one)) || { echo "scale.sh: N = 1 must be run: the speedup is over one shard" >&2; exit 2; }
for v in "${variants[@]}"; do
  case $v in local | pipelined | cross | cross-shape | cross-kernel | accept-thread | accept-reuseport) ;;
    *) echo "scale.sh: unknown variant '$v' in VARIANTS" >&2; exit 2 ;;
  esac
done
if [[ ${CALLGRIND:-1} == 1 ]]; then source tools/deps && deps_ensure --bench; fi

if ! log=$(bazel build -c opt //bench:scale_bench 2>&1); then
  echo "$log" >&2; echo "scale.sh: the build failed" >&2; exit 1
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
# A copy: the bazel-bin link follows whichever build ran last.
cp "$(bazel info -c opt bazel-bin 2>/dev/null)/bench/scale_bench" "$work/"
bench=$work/scale_bench

# argv_of VARIANT N: sets argv to scale_bench's arguments for it.
argv_of() {
  argv=(--threads "$2" --warmup-s "$warmup" --seconds "$secs")
  case $1 in
    accept-thread) argv+=(--variant accept --accept-mode thread) ;;
    accept-reuseport) argv+=(--variant accept --accept-mode reuseport) ;;
    *) argv+=(--variant "$1") ;;
  esac
  if [[ -n ${CONNS:-} ]]; then argv+=(--connections "$CONNS"); fi
}
# field LINE KEY: the value of KEY=... in a scale_bench line.
field() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k {print $2}'; }

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A rps cpu shard cores segs  # "variant/N" -> one value per run, space-separated
for ((r = 1; r <= rounds; r++)); do
  order=("${variants[@]:r % ${#variants[@]}}" "${variants[@]:0:r % ${#variants[@]}}")
  for n in "${shard_counts[@]}"; do
    for v in "${order[@]}"; do
      if [[ $v == cross || $v == cross-kernel ]] && ((n < 2)); then continue; fi
      argv_of "$v" "$n"
      if ! line=$("$bench" "${argv[@]}" 2>"$work/err"); then
        cat "$work/err" >&2; echo "scale.sh: scale_bench ${argv[*]} failed" >&2; exit 1
      fi
      rps[$v/$n]+="$(field "$line" rps) "
      cpu[$v/$n]+="$(field "$line" cpu_us) "
      shard[$v/$n]+="$(field "$line" shard_rps) "
      cores[$v/$n]+="$(field "$line" cores) "
      segs[$v/$n]+="$(field "$line" segments) "
    done
  done
  echo "scale.sh: round $r/$rounds done" >&2
done

# stats VALUES...: "median min max" (the median of an even count is the mean of the middle two).
stats() {
  printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1}
    END {m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print m, v[1], v[NR]}'
}
median() { stats "$@" | awk '{print $1}'; }
# per_shard LISTS...: each shard's mean requests/s over the runs (each LIST "a,b,..."), "a/b/...".
per_shard() {
  printf '%s\n' "$@" | awk -F, '{for (i = 1; i <= NF; i++) sum[i] += $i; n = NF; runs++}
    END {for (i = 1; i <= n; i++) printf "%s%.0f", (i > 1 ? "/" : ""), sum[i] / runs; print ""}'
}

echo
echo "load average before: $load_before; after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "scale_bench on $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), $rounds rounds of ${secs} s"
printf '%-17s %3s %10s %-19s %9s %9s %6s %6s  %s\n' variant N "req/s" "(min-max)" "cpu us/r" "(min)" \
  cores "segs/r" "req/s per shard (mean)"
for v in "${variants[@]}"; do
  for n in "${shard_counts[@]}"; do
    [[ -n ${rps[$v/$n]:-} ]] || continue
    read -r rm rmin rmax <<<"$(stats ${rps[$v/$n]})"
    read -r cm cmin _ <<<"$(stats ${cpu[$v/$n]})"
    printf '%-17s %3s %10.0f %-19s %9.2f %9.2f %6.2f %6.2f  %s\n' "$v" "$n" "$rm" "($rmin-$rmax)" \
      "$cm" "$cmin" "$(median ${cores[$v/$n]})" "$(median ${segs[$v/$n]})" "$(per_shard ${shard[$v/$n]})"
  done
done
echo
# ratio A B N: the median CPU per request of variant A over B's at N shards, if both ran; then
# the same ratio taken round by round (A's run over B's run of the same round, a few seconds
# apart) as "median (min-max)": a change in the machine's state between rounds, which moves
# both runs of a round alike, cancels out of these.
ratio() {
  [[ -n ${cpu[$1/$3]:-} && -n ${cpu[$2/$3]:-} ]] || return 0
  local -a a=(${cpu[$1/$3]}) b=(${cpu[$2/$3]}) each=()
  local i
  for i in "${!a[@]}"; do each+=("$(awk -v x="${a[i]}" -v y="${b[i]}" 'BEGIN {printf "%.4f", x / y}')"); done
  read -r pm pmin pmax <<<"$(stats "${each[@]}")"
  awk -v a="$(median "${a[@]}")" -v b="$(median "${b[@]}")" -v x="$1" -v y="$2" -v n="$3" \
    -v pm="$pm" -v pmin="$pmin" -v pmax="$pmax" \
    'BEGIN {printf "%s/%s CPU per request at %d shards: %.2f (%.2f / %.2f us); by round %.2f (%.2f-%.2f)\n",
            x, y, n, a / b, a, b, pm, pmin, pmax}'
}
for n in "${shard_counts[@]}"; do
  ratio cross local "$n"
  ratio cross-shape local "$n"
  ratio cross-kernel local "$n"
  ratio cross cross-shape "$n"
done

if [[ ${CALLGRIND:-1} == 1 ]]; then
  cg_requests=${CG_REQUESTS:-10000}
  echo
  printf '%-3s %12s %16s %12s\n' N requests instructions "per request"
  declare -A per_request
  for n in 1 2; do
    declare -A ir=() reqs=()
    for mult in 1 2; do
      cg_argv=(--variant local --threads "$n" --requests $((cg_requests * mult)) --timeout-s 600)
      if [[ -n ${CONNS:-} ]]; then cg_argv+=(--connections "$CONNS"); fi
      out=$work/cg-$n-$mult.out
      if ! line=$(valgrind --tool=callgrind --callgrind-out-file="$out" "$bench" "${cg_argv[@]}" \
                  2>"$work/err"); then
        cat "$work/err" >&2; echo "scale.sh: callgrind of scale_bench ${cg_argv[*]} failed" >&2; exit 1
      fi
      ir[$mult]=$(awk '/^(totals|summary):/ {print $2; exit}' "$out")
      reqs[$mult]=$(field "$line" requests)
    done
    per_request[$n]=$(awk -v a="${ir[1]}" -v b="${ir[2]}" -v ra="${reqs[1]}" -v rb="${reqs[2]}" \
      'BEGIN {printf "%.0f", (b - a) / (rb - ra)}')
    printf '%-3s %12s %16s %12s\n' "$n" "$((reqs[2] - reqs[1]))" "$((ir[2] - ir[1]))" "${per_request[$n]}"
  done
  awk -v a="${per_request[1]}" -v b="${per_request[2]}" \
    'BEGIN {printf "instructions per request, 2 shards over 1: %.3f (%+.1f%%)\n", b / a, (b / a - 1) * 100}'
fi

if [[ -z ${rps[local/1]:-} ]]; then exit 0; fi  # the speedup is local ping-pong's
echo
awk -v a="$(median ${rps[local/1]})" -v b="$(median ${rps[local/$max_n]})" -v n="$max_n" \
  'BEGIN {printf "speedup at %d shards: %.2f (ideal %d)\n", n, b / a, n}'
