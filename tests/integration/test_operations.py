"""Issue 16 against a real Prefect server: deployments registered by plain `prefect deploy --all` (no SOT_REPO),
alerts that reach a webhook (a local HTTP endpoint started here), readable run and task names and stage
figures in the run logs, a missing incoming folder failing the nightly run, drift events, Late GPU runs.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from integration.test_deployments import DEMO, REPO, artifacts_of, demo_rows, deployment, trigger, write_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]


class Webhook:
    """A local HTTP endpoint that records every POST body (the notification target)."""

    def __init__(self):
        calls = self.calls = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                calls.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, text: str, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for call in self.calls:
                if text in json.dumps(call):
                    return call
            time.sleep(1)
        raise AssertionError(f"no webhook call containing {text!r} within {timeout} s; got {self.calls}")


@pytest.fixture(scope="module")
def ops(prefect_server, tmp_path_factory):
    """Pools, then `prefect --no-prompt deploy --all` from the checkout with no SOT_REPO in the environment."""
    hook = Webhook()
    env = {k: v for k, v in prefect_server.env.items() if k != "SOT_REPO"}
    env["SOT_ALERT_WEBHOOK"] = hook.url
    for pool in ("sot-process", "sot-gpu"):
        prefect_server.prefect("work-pool", "create", pool, "--type", "process", "--overwrite")
    server = type(prefect_server)(prefect_server.url, env, prefect_server.home)
    server.prefect("--no-prompt", "deploy", "--all", timeout=300)
    yield server, hook, tmp_path_factory.mktemp("ops")
    hook.server.shutdown()


def run_worker(server, timeout: float = 500) -> str:
    proc = server.prefect("worker", "start", "--pool", "sot-process", "--run-once", timeout=timeout, check=False)
    return proc.stdout + proc.stderr


def run_nightly(server, work, incoming, name: str) -> tuple[dict, str]:
    """The nightly deployment run once on `incoming` into the module's store: (the ended run, worker output)."""
    run_id = trigger(server, "nightly-recuration", "nightly-recuration",
                     {"incoming": str(incoming), "home": str(work / "home"), "out_dir": str(work / "nightly"),
                      "name": name})
    output = run_worker(server)
    return ended(server, run_id), output


def ended(server, run_id: str, wait: float = 60) -> dict:
    deadline = time.monotonic() + wait
    while True:
        run = server.get(f"/flow_runs/{run_id}")
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") or time.monotonic() > deadline:
            return run
        time.sleep(1)


def events_of(server, name: str, resource: str, wait: float = 40) -> list[dict]:
    """Events `name` about `resource` (the server persists events in batches: poll)."""
    deadline = time.monotonic() + wait
    while True:
        events = server.post("/events/filter", {"filter": {"event": {"name": [name]}}, "limit": 50})["events"]
        found = [e for e in events if e["resource"]["prefect.resource.id"] == resource]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(2)


def logs_of(server, run_id: str) -> str:
    logs = server.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
    return "\n".join(entry["message"] for entry in logs)


def test_deploy_all_without_sot_repo_registers_the_checkout_and_the_alerts(ops):
    server, _, _ = ops
    for flow, name in (("curate-dataset", "curate-dataset"), ("nightly-recuration", "nightly-recuration"),
                       ("finetune-and-evaluate", "finetune-and-evaluate")):
        dep = deployment(server, flow, name)
        assert dep["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    gpu = deployment(server, "finetune-and-evaluate", "finetune-and-evaluate")
    assert "Late" in gpu["description"] and "sot-gpu" in gpu["description"]
    automations = {a["name"]: a for a in server.post("/automations/filter", {})}
    assert {"sot: run failed", "sot: run crashed", "sot: run late", "sot: drift"} <= set(automations)
    notifying = {"sot: run failed", "sot: run crashed", "sot: run late", "sot: drift"}
    assert all(automations[n]["actions"][0]["type"] == "send-notification" for n in notifying)
    assert automations["sot: lost run"]["actions"][0]["type"] == "change-flow-run-state"
    blocks = [b["name"] for b in server.post("/block_documents/filter", {})]
    assert "sot-alerts" in blocks


def test_curate_run_completes_with_readable_names_and_stage_logs(ops):
    server, _, work = ops
    pool = write_jsonl(work / "pool.jsonl", demo_rows(0, 80))
    run_id = trigger(server, "curate-dataset", "curate-dataset",
                     {"pool": str(pool), "out_dir": str(work / "out"), "home": str(work / "home"), "name": "ops",
                      "labels": None})
    output = run_worker(server)
    run = ended(server, run_id)
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{output[-4000:]}"
    version = json.loads((work / "out" / "run.json").read_text())["version"]
    assert run["name"] == f"curate-{version}"
    tasks = {t["name"] for t in server.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})}
    assert {"embed-pool", "embed-safe_anchor", "embed-harmful_ref"} <= tasks, tasks
    text = logs_of(server, run_id)
    for expected in ("ingest pool: 80 rows", "rows embedded now", "solve (lam", f"published {version}: kept"):
        assert expected in text, (expected, text[-3000:])
    assert (work / "home" / "prefect-results").is_dir()  # cached results live in the store


