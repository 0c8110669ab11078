#!/usr/bin/env bash
# HTTPS against nginx (issue 12), same machine, same run, TLS 1.3 with one ECDSA P-256
# certificate that the script makes (the server's key exchange X25519, both by default):
#   ours   tools/http_server --threads 1 --tls-cert --tls-key --metrics (-c opt; it offers
#          TLS 1.2 and 1.3, and every client here negotiates 1.3, which the start checks)
#   nginx  1.22, one worker, master_process off, `ssl_protocols TLSv1.3`, session tickets on
#          (its default), `return 200 "Hello World!"`, access log off, keep-alive as
#          bench/compare.sh's
# Figures, ours and nginx from the same run, servers pinned to CPU 1, wrk and the clients to
# CPU 0; each round starts each server once and runs its three loads, the order alternating (A B,
# B A, ...); reported are medians (min-max), and the ratios of the medians, of the minimums
# and of each round's pair:
#   1. keep-alive: wrk -t1 -c64, server CPU per request (utime + stime from /proc/PID/stat over
#      the requests wrk counted; the 64 handshakes at the start are in it, for both servers:
#      64 x the handshake figure over the run's requests, well under a microsecond each)
#   2. full handshakes: wrk -t1 -c16 -H "Connection: close", a new connection per request, so
#      CPU per request is CPU per handshake and connection. wrk resumes many of these sessions
#      by itself (it keeps a session through SSL_clear), so it runs with
#      //bench:libwrk_no_resume.so preloaded; the start shows both servers' resumed counts
#      with and without it, and every measured run checks wrk's count (and ours' /metrics).
#      Beside it the floor: one ECDSA P-256 signature and two X25519 operations per handshake
#      (the server's key generation, which OpenSSL 3.0 does as a full scalar multiplication
#      costing about what the derivation does, and the derivation), from `openssl speed` on
#      CPU 1. Then the same load with wrk's own resumption (the
#      library only counting), which shows what each server's tickets let a client resume.
#   3. RSS per idle TLS keep-alive connection: //bench:idle_clients --tls holds $IDLE_N
#      connections, each after a full handshake and one request, from several processes (the
#      fd limit); (RSS with all of them - RSS with one) / (N - 1), as bench/idle_rss.sh.
#   4. wrk errors (socket errors and non-2xx responses) of every run, which must be 0.
# Ends with a markdown table for bench/RESULTS.md and whether issue 12's targets hold: CPU per
# request at c64 <= 0.9x nginx, CPU per handshake <= 1.0x nginx, RSS per idle connection
# <= 0.5x nginx.
#   [ROUNDS=5] [DURATION=5] [IDLE_N=10000] bench/tls_compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-5} secs=${DURATION:-5} idle_n=${IDLE_N:-10000}
source tools/deps && deps_ensure --bench --profile  # openssl: in --profile

ulimit -n "$(ulimit -Hn)"
bazel build -c opt //tools:http_server //bench:idle_clients //bench:libwrk_no_resume.so \
  >/dev/null 2>&1
source bench/children.sh
work=$(mktemp -d)
pid="" client_pids=()
cleanup() {
  local p
  for p in "${client_pids[@]}"; do kill_child "$p"; done
  kill_child "$pid"
  exec 3>&- 2>/dev/null || true
  kill_jobs
  rm -rf "$work"
}
trap cleanup EXIT
# Copies of the -c opt binaries: the bazel-bin link follows whichever build ran last, and a
# rebuild during the run must not swap a server under us.
bin=$(bazel info -c opt bazel-bin 2>/dev/null)
cp "$bin/tools/http_server" "$bin/bench/idle_clients" "$bin/bench/libwrk_no_resume.so" "$work/"
hz=$(getconf CLK_TCK)

declare -A port=([ours]=28443 [nginx]=28444)  # 18443 is the lead's manual HTTPS tests' port
servers=(ours nginx)

