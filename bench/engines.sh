# shellcheck shell=bash
# bench/engines.sh — the distributed engines of the scale-out shape (docs/scale-out.md) for the
# cluster benchmarks, started on loopback in a private directory like the test fixture does
# (tests/support/engines.cc). Sourced after bench/lib.sh, never run. Each server runs in its own
# process group via start_group, so bench_cleanup stops it on exit; data lives under $TMP.
#
#   start_nats DIR PORT        nats-server -js (JetStream file store under DIR/js); sets NATS_PID
#   start_redis DIR PORT       redis-server, memory only; sets REDIS_PID
#   start_mariadb DIR PORT     mariadb-install-db into DIR/data, then mariadbd on 127.0.0.1:PORT with
#                              an account MYSQL_USER/MYSQL_PASSWORD for TCP logins; sets MARIADB_PID
#
# Knobs: NATS_BIN (nats-server), REDIS_BIN (/usr/bin/redis-server), REDIS_CLI (/usr/bin/redis-cli),
# MARIADBD_BIN (mariadbd), MARIADB_INSTALL_DB (mariadb-install-db), MARIADB_CLIENT (mariadb),
# MARIADB_ARGS (extra mariadbd flags, e.g. "--innodb-flush-log-at-trx-commit=2"),
# MARIADB_BUFFER_POOL (256M).

NATS_BIN=${NATS_BIN:-nats-server}
REDIS_BIN=${REDIS_BIN:-/usr/bin/redis-server}
REDIS_CLI=${REDIS_CLI:-/usr/bin/redis-cli}
MARIADBD_BIN=${MARIADBD_BIN:-$(command -v mariadbd || echo /usr/sbin/mariadbd)}
MARIADB_INSTALL_DB=${MARIADB_INSTALL_DB:-mariadb-install-db}
MARIADB_CLIENT=${MARIADB_CLIENT:-mariadb}
MARIADB_BUFFER_POOL=${MARIADB_BUFFER_POOL:-256M}
MYSQL_USER=${MYSQL_USER:-chorus}
MYSQL_PASSWORD=${MYSQL_PASSWORD:-chorus-bench}

# need_tools TOOL...: dies naming the Debian package of the first missing one.
need_tools() {
  local t pkg
  for t in "$@"; do
    command -v "$t" >/dev/null && continue
    case $(basename "$t") in
      nats-server) pkg=nats-server ;;
      redis-server | redis-cli) pkg=redis-server ;;
      mariadbd | mariadb-install-db) pkg=mariadb-server ;;
      mariadb) pkg=mariadb-client ;;
      *) pkg="(scripts/install-deps.sh)" ;;
    esac
    die "$t not found (apt-get install $pkg)"
  done
}

# wait_log_line FILE PATTERN PID WHAT: until FILE has a line matching PATTERN (60 s).
wait_log_line() {
  local file=$1 pattern=$2 pid=$3 what=$4
  for _ in $(seq 600); do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$what exited during startup; its log:"; sed 's/^/    /' "$file" >&2; return 1
    fi
    grep -q -- "$pattern" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  log "$what did not log '$pattern' within 60 s; its log:"; sed 's/^/    /' "$file" >&2
  return 1
}

start_nats() {
  local dir=$1 port=$2
  mkdir -p "$dir/js"
  LOG=$dir/nats.log
  start_group "$NATS_BIN" -a 127.0.0.1 -p "$port" -js -sd "$dir/js"
  NATS_PID=$STARTED_PID
  wait_log_line "$LOG" "Server is ready" "$NATS_PID" nats-server || die "nats-server did not start"
  log "nats-server -js on 127.0.0.1:$port (pid $NATS_PID, $("$NATS_BIN" --version 2>&1 | head -1))"
}