def test_missing_incoming_folder_fails_the_night_and_the_webhook_is_called(ops):
    server, hook, work = ops
    run, output = run_nightly(server, work, work / "no-such-incoming", "ops-missing")
    run_id = run["id"]
    assert run["state"]["type"] == "FAILED", f"{run['state']}\n{output[-3000:]}"
    assert "the incoming folder does not exist" in run["state"]["message"]
    call = hook.wait_for(run["name"])
    assert call["subject"].startswith("SOT run failed") and "incoming folder does not exist" in call["body"]
    # The hook's own event names the dataset and the cause; no retry was spent on the bad input.
    assert events_of(server, "sot.flow-run.failed", "sot.dataset.ops-missing")
    tasks = server.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
    assert [t["run_count"] for t in tasks if t["name"].startswith("collect-incoming")] == [1]


def test_a_batch_near_the_harmful_reference_raises_a_drift_alert(ops):
    server, hook, work = ops
    incoming = work / "incoming"
    harmful = [json.loads(line) for line in (DEMO / "harmful_ref.jsonl").read_text().splitlines()][:40]
    write_jsonl(incoming / "day1.jsonl", [{"prompt": r["prompt"] + " [night]", "response": r["response"]}
                                          for r in harmful])
    run, output = run_nightly(server, work, incoming, "ops-drift")
    run_id = run["id"]
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{output[-3000:]}"
    assert run["name"].startswith("nightly-ops-drift-")
    call = hook.wait_for("SOT drift alert: ops-drift")
    # The reason names the harmful side: nearer the harmful reference, or (issue 14) a contamination jump.
    assert "nearer the harmful reference" in call["body"] or "contamination" in call["body"], call["body"]
    assert "drift of batch" in logs_of(server, run_id)
    assert "sot-ops-drift-nightly" in artifacts_of(server, run_id)


def test_a_gpu_run_without_a_gpu_worker_goes_late_and_says_why(ops):
    server, hook, _ = ops
    run_id = trigger(server, "finetune-and-evaluate", "finetune-and-evaluate", {})
    try:
        call = hook.wait_for("SOT run waiting for a worker", timeout=120)
        assert "sot-gpu" in call["body"] and "prefect worker start --pool sot-gpu" in call["body"]
        assert server.get(f"/flow_runs/{run_id}")["state"]["name"] == "Late"
    finally:
        server.post(f"/flow_runs/{run_id}/set_state", {"state": {"type": "CANCELLED", "name": "Cancelled"},
                                                       "force": True})


def test_run_form_is_typed_and_the_server_refuses_bad_values_before_a_run_exists(ops):
    """Verifies what earlier sessions built (typed parameters, bounds, demo labels only for the demo pool)
    on the deployment this module registered: dropdowns come from enums, `keep` is bounded, `solver` is a
    typed object, and the API refuses keep=1.5 or an unknown mode with 409 before any flow run is created."""
    server, _, _ = ops
    dep = deployment(server, "curate-dataset", "curate-dataset")
    schema = dep["parameter_openapi_schema"]
    props, defs = schema["properties"], schema.get("definitions", {})

    def resolved(prop: dict) -> dict:
        ref = (prop.get("allOf") or [prop])[0].get("$ref") or prop.get("$ref")
        return defs[ref.rsplit("/", 1)[1]] if ref else prop

    assert set(resolved(props["mode"])["enum"]) >= {"push-pull"}, props["mode"]
    assert len(resolved(props["stratify"])["enum"]) >= 2
    keep = props["keep"]
    assert keep.get("exclusiveMinimum", keep.get("minimum")) == 0
    assert (keep.get("maximum") or keep.get("exclusiveMaximum")) == 1
    assert "properties" in resolved(props["solver"])
    assert "labels" not in dep["parameters"]  # the demo labels are applied only to the demo pool, in the flow
    assert "MODEL" in props["encoder"]["description"]
    before = len(server.post("/flow_runs/filter", {}))
    for bad in ({"keep": 1.5}, {"mode": "not-a-mode"}):
        r = server.http.post(f"/deployments/{dep['id']}/create_flow_run", json={"parameters": bad})
        assert r.status_code == 409, (bad, r.status_code, r.text[:300])
    assert len(server.post("/flow_runs/filter", {})) == before


