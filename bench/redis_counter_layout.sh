#!/usr/bin/env bash
# redis_counter_layout.sh — the two layouts of the likes cluster engine's Redis count cache
# (src/likes/redis_cache.h, likes.redis.count_buckets), measured on a real redis-server:
#   key     one string per entity:      count:<ns>:<entity>          = "likes,dislikes,seq"
#   bucket  COUNTERS/BUCKET_SIZE hashes: counts:<ns>:<bucket> field entity = "likes,dislikes,seq"
# For each: used_memory per counter after loading COUNTERS of them (redis-cli --pipe, values as the
# cache writes them), and reads/s of single-counter reads pipelined (redis-benchmark -P PIPELINE,
# random entities: GET for keys, HGET for buckets; the bucket and field come from independent random
# numbers, so many HGETs miss their field: the lookup cost is the same). Prints both and the ratio
# bucket/key; writes nothing else. Redis is the only process measured; nothing of chorus runs.
#
# Environment: COUNTERS (1000000)  BUCKET_SIZE (100, under the 128-entry listpack limit)
#              REQUESTS (2000000)  PIPELINE (16)  REDIS_BIN (/usr/bin/redis-server)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOG_TAG=redis_counter_layout
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

COUNTERS=${COUNTERS:-1000000}
BUCKET_SIZE=${BUCKET_SIZE:-100}
REQUESTS=${REQUESTS:-2000000}
PIPELINE=${PIPELINE:-16}
REDIS_BIN=${REDIS_BIN:-/usr/bin/redis-server}
BUCKETS=$(( (COUNTERS + BUCKET_SIZE - 1) / BUCKET_SIZE ))

bench_tmp redis-counter-layout
read -r PORT < <(free_ports 1)
LOG="$TMP/redis.log" start_group "$REDIS_BIN" --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$TMP"
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
cli() { redis-cli -p "$PORT" "$@"; }
used() { cli info memory | awk -F: '/^used_memory:/ { print $2 + 0 }'; }
encoding_of() { cli object encoding "$1" | tr -d '\r'; }

measure() {  # layout
  local layout=$1 base after per reads
  cli flushall >/dev/null
  base=$(used)
  if [[ $layout == key ]]; then
    awk -v n="$COUNTERS" 'BEGIN { for (i = 0; i < n; i++) printf "SET count:v:e%d %d,%d,%d\r\n", i, i % 977, i % 13, 123456 }' |
      cli --pipe >/dev/null
    log "key layout: $(cli dbsize | tr -d '\r') keys, encoding of one: $(encoding_of count:v:e1)"
    reads=$(redis-benchmark -p "$PORT" -q -n "$REQUESTS" -P "$PIPELINE" -r "$COUNTERS" GET count:v:e__rand_int__ |
      awk '{ for (i = 1; i <= NF; i++) if ($i == "requests") print $(i - 1) }' | tr -d ',' | tail -1)
  else
    awk -v n="$COUNTERS" -v b="$BUCKETS" 'BEGIN { for (i = 0; i < n; i++) printf "HSET counts:v:%d e%d %d,%d,%d\r\n", i % b, i, i % 977, i % 13, 123456 }' |
      cli --pipe >/dev/null
    log "bucket layout: $(cli dbsize | tr -d '\r') keys of ~$BUCKET_SIZE fields, encoding of one: $(encoding_of counts:v:1)"
    reads=$(redis-benchmark -p "$PORT" -q -n "$REQUESTS" -P "$PIPELINE" -r "$COUNTERS" HGET counts:v:__rand_int__ e__rand_int__ |
      awk '{ for (i = 1; i <= NF; i++) if ($i == "requests") print $(i - 1) }' | tr -d ',' | tail -1)
  fi
  after=$(used)
  per=$(awk -v a="$after" -v b="$base" -v n="$COUNTERS" 'BEGIN { printf "%.1f", (a - b) / n }')
  echo "$per $reads"
}

read -r KEY_BYTES KEY_READS < <(measure key)
read -r BUCKET_BYTES BUCKET_READS < <(measure bucket)
printf '%-28s %12s %12s %10s\n' figure key bucket bucket/key
printf '%-28s %12s %12s %9.2fx\n' "bytes per counter" "$KEY_BYTES" "$BUCKET_BYTES" \
  "$(awk -v a="$BUCKET_BYTES" -v b="$KEY_BYTES" 'BEGIN { print a / b }')"
printf '%-28s %12s %12s %9.2fx\n' "reads/s (pipelined $PIPELINE)" "$KEY_READS" "$BUCKET_READS" \
  "$(awk -v a="$BUCKET_READS" -v b="$KEY_READS" 'BEGIN { print (b > 0 ? a / b : 0) }')"
echo "redis-counter-layout: $COUNTERS counters; key layout $KEY_BYTES B/counter, $KEY_READS reads/s; bucket layout ($BUCKET_SIZE per hash) $BUCKET_BYTES B/counter, $BUCKET_READS reads/s"
FAILED=0
