# Sourced by the loopback checks (deployment_check.sh, ui_check.sh): a Prefect server of their own
# on a free loopback port, an isolated PREFECT_HOME under $WORK, and a cleanup that stops every
# process a script added to PIDS (by pid, never by name). Needs PY and WORK set by the caller.
PREFECT="$(dirname "$PY")/prefect"
PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
# set before the server starts: the UI asks the server which API URL to call
export PREFECT_HOME="$WORK/prefect-home"
export PREFECT_API_URL="$BASE/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  echo "stopped: ${PIDS[*]:-nothing}; logs in $WORK"
}
trap cleanup EXIT

# start_server: run `prefect server start` in the background and wait (up to 60 s) for /health.
start_server() {
  echo "server on port $PORT (work dir $WORK)"
  "$PREFECT" server start --host 127.0.0.1 --port "$PORT" >"$WORK/server.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 120); do
    if curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "FAILED: the Prefect server did not start"; tail -20 "$WORK/server.log"; exit 1
}
