#!/usr/bin/env bash
# Tests tools/pooltop against tests/tools/fake_metrics_server.py: the live view in a detached
# tmux session (both shards' figures, the sort keys, q quits with status 0), an unreachable URL
# in the view (the error, then the table once a server appears there), shard labels that are not
# numbers in the view and with --once (numbers first, in numeric order), servers that answer
# badly (a body cut short or badly chunked, a reply that is not HTTP, a body the parser fails
# on, one over the cap on a body, streamed or announced, or on its lines) or trickle, in the
# view (the error, and q still quits) and with --once, and --once (the table, --sort, exit 1
# with a one-line message for an unreachable URL, a body that does not parse, a bad answer, or
# none within the timeout), and file: and data: URLs refused at once (exit 2).
#   bazel test //tests/tools:pooltop_test      or      bash tests/tools/pooltop_test.sh
set -euo pipefail

if [[ -n ${TEST_SRCDIR:-} ]]; then
  root=$TEST_SRCDIR/$TEST_WORKSPACE
else
  root=$(cd "$(dirname "$0")/../.." && pwd)
fi
source "$root/tests/testing/wait_for.sh"
pooltop=$root/tools/pooltop
tmp=$(mktemp -d "${TEST_TMPDIR:-/tmp}/pooltop_test.XXXXXX")
# A private tmux server: never the user's, never another test's.
tmux_socket=pooltop_test_$$
session=
server_pids=()

tmux_() { tmux -L "$tmux_socket" -f /dev/null "$@"; }

cleanup() {
  tmux_ kill-server 2>/dev/null || true
  # A tmux server that exits leaves its socket file behind.
  rm -f "${TMUX_TMPDIR:-/tmp}/tmux-$(id -u)/$tmux_socket"
  for pid in "${server_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  if [[ -n $session ]]; then
    echo "--- the pane of $session:" >&2
    tmux_ capture-pane -p -t "$session" >&2 || true
    echo "--- pooltop's stderr:" >&2
    cat "$tmp/$session.err" >&2 || true
  fi
  exit 1
}


# A port the kernel just handed out as free, for the server that must come up on a known port.
free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# start_server NAME [--port N]: starts a fake server, sets $url to its /metrics.
start_server() {
  /usr/bin/python3 "$root/tests/tools/fake_metrics_server.py" "$tmp/$1.port" "${@:2}" &
  server_pids+=($!)
  wait_for 20 "fake server $1 to listen" test -s "$tmp/$1.port"
  url=http://127.0.0.1:$(<"$tmp/$1.port")/metrics
}

# start_view NAME URL [INTERVAL]: pooltop in a detached 160x40 window, at --interval 0.2
# unless INTERVAL; its exit status goes to a file (tmux 3.3's #{pane_dead_status} can stay
# empty).
start_view() {
  session=$1
  tmux_ new-session -d -s "$1" -x 160 -y 40 \
    "$(printf '%q ' "$pooltop" --url "$2" --interval "${3:-0.2}") \
     2>$(printf '%q' "$tmp/$1.err");
     echo \$? >$(printf '%q' "$tmp/$1.status")"
}

pane() { tmux_ capture-pane -p -t "$session"; }
pane_has() { pane | grep -Eq -- "$1"; }
# The shard column of the table's shard rows, top to bottom, e.g. "0 1".
order() { pane | awk '$1 ~ /^[0-9]+$/ && NF == 9 { printf "%s%s", sep, $1; sep = " " }'; }
order_is() { [[ $(order) == "$1" ]]; }
exited() { [[ -s $tmp/$session.status ]]; }
# The shard column of a table on stdin, top to bottom, whatever the labels.
shard_column() {
  awk '/^ *shard +outstanding/ { on = 1; next } /^ *total / { on = 0 }
       on && NF == 9 { printf "%s%s", sep, $1; sep = " " }'
}
# /badshard's labels by shard (see fake_metrics_server.py's BAD_SHARDS), and by high water,
# which grows with the shard's place in the exposition.
BAD_ORDER="0 1 2 10 -1 'a\\nb' tls"
BAD_BY_HIGH_WATER="'a\\nb' -1 tls 2 10 1 0"

