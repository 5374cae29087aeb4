# A private Redis server for the tests. Sourced by .ci/run (bash), which calls `redis_start`
# before the tests and `redis_stop` on exit (also on failure).
#
#   redis_start  installs Debian's redis-server if it is missing, starts a throwaway server on
#                127.0.0.1 at a free port (no persistence files outside its temp dir) and
#                exports REDIS_URL.
#   redis_stop   stops that server by the pid in its pidfile and removes the temp dir.

REDIS_DIR=""

redis__free_port() {
  local port i
  for i in $(seq 1 50); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "redis_start: no free port found" >&2
  return 1
}

redis_start() {
  if ! command -v redis-server >/dev/null; then
    echo "redis-server not installed: installing it (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends redis-server
  fi
  REDIS_DIR=$(mktemp -d /tmp/api-keys-redis.XXXXXX)
  local port tries=0 i
  while :; do
    tries=$((tries + 1))
    port=$(redis__free_port) || return 1
    if redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --dir "$REDIS_DIR" --daemonize yes --pidfile "$REDIS_DIR/redis.pid" \
      --logfile "$REDIS_DIR/redis.log"; then
      for i in $(seq 1 100); do
        if [ "$(redis-cli -p "$port" ping 2>/dev/null)" = "PONG" ]; then
          export REDIS_URL="redis://127.0.0.1:$port/"
          echo "Redis $(redis-server --version | awk '{print $3}') running: REDIS_URL=$REDIS_URL (pid $(cat "$REDIS_DIR/redis.pid"))"
          return 0
        fi
        sleep 0.1
      done
    fi
    if [ "$tries" -ge 3 ]; then
      echo "redis_start: the server did not start; its log:" >&2
      cat "$REDIS_DIR/redis.log" >&2 || true
      return 1
    fi
  done
}

redis_stop() {
  [ -n "$REDIS_DIR" ] || return 0
  local pid i
  if [ -f "$REDIS_DIR/redis.pid" ]; then
    pid=$(cat "$REDIS_DIR/redis.pid")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    echo "Redis (pid $pid) stopped"
  fi
  rm -rf "$REDIS_DIR"
  REDIS_DIR=""
  unset REDIS_URL
}
