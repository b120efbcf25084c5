"""Operations (issue 16): retries with backoff that skip bad input, cached results in the store (shared by
workers), readable run and task names, stage figures in the run logs, the drift alarm.

Runs against the session's real temporary Prefect API (`prefect_backend`); the integration tests repeat
the names and logs against a served deployment.
"""
from __future__ import annotations

import json
import time

import pytest
from prefect import flow, task
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

import test_incremental  # noqa: F401  (registers the model-free "testhash" encoder)
from sot_core.curate.incremental import drift_alarm
from sot_core.errors import InputError
from sot_prefect.tasks.curation import build_costs, embed_dataset, solve_weights
from sot_prefect.tasks.ops import retry_policy


def test_retry_policy_is_exponential_with_jitter():
    for t in (embed_dataset, build_costs, solve_weights):
        assert t.retries == 2 and t.retry_jitter_factor == 0.5
        assert t.retry_delay_seconds == [5.0, 10.0]  # 5 s, then 10 s (each stretched by up to 50%)


def test_bad_input_is_not_retried_but_transient_errors_are(prefect_backend):
    attempts = []

    @task(**retry_policy(retries=3, first_delay=0.01))
    def flaky(kind: str):
        attempts.append(kind)
        raise InputError("x.jsonl", "broken") if kind == "bad input" else OSError("disk hiccup")

    @flow
    def run_one(kind: str):
        return flaky(kind, return_state=True)

    for kind, tries in (("bad input", 1), ("transient", 4)):
        attempts.clear()
        run_one(kind, return_state=True)
        assert len(attempts) == tries, kind


def test_cached_results_live_in_the_store_so_another_worker_hits_them(tmp_path, prefect_backend):
    """Two workers with their own Prefect home (own local result storage) share one store: the second
    run is served the ingest, costs and solve results of the first (before: recomputed, the results
    were in the first worker's ~/.prefect/storage)."""
    from sot_prefect.flows.curate import curate_dataset

    home = tmp_path / "store"

    def curate(worker: str) -> dict:
        with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path / worker / "storage"}):
            curate_dataset(home=str(home), out_dir=str(tmp_path / worker / "out"), encoder="testhash", name="shared")
        return json.loads((tmp_path / worker / "out" / "run.json").read_text())

    assert curate("worker-a")["cached_stages"] == []
    assert sorted(curate("worker-b")["cached_stages"]) == ["costs", "ingest", "solve"]
    assert any((home / "prefect-results").iterdir())
    assert not (tmp_path / "worker-b" / "storage").exists() or not any((tmp_path / "worker-b" / "storage").iterdir())


def test_flow_and_task_runs_have_readable_names_and_log_stage_figures(tmp_path, prefect_backend):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, LogFilter, LogFilterFlowRunId

    from sot_prefect.flows.curate import curate_dataset

    state = curate_dataset(home=str(tmp_path / "store"), out_dir=str(tmp_path / "out"), encoder="testhash",
                           name="named", return_state=True)
    version = state.result()["version"]
    expected = ("ingest pool: ", "rows embedded now", "solve (lam", f"published {version}: kept")
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run.id]}))
        # Prefect ships run logs to the server from a background worker in batches, so the last
        # lines can reach it after the flow returns: read until they are there (or 30 s pass).
        deadline = time.monotonic() + 30
        while True:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            text = "\n".join(log.message for log in logs)
            if all(e in text for e in expected) or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert run.name == f"curate-{version}" and version.startswith("named-")
    names = {t.name.rsplit("-", 1)[0] if t.name[-1].isdigit() else t.name for t in tasks}
    assert {"embed-pool", "embed-safe_anchor", "embed-harmful_ref"} <= {t.name for t in tasks}, names
    for line in expected:
        assert line in text, (line, text[-2000:])


@pytest.mark.parametrize("previous, drift, alarm", [
    ([], {"to_anchor": 0.1, "to_harmful": 0.3}, None),
    ([], {"to_anchor": 0.3, "to_harmful": 0.1}, "nearer the harmful reference"),
    ([{"drift_to_anchor": 0.1, "drift_to_harmful": 0.4}] * 3, {"to_anchor": 0.1, "to_harmful": 0.25},
     "distance to the harmful reference fell"),
    ([{"drift_to_anchor": 0.1, "drift_to_harmful": 0.4}] * 3, {"to_anchor": 0.14, "to_harmful": 0.4},
     "distance to the safe anchor rose"),
    ([{"drift_to_anchor": 0.1, "drift_to_harmful": 0.4}] * 3, {"to_anchor": 0.12, "to_harmful": 0.35}, None),
])
def test_drift_alarm(previous, drift, alarm):
    reason = drift_alarm(previous, drift, 0.25)
    assert (reason is None) if alarm is None else (alarm in reason), reason
