#!/usr/bin/env bash
# Run the conformance suite against the real busgate binary on this machine.
#
#   conformance/run-local.sh [memory|nats] [runner args...]
#
# memory (default): the gateway's embedded memory bus.
# nats:             a real nats-server with JetStream (Debian package nats-server; `-js -sd` on a
#                   temporary folder) on a free port, and the gateway started with --nats. A missing
#                   nats-server fails the run (exit 1). When the binary has no NATS support ("not
#                   available in this build") the script prints SKIPPED and exits 0.
#
# Env: BUSGATE_BIN (default build/bin/busgate), REPORT (default build/conformance-report[-nats]),
#      CASES (default "*"), PYTHON (default python3), NATS_SERVER (default nats-server).
# Extra arguments go to the runner, e.g. `conformance/run-local.sh memory --cases '3.*'`.
# Exit status: non-zero when any case is FAILED (or the gateway cannot be started).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE="${1:-memory}"
[ $# -gt 0 ] && shift
case "$MODE" in memory|nats) ;; *) echo "usage: $0 [memory|nats] [runner args...]" >&2; exit 2;; esac

BIN="${BUSGATE_BIN:-$ROOT/build/bin/busgate}"
PY="${PYTHON:-python3}"
NATS_BIN="${NATS_SERVER:-nats-server}"
CASES="${CASES:-*}"
SUFFIX=""
if [ "$MODE" = nats ]; then SUFFIX="-nats"; fi
REPORT="${REPORT:-$ROOT/build/conformance-report$SUFFIX}"
if [ ! -x "$BIN" ]; then echo "run-local: no gateway binary at $BIN (build it, or set BUSGATE_BIN)" >&2; exit 2; fi

WORK="$(mktemp -d)"
GW_PID=""
NATS_PID=""
cleanup() {
  if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
    kill -TERM "$GW_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$GW_PID" 2>/dev/null || true
  fi
  if [ -n "$NATS_PID" ] && kill -0 "$NATS_PID" 2>/dev/null; then
    kill -TERM "$NATS_PID" 2>/dev/null || true
    wait "$NATS_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

EXTRA=()
if [ "$MODE" = nats ]; then
  if ! command -v "$NATS_BIN" >/dev/null 2>&1; then
    echo "run-local: FAILED: nats-server not found (install the Debian package nats-server, or set NATS_SERVER)" >&2
    exit 1
  fi
  NATS_PORT="$(free_port)"
  mkdir -p "$WORK/jetstream"
  "$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/jetstream" >"$WORK/nats.log" 2>&1 &
  NATS_PID=$!
  for _ in $(seq 100); do
    grep -q "Server is ready" "$WORK/nats.log" 2>/dev/null && break
    kill -0 "$NATS_PID" 2>/dev/null || { cat "$WORK/nats.log" >&2; echo "run-local: nats-server did not start" >&2; exit 1; }
    sleep 0.1
  done
  EXTRA=(--nats "nats://127.0.0.1:$NATS_PORT")
fi

"$BIN" --config conformance/gateway.yaml --tcp 127.0.0.1:0 --http 127.0.0.1:0 "${EXTRA[@]}" 2>"$WORK/gateway.log" >/dev/null &
GW_PID=$!
TCP="" HTTP=""
for _ in $(seq 150); do
  if ! kill -0 "$GW_PID" 2>/dev/null; then
    if grep -q "not available in this build" "$WORK/gateway.log"; then
      grep "not available in this build" "$WORK/gateway.log" >&2
      echo "run-local: SKIPPED: this gateway build has no NATS bus support yet" >&2
      GW_PID=""
      exit 0
    fi
    cat "$WORK/gateway.log" >&2
    echo "run-local: the gateway exited before it was ready" >&2
    GW_PID=""
    exit 1
  fi
  TCP="$(sed -n 's/.*tcp listening on \([^ ]*\).*/\1/p' "$WORK/gateway.log" | head -1)"
  HTTP="$(sed -n 's/.*http listening on \([^ ]*\).*/\1/p' "$WORK/gateway.log" | head -1)"
  if grep -q "ready (bus:" "$WORK/gateway.log" && [ -n "$TCP" ]; then break; fi
  sleep 0.1
done
if ! grep -q "ready (bus:" "$WORK/gateway.log"; then
  cat "$WORK/gateway.log" >&2; echo "run-local: the gateway did not become ready" >&2; exit 1
fi
grep "ready (bus:" "$WORK/gateway.log" >&2
WS_ARGS=()
[ -n "$HTTP" ] && WS_ARGS=(--ws-url "ws://$HTTP/v1/ws")

set +e
"$PY" -m conformance --url "tcp://$TCP" "${WS_ARGS[@]}" --cases "$CASES" --report "$REPORT" \
  --allow-drain "kill -TERM $GW_PID" "$@"
RC=$?
set -e
if [ "$RC" -ne 0 ]; then
  echo "run-local: gateway log (last 40 lines):" >&2
  tail -40 "$WORK/gateway.log" >&2
fi
exit "$RC"
