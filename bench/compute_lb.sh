#!/usr/bin/env bash
# compute_lb.sh — the compute router's load-balancing policies: `chorus-bench compute-lb`.
#
# The real compute::Router (src/compute/router.h) in front of NODES simulated nodes hosted by
# chorus-bench (bench/compute_lb.h): speeds SPEEDS (1x, 2x, 4x: not advertised; every node
# advertises CORES cores), processor sharing over the cores, random slowdowns (SLOWDOWN_RATE per
# node per minute, speed divided by SLOWDOWN_FACTOR for SLOWDOWN_DURATION, as on preemptible
# machines), heartbeats every second into Router::ApplyUpdate, RecomputeWeights() every 3 s, and
# open-loop Poisson clients at LOAD x the fleet's nominal capacity. Runs each policy on the same
# fleet, arrivals and slowdown schedule:
#   dynamic  FastSwrr with the seed's dynamic weights (what chorus ships)
#   static   nginx SWRR, weight = advertised cores
#   p2c      power of two choices, least requests in flight per core
# Measures p50/p90/p99/p99.9/max latency and the spread of node utilization.
# Targets (the issue): dynamic p99 <= 0.6x static SWRR's and <= 0.8x P2C's.
#
# Prints a table and one summary line; writes bench/results/compute-lb-<UTC timestamp>.json
# (schema: bench/report.h; subject = dynamic, peers = the others). Virtual time by default: the
# figures do not depend on this machine's load and the same SEED gives the same figures.
#
# Environment:
#   BENCH_BIN         chorus-bench binary; unset = the one beside CHORUS_BIN's build tree, else built
#   CHORUS_BIN        only used to find BENCH_BIN
#   NODES (24)  SPEEDS (1,2,4)  CORES (4)  LOAD (0.7)  WORK_MS (10)  DURATION (120s)  WARMUP (15s)
#   SLOWDOWN_RATE (1)  SLOWDOWN_FACTOR (3-10)  SLOWDOWN_DURATION (2s-6s)  SEED (1)
#   POLICIES (dynamic,static,p2c)
#   TIME_SCALE        0 = virtual time (default); S > 0 = wall clock, S model seconds per second
#   BENCH_ARGS        extra `chorus-bench compute-lb` flags, e.g. "--weight-interval 1s"
#   BENCH_RESULTS_DIR where the JSON result goes (bench/results)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LOG_TAG=compute-lb
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

resolve_bench_bin compute-lb

args=(--nodes "${NODES:-24}" --speeds "${SPEEDS:-1,2,4}" --cores "${CORES:-4}" --load "${LOAD:-0.7}"
  --work-ms "${WORK_MS:-10}" --duration "${DURATION:-120s}" --warmup "${WARMUP:-15s}"
  --slowdown-rate "${SLOWDOWN_RATE:-1}" --slowdown-factor "${SLOWDOWN_FACTOR:-3-10}"
  --slowdown-duration "${SLOWDOWN_DURATION:-2s-6s}" --seed "${SEED:-1}"
  --policies "${POLICIES:-dynamic,static,p2c}" --time-scale "${TIME_SCALE:-0}")
# shellcheck disable=SC2206  # BENCH_ARGS is meant to split into words
args+=(${BENCH_ARGS:-})

log "chorus-bench compute-lb ${args[*]}"
exec "$BENCH_BIN" compute-lb "${args[@]}"
