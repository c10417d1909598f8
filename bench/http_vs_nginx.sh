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
LOG_TAG=http_vs_nginx
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

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

for tool in wrk curl python3 "$NGINX_BIN"; do
  command -v "$tool" >/dev/null || die "$tool not found (scripts/install-deps.sh installs it)"
done

bench_tmp http-vs-nginx
read -r P1 P2 P3 < <(free_ports 3)

# ---------------------------------------------------------------------------------------------
# 1-3. chorus: build, start, learn the body.
mkdir -p "$TMP/nginx/html" "$TMP/nginx/tmp" "$TMP/data"
BODY_FILE=$TMP/nginx/html/healthz
CHORUS_PID=""
if [[ $NGINX_ONLY == 1 ]]; then
  printf '{"status":"ok"}' >"$BODY_FILE"
  log "NGINX_ONLY=1: skipping chorus; nginx serves a $(wc -c <"$BODY_FILE")-byte stand-in body"
else
  resolve_chorus_bin

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
write_nginx_conf "$TMP/nginx" "$P2" "$CORES" "= /healthz"
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
declare -A URLS=([chorus]="http://127.0.0.1:$P1/healthz" [nginx]="http://127.0.0.1:$P2/healthz")
if [[ $NGINX_ONLY == 1 ]]; then
  wrk_rounds nginx "${URLS[nginx]}"
else
  wrk_rounds chorus "${URLS[chorus]}" nginx "${URLS[nginx]}"
fi

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
