#!/usr/bin/env bash
# live_fanout.sh — live-room fan-out: chorus against a Bun (uWebSockets) pub/sub peer.
#
# One room, SUBSCRIBERS WebSocket subscribers (JSON frames) in PROCS client processes, a publisher
# posting RATE mixed messages/s (10% gift, 10% pk, 70% chat, 10% notify). Each server turns them
# into one block per BLOCK_INTERVAL (at most 20 messages, highest priority first, the rest carried
# or dropped by rule) and fans it out. `chorus-bench live-fanout` measures each server in turn
# (chorus, bun, chorus, bun, ... for ROUNDS) over the same window and load, and this script prints
# both and the ratios, and writes bench/results/live-fanout-<UTC timestamp>.json.
#
# The headline is server CPU seconds per million deliveries (a delivery = one message received by
# one subscriber), from /proc/<pid>/stat: clients and server share the machine's cores, so
# throughput alone would measure the machine. Also: deliveries/s, tick-to-receipt latency p50/p99
# (receipt wall time - the block's tick_at), blocks missed by subscribers (seq gaps), and drops
# by rule from each server's /metrics. Targets (the issue's): CPU per delivery <= 0.5x Bun, p99
# <= 20 ms at 10k subscribers.
#
# Environment:
#   CHORUS_BIN       chorus binary; unset = build the release preset. Not passed on to chorus,
#                    which reads CHORUS_* variables as configuration keys.
#   BENCH_BIN        chorus-bench binary; unset = the one beside CHORUS_BIN's build tree, else built
#   SUBSCRIBERS      WebSocket subscribers (1000)      PROCS   client processes (ceil(N/5000), >= 2)
#   RATE             published messages/s (100)        BLOCK_INTERVAL  live.block_interval (1s)
#   DURATION         measured window per run (20s)     WARMUP  publishing before it (3s)
#   SHARDS           chorus runtime.shards (nproc)     ROUNDS  alternations (1); best of each kept
#   LIVE_ARGS        extra `chorus live` flags, e.g. "--set live.outbound_queue_bytes=262144"
#   PEER             bun (default) or none
#   BUN_BIN          Bun binary; unset = npm package @oven/bun-linux-x64 in bench/.peers
#                    (installed on demand; the peer is skipped with a message if that fails)
#   BENCH_RESULTS_DIR  where the JSON result goes (bench/results)
#   KEEP_TMP=1       keep the temporary directory (server logs, per-run reports)
# Exits 1 when a run saw errors (failed or lost subscribers, bad frames, failed publishes).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LOG_TAG=live_fanout
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

SUBSCRIBERS=${SUBSCRIBERS:-1000}
PROCS=${PROCS:-$(((SUBSCRIBERS + 4999) / 5000 > 2 ? (SUBSCRIBERS + 4999) / 5000 : 2))}
RATE=${RATE:-100}
BLOCK_INTERVAL=${BLOCK_INTERVAL:-1s}
DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-3s}
SHARDS=${SHARDS:-$(nproc)}
ROUNDS=${ROUNDS:-1}
PEER=${PEER:-bun}
BENCH_RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/bench/results}
ROOM=r1

for tool in curl python3; do
  command -v "$tool" >/dev/null || die "$tool not found (scripts/install-deps.sh installs it)"
done
# Sockets are files: the server needs one per subscriber. Raise the soft limit as far as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if ((SUBSCRIBERS + 64 > $(ulimit -n))); then
  die "$SUBSCRIBERS subscribers need more open files than the limit $(ulimit -n) allows one server"
fi

resolve_chorus_bin
resolve_bench_bin live-fanout

