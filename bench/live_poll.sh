#!/usr/bin/env bash
# live_poll.sh — the live service's short-poll endpoint against nginx serving the same bytes.
#
# Viewers without a WebSocket poll GET /v1/rooms/{room}/messages?since=..&limit=.. every 1.5-2.5 s,
# so in a big room the poll endpoint is the hot path. This starts `chorus live`, publishes MESSAGES
# (15) mixed messages into one room, fetches the poll answer for a fixed `since` once (so every
# poll returns the same bytes: all MESSAGES messages), and writes that exact body as a static file
# for nginx at the same path. wrk then drives chorus and nginx in turn (chorus, nginx, chorus,
# nginx, ... for ROUNDS) with the same URL, threads, connections and duration; the best round of
# each is kept. Prints both and the ratio chorus/nginx (target >= 0.8), writes
# bench/results/live-poll-<UTC timestamp>.json, exits 1 if any run saw non-2xx or socket errors.
#
# chorus runs with live.retention.max_age=1h so the answer cannot change during the run (the
# default 60 s would let the messages age out mid-run; retention length does not change the cost
# of a poll, which reads the newest messages after `since`).
#
# Environment:
#   CHORUS_BIN   chorus binary; unset = build the release preset. Not passed on to chorus.
#   MESSAGES     messages in the room and in every answer (15, the default poll limit)
#   DURATION     wrk duration per round (10s)     WARMUP   warm-up per server (2s)
#   CONNECTIONS  wrk -c (64)                      THREADS  wrk -t (2)
#   ROUNDS       alternations (2)                 SHARDS   chorus runtime.shards = nginx workers (nproc)
#   LIVE_ARGS    extra `chorus live` flags        NGINX_BIN  (/usr/sbin/nginx)
#   BENCH_RESULTS_DIR  where the JSON result goes (bench/results)
#   KEEP_TMP=1   keep the temporary directory (logs, configs, wrk outputs)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LOG_TAG=live_poll
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

MESSAGES=${MESSAGES:-15}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
SHARDS=${SHARDS:-$(nproc)}
NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}
BENCH_RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/bench/results}
ROOM=r1

for tool in wrk curl python3 "$NGINX_BIN"; do
  command -v "$tool" >/dev/null || die "$tool not found (scripts/install-deps.sh installs it)"
done
((MESSAGES >= 1 && MESSAGES <= 50)) || die "MESSAGES must be 1..50 (live.poll.limit_max)"
resolve_chorus_bin
bench_tmp live-poll
read -r P_CHORUS P_NGINX < <(free_ports 2)

# ---------------------------------------------------------------------------------------------
# chorus: start, publish, learn the answer.
mkdir -p "$TMP/data"
# shellcheck disable=SC2206  # LIVE_ARGS is meant to split into words
extra_args=(${LIVE_ARGS:-})
chorus_args=(--http "127.0.0.1:$P_CHORUS" --grpc '' --data-dir "$TMP/data" --set "runtime.shards=$SHARDS"
  --set log.level=warn --set live.retention.max_age=1h "${extra_args[@]}")
LOG=$TMP/chorus.log
start_group env -u CHORUS_BIN "$CHORUS_BIN" live "${chorus_args[@]}"
CHORUS_PID=$STARTED_PID
wait_ready "http://127.0.0.1:$P_CHORUS/healthz" "$CHORUS_PID" "$LOG" || die "chorus did not start"
PUBLISH_TOKEN=$(env -u CHORUS_BIN "$CHORUS_BIN" token --data-dir "$TMP/data" --service bench --scope live.publish)

SINCE=$(($(date +%s%3N) - 1000))
body=$(python3 - "$MESSAGES" <<'EOF'
import json, sys
msgs = []
for i in range(int(sys.argv[1])):
    kind = ("chat", "chat", "gift", "chat", "pk", "chat", "notify", "chat")[i % 8]
    m = {"type": kind}
    if kind == "gift":
        m.update(sender={"id": f"u{i}", "level": i % 40}, payload={"gift": "rose", "value": 10 * i + 1})
    elif kind == "chat":
        m.update(sender={"id": f"u{i}", "level": i % 40}, payload={"text": f"message {i} from the poll bench"})
    elif kind == "pk":
        m.update(payload={"blue": 100 + i, "red": 200 + i})
    else:
        m.update(payload={"event": "follow", "user": f"u{i}"})
    msgs.append(m)
print(json.dumps({"messages": msgs}))
EOF
)
status=$(curl -sS -o "$TMP/publish.json" -w '%{http_code}' -H 'Content-Type: application/json' \
  -H "Authorization: Bearer $PUBLISH_TOKEN" --data "$body" "http://127.0.0.1:$P_CHORUS/v1/rooms/$ROOM/messages")
