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

# printed_port PID LOG [NAME]: the port that server NAME (http_server by default), started with
# --port 0, printed in LOG ("NAME listening on http://0.0.0.0:PORT/"), polling every 50 ms for
# up to 10 s while PID lives. A port the server bound itself: what answers there is this
# server, not an earlier run's orphan on a fixed port. Prints nothing and fails if PID exits
# first or no such line comes.
printed_port() {
  local pid=$1 log=$2 name=${3:-http_server} port i
  for ((i = 0; i < 200; ++i)); do
    port=$(sed -n "s|^$name listening on http://0\.0\.0\.0:\([0-9]*\)/\$|\1|p" "$log")
    if [[ -n $port ]]; then
      echo "$port"
      return 0
    fi
    is_pid "$pid" && kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
