"""Prefect task-cache semantics of `sot curate`: what a rerun is served from the cache
(`cached_stages` in run.json) and what an edited input or a changed setting invalidates.

The session's real (SQLite) Prefect backend and a real store in tmp_path; the model-free hash
encoder of test_incremental (embedding is not what is tested).
"""
from __future__ import annotations

import json

from conftest import DEMO, read_jsonl, write_jsonl
from sot_prefect.flows.cli import main
from test_incremental import HashEncoder  # noqa: F401 - registers the 'testhash' encoder


def test_cache_hits_and_invalidation_by_edited_inputs_and_settings(tmp_path, prefect_backend):
    rows = read_jsonl(DEMO / "pool.jsonl")[:40]
    pool, anchor = tmp_path / "pool.jsonl", tmp_path / "anchor.jsonl"
    write_jsonl(rows, pool)
    write_jsonl(read_jsonl(DEMO / "safe_anchor.jsonl"), anchor)
    runs = iter(range(100))

    def curate(*extra: str) -> dict:
        out = tmp_path / f"out{next(runs)}"
        assert main(["curate", "--pool", str(pool), "--safe-anchor", str(anchor), "--harmful-ref",
                     str(DEMO / "harmful_ref.jsonl"), "--home", str(tmp_path / "home"), "--out-dir", str(out),
                     "--encoder", "testhash", "--harmful-recall", "0", *extra]) == 0
        return json.loads((out / "run.json").read_text())

    assert curate()["cached_stages"] == []
    assert set(curate()["cached_stages"]) == {"ingest", "costs", "solve"}  # identical rerun: all served
    # a setting of the solve only: ingest and costs served, the solve recomputed
    assert set(curate("--lam", "0.5")["cached_stages"]) == {"ingest", "costs"}
    # one pool row edited in place (same path, same size class): nothing may be served
    rows[7] = {**rows[7], "response": rows[7]["response"] + " (edited)"}
    write_jsonl(rows, pool)
    edited = curate()
    assert edited["cached_stages"] == []
    assert edited["counts"]["embedded_now"]["pool"] == 1  # only the edited row is new to the store
    # the anchor file edited: ingest runs again and so do costs and solve
    anchor_rows = read_jsonl(anchor)
    write_jsonl(anchor_rows[:-1], anchor)
    assert curate()["cached_stages"] == []
    # and back to an input set seen before: served from the cache again
    write_jsonl(anchor_rows, anchor)
    assert set(curate()["cached_stages"]) == {"ingest", "costs", "solve"}
