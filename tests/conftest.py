"""Shared fixtures: a throwaway Prefect backend, the shared data folder, the demo data."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
# The one place for the public datasets' folder: $SOT_SHARED_DATA, else <checkout>/../shared/data.
# Exported so the library's own lookup (sot_core.eval.eval_sets.shared_data_dir) agrees.
SHARED_DATA = Path(os.environ.setdefault("SOT_SHARED_DATA", str(REPO.parent / "shared" / "data")))
# CI sets SOT_REQUIRE_DATA=1: then missing shared data fails the test instead of skipping it.
REQUIRE_DATA = os.environ.get("SOT_REQUIRE_DATA", "") not in ("", "0")
DEMO = REPO / "data" / "demo"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect's console handler keeps the stream it first saw; pytest closes captured streams
# between tests, so console logging off (run logs still go to the test API).
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


SLOW_TIMEOUT_S = 1800  # the default (pyproject: timeout = 600) is too short for a real fine-tune


def pytest_collection_modifyitems(config, items):
    """Tests marked slow get a longer default timeout unless they set their own. Tests that run flows
    on the session's real Prefect API server (`prefect_backend`) are integration tests: the fast lane
    (`-m "not slow and not integration"`) leaves them out."""
    for item in items:
        if "prefect_backend" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


@pytest.fixture(scope="session", autouse=True)
def throwaway_default_store(tmp_path_factory):
    """A test that names no store gets a throwaway one, never the checkout's ./.sot: SOT_HOME
    points into this session's tmp dir (tests still pass their own --home / home=)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOT_HOME", str(tmp_path_factory.mktemp("default-store")))
        yield


@pytest.fixture(scope="session")
def prefect_backend():
    """A real (temporary, SQLite-backed) Prefect API for flow runs in this test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def require_shared(relative: str = "") -> Path:
    """`SHARED_DATA / relative`, or skip the test when it is missing (fail under SOT_REQUIRE_DATA=1)."""
    path = SHARED_DATA / relative
    if not path.exists():
        message = f"shared data not found: {path} (set SOT_SHARED_DATA to the datasets folder)"
        if REQUIRE_DATA:
            pytest.fail(message + "; SOT_REQUIRE_DATA is set, so this is a failure, not a skip", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture
def shared_data() -> Path:
    """The shared datasets folder (see `require_shared`)."""
    return require_shared()


@pytest.fixture
def small_refusal_judge(monkeypatch, shared_data):
    """The learned refusal judge trained on a seeded 240-row sample of its labelled data instead of
    all 2,419 rows (about 4 minutes of MiniLM on 2 cores, per store): for tests of where evaluation
    results and the judge go, not of the judge's accuracy (test_evaluate checks that on 700 rows).
    The judge's cache key covers its rows, so this judge never stands in for the full one."""
    import random

    from sot_core.eval import judges

    everything = judges.refusal_training_data

    def sample(data):
        rows = everything(data)
        return random.Random(0).sample(rows, min(240, len(rows)))

    monkeypatch.setattr(judges, "refusal_training_data", sample)


def assert_curated_rows(out: Path, pool: list[dict]) -> list[tuple[dict, dict]]:
    """curated.jsonl holds exactly the selected rows of weights.parquet, in order, each with its pool
    row's prompt and response and its training weight; returns (curated row, weights row) pairs."""
    import pyarrow.parquet as pq

    kept = [t for t in pq.read_table(out / "weights.parquet").to_pylist() if t["selected"]]
    curated = read_jsonl(out / "curated.jsonl")
    assert [c["id"] for c in curated] == [t["id"] for t in kept]
    by_id = {r["id"]: r for r in pool}
    for row, t in zip(curated, kept):
        assert (row["prompt"], row["response"]) == (by_id[row["id"]]["prompt"], by_id[row["id"]]["response"])
        assert row["weight"] == t["train_weight"]
    return list(zip(curated, kept))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def refusal_rows() -> tuple[list[dict], list[dict], list[dict]]:
    """(benign, harmful, refusal) rows of the bundled demo data: the demo pool split by its PyRIT
    (harmful) ids, and the bundled PyRIT refusals, for tests of the refusal anchor."""
    demo = read_jsonl(DEMO / "pool.jsonl")
    return ([r for r in demo if not r["id"].startswith("pyrit")], [r for r in demo if r["id"].startswith("pyrit")],
            read_jsonl(DEMO.parent / "refusals" / "pyrit_refusals.jsonl"))


def brute_force_auroc(score, label) -> float:
    """P(score of a harmful row > score of a benign row) + 0.5 P(tie), over every pair."""
    pos, neg = np.asarray(score)[np.asarray(label, bool)], np.asarray(score)[~np.asarray(label, bool)]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    wins = sum(float(p > q) + 0.5 * float(p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def cells(report: str, heading: str) -> list[list[str]]:
    """The body rows of the first table under `heading`, as lists of cell strings."""
    lines = report.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines[start + 2:end]]
