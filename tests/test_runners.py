"""Embedding shards on other task runners: a real local Dask cluster, and Ray when it is installed.

`sot curate` runs as a real process against a real Prefect server (the fault-injection tests'
module server and helpers), with shards of 16 rows, so the 30-row pool is two shards and every
input is its own task. Each runner must end with the in-process run's weights (within 1e-6),
every row embedded once (no shard stored twice), and the per-shard progress in the run's logs.
"""
from __future__ import annotations

import importlib.util

import pytest

from prefect_server import api_client
from test_fault_injection import Sot, api_url, assert_same_result, curate_args, debris, run_json, vectors_stored  # noqa: F401

pytestmark = pytest.mark.slow  # three `sot` processes, two of them starting worker processes
ROWS = 30 + 12 + 12


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, api_url):  # noqa: F811
    root = tmp_path_factory.mktemp("local")
    Sot(root, api_url).ok(*curate_args(root / "home", root / "out"))
    return root / "home", root / "out"


def check_like_local(home, out, local_run) -> None:
    assert_same_result(out, local_run[1])
    assert vectors_stored(home) == (ROWS, ROWS)  # each row stored once
    assert run_json(out)["counts"]["embedded_now"] == {"pool": 30, "safe_anchor": 12, "harmful_ref": 12}
    assert debris(home) == []


def shard_logs(api: str) -> list[str]:
    with api_client(api) as http:
        logs = http.post("/logs/filter", json={"limit": 200}).json()
    return [entry["message"] for entry in logs if "shard" in entry["message"] and "embedded" in entry["message"]]


def test_local_dask_cluster_gives_the_in_process_weights(tmp_path, api_url, local_run):  # noqa: F811
    """`--runner dask`: a local cluster of worker processes, one thread each (one per core here)."""
    pytest.importorskip("prefect_dask", reason="the dask extra is not installed")
    home, out = tmp_path / "home", tmp_path / "out"
    Sot(tmp_path, api_url).ok(*curate_args(home, out, "--runner", "dask"))
    check_like_local(home, out, local_run)
    assert any("pool shard 2/2" in m and "embedded 14 of 14 rows" in m for m in shard_logs(api_url))


def test_dask_scheduler_address_with_two_single_thread_workers(tmp_path, api_url, local_run):  # noqa: F811
    """A Dask cluster started outside sot (two worker processes, one thread each), reached by address;
    a second run on it embeds nothing (every shard is found in the store)."""
    pytest.importorskip("prefect_dask", reason="the dask extra is not installed")
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        home, out = tmp_path / "home", tmp_path / "out"
        sot = Sot(tmp_path, api_url)
        sot.ok(*curate_args(home, out, "--runner", cluster.scheduler_address))
        check_like_local(home, out, local_run)
        sot.ok(*curate_args(home, tmp_path / "again", "--runner", cluster.scheduler_address))
        assert run_json(tmp_path / "again")["counts"]["embedded_now"] == {"pool": 0, "safe_anchor": 0,
                                                                         "harmful_ref": 0}
        assert vectors_stored(home) == (ROWS, ROWS)


@pytest.mark.skipif(importlib.util.find_spec("prefect_ray") is None,
                    reason="prefect-ray is not installed (the ray extra); see docs/scaling.md")
def test_ray_gives_the_in_process_weights(tmp_path, api_url, local_run):  # noqa: F811
    home, out = tmp_path / "home", tmp_path / "out"
    Sot(tmp_path, api_url).ok(*curate_args(home, out, "--runner", "ray"), timeout=900)
    check_like_local(home, out, local_run)
