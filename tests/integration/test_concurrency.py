"""Two processes curating into one store at once: they queue on the store's lock or fail with a
clear message, and the catalog stays consistent either way."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sot_core.data.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"


@pytest.mark.slow
def test_two_processes_curating_into_one_store(prefect_server, tmp_path):
    home = tmp_path / "home"
    rows = [json.loads(line) for line in (DEMO / "pool.jsonl").read_text().splitlines()][:120]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "id"}) + "\n" for r in rows))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "sot_prefect.flows.cli", "curate", "--pool", str(pool), "--safe-anchor",
             str(DEMO / "safe_anchor.jsonl"), "--harmful-ref", str(DEMO / "harmful_ref.jsonl"),
             "--home", str(home), "--out", str(tmp_path / f"out{i}"), "--name", "race"],
            cwd=REPO, env=prefect_server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    results = [(p.wait(timeout=500), *p.communicate()) for p in procs]
    for code, out, err in results:
        # Either it completed (it queued on the lock) or it said clearly that the store was busy.
        assert code == 0 or "store is in use by another run" in err, (code, out[-2000:], err[-2000:])
    completed = sum(code == 0 for code, _, _ in results)
    assert completed >= 1
    # The race was real: the two flow runs (state timestamps on the server) overlapped in time.
    runs = [r for r in prefect_server.post("/flow_runs/filter", {"limit": 200})
            if str(tmp_path) in str((r.get("parameters") or {}).get("out_dir", ""))]
    assert len(runs) == 2, [r.get("parameters") for r in runs]
    assert all(r["start_time"] and r["end_time"] for r in runs), [r["state"] for r in runs]
    assert max(r["start_time"] for r in runs) < min(r["end_time"] for r in runs), \
        [(r["start_time"], r["end_time"]) for r in runs]

    store = Store(home)
    hashes = store.get_rows(store.query("SELECT dataset_id FROM datasets WHERE name = 'pool'")[0][0]) \
        .column("content_hash").to_pylist()
    n_distinct = store.query("SELECT count(DISTINCT content_hash) FROM embeddings")[0][0]
    n_total = store.query("SELECT count(*) FROM embeddings")[0][0]
    assert n_total == n_distinct  # no row indexed twice despite the race
    (encoder_id,) = store.query("SELECT DISTINCT encoder_id FROM embeddings")[0]
    assert store.get_embeddings(hashes, encoder_id).shape[0] == len(hashes)
    assert store.query("SELECT count(*) FROM datasets")[0][0] == 3  # each input stored once
    versions = store.query("SELECT version FROM curated_versions WHERE name = 'race'")
    assert len({v for (v,) in versions}) == len(versions) == completed
