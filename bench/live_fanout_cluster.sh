#!/usr/bin/env bash
# live_fanout_cluster.sh — live-room fan-out across NODES `chorus live` nodes (docs/scale-out.md,
# "live across nodes") against the single embedded `chorus live`, same load, same run.
#
# The fleet, on loopback in a temporary directory: nats-server, redis-server (the poll store) and
# NODES × `chorus live` with live.cluster.enabled=true, live.store=redis, live.node_id=1..NODES,
# one shared data_dir (the token secret). `chorus-bench live-fanout` spreads its subscriber
# processes round-robin over the nodes' WebSocket ports (--subscriber-url per node; PROCS is at
# least NODES) and publishes on node 1 (--url), which forwards to the room's owner if it is not
# the owner itself; the owner fans each block out over NATS to every node with members. The peer
# is one `chorus live` as live_fanout.sh runs it (in-memory store, no cluster). Both get the same
# SUBSCRIBERS, PROCS, RATE, BLOCK_INTERVAL, DURATION, alternating for ROUNDS; best (lowest server
# CPU per delivery) of each.
#
# Server CPU is the sum over the fleet's chorus processes (--server-pid per node); nats-server's
# and redis-server's CPU is reported apart (infra_cpu_s, --infra-pid) and in the total per delivery.
# Each node gets NODE_SHARDS shards (default: the cores divided among the nodes, at least 1).
# One host, 2 cores: a shape check of the fan-out path through NATS, not a scale-out figure.
#
# Prints deliveries/s, CPU per million deliveries (chorus nodes, and with nats+redis), latency
# p50/p99, missed blocks, ratios cluster/embedded; writes
# bench/results/live-fanout-cluster-<UTC timestamp>.json. Exits 1 when a run saw errors.
#
# Environment:
#   CHORUS_BIN, BENCH_BIN   as in live_fanout.sh (unset: the release preset is built)
#   NODES (3)          live nodes                   NODE_SHARDS  runtime.shards per node (nproc/NODES, >= 1)
#   SHARDS (nproc)     the embedded peer's shards   EMBEDDED  1 (default): also run the embedded peer; 0: fleet only
#   SUBSCRIBERS (1000) PROCS (max(NODES, ceil(N/5000))) RATE (100) BLOCK_INTERVAL (1s)
#   DURATION (20s) WARMUP (3s) ROUNDS (1)
#   LIVE_ARGS          extra flags for every `chorus live` (fleet and peer)
#   NATS_BIN, REDIS_BIN, REDIS_CLI: see bench/engines.sh
#   BENCH_RESULTS_DIR  where the JSON result goes (bench/results)
#   KEEP_TMP=1         keep the temporary directory (logs, per-run reports)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LOG_TAG=live_fanout_cluster
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
# shellcheck source=bench/engines.sh
source "$ROOT/bench/engines.sh"

NODES=${NODES:-3}
SHARDS=${SHARDS:-$(nproc)}
NODE_SHARDS=${NODE_SHARDS:-$((SHARDS / NODES > 0 ? SHARDS / NODES : 1))}
EMBEDDED=${EMBEDDED:-1}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
min_procs=$(((SUBSCRIBERS + 4999) / 5000))
PROCS=${PROCS:-$((min_procs > NODES ? min_procs : NODES))}
RATE=${RATE:-100}
BLOCK_INTERVAL=${BLOCK_INTERVAL:-1s}
DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-3s}
ROUNDS=${ROUNDS:-1}
BENCH_RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/bench/results}
ROOM=r1

((NODES >= 1)) || die "NODES must be at least 1"
((PROCS >= NODES)) || log "PROCS=$PROCS < NODES=$NODES: some nodes get no subscribers"
need_tools curl python3 "$NATS_BIN" "$REDIS_BIN" "$REDIS_CLI"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if ((SUBSCRIBERS + 64 > $(ulimit -n))); then
  die "$SUBSCRIBERS subscribers need more open files than the limit $(ulimit -n) allows one server"
fi

resolve_chorus_bin
resolve_bench_bin live-fanout
"$BENCH_BIN" live-fanout --help 2>/dev/null | grep -q -- '--subscriber-url' ||
  die "$BENCH_BIN's live-fanout has no --subscriber-url (rebuild chorus-bench)"

