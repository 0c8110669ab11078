#!/usr/bin/env bash
# Tests tools/pool_record and tools/pool_plot against tests/tools/fake_metrics_server.py: ~1.5 s
# recorded at 0.2 s (the CSV's header, both shards, histogram buckets, the TLS series told apart
# by their labels column, time going up), a run stopped by SIGTERM (exit 0, whole lines), an
# unreachable URL (exit 1, no file), file: and data: URLs (refused at once, exit 2), a rerun
# without a sample (the last recording kept as it was), an --out it cannot write (a directory,
# one in a directory that does not exist: a one-line message, exit 1), a write cut short by the
# file size limit (the file ends with the last whole sample, exit 1), a server that never
# answers and one that trickles (--duration bounds the run: missed samples skipped, a sample cut
# at --timeout in all, each failure reported, exit 1), servers that answer badly (a body cut
# short or badly chunked, a reply that is not HTTP, a body the parser fails on, a body over the
# cap, streamed or announced, or over the cap on lines: each sample skipped with a warning, exit
# 1; one of as many lines as the cap taken); then the charts as non-empty SVG (valid XML) and
# PNG, from a recording without the histograms and process series (?name=libsock_pool_), those
# charts skipped with a message and the others still drawn, a last line without its newline (cut
# inside a value that still parses) ignored with a message, CSVs it cannot draw (not UTF-8, a
# shard or le that is not a number, a field over csv's limit) and an --out that is a file, a
# directory it may not write into or one where a directory has a chart's file name refused with
# a one-line message and exit 1 (the files written before listed), sample times past 100,000 s
# kept in full, and a CSV of the format before the labels column still drawn.
#   bazel test //tests/tools:pool_record_plot_test   or   bash tests/tools/pool_record_plot_test.sh
set -euo pipefail

if [[ -n ${TEST_SRCDIR:-} ]]; then
  root=$TEST_SRCDIR/$TEST_WORKSPACE
else
  root=$(cd "$(dirname "$0")/../.." && pwd)
fi
source "$root/tests/testing/wait_for.sh"
tmp=$(mktemp -d "${TEST_TMPDIR:-/tmp}/pool_record_plot_test.XXXXXX")
server_pid=

