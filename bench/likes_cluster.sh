#!/usr/bin/env bash
# likes_cluster.sh — the like platform as a fleet (docs/scale-out.md, deploy/) against the embedded
# `chorus likes`, same workload, same run.
#
# The fleet, all on loopback in a temporary directory: mariadbd (a fresh datadir), nats-server -js,
# redis-server (the cache; REDIS_CACHE=0 leaves it out), `chorus likes migrate` once, then NODES ×
# `chorus likes` (likes.engine=cluster, likes.node_id=nodeI, one shared data_dir for the token
# secret) and one `chorus likes job`. `chorus-bench likes` spreads its CONNECTIONS round-robin over
# the nodes' HTTP ports (repeated --url: no balancer in front, so a user's successive operations
# may land on different nodes). The peer is the embedded `chorus likes` exactly as likes.sh runs it
# (RocksDB, fsynced group commit), started beside the fleet.
#
# Workload and phases are likes.sh's (bench/likes_load.h): the same PRELOAD pairs, then PHASES
# (write, read, mixed with the spike) against each system in turn, ROUNDS times, best of each.
# What "acknowledged" means differs, and the table says so: embedded = fsynced to RocksDB's WAL;
# cluster = in the JetStream stream (nats-server's PubAck; nats-server 2.9 does not fsync per
# message), applied to MariaDB later by the job. So the fleet's figures also include the job's
# side: after the preload and after the phases the script waits until every node's
# chorus_likes_queue_lag is 0 and reports how long the job took (its apply rate), then runs
# `chorus likes verify` against the database (and against the embedded store). Exit 1 when a run
# saw errors, the job did not drain within DRAIN_TIMEOUT, or verify found differences.
#
# One host, 2 cores: the fleet's processes, the engines, the embedded peer and the load generator
# share them. Each node gets NODE_SHARDS shards (default: the cores divided among the nodes, at
# least 1), so the fleet has about the cores the embedded process has; that is a shape check, not
# a scale-out figure: see bench/README.md.
#
# Prints a table with ratios cluster/embedded per figure and one summary line; writes
# bench/results/likes-cluster-<UTC timestamp>.json (schema: bench/report.h, plus "phases",
# "drain", "verify", "runs").
#
# Environment (likes.sh's workload knobs mean the same here):
#   CHORUS_BIN, BENCH_BIN  as in likes.sh (unset: the release preset is built)
#   NODES (3)         service processes          NODE_SHARDS  runtime.shards per node (nproc/NODES, >= 1)
#   SHARDS (nproc)    the embedded peer's shards  EMBEDDED  1 (default): also run the embedded peer; 0: fleet only
#   REDIS_CACHE (1)   likes.redis.seeds = a local redis-server; 0: no cache (reads go to MariaDB)
#   DURATION (10s) WARMUP (2s) PHASES (write,read,mixed) ROUNDS (1) CONNECTIONS (64) THREADS (2)
#   ENTITIES (1000000) USERS (100000) PRELOAD (200000) PRELOAD_BATCH (100) WRITE_BATCH (1) SPIKE_SHARE (0.5)
#   BENCH_ARGS        extra `chorus-bench likes` flags for both systems
#   LIKES_ARGS        extra flags for every fleet `chorus likes` command (nodes, job, migrate, verify)
#   EMBEDDED_ARGS     extra flags for the embedded `chorus likes`
#   DRAIN_TIMEOUT     seconds to wait for the job to apply the backlog (600)
#   VERIFY            1 (default): `chorus likes verify` on both stores after the runs
#   MARIADB_ARGS, MARIADB_BUFFER_POOL (256M), NATS_BIN, REDIS_BIN, ...: see bench/engines.sh
#   BENCH_RESULTS_DIR where the JSON result goes (bench/results)
#   KEEP_TMP=1        keep the temporary directory (every process's log, data, per-run reports)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LOG_TAG=likes_cluster
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
# shellcheck source=bench/engines.sh
source "$ROOT/bench/engines.sh"

NODES=${NODES:-3}
SHARDS=${SHARDS:-$(nproc)}
NODE_SHARDS=${NODE_SHARDS:-$((SHARDS / NODES > 0 ? SHARDS / NODES : 1))}
EMBEDDED=${EMBEDDED:-1}
REDIS_CACHE=${REDIS_CACHE:-1}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
PHASES=${PHASES:-write,read,mixed}
ROUNDS=${ROUNDS:-1}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
ENTITIES=${ENTITIES:-1000000}
USERS=${USERS:-100000}
PRELOAD=${PRELOAD:-200000}
PRELOAD_BATCH=${PRELOAD_BATCH:-100}
WRITE_BATCH=${WRITE_BATCH:-1}
SPIKE_SHARE=${SPIKE_SHARE:-0.5}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-600}
VERIFY=${VERIFY:-1}
BENCH_RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/bench/results}

