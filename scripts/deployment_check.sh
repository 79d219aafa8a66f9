#!/usr/bin/env bash
# Deployment check on loopback, for real: start a Prefect server on a free port, serve the
# kaggle-lora deployments (python flows/serve.py), run kaggle-lora/demo and watch it reach
# Completed, then stop every process this script started (by pid, never by name).
#
#   scripts/deployment_check.sh            # tiny model: ~1 minute
#   FULL=1 scripts/deployment_check.sh     # the real MiniLM demo: a few minutes
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python)}"
PREFECT="$(dirname "$PY")/prefect"
WORK="$(mktemp -d -t kaggle-lora-deploy-XXXXXX)"
PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
export PREFECT_HOME="$WORK/prefect-home"
export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
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

echo "server on port $PORT (work dir $WORK)"
"$PREFECT" server start --host 127.0.0.1 --port "$PORT" >"$WORK/server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 120); do
  if curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1; then break; fi
  sleep 0.5
done
curl -fsS "$PREFECT_API_URL/health" >/dev/null || { echo "server did not start"; tail -20 "$WORK/server.log"; exit 1; }

TINY="--tiny"; [ "${FULL:-0}" = "1" ] && TINY=""
"$PY" flows/serve.py $TINY --work-dir "$WORK/runs" >"$WORK/serve.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 120); do
  if "$PREFECT" deployment inspect kaggle-lora/demo >/dev/null 2>&1; then break; fi
  sleep 0.5
done
grep -q "Serving" "$WORK/serve.log" || { echo "serve.py did not start"; tail -20 "$WORK/serve.log"; exit 1; }
"$PREFECT" deployment ls

start=$(date +%s)
timeout 900 "$PREFECT" deployment run kaggle-lora/demo --watch | tee "$WORK/run.log"
grep -q "Completed" "$WORK/run.log" || { echo "FAILED: the run did not reach Completed"; tail -40 "$WORK/serve.log"; exit 1; }
echo "OK: kaggle-lora/demo reached Completed in $(( $(date +%s) - start )) s"
