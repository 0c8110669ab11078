# tests/testing/wait_for.sh, sourced by the shell tests: the polling wait of wait_for.h.
# wait_for SECONDS WHAT COMMAND...: runs COMMAND every 0.1 s until it succeeds; after SECONDS
# calls the sourcing script's fail() with "timed out waiting for WHAT". Never a fixed sleep:
# the deadline only tells a hang from progress.
wait_for() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    ((SECONDS < deadline)) || fail "timed out waiting for $what"
    sleep 0.1
  done
}
