# The many-nodes soak (issue 14), short version. Sourced by .ci/run (bash), which calls
# `soak_run`.
#
#   soak_run  builds the example server and the soak harness (release, --locked), installs
#             PostgreSQL and Redis if they are missing, and runs a 60 s soak: three server
#             processes on one PostgreSQL, one Redis and one master key, open-loop traffic,
#             every fault once (SIGKILL of a node, pg_ctl restart -m fast,
#             pg_terminate_backend, Redis stopped 10 s, a 10x burst). It fails on any late
#             acceptance, over- or under-admission, failed request outside a fault window,
#             node dying unbidden or lost key. The harness starts and stops its own PostgreSQL and Redis
#             on free loopback ports (needs root for runuser, as .ci/postgres.sh does).
#
# Knobs: SOAK_DURATION (seconds, default 60), SOAK_RATE (requests/s, default 100),
# SOAK_JSON (report path, default target/soak-report.json).

soak_run() {
  local s rc
  s=$(date +%s)
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v redis-server >/dev/null; then
    echo "soak: installing PostgreSQL and Redis (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends postgresql redis-server
  fi
  cargo build --release --locked --features axum,postgres,redis --example server --example soak || return 1
  echo "soak: build took $(( $(date +%s) - s ))s"
  rc=0
  target/release/examples/soak --server target/release/examples/server \
    --duration "${SOAK_DURATION:-60}" --rate "${SOAK_RATE:-100}" \
    --json "${SOAK_JSON:-target/soak-report.json}" || rc=$?
  echo "soak: took $(( $(date +%s) - s ))s in all (exit $rc)"
  return "$rc"
}
