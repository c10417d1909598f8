#!/usr/bin/env bash
# likes.sh — the like platform (`chorus likes`) against Redis doing the same primitive work.
#
# Workload (`chorus-bench likes`, bench/likes_load.h): entities Zipf θ=0.99 over ENTITIES
# (scrambled ids), users uniform over USERS; like/unlike toggles; batch state reads of 20
# entities; counts reads of 20 entities. Three systems, each first preloaded with PRELOAD likes
# (distinct (user, entity) pairs, the same pairs everywhere):
#   chorus     `chorus likes` on a temporary data dir, rate limits off (likes.rate_limits=false);
#              every write is durable (fsynced group commit) before its response;
#   redis-aof  redis-server --appendonly yes --appendfsync always: acknowledged after the AOF
#              fsync; the like-for-like peer for durable writes;
#   redis-mem  redis-server --appendonly no --save "": memory only; the peer for reads, where
#              durability does not matter.
# Redis does per write ZADD user:likes:{b}:{user} + HINCRBY count:{b}:{entity} (ZREM and -1 on
# unlike), per state read 20 ZSCOREs, per counts read 20 HMGETs, pipelined (PIPELINE operations in
# flight on each of REDIS_CONNECTIONS connections). chorus gets CONNECTIONS closed-loop HTTP/1.1
# keep-alive connections with HTTP_PIPELINE requests in flight each (1 by default; > 1 is
# HTTP/1.1 pipelining, `chorus-bench likes --pipeline`): by default 64 operations in flight on
# both sides. HTTP_PIPELINE=16 CONNECTIONS=4 gives chorus the Redis peer's shape (4 connections
# x 16 in flight, one send() and one recv() per many requests).
#
# Phases (PHASES, each DURATION after WARMUP, run in order against one system, then the next):
#   write  writes only: durable actions/s           (target: chorus/redis-aof >= 1)
#   read   state reads only: entity-states/s        (target: chorus/redis-mem >= 1)
#   mixed  20 reads per write (20% of reads counts reads) with a SPIKE: during the middle third
#          SPIKE_SHARE of all operations aim at one cold entity
# Storage: after the preload chorus is stopped (SIGTERM) and `du -sb DATA/likes` / PRELOAD is
# the bytes per like record; RocksDB leaves a closed store's recent writes in its write-ahead log,
# so chorus is started and stopped once more (reopening replays the log into tables) and measured
# again ("settled"), then restarted on the same data for the phases. For context: Redis's AOF
# bytes per like (redis-aof, after the preload), RDB bytes per like (redis-mem, SAVE after the
# preload) and used_memory per like. At the end chorus is stopped again and `chorus likes verify` checks
# the store (counts = records) unless VERIFY=0.
#
# Prints a table with ratios chorus/redis and one summary line; writes
# bench/results/likes-<UTC timestamp>.json (schema: bench/report.h, plus "phases", "storage",
# "targets", "runs"). Exits 1 when a run saw errors (non-2xx, failed batch actions, socket
# errors, Redis error replies) or verify found differences.
#
# Environment:
#   CHORUS_BIN        chorus binary; unset = build the release preset. Not passed on to chorus.
#   BENCH_BIN         chorus-bench binary; unset = the one beside CHORUS_BIN's build tree, else built
#   DURATION          measured window per phase (10s)      WARMUP  load before each window (2s)
#   PHASES            write,read,mixed                     ROUNDS  alternations (1); best of each
#   CONNECTIONS       chorus connections (64)              THREADS load threads (2)
#   HTTP_PIPELINE   requests in flight on each chorus connection (1; > 1: HTTP/1.1 pipelining)
#   REDIS_CONNECTIONS redis connections (4)                PIPELINE operations in flight on each (16)
#   ENTITIES (1000000)  USERS (100000)  PRELOAD (200000)  PRELOAD_BATCH actions per preload write (100)
#   WRITE_BATCH       actions per write in the phases (1: POST /v1/likes; >1: /v1/likes/batch)
#   SPIKE_SHARE       (0.5)                                SHARDS  chorus runtime.shards (nproc)
#   BENCH_ARGS        extra `chorus-bench likes` flags for every system, e.g. "--owners 10000"
#   REDIS_ARGS        extra `chorus-bench likes` flags for the Redis runs, e.g. "--redis-likers"
#   LIKES_ARGS        extra `chorus likes` flags, e.g. "--set likes.flush_interval=10s"
#   PEERS             "redis-aof redis-mem" (default), a subset, or "none"
#   REDIS_ONLY=1      skip chorus: checks the harness and Redis alone, writes no result file
#   VERIFY            1 (default): `chorus likes verify` after the runs
#   REDIS_BIN (/usr/bin/redis-server)  REDIS_CLI (/usr/bin/redis-cli)
#   BENCH_RESULTS_DIR where the JSON result goes (bench/results)
#   KEEP_TMP=1        keep the temporary directory (logs, data, per-run reports)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LOG_TAG=likes
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
PHASES=${PHASES:-write,read,mixed}
ROUNDS=${ROUNDS:-1}
CONNECTIONS=${CONNECTIONS:-64}
HTTP_PIPELINE=${HTTP_PIPELINE:-1}
THREADS=${THREADS:-2}
REDIS_CONNECTIONS=${REDIS_CONNECTIONS:-4}
PIPELINE=${PIPELINE:-16}
ENTITIES=${ENTITIES:-1000000}
USERS=${USERS:-100000}
PRELOAD=${PRELOAD:-200000}
PRELOAD_BATCH=${PRELOAD_BATCH:-100}
WRITE_BATCH=${WRITE_BATCH:-1}
SPIKE_SHARE=${SPIKE_SHARE:-0.5}
SHARDS=${SHARDS:-$(nproc)}
PEERS=${PEERS:-redis-aof redis-mem}
REDIS_ONLY=${REDIS_ONLY:-0}
VERIFY=${VERIFY:-1}
REDIS_BIN=${REDIS_BIN:-/usr/bin/redis-server}
REDIS_CLI=${REDIS_CLI:-/usr/bin/redis-cli}
BENCH_RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/bench/results}
[[ $PEERS == none ]] && PEERS=""