# The fixture's figures (see fake_metrics_server.py); remote ret/s needs two samples, so a
# number there shows that the rate was computed.
RATE='[0-9]+\.[0-9]'
ROW0="^ +0 +[0-9]+ +90 +4 +8\.0 +75\.0 +$RATE +0\.50 +10 *$"
ROW1="^ +1 +[0-9]+ +140 +8 +16\.0 +50\.0 +$RATE +1\.00 +15 *$"
TOTAL="^total +[0-9]+ +230 +12 +24\.0 +58\.3 +$RATE +1\.50 +25 *$"
HEADER='^shard +outstanding +high water +chunks +MiB +hit % +remote ret/s +queued MiB'
HEADER+=' +connections *$'

start_server main

echo "live view: both shards' rows, the total row and the header line"
start_view live "$url"
wait_for 20 "shard 0's row" pane_has "$ROW0"
pane_has "$ROW1" || fail "no row for shard 1"
pane_has "$TOTAL" || fail "no total row"
pane_has "$HEADER" || fail "no column titles"
pane_has "^pooltop  $url  [0-9:]{8}  RSS [0-9]+\.[0-9] MiB  profiling on" || fail "no header line"
pane_has "^sort: shard asc" || fail "not sorted by shard"
order_is "0 1" || fail "shard rows in order '$(order)', not '0 1'"

echo "live view: keys 3 (sort by high water), r (reverse), s (next column), 1 (shard)"
tmux_ send-keys -t live 3
wait_for 20 "sort by high water" pane_has "^sort: high water desc"
order_is "1 0" || fail "by high water descending, rows in order '$(order)'"
tmux_ send-keys -t live r
wait_for 20 "reversed sort" pane_has "^sort: high water asc"
order_is "0 1" || fail "by high water ascending, rows in order '$(order)'"
tmux_ send-keys -t live s
wait_for 20 "sort by chunks" pane_has "^sort: chunks desc"
order_is "1 0" || fail "by chunks descending, rows in order '$(order)'"
tmux_ send-keys -t live 1
wait_for 20 "sort by shard" pane_has "^sort: shard asc"
order_is "0 1" || fail "by shard, rows in order '$(order)'"

echo "live view: q quits with status 0"
tmux_ send-keys -t live q
wait_for 20 "pooltop to exit" exited
[[ $(<"$tmp/live.status") == 0 ]] || fail "pooltop exited with status $(<"$tmp/live.status")"
[[ ! -s $tmp/live.err ]] || fail "pooltop wrote to stderr: $(<"$tmp/live.err")"

echo "live view: an unreachable URL shows the error, and the table once a server is there"
port=$(free_port)
start_view down "http://127.0.0.1:$port/metrics"
wait_for 20 "the unreachable error" \
  pane_has "^cannot reach http://127\.0\.0\.1:$port/metrics: .*Connection refused"
start_server late --port "$port"
wait_for 20 "shard 0's row once the server is up" pane_has "$ROW0"
pane_has "^sort: shard asc" || fail "the error is still shown"
tmux_ send-keys -t down q
wait_for 20 "pooltop to exit" exited
[[ $(<"$tmp/down.status") == 0 ]] || fail "pooltop exited with status $(<"$tmp/down.status")"

