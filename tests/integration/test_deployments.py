"""Deploy prefect.yaml to a real server, trigger runs through its API, work them with a real worker.

One module-scoped store is shared by the deployed curate and nightly runs, so the nightly runs find
the references already embedded and the assertion "only the new rows were embedded" is exact.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sot_core.data.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"
NAMES = ["curate-dataset", "nightly-recuration"] + (
    ["finetune-and-evaluate"] if (REPO / "flows" / "finetune_eval.py").exists() else [])


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def demo_rows(start: int, stop: int, suffix: str = "") -> list[dict]:
    rows = [json.loads(line) for line in (DEMO / "pool.jsonl").read_text().splitlines()][start:stop]
    for r in rows:
        r.pop("id", None)
        if suffix:  # new text, so new content hashes: these rows were never embedded
            r["prompt"] = f"{r['prompt']} {suffix}"
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name)  # the incoming folder ignores dot-files: publish atomically
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.rename(path)
    return path


@pytest.fixture(scope="module")
def deployed(prefect_server, tmp_path_factory):
    for pool in ("sot-process", "sot-gpu"):
        prefect_server.prefect("work-pool", "create", pool, "--type", "process")
    args = ["--no-prompt", "deploy"] + [a for n in NAMES for a in ("--name", n)]
    prefect_server.prefect(*args, timeout=180)
    work = tmp_path_factory.mktemp("work")
    return prefect_server, work


def deployment(server, flow: str, name: str) -> dict:
    return server.get(f"/deployments/name/{flow}/{name}")


def trigger(server, flow: str, name: str, parameters: dict) -> str:
    dep = deployment(server, flow, name)
    return server.post(f"/deployments/{dep['id']}/create_flow_run", {"parameters": parameters})["id"]


def work_once(server, timeout: float = 400) -> str:
    """One `prefect worker start --run-once`: picks up the scheduled run(s) of the pool and exits."""
    proc = server.prefect("worker", "start", "--pool", "sot-process", "--run-once", timeout=timeout, check=False)
    return proc.stdout + proc.stderr


def final_state(server, run_id: str, output: str, wait: float = 30) -> dict:
    deadline = time.monotonic() + wait
    while True:
        state = server.get(f"/flow_runs/{run_id}")["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") or time.monotonic() > deadline:
            assert state["type"] == "COMPLETED", f"run {run_id} ended {state['type']}: {state.get('message')}\n{output[-4000:]}"
            return state
        time.sleep(1)


def artifacts_of(server, run_id: str) -> dict[str, dict]:
    found = server.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    return {a["key"]: a for a in found if a.get("key")}


@pytest.fixture(scope="module")
def curate_run(deployed):
    server, work = deployed
    pool = write_jsonl(work / "pool.jsonl", demo_rows(0, 300))
    params = {"pool": str(pool), "out_dir": str(work / "out" / "curate"), "home": str(work / "home"),
              "name": "itest", "keep": 0.75, "lam": 1.0, "eps": 0.05, "encoder": "minilm", "labels": None}
    run_id = trigger(server, "curate-dataset", "curate-dataset", params)
    output = work_once(server)
    final_state(server, run_id, output)
    return server, work, run_id


def test_deployments_are_registered_with_typed_parameters(deployed):
    server, _ = deployed
    curate = deployment(server, "curate-dataset", "curate-dataset")
    props = curate["parameter_openapi_schema"]["properties"]
    for name, kind in (("pool", "string"), ("safe_anchor", "string"), ("harmful_ref", "string"),
                       ("lam", "number"), ("eps", "number"), ("encoder", "string")):
        assert props[name]["type"] == kind and props[name].get("description"), name
    # keep is a fraction or 'auto' (the harmful-row budget): both offered, the fraction bounded
    keep = props["keep"]
    assert {"type": "number"} in keep["anyOf"] and {"type": "string", "enum": ["auto"]} in keep["anyOf"]
    assert keep["exclusiveMinimum"] == 0 and keep["maximum"] == 1 and keep.get("description")
    assert curate["parameters"]["pool"] == "data/demo/pool.jsonl" and curate["work_pool_name"] == "sot-process"
    assert curate["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
    nightly = deployment(server, "nightly-recuration", "nightly-recuration")
    # Prefect 3.9 reports a deployment's limit as a global concurrency limit of its own.
    assert (nightly.get("global_concurrency_limit") or {}).get("limit", nightly.get("concurrency_limit")) == 1
    assert nightly["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["schedules"][0]["schedule"]["timezone"] == "UTC"


def test_curate_run_from_the_api_completes_and_publishes(curate_run):
    server, work, run_id = curate_run
    versions = Store(work / "home").query("SELECT version, n_pool, n_selected, code_version FROM curated_versions "
                                          "WHERE name = 'itest'")
    assert len(versions) == 1 and versions[0][1:3] == (300, 225)
    run = json.loads((work / "out" / "curate" / "run.json").read_text())
    assert run["version"] == versions[0][0]
    keys = artifacts_of(server, run_id)
    for suffix in ("report", "flagged", "review", "counts", "scores", "neighbours", "solver", "plot"):
        assert f"sot-itest-{suffix}" in keys, sorted(keys)
    review = [json.loads(line) for line in (work / "out" / "curate" / "review.jsonl").read_text().splitlines()]
    assert [r["id"] for r in review[:10]] == [r["id"] for r in run["review"]["preview"]] and len(review) == 50
    assert keys["sot-itest-plot"]["type"] == "image"
    assert server.get("/artifacts/sot-itest-report/latest")["flow_run_id"] == run_id


def test_nightly_twice_embeds_only_the_new_rows(curate_run):
    server, work, _ = curate_run
    incoming, home = work / "incoming", work / "home"
    params = {"incoming": str(incoming), "home": str(home), "out_dir": str(work / "out" / "nightly"),
              "name": "itest-nightly"}
    write_jsonl(incoming / "day1.jsonl", demo_rows(300, 330, "[day 1]"))
    first = trigger(server, "nightly-recuration", "nightly-recuration", params)
    final_state(server, first, work_once(server))
    write_jsonl(incoming / "day2.jsonl", demo_rows(330, 335, "[day 2]"))
    second = trigger(server, "nightly-recuration", "nightly-recuration", params)
    final_state(server, second, work_once(server))
    store = Store(home)
    batches = store.query("SELECT seq, n_rows, n_embedded, drift_anchor, drift_harmful FROM incoming_batches "
                          "WHERE name = 'itest-nightly' ORDER BY seq")
    # The references were embedded by the curate run: night 1 embeds its 30 rows, night 2 its 5.
    assert [(b[0], b[1], b[2]) for b in batches] == [(1, 30, 30), (2, 5, 5)]
    assert all(b[3] is not None and b[4] is not None for b in batches)
    run = json.loads((work / "out" / "nightly" / "run.json").read_text())
    assert run["counts"]["embedded_now"] == {"pool": 5, "safe_anchor": 0, "harmful_ref": 0}
    assert run["counts"]["pool"] == 35
    keys = artifacts_of(server, second)
    assert {"sot-itest-nightly-drift", "sot-itest-nightly-nightly", "sot-itest-nightly-plot"} <= set(keys)


def test_two_nightly_runs_triggered_together_queue(curate_run):
    """The nightly deployment allows one run at a time (concurrency limit 1, ENQUEUE): two runs
    triggered together both complete, one after the other: their state timestamps do not overlap.
    (A worker picks up every scheduled run it sees, so without the limit they would overlap.)"""
    from datetime import datetime

    server, work, _ = curate_run
    incoming = work / "incoming-queue"
    write_jsonl(incoming / "day1.jsonl", demo_rows(340, 350, "[queue]"))
    params = {"incoming": str(incoming), "home": str(work / "home"), "out_dir": str(work / "out" / "queue"),
              "name": "itest-queue"}
    ids = [trigger(server, "nightly-recuration", "nightly-recuration", params) for _ in range(2)]
    output, deadline = "", time.monotonic() + 600
    while time.monotonic() < deadline:
        output += work_once(server)
        runs = [server.get(f"/flow_runs/{i}") for i in ids]
        if all(r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs):
            break
        time.sleep(2)
    assert [r["state"]["type"] for r in runs] == ["COMPLETED"] * 2, (runs, output[-4000:])
    spans = sorted((datetime.fromisoformat(r["start_time"]), datetime.fromisoformat(r["end_time"])) for r in runs)
    assert spans[0][1] <= spans[1][0], spans


def test_ui_pages_render_in_headless_chromium(curate_run, screenshot_dirs):
    chromium = chromium_binary()
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); UI screenshots skipped")
    server, work, run_id = curate_run
    tmp_dir, keep_dir = screenshot_dirs
    dep = deployment(server, "curate-dataset", "curate-dataset")
    plot = artifacts_of(server, run_id)["sot-itest-plot"]
    pages = {"deployment": (f"{server.url}/deployments/deployment/{dep['id']}", "curate-dataset"),
             "run": (f"{server.url}/runs/flow-run/{run_id}", "Completed"),
             "artifact-report-key": (f"{server.url}/artifacts/key/sot-itest-report", "sot-itest-report"),
             "artifact-plot": (f"{server.url}/artifacts/artifact/{plot['id']}", "data:image/png;base64")}
    for name, (url, expected) in pages.items():
        shot = tmp_dir / f"{name}.png"
        flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,900", "--virtual-time-budget=10000"]
        proc = subprocess.run(flags + [f"--user-data-dir={work / f'chromium-{name}'}", f"--screenshot={shot}", url],
                              capture_output=True, text=True, timeout=120)
        assert shot.exists() and shot.stat().st_size > 10_000, f"{name}: no screenshot\n{proc.stderr[-2000:]}"
        shutil.copy2(shot, keep_dir / shot.name)
        # The screenshot alone cannot tell a rendered page from an error page: read the DOM too.
        dom = subprocess.run(flags + [f"--user-data-dir={work / f'chromium-{name}-dom'}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120).stdout
        assert "Can't connect to Server API" not in dom and expected in dom, f"{name}: page did not render {expected!r}"
