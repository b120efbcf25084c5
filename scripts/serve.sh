#!/usr/bin/env bash
# Local operations in one command: a Prefect server on 127.0.0.1:4200, the work pools, the
# deployments of prefect.yaml, and a process worker in the foreground (Ctrl-C stops the worker
# and the server this script started).
#
#   bash scripts/serve.sh                 # UI at http://127.0.0.1:4200
#
# Environment (all optional): SOT_PORT (4200), SOT_HOME (store, default ./.sot of the checkout),
# PREFECT_HOME (server database and settings, default ~/.prefect), SOT_GPU_WORKER=1 to also start
# a worker for the GPU pool (started automatically when nvidia-smi sees a GPU), SOT_SERVE_NO_WORKER=1
# to register everything and return without a worker.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
[ -x .venv/bin/prefect ] || bash scripts/setup.sh
export PATH="$REPO/.venv/bin:$PATH"
PORT=${SOT_PORT:-4200}
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_API_URL="http://127.0.0.1:${PORT}/api"
# Read by prefect.yaml's pull step in each flow run: the code and data/demo live here.
export SOT_REPO="$REPO"
export SOT_HOME="${SOT_HOME:-$REPO/.sot}"
mkdir -p "$REPO/out/logs" "$REPO/data/incoming"

healthy() { python - "$PREFECT_API_URL/health" <<'EOF'
import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

pids=()
cleanup() { for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

if healthy; then
  echo "serve: using the Prefect server already at $PREFECT_API_URL"
else
  echo "serve: starting the Prefect server on 127.0.0.1:$PORT (log: out/logs/server.log)"
  prefect server start --host 127.0.0.1 --port "$PORT" >"$REPO/out/logs/server.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 120); do healthy && break; sleep 0.5; done
  healthy || { echo "serve: the server did not become healthy; see out/logs/server.log"; exit 1; }
fi

for pool in sot-process sot-gpu; do
  prefect work-pool inspect "$pool" >/dev/null 2>&1 || prefect work-pool create "$pool" --type process >/dev/null
done

prefect --no-prompt deploy --all

if [ "${SOT_GPU_WORKER:-}" = 1 ] || { [ -z "${SOT_GPU_WORKER:-}" ] && nvidia-smi -L >/dev/null 2>&1; }; then
  echo "serve: starting a worker for the GPU pool sot-gpu (log: out/logs/worker-gpu.log)"
  prefect worker start --pool sot-gpu --name "sot-gpu-$(hostname)" >"$REPO/out/logs/worker-gpu.log" 2>&1 &
  pids+=($!)
fi

echo "serve: UI at http://127.0.0.1:$PORT  (deployments: prefect deployment ls; store: $SOT_HOME)"
if [ "${SOT_SERVE_NO_WORKER:-}" = 1 ]; then
  trap - EXIT INT TERM  # leave the server running for whoever asked for no worker
  exit 0
fi
echo "serve: worker for pool sot-process in the foreground; Ctrl-C stops it and the server"
prefect worker start --pool sot-process --name "sot-process-$(hostname)"