((NODES >= 1)) || die "NODES must be at least 1"
((PRELOAD >= 1)) || die "PRELOAD must be at least 1"
need_tools curl python3 "$NATS_BIN" "$MARIADBD_BIN" "$MARIADB_INSTALL_DB" "$MARIADB_CLIENT"
((REDIS_CACHE == 1)) && need_tools "$REDIS_BIN" "$REDIS_CLI"

resolve_chorus_bin
resolve_bench_bin likes
"$BENCH_BIN" likes --help 2>/dev/null | grep -q -- 'repeat it' ||
  die "$BENCH_BIN's likes subcommand takes one --url only (rebuild chorus-bench)"

bench_tmp likes-cluster
read -r -a PORTS < <(free_ports $((NODES + 5)))
P_MYSQL=${PORTS[0]} P_NATS=${PORTS[1]} P_REDIS=${PORTS[2]} P_JOB=${PORTS[3]} P_EMBEDDED=${PORTS[4]}
NODE_PORTS=("${PORTS[@]:5}")

# shellcheck disable=SC2206  # the *_ARGS variables are meant to split into words
bench_args=(--entities "$ENTITIES" --users "$USERS" --threads "$THREADS" ${BENCH_ARGS:-})
# shellcheck disable=SC2206
likes_extra=(${LIKES_ARGS:-})
# shellcheck disable=SC2206
embedded_extra=(${EMBEDDED_ARGS:-})
STATUS=0
chorus() { env -u CHORUS_BIN "$CHORUS_BIN" "$@"; }

# ---------------------------------------------------------------------------------------------
# Engines and the fleet.
start_mariadb "$TMP/mariadb" "$P_MYSQL"
start_nats "$TMP/nats" "$P_NATS"
redis_yaml=""
if ((REDIS_CACHE == 1)); then
  start_redis "$TMP/redis" "$P_REDIS"
  redis_yaml="  redis: {seeds: [\"127.0.0.1:$P_REDIS\"]}"
fi

CONFIG=$TMP/likes-cluster.yaml
cat >"$CONFIG" <<YAML
# The fleet's shared configuration (compare deploy/likes-node.yaml); per process: --http,
# likes.node_id, runtime.shards.
log: {level: warn}
likes:
  engine: cluster
  rate_limits: false
  mysql: {host: 127.0.0.1, port: $P_MYSQL, user: $MYSQL_USER, password: $MYSQL_PASSWORD, database: chorus_likes}
  nats: {urls: ["nats://127.0.0.1:$P_NATS"]}
$redis_yaml
YAML
mkdir -p "$TMP/fleet-data"
fleet_args=(--config "$CONFIG" --data-dir "$TMP/fleet-data" "${likes_extra[@]}")
chorus likes migrate "${fleet_args[@]}" >"$TMP/migrate.log" 2>&1 ||
  { sed 's/^/    /' "$TMP/migrate.log" >&2; die "chorus likes migrate failed"; }
log "chorus likes migrate: done"

NODE_PIDS=()
URLS=()
for i in $(seq 0 $((NODES - 1))); do
  port=${NODE_PORTS[$i]}
  LOG=$TMP/node$i.log
  start_group env -u CHORUS_BIN "$CHORUS_BIN" likes "${fleet_args[@]}" --http "127.0.0.1:$port" --grpc '' \
    --set "likes.node_id=node$i" --set "runtime.shards=$NODE_SHARDS"
  NODE_PIDS+=("$STARTED_PID")
  URLS+=("http://127.0.0.1:$port")
done
LOG=$TMP/job.log
start_group env -u CHORUS_BIN "$CHORUS_BIN" likes job "${fleet_args[@]}" --http "127.0.0.1:$P_JOB" --grpc '' \
  --set likes.node_id=job --set runtime.shards=1
JOB_PID=$STARTED_PID
for i in $(seq 0 $((NODES - 1))); do
  wait_ready "${URLS[$i]}/readyz" "${NODE_PIDS[$i]}" "$TMP/node$i.log" || die "fleet node $i did not start"
done
wait_ready "http://127.0.0.1:$P_JOB/readyz" "$JOB_PID" "$TMP/job.log" || die "the likes job did not start"
log "fleet: $NODES × chorus likes (${NODE_SHARDS} shard(s) each) on ports ${NODE_PORTS[*]}, job on $P_JOB (pids ${NODE_PIDS[*]} / $JOB_PID)"
FLEET_TOKEN=$(chorus token --data-dir "$TMP/fleet-data" --service bench --scope likes.write,likes.read)