cleanup() {
  [[ -z $server_pid ]] || kill "$server_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }


/usr/bin/python3 "$root/tests/tools/fake_metrics_server.py" "$tmp/port" &
server_pid=$!
wait_for 20 "the fake server to listen" test -s "$tmp/port"
url=http://127.0.0.1:$(<"$tmp/port")/metrics

echo "pool_record: 1.5 s at 0.2 s intervals"
"$root/tools/pool_record" --url "$url" --interval 0.2 --duration 1.5 --out "$tmp/all.csv"
csv=$tmp/all.csv
[[ $(head -n 1 "$csv") == "time_s,metric,shard,le,labels,value" ]] ||
  fail "header: $(head -n 1 "$csv")"
for want in '^[0-9.]+,libsock_pool_outstanding_packets,0,,,[0-9]+$' \
            '^[0-9.]+,libsock_pool_outstanding_packets,1,,,[0-9]+$' \
            '^[0-9.]+,libsock_pool_checkouts_total,1,,,[0-9]+$' \
            '^[0-9.]+,libsock_process_resident_bytes,,,,[0-9]+$' \
            '^[0-9.]+,libsock_packet_lifetime_seconds_bucket,0,4\.8e-05,,[0-9]+$' \
            '^[0-9.]+,libsock_packet_lifetime_seconds_bucket,1,\+Inf,,[0-9]+$' \
            '^[0-9.]+,libsock_packet_lifetime_seconds_sum,0,,,[0-9.]+$' \
            '^[0-9.]+,libsock_write_size_bytes_count,1,,,[0-9]+$' \
            '^[0-9.]+,libsock_tls_handshakes_total,,,kind=resumed,[0-9]+$' \
            '^[0-9.]+,libsock_tls_handshake_failures_total,,,reason=timeout,[0-9]+$' \
            '^[0-9.]+,libsock_tls_handshake_seconds_bucket,,0\.0005,,[0-9]+$'; do
  grep -Eq -- "$want" "$csv" || fail "no row like /$want/ in $csv"
done
# Every row has 6 fields; sample times go up from about 0, and there are at least two.
awk -F, 'NR > 1 && NF != 6 { print "line " NR ": " $0; exit 1 }' "$csv" ||
  fail "a row without 6 fields"
# A row per series per sample: all but the value tell the rows of one sample apart (the TLS
# families' series differ only in their kind= or reason= label).
awk -F, 'NR > 1 { key = $0; sub(/,[^,]*$/, "", key); if (seen[key]++) { print; exit 1 } }' \
  "$csv" >"$tmp/dup" || fail "two rows share time_s,metric,shard,le,labels: $(<"$tmp/dup")"
times=$(tail -n +2 "$csv" | cut -d, -f1 | uniq)
awk '{ exit !($1 < 0.2) }' <<<"$times" || fail "the first sample is at $(head -n 1 <<<"$times") s"
sort -cgu <<<"$times" || fail "sample times do not go up: $(tr '\n' ' ' <<<"$times")"
(($(wc -l <<<"$times") >= 2)) || fail "only one sample"

echo "pool_record: SIGTERM stops it with exit 0 and whole lines"
"$root/tools/pool_record" --url "$url" --interval 0.2 --out "$tmp/term.csv" 2>"$tmp/term.err" &
record_pid=$!
two_samples() { (($(tail -n +2 "$tmp/term.csv" 2>/dev/null | cut -d, -f1 | uniq | wc -l) >= 2)); }
wait_for 20 "two samples in term.csv" two_samples
kill -TERM "$record_pid"
rc=0
wait "$record_pid" || rc=$?
((rc == 0)) || fail "pool_record exited $rc after SIGTERM: $(<"$tmp/term.err")"
[[ $(tail -c 1 "$tmp/term.csv") == "" ]] || fail "term.csv does not end with a whole line"

echo "pool_record: an unreachable URL is skipped with a warning; no sample at all exits 1"
# A port the kernel just handed out as free: nothing listens there.
port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
rc=0
"$root/tools/pool_record" --url "http://127.0.0.1:$port/metrics" --interval 0.2 --duration 0.3 \
  --out "$tmp/none.csv" 2>"$tmp/none.err" || rc=$?
((rc == 1)) || fail "unreachable URL: exit status $rc, not 1"
grep -q "skipped: cannot reach http://127.0.0.1:$port/metrics" "$tmp/none.err" ||
  fail "unreachable URL: stderr is: $(<"$tmp/none.err")"
[[ ! -e $tmp/none.csv ]] || fail "a run without a sample left none.csv: $(<"$tmp/none.csv")"

echo "pool_record: a URL that is not http:// or https:// is refused before any sample"
# urllib opens file: and data: URLs too, as responses without http.client's length.
for bad in "file://$csv" "data:,libsock_x 1"; do
  rc=0
  "$root/tools/pool_record" --url "$bad" --interval 0.2 --duration 0.3 --out "$tmp/scheme.csv" \
    2>"$tmp/scheme.err" || rc=$?
  ((rc == 2)) || fail "--url $bad: exit status $rc, not 2; stderr: $(<"$tmp/scheme.err")"
  want="pool_record: error: cannot use the URL $bad: only http:// and https:// URLs are scraped"
  [[ $(tail -n 1 "$tmp/scheme.err") == "$want" ]] ||
    fail "--url $bad: stderr does not end with '$want': $(<"$tmp/scheme.err")"
  [[ ! -e $tmp/scheme.csv ]] || fail "--url $bad: scheme.csv written"
done

echo "pool_record: a rerun that gets no sample (a wrong URL) leaves the last recording as it was"
mkdir "$tmp/rerun"
cp "$csv" "$tmp/rerun/run.csv"
rc=0
"$root/tools/pool_record" --url "http://127.0.0.1:$port/metrics" --interval 0.2 --duration 0.3 \
  --out "$tmp/rerun/run.csv" 2>"$tmp/rerun.err" || rc=$?
((rc == 1)) || fail "rerun: exit status $rc, not 1; stderr: $(<"$tmp/rerun.err")"
cmp -s "$csv" "$tmp/rerun/run.csv" ||
  fail "rerun: run.csv changed: $(head -n 3 "$tmp/rerun/run.csv")"
[[ $(ls -A "$tmp/rerun") == run.csv ]] ||
  fail "rerun: files left beside run.csv: $(ls -A "$tmp/rerun")"

# out_refused OUT WANT: pool_record --out OUT on the working fake server exits 1 before any
# sample, its stderr the one line "pool_record: WANT".
out_refused() {
  local rc=0
  "$root/tools/pool_record" --url "$url" --interval 0.2 --duration 0.3 --out "$1" \
    2>"$tmp/out.err" || rc=$?
  ((rc == 1)) || fail "--out $1: exit status $rc, not 1; stderr: $(<"$tmp/out.err")"
  [[ $(<"$tmp/out.err") == "pool_record: $2" ]] ||
    fail "--out $1: stderr is not 'pool_record: $2' but: $(<"$tmp/out.err")"
}
echo "pool_record: an --out in a directory that does not exist, and one that is a directory"
out_refused "$tmp/missing/x.csv" "cannot write $tmp/missing/x.csv: No such file or directory"
mkdir "$tmp/outdir"
out_refused "$tmp/outdir" "cannot write $tmp/outdir: Is a directory"
[[ -z $(ls -A "$tmp/outdir") ]] || fail "files left in the --out directory: $(ls -A "$tmp/outdir")"

echo "pool_record: a write cut short (the file size limit, as a full disk) keeps whole samples"
# The limit (1 KiB blocks) holds the header and the first sample, and half the second: the
# second's write is cut (its first bytes written, then EFBIG), not refused whole. Python
# ignores SIGXFSZ, so the write fails rather than the process.
first=$(awk -F, 'NR == 1 { n = length($0) + 1; next } NR == 2 { t = $1 }
                 $1 == t { n += length($0) + 1 } END { print n }' "$csv")
blocks=$(((first + first / 2) / 1024))
rc=0
(ulimit -f "$blocks" && exec "$root/tools/pool_record" --url "$url" --interval 0.2 --duration 5 \
  --out "$tmp/full.csv") 2>"$tmp/full.err" || rc=$?
((rc == 1)) || fail "file size limit: exit status $rc, not 1; stderr: $(<"$tmp/full.err")"
grep -qxF "pool_record: cannot write $tmp/full.csv: File too large" "$tmp/full.err" ||
  fail "file size limit: stderr is: $(<"$tmp/full.err")"
! grep -vq '^pool_record: ' "$tmp/full.err" ||
  fail "file size limit: stderr is: $(<"$tmp/full.err")"
[[ $(tail -c 1 "$tmp/full.csv") == "" ]] || fail "full.csv does not end with a whole line"
awk -F, 'NR > 1 && NF != 6 { print "line " NR ": " $0; exit 1 }' "$tmp/full.csv" ||
  fail "full.csv: a row without 6 fields"
(($(tail -n +2 "$tmp/full.csv" | cut -d, -f1 | uniq | wc -l) == 1)) ||
  fail "full.csv does not hold exactly the first sample"

# record_stuck NAME: pool_record on the fake server's /NAME at 0.2 s for 1 s, with --timeout 1.
# A recorder that counts --duration in samples, catches up on missed ones or times out each
# read alone runs 6 s or more (or for ever): the bound, 4 s, tells that from wall time plus
# one sample's timeout with room to spare. timeout(1) only keeps a broken recorder from
# hanging the test.
record_stuck() {
  local start=$EPOCHREALTIME rc=0 elapsed
  timeout 30 "$root/tools/pool_record" --url "http://127.0.0.1:$(<"$tmp/port")/$1" \
    --interval 0.2 --timeout 1 --duration 1 --out "$tmp/$1.csv" 2>"$tmp/$1.err" || rc=$?
  elapsed=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')
  ((rc == 1)) || fail "/$1: exit status $rc, not 1; stderr: $(<"$tmp/$1.err")"
  awk -v t="$elapsed" 'BEGIN { exit !(t < 4) }' || fail "/$1: --duration 1 ran $elapsed s"
  grep -q "skipped: .*/$1" "$tmp/$1.err" || fail "/$1: no skipped sample in: $(<"$tmp/$1.err")"
  grep -q "no sample of .*/$1 succeeded" "$tmp/$1.err" || fail "/$1: stderr: $(<"$tmp/$1.err")"
}
echo "pool_record: a server that never answers, and one that trickles, end the run in time"
record_stuck hang
record_stuck trickle

# record_bad NAME WANT [ARGS...]: pool_record on the fake server's /NAME, which answers, but
# badly: each sample is skipped with a warning matching WANT (an extended regex) and the run
# goes on (two or more skipped), then exits 1 as none succeeded; stderr holds only its
# messages. ARGS go after --interval 0.2 --duration 0.5, and so override them.
record_bad() {
  local rc=0
  "$root/tools/pool_record" --url "http://127.0.0.1:$(<"$tmp/port")/$1" --interval 0.2 \
    --duration 0.5 "${@:3}" --out "$tmp/$1.csv" 2>"$tmp/$1.err" || rc=$?
  ! grep -vq '^pool_record: ' "$tmp/$1.err" || fail "/$1: stderr is: $(<"$tmp/$1.err")"
  ((rc == 1)) || fail "/$1: exit status $rc, not 1; stderr: $(<"$tmp/$1.err")"
  (($(grep -Ec "skipped: (the body of )?http://127\.0\.0\.1:[0-9]+/$1 $2" "$tmp/$1.err") >= 2)) ||
    fail "/$1: not two samples skipped with /$2/; stderr: $(<"$tmp/$1.err")"
  grep -q "no sample of .*/$1 succeeded" "$tmp/$1.err" || fail "/$1: stderr: $(<"$tmp/$1.err")"
}
echo "pool_record: a body cut short or badly chunked and a reply that is not HTTP are skipped"
record_bad short 'sent a bad HTTP answer: IncompleteRead\(95 bytes read, 4905 more expected\)'
record_bad badchunk 'sent a bad HTTP answer: IncompleteRead'
record_bad badstatus "sent a bad HTTP answer: BadStatusLine\\('SSH-2\\.0-"
echo "pool_record: a body the parser fails on with IndexError is skipped"
record_bad badexposition 'does not parse as Prometheus text'
echo "pool_record: a body over the cap, streamed or announced, is skipped"
# --timeout 5: 64 MiB read takes 0.2 s on an idle machine, and a loaded one must not turn the
# cap's message into a timeout's; samples every 0.1 s for 1 s still make two or more.
record_bad huge 'sent a body over 64 MiB, the cap \(MAX_BODY in tools/pool_scrape\.py\)$' \
  --interval 0.1 --duration 1 --timeout 5
record_bad hugelength 'sent a body over 64 MiB, the cap'
echo "pool_record: a body of more lines than the cap is skipped, one of as many is taken"
# 400,000 short lines: 10 MB, under the cap on bytes, but ~200 MB parsed. Each sample reads the
# 10 MB (over 0.5 s here beside another test): --interval 1 for 3 s still makes two or more.
record_bad manylines \
  'sent 400,000 lines, over the cap of [0-9,]+ \(MAX_LINES in tools/pool_scrape\.py' \
  --interval 1 --duration 3 --timeout 10
max_lines=$(cd "$root/tools" &&
  /usr/bin/python3 -c 'import pool_scrape; print(pool_scrape.MAX_LINES)')
"$root/tools/pool_record" --url "${url%/metrics}/manylines?lines=$max_lines" --duration 0 \
  --timeout 20 --out "$tmp/atcap.csv" 2>"$tmp/atcap.err" ||
  fail "a body of MAX_LINES ($max_lines) lines: $(<"$tmp/atcap.err")"
(($(wc -l <"$tmp/atcap.csv") == max_lines)) ||
  fail "a body of MAX_LINES lines: $(wc -l <"$tmp/atcap.csv") lines in atcap.csv"

echo "pool_plot: every chart, as SVG and PNG"
"$root/tools/pool_plot" "$csv" --out "$tmp/plots" --title "fake server" >"$tmp/plot.out"
for chart in outstanding chunk_bytes rss_vs_pool packet_lifetime write_size queue_time \
             flush_packets peak_queued; do
  for ext in svg png dat gp; do
    file=$tmp/plots/$chart.$ext
    [[ -s $file ]] || fail "$file is missing or empty"
    grep -qxF "$file" "$tmp/plot.out" || fail "$file is not in pool_plot's list"
  done
  /usr/bin/python3 -c 'import sys, xml.etree.ElementTree as x; x.parse(sys.argv[1])' \
    "$tmp/plots/$chart.svg" || fail "$chart.svg is not valid XML"
  [[ $(head -c 8 "$tmp/plots/$chart.png" | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]] ||
    fail "$chart.png is not a PNG"
done

echo "pool_plot: a recording of libsock_pool_ only skips the other charts, draws the rest"
"$root/tools/pool_record" --url "$url?name=libsock_pool_" --interval 0.2 --duration 0.5 \
  --out "$tmp/pool.csv" 2>/dev/null
"$root/tools/pool_plot" "$tmp/pool.csv" --out "$tmp/pool_plots" >/dev/null 2>"$tmp/pool.err"
for file in outstanding.svg outstanding.png chunk_bytes.svg chunk_bytes.png; do
  [[ -s $tmp/pool_plots/$file ]] || fail "$file is missing or empty"
done
for want in "skipping rss_vs_pool: the CSV has no libsock_process_resident_bytes" \
            "skipping packet_lifetime: the CSV has no libsock_packet_lifetime_seconds_bucket"; do
  grep -qF "$want" "$tmp/pool.err" || fail "no message '$want'; stderr: $(<"$tmp/pool.err")"
done
[[ ! -e $tmp/pool_plots/rss_vs_pool.svg ]] || fail "rss_vs_pool drawn without its series"

echo "pool_plot: a last line without its newline is not charted"
# As a reader may find a file still being recorded: its last line cut inside a value.
{ cat "$csv"; printf '99.5,libsock_pool_outstanding_packets,0,,,262'; } >"$tmp/cut.csv"
"$root/tools/pool_plot" "$tmp/cut.csv" --out "$tmp/cut_plots" >/dev/null 2>"$tmp/cut.err" ||
  fail "pool_plot on a cut CSV: $(<"$tmp/cut.err")"
cmp -s "$tmp/plots/outstanding.dat" "$tmp/cut_plots/outstanding.dat" ||
  fail "the cut last line was charted: $(tail -n 2 "$tmp/cut_plots/outstanding.dat")"
grep -qF "$tmp/cut.csv: ignoring the last line, which has no newline" "$tmp/cut.err" ||
  fail "no message for the cut last line; stderr: $(<"$tmp/cut.err")"

# plot_refuses NAME MESSAGE [--out DIR]: pool_plot on $tmp/NAME.csv exits 1, its stderr the
# one line "pool_plot: MESSAGE", and prints no file written.
plot_refuses() {
  local rc=0
  "$root/tools/pool_plot" "$tmp/$1.csv" --out "$tmp/$1_plots" "${@:3}" >"$tmp/$1.out" \
    2>"$tmp/$1.err" || rc=$?
  ((rc == 1)) || fail "$1.csv: exit status $rc, not 1; stderr: $(<"$tmp/$1.err")"
  [[ $(<"$tmp/$1.err") == "pool_plot: $2" ]] ||
    fail "$1.csv: stderr is not 'pool_plot: $2' but: $(<"$tmp/$1.err")"
  [[ ! -s $tmp/$1.out ]] || fail "$1.csv: files listed: $(<"$tmp/$1.out")"
}
header=time_s,metric,shard,le,labels,value
echo "pool_plot: a file that is not UTF-8, a shard or le that is not a number, a field too long"
cp "$tmp/plots/outstanding.png" "$tmp/binary.csv"
plot_refuses binary "$tmp/binary.csv is not a pool_record CSV (its header is not $header)"
{ cat "$csv"; printf '99.5,libsock_pool_outstanding_packets,0,,,\xff\xfe\n'; } >"$tmp/corrupt.csv"
plot_refuses corrupt "$tmp/corrupt.csv:$(wc -l <"$tmp/corrupt.csv"): not a $header row"
printf '%s\n' "$header" '0.2,libsock_pool_outstanding_packets,0,,,5' \
  '0.2,libsock_pool_outstanding_packets,one,,,5' >"$tmp/shard.csv"
plot_refuses shard "$tmp/shard.csv:3: the shard 'one' is not a shard number"
printf '%s\n' "$header" '0.2,libsock_packet_lifetime_seconds_bucket,0,abc,,5' >"$tmp/le.csv"
plot_refuses le "$tmp/le.csv:2: the le 'abc' is not a number"
# csv's limit on a field is 128 KiB.
printf '%s\n0.2,libsock_pool_outstanding_packets,0,,%0131073d,5\n' "$header" 0 >"$tmp/long.csv"
plot_refuses long "$tmp/long.csv:2: field larger than field limit (131072)"

echo "pool_plot: an --out that is a file"
cp "$csv" "$tmp/file.csv"
plot_refuses file "cannot make the directory $tmp/file.csv: File exists" --out "$tmp/file.csv"

# why_not_create DIR: why a file cannot be made in DIR, as strerror words it (pool_plot's
# message ends with it); fails, leaving nothing there, if one can.
why_not_create() {
  local err
  if err=$({ : >"$1/probe"; } 2>&1); then
    rm -f "$1/probe"
    return 1
  fi
  echo "${err##*: }"
}
echo "pool_plot: an --out it may not write into"
cp "$csv" "$tmp/denied.csv"
mkdir "$tmp/denied_plots"
chmod 555 "$tmp/denied_plots"
out=$tmp/denied_plots
if ! why=$(why_not_create "$out"); then
  # Root: mode bits stop nobody. sysfs makes no file for anyone (EACCES, or EROFS where it is
  # mounted read-only); without it nothing here stops root.
  out=/sys
  echo "  as root, mode 555 does not stop the writes: --out $out instead"
  if [[ ! -d $out ]] || ! why=$(why_not_create "$out"); then
    echo "  NOTE: skipped: no directory here that root may not write into"
    out=
  fi
fi
[[ -z $out ]] || plot_refuses denied "cannot write $out/outstanding.dat: $why" --out "$out"

echo "pool_plot: a directory of a chart's file name in --out; the files before it are listed"
mkdir -p "$tmp/isdir/chunk_bytes.dat"  # the second chart's: outstanding is drawn first
rc=0
"$root/tools/pool_plot" "$csv" --out "$tmp/isdir" >"$tmp/isdir.out" 2>"$tmp/isdir.err" || rc=$?
((rc == 1)) || fail "isdir: exit status $rc, not 1; stderr: $(<"$tmp/isdir.err")"
want="pool_plot: cannot write $tmp/isdir/chunk_bytes.dat: Is a directory"
[[ $(<"$tmp/isdir.err") == "$want" ]] ||
  fail "isdir: stderr is not '$want' but: $(<"$tmp/isdir.err")"
want=$(for ext in dat gp svg png; do echo "$tmp/isdir/outstanding.$ext"; done)
[[ $(<"$tmp/isdir.out") == "$want" ]] || fail "isdir: files listed: $(<"$tmp/isdir.out")"

echo "pool_plot: sample times past 100,000 s keep every digit"
# A recording of over a day: %g's 6 digits would print 1234560.5 as 1.23456e+06, and put every
# sample of ten seconds at one x.
{ echo "$header"
  for t in 1234560.000 1234560.500 1234561.000 1234561.500 1234569.999; do
    echo "$t,libsock_pool_outstanding_packets,0,,,5"
  done; } >"$tmp/long.csv"
"$root/tools/pool_plot" "$tmp/long.csv" --out "$tmp/long_plots" >/dev/null 2>"$tmp/long.err" ||
  fail "pool_plot on long.csv: $(<"$tmp/long.err")"
times=$(tail -n +2 "$tmp/long_plots/outstanding.dat" | cut -d' ' -f1 | tr '\n' ' ')
[[ $times == "1234560.0 1234560.5 1234561.0 1234561.5 1234569.999 " ]] ||
  fail "outstanding.dat's times are: $times"

echo "pool_plot: a CSV from before the labels column is still drawn"
cut -d, -f1-4,6 "$csv" >"$tmp/old.csv"  # the TLS series of one family share a key there
"$root/tools/pool_plot" "$tmp/old.csv" --out "$tmp/old_plots" >/dev/null 2>"$tmp/old.err" ||
  fail "pool_plot on the old format: $(<"$tmp/old.err")"
cmp -s "$tmp/plots/outstanding.dat" "$tmp/old_plots/outstanding.dat" ||
  fail "the old format's outstanding.dat differs from the new one's"

echo "PASS"