echo "live view: shard labels that are not numbers come after the numbers, q quits"
start_view badshard "${url%/metrics}/badshard"
badshard_shown() { [[ $(pane | shard_column) == "$BAD_ORDER" ]]; }
wait_for 20 "the shards in order '$BAD_ORDER'" badshard_shown
# Its own figures (the 5th shard's), and a rate: a second sample was shown as well.
wait_for 20 "tls's row" pane_has "^ +tls +[0-9]+ +290 +20 +40\.0 +-25\.0 +$RATE +2\.50 +30 *$"
tmux_ send-keys -t badshard q
wait_for 20 "pooltop to exit" exited
status=$(<"$tmp/badshard.status")
[[ $status == 0 ]] || fail "pooltop exited with status $status"
[[ ! -s $tmp/badshard.err ]] || fail "pooltop wrote to stderr: $(<"$tmp/badshard.err")"

# view_fails NAME WANT [INTERVAL]: the view of the fake server's /NAME (at --interval INTERVAL,
# default 0.2) shows an error, its URL (or "the body of" it) then WANT (an extended regex), and
# q still quits it with status 0.
view_fails() {
  start_view "$1" "${url%/metrics}/$1" "${3:-0.2}"
  wait_for 20 "the error of /$1" pane_has "^(the body of )?http://127\.0\.0\.1:[0-9]+/$1 $2"
  tmux_ send-keys -t "$1" q
  wait_for 20 "pooltop to exit" exited
  [[ $(<"$tmp/$1.status") == 0 ]] || fail "pooltop exited with status $(<"$tmp/$1.status")"
  [[ ! -s $tmp/$1.err ]] || fail "pooltop wrote to stderr: $(<"$tmp/$1.err")"
}
echo "live view: a body cut short or badly chunked, a reply that is not HTTP, a bad body"
view_fails short 'sent a bad HTTP answer: IncompleteRead\(95 bytes read'
view_fails badchunk 'sent a bad HTTP answer: IncompleteRead'
view_fails badstatus "sent a bad HTTP answer: BadStatusLine\\('SSH-2\\.0-"
view_fails badexposition 'does not parse as Prometheus text'
echo "live view: a server that trickles is given up on (--interval 0.2: after 1 s), q quits"
view_fails trickle 'took over 1 s'
# --interval 5, so 5 s to read 64 MiB (0.2 s on an idle machine): a loaded one must not turn
# the cap's message into a timeout's.
echo "live view: a body over the cap, streamed or announced, is given up on, q quits"
view_fails huge 'sent a body over 64 MiB, the cap \(MAX_BODY in tools/pool_scrape\.py\)$' 5
view_fails hugelength 'sent a body over 64 MiB, the cap' 5
session=

echo "--once: the table on stdout"
out=$("$pooltop" --url "$url" --interval 0.2 --once)
for want in "$HEADER" "$ROW0" "$ROW1" "$TOTAL" "^sort: shard asc"; do
  grep -Eq -- "$want" <<<"$out" || fail "--once output lacks /$want/:"$'\n'"$out"
done
out=$("$pooltop" --url "$url" --interval 0.2 --once --sort connections)
rows=$(awk '$1 ~ /^[0-9]+$/ && NF == 9 { printf "%s%s", sep, $1; sep = " " }' <<<"$out")
[[ $rows == "1 0" ]] || fail "--sort connections: rows in order '$rows':"$'\n'"$out"

echo "--once: shard labels that are not numbers come after the numbers, and sort by a column"
out=$("$pooltop" --url "${url%/metrics}/badshard" --interval 0.2 --once) ||
  fail "--once on /badshard exited $?"
[[ $(shard_column <<<"$out") == "$BAD_ORDER" ]] ||
  fail "/badshard: rows in order '$(shard_column <<<"$out")', not '$BAD_ORDER':"$'\n'"$out"
grep -Eq '^ *total +[0-9]+ ' <<<"$out" || fail "/badshard: no total row:"$'\n'"$out"
out=$("$pooltop" --url "${url%/metrics}/badshard" --interval 0.2 --once --sort "high water") ||
  fail "--once --sort 'high water' on /badshard exited $?"
[[ $(shard_column <<<"$out") == "$BAD_BY_HIGH_WATER" ]] ||
  fail "/badshard by high water: rows in order '$(shard_column <<<"$out")':"$'\n'"$out"