# drained: every node's queue lag is 0 (each action a node appended is in the database).
drained() {
  local port lag
  for port in "${NODE_PORTS[@]}"; do
    lag=$(metric "$port" chorus_likes_queue_lag)
    [[ $lag == 0 ]] || return 1
  done
}
# mark_job: remembers the job's applied count and the time (the start of a load).
mark_job() { MARK_APPLIED=$(metric "$P_JOB" chorus_likes_job_applied); MARK_AT=$(date +%s.%N); }
# wait_drain LABEL: waits for drained (DRAIN_TIMEOUT); appends to DRAIN_JSON how long that took,
# what the job applied meanwhile, and what it applied since mark_job (its rate under the load).
DRAIN_JSON=""
wait_drain() {
  local label=$1 start applied0 applied1 secs since lag="" port
  start=$(date +%s.%N)
  applied0=$(metric "$P_JOB" chorus_likes_job_applied)
  until drained; do
    if awk -v s="$start" -v n="$(date +%s.%N)" -v t="$DRAIN_TIMEOUT" 'BEGIN { exit !(n - s > t) }'; then
      for port in "${NODE_PORTS[@]}"; do lag+=" $(metric "$port" chorus_likes_queue_lag)"; done
      log "the job did not drain within ${DRAIN_TIMEOUT}s after $label (queue lags:$lag); job log tail:"
      tail -20 "$TMP/job.log" | sed 's/^/    /' >&2
      STATUS=1
      DRAIN_JSON+="${DRAIN_JSON:+, }{\"after\": \"$label\", \"drained\": false}"
      return 1
    fi
    kill -0 "$JOB_PID" 2>/dev/null || die "the likes job died; log: $TMP/job.log"
    sleep 0.2
  done
  applied1=$(metric "$P_JOB" chorus_likes_job_applied)
  secs=$(awk -v s="$start" -v n="$(date +%s.%N)" 'BEGIN { printf "%.2f", n - s }')
  since=$(awk -v s="$MARK_AT" -v n="$(date +%s.%N)" 'BEGIN { printf "%.2f", n - s }')
  log "after $label: the job applied $((applied1 - MARK_APPLIED)) actions in ${since}s since the load began; drained $((applied1 - applied0)) left over in ${secs}s"
  DRAIN_JSON+="${DRAIN_JSON:+, }{\"after\": \"$label\", \"drained\": true, \"seconds\": $secs, \"backlog_at_end\": $((applied1 - applied0)), \"applied_since_load_began\": $((applied1 - MARK_APPLIED)), \"seconds_since_load_began\": $since, \"applied_total\": $applied1}"
}

# ---------------------------------------------------------------------------------------------
# The embedded peer, as likes.sh runs it.
SYSTEMS=(cluster)
declare -A TARGET_ARGS=()
url_args=()
for u in "${URLS[@]}"; do url_args+=(--url "$u"); done
TARGET_ARGS[cluster]="--target chorus ${url_args[*]} --token $FLEET_TOKEN --connections $CONNECTIONS"
if ((EMBEDDED == 1)); then
  mkdir -p "$TMP/embedded-data"
  LOG=$TMP/embedded.log
  start_group env -u CHORUS_BIN "$CHORUS_BIN" likes --http "127.0.0.1:$P_EMBEDDED" --grpc '' \
    --data-dir "$TMP/embedded-data" --set "runtime.shards=$SHARDS" --set log.level=warn \
    --set likes.rate_limits=false "${embedded_extra[@]}"
  EMBEDDED_PID=$STARTED_PID
  wait_ready "http://127.0.0.1:$P_EMBEDDED/readyz" "$EMBEDDED_PID" "$LOG" || die "embedded chorus likes did not start"
  EMBEDDED_TOKEN=$(chorus token --data-dir "$TMP/embedded-data" --service bench --scope likes.write,likes.read)
  TARGET_ARGS[embedded]="--target chorus --url http://127.0.0.1:$P_EMBEDDED --token $EMBEDDED_TOKEN --connections $CONNECTIONS"
  SYSTEMS+=(embedded)
  log "embedded chorus likes on 127.0.0.1:$P_EMBEDDED (pid $EMBEDDED_PID, $SHARDS shards)"
fi

