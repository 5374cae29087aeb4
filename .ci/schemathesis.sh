# shellcheck shell=bash
# The example server's management API fuzzed against its own OpenAPI description
# (GET /api/openapi.json) with schemathesis. Sourced by .ci/run; defines `schemathesis_run`
# and `schemathesis_stop` (for the EXIT trap).
#
# schemathesis_run: installs a pinned schemathesis into a venv under a temp dir, builds and
# starts the example server on a free loopback port (SQLite file in the temp dir), takes the
# manager session it prints, and runs schemathesis (examples, coverage, fuzzing, and stateful
# create → get/roll/reveal/revoke/delete through the description's links) for a bounded number
# of examples. It fails on any 5xx, any answer whose status, content type or body the
# description does not allow, and any request that hangs (request timeout; the whole run is
# bounded too). The server is stopped by its pid, on failure too.

SCHEMATHESIS_VERSION=4.32.5
SCHEMATHESIS_MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-25}
SCHEMATHESIS_SERVER_PID=

schemathesis_stop() {
  if [ -n "$SCHEMATHESIS_SERVER_PID" ]; then
    kill "$SCHEMATHESIS_SERVER_PID" 2>/dev/null || true
    wait "$SCHEMATHESIS_SERVER_PID" 2>/dev/null || true
    SCHEMATHESIS_SERVER_PID=
  fi
}

schemathesis_run() {
  local dir port session rc=0
  dir=$(mktemp -d)
  if ! python3 -m venv "$dir/venv" >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
      rm -rf "$dir/venv"
      python3 -m venv "$dir/venv"
    else
      echo "python3 -m venv is not available (install python3-venv)" >&2
      rm -rf "$dir"
      return 1
    fi
  fi
  "$dir/venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"

  # The same build as the test step (all features: the SQLite store), so nothing recompiles.
  cargo build --locked --all-features --example server
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  API_KEYS_MASTER_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(16))') \
    target/debug/examples/server "$port" --allow-reveal --db "$dir/keys.db" >"$dir/server.log" 2>&1 &
  SCHEMATHESIS_SERVER_PID=$!
  for _ in $(seq 1 100); do
    if grep -q 'alice — manager of acme' "$dir/server.log" 2>/dev/null; then break; fi
    if ! kill -0 "$SCHEMATHESIS_SERVER_PID" 2>/dev/null; then break; fi
    sleep 0.1
  done
  session=$(awk '/alice — manager of acme/ {print $NF; exit}' "$dir/server.log")
  if [ -z "$session" ]; then
    echo "the example server did not start:" >&2
    cat "$dir/server.log" >&2
    schemathesis_stop
    rm -rf "$dir"
    return 1
  fi

  timeout 300 "$dir/venv/bin/schemathesis" run "http://127.0.0.1:$port/api/openapi.json" \
    --header "X-Demo-Session: $session" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$SCHEMATHESIS_MAX_EXAMPLES" \
    --request-timeout 10 \
    --workers 1 \
    --no-color || rc=$?

  schemathesis_stop
  if [ "$rc" -ne 0 ]; then
    echo "schemathesis failed ($rc); the server's log:" >&2
    tail -n 50 "$dir/server.log" >&2
  fi
  rm -rf "$dir"
  return "$rc"
}
