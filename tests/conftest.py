"""Shared fixtures: a throwaway Prefect backend, the shared data folder, the demo data."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("SOT_SHARED_DATA", REPO.parent / "shared" / "data"))
DEMO = REPO / "data" / "demo"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect's console handler keeps the stream it first saw; pytest closes captured streams
# between tests, so console logging off (run logs still go to the test API).
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


@pytest.fixture(scope="session")
def prefect_backend():
    """A real (temporary, SQLite-backed) Prefect API for flow runs in this test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared datasets not present at {SHARED_DATA}")
    return SHARED_DATA


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