for tool in curl python3 du; do
  command -v "$tool" >/dev/null || die "$tool not found (scripts/install-deps.sh installs it)"
done
if [[ -n $PEERS ]]; then
  for tool in "$REDIS_BIN" "$REDIS_CLI"; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install redis-server)"
  done
fi
for peer in $PEERS; do
  [[ $peer == redis-aof || $peer == redis-mem ]] || die "PEERS: unknown peer '$peer' (redis-aof, redis-mem, none)"
done
((PRELOAD >= 1)) || die "PRELOAD must be at least 1 (bytes per record are measured on it)"
if ! [[ $HTTP_PIPELINE =~ ^[0-9]+$ ]] || ((HTTP_PIPELINE < 1 || HTTP_PIPELINE > 1024)); then
  die "HTTP_PIPELINE must be 1..1024 (requests in flight per chorus connection)"
fi
[[ $REDIS_ONLY == 1 && -z $PEERS ]] && die "REDIS_ONLY=1 with PEERS=none leaves nothing to run"

if [[ $REDIS_ONLY != 1 ]]; then
  resolve_chorus_bin
fi
resolve_bench_bin likes

bench_tmp likes
read -r P_CHORUS P_AOF P_MEM < <(free_ports 3)

# shellcheck disable=SC2206  # the *_ARGS variables are meant to split into words
bench_args=(--entities "$ENTITIES" --users "$USERS" --threads "$THREADS" ${BENCH_ARGS:-})
# shellcheck disable=SC2206
redis_extra=(${REDIS_ARGS:-})
# shellcheck disable=SC2206
likes_extra=(${LIKES_ARGS:-})
STATUS=0

# ---------------------------------------------------------------------------------------------
# Helpers.