# ---------------------------------------------------------------------------------------------
# Preload, runs.
for system in "${SYSTEMS[@]}"; do
  log "$system: preloading $PRELOAD likes ($PRELOAD_BATCH per write)"
  if [[ $system == cluster ]]; then mark_job; fi
  rc=0
  # shellcheck disable=SC2086  # TARGET_ARGS entries are word lists
  "$BENCH_BIN" likes ${TARGET_ARGS[$system]} "${bench_args[@]}" --phases preload --preload "$PRELOAD" \
    --write-batch "$PRELOAD_BATCH" --system "$system" --out "$TMP/$system-preload.json" >&2 || rc=$?
  if ((rc == 1)); then
    STATUS=1
    log "$system: the preload saw errors (see $TMP/$system-preload.json)"
  elif ((rc != 0)); then
    die "chorus-bench likes (preload) failed against $system (exit $rc)"
  fi
  if [[ $system == cluster ]]; then wait_drain preload || true; fi
done

for round in $(seq "$ROUNDS"); do
  for system in "${SYSTEMS[@]}"; do
    log "round $round: $system, phases $PHASES, $DURATION each after $WARMUP"
    if [[ $system == cluster ]]; then mark_job; fi
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
    if [[ $system == cluster ]]; then
      for i in "${!NODE_PIDS[@]}"; do
        kill -0 "${NODE_PIDS[$i]}" 2>/dev/null || die "fleet node $i died during the run; log: $TMP/node$i.log"
      done
      wait_drain "round $round" || true
    else
      kill -0 "$EMBEDDED_PID" 2>/dev/null || die "embedded chorus died during the run; log: $TMP/embedded.log"
    fi
  done
done

# ---------------------------------------------------------------------------------------------
# Verify.
VERIFY_CLUSTER=null VERIFY_EMBEDDED=null
if ((VERIFY == 1)); then
  rc=0
  chorus likes verify "${fleet_args[@]}" >"$TMP/verify-cluster.txt" 2>&1 || rc=$?
  sed 's/^/    /' "$TMP/verify-cluster.txt" >&2
  if ((rc == 0)); then VERIFY_CLUSTER=true; log "cluster: chorus likes verify: consistent"
  else VERIFY_CLUSTER=false; STATUS=1; log "cluster: chorus likes verify: exit $rc (differences or failure)"; fi
  if ((EMBEDDED == 1)); then
    stop_group "$EMBEDDED_PID"
    rc=0
    chorus likes verify --data-dir "$TMP/embedded-data" >"$TMP/verify-embedded.txt" 2>&1 || rc=$?
    sed 's/^/    /' "$TMP/verify-embedded.txt" >&2
    if ((rc == 0)); then VERIFY_EMBEDDED=true; log "embedded: chorus likes verify: consistent"
    else VERIFY_EMBEDDED=false; STATUS=1; log "embedded: chorus likes verify: exit $rc"; fi
  fi
fi

# ---------------------------------------------------------------------------------------------
# Report.
echo "[$DRAIN_JSON]" >"$TMP/drain.json"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$BENCH_RESULTS_DIR"
OUT=$BENCH_RESULTS_DIR/likes-cluster-$STAMP.json
python3 - "$TMP" "$OUT" "$ROUNDS" "$PHASES" "${SYSTEMS[@]}" <<EOF
import datetime, json, sys
tmp, out, rounds, phases, systems = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(","), sys.argv[5:]
drain = json.load(open(f"{tmp}/drain.json"))
params = {"load_generator": "chorus-bench likes", "phases": ",".join(phases), "duration": "$DURATION",
          "warmup": "$WARMUP", "rounds": str(rounds), "best_of": "highest throughput per phase",
          "entities": "$ENTITIES", "users": "$USERS", "theta": "0.99", "preload": "$PRELOAD",
          "preload_batch": "$PRELOAD_BATCH", "write_batch": "$WRITE_BATCH", "spike_share": "$SPIKE_SHARE",
          "connections": "$CONNECTIONS", "threads": "$THREADS", "nodes": "$NODES",
          "node_shards": "$NODE_SHARDS", "embedded_shards": "$SHARDS", "redis_cache": "$REDIS_CACHE",
          "bench_args": "${BENCH_ARGS:-}", "likes_args": "${LIKES_ARGS:-}",
          "embedded_args": "${EMBEDDED_ARGS:-}", "mariadb_args": "${MARIADB_ARGS:-}",
          "mariadb_buffer_pool": "$MARIADB_BUFFER_POOL",
          "acknowledged": "cluster: in the JetStream stream (PubAck); embedded: fsynced RocksDB WAL"}
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
preload = {s: json.load(open(f"{tmp}/{s}-preload.json"))["subject"] for s in systems}

