# Sourced by the bench scripts: signals and waits that reach this script's own children only,
# and the wait for a server to listen.
# `kill ""` fails, but `kill 0` or `kill -1` (an empty or failed $! spliced into a command, a
# pid variable never set) would signal the whole process group or every process the user may
# signal, the CI shell and the Bazel server included: each call here first checks that its
# argument is a real pid.

# is_pid WORD: true for a positive decimal number.
is_pid() { [[ ${1:-} =~ ^[1-9][0-9]*$ ]]; }

# kill_child PID: SIGTERM to PID if it is a pid; never fails.
kill_child() { if is_pid "${1:-}"; then kill "$1" 2>/dev/null || true; fi; }

# stop_child PID: kill_child, then reap it (its exit status is ignored).
stop_child() {
  if is_pid "${1:-}"; then
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
  fi
}

# kill_jobs: kill_child for every job this shell still runs in the background (an EXIT trap).
kill_jobs() {
  local p
  for p in $(jobs -p); do kill_child "$p"; done
}

# wait_listening PORT [TRIES]: true once 127.0.0.1:PORT takes a connection, polling every 50 ms
# (TRIES times, 100 by default: 5 s), false if it never does.
wait_listening() {
  local i
  for ((i = 0; i < ${2:-100}; ++i)); do
    (exec 9<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}
