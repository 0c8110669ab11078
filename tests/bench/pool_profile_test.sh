#!/usr/bin/env bash
# Tests bench/pool_profile.sh in a copy of its tree, with stubs that record their calls: tools/deps
# (installs nothing), bazel (builds nothing), wrk (no load), and an http_server that is
# tests/tools/fake_metrics_server.py announced with http_server's listening line. Names that are
# not its scenarios ("", "../../x", "keepalive/..", "bogus", a name with a space) are refused
# with exit 2 before anything runs, even after a good one, and delete nothing; a scenario run
# on the fake server replaces that scenario's results (a recording from the port the server
# printed, the charts, load_end_s counted from the recording's first sample); a server that
# exits at its start, or during the run (its child still answering on the port), ends it with
# exit 1 and no results replaced.
#   bazel test //tests/bench:pool_profile_test   or   bash tests/bench/pool_profile_test.sh
set -euo pipefail

if [[ -n ${TEST_SRCDIR:-} ]]; then
  root=$TEST_SRCDIR/$TEST_WORKSPACE
else
  root=$(cd "$(dirname "$0")/../.." && pwd)
fi
source "$root/tests/testing/wait_for.sh"
tmp=$(mktemp -d "${TEST_TMPDIR:-/tmp}/pool_profile_test.XXXXXX")

cleanup() {
  # The fake server a stub started (the "die" stub leaves it running, as an orphan would be).
  [[ ! -s $tmp/fake.pid ]] || kill "$(<"$tmp/fake.pid")" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }

repo=$tmp/repo
mkdir -p "$repo/bench/pool_profile/keepalive" "$repo/tools" "$repo/x" "$tmp/bin" \
  "$tmp/bazel-bin/tools"
cp "$root/bench/pool_profile.sh" "$root/bench/children.sh" "$root/bench/pool_report.py" \
  "$repo/bench/"
cp "$root/tools/pool_record" "$root/tools/pool_scrape.py" "$root/tools/pool_plot" "$repo/tools/"
echo kept >"$repo/bench/pool_profile/keepalive/run.csv"
echo kept >"$repo/bench/pool_profile/REPORT.md"
echo kept >"$repo/x/kept"
echo 'deps_ensure() { :; }' >"$repo/tools/deps"
cat >"$tmp/bin/bazel" <<EOF
#!/usr/bin/env bash
echo "bazel \$*" >>"$tmp/calls"
[[ \$1 != info ]] || echo "$tmp/bazel-bin"
EOF
cat >"$tmp/bin/wrk" <<EOF
#!/usr/bin/env bash
echo "wrk \$*" >>"$tmp/calls"
echo "Requests/sec:  1000.00"
EOF
# STUB_MODE: up (serves until SIGTERM), fail (exits at once, as a server that cannot listen),
# die (exits once the load began, leaving the fake server answering on its port).
cat >"$tmp/bazel-bin/tools/http_server" <<EOF
#!/usr/bin/env bash
echo "http_server \$*" >>"$tmp/calls"
if [[ \$STUB_MODE == fail ]]; then echo "stub: cannot listen" >&2; exit 3; fi
rm -f "$tmp/port"
/usr/bin/python3 "$root/tests/tools/fake_metrics_server.py" "$tmp/port" &
fake=\$!
echo "\$fake" >"$tmp/fake.pid"
for _ in \$(seq 200); do [[ -s $tmp/port ]] && break; sleep 0.05; done
echo "http_server listening on http://0.0.0.0:\$(<"$tmp/port")/"
if [[ \$STUB_MODE == die ]]; then
  for _ in \$(seq 600); do grep -qs '^wrk ' "$tmp/calls" && exit 1; sleep 0.05; done
  exit 1
fi
trap 'kill "\$fake"; exit 0' TERM
wait
EOF
chmod +x "$tmp/bin/bazel" "$tmp/bin/wrk" "$tmp/bazel-bin/tools/http_server"
export STUB_MODE=up

# profile ARGS...: the script in the copy, stubs first on PATH; its status in rc, its stderr in
# $tmp/err. timeout(1) only keeps a broken script from hanging the test.
profile() {
  rc=0
  rm -f "$tmp/calls"
  PATH=$tmp/bin:$PATH timeout 120 "$repo/bench/pool_profile.sh" "$@" >"$tmp/out" 2>"$tmp/err" ||
    rc=$?
}
tree() { (cd "$repo" && find . -print0 | sort -z | xargs -0 stat -c '%n %s %Y'); }