# preload SYSTEM TARGET_ARGS...: likes the PRELOAD pairs; the report goes to $TMP/SYSTEM-preload.json.
preload() {
  local system=$1 rc=0
  shift
  log "$system: preloading $PRELOAD likes ($PRELOAD_BATCH per write)"
  "$BENCH_BIN" likes "$@" "${bench_args[@]}" --phases preload --preload "$PRELOAD" \
    --write-batch "$PRELOAD_BATCH" --system "$system" --out "$TMP/$system-preload.json" >&2 || rc=$?
  if ((rc == 1)); then
    STATUS=1
    log "$system: the preload saw errors (see $TMP/$system-preload.json); later figures assume it all landed"
  elif ((rc != 0)); then
    die "chorus-bench likes (preload) failed against $system (exit $rc)"
  fi
}

# preloaded_actions SYSTEM: the actions the preload got acknowledged.
preloaded_actions() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["subject"]["counts"]["write_actions"])' \
    "$TMP/$1-preload.json"
}

# redis_ready PORT PID LOG
redis_ready() {
  for _ in $(seq 100); do
    kill -0 "$2" 2>/dev/null || { log "redis exited; its log:"; sed 's/^/    /' "$3" >&2; return 1; }
    [[ $("$REDIS_CLI" -p "$1" ping 2>/dev/null) == PONG ]] && return 0
    sleep 0.1
  done
  log "redis on port $1 did not answer PING within 10 s"
  return 1
}

redis_info() {  # redis_info PORT FIELD
  "$REDIS_CLI" -p "$1" info all | tr -d '\r' | sed -n "s/^$2://p"
}

# chorus_start: starts `chorus likes` on $TMP/data and waits until /readyz answers 200.
chorus_start() {
  LOG=$TMP/chorus-$((++CHORUS_STARTS)).log
  start_group env -u CHORUS_BIN "$CHORUS_BIN" likes "${chorus_args[@]}"
  CHORUS_PID=$STARTED_PID
  wait_ready "http://127.0.0.1:$P_CHORUS/readyz" "$CHORUS_PID" "$LOG" || die "chorus did not start"
}

# chorus_stop: SIGTERM, then waits (up to 120 s) for a clean exit so the store is closed.
chorus_stop() {
  local rc=0
  kill -TERM "$CHORUS_PID" 2>/dev/null || true
  for _ in $(seq 1200); do kill -0 "$CHORUS_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$CHORUS_PID" 2>/dev/null; then
    log "chorus did not stop within 120 s after SIGTERM: killing it (on-disk figures may be off)"
  else
    wait "$CHORUS_PID" 2>/dev/null || rc=$?
    ((rc == 0)) || log "chorus exited with status $rc on SIGTERM (log: $LOG)"
  fi
  stop_group "$CHORUS_PID"
}

# store_bytes DIR: total bytes, then those in table files (.sst), write-ahead logs (.log), the rest.
store_bytes() {
  python3 - "$1" <<'EOF'
import os, sys
sst = wal = other = 0
for d, _, files in os.walk(sys.argv[1]):
    for f in files:
        size = os.path.getsize(os.path.join(d, f))
        if f.endswith(".sst"): sst += size
        elif f.endswith(".log"): wal += size
        else: other += size
print(sst + wal + other, sst, wal, other)
EOF
}

# ---------------------------------------------------------------------------------------------
# Servers, preloads and storage figures.
SYSTEMS=()
declare -A TARGET_ARGS=()
STORAGE_JSON=""
add_storage() { STORAGE_JSON+="${STORAGE_JSON:+, }$1"; }