fig = lambda m, k: m.get("figures", {}).get(k, 0.0)
ratio = lambda a, b: round(a / b, 3) if b > 0 else None
phase_reports = {}
for p in phases:
    subj = best[(p, "cluster")]
    peers = [best[(p, s)] for s in systems if s != "cluster"]
    phase_reports[p] = {"subject": subj, "peers": peers,
                        "ratios": {f"cluster/{q['system']}": ratio(subj["throughput"], q["throughput"]) for q in peers}}

rows = []
def row(phase, label, getter, fmt):
    if phase in phases:
        rows.append((phase, label, [getter(best[(phase, s)]) for s in systems], fmt))
thr = lambda m: m["throughput"]
rows.append(("preload", "actions/s (acknowledged)", [preload[s]["throughput"] for s in systems], "{:,.0f}"))
row("write", "actions/s (acknowledged)", thr, "{:,.0f}")
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
row("mixed", "spike p99 ms", lambda m: fig(m, "spike_p99_ms"), "{:.3g}")
row("mixed", "steady p99 ms", lambda m: fig(m, "steady_p99_ms"), "{:.3g}")
header = ["phase", "figure"] + systems + (["cluster/embedded"] if "embedded" in systems else [])
table = [header]
for phase, label, vals, fmt in rows:
    cells = [phase, label] + [fmt.format(v) for v in vals]
    if "embedded" in systems:
        b = vals[systems.index("embedded")]
        cells.append(f"{vals[0] / b:.2f}x" if b else "-")
    table.append(cells)
for d in drain:
    if d.get("drained"):
        rate = d["applied_since_load_began"] / d["seconds_since_load_began"] if d["seconds_since_load_began"] > 0 else 0
        table.append(["job", f"applied/s, {d['after']} + drain", f"{rate:,.0f}"])
        table.append(["job", f"backlog at the end of {d['after']}", f"{d['backlog_at_end']:,}"])
        table.append(["job", f"drain after {d['after']}", f"{d['seconds']:.1f}s"])
    else:
        table.append(["job", f"drain after {d['after']}", "NOT DRAINED"])
table.append(["verify", "chorus likes verify", str(json.loads("$VERIFY_CLUSTER")), str(json.loads("$VERIFY_EMBEDDED"))][:len(header)])
widths = [max(len(r[i]) if i < len(r) else 0 for r in table) for i in range(len(header))]
for r in table:
    print("  ".join(c.rjust(widths[i]) if i >= 2 else c.ljust(widths[i]) for i, c in enumerate(r)).rstrip(), file=sys.stderr)

errors = sum(r["errors"] for r in runs)
headline = phases[0]
report = {"name": "likes-cluster",
          "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
          "host": host, "params": params,
          "subject": phase_reports[headline]["subject"], "peers": phase_reports[headline]["peers"],
          "ratios": phase_reports[headline]["ratios"], "phases": phase_reports,
          "preload": preload, "drain": drain,
          "verify": {"cluster": json.loads("$VERIFY_CLUSTER"), "embedded": json.loads("$VERIFY_EMBEDDED")},
          "runs": runs}
json.dump(report, open(out, "w"), indent=2)
open(out, "a").write("\n")

def part(phase, label, unit):
    if phase not in phases:
        return None
    a = best[(phase, "cluster")]["throughput"]
    s = f"{label} cluster {a:,.0f} {unit}"
    if "embedded" in systems:
        b = best[(phase, "embedded")]["throughput"]
        s += f", embedded {b:,.0f}" + (f", ratio {a / b:.2f}x" if b else "")
    return s
parts = [part("write", "writes", "actions/s"), part("read", "state reads", "entity-states/s"),
         part("mixed", "mixed 20:1 + spike", "ops/s")]
line = f"likes-cluster ({'$NODES'} nodes + job, MariaDB, JetStream{', Redis' if '$REDIS_CACHE' == '1' else ''}): " + "; ".join(p for p in parts if p)
if "mixed" in phases:
    m = best[("mixed", "cluster")]
    line += f" (cluster p99 write {fig(m, 'write_p99_ms'):.3g}ms state {fig(m, 'state_p99_ms'):.3g}ms spike {fig(m, 'spike_p99_ms'):.3g}ms)"
last = drain[-1] if drain else None
if last and last.get("drained"):
    line += f"; job backlog {last['backlog_at_end']:,} actions at the end, drained in {last['seconds']:.1f}s"
elif last:
    line += "; job NOT drained"
line += f"; verify cluster {json.loads('$VERIFY_CLUSTER')}"
if errors:
    line += f"; ERRORS {errors}"
print(line)
EOF
if command -v jq >/dev/null; then jq . "$OUT" >/dev/null || die "wrote invalid JSON to $OUT"; fi
log "wrote $OUT"

FAILED=0
exit $STATUS
