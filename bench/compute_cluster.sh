#!/usr/bin/env bash
# compute_cluster.sh — the compute control plane at cluster scale: `chorus-bench compute-cluster`.
#
# Two real resource servers and one, then two, real schedulers (`chorus compute resource|scheduler`,
# child processes on free loopback ports, one shared data dir) against NODES simulated nodes
# hosted by chorus-bench itself (bench/compute_sim.h: one gRPC server answering Claim/Release for
# every identity, one heartbeat stream per identity). Measures (bench/compute_cluster.h):
#   placements/s   `chorus compute apply` of REPLICAS replicas (cpu 10m, memory 1Mi) until all are
#                  on simulated nodes; with one scheduler, then (SCHEDULERS=2) two racing for the
#                  same nodes: conflict rate = ABORTED / claims, overshoot, releases
#   drain          a node marked draining (its SIGTERM path) until every resource server's Watch
#                  shows it; DRAINS times                                    (target <= 500 ms)
#   crash          a node killed (stream cancelled, silent, claims refused) until its replicas are
#                  placed again; CRASHES times                              (target <= 3 s)
#   overcommit     the simulator recounts every node against its capacity   (must be 0)
# Targets and anchors (docs/compute.md): >= 5,000 placements/s; Nomad C1M ~3,333 placements/s;
# the seed evicts a dead node in 4 s.
#
# Prints a table and one summary line; writes bench/results/compute-cluster-<UTC timestamp>.json
# (schema: bench/report.h). Exits 1 when the run saw errors (timeouts, over-commitment, a chorus
# process that died, nodes a view lost), 2 when it could not run.
#
# Environment:
#   CHORUS_BIN        chorus binary; unset = build the release preset
#   BENCH_BIN         chorus-bench binary; unset = the one beside CHORUS_BIN's build tree, else built
#   NODES (2000)  SLOTS (8)  REPLICAS (10000)  DRAINS (20)  CRASHES (10)  SCHEDULERS (2)
#   RAMP              simulated nodes connecting per second at start (1000; 0 = all at once)
#   BENCH_ARGS        extra `chorus-bench compute-cluster` flags, e.g. "--nodes-per-connection 1000"
#   BENCH_RESULTS_DIR where the JSON result goes (bench/results)
#   KEEP_TMP=1        keep the work dir (data dir, every process's log)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LOG_TAG=compute
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

NODES=${NODES:-2000}
SLOTS=${SLOTS:-8}
REPLICAS=${REPLICAS:-10000}
DRAINS=${DRAINS:-20}
CRASHES=${CRASHES:-10}
SCHEDULERS=${SCHEDULERS:-2}
RAMP=${RAMP:-1000}

resolve_chorus_bin
resolve_bench_bin compute-cluster

# The children (resource servers, schedulers) inherit the limit; 20,000 is plenty.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

args=(--chorus-bin "$CHORUS_BIN" --nodes "$NODES" --slots "$SLOTS" --replicas "$REPLICAS"
  --drains "$DRAINS" --crashes "$CRASHES" --schedulers "$SCHEDULERS" --ramp "$RAMP")
[[ ${KEEP_TMP:-0} == 1 ]] && args+=(--keep-work-dir)
# shellcheck disable=SC2206  # BENCH_ARGS is meant to split into words
args+=(${BENCH_ARGS:-})

log "chorus-bench compute-cluster ${args[*]}"
# chorus refuses CHORUS_* variables that are not configuration keys (chorus-bench drops them for
# its children too).
export -n CHORUS_BIN
# chorus-bench starts and stops every process itself (also on Ctrl-C): hand over.
exec "$BENCH_BIN" compute-cluster "${args[@]}"
