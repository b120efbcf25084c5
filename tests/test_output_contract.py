"""The output contract of `sot curate`, pinned: weights.parquet's schema, run.json's keys and
types, curated.jsonl against the pool, and report.md's numbers recomputed from weights.parquet
and the labels. One real curation (CLI, real encoder, real store in tmp_path) of a 160-row
slice of the demo pool with 25 harmful rows; plus `auroc` against a brute-force pairwise count.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DEMO, assert_curated_rows, brute_force_auroc, cells, read_jsonl, write_jsonl
from sot_core.curate.quality import auroc
from sot_prefect.flows.cli import main

KEEP = 0.75
N_BENIGN, N_HARMFUL = 135, 25


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_backend):
    """Curate a labelled slice of the demo pool through the CLI; returns (out, pool rows, labels)."""
    tmp = tmp_path_factory.mktemp("contract")
    demo = read_jsonl(DEMO / "pool.jsonl")
    benign = [r for r in demo if not r["id"].startswith("pyrit")][:N_BENIGN]
    harmful = [r for r in demo if r["id"].startswith("pyrit")][:N_HARMFUL]
    pool = [row for pair in zip(benign[::5], harmful) for row in pair] + [r for r in benign if r not in benign[::5]]
    write_jsonl(pool, tmp / "pool.jsonl")
    labels = {r["id"]: r["id"].startswith("pyrit") for r in pool}
    (tmp / "labels.csv").write_text("id,label\n" + "".join(f"{i},{int(v)}\n" for i, v in labels.items()))
    out = tmp / "out"
    assert main(["curate", "--home", str(tmp / "home"), "--out-dir", str(out), "--pool", str(tmp / "pool.jsonl"),
                 "--safe-anchor", str(DEMO / "safe_anchor.jsonl"), "--harmful-ref", str(DEMO / "harmful_ref.jsonl"),
                 "--labels", str(tmp / "labels.csv"), "--keep", str(KEEP)]) == 0
    return out, pool, labels


# ---------------------------------------------------------------- weights.parquet

COLUMNS = {"id": pa.string(), "weight": pa.float64(), "selected": pa.bool_(), "score": pa.float64(),
           "train_weight": pa.float64(), "safety_score": pa.float64(), "refusal": pa.bool_(),
           "budget_score": pa.float64(), "harmful_like": pa.bool_()}  # the last two: with the budget on


def test_weights_parquet_schema_and_values(run):
    out, pool, _ = run
    table = pq.read_table(out / "weights.parquet")
    assert {name: table.schema.field(name).type for name in table.schema.names} == COLUMNS
    assert table.schema.names[:5] == ["id", "weight", "selected", "score", "train_weight"]
    assert table.column("id").to_pylist() == [r["id"] for r in pool]  # pool order, every row once
    col = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.schema.names}
    w, sel, tw = col["weight"], col["selected"], col["train_weight"]
    assert abs(w.sum() - 1) < 1e-9 and (w > 0).all()
    cap = round(KEEP * len(pool))
    assert 0.5 * cap < sel.sum() <= cap
    assert not (sel & col["harmful_like"]).any()  # the budget's dropped rows are never kept
    # among the rows the selection ranks by weight (eligible, not refusals), the kept ones are
    # the heaviest when the cap binds, and all of them are kept when it does not
    ranked = ~col["harmful_like"] & ~col["refusal"]
    if sel.sum() == cap:
        assert w[ranked & sel].min() >= w[ranked & ~sel].max()
    else:
        assert sel[ranked].all()
    assert (tw[~sel] == 0).all() and tw[sel].min() >= 0.2 - 1e-12 and tw[sel].max() <= 5 + 1e-12
    assert tw[sel].mean() == pytest.approx(1.0, abs=1e-9)
    # the refusal-aware score: refusals lowered to at most the median score, others unchanged
    med = np.median(col["score"])
    np.testing.assert_array_equal(col["safety_score"], np.where(col["refusal"], np.minimum(col["score"], med),
                                                                col["score"]))


# ---------------------------------------------------------------- curated.jsonl

def test_curated_rows_are_the_pool_rows_of_the_selected_ids(run):
    out, pool, _ = run
    for row, _ in assert_curated_rows(out, pool):
        assert set(row) == {"id", "prompt", "response", "source", "weight"}
        assert isinstance(row["source"], str) and row["source"]


# ---------------------------------------------------------------- run.json

RUN_KEYS = {
    "version": str, "parent_version": (str, type(None)), "code_version": str, "config": dict, "inputs": dict,
    "encoder_id": str, "store": str, "counts": dict, "stage_seconds": dict, "cached_stages": list,
    "solver": dict, "quality": dict, "refusals": dict, "budget": dict, "warnings": list, "top_flagged": list, "review": dict,
}


def test_run_json_keys_and_types(run):
    out, pool, _ = run
    info = json.loads((out / "run.json").read_text())
    assert set(RUN_KEYS) <= set(info), set(RUN_KEYS) - set(info)
    for key, kind in RUN_KEYS.items():
        assert isinstance(info[key], kind), (key, type(info[key]))
    assert info["counts"]["pool"] == len(pool) and info["counts"]["selected"] == round(KEEP * len(pool))
    assert info["config"]["keep"] == KEEP
    assert set(info["inputs"]) >= {"pool", "safe_anchor", "harmful_ref"}
    assert all(isinstance(v, float) and v >= 0 for v in info["stage_seconds"].values())
    assert {"ingest", "embed", "costs", "solve", "select"} <= set(info["stage_seconds"])
    solver = info["solver"]
    for key, kind in {"outer_iterations": int, "sinkhorn_iterations": int, "objective_trace": list,
                      "converged": bool, "stop_reason": str, "ess": float, "tau": float}.items():
        assert isinstance(solver[key], kind), (key, solver[key])
    assert solver["converged"] and solver["stop_reason"] == "converged"
    assert len(solver["objective_trace"]) == solver["outer_iterations"] or solver["objective_trace"]
    assert set(info["quality"]) == {"auroc", "auroc_ot_score", "harmful_total", "harmful_kept",
                                    "harmful_kept_fraction", "unlabelled_rows"}
    table = pq.read_table(out / "weights.parquet").to_pydict()
    label = [pool_label for pool_label in (r["id"].startswith("pyrit") for r in pool)]
    assert info["quality"]["auroc"] == pytest.approx(brute_force_auroc(table["safety_score"], label), abs=1e-12)
    assert info["quality"]["auroc_ot_score"] == pytest.approx(brute_force_auroc(table["score"], label), abs=1e-12)


# ---------------------------------------------------------------- report.md

def test_report_numbers_are_recomputed_from_the_outputs(run):
    """Every number in report.md's counts, label table and top-flagged table equals the value
    recomputed from weights.parquet and the labels file (AUROC by a pairwise count)."""
    out, pool, labels = run
    report = (out / "report.md").read_text()
    table = pq.read_table(out / "weights.parquet").to_pydict()
    sel, score = np.array(table["selected"]), np.array(table["score"])
    safety = np.array(table["safety_score"])
    label = np.array([labels[i] for i in table["id"]])

    kept = re.search(r"Kept \*\*(\d+) of (\d+)\*\* pool rows \(keep=([\d.]+)", report)
    assert kept and (int(kept[1]), int(kept[2]), float(kept[3])) == (sel.sum(), len(pool), KEEP)

    [[total, n_kept, fraction, auc]] = cells(report, "## Against the labels")
    assert int(total) == label.sum() == N_HARMFUL
    assert int(n_kept) == (sel & label).sum()
    assert fraction == f"{(sel & label).sum() / label.sum():.1%}"
    assert auc == f"{brute_force_auroc(safety, label):.3f}"  # the score the selection acts on
    assert float(auc) > 0.9  # the slice is easy: harmful rows score higher

    top = cells(report, "## Most harmful-like rows")
    order = np.argsort(-score, kind="stable")[:10]
    assert [r[0] for r in top] == [table["id"][i] for i in order]
    assert [r[1] for r in top] == [f"{score[i]:.4f}" for i in order]

    info = json.loads((out / "run.json").read_text())
    stages = cells(report, "## Time per stage (s)")
    assert [(r[0], r[1]) for r in stages] == [(k, f"{v:.2f}") for k, v in info["stage_seconds"].items()]


# ---------------------------------------------------------------- AUROC

@pytest.mark.parametrize("score,label,expected", [
    ([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1], 1.0),
    ([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1], 0.0),
    ([1, 1, 1, 1], [0, 1, 0, 1], 0.5),  # all tied
    ([0, 1, 1, 2], [0, 1, 0, 1], 0.875),  # one tied pair: 3.5 of 4 pairs
    ([1, 2, 3], [1, 1, 1], float("nan")),  # one class empty
])
def test_auroc_known_values(score, label, expected):
    got = auroc(np.array(score, float), np.array(label, bool))
    assert (np.isnan(got) and np.isnan(expected)) or got == pytest.approx(expected, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=40))
def test_auroc_equals_a_pairwise_count_with_ties(pairs):
    """Integer scores in 0..5 make ties common; the rank formula must equal the pair count."""
    score = np.array([p[0] for p in pairs], float)
    label = np.array([p[1] for p in pairs], bool)
    got, want = auroc(score, label), brute_force_auroc(score, label)
    assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want, abs=1e-12)