if [[ $REDIS_ONLY != 1 ]]; then
  mkdir -p "$TMP/data"
  chorus_args=(--http "127.0.0.1:$P_CHORUS" --grpc '' --data-dir "$TMP/data" --set "runtime.shards=$SHARDS"
    --set log.level=warn --set likes.rate_limits=false "${likes_extra[@]}")
  CHORUS_STARTS=0
  chorus_start
  TOKEN=$(env -u CHORUS_BIN "$CHORUS_BIN" token --data-dir "$TMP/data" --service bench --scope likes.write,likes.read)
  log "chorus likes on 127.0.0.1:$P_CHORUS (pid $CHORUS_PID): ${chorus_args[*]:4}"
  TARGET_ARGS[chorus]="--target chorus --url http://127.0.0.1:$P_CHORUS --token $TOKEN --connections $CONNECTIONS --pipeline $HTTP_PIPELINE"
  # shellcheck disable=SC2086  # TARGET_ARGS entries are word lists
  preload chorus ${TARGET_ARGS[chorus]}
  n=$(preloaded_actions chorus)
  chorus_stop
  store=$TMP/data/likes
  [[ -d $store ]] || { log "no $store: measuring the whole data dir"; store=$TMP/data; }
  per_like() { awk -v b="$1" -v n="$n" 'BEGIN { printf "%.1f", (n > 0 ? b / n : 0) }'; }
  read -r bytes sst wal other < <(store_bytes "$store")
  log "chorus store after $n likes, stopped: $bytes bytes in $store ($sst in .sst, $wal in .log, $other other): $(per_like "$bytes") bytes per like"
  # RocksDB keeps a closed store's recent writes in its write-ahead log; reopening replays and
  # flushes them into tables. Restart once and measure again: the settled figure.
  chorus_start
  chorus_stop
  read -r bytes2 sst2 wal2 other2 < <(store_bytes "$store")
  log "chorus store after a restart: $bytes2 bytes ($sst2 in .sst, $wal2 in .log, $other2 other): $(per_like "$bytes2") bytes per like"
  add_storage "\"chorus\": {\"likes\": $n, \"bytes\": $bytes, \"bytes_per_like\": $(per_like "$bytes"), \"sst_bytes\": $sst, \"wal_bytes\": $wal, \"other_bytes\": $other, \"settled_bytes\": $bytes2, \"settled_bytes_per_like\": $(per_like "$bytes2"), \"settled_sst_bytes\": $sst2, \"settled_wal_bytes\": $wal2, \"settled_other_bytes\": $other2, \"measured\": \"du -sb data/likes after SIGTERM; settled: again after a restart (WAL replayed into tables)\"}"
  chorus_start
  SYSTEMS+=(chorus)
else
  log "REDIS_ONLY=1: skipping chorus"
fi

declare -A REDIS_PORT=([redis-aof]=$P_AOF [redis-mem]=$P_MEM)
declare -A REDIS_PID=()
for peer in $PEERS; do
  dir=$TMP/$peer
  mkdir -p "$dir"
  if [[ $peer == redis-aof ]]; then
    persistence=(--appendonly yes --appendfsync always --save '')
  else
    persistence=(--appendonly no --save '')
  fi
  LOG=$dir/redis.log
  start_group "$REDIS_BIN" --port "${REDIS_PORT[$peer]}" --bind 127.0.0.1 --dir "$dir" --daemonize no \
    --logfile '' "${persistence[@]}"
  REDIS_PID[$peer]=$STARTED_PID
  redis_ready "${REDIS_PORT[$peer]}" "$STARTED_PID" "$LOG" || die "$peer did not start"
  log "$peer on 127.0.0.1:${REDIS_PORT[$peer]} (pid $STARTED_PID, $("$REDIS_BIN" --version | awk '{print $3}')): ${persistence[*]}"
  TARGET_ARGS[$peer]="--target redis --redis 127.0.0.1:${REDIS_PORT[$peer]} --connections $REDIS_CONNECTIONS --pipeline $PIPELINE ${redis_extra[*]}"
  mem_before=$(redis_info "${REDIS_PORT[$peer]}" used_memory)
  # shellcheck disable=SC2086
  preload "$peer" ${TARGET_ARGS[$peer]}
  n=$(preloaded_actions "$peer")
  mem=$(( $(redis_info "${REDIS_PORT[$peer]}" used_memory) - mem_before ))
  per() { awk -v b="$1" -v n="$n" 'BEGIN { printf "%.1f", (n > 0 ? b / n : 0) }'; }
  if [[ $peer == redis-aof ]]; then
    aof=$dir/appendonlydir
    [[ -d $aof ]] || aof=$dir/appendonly.aof
    bytes=$(du -sb "$aof" | cut -f1)
    log "$peer after $n likes: AOF $bytes bytes ($(per "$bytes") per like), used_memory +$mem ($(per "$mem") per like)"
    add_storage "\"$peer\": {\"likes\": $n, \"aof_bytes\": $bytes, \"aof_bytes_per_like\": $(per "$bytes"), \"used_memory_bytes\": $mem, \"used_memory_per_like\": $(per "$mem"), \"measured\": \"du -sb of the AOF after the preload (2 commands per like)\"}"
  else
    "$REDIS_CLI" -p "${REDIS_PORT[$peer]}" save >/dev/null
    bytes=$(du -sb "$dir/dump.rdb" | cut -f1)
    log "$peer after $n likes: RDB $bytes bytes ($(per "$bytes") per like), used_memory +$mem ($(per "$mem") per like)"
    add_storage "\"$peer\": {\"likes\": $n, \"rdb_bytes\": $bytes, \"rdb_bytes_per_like\": $(per "$bytes"), \"used_memory_bytes\": $mem, \"used_memory_per_like\": $(per "$mem"), \"measured\": \"SAVE after the preload, size of dump.rdb\"}"
  fi
  SYSTEMS+=("$peer")