def test_a_run_lost_with_its_worker_is_marked_crashed_by_the_heartbeat_automation(ops):
    """Worker and flow-run process killed together (a lost machine): nobody reports the run, so before it
    stayed Running forever. Its heartbeats (every 30 s, prefect.yaml) stop; 'sot: lost run' marks it
    Crashed with the reason and 'sot: run crashed' notifies."""
    import os
    import signal
    import subprocess

    from integration.conftest import BIN
    from integration.test_serve import run_process

    server, hook, work = ops
    pool = write_jsonl(work / "lost.jsonl", demo_rows(0, 300, "[lost]"))
    run_id = trigger(server, "curate-dataset", "curate-dataset",
                     {"pool": str(pool), "out_dir": str(work / "lost-out"), "home": str(work / "lost-home"),
                      "name": "lost", "labels": None})
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "sot-process"], env=server.env,
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while server.get(f"/flow_runs/{run_id}")["state"]["type"] != "RUNNING":
            assert time.monotonic() < deadline and worker.poll() is None, "the run never started"
            time.sleep(1)
        time.sleep(3)
        pid = run_process(run_id)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # the worker (a lost machine takes it and its runs)
        worker.wait()
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    run = None
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        run = server.get(f"/flow_runs/{run_id}")
        if run["state"]["type"] != "RUNNING":
            break
        time.sleep(3)
    assert run["state"]["type"] == "CRASHED", run["state"]
    assert "No heartbeat for 90 s" in run["state"]["message"]
    assert "No heartbeat" in hook.wait_for(f"SOT run crashed: {run['name']}")["body"]


def test_finetune_and_evaluate_deployment_trains_and_evaluates_on_a_gpu_pool_worker(ops):
    """The `finetune-and-evaluate` deployment run by a worker of its pool (sot-gpu; a CPU machine here, which
    the pool allows, slowly) on the tiny random Llama of test_train: the run completes, its tasks train and
    evaluate, the adapter and the safety artifacts exist. Evaluation uses the keyword judge only (the learned
    judge trains for minutes; test_evaluate covers it) and the shared datasets' held-out prompts."""
    from test_train import make_tiny_model, write_curated

    server, _, work = ops
    base, curated = make_tiny_model(work / "tiny"), write_curated(work / "ft-curated.jsonl")
    run_id = trigger(server, "finetune-and-evaluate", "finetune-and-evaluate",
                     {"curated": str(curated), "base_model": str(base), "out_dir": str(work / "ft"),
                      "home": str(work / "ft-home"),
                      "train": {"epochs": 1, "batch_size": 4, "max_length": 32},
                      "evaluation": {"n_harmful": 6, "n_benign": 2, "n_xstest": 2, "utility_task": "none",
                                     "use_learned_judge": False, "max_new_tokens": 8}})
    output = server.prefect("worker", "start", "--pool", "sot-gpu", "--run-once", timeout=500, check=False)
    run = ended(server, run_id)
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{(output.stdout + output.stderr)[-4000:]}"
    assert run["name"].startswith("finetune-")
    tasks = {t["name"].rsplit("-", 1)[0] for t in server.post("/task_runs/filter",
                                                               {"flow_runs": {"id": {"any_": [run_id]}}})}
    assert {"train-lora", "evaluate", "safety-artifacts"} <= tasks, tasks
    manifest = json.loads((work / "ft" / "lora" / "adapter" / "manifest.json").read_text())
    assert manifest["n_rows"] == sum(1 for _ in open(curated)) and manifest["steps"] == 2
    table = artifacts_of(server, run_id)["sot-safety"]
    values = {row["metric"]: row["value"] for row in json.loads(table["data"])}
    assert 0 <= values["harmful_rate_keyword"] <= 1 and "harmful_rate_judge" not in values
