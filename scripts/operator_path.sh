#!/usr/bin/env bash
# The README's operator path, timed (start, trigger, watch, get alerted, recover, lose a worker, stop),
# with its own Prefect home, store and ports, and a local webhook that records the alerts.
#   bash scripts/operator_path.sh          (uses and then empties data/incoming/ of this checkout)
set -u
cd "$(dirname "$0")/.."
export PATH="$(pwd)/.venv/bin:$PATH" PREFECT_SERVER_ANALYTICS_ENABLED=false
D=$(mktemp -d) PORT=${SOT_PORT:-4317} HOOK_PORT=${HOOK_PORT:-4318}
export SOT_PORT=$PORT PREFECT_HOME=$D/prefect SOT_HOME=$D/store SOT_LOGS=$D/logs
export SOT_ALERT_WEBHOOK=http://127.0.0.1:$HOOK_PORT/hook PREFECT_API_URL=http://127.0.0.1:$PORT/api
T0=$(date +%s.%N)
t() { printf "[%6.1f s] %s\n" "$(echo "$(date +%s.%N) - $T0" | bc)" "$*"; }
run_id() { grep -o "UUID: [0-9a-f-]*" | cut -d' ' -f2; }
wait_run() {
  for _ in $(seq 600); do
    s=$(curl -s "$PREFECT_API_URL/flow_runs/$1" | python -c "import json,sys; d=json.load(sys.stdin); print(d['state']['type'], d['name'])")
    case "$s" in COMPLETED*|FAILED*|CRASHED*) echo "$s"; return;; esac; sleep 2
  done; echo "TIMEOUT $s"
}
python - "$HOOK_PORT" "$D/alerts.log" <<'PY' &
import sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
out = open(sys.argv[2], "a")
class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        out.write(f"{time.strftime('%H:%M:%S')} {self.rfile.read(int(self.headers['content-length'])).decode()}\n")
        out.flush(); self.send_response(200); self.end_headers()
    def log_message(self, *args): pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
PY
HOOK=$!
rm -rf data/incoming
t "start: bash scripts/serve.sh"
setsid bash scripts/serve.sh >"$D/serve.out" 2>&1 & SERVE=$!
until grep -q "worker for sot-process started" "$D/serve.out"; do sleep 1; done
t "ready: server, pools, deployments, alerts, worker"
id=$(prefect deployment run curate-dataset/curate-dataset 2>&1 | run_id)
t "trigger: curate-dataset/curate-dataset"
t "watch: $(wait_run "$id")"
prefect flow-run logs "$id" 2>/dev/null | grep -E "ingest pool|embedded now|solve \(|published" | cut -c1-150
mkdir -p data/incoming
id=$(prefect deployment run nightly-recuration/nightly-recuration 2>&1 | run_id)
t "trigger: nightly with an empty data/incoming: $(wait_run "$id")"
until [ -s "$D/alerts.log" ]; do sleep 1; done
t "alert: $(cut -c1-220 "$D/alerts.log")"
head -40 data/demo/pool.jsonl | sed 's/"prompt": "/"prompt": "[new] /' >data/incoming/.day1.jsonl
mv data/incoming/.day1.jsonl data/incoming/day1.jsonl
id=$(prefect deployment run nightly-recuration/nightly-recuration 2>&1 | run_id)
t "recover: 40 rows in data/incoming, nightly again: $(wait_run "$id")"
prefect flow-run logs "$id" 2>/dev/null | grep -E "new rows|drift of batch|published" | cut -c1-150
kill -9 "$(grep -o "started (pid [0-9]*" "$D/serve.out" | tail -1 | grep -o "[0-9]*$")"
t "kill -9 of the worker"
until [ "$(grep -c 'worker for sot-process started' "$D/serve.out")" -ge 2 ]; do sleep 1; done
t "worker restarted; server health: $(curl -s "$PREFECT_API_URL/health")"
kill -TERM -- "-$SERVE"   # as Ctrl-C would (a background job here ignores SIGINT): stops the worker
for _ in $(seq 60); do kill -0 "$SERVE" 2>/dev/null || break; sleep 0.5; done
bash scripts/serve.sh stop; kill "$HOOK"
t "stopped (logs in $D)"
rm -rf data/incoming
