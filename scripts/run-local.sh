#!/usr/bin/env bash
# Runs Reflow locally (`make run`): the reflow-fixture MCP server on 127.0.0.1:9901, then the
# gateway in the foreground on LISTEN (default 127.0.0.1:8080) with config/local/gateway.yaml and
# the manifests in config/local/manifests. Prints a dev token and client config to paste.
# Expects the binaries built (`make run` builds them exactly as `make test` does: one build).
set -euo pipefail

LISTEN="${1:-127.0.0.1:8080}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
GATEWAY="${REFLOW_DATAPLANE_BIN:-$BIN_DIR/reflow-dataplane}"
FIXTURE="${REFLOW_FIXTURE_BIN:-$BIN_DIR/reflow-fixture}"
FIXTURE_ADDR="127.0.0.1:9901"
CONFIG="config/local/gateway.yaml"
MANIFESTS="config/local/manifests"
# gateway.yaml names these files (relative to config/local/); keep the two in step.
STATE="$ROOT/target/reflow-local"
USER_NAME="${REFLOW_DEV_USER:-${USER:-developer}}"

for bin in "$GATEWAY" "$FIXTURE"; do
  if [[ ! -x "$bin" ]]; then
    echo "run-local: $bin is missing; run: cargo build -p reflow-dataplane -p reflow-e2e --bins" >&2
    exit 1
  fi
done

mkdir -p "$STATE"
# Random, owner-only, generated once so tokens and sealed values survive restarts.
umask 077
[[ -s "$STATE/sealing.key" ]] || head -c 32 /dev/urandom | base64 > "$STATE/sealing.key"
[[ -s "$STATE/dev-hs256.secret" ]] || head -c 48 /dev/urandom | base64 > "$STATE/dev-hs256.secret"
umask 022

FIXTURE_PID=""
GATEWAY_PID=""
stop() { # by PID only: the processes this script started
  local pid
  for pid in "$@"; do
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
}
trap 'stop "$GATEWAY_PID" "$FIXTURE_PID"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$FIXTURE" --listen "$FIXTURE_ADDR" > "$STATE/fixture.out" 2> "$STATE/fixture.log" &
FIXTURE_PID=$!
for _ in $(seq 1 100); do
  grep -q "^listening on http://" "$STATE/fixture.out" 2>/dev/null && break
  if ! kill -0 "$FIXTURE_PID" 2>/dev/null; then
    echo "run-local: reflow-fixture exited; see $STATE/fixture.log:" >&2
    tail -n 20 "$STATE/fixture.log" >&2
    exit 1
  fi
  sleep 0.1
done
grep -q "^listening on http://" "$STATE/fixture.out" || { echo "run-local: reflow-fixture did not start within 10s" >&2; exit 1; }

TOKEN="$("$GATEWAY" token --config "$CONFIG" --user "$USER_NAME" --group developers --ttl 8h)"
URL="http://$LISTEN/mcp"

cat <<INFO

  Reflow (local)  gateway $URL  ->  fixture http://$FIXTURE_ADDR/mcp (pid $FIXTURE_PID)
  Manifests: $MANIFESTS (edits apply live)   Config: $CONFIG
  Audit:     tail -f $STATE/audit.jsonl       Fixture log: $STATE/fixture.log
  Console:   http://$LISTEN/console  (sign in by pasting the dev token below)

  Dev token for user "$USER_NAME", group "developers" (8h; mint more with:
    $GATEWAY token --config $CONFIG --user NAME --group developers):

$TOKEN

  Client config (Claude Desktop / Cursor style):

{
  "mcpServers": {
    "reflow": {
      "type": "http",
      "url": "$URL",
      "headers": { "Authorization": "Bearer $TOKEN" }
    }
  }
}

  Try it:

curl -si $URL \\
  -H 'Authorization: Bearer $TOKEN' \\
  -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\
  -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}'

INFO

# Not `exec`: this shell stays to stop the fixture afterwards. SIGINT/SIGTERM are passed on to
# the gateway, which drains its connections (at most 10s) and exits.
"$GATEWAY" serve --config "$CONFIG" --manifests "$MANIFESTS" --listen "$LISTEN" &
GATEWAY_PID=$!
trap 'kill -TERM "$GATEWAY_PID" 2>/dev/null || true' INT TERM
status=0
while kill -0 "$GATEWAY_PID" 2>/dev/null; do
  # `wait` returns early when a trapped signal arrives; wait again for the real exit status.
  if wait "$GATEWAY_PID"; then status=0; else status=$?; fi
done
exit "$status"