echo "--once: exit 1 and a message for an unreachable URL and for a body that does not parse"
port=$(free_port)
rc=0
"$pooltop" --url "http://127.0.0.1:$port/metrics" --once >"$tmp/out" 2>"$tmp/err" || rc=$?
((rc == 1)) || fail "unreachable URL: exit status $rc, not 1"
grep -q "^pooltop: cannot reach http://127.0.0.1:$port/metrics: " "$tmp/err" ||
  fail "unreachable URL: stderr is: $(<"$tmp/err")"
[[ ! -s $tmp/out ]] || fail "unreachable URL: stdout is not empty"
rc=0
"$pooltop" --url "${url%/metrics}/garbage" --once >"$tmp/out" 2>"$tmp/err" || rc=$?
((rc == 1)) || fail "garbage body: exit status $rc, not 1"
grep -q "does not parse as Prometheus text" "$tmp/err" ||
  fail "garbage body: stderr is: $(<"$tmp/err")"

echo "--once and the view: a URL that is not http:// or https:// is refused at once"
# urllib opens file: and data: URLs too, as responses without http.client's length.
for bad in "file://$tmp/out" "data:,libsock_x 1"; do
  for mode in --once ""; do
    rc=0
    timeout 20 "$pooltop" --url "$bad" $mode >"$tmp/out" 2>"$tmp/err" </dev/null || rc=$?
    ((rc == 2)) || fail "--url $bad $mode: exit status $rc, not 2; stderr: $(<"$tmp/err")"
    want="pooltop: error: cannot use the URL $bad: only http:// and https:// URLs are scraped"
    [[ $(tail -n 1 "$tmp/err") == "$want" ]] ||
      fail "--url $bad $mode: stderr does not end with '$want': $(<"$tmp/err")"
  done
done

# once_fails NAME WANT [INTERVAL]: pooltop --once on the fake server's /NAME (at --interval
# INTERVAL, default 0.2) exits 1, stdout empty, its stderr one line, "pooltop: ", the URL (or
# "the body of" it) then WANT (an extended regex). timeout(1) keeps a pooltop that hangs from
# hanging the test: 20 s is four times its longest timeout, 5 s.
once_fails() {
  local rc=0
  timeout 20 "$pooltop" --url "${url%/metrics}/$1" --interval "${3:-0.2}" --once >"$tmp/out" \
    2>"$tmp/err" || rc=$?
  ((rc == 1)) || fail "/$1: exit status $rc, not 1; stderr: $(<"$tmp/err")"
  [[ $(wc -l <"$tmp/err") == 1 ]] &&
    grep -Eq "^pooltop: (the body of )?http://127\.0\.0\.1:[0-9]+/$1 $2" "$tmp/err" ||
    fail "/$1: stderr is: $(<"$tmp/err")"
  [[ ! -s $tmp/out ]] || fail "/$1: stdout is not empty"
}
echo "--once: exit 1 and a message for a bad answer, a bad body, or one that trickles"
once_fails short 'sent a bad HTTP answer: IncompleteRead\(95 bytes read'
once_fails badchunk 'sent a bad HTTP answer: IncompleteRead'
once_fails badstatus "sent a bad HTTP answer: BadStatusLine\\('SSH-2\\.0-"
once_fails badexposition 'does not parse as Prometheus text'
once_fails trickle 'took over 1 s'
echo "--once: exit 1 and a message for a body over the cap, streamed or announced"
once_fails huge 'sent a body over 64 MiB, the cap \(MAX_BODY in tools/pool_scrape\.py\)$' 5
once_fails hugelength 'sent a body over 64 MiB, the cap' 5
echo "--once: exit 1 and a message for a body of more lines than the cap"
once_fails manylines \
  'sent 400,000 lines, over the cap of [0-9,]+ \(MAX_LINES in tools/pool_scrape\.py' 5

echo "PASS"