bench_tmp live-fanout-cluster
read -r -a PORTS < <(free_ports $((NODES + 3)))
P_NATS=${PORTS[0]} P_REDIS=${PORTS[1]} P_EMBEDDED=${PORTS[2]}
NODE_PORTS=("${PORTS[@]:3}")
# shellcheck disable=SC2206  # LIVE_ARGS is meant to split into words
extra_args=(${LIVE_ARGS:-})
chorus() { env -u CHORUS_BIN "$CHORUS_BIN" "$@"; }

# ---------------------------------------------------------------------------------------------
# Engines, fleet, peer.
start_nats "$TMP/nats" "$P_NATS"
start_redis "$TMP/redis" "$P_REDIS"
mkdir -p "$TMP/fleet-data"
NODE_PIDS=()
SUB_URLS=()
for i in $(seq 1 "$NODES"); do
  port=${NODE_PORTS[$((i - 1))]}
  LOG=$TMP/node$i.log
  start_group env -u CHORUS_BIN "$CHORUS_BIN" live --http "127.0.0.1:$port" --grpc '' --data-dir "$TMP/fleet-data" \
    --set "runtime.shards=$NODE_SHARDS" --set log.level=warn --set "live.block_interval=$BLOCK_INTERVAL" \
    --set "live.node_id=$i" --set live.store=redis --set "live.redis.address=127.0.0.1:$P_REDIS" \
    --set live.cluster.enabled=true --set "live.cluster.nats_urls=nats://127.0.0.1:$P_NATS" "${extra_args[@]}"
  NODE_PIDS+=("$STARTED_PID")
  SUB_URLS+=("http://127.0.0.1:$port")
  # One at a time: the first creates the token secret in the shared data dir.
  wait_ready "http://127.0.0.1:$port/readyz" "$STARTED_PID" "$LOG" || die "live node $i did not start"
done
# Every node sees every other before the load.
for _ in $(seq 100); do
  all=1
  for port in "${NODE_PORTS[@]}"; do
    n=$(curl -fsS "http://127.0.0.1:$port/v1/live/cluster" 2>/dev/null |
      python3 -c 'import json,sys; print(len(json.load(sys.stdin)["nodes"]))' 2>/dev/null || echo 0)
    ((n == NODES)) || all=0
  done
  ((all == 1)) && break
  sleep 0.1
done
((all == 1)) || die "the live nodes did not all see each other within 10 s"
OWNER=$(curl -fsS "http://127.0.0.1:${NODE_PORTS[0]}/v1/live/cluster?room=$ROOM" |
  python3 -c 'import json,sys; print(json.load(sys.stdin).get("owner", "?"))' 2>/dev/null || echo "?")
log "fleet: $NODES × chorus live ($NODE_SHARDS shard(s) each) on ports ${NODE_PORTS[*]} (pids ${NODE_PIDS[*]}); room $ROOM owned by node $OWNER, publisher on node 1"
FLEET_USER_TOKEN=$(chorus token --data-dir "$TMP/fleet-data" --user bench-viewer)
FLEET_PUBLISH_TOKEN=$(chorus token --data-dir "$TMP/fleet-data" --service bench --scope live.publish)

SYSTEMS=(cluster)
if ((EMBEDDED == 1)); then
  mkdir -p "$TMP/embedded-data"
  LOG=$TMP/embedded.log
  start_group env -u CHORUS_BIN "$CHORUS_BIN" live --http "127.0.0.1:$P_EMBEDDED" --grpc '' --data-dir "$TMP/embedded-data" \
    --set "runtime.shards=$SHARDS" --set log.level=warn --set "live.block_interval=$BLOCK_INTERVAL" "${extra_args[@]}"
  EMBEDDED_PID=$STARTED_PID
  wait_ready "http://127.0.0.1:$P_EMBEDDED/healthz" "$EMBEDDED_PID" "$LOG" || die "embedded chorus live did not start"
  EMBEDDED_USER_TOKEN=$(chorus token --data-dir "$TMP/embedded-data" --user bench-viewer)
  EMBEDDED_PUBLISH_TOKEN=$(chorus token --data-dir "$TMP/embedded-data" --service bench --scope live.publish)
  log "embedded chorus live on 127.0.0.1:$P_EMBEDDED (pid $EMBEDDED_PID, $SHARDS shards, in-memory store)"
  SYSTEMS+=(embedded)