done

# ---------------------------------------------------------------------------------------------
# Runs.
for round in $(seq "$ROUNDS"); do
  for system in "${SYSTEMS[@]}"; do
    log "round $round: $system, phases $PHASES, $DURATION each after $WARMUP"
    rc=0
    # shellcheck disable=SC2086
    "$BENCH_BIN" likes ${TARGET_ARGS[$system]} "${bench_args[@]}" --phases "$PHASES" \
      --preloaded "$PRELOAD" --write-batch "$WRITE_BATCH" --spike-share "$SPIKE_SHARE" \
      --duration "$DURATION" --warmup "$WARMUP" --system "$system" \
      --out "$TMP/$system-$round-{phase}.json" >&2 || rc=$?
    if ((rc == 1)); then
      STATUS=1
      log "$system round $round saw errors (see the counts in its reports)"
    elif ((rc != 0)); then
      die "chorus-bench likes failed against $system (exit $rc)"
    fi
    if [[ $system == chorus ]]; then
      kill -0 "$CHORUS_PID" 2>/dev/null || die "chorus died during the run; log: $LOG"
    else
      kill -0 "${REDIS_PID[$system]}" 2>/dev/null || die "$system died during the run"
    fi
  done
done

VERIFY_JSON=null
if [[ $REDIS_ONLY != 1 ]]; then
  chorus_stop
  if [[ $VERIFY == 1 ]]; then
    rc=0
    env -u CHORUS_BIN "$CHORUS_BIN" likes verify --data-dir "$TMP/data" >"$TMP/verify.txt" 2>&1 || rc=$?
    sed 's/^/    /' "$TMP/verify.txt" >&2
    if ((rc == 0)); then
      VERIFY_JSON=true
      log "chorus likes verify: consistent"
    else
      VERIFY_JSON=false
      STATUS=1
      log "chorus likes verify: exit $rc (differences or failure; output above)"
    fi
  fi
fi

# ---------------------------------------------------------------------------------------------
# Report.
echo "{$STORAGE_JSON}" >"$TMP/storage.json"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=""
if [[ $REDIS_ONLY != 1 ]]; then
  mkdir -p "$BENCH_RESULTS_DIR"
  OUT=$BENCH_RESULTS_DIR/likes-$STAMP.json