[[ $status == 200 ]] || die "publish answered $status: $(cat "$TMP/publish.json")"
sleep 0.1  # a poll returns messages older than the current millisecond

PATH_Q="/v1/rooms/$ROOM/messages?since=$SINCE&limit=$MESSAGES"
BODY_FILE=$TMP/nginx/html/v1/rooms/$ROOM/messages
mkdir -p "$(dirname "$BODY_FILE")"
status=$(curl -sS -D "$TMP/chorus.headers" -o "$BODY_FILE" -w '%{http_code}' "http://127.0.0.1:$P_CHORUS$PATH_Q")
[[ $status == 200 ]] || die "chorus poll answered $status"
got=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["messages"]))' "$BODY_FILE")
[[ $got == "$MESSAGES" ]] || die "the poll returned $got messages, expected $MESSAGES"
curl -sS -o "$TMP/again.json" "http://127.0.0.1:$P_CHORUS$PATH_Q"
cmp -s "$TMP/again.json" "$BODY_FILE" || die "the poll answer is not stable between requests"
BODY_BYTES=$(wc -c <"$BODY_FILE")
log "chorus poll: $MESSAGES messages, $BODY_BYTES body bytes, $(wc -c <"$TMP/chorus.headers") header bytes:"
sed 's/^/    /' "$TMP/chorus.headers" | tr -d '\r' >&2

# ---------------------------------------------------------------------------------------------
# nginx serving the same bytes at the same path (the query string is ignored by static serving).
write_nginx_conf "$TMP/nginx" "$P_NGINX" "$SHARDS"
LOG=$TMP/nginx/stdout.log
start_group "$NGINX_BIN" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" -g 'daemon off;'
NGINX_PID=$STARTED_PID
wait_ready "http://127.0.0.1:$P_NGINX$PATH_Q" "$NGINX_PID" "$TMP/nginx/error.log" || die "nginx did not start"
curl -sS -D "$TMP/nginx.headers" -o "$TMP/nginx.body" "http://127.0.0.1:$P_NGINX$PATH_Q"
cmp -s "$TMP/nginx.body" "$BODY_FILE" || die "nginx does not serve the same body bytes"
log "nginx: $(wc -c <"$TMP/nginx.body") body bytes, $(wc -c <"$TMP/nginx.headers") header bytes:"
sed 's/^/    /' "$TMP/nginx.headers" | tr -d '\r' >&2

# ---------------------------------------------------------------------------------------------
# wrk rounds.
declare -A URLS=([chorus]="http://127.0.0.1:$P_CHORUS$PATH_Q" [nginx]="http://127.0.0.1:$P_NGINX$PATH_Q")
wrk_rounds chorus "${URLS[chorus]}" nginx "${URLS[nginx]}"

# ---------------------------------------------------------------------------------------------
# Report.
RATIO=$(awk -v a="${BEST_RPS[chorus]}" -v b="${BEST_RPS[nginx]}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
TARGET_MET=$(awk -v r="$RATIO" 'BEGIN { print (r >= 0.8 ? "true" : "false") }')
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$BENCH_RESULTS_DIR"
OUT=$BENCH_RESULTS_DIR/live-poll-$STAMP.json
cat >"$OUT" <<EOF
{
  "name": "live-poll",
  "timestamp": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "host": {"cores": $(nproc), "hostname": "$(uname -n)"},
  "params": {"load_generator": "wrk", "url_path": "$PATH_Q", "messages": "$MESSAGES", "body_bytes": "$BODY_BYTES", "connections": "$CONNECTIONS", "threads": "$THREADS", "duration": "$DURATION", "warmup": "$WARMUP", "rounds": "$ROUNDS", "best_of": "rounds", "nginx_workers": "$SHARDS", "chorus_args": "${chorus_args[*]:4}"},
  "subject": ${BEST_JSON[chorus]},
  "peers": [${BEST_JSON[nginx]}],
  "ratios": {"chorus/nginx": $RATIO},
  "targets": {"chorus/nginx >= 0.8": $TARGET_MET},
  "runs": [$RUNS_JSON]
}
EOF
if command -v jq >/dev/null; then jq . "$OUT" >/dev/null || die "wrote invalid JSON to $OUT"; fi
log "wrote $OUT"
summary="live-poll: chorus $(printf '%.0f' "${BEST_RPS[chorus]}") req/s, nginx $(printf '%.0f' "${BEST_RPS[nginx]}") req/s, ratio $(printf '%.2f' "$RATIO")x (target >= 0.8); $MESSAGES messages, $BODY_BYTES bytes; p50 $(ms "${BEST_P50[chorus]}") p99 $(ms "${BEST_P99[chorus]}")"
[[ $ERRORS == 0 ]] || summary+="; ERRORS $ERRORS"
echo "$summary"

FAILED=0
[[ $ERRORS == 0 ]] || exit 1