fi

# ---------------------------------------------------------------------------------------------
# Runs.
sub_list=$(IFS=,; echo "${SUB_URLS[*]}")
pid_list=$(IFS=,; echo "${NODE_PIDS[*]}")
STATUS=0
for round in $(seq "$ROUNDS"); do
  for system in "${SYSTEMS[@]}"; do
    log "round $round: $system, $SUBSCRIBERS subscribers in $PROCS processes, $RATE msg/s, $DURATION"
    if [[ $system == cluster ]]; then
      target=(--url "${SUB_URLS[0]}" --subscriber-url "$sub_list" --server-pid "$pid_list"
        --infra-pid "$NATS_PID,$REDIS_PID" --ws-target "/v1/ws?format=json&token=$FLEET_USER_TOKEN"
        --publish-token "$FLEET_PUBLISH_TOKEN")
    else
      target=(--url "http://127.0.0.1:$P_EMBEDDED" --server-pid "$EMBEDDED_PID"
        --ws-target "/v1/ws?format=json&token=$EMBEDDED_USER_TOKEN" --publish-token "$EMBEDDED_PUBLISH_TOKEN")
    fi
    rc=0
    "$BENCH_BIN" live-fanout "${target[@]}" --room "$ROOM" --subscribers "$SUBSCRIBERS" \
      --procs "$PROCS" --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" \
      --system "$system" --out "$TMP/$system-$round.json" >&2 || rc=$?
    if ((rc == 1)); then
      STATUS=1
      log "$system round $round saw errors (see the counts in its report)"
    elif ((rc != 0)); then
      die "chorus-bench live-fanout failed against $system (exit $rc)"
    fi
    if [[ $system == cluster ]]; then
      for i in "${!NODE_PIDS[@]}"; do
        kill -0 "${NODE_PIDS[$i]}" 2>/dev/null || die "live node $((i + 1)) died during the run; log: $TMP/node$((i + 1)).log"
      done
    else
      kill -0 "$EMBEDDED_PID" 2>/dev/null || die "embedded chorus live died during the run; log: $TMP/embedded.log"
    fi
  done
done

# ---------------------------------------------------------------------------------------------
# Report.
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$BENCH_RESULTS_DIR"
OUT=$BENCH_RESULTS_DIR/live-fanout-cluster-$STAMP.json
python3 - "$TMP" "$OUT" "$ROUNDS" "${SYSTEMS[@]}" <<EOF
import datetime, json, sys
tmp, out, rounds, systems = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
params = {"nodes": "$NODES", "node_shards": "$NODE_SHARDS", "embedded_shards": "$SHARDS",
          "subscribers": "$SUBSCRIBERS", "procs": "$PROCS", "rate": "$RATE",
          "block_interval": "$BLOCK_INTERVAL", "duration": "$DURATION", "warmup": "$WARMUP",
          "rounds": str(rounds), "best_of": "lowest server_cpu_s_per_million_deliveries",
          "room": "$ROOM", "room_owner_node": "$OWNER", "publisher_node": "1", "frames": "json",
          "live_args": "${LIVE_ARGS:-}", "load_generator": "chorus-bench live-fanout",
          "cluster": "live.cluster.enabled=true, live.store=redis, nats-server + redis-server on loopback",
          "embedded": "one chorus live, live.store=memory"}
fig = lambda m, k: m.get("figures", {}).get(k, 0)
cpu = lambda m: fig(m, "server_cpu_s_per_million_deliveries")
p99 = lambda m: m.get("latency", {}).get("p99_ns", 0)
p50 = lambda m: m.get("latency", {}).get("p50_ns", 0)
runs, best, host = [], {}, None
for r in range(1, rounds + 1):
    for s in systems:
        rep = json.load(open(f"{tmp}/{s}-{r}.json"))
        host = rep["host"]
        m = rep["subject"]
        runs.append({"system": s, "round": r, "throughput": m["throughput"],
                     "server_cpu_s_per_million_deliveries": cpu(m), "p99_ns": p99(m),
                     "missed_blocks": m["counts"].get("missed_blocks", 0)})
        if s not in best or (cpu(m) > 0 and cpu(m) < cpu(best[s])):
            best[s] = m
