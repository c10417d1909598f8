#!/usr/bin/env bash
# run-all.sh — every benchmark in bench/ (what `make bench` runs).
#
#   bench/run-all.sh [all|http|live|likes|cluster|compute|lb|micro]
#
# Builds the release preset (chorus, chorus-bench and every *_benchmark target), then runs the
# peer comparisons — http_vs_nginx.sh (http), live_fanout.sh against the Bun peer and
# live_poll.sh against nginx (live), likes.sh against Redis (likes), likes_cluster.sh and
# live_fanout_cluster.sh (cluster: the scale-out fleets on MariaDB, NATS JetStream and Redis
# against the embedded processes), compute_cluster.sh (compute:
# real resource servers and schedulers against 2,000 simulated nodes), compute_lb.sh (lb: the
# compute router's policies on simulated heterogeneous nodes) — and each Google Benchmark binary
# (micro), writing JSON into bench/results/. Keeps going after a failing benchmark and exits
# 1 if any failed.
# Environment: BENCHMARK_ARGS (extra flags for the Google Benchmark binaries, e.g.
# --benchmark_min_time=0.1s), SUBSCRIBERS for live_fanout.sh (here 10000, the issue's scale) and
# everything the scripts read (DURATION, ROUNDS, ...: a DURATION set here applies to all of them).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
WHAT=${1:-all}
case $WHAT in all | http | live | likes | cluster | compute | lb | micro) ;; *) echo "usage: $0 [all|http|live|likes|cluster|compute|lb|micro]" >&2; exit 2 ;; esac
BENCH_RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/bench/results}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
STATUS=0

cmake --preset release >/dev/null || exit 2
mapfile -t micro_targets < <(cmake --build --preset release --target help 2>/dev/null |
  sed -n 's/^\([A-Za-z0-9_]*_benchmark\): .*/\1/p' | sort -u)
targets=(chorus chorus_bench "${micro_targets[@]}")
echo "== building (release): ${targets[*]}" >&2
cmake --build --preset release --target "${targets[@]}" || exit 2

if [[ $WHAT == all || $WHAT == http ]]; then
  echo "== http_vs_nginx" >&2
  CHORUS_BIN=$ROOT/build/release/src/chorus/chorus BENCH_RESULTS_DIR=$BENCH_RESULTS_DIR \
    "$ROOT/bench/http_vs_nginx.sh" || STATUS=1
fi

if [[ $WHAT == all || $WHAT == live ]]; then
  echo "== live_fanout" >&2
  CHORUS_BIN=$ROOT/build/release/src/chorus/chorus BENCH_BIN=$ROOT/build/release/bench/chorus-bench \
    BENCH_RESULTS_DIR=$BENCH_RESULTS_DIR SUBSCRIBERS=${SUBSCRIBERS:-10000} \
    "$ROOT/bench/live_fanout.sh" || STATUS=1
  echo "== live_poll" >&2
  CHORUS_BIN=$ROOT/build/release/src/chorus/chorus BENCH_RESULTS_DIR=$BENCH_RESULTS_DIR \
    "$ROOT/bench/live_poll.sh" || STATUS=1
fi

if [[ $WHAT == all || $WHAT == likes ]]; then
  echo "== likes" >&2
  CHORUS_BIN=$ROOT/build/release/src/chorus/chorus BENCH_BIN=$ROOT/build/release/bench/chorus-bench \
    BENCH_RESULTS_DIR=$BENCH_RESULTS_DIR "$ROOT/bench/likes.sh" || STATUS=1
fi

if [[ $WHAT == all || $WHAT == cluster ]]; then
  echo "== likes_cluster" >&2
  CHORUS_BIN=$ROOT/build/release/src/chorus/chorus BENCH_BIN=$ROOT/build/release/bench/chorus-bench \
    BENCH_RESULTS_DIR=$BENCH_RESULTS_DIR "$ROOT/bench/likes_cluster.sh" || STATUS=1
  echo "== live_fanout_cluster" >&2
  CHORUS_BIN=$ROOT/build/release/src/chorus/chorus BENCH_BIN=$ROOT/build/release/bench/chorus-bench \
    BENCH_RESULTS_DIR=$BENCH_RESULTS_DIR "$ROOT/bench/live_fanout_cluster.sh" || STATUS=1
  echo "== redis_counter_layout" >&2
  "$ROOT/bench/redis_counter_layout.sh" || STATUS=1
fi

if [[ $WHAT == all || $WHAT == compute ]]; then
  echo "== compute_cluster" >&2
  CHORUS_BIN=$ROOT/build/release/src/chorus/chorus BENCH_BIN=$ROOT/build/release/bench/chorus-bench \
    BENCH_RESULTS_DIR=$BENCH_RESULTS_DIR "$ROOT/bench/compute_cluster.sh" || STATUS=1
fi

if [[ $WHAT == all || $WHAT == lb ]]; then
  echo "== compute_lb" >&2
  BENCH_BIN=$ROOT/build/release/bench/chorus-bench BENCH_RESULTS_DIR=$BENCH_RESULTS_DIR \
    "$ROOT/bench/compute_lb.sh" || STATUS=1
fi

if [[ $WHAT == all || $WHAT == micro ]]; then
  mkdir -p "$BENCH_RESULTS_DIR"
  while IFS= read -r binary; do
    name=$(basename "$binary")
    echo "== $name" >&2
    # shellcheck disable=SC2086  # BENCHMARK_ARGS is meant to split into words
    "$binary" --benchmark_out="$BENCH_RESULTS_DIR/$name-$STAMP.json" --benchmark_out_format=json \
      ${BENCHMARK_ARGS:-} || STATUS=1
  done < <(find "$ROOT/build/release" -type f -perm -u+x -name '*_benchmark' | sort)
fi

exit $STATUS
