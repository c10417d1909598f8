# shellcheck shell=bash
# bench/lib.sh — shell helpers shared by the peer-comparison scripts (sourced, never run).
#
#   LOG_TAG=live_poll; source "$ROOT/bench/lib.sh"
#
# Gives: log/die, a temporary directory with cleanup on exit (bench_tmp), servers started in their
# own process groups and stopped on exit (start_group/stop_group/wait_ready), free loopback ports
# (free_ports), wrk runs parsed into W_* variables (run_wrk), alternating best-of wrk rounds
# against several servers (wrk_rounds), a chorus binary (resolve_chorus_bin), the Bun peer binary
# installed on demand (ensure_bun), an nginx static-file config (write_nginx_conf) and ms
# formatting. Scripts set `FAILED=0` at the very end of a successful run; until then the temporary
# directory is kept for the logs.

log() { printf '[%s] %s\n' "${LOG_TAG:-bench}" "$*" >&2; }
die() { log "error: $*"; exit 2; }

PGIDS=()
FAILED=1
TMP=""

# Stops every server started with start_group (each runs in its own process group) and removes
# TMP unless KEEP_TMP=1 or the script did not reach FAILED=0.
bench_cleanup() {
  local pg
  for pg in "${PGIDS[@]}"; do kill -TERM -- "-$pg" 2>/dev/null || true; done
  for pg in "${PGIDS[@]}"; do
    for _ in $(seq 50); do kill -0 -- "-$pg" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pg" 2>/dev/null || true
  done
  [[ -n $TMP ]] || return 0
  if [[ ${KEEP_TMP:-0} == 1 || $FAILED == 1 ]]; then
    log "logs kept in $TMP"
  else
    rm -rf "$TMP"
  fi
}

