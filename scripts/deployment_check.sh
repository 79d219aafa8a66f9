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
# the flows import the package of this checkout, whichever copy is installed
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORK="$(mktemp -d -t kaggle-lora-deploy-XXXXXX)"
. scripts/_prefect_server.sh
start_server

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
