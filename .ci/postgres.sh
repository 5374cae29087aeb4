# A private PostgreSQL server for the tests. Sourced by .ci/run (bash), which calls
# `pg_start` before the tests and `pg_stop` on exit (also on failure).
#
#   pg_start  installs PostgreSQL if no initdb is present, initializes a cluster in a temp dir
#             (trust auth, owned by the `postgres` user), starts it on 127.0.0.1 at a free
#             port, creates the database `api_keys_test` and exports DATABASE_URL.
#   pg_stop   stops that server by the pid in its postmaster.pid and removes the temp dir.
#
# Needs root (apt-get, runuser). The service cannot be started through apt here
# (policy-rc.d), hence a private cluster.

PG_DIR=""

pg__bin() {
  # Newest installed major version.
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

pg__free_port() {
  # A random port in 20000-59999 that nothing answers on.
  local port i
  for i in $(seq 1 50); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "pg_start: no free port found" >&2
  return 1
}

pg_start() {
  local pgbin port
  pgbin=$(pg__bin || true)
  if [ -z "$pgbin" ]; then
    echo "PostgreSQL not installed: installing it (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends postgresql
    pgbin=$(pg__bin || true)
    if [ -z "$pgbin" ]; then
      echo "pg_start: no /usr/lib/postgresql/*/bin/initdb after installing postgresql" >&2
      return 1
    fi
  fi
  echo "PostgreSQL binaries: $pgbin"
  PG_DIR=$(mktemp -d /tmp/api-keys-pg.XXXXXX)
  chown postgres:postgres "$PG_DIR"
  chmod 700 "$PG_DIR"
  runuser -u postgres -- "$pgbin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 \
    >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log" >&2; return 1; }
  # A free port can be taken between the probe and the start: try a few.
  local tries=0
  while :; do
    tries=$((tries + 1))
    port=$(pg__free_port) || return 1
    if runuser -u postgres -- "$pgbin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR" -w -t 60 start >/dev/null; then
      break
    fi
    if [ "$tries" -ge 3 ]; then
      echo "pg_start: the server did not start; its log:" >&2
      cat "$PG_DIR/log" >&2 || true
      return 1
    fi
  done
  "$pgbin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
    -c 'CREATE DATABASE api_keys_test' || return 1
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/api_keys_test"
  # For tests/postgres_faults/, which restarts, stops and starts this server.
  export API_KEYS_PG_CTL="runuser -u postgres -- $pgbin/pg_ctl -D $PG_DIR/data"
  export API_KEYS_PG_START_ARGS="-l $PG_DIR/log -o '-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR'"
  echo "PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') running: DATABASE_URL=$DATABASE_URL (pid $(head -1 "$PG_DIR/data/postmaster.pid"))"
}

pg_stop() {
  [ -n "$PG_DIR" ] || return 0
  local pidfile="$PG_DIR/data/postmaster.pid" pid i
  if [ -f "$pidfile" ]; then
    pid=$(head -1 "$pidfile")
    # SIGINT: "fast" shutdown (roll back open transactions, close connections, stop).
    kill -INT "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "pg_stop: server $pid still running after 10 s; sending SIGQUIT" >&2
      kill -QUIT "$pid" 2>/dev/null || true
    fi
    echo "PostgreSQL (pid $pid) stopped"
  fi
  rm -rf "$PG_DIR"
  PG_DIR=""
  unset DATABASE_URL API_KEYS_PG_CTL API_KEYS_PG_START_ARGS
}