# bench_tmp NAME: creates TMP (/tmp/chorus-NAME.XXXXXX, world-readable for nginx workers) and
# installs the cleanup traps.
bench_tmp() {
  TMP=$(mktemp -d "/tmp/chorus-$1.XXXXXX")
  chmod 755 "$TMP"
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

# Starts "$@" in a new session (so its whole process tree can be signalled) with output to $LOG;
# sets STARTED_PID, which is also the process group id.
start_group() {
  setsid "$@" >"$LOG" 2>&1 &
  STARTED_PID=$!
  PGIDS+=("$STARTED_PID")
}

stop_group() {
  local pg=$1 kept=() p
  kill -TERM -- "-$pg" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 -- "-$pg" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pg" 2>/dev/null || true
  wait "$pg" 2>/dev/null || true
  for p in "${PGIDS[@]}"; do [[ $p == "$pg" ]] || kept+=("$p"); done
  PGIDS=("${kept[@]}")
}

# Waits until URL answers 200, or fails if PID dies or 60 s pass.
wait_ready() {
  local url=$1 pid=$2 logfile=$3
  for _ in $(seq 600); do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "server exited during startup; its log:"; sed 's/^/    /' "$logfile" >&2; return 1
    fi
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "server did not answer $url within 60 s; its log:"; sed 's/^/    /' "$logfile" >&2
  return 1
}

# free_ports N: prints N free loopback TCP ports on one line.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# resolve_chorus_bin: sets CHORUS_BIN to an absolute path, building the release preset's chorus
# when CHORUS_BIN is unset.
resolve_chorus_bin() {
  if [[ -z ${CHORUS_BIN:-} ]]; then
    log "building the release preset (set CHORUS_BIN to skip)"
    cmake --preset release >/dev/null
    cmake --build --preset release --target chorus
    CHORUS_BIN=$ROOT/build/release/src/chorus/chorus
  fi
  [[ -x $CHORUS_BIN ]] || die "chorus binary $CHORUS_BIN not found"
  CHORUS_BIN=$(cd "$(dirname "$CHORUS_BIN")" && pwd)/$(basename "$CHORUS_BIN")
}

# resolve_bench_bin SUBCOMMAND: sets BENCH_BIN to a chorus-bench that has SUBCOMMAND: BENCH_BIN as
# given, else the one beside CHORUS_BIN's build tree, else builds the release preset's.
resolve_bench_bin() {
  if [[ -z ${BENCH_BIN:-} ]]; then
    [[ -n ${CHORUS_BIN:-} ]] && BENCH_BIN=$(dirname "$(dirname "$(dirname "$CHORUS_BIN")")")/bench/chorus-bench
    if [[ ! -x ${BENCH_BIN:-} ]]; then
      log "building chorus-bench (release preset; set BENCH_BIN to skip)"
      cmake --preset release >/dev/null
      cmake --build --preset release --target chorus_bench
      BENCH_BIN=$ROOT/build/release/bench/chorus-bench
    fi
  fi
  [[ -x $BENCH_BIN ]] || die "chorus-bench binary $BENCH_BIN not found"
  "$BENCH_BIN" "$1" --help >/dev/null 2>&1 || die "$BENCH_BIN has no $1 subcommand (rebuild it)"
}

# ensure_bun: sets BUN to the Bun binary of the npm package @oven/bun-linux-x64, installing it into
# bench/.peers (git-ignored) on first use; BUN_BIN overrides. Returns 1 (with a message) when Bun
# cannot be had, so callers can skip the peer.
ensure_bun() {
  BUN=${BUN_BIN:-$ROOT/bench/.peers/node_modules/@oven/bun-linux-x64/bin/bun}
  if [[ ! -x $BUN ]]; then
    if ! command -v npm >/dev/null; then
      log "npm not found: cannot install the Bun peer (scripts/install-deps.sh installs node/npm)"
      return 1
    fi
    log "installing the Bun peer: npm install --prefix bench/.peers @oven/bun-linux-x64"
    mkdir -p "$ROOT/bench/.peers"
    if ! npm install --prefix "$ROOT/bench/.peers" --no-audit --no-fund --no-save \
        @oven/bun-linux-x64 >&2; then
      log "npm install failed"
      return 1
    fi
  fi
  if ! "$BUN" --version >/dev/null 2>&1; then
    log "$BUN does not run on this machine"
    return 1
  fi
  return 0
}

# run_wrk SYSTEM URL ROUND: runs wrk (THREADS, CONNECTIONS, DURATION) into $TMP/wrk-SYSTEM-ROUND.txt
# and leaves parsed figures in W_* variables (latencies in integer nanoseconds).
run_wrk() {
  local system=$1 url=$2 round=$3 out
  out=$TMP/wrk-$system-$round.txt
  W_RPS="" W_MEAN=0 W_MAX=0 W_P50=0 W_P75=0 W_P90=0 W_P99=0 W_REQUESTS=0 W_SECONDS=0
  W_NON2XX=0 W_SOCKERR=0
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url" >"$out" 2>&1 ||
    { cat "$out" >&2; die "wrk failed against $system"; }
  eval "$(awk '
    function ns(v) {
      if (v ~ /us$/) return sprintf("%.0f", substr(v, 1, length(v) - 2) * 1e3)
      if (v ~ /ms$/) return sprintf("%.0f", substr(v, 1, length(v) - 2) * 1e6)
      if (v ~ /m$/)  return sprintf("%.0f", substr(v, 1, length(v) - 1) * 60e9)
      if (v ~ /s$/)  return sprintf("%.0f", substr(v, 1, length(v) - 1) * 1e9)
      return 0
    }
    /^Requests\/sec:/               { printf "W_RPS=%s\n", $2 }
    /requests in/                   { printf "W_REQUESTS=%s\nW_SECONDS=%s\n", $1, substr($4, 1, length($4) - 2) }
    /Non-2xx or 3xx responses:/     { printf "W_NON2XX=%s\n", $NF }
    /Socket errors:/                { gsub(",", ""); printf "W_SOCKERR=%d\n", $4 + $6 + $8 + $10 }
    $1 == "Latency" && NF >= 4      { printf "W_MEAN=%s\nW_MAX=%s\n", ns($2), ns($4) }
    $1 == "50%"                     { printf "W_P50=%s\n", ns($2) }
    $1 == "75%"                     { printf "W_P75=%s\n", ns($2) }
    $1 == "90%"                     { printf "W_P90=%s\n", ns($2) }
    $1 == "99%"                     { printf "W_P99=%s\n", ns($2) }
  ' "$out")"
  [[ -n ${W_RPS:-} ]] || { cat "$out" >&2; die "could not parse wrk output for $system"; }
}

# ms NS: three significant digits, like chorus-bench's summaries.
ms() { awk -v n="$1" 'BEGIN { v = n / 1e6; f = v >= 100 ? "%.0f" : v >= 10 ? "%.1f" : v >= 1 ? "%.2f" : "%.3f"; printf f "ms", v }'; }

# wrk_rounds SYSTEM URL [SYSTEM URL ...]: warms each system up with wrk for WARMUP, then runs
# ROUNDS rounds of run_wrk over the systems in the given order (a, b, a, b, ...), logging each run
# and showing wrk's output for runs with errors. Leaves, per system, the best round's req/s,
# p50/p99 (ns) and report entry (JSON, schema bench/report.h) in BEST_RPS, BEST_P50, BEST_P99 and
# BEST_JSON; every run in RUNS_JSON (comma-separated objects for the result file's "runs"); the
# total of non-2xx responses and socket errors over all runs in ERRORS.
wrk_rounds() {
  (($# > 0 && $# % 2 == 0)) || die "wrk_rounds: expected SYSTEM URL pairs"
  local -a systems=()
  local -A urls=()
  local system round
  while (($#)); do systems+=("$1"); urls[$1]=$2; shift 2; done
  declare -gA BEST_RPS=() BEST_JSON=() BEST_P50=() BEST_P99=()
  RUNS_JSON=""
  ERRORS=0
  for system in "${systems[@]}"; do
    log "warming up $system for $WARMUP"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "${urls[$system]}" >/dev/null 2>&1 || true
    BEST_RPS[$system]=0
  done
  for round in $(seq "$ROUNDS"); do
    for system in "${systems[@]}"; do
      run_wrk "$system" "${urls[$system]}" "$round"
      log "round $round $system: $W_RPS req/s, p50 $(ms "$W_P50") p99 $(ms "$W_P99"), non-2xx $W_NON2XX, socket errors $W_SOCKERR"
      if [[ $W_NON2XX != 0 || $W_SOCKERR != 0 ]]; then
        ERRORS=$((ERRORS + W_NON2XX + W_SOCKERR))
        log "ERRORS against $system in round $round (wrk output below)"
        sed 's/^/    /' "$TMP/wrk-$system-$round.txt" >&2
      fi
      RUNS_JSON+="${RUNS_JSON:+, }{\"system\": \"$system\", \"round\": $round, \"throughput\": $W_RPS, \"non_2xx\": $W_NON2XX, \"socket_errors\": $W_SOCKERR}"
      # shellcheck disable=SC2034  # BEST_JSON, BEST_P50 and BEST_P99 are read by the calling script
      if awk -v a="$W_RPS" -v b="${BEST_RPS[$system]}" 'BEGIN { exit !(a > b) }'; then
        BEST_RPS[$system]=$W_RPS
        BEST_JSON[$system]=$(printf '{"system": "%s", "throughput": %s, "unit": "req/s", "duration_s": %s, "counts": {"requests": %s, "non_2xx": %s, "socket_errors": %s}, "latency": {"mean_ns": %s, "p50_ns": %s, "p75_ns": %s, "p90_ns": %s, "p99_ns": %s, "max_ns": %s}}' \
          "$system" "$W_RPS" "$W_SECONDS" "$W_REQUESTS" "$W_NON2XX" "$W_SOCKERR" \
          "$W_MEAN" "$W_P50" "$W_P75" "$W_P90" "$W_P99" "$W_MAX")
        BEST_P50[$system]=$W_P50
        BEST_P99[$system]=$W_P99
      fi
    done
  done
}

# write_nginx_conf DIR PORT WORKERS [LOCATION]: $DIR/nginx.conf serving $DIR/html as static files
# on 127.0.0.1:PORT, tuned like a static file server should be (access log off, sendfile,
# open_file_cache, keep-alive without limits, no etag or server tokens), as application/json.
# LOCATION is the nginx location that serves them ("/" = everything; "= /healthz" = one path).
write_nginx_conf() {
  local dir=$1 port=$2 workers=$3 location=${4:-/} user_line=""
  [[ $(id -u) == 0 ]] && user_line="user root;"
  mkdir -p "$dir/html" "$dir/tmp"
  cat >"$dir/nginx.conf" <<CONF
$user_line
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
  worker_connections 4096;
}
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  open_file_cache max=64 inactive=60s;
  open_file_cache_valid 60s;
  server_tokens off;
  etag off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  types { }
  default_type application/json;
  server {
    listen 127.0.0.1:$port reuseport;
    root $dir/html;
    location $location { }
  }
}
CONF
}