start_redis() {
  local dir=$1 port=$2
  mkdir -p "$dir"
  LOG=$dir/redis.log
  start_group "$REDIS_BIN" --port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize no --logfile '' \
    --save '' --appendonly no
  REDIS_PID=$STARTED_PID
  for _ in $(seq 100); do
    [[ $("$REDIS_CLI" -p "$port" ping 2>/dev/null) == PONG ]] && break
    kill -0 "$REDIS_PID" 2>/dev/null || { sed 's/^/    /' "$LOG" >&2; die "redis-server exited during startup"; }
    sleep 0.1
  done
  [[ $("$REDIS_CLI" -p "$port" ping 2>/dev/null) == PONG ]] || die "redis-server did not answer PING within 10 s"
  log "redis-server on 127.0.0.1:$port (pid $REDIS_PID, memory only)"
}

# The options that shape the datadir's files: the bootstrap and the server use the same ones.
mariadb_file_options=(--innodb-buffer-pool-size="$MARIADB_BUFFER_POOL" --innodb-log-file-size=64M --skip-log-bin
  --innodb-use-native-aio=0)

start_mariadb() {
  local dir=$1 port=$2 user_opt=() sock
  mkdir -p "$dir/tmp"
  sock=$dir/mysql.sock
  ((${#sock} < 100)) || die "MariaDB socket path $sock is too long for a unix socket"
  log "mariadb-install-db into $dir/data"
  # --no-defaults first: keeps /etc/mysql out. Root over the socket with an empty password, used
  # once to create the account chorus logs in with over TCP.
  "$MARIADB_INSTALL_DB" --no-defaults --datadir="$dir/data" --auth-root-authentication-method=normal \
    --skip-test-db --skip-name-resolve --tmpdir="$dir/tmp" "${mariadb_file_options[@]}" \
    >"$dir/install.log" 2>&1 || { sed 's/^/    /' "$dir/install.log" >&2; die "mariadb-install-db failed"; }
  [[ $(id -u) == 0 ]] && user_opt=(--user=root)  # as root, mariadbd refuses to start without it
  # shellcheck disable=SC2206  # MARIADB_ARGS is meant to split into words
  local extra=(${MARIADB_ARGS:-})
  LOG=$dir/mariadbd.log
  start_group "$MARIADBD_BIN" --no-defaults --datadir="$dir/data" --socket="$sock" --port="$port" \
    --bind-address=127.0.0.1 "${user_opt[@]}" --skip-name-resolve --pid-file="$dir/mariadbd.pid" \
    --tmpdir="$dir/tmp" --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
    --max-connections=500 --table-open-cache=400 "${mariadb_file_options[@]}" "${extra[@]}"
  MARIADB_PID=$STARTED_PID
  for _ in $(seq 600); do
    "$MARIADB_CLIENT" --no-defaults -uroot --socket="$sock" -e 'SELECT 1' >/dev/null 2>&1 && break
    kill -0 "$MARIADB_PID" 2>/dev/null || { sed 's/^/    /' "$LOG" >&2; die "mariadbd exited during startup"; }
    sleep 0.1
  done
  local h sql=""
  for h in 127.0.0.1 localhost; do
    sql+="CREATE OR REPLACE USER '$MYSQL_USER'@'$h' IDENTIFIED BY '$MYSQL_PASSWORD'; "
    sql+="GRANT ALL PRIVILEGES ON *.* TO '$MYSQL_USER'@'$h'; "
  done
  "$MARIADB_CLIENT" --no-defaults -uroot --socket="$sock" -e "$sql" ||
    { sed 's/^/    /' "$LOG" >&2; die "mariadbd did not accept the account setup"; }
  "$MARIADB_CLIENT" --no-defaults -h 127.0.0.1 -P "$port" -u"$MYSQL_USER" -p"$MYSQL_PASSWORD" -e 'SELECT 1' \
    >/dev/null || die "cannot log in to mariadbd over TCP as $MYSQL_USER"
  log "mariadbd on 127.0.0.1:$port (pid $MARIADB_PID, $("$MARIADBD_BIN" --version | awk '{print $3}'), buffer pool $MARIADB_BUFFER_POOL${MARIADB_ARGS:+, $MARIADB_ARGS})"
}

# metric PORT NAME: a metric's value (all label sets summed) from 127.0.0.1:PORT/metrics; empty
# when unreachable or absent.
metric() {
  curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null |
    awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2; f = 1 } END { if (f) printf "%.0f\n", s }'
}