fi
python3 - "$TMP" "$OUT" "$ROUNDS" "$PHASES" "${SYSTEMS[@]}" <<EOF
import datetime, json, sys
tmp, out, rounds, phases, systems = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(","), sys.argv[5:]
storage = json.loads(open(f"{tmp}/storage.json").read())
verify = json.loads("$VERIFY_JSON")
params = {"load_generator": "chorus-bench likes", "phases": ",".join(phases), "duration": "$DURATION",
          "warmup": "$WARMUP", "rounds": str(rounds), "best_of": "highest throughput per phase",
          "entities": "$ENTITIES", "users": "$USERS", "theta": "0.99", "preload": "$PRELOAD",
          "preload_batch": "$PRELOAD_BATCH", "write_batch": "$WRITE_BATCH", "spike_share": "$SPIKE_SHARE",
          "chorus_connections": "$CONNECTIONS", "chorus_pipeline": "$HTTP_PIPELINE",
          "redis_connections": "$REDIS_CONNECTIONS",
          "redis_pipeline": "$PIPELINE", "threads": "$THREADS", "shards": "$SHARDS",
          "bench_args": "${BENCH_ARGS:-}", "redis_args": "${REDIS_ARGS:-}", "likes_args": "${LIKES_ARGS:-}"}
runs, best, host = [], {}, None
for r in range(1, rounds + 1):
    for s in systems:
        for p in phases:
            rep = json.load(open(f"{tmp}/{s}-{r}-{p}.json"))
            host = rep["host"]
            m = rep["subject"]
            runs.append({"system": s, "round": r, "phase": p, "throughput": m["throughput"], "unit": m["unit"],
                         "errors": sum(v for k, v in m["counts"].items() if k == "non_2xx" or "error" in k)})
            if (p, s) not in best or m["throughput"] > best[(p, s)]["throughput"]:
                best[(p, s)] = m

fig = lambda m, k: m.get("figures", {}).get(k, 0.0)
def ratio(a, b):
    return round(a / b, 3) if b > 0 else None
subject_name = "chorus" if "chorus" in systems else systems[0]
phase_reports = {}
for p in phases:
    subj = best[(p, subject_name)]
    peers = [best[(p, s)] for s in systems if s != subject_name]
    phase_reports[p] = {"subject": subj, "peers": peers,
                        "ratios": {f"{subject_name}/{q['system']}": ratio(subj["throughput"], q["throughput"])
                                   for q in peers if q["throughput"] > 0}}

# The table: one row per figure, one column per system, ratios against each peer.
rows = []
def row(phase, label, getter, fmt):
    if phase not in phases:
        return
    vals = [getter(best[(phase, s)]) for s in systems]
    rows.append((phase, label, vals, fmt))
thr = lambda m: m["throughput"]
row("write", "durable actions/s", thr, "{:,.0f}")
row("write", "write p50 ms", lambda m: fig(m, "write_p50_ms"), "{:.3g}")
row("write", "write p99 ms", lambda m: fig(m, "write_p99_ms"), "{:.3g}")
row("read", "entity-states/s", thr, "{:,.0f}")
row("read", "state reads/s", lambda m: fig(m, "state_requests_per_s"), "{:,.0f}")
row("read", "state p99 ms", lambda m: fig(m, "state_p99_ms"), "{:.3g}")
row("read", "liked share", lambda m: fig(m, "state_liked_share"), "{:.3f}")
row("mixed", "ops/s", thr, "{:,.0f}")
row("mixed", "write actions/s", lambda m: fig(m, "write_actions_per_s"), "{:,.0f}")
row("mixed", "entity-states/s", lambda m: fig(m, "entity_states_per_s"), "{:,.0f}")
row("mixed", "counts entities/s", lambda m: fig(m, "counts_entities_per_s"), "{:,.0f}")
row("mixed", "write p99 ms", lambda m: fig(m, "write_p99_ms"), "{:.3g}")
row("mixed", "state p99 ms", lambda m: fig(m, "state_p99_ms"), "{:.3g}")
row("mixed", "counts p99 ms", lambda m: fig(m, "counts_p99_ms"), "{:.3g}")
row("mixed", "spike ops/s", lambda m: fig(m, "spike_requests_per_s"), "{:,.0f}")
row("mixed", "spike p99 ms", lambda m: fig(m, "spike_p99_ms"), "{:.3g}")
row("mixed", "steady p99 ms", lambda m: fig(m, "steady_p99_ms"), "{:.3g}")
peers = [s for s in systems if s != subject_name]
header = ["phase", "figure"] + systems + [f"{subject_name}/{q}" for q in peers]
table = [header]
for phase, label, vals, fmt in rows:
    cells = [phase, label] + [fmt.format(v) for v in vals]
    for i, q in enumerate(peers):
        a, b = vals[0], vals[systems.index(q)]
        cells.append(f"{a / b:.2f}x" if b else "-")
    table.append(cells)