# One certificate for both: ECDSA P-256, self-signed (nobody verifies it here).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1

# nginx_conf DIR ACCESS_LOG [DIRECTIVE...]: DIR/nginx.conf, the measured configuration with
# `access_log ACCESS_LOG` (off when measuring) and DIRECTIVEs added to its http block; its pid
# file and error log in DIR.
nginx_conf() {
  local dir=$1 log=$2
  shift 2
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log $dir/error.log crit;
pid $dir/nginx.pid; worker_rlimit_nofile 20000;
events { worker_connections 20000; }
http { $* access_log $log; keepalive_requests 1000000;
  server { listen 127.0.0.1:${port[nginx]} ssl reuseport;
    ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem; ssl_protocols TLSv1.3;
    location / { return 200 "Hello World!"; } } }
CONF
}
nginx_conf "$work/nginx" off
# For the resumption checks: one line per request of $ssl_session_reused ("r" or ".").
nginx_conf "$work/nginx-check" "$work/nginx-check/access.log check" \
  'log_format check "$ssl_session_reused";'
# For the idle connections: both servers keep them 300 s (nginx's default is 75 s, ours 30 s),
# so that $idle_n handshakes on a busy machine finish before the first ones time out.
idle_timeout_s=300
nginx_conf "$work/nginx-idle" off "keepalive_timeout ${idle_timeout_s}s;"

