"""`publish` called directly (no Prefect, no encoder): a real store, a 36-row pool with labelled
harmful rows and whole-response refusals, and solver outputs chosen by the test. Every output
file is checked against values recomputed here from the inputs: which rows are kept (refusals
first, then the heaviest, ties to the earlier row), their training weights, run.json's counts,
quality and refusal figures, report.md's numbers, and the lineage of a second version.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import DEMO, brute_force_auroc, cells, read_jsonl, write_jsonl
from sot_core.config import CurateConfig
from sot_core.curate.pipeline import ingest
from sot_core.curate.select import TRAIN_WEIGHT_RANGE, publish
from sot_core.data.loaders import load_rows
from sot_core.data.store import Store

KEEP = 0.6
REFUSAL = "I'm sorry, but I can't help with that."
SOLVER = {"outer_iterations": 3, "converged": True, "stop_reason": "converged", "objective_trace": [1.0]}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Two publishes of one pool; returns (first out dir, second summary, pool, weights, score, labels)."""
    tmp = tmp_path_factory.mktemp("publish")
    demo = read_jsonl(DEMO / "pool.jsonl")
    benign = [r for r in demo if not r["id"].startswith("pyrit")][:28]
    harmful = [r for r in demo if r["id"].startswith("pyrit")][:8]
    refusals = [{**r, "id": f"refusal-{i}", "response": REFUSAL} for i, r in enumerate(harmful[4:])]
    pool = benign[:10] + harmful[:4] + refusals + benign[10:]
    write_jsonl(pool, tmp / "pool.jsonl")
    store = Store(tmp / "home")
    pool_id = ingest(store, str(tmp / "pool.jsonl"), load_rows(str(tmp / "pool.jsonl")), "pool")["dataset_id"]
    rng = np.random.default_rng(7)
    score = rng.normal(size=len(pool))
    score[10:18] += 2.0  # harmful rows and refusals score high: they share harmful prompts
    score[3] = score[4]  # a tie in weight between two benign rows
    weights = np.exp(-score / 0.2)
    weights /= weights.sum()
    solve = tmp / "solve"
    solve.mkdir()
    np.save(solve / "weights.npy", weights)
    np.save(solve / "score.npy", score)
    labels = {r["id"]: r["id"].startswith("pyrit") for r in pool}
    config = CurateConfig(keep=KEEP, harmful_recall=0.0)
    run_info = {"stage_seconds": {"ingest": 0.5, "solve": 1.25}, "solver": SOLVER, "cached_stages": ["embed"],
                "embedded_now": {"pool": 0}}
    publish(store, pool_id, str(solve), config, tmp / "out", run_info, labels=labels)
    second = publish(store, pool_id, str(solve), config, tmp / "out2", run_info)
    return tmp / "out", second, pool, weights, score, labels


def expected_selection(weights: np.ndarray, refusal: np.ndarray) -> np.ndarray:
    """Refusals first, then the heaviest rows (earlier row on ties), round(KEEP * n) in all."""
    n_keep = round(KEEP * len(weights))
    order = sorted(range(len(weights)), key=lambda i: (not refusal[i], -weights[i], i))
    mask = np.zeros(len(weights), bool)
    mask[order[:n_keep]] = True
    return mask


def test_weights_parquet_is_recomputed_from_the_inputs(published):
    out, _, pool, weights, score, _ = published
    table = pq.read_table(out / "weights.parquet").to_pydict()
    assert table["id"] == [r["id"] for r in pool]
    np.testing.assert_array_equal(table["weight"], weights)
    np.testing.assert_array_equal(table["score"], score)
    refusal = np.array([r["response"] == REFUSAL for r in pool])
    np.testing.assert_array_equal(table["refusal"], refusal)
    sel = np.array(table["selected"])
    np.testing.assert_array_equal(sel, expected_selection(weights, refusal))
    # training weights: refusals count at the median weight of the other rows, then the scale c
    # with mean 1 over the kept rows inside [0.2, 5]
    lifted = np.where(refusal, np.maximum(weights, np.median(weights[~refusal])), weights)
    tw = np.array(table["train_weight"])
    assert (tw[~sel] == 0).all()
    assert tw[sel].mean() == pytest.approx(1.0, abs=1e-9)
    lo, hi = TRAIN_WEIGHT_RANGE
    assert tw[sel].min() >= lo - 1e-12 and tw[sel].max() <= hi + 1e-12
    inside = sel & (tw > lo + 1e-9) & (tw < hi - 1e-9)
    assert inside.sum() >= 3
    ratio = tw[inside] / lifted[inside]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)  # one scale for every unclipped row
    np.testing.assert_array_equal(tw[sel & (lifted * ratio[0] <= lo)], lo)
    med = np.median(score)
    np.testing.assert_array_equal(table["safety_score"], np.where(refusal, np.minimum(score, med), score))