interval_ms=$(python3 -c "
import sys; t = sys.argv[1]
for unit, f in (('ms', 1), ('s', 1000)):
    if t.endswith(unit): print(int(float(t[:-len(unit)]) * f)); break
else: print(int(float(t) * 1000))" "$BLOCK_INTERVAL")

bench_tmp live-fanout
read -r P_CHORUS P_BUN < <(free_ports 2)

# ---------------------------------------------------------------------------------------------
# Servers.
mkdir -p "$TMP/data"
# shellcheck disable=SC2206  # LIVE_ARGS is meant to split into words
extra_args=(${LIVE_ARGS:-})
chorus_args=(--http "127.0.0.1:$P_CHORUS" --grpc '' --data-dir "$TMP/data" --set "runtime.shards=$SHARDS"
  --set log.level=warn --set "live.block_interval=$BLOCK_INTERVAL" "${extra_args[@]}")
LOG=$TMP/chorus.log
start_group env -u CHORUS_BIN "$CHORUS_BIN" live "${chorus_args[@]}"
CHORUS_PID=$STARTED_PID
wait_ready "http://127.0.0.1:$P_CHORUS/healthz" "$CHORUS_PID" "$LOG" || die "chorus did not start"
USER_TOKEN=$(env -u CHORUS_BIN "$CHORUS_BIN" token --data-dir "$TMP/data" --user bench-viewer)
PUBLISH_TOKEN=$(env -u CHORUS_BIN "$CHORUS_BIN" token --data-dir "$TMP/data" --service bench --scope live.publish)
log "chorus live on 127.0.0.1:$P_CHORUS (pid $CHORUS_PID): ${chorus_args[*]:4}"

SYSTEMS=(chorus)
if [[ $PEER == bun ]]; then
  if ensure_bun; then
    LOG=$TMP/bun.log
    start_group "$BUN" "$ROOT/bench/peers/bun_live.js" --port "$P_BUN" --block-interval-ms "$interval_ms"
    BUN_PID=$STARTED_PID
    wait_ready "http://127.0.0.1:$P_BUN/healthz" "$BUN_PID" "$LOG" || die "the Bun peer did not start"
    log "bun peer on 127.0.0.1:$P_BUN (pid $BUN_PID, bun $("$BUN" --version))"
    SYSTEMS+=(bun)
  else
    log "SKIPPING the Bun peer: no ratio this run"
  fi
elif [[ $PEER != none ]]; then
  die "PEER must be bun or none"
fi

# ---------------------------------------------------------------------------------------------
# Runs.
declare -A URL=([chorus]="http://127.0.0.1:$P_CHORUS" [bun]="http://127.0.0.1:${P_BUN}")
declare -A PID=([chorus]="$CHORUS_PID" [bun]="${BUN_PID:-0}")
declare -A WS=([chorus]="/v1/ws?format=json&token=$USER_TOKEN" [bun]="/v1/ws?format=json&token=bench")
declare -A TOKEN=([chorus]="$PUBLISH_TOKEN" [bun]="")
STATUS=0
for round in $(seq "$ROUNDS"); do
  for system in "${SYSTEMS[@]}"; do
    log "round $round: $system, $SUBSCRIBERS subscribers in $PROCS processes, $RATE msg/s, $DURATION"
    rc=0
    "$BENCH_BIN" live-fanout --url "${URL[$system]}" --ws-target "${WS[$system]}" \
      --publish-token "${TOKEN[$system]}" --room "$ROOM" --subscribers "$SUBSCRIBERS" \
      --procs "$PROCS" --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" \
      --server-pid "${PID[$system]}" --system "$system" --out "$TMP/$system-$round.json" >&2 || rc=$?
    if ((rc == 1)); then
      STATUS=1
      log "$system round $round saw errors (see the counts in its report)"
    elif ((rc != 0)); then
      die "chorus-bench live-fanout failed against $system (exit $rc)"
    fi
    kill -0 "${PID[$system]}" 2>/dev/null || die "$system died during the run; log: $TMP/$system.log"
  done
done

# ---------------------------------------------------------------------------------------------
# Report: best round of each (lowest server CPU per delivery), ratios, targets.
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$BENCH_RESULTS_DIR"
OUT=$BENCH_RESULTS_DIR/live-fanout-$STAMP.json
python3 - "$TMP" "$OUT" "$ROUNDS" "${SYSTEMS[@]}" <<EOF
import json, sys
tmp, out, rounds, systems = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
params = {"subscribers": "$SUBSCRIBERS", "procs": "$PROCS", "rate": "$RATE",
          "block_interval": "$BLOCK_INTERVAL", "duration": "$DURATION", "warmup": "$WARMUP",
          "rounds": str(rounds), "best_of": "lowest server_cpu_s_per_million_deliveries",
          "chorus_args": "${chorus_args[*]:4}", "room": "$ROOM", "frames": "json",
          "load_generator": "chorus-bench live-fanout"}
runs, best, host = [], {}, None
for r in range(1, rounds + 1):
    for s in systems:
        rep = json.load(open(f"{tmp}/{s}-{r}.json"))
        host = rep["host"]
        m = rep["subject"]
        cpu = m.get("figures", {}).get("server_cpu_s_per_million_deliveries", 0)
        runs.append({"system": s, "round": r, "throughput": m["throughput"],
                     "server_cpu_s_per_million_deliveries": cpu,
                     "p99_ns": m.get("latency", {}).get("p99_ns", 0),
                     "missed_blocks": m["counts"].get("missed_blocks", 0)})
        if s not in best or (cpu > 0 and cpu < best[s].get("figures", {}).get("server_cpu_s_per_million_deliveries", 1e18)):
            best[s] = m
subject = best["chorus"]
peers = [best[s] for s in systems if s != "chorus"]
ratios, cost_ratios, targets = {}, {}, {}
cpu = lambda m: m.get("figures", {}).get("server_cpu_s_per_million_deliveries", 0)
p99 = lambda m: m.get("latency", {}).get("p99_ns", 0)
for p in peers:
    if p["throughput"] > 0:
        ratios["chorus/" + p["system"]] = round(subject["throughput"] / p["throughput"], 3)
    if cpu(p) > 0:
        cost_ratios["server_cpu_per_delivery chorus/" + p["system"]] = round(cpu(subject) / cpu(p), 3)
if "bun" in best and cpu(best["bun"]) > 0:
    targets["server_cpu_per_delivery <= 0.5x bun"] = cpu(subject) / cpu(best["bun"]) <= 0.5
targets["p99 tick-to-receipt <= 20ms" + ("" if int("$SUBSCRIBERS") >= 10000 else " (target is set at 10k subscribers)")] = p99(subject) <= 20e6
import datetime
report = {"name": "live-fanout",
          "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
          "host": host, "params": params, "subject": subject, "peers": peers, "ratios": ratios,
          "cost_ratios": cost_ratios, "targets": targets, "runs": runs}
json.dump(report, open(out, "w"), indent=2)
open(out, "a").write("\n")

def ms(ns):
    v = ns / 1e6
    return ("%.0f" if v >= 100 else "%.1f" if v >= 10 else "%.2f" if v >= 1 else "%.3f") % v + "ms"
def lat(m):
    l = m.get("latency", {})
    return f"p50 {ms(l.get('p50_ns', 0))} p99 {ms(l.get('p99_ns', 0))}"
errors = 0
for m in [subject] + peers:
    errors += sum(v for k, v in m["counts"].items() if "error" in k)
parts = [f"chorus {subject['throughput']:.0f} deliveries/s"] + [f"{p['system']} {p['throughput']:.0f} deliveries/s" for p in peers]
line = "live-fanout: " + ", ".join(parts) + f" ({$SUBSCRIBERS} subscribers, $RATE msg/s)"
line += f"; server CPU per 1M deliveries chorus {cpu(subject):.3f}s"
for p in peers:
    line += f", {p['system']} {cpu(p):.3f}s, ratio {cpu(subject) / cpu(p):.2f}x" if cpu(p) > 0 else ""
line += f"; tick-to-receipt chorus {lat(subject)}"
for p in peers:
    line += f", {p['system']} {lat(p)}"
line += "; missed blocks " + "/".join(str(m["counts"].get("missed_blocks", 0)) for m in [subject] + peers)
if errors:
    line += f"; ERRORS {errors}"
print(line)
EOF
if command -v jq >/dev/null; then jq . "$OUT" >/dev/null || die "wrote invalid JSON to $OUT"; fi
log "wrote $OUT"

FAILED=0
exit $STATUS