storage_rows = []
for name, st in storage.items():
    if name == "chorus":
        storage_rows.append(("bytes/like chorus (likes/, stopped)", st["bytes_per_like"]))
        storage_rows.append(("bytes/like chorus (after a restart)", st["settled_bytes_per_like"]))
    elif "aof_bytes" in st:
        storage_rows.append((f"bytes/like {name} (AOF)", st["aof_bytes_per_like"]))
    else:
        storage_rows.append((f"bytes/like {name} (RDB)", st["rdb_bytes_per_like"]))
for label, per in storage_rows:
    table.append(["storage", label, f"{per:,.1f}"] + [""] * (len(header) - 3))
widths = [max(len(r[i]) if i < len(r) else 0 for r in table) for i in range(len(header))]
for r in table:
    print("  ".join(c.rjust(widths[i]) if i >= 2 else c.ljust(widths[i]) for i, c in enumerate(r)).rstrip(), file=sys.stderr)

targets = {}
if "chorus" in systems:
    if "write" in phases and "redis-aof" in systems:
        targets["durable writes/s chorus/redis-aof >= 1"] = best[("write", "chorus")]["throughput"] >= best[("write", "redis-aof")]["throughput"]
    if "read" in phases and "redis-mem" in systems:
        targets["entity-states read/s chorus/redis-mem >= 1"] = best[("read", "chorus")]["throughput"] >= best[("read", "redis-mem")]["throughput"]
errors = sum(r["errors"] for r in runs)
headline = phases[0]
report = {"name": "likes",
          "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
          "host": host, "params": params,
          "subject": phase_reports[headline]["subject"], "peers": phase_reports[headline]["peers"],
          "ratios": phase_reports[headline]["ratios"], "phases": phase_reports, "storage": storage,
          "verify_consistent": verify, "targets": targets, "runs": runs}
if out:
    json.dump(report, open(out, "w"), indent=2)
    open(out, "a").write("\n")

def part(phase, label, unit, peer):
    if phase not in phases:
        return None
    s = f"{label} {subject_name} {best[(phase, subject_name)]['throughput']:,.0f} {unit}"
    if peer in systems and peer != subject_name:
        a, b = best[(phase, subject_name)]["throughput"], best[(phase, peer)]["throughput"]
        s += f", {peer} {b:,.0f}, ratio {a / b:.2f}x" if b else ""
    return s
parts = [part("write", "durable writes", "actions/s", "redis-aof"),
         part("read", "state reads", "entity-states/s", "redis-mem"),
         part("mixed", "mixed 20:1 + spike", "ops/s", "redis-mem")]
line = "likes: " + "; ".join(p for p in parts if p)
if "mixed" in phases:
    m = best[("mixed", subject_name)]
    line += f" (p99 write {fig(m, 'write_p99_ms'):.3g}ms state {fig(m, 'state_p99_ms'):.3g}ms spike {fig(m, 'spike_p99_ms'):.3g}ms)"
if "chorus" in storage:
    line += (f"; {storage['chorus']['bytes_per_like']:,.1f} bytes per like on disk"
             f" ({storage['chorus']['settled_bytes_per_like']:,.1f} after a restart")
    line += ")" if "redis-aof" not in storage else ""
    if "redis-aof" in storage:
        line += f", redis AOF {storage['redis-aof']['aof_bytes_per_like']:,.1f})"
if errors:
    line += f"; ERRORS {errors}"
print(line)
EOF
if [[ -n $OUT ]]; then
  if command -v jq >/dev/null; then jq . "$OUT" >/dev/null || die "wrote invalid JSON to $OUT"; fi
  log "wrote $OUT"
fi

FAILED=0
exit $STATUS