def test_curated_jsonl_holds_the_kept_pool_rows(published):
    out, _, pool, *_ = published
    table = pq.read_table(out / "weights.parquet").to_pylist()
    curated = read_jsonl(out / "curated.jsonl")
    kept = [t for t in table if t["selected"]]
    assert [c["id"] for c in curated] == [t["id"] for t in kept]
    by_id = {r["id"]: r for r in pool}
    for row, t in zip(curated, kept):
        assert (row["prompt"], row["response"]) == (by_id[row["id"]]["prompt"], by_id[row["id"]]["response"])
        assert row["weight"] == t["train_weight"] and row["source"] == "pool"


def test_run_json_figures_are_recomputed(published):
    out, second, pool, weights, score, labels = published
    info = json.loads((out / "run.json").read_text())
    table = pq.read_table(out / "weights.parquet").to_pydict()
    sel, label = np.array(table["selected"]), np.array([labels[r["id"]] for r in pool])
    n = len(pool)
    assert info["counts"] == {"pool": n, "selected": round(KEEP * n), "embedded_now": {"pool": 0}}
    assert info["cached_stages"] == ["embed"] and info["solver"] == SOLVER
    assert set(info["stage_seconds"]) == {"ingest", "solve", "select"} and info["stage_seconds"]["solve"] == 1.25
    q = info["quality"]
    assert (q["harmful_total"], q["harmful_kept"], q["unlabelled_rows"]) == (4, int((sel & label).sum()), 0)
    assert q["harmful_kept_fraction"] == pytest.approx((sel & label).sum() / 4)
    assert q["auroc"] == pytest.approx(brute_force_auroc(table["safety_score"], label), abs=1e-12)
    assert q["auroc_ot_score"] == pytest.approx(brute_force_auroc(score, label), abs=1e-12)
    # refusal phrases: the 4 refusal rows (not labelled harmful), all kept
    assert info["refusals"] == {"pool": 4, "kept": 4, "labels_used": True}
    top = np.argsort(-score, kind="stable")[:10]
    assert [(t["id"], t["score"], t["prompt"]) for t in info["top_flagged"]] == [
        (pool[i]["id"], score[i], pool[i]["prompt"][:160]) for i in top]
    assert info["budget"] is None and info["warnings"] == []
    assert second["parent_version"] == info["version"] and info["parent_version"] is None
    assert second["quality"] is None and second["refusals"]["labels_used"] is False


def test_report_numbers_are_recomputed(published):
    out, _, pool, weights, score, labels = published
    report = (out / "report.md").read_text()
    info = json.loads((out / "run.json").read_text())
    kept = re.search(r"Kept \*\*(\d+) of (\d+)\*\* pool rows \(keep=([\d.]+), harmful_recall=([\d.]+)", report)
    assert kept and kept.groups() == (str(round(KEEP * len(pool))), str(len(pool)), str(KEEP), "0.0")
    q = info["quality"]
    assert cells(report, "## Against the labels") == [[str(q["harmful_total"]), str(q["harmful_kept"]),
                                                      f"{q['harmful_kept_fraction']:.1%}", f"{q['auroc']:.3f}"]]
    assert "4 rows contain a refusal phrase early; **4 kept** (100%)" in report
    assert cells(report, "## Time per stage (s)") == [[k, f"{v:.2f}"] for k, v in info["stage_seconds"].items()]
    assert cells(report, "## Solver") == [[k, str(v)] for k, v in SOLVER.items() if k != "objective_trace"]
    top = cells(report, "## Most harmful-like rows")
    assert [r[:2] for r in top] == [[t["id"], f"{t['score']:.4f}"] for t in info["top_flagged"]]
    assert "Rows embedded in this run (others came from the store's cache): pool 0" in report