echo "names that are not scenarios are refused before anything runs, and delete nothing"
before=$(tree)
for name in "" "../../x" "keepalive/.." "bogus" "keepalive pipelined"; do
  for first in "" keepalive; do  # alone, and after a good name: all are checked first
    profile ${first:+"$first"} "$name"
    ((rc == 2)) || fail "'$name': exit status $rc, not 2; stderr: $(<"$tmp/err")"
    want="pool_profile.sh: unknown scenario '$name' (scenarios: keepalive pipelined slow files"
    want+=" churn burst_idle)"
    [[ $(<"$tmp/err") == "$want" ]] || fail "'$name': stderr is not '$want' but: $(<"$tmp/err")"
    [[ ! -e $tmp/calls ]] || fail "'$name': ran $(<"$tmp/calls")"
    [[ $(tree) == "$before" ]] ||
      fail "'$name': the tree changed: $(diff <(echo "$before") <(tree))"
  done
done

echo "a server that exits at its start ends the run, with its log; the results stay"
STUB_MODE=fail profile keepalive
((rc == 1)) || fail "fail: exit status $rc, not 1; stderr: $(<"$tmp/err")"
grep -qx "pool_profile.sh: keepalive: http_server exited at its start; the server's log:" \
  "$tmp/err" && grep -qx "stub: cannot listen" "$tmp/err" || fail "fail: stderr: $(<"$tmp/err")"
! grep -q '^wrk ' "$tmp/calls" || fail "fail: the load ran: $(<"$tmp/calls")"
[[ $(tree) == "$before" ]] || fail "fail: the tree changed: $(diff <(echo "$before") <(tree))"

echo "a scenario on a server that runs replaces its results"
profile keepalive
((rc == 0)) || fail "up: exit status $rc; stderr: $(<"$tmp/err")"
grep -q '^http_server .*--port 0 ' "$tmp/calls" || fail "up: calls: $(<"$tmp/calls")"
port=$(<"$tmp/port")
grep -qx "wrk -t2 -c64 -d10s http://127.0.0.1:$port/" "$tmp/calls" ||
  fail "up: the load was not aimed at the server's port $port: $(<"$tmp/calls")"
dir=$repo/bench/pool_profile/keepalive
grep -q '^[0-9.]*,libsock_pool_outstanding_packets,1,,,[0-9]*$' "$dir/run.csv" ||
  fail "up: run.csv is not a recording: $(head -n 3 "$dir/run.csv")"
for file in outstanding.svg outstanding.png load.txt status.html; do
  [[ -s $dir/$file ]] || fail "up: no $file in $dir: $(ls "$dir")"
done
! compgen -G "$dir/*.dat" >/dev/null && ! compgen -G "$dir/*.gp" >/dev/null ||
  fail "up: gnuplot's files left: $(ls "$dir")"
# The load (a stub) ends at once: 2 s of baseline after the first sample, give or take a poll.
end=$(sed -n 's/^load_end_s //p' "$dir/load.txt")
awk -v t="$end" 'BEGIN { exit !(t >= 2 && t < 3) }' || fail "up: load_end_s is '$end', not 2.x"
grep -q '^## keepalive' "$repo/bench/pool_profile/REPORT.md" ||
  fail "up: REPORT.md: $(head -n 3 "$repo/bench/pool_profile/REPORT.md")"
[[ $(<"$repo/x/kept") == kept ]] || fail "up: x/kept changed"
kill "$(<"$tmp/fake.pid")" 2>/dev/null || true  # its stub was stopped; it is gone already

echo "a server that exits during the run (its port still answered) fails it; the results stay"
before=$(tree)
STUB_MODE=die profile keepalive
((rc == 1)) || fail "die: exit status $rc, not 1; stderr: $(<"$tmp/err")"
grep -qx "pool_profile.sh: keepalive: http_server exited during the run; the server's log:" \
  "$tmp/err" || fail "die: stderr: $(<"$tmp/err")"
[[ $(tree) == "$before" ]] || fail "die: the tree changed: $(diff <(echo "$before") <(tree))"

echo "PASS"