# start_server NAME [MODE] -> sets pid; waits until the port accepts connections. MODE check:
# nginx with its access log; idle: both with the idle test's keep-alive timeout.
start_server() {
  local name=$1 mode=${2:-}
  if (exec 9<>"/dev/tcp/127.0.0.1/${port[$name]}") 2>/dev/null; then
    echo "tls_compare.sh: port ${port[$name]} for $name is in use" >&2; exit 1
  fi
  local ours=(taskset -c 1 "$work/http_server" --threads 1 --port "${port[ours]}" --metrics
              --tls-cert "$work/cert.pem" --tls-key "$work/key.pem")
  case $name/$mode in
    ours/idle) exec "${ours[@]}" --idle-timeout-ms $((idle_timeout_s * 1000)) ;;
    ours/*)    exec "${ours[@]}" ;;
    nginx/*)   exec taskset -c 1 nginx -c "$work/nginx${mode:+-$mode}/nginx.conf" \
                 -p "$work/nginx${mode:+-$mode}" ;;
  esac >"$work/$name.log" 2>&1 &
  pid=$!
  wait_listening "${port[$name]}" && return
  echo "tls_compare.sh: $name did not start:" >&2; cat "$work/$name.log" >&2; exit 1
}
stop_server() { stop_child "$pid"; pid=""; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
url() { echo "https://127.0.0.1:${port[$1]}/"; }

# ours_handshakes: "full resumed" from ours' /metrics (the fetch's own handshake, a full one,
# is counted before the page is made).
ours_handshakes() {
  printf 'GET /metrics?name=libsock_tls_handshakes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' |
    timeout 10 openssl s_client -quiet -connect "127.0.0.1:${port[ours]}" 2>/dev/null |
    awk '/^libsock_tls_handshakes_total\{kind="full"\}/ {f = $2}
         /^libsock_tls_handshakes_total\{kind="resumed"\}/ {r = $2} END {print f + 0, r + 0}'
}
# nginx_reused_counts: "handshakes resumed" from the check configuration's access log (one
# line per request: with Connection: close, one per connection).
nginx_reused_counts() {
  awk '{n++; if ($1 == "r") r++} END {print n + 0, r + 0}' "$work/nginx-check/access.log"
}

# wrk_run NAME LOAD SECONDS: LOAD c64 (keep-alive), close16 (Connection: close, with the
# no-resume library) or resume16 (the same with wrk's own resumption, the library counting
# only); prints "ticks requests" and leaves wrk's output in $work/wrk.out and the library's
# line in $work/wrk.err.
wrk_run() {
  local before after argv=(-c64) env=()
  case $2 in
    close16)  argv=(-c16 -H "Connection: close") env=(LD_PRELOAD="$work/libwrk_no_resume.so") ;;
    resume16) argv=(-c16 -H "Connection: close")
              env=(LD_PRELOAD="$work/libwrk_no_resume.so" WRK_KEEP_SESSIONS=1) ;;
  esac
  before=$(cpu_ticks "$pid")
  env "${env[@]}" taskset -c 0 wrk -t1 "${argv[@]}" -d"$3s" "$(url "$1")" \
    >"$work/wrk.out" 2>"$work/wrk.err"
  after=$(cpu_ticks "$pid")
  echo "$((after - before)) $(awk '/requests in/ {print $1}' "$work/wrk.out")"
}
# wrk_errors: "connect read write timeout non2xx" from $work/wrk.out (zeros when wrk printed
# no such line).
wrk_errors() {
  awk '/Socket errors/ {m = $0; sub(/^[^:]*:/, "", m); gsub(/[^0-9 ]/, " ", m); split(m, e, " ")}
       /Non-2xx/ {n = $NF}
       END {printf "%d %d %d %d %d\n", e[1], e[2], e[3], e[4], n}' "$work/wrk.out"
}
# shim_line: the no-resume library's "N connections, T TLSv1.3, R resumed, first V C".
shim_line() { sed -n 's/^wrk_no_resume: //p' "$work/wrk.err"; }

machine="$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "$machine, Linux $(uname -r); $(nginx -v 2>&1 | sed 's/.*: //'); $(openssl version);" \
     "wrk pinned to CPU 0, servers to CPU 1; ${secs}s per run, $rounds rounds"
echo "Load average at the start: $(cut -d' ' -f1-3 /proc/loadavg) (the machine has $(nproc) CPUs)"

# The negotiation, as `openssl s_client` with no options (the same libssl and defaults as
# wrk: its SSLv23_client_method context sets no versions or ciphers) sees it.
echo
echo "Negotiated (openssl s_client, default client settings):"
for name in "${servers[@]}"; do
  start_server "$name"
  openssl s_client -connect "127.0.0.1:${port[$name]}" -brief </dev/null 2>&1 |
    awk -v n="$name" -F': ' '/^Protocol version/ {v = $2} /^Ciphersuite/ {c = $2}
      /^Signature type/ {s = $2} /^Server Temp Key/ {k = $2}
      END {printf "  %-6s %s, %s, signature %s, key exchange %s\n", n, v, c, s, k}'
  stop_server
done

# Resumption: 2 s of the handshake load with plain wrk and with the no-resume library; the
# servers' own counts (ours: /metrics, nginx: $ssl_session_reused) and the library's.
errors_total=0
echo
echo "Handshakes with wrk -t1 -c16 Connection: close for 2 s, resumed/all (the servers' counts):"
for name in "${servers[@]}"; do
  for lib in without with; do
    start_server "$name" check
    [[ $name == ours ]] && read -r f0 r0 <<<"$(ours_handshakes)"
    env=()
    [[ $lib == with ]] && env=(LD_PRELOAD="$work/libwrk_no_resume.so")
    env "${env[@]}" taskset -c 0 wrk -t1 -c16 -d2s -H "Connection: close" "$(url "$name")" \
      >"$work/wrk.out" 2>"$work/wrk.err"
    if [[ $name == ours ]]; then
      read -r f1 r1 <<<"$(ours_handshakes)"
      all=$((f1 - f0 - 1 + r1 - r0)) resumed=$((r1 - r0))  # less the second fetch's own
    else
      read -r all resumed <<<"$(nginx_reused_counts)"
    fi
    stop_server
    rm -f "$work/nginx-check/access.log"
    read -r e_conn e_read e_write e_time e_non <<<"$(wrk_errors)"
    errors_total=$((errors_total + e_conn + e_read + e_write + e_time + e_non))
    printf "  %-6s %-32s %s/%s resumed; wrk: %s requests, errors %d/%d/%d/%d, %d" "$name" \
      "$lib libwrk_no_resume.so:" "$resumed" "$all" "$(awk '/requests in/ {print $1}' "$work/wrk.out")" \
      "$e_conn" "$e_read" "$e_write" "$e_time" "$e_non"
    if [[ $lib == with ]]; then echo "; wrk's own count: $(shim_line)"; else echo; fi
  done
done

# The rounds: each server once per round, its three loads; the order alternates.
declare -A results  # "load/server" -> "us_per_req req_per_s" per round
declare -A own_resumed=([ours]=0 [nginx]=0) own_all=([ours]=0 [nginx]=0)  # resume16's counts
resumed_total=0 not13_total=0
order=("${servers[@]}")
echo
echo "Runs (server CPU per request; wrk errors connect/read/write/timeout, non-2xx):"
for ((r = 1; r <= rounds; r++)); do
  for name in "${order[@]}"; do
    start_server "$name"
    for load in c64 close16 resume16; do
      [[ $name == ours && $load == close16 ]] && read -r f0 r0 <<<"$(ours_handshakes)"
      read -r ticks reqs <<<"$(wrk_run "$name" "$load" "$secs")"
      read -r e_conn e_read e_write e_time e_non <<<"$(wrk_errors)"
      rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")
      us=$(awk -v t="$ticks" -v n="$reqs" -v hz="$hz" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')
      results[$load/$name]+="$us $rps"$'\n'
      errs=$((e_conn + e_read + e_write + e_time + e_non))
      errors_total=$((errors_total + errs))
      line=$(printf "  round %d %-6s %-8s %9s req/s %8s us/req  errors %d/%d/%d/%d, %d" "$r" \
             "$name" "$load" "$rps" "$us" "$e_conn" "$e_read" "$e_write" "$e_time" "$e_non")
      if [[ $load != c64 ]]; then
        # wrk's count: "N connections, T TLSv1.3, R resumed, first ..."
        read -r n _ t _ res _ <<<"$(shim_line)"
        if [[ -z ${n:-} ]]; then
          echo "tls_compare.sh: libwrk_no_resume.so printed nothing: is it preloaded?" >&2; exit 1
        fi
        not13_total=$((not13_total + n - t))
        line+="; wrk: $n handshakes, $((n - t)) not TLS 1.3, $res resumed"
      fi
      if [[ $load == resume16 ]]; then
        own_resumed[$name]=$((own_resumed[$name] + res)) own_all[$name]=$((own_all[$name] + n))
      elif [[ $load == close16 ]]; then
        resumed_total=$((resumed_total + res))
        if [[ $name == ours ]]; then
          read -r f1 r1 <<<"$(ours_handshakes)"
          line+="; ours: $((r1 - r0)) resumed"
          resumed_total=$((resumed_total + r1 - r0))
        fi
      fi
      echo "$line"
    done
    stop_server
  done
  order=("${order[@]:1}" "${order[0]}")
done

# The floor of a full handshake on the server's CPU: one ECDSA P-256 signature and two X25519
# operations (key generation and derivation; `openssl speed` times the derivation).
read -r sign_s x25519_s <<<"$(taskset -c 1 openssl speed -seconds 2 ecdsap256 ecdhx25519 2>/dev/null |
  awk '/ecdsa \(nistp256\)/ {s = $(NF - 1)} /ecdh \(X25519\)/ {x = $NF} END {print s, x}')"
floor=$(awk -v s="$sign_s" -v x="$x25519_s" 'BEGIN {printf "%.1f", 1e6 / s + 2e6 / x}')
floor_detail=$(awk -v s="$sign_s" -v x="$x25519_s" \
  'BEGIN {printf "ECDSA P-256 sign %.1f us (%.0f/s) + 2 x X25519 %.1f us (%.0f/s)", 1e6 / s, s, 1e6 / x, x}')

# Idle connections: RSS with one held connection, then with $idle_n.
mkfifo "$work/hold"
exec 3<>"$work/hold"  # the clients hold their connections until fd 3 closes
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
per_proc=2500  # connections per client process: several handshake in parallel
spawn() {  # PORT COUNT SRC LOG
  taskset -c 0 "$work/idle_clients" --tls "$1" "$2" "$3" <"$work/hold" >"$4" 2>&1 &
  client_pids+=($!)
}
wait_ready() {  # LOG...: 0 once each says "ready", 1 if a client failed or the timeout passed
  local log deadline=$((SECONDS + idle_timeout_s))
  for log in "$@"; do
    while ((SECONDS < deadline)); do
      grep -q '^ready' "$log" 2>/dev/null && continue 2
      grep -q 'idle_clients:' "$log" 2>/dev/null && { cat "$log" >&2; return 1; }
      sleep 0.05
    done
    echo "tls_compare.sh: timed out waiting for $log" >&2; return 1
  done
}
stop_clients() {
  local p
  for p in "${client_pids[@]}"; do stop_child "$p"; done
  client_pids=()
}
# established NAME: the server's established connections, counted by the kernel.
established() {
  ss -Htn state established "( sport = :${port[$1]} )" | wc -l
}
declare -A idle_bytes idle_detail
for name in "${servers[@]}"; do
  start_server "$name" idle
  spawn "${port[$name]}" 1 127.0.0.250 "$work/warm.log"
  wait_ready "$work/warm.log"
  sleep 0.5
  rss1=$(rss_kb "$pid") start=$SECONDS left=$((idle_n - 1)) k=0 logs=()
  while ((left > 0)); do
    c=$((left < per_proc ? left : per_proc))
    logs+=("$work/c$k.log")
    spawn "${port[$name]}" "$c" "127.0.0.$((k + 2))" "$work/c$k.log"
    left=$((left - c)) k=$((k + 1))
  done
  wait_ready "${logs[@]}"
  sleep 1
  rssn=$(rss_kb "$pid") held=$(established "$name")
  idle_bytes[$name]=$(awk -v a="$rss1" -v b="$rssn" -v n="$idle_n" 'BEGIN {printf "%.0f", (b - a) * 1024 / (n - 1)}')
  idle_detail[$name]="RSS $rss1 kB with 1, $rssn kB with $idle_n ($held established; set up in $((SECONDS - start)) s)"
  # Every connection must still be open (none timed out while the others were set up).
  ((held == idle_n)) || idle_bytes[$name]+=" (only $held held)"
  stop_clients
  stop_server
done
exec 3>&-

echo
echo "Idle TLS keep-alive connections ($idle_n, //bench:idle_clients --tls):"
for name in "${servers[@]}"; do
  printf "  %-6s %s B per connection: %s\n" "$name" "${idle_bytes[$name]}" "${idle_detail[$name]}"
done
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

# summary LOAD SERVER COLUMN FORMAT -> "median (min-max)"; median_of / min_of -> one number.
column_of() { awk -v c="$3" 'NF {print $c}' <<<"${results[$1/$2]:-}" | sort -g; }
summary() {
  column_of "$@" | awk -v fmt="$4" '{a[NR] = $1} END {
    printf fmt " (" fmt "-" fmt ")", a[int((NR + 1) / 2)], a[1], a[NR] }'
}
median_of() { column_of "$@" | awk '{a[NR] = $1} END {if (NR) print a[int((NR + 1) / 2)]}'; }
min_of() { column_of "$@" | head -1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b + 0 == 0) print "-"; else printf "%.2f", a / b}'; }
# paired LOAD: ours/nginx of each round (the two ran minutes apart at most, so a noisy phase
# of the machine tends to hit both), as "median (min-max)" over the rounds.
paired() {
  paste <(awk 'NF {print $1}' <<<"${results[$1/ours]}") <(awk 'NF {print $1}' <<<"${results[$1/nginx]}") |
    awk '$2 > 0 {print $1 / $2}' | sort -g |
    awk '{a[NR] = $1} END {printf "%.2f (%.2f-%.2f)", a[int((NR + 1) / 2)], a[1], a[NR]}'
}
holds() { awk -v r="$1" -v t="$2" 'BEGIN {print (r != "-" && r <= t) ? "yes" : "no"}'; }

c64_ratio=$(ratio "$(median_of c64 ours 1)" "$(median_of c64 nginx 1)")
c64_min=$(ratio "$(min_of c64 ours 1)" "$(min_of c64 nginx 1)")
hs_ratio=$(ratio "$(median_of close16 ours 1)" "$(median_of close16 nginx 1)")
hs_min=$(ratio "$(min_of close16 ours 1)" "$(min_of close16 nginx 1)")
idle_ratio=$(ratio "${idle_bytes[ours]}" "${idle_bytes[nginx]}")

echo
echo "| figure | ours | nginx 1.22 | ours/nginx: medians; minimums; per round | target | holds |"
echo "| --- | --- | --- | --- | --- | --- |"
echo "| keep-alive -c64, server CPU per request | $(summary c64 ours 1 %.2f) us |" \
     "$(summary c64 nginx 1 %.2f) us | $c64_ratio; $c64_min; $(paired c64) | <= 0.9 |" \
     "$(holds "$c64_ratio" 0.9) |"
echo "| keep-alive -c64, req/s | $(summary c64 ours 2 %.0f) | $(summary c64 nginx 2 %.0f) |" \
     "$(ratio "$(median_of c64 ours 2)" "$(median_of c64 nginx 2)") | | |"
echo "| full handshake, -c16 Connection: close, server CPU per connection |" \
     "$(summary close16 ours 1 %.2f) us | $(summary close16 nginx 1 %.2f) us |" \
     "$hs_ratio; $hs_min; $(paired close16) | <= 1.0 | $(holds "$hs_ratio" 1.0) |"
echo "| full handshake, connections/s | $(summary close16 ours 2 %.0f) |" \
     "$(summary close16 nginx 2 %.0f) |" \
     "$(ratio "$(median_of close16 ours 2)" "$(median_of close16 nginx 2)") | | |"
share() { awk -v r="$1" -v n="$2" 'BEGIN {if (n > 0) printf "%.0f%%", 100 * r / n; else print "-"}'; }
echo "| wrk's own resumption, -c16 Connection: close, server CPU per connection (share resumed) |" \
     "$(summary resume16 ours 1 %.2f) us ($(share "${own_resumed[ours]}" "${own_all[ours]}")) |" \
     "$(summary resume16 nginx 1 %.2f) us ($(share "${own_resumed[nginx]}" "${own_all[nginx]}")) |" \
     "$(ratio "$(median_of resume16 ours 1)" "$(median_of resume16 nginx 1)");" \
     "$(ratio "$(min_of resume16 ours 1)" "$(min_of resume16 nginx 1)"); $(paired resume16) | | |"
echo "| handshake floor on CPU 1 (openssl speed) | $floor us: $floor_detail | | | | |"
echo "| RSS per idle TLS keep-alive connection, $idle_n held | ${idle_bytes[ours]} B |" \
     "${idle_bytes[nginx]} B | $idle_ratio | <= 0.5 | $(holds "$idle_ratio" 0.5) |"
echo "| wrk errors, every run; resumed handshakes; not TLS 1.3 | $errors_total; $resumed_total;" \
     "$not13_total (both servers) | | | 0 | $( ((errors_total + resumed_total + not13_total == 0)) &&
     echo yes || echo no) |"