subject = best["cluster"]
peers = [best[s] for s in systems if s != "cluster"]
ratios, cost_ratios = {}, {}
for p in peers:
    if p["throughput"] > 0:
        ratios["cluster/" + p["system"]] = round(subject["throughput"] / p["throughput"], 3)
    if cpu(p) > 0:
        cost_ratios["server_cpu_per_delivery cluster/" + p["system"]] = round(cpu(subject) / cpu(p), 3)
        cost_ratios["total_cpu_per_delivery (with nats+redis) cluster/" + p["system"]] = round(fig(subject, "total_cpu_s_per_million_deliveries") / cpu(p), 3)
    if p99(p) > 0:
        cost_ratios["p99 cluster/" + p["system"]] = round(p99(subject) / p99(p), 3)
report = {"name": "live-fanout-cluster",
          "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
          "host": host, "params": params, "subject": subject, "peers": peers, "ratios": ratios,
          "cost_ratios": cost_ratios, "runs": runs}
json.dump(report, open(out, "w"), indent=2)
open(out, "a").write("\n")

def ms(ns):
    v = ns / 1e6
    return ("%.0f" if v >= 100 else "%.1f" if v >= 10 else "%.2f" if v >= 1 else "%.3f") % v
rows = [("deliveries/s", lambda m: m["throughput"], "{:,.0f}"),
        ("server CPU s / 1M deliveries (chorus)", cpu, "{:.3f}"),
        ("  with nats + redis", lambda m: fig(m, "total_cpu_s_per_million_deliveries") or cpu(m), "{:.3f}"),
        ("server CPU %", lambda m: fig(m, "server_cpu_pct"), "{:.0f}"),
        ("tick-to-receipt p50 ms", p50, None), ("tick-to-receipt p99 ms", p99, None),
        ("subscribed", lambda m: m["counts"].get("subscribed", 0), "{:,}"),
        ("missed blocks", lambda m: m["counts"].get("missed_blocks", 0), "{:,}")]
header = ["figure"] + systems + (["cluster/embedded"] if "embedded" in best else [])
table = [header]
for label, get, fmt in rows:
    vals = [get(best[s]) for s in systems]
    cells = [label] + [ms(v) if fmt is None else fmt.format(v) for v in vals]
    if "embedded" in best:
        b = vals[systems.index("embedded")]
        cells.append(f"{vals[0] / b:.2f}x" if b else "-")
    table.append(cells)
for i in range(int("$NODES")):
    k = f"server_cpu_s_node{i}"
    if k in subject.get("figures", {}):
        table.append([f"  node {i + 1} CPU s" + (" (owner)" if str(i + 1) == "$OWNER" else ""), f"{fig(subject, k):.2f}"])
widths = [max(len(r[i]) if i < len(r) else 0 for r in table) for i in range(len(header))]
for r in table:
    print("  ".join(c.rjust(widths[i]) if i >= 1 else c.ljust(widths[i]) for i, c in enumerate(r)).rstrip(), file=sys.stderr)

errors = sum(sum(v for k, v in m["counts"].items() if "error" in k) for m in [subject] + peers)
line = (f"live-fanout-cluster: {'$NODES'} nodes {subject['throughput']:.0f} deliveries/s ($SUBSCRIBERS subscribers, $RATE msg/s)"
        f", server CPU per 1M deliveries {cpu(subject):.3f}s ({fig(subject, 'total_cpu_s_per_million_deliveries'):.3f}s with nats+redis)"
        f", p50 {ms(p50(subject))}ms p99 {ms(p99(subject))}ms")
for p in peers:
    line += (f"; embedded {p['throughput']:.0f} deliveries/s, {cpu(p):.3f}s per 1M, p50 {ms(p50(p))}ms p99 {ms(p99(p))}ms"
             + (f"; CPU per delivery cluster/embedded {cpu(subject) / cpu(p):.2f}x" if cpu(p) > 0 else ""))
line += "; missed blocks " + "/".join(str(m["counts"].get("missed_blocks", 0)) for m in [subject] + peers)
if errors:
    line += f"; ERRORS {errors}"
print(line)
EOF
if command -v jq >/dev/null; then jq . "$OUT" >/dev/null || die "wrote invalid JSON to $OUT"; fi
log "wrote $OUT"

FAILED=0
exit $STATUS
