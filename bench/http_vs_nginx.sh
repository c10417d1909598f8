#!/usr/bin/env bash
# http_vs_nginx.sh — the runtime's raw HTTP speed against nginx serving the same bytes.
#
# Both servers answer GET /healthz with identical body bytes over keep-alive HTTP/1.1 on loopback,
# with as many workers as cores. wrk drives each in turn (chorus, nginx, chorus, nginx, ...) and
# the best round of each is kept. Prints both figures and the ratio chorus/nginx, writes
# bench/results/http-vs-nginx-<UTC timestamp>.json (schema: bench/report.h) and exits 1 if any run
# saw non-2xx responses or socket errors.
#
# Environment:
#   CHORUS_BIN      chorus binary to test; unset = build the release preset and use it. Not passed
#                   on to chorus, which reads CHORUS_* variables as configuration keys.
#   UP_ARGS         extra arguments for `chorus up`
#   DURATION        wrk duration per round (10s)     WARMUP   warm-up per server (2s)
#   CONNECTIONS     wrk -c (64)                      THREADS  wrk -t (2)
#   ROUNDS          alternations (2)
#   BENCH_RESULTS_DIR  where the JSON result goes (bench/results)
#   NGINX_ONLY=1    skip chorus: checks the harness and nginx alone, writes no result file
#   CROSSCHECK=1    also drive nginx with chorus-bench http (BENCH_BIN=path, default
#                   build/release/bench/chorus-bench) to show the load generator keeps up with wrk
#   KEEP_TMP=1      keep the temporary directory (logs, configs, wrk outputs)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
BENCH_RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/bench/results}
NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}
NGINX_ONLY=${NGINX_ONLY:-0}
CROSSCHECK=${CROSSCHECK:-0}
CORES=$(nproc)

