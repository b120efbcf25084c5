#!/usr/bin/env bash
# Local operations in one command: a Prefect server on 127.0.0.1:4200, the work pools, the
# deployments and alerts of prefect.yaml, and a supervised process worker.
#
#   bash scripts/serve.sh          # UI at http://127.0.0.1:4200 ; Ctrl-C stops the worker only
#   bash scripts/serve.sh stop     # stops the server this script started (pid in out/logs/server.pid)
#
# Three kinds of processes, each independent of the others:
# - the server runs in its own session (setsid): stopping or killing the worker or this script
#   leaves it (and the UI) up; `serve.sh stop` ends it;
# - the worker is restarted when it dies (a crash, kill -9, out of memory), after 5 s;
# - flow runs are the worker's children in their own process group with their output to their log
#   files only (prefect.yaml: stream_output false), so a dead worker neither kills them nor breaks
#   their stdout. A run whose process dies is marked Crashed with the cause: by the worker (exit
#   code/signal) or, when the worker is gone too, by the "sot: lost run" automation (no heartbeat).
#
# Environment (all optional): SOT_PORT (4200), SOT_HOME (store, default ./.sot of the checkout),
# PREFECT_HOME (server database and settings, default ~/.prefect), SOT_ALERT_WEBHOOK (a URL that
# receives the alerts as JSON {subject, body}), SOT_GPU_WORKER=1 to also run a worker for the GPU
# pool (automatic when nvidia-smi sees a GPU), SOT_SERVE_NO_WORKER=1 to register and return.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
[ -x .venv/bin/prefect ] || bash scripts/setup.sh
export PATH="$REPO/.venv/bin:$PATH"
PORT=${SOT_PORT:-4200}
LOGS="${SOT_LOGS:-$REPO/out/logs}"  # SOT_LOGS: another folder for logs and server.pid
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_API_URL="http://127.0.0.1:${PORT}/api"
export SOT_HOME="${SOT_HOME:-$REPO/.sot}"
mkdir -p "$LOGS" "$REPO/data/incoming"

healthy() { python - "$PREFECT_API_URL/health" <<'EOF'
import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

if [ "${1:-}" = stop ]; then
  if [ -f "$LOGS/server.pid" ] && kill -0 "$(cat "$LOGS/server.pid")" 2>/dev/null; then
    kill -TERM -- "-$(cat "$LOGS/server.pid")" && echo "serve: server stopped"  # its own process group
  else
    echo "serve: no server started by this script is running"
  fi
  rm -f "$LOGS/server.pid"
  exit 0
fi

if healthy; then
  echo "serve: using the Prefect server already at $PREFECT_API_URL"
else
  echo "serve: starting the Prefect server on 127.0.0.1:$PORT (log: ${LOGS#"$REPO"/}/server.log)"
  setsid prefect server start --host 127.0.0.1 --port "$PORT" >"$LOGS/server.log" 2>&1 </dev/null &
  echo $! >"$LOGS/server.pid"
  for _ in $(seq 1 240); do healthy && break; sleep 0.5; done
  healthy || { echo "serve: the server did not become healthy; see ${LOGS#"$REPO"/}/server.log"; exit 1; }
fi

for pool in sot-process sot-gpu; do
  prefect work-pool inspect "$pool" >/dev/null 2>&1 || prefect work-pool create "$pool" --type process >/dev/null
done

prefect --no-prompt deploy --all   # also creates the alert automations (prefect.yaml build step)

stop_worker() {
  kill -TERM "$1" 2>/dev/null || return 0
  for i in $(seq 1 40); do
    kill -0 "$1" 2>/dev/null || return 0
    [ "$i" = 20 ] && kill -TERM "$1" 2>/dev/null
    sleep 0.5
  done
  kill -KILL "$1" 2>/dev/null || true
  # Reap it: a worker left a zombie when this script exits is adopted by PID 1, which in a
  # container may never reap it (seen under load, when the worker needed the SIGKILL).
  wait "$1" 2>/dev/null || true
}

# A worker that comes back: each start polls the pool again; runs already started keep running.
supervise() {
  local pool=$1 log=$2 stop=0 pid=
  # Stop: SIGTERM (a background job ignores SIGINT, so the worker would never see one), again if
  # it is still there after 10 s (a worker treats the first as a request), then SIGKILL.
  trap 'stop=1; [ -n "$pid" ] && stop_worker "$pid"' INT TERM
  while [ "$stop" = 0 ]; do
    # Its own session: a Ctrl-C in this terminal reaches the supervisor (which stops it), not the runs.
    setsid prefect worker start --pool "$pool" --name "$pool-$(hostname)" >>"$log" 2>&1 </dev/null &
    pid=$!
    echo "serve: worker for $pool started (pid $pid, log: ${log#"$REPO"/})"
    wait "$pid" && code=0 || code=$?
    pid=
    [ "$stop" = 1 ] && break
    echo "serve: worker for $pool exited ($code); restarting in 5 s"
    sleep 5
  done
}

echo "serve: UI at http://127.0.0.1:$PORT  (deployments: prefect deployment ls; store: $SOT_HOME)"
if [ "${SOT_SERVE_NO_WORKER:-}" = 1 ]; then
  exit 0
fi
if [ "${SOT_GPU_WORKER:-}" = 1 ] || { [ -z "${SOT_GPU_WORKER:-}" ] && nvidia-smi -L >/dev/null 2>&1; }; then
  supervise sot-gpu "$LOGS/worker-gpu.log" &
fi
echo "serve: Ctrl-C stops the workers; the server keeps running (bash scripts/serve.sh stop)"
supervise sot-process "$LOGS/worker.log"
wait