log() { printf '[http_vs_nginx] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

for tool in wrk curl python3 "$NGINX_BIN"; do
  command -v "$tool" >/dev/null || die "$tool not found (scripts/install-deps.sh installs it)"
done

TMP=$(mktemp -d /tmp/chorus-http-vs-nginx.XXXXXX)
chmod 755 "$TMP"  # nginx workers may run as another user and must read the body file
PGIDS=()
FAILED=1

# Stops every server this script started (each runs in its own process group) and removes TMP.
cleanup() {
  local pg
  for pg in "${PGIDS[@]}"; do kill -TERM -- "-$pg" 2>/dev/null || true; done
  for pg in "${PGIDS[@]}"; do
    for _ in $(seq 50); do kill -0 -- "-$pg" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pg" 2>/dev/null || true
  done
  if [[ ${KEEP_TMP:-0} == 1 || $FAILED == 1 ]]; then
    log "logs kept in $TMP"
  else
    rm -rf "$TMP"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts "$@" in a new session (so its whole process tree can be signalled) with output to $LOG;
# sets STARTED_PID, which is also the process group id.
start_group() {
  setsid "$@" >"$LOG" 2>&1 &
  STARTED_PID=$!
  PGIDS+=("$STARTED_PID")
}

stop_group() {
  local pg=$1 kept=()
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

read -r P1 P2 P3 < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(3):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)

# ---------------------------------------------------------------------------------------------
# 1-3. chorus: build, start, learn the body.
mkdir -p "$TMP/nginx/html" "$TMP/nginx/tmp" "$TMP/data"
BODY_FILE=$TMP/nginx/html/healthz
CHORUS_PID=""
if [[ $NGINX_ONLY == 1 ]]; then
  printf '{"status":"ok"}' >"$BODY_FILE"
  log "NGINX_ONLY=1: skipping chorus; nginx serves a $(wc -c <"$BODY_FILE")-byte stand-in body"
else
  if [[ -z ${CHORUS_BIN:-} ]]; then
    log "building the release preset (set CHORUS_BIN to skip)"
    cmake --preset release >/dev/null
    cmake --build --preset release --target chorus
    CHORUS_BIN=$ROOT/build/release/src/chorus/chorus
  fi
  [[ -x $CHORUS_BIN ]] || die "chorus binary $CHORUS_BIN not found"
  CHORUS_BIN=$(cd "$(dirname "$CHORUS_BIN")" && pwd)/$(basename "$CHORUS_BIN")

  chorus_cmd=(env -u CHORUS_BIN "$CHORUS_BIN" up --http "127.0.0.1:$P1" --grpc "127.0.0.1:$P3" --data-dir "$TMP/data")
  # One shard per core, like nginx's workers, if this chorus takes --set.
  shard_args=()
  if env -u CHORUS_BIN "$CHORUS_BIN" up --help 2>&1 | grep -q -- '--set'; then
    shard_args=(--set "runtime.shards=$CORES")
  fi
  # shellcheck disable=SC2206  # UP_ARGS is meant to split into words
  extra_args=(${UP_ARGS:-})
  LOG=$TMP/chorus.log
  start_group "${chorus_cmd[@]}" "${shard_args[@]}" "${extra_args[@]}"
  CHORUS_PID=$STARTED_PID
  if ! wait_ready "http://127.0.0.1:$P1/healthz" "$CHORUS_PID" "$LOG"; then
    if [[ ${#shard_args[@]} -gt 0 ]]; then
      log "retrying without ${shard_args[*]}"
      stop_group "$CHORUS_PID"
      shard_args=()
      start_group "${chorus_cmd[@]}" "${extra_args[@]}"
      CHORUS_PID=$STARTED_PID
      wait_ready "http://127.0.0.1:$P1/healthz" "$CHORUS_PID" "$LOG" || die "chorus did not start"
    else
      die "chorus did not start"
    fi
  fi
  grep -m1 'http listening on' "$LOG" >&2 || true
  status=$(curl -sS -D "$TMP/chorus.headers" -o "$BODY_FILE" -w '%{http_code}' \
    "http://127.0.0.1:$P1/healthz")
  [[ $status == 200 ]] || die "chorus /healthz answered $status"
  log "chorus /healthz: $(wc -c <"$BODY_FILE") body bytes, $(wc -c <"$TMP/chorus.headers") header bytes:"
  sed 's/^/    /' "$TMP/chorus.headers" | tr -d '\r' >&2
fi
BODY_BYTES=$(wc -c <"$BODY_FILE")

# ---------------------------------------------------------------------------------------------
# 4. nginx serving the same bytes as a static file.
user_line=""
[[ $(id -u) == 0 ]] && user_line="user root;"
cat >"$TMP/nginx/nginx.conf" <<EOF
$user_line
worker_processes $CORES;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
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
  client_body_temp_path $TMP/nginx/tmp/body;
  proxy_temp_path $TMP/nginx/tmp/proxy;
  fastcgi_temp_path $TMP/nginx/tmp/fastcgi;
  uwsgi_temp_path $TMP/nginx/tmp/uwsgi;
  scgi_temp_path $TMP/nginx/tmp/scgi;
  types { }
  default_type application/json;
  server {
    listen 127.0.0.1:$P2 reuseport;
    root $TMP/nginx/html;
    location = /healthz { }
  }
}
EOF
LOG=$TMP/nginx/stdout.log
start_group "$NGINX_BIN" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" \
  -g 'daemon off;'
NGINX_PID=$STARTED_PID
wait_ready "http://127.0.0.1:$P2/healthz" "$NGINX_PID" "$TMP/nginx/error.log" || die "nginx did not start"
curl -sS -D "$TMP/nginx.headers" -o "$TMP/nginx.body" "http://127.0.0.1:$P2/healthz"
cmp -s "$TMP/nginx.body" "$BODY_FILE" || die "nginx does not serve the same body bytes"
log "nginx /healthz: $(wc -c <"$TMP/nginx.body") body bytes, $(wc -c <"$TMP/nginx.headers") header bytes:"
sed 's/^/    /' "$TMP/nginx.headers" | tr -d '\r' >&2

# ---------------------------------------------------------------------------------------------
# 5-6. wrk rounds.

# run_wrk SYSTEM URL ROUND: runs wrk, leaves parsed figures in W_* variables.
run_wrk() {
  local system=$1 url=$2 round=$3 out
  out=$TMP/wrk-$system-$round.txt
  W_RPS="" W_MEAN=0 W_MAX=0 W_P50=0 W_P75=0 W_P90=0 W_P99=0 W_REQUESTS=0 W_SECONDS=0
  W_NON2XX=0 W_SOCKERR=0
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url" >"$out" 2>&1 ||
    { cat "$out" >&2; die "wrk failed against $system"; }
  # wrk prints latencies as 123.45us / 1.23ms / 1.02s; convert to integer nanoseconds.
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

declare -A URLS=([chorus]="http://127.0.0.1:$P1/healthz" [nginx]="http://127.0.0.1:$P2/healthz")
SYSTEMS=(nginx)
[[ $NGINX_ONLY == 1 ]] || SYSTEMS=(chorus nginx)

declare -A BEST_RPS BEST_JSON BEST_P50 BEST_P99
RUNS_JSON=""
ERRORS=0
for system in "${SYSTEMS[@]}"; do
  log "warming up $system for $WARMUP"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "${URLS[$system]}" >/dev/null 2>&1 || true
  BEST_RPS[$system]=0
done

for round in $(seq "$ROUNDS"); do
  for system in "${SYSTEMS[@]}"; do
    run_wrk "$system" "${URLS[$system]}" "$round"
    log "round $round $system: $W_RPS req/s, p50 $(ms "$W_P50") p99 $(ms "$W_P99"), non-2xx $W_NON2XX, socket errors $W_SOCKERR"
    if [[ $W_NON2XX != 0 || $W_SOCKERR != 0 ]]; then
      ERRORS=$((ERRORS + W_NON2XX + W_SOCKERR))
      log "ERRORS against $system in round $round (wrk output below)"
      sed 's/^/    /' "$TMP/wrk-$system-$round.txt" >&2
    fi
    RUNS_JSON+="${RUNS_JSON:+, }{\"system\": \"$system\", \"round\": $round, \"throughput\": $W_RPS, \"non_2xx\": $W_NON2XX, \"socket_errors\": $W_SOCKERR}"
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

if [[ $CROSSCHECK == 1 ]]; then
  BENCH_BIN=${BENCH_BIN:-$ROOT/build/release/bench/chorus-bench}
  [[ -x $BENCH_BIN ]] || die "CROSSCHECK=1 needs chorus-bench at $BENCH_BIN (set BENCH_BIN)"
  log "cross-check: chorus-bench http against nginx with the same load"
  "$BENCH_BIN" http --url "${URLS[nginx]}" --connections "$CONNECTIONS" --threads "$THREADS" \
    --duration "$DURATION" --name http-loadgen-crosscheck --system nginx \
    --out "$TMP/crosscheck.json" >&2
  log "cross-check: wrk best ${BEST_RPS[nginx]} req/s vs chorus-bench above, same nginx"
fi

# ---------------------------------------------------------------------------------------------
# Report.
if [[ $NGINX_ONLY == 1 ]]; then
  echo "http-vs-nginx (NGINX_ONLY): nginx ${BEST_RPS[nginx]} req/s; p50 $(ms "${BEST_P50[nginx]}") p99 $(ms "${BEST_P99[nginx]}")"
else
  RATIO=$(awk -v a="${BEST_RPS[chorus]}" -v b="${BEST_RPS[nginx]}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
  STAMP=$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p "$BENCH_RESULTS_DIR"
  OUT=$BENCH_RESULTS_DIR/http-vs-nginx-$STAMP.json
  cat >"$OUT" <<EOF
{
  "name": "http-vs-nginx",
  "timestamp": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "host": {"cores": $CORES, "hostname": "$(uname -n)"},
  "params": {"load_generator": "wrk", "url_path": "/healthz", "connections": "$CONNECTIONS", "threads": "$THREADS", "duration": "$DURATION", "warmup": "$WARMUP", "rounds": "$ROUNDS", "best_of": "rounds", "body_bytes": "$BODY_BYTES", "nginx_workers": "$CORES", "chorus_args": "${shard_args[*]} ${UP_ARGS:-}"},
  "subject": ${BEST_JSON[chorus]},
  "peers": [${BEST_JSON[nginx]}],
  "ratios": {"chorus/nginx": $RATIO},
  "runs": [$RUNS_JSON]
}
EOF
  if command -v jq >/dev/null; then jq . "$OUT" >/dev/null || die "wrote invalid JSON to $OUT"; fi
  log "wrote $OUT"
  summary="http-vs-nginx: chorus $(printf '%.0f' "${BEST_RPS[chorus]}") req/s, nginx $(printf '%.0f' "${BEST_RPS[nginx]}") req/s, ratio $(printf '%.2f' "$RATIO")x; p50 $(ms "${BEST_P50[chorus]}") p99 $(ms "${BEST_P99[chorus]}")"
  [[ $ERRORS == 0 ]] || summary+="; ERRORS $ERRORS"
  echo "$summary"
fi

FAILED=0
[[ $ERRORS == 0 ]] || exit 1
