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

from conftest import DEMO, assert_curated_rows, brute_force_auroc, cells, read_jsonl, write_jsonl
from sot_core.config import CurateConfig
from sot_core.curate.pipeline import ingest
from sot_core.curate.select import TRAIN_WEIGHT_RANGE, publish
from sot_core.data.loaders import load_rows
from sot_core.data.store import Store

KEEP = 0.6
REFUSAL = "I'm sorry, but I can't help with that."
SOLVER = {"outer_iterations": 3, "converged": True, "stop_reason": "converged", "objective_trace": [1.0]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(tmp, store, pool id, solve folder, pool rows, weights, score, labels) of the test pool."""
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
    return tmp, store, pool_id, solve, pool, weights, score, labels


@pytest.fixture(scope="module")
def published(inputs):
    """Two publishes of one pool; returns (first out dir, second summary, pool, weights, score, labels)."""
    tmp, store, pool_id, solve, pool, weights, score, labels = inputs
    config = CurateConfig(keep=KEEP, harmful_recall=0.0)
    run_info = {"stage_seconds": {"ingest": 0.5, "solve": 1.25}, "solver": SOLVER, "cached_stages": ["embed"],
                "embedded_now": {"pool": 0}}
    # what a publish killed earlier left: its temp file (a dead writer's pid) is swept, but only at
    # the top of the output folder
    dead = f".weights.parquet.{2 ** 22 + 7}-{'0' * 32}.tmp"
    (tmp / "out" / "sub").mkdir(parents=True)
    for leftover in (tmp / "out" / dead, tmp / "out" / "sub" / dead):
        leftover.write_text("partial")
    publish(store, pool_id, str(solve), config, tmp / "out", run_info, labels=labels)
    # the second: library defaults (harmful_recall 0.95) but no budget stage, labels for all but two rows
    partial = {i: v for i, v in labels.items() if i not in (pool[0]["id"], pool[1]["id"])}
    second = publish(store, pool_id, str(solve), CurateConfig(keep=KEEP), tmp / "out2", run_info, labels=partial)
    return tmp / "out", second, pool, weights, score, labels


def expected_selection(weights: np.ndarray, refusal: np.ndarray, eligible: np.ndarray | None = None) -> np.ndarray:
    """Refusals first, then the heaviest rows (earlier row on ties), round(KEEP * n) in all, only
    `eligible` rows."""
    eligible = np.ones(len(weights), bool) if eligible is None else eligible
    n_keep = min(round(KEEP * len(weights)), int(eligible.sum()))
    order = sorted(np.flatnonzero(eligible), key=lambda i: (not refusal[i], -weights[i], i))
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
    assert not list(out.glob(".*.tmp")) and len(list((out / "sub").glob(".*.tmp"))) == 1
    assert all(row["source"] == "pool" for row, _ in assert_curated_rows(out, pool))


def test_run_json_figures_are_recomputed(published):
    out, second, pool, weights, score, labels = published
    info = json.loads((out / "run.json").read_text())
    table = pq.read_table(out / "weights.parquet").to_pydict()
    sel, label = np.array(table["selected"]), np.array([labels[r["id"]] for r in pool])
    n = len(pool)
    assert info["counts"] == {"pool": n, "selected": round(KEEP * n), "embedded_now": {"pool": 0}}
    assert info["cached_stages"] == ["embed"] and info["solver"] == SOLVER
    assert set(info["stage_seconds"]) == {"ingest", "solve", "select"} and info["stage_seconds"]["solve"] == 1.25
    assert 0 < info["stage_seconds"]["select"] < 60
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
    assert second["budget"] is None and second["counts"]["selected"] == info["counts"]["selected"]
    assert second["quality"]["unlabelled_rows"] == 2 and second["quality"]["harmful_total"] == 4


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


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def budget_run(inputs, name: str, harmful_rows: np.ndarray) -> tuple:
    """publish with a harmful-row budget cross-fitted on synthetic embeddings: `harmful_rows` of
    the pool lie near the harmful reference, the others near the anchor."""
    from sot_core.curate.budget import CrossFit, apply_recall, cross_fit

    tmp, store, pool_id, solve, pool, weights, score, labels = inputs
    rng = np.random.default_rng(1)
    benign, harm = np.eye(16)[0], np.eye(16)[1]
    near = lambda centre, n: unit(centre + 0.35 * rng.normal(size=(n, 16)))  # noqa: E731
    x = np.where(harmful_rows[:, None], near(harm, len(pool)), near(benign, len(pool)))
    fit = cross_fit(x, near(benign, 20), near(harm, 80), CurateConfig())
    (tmp / name).mkdir()
    fit.save(tmp / name)
    config = CurateConfig(keep=KEEP, harmful_recall=0.95)
    summary = publish(store, pool_id, str(solve), config, tmp / f"out-{name}", {"budget_path": str(tmp / name)})
    return tmp / f"out-{name}", summary, apply_recall(CrossFit.load(tmp / name), 0.95)


def test_budget_drops_harmful_like_rows_but_not_refusals(inputs):
    pool, weights = inputs[4], inputs[5]
    refusal = np.array([r["response"] == REFUSAL for r in pool])
    rows = np.arange(len(pool))
    out, summary, budget = budget_run(inputs, "budget", (rows >= 10) & (rows < 18))
    table = pq.read_table(out / "weights.parquet").to_pydict()
    # the 4 harmful rows and the 4 refusals lie near the reference: most of them score like harm
    assert budget.harmful_like[10:18].sum() >= 6 and (budget.harmful_like & refusal).any()
    assert budget.contamination <= 0.5
    np.testing.assert_array_equal(table["budget_score"], budget.budget_score)
    np.testing.assert_array_equal(table["harmful_like"], budget.harmful_like & ~refusal)  # refusals exempt
    eligible = ~(budget.harmful_like & ~refusal)
    sel = np.array(table["selected"])
    np.testing.assert_array_equal(sel, expected_selection(weights, refusal, eligible))
    # refusals train at the median weight of the other eligible rows, one scale for unclipped rows
    lifted = np.where(refusal, np.maximum(weights, np.median(weights[eligible & ~refusal])), weights)
    tw = np.array(table["train_weight"])
    inside = sel & (tw > 0.2 + 1e-9) & (tw < 5 - 1e-9)
    np.testing.assert_allclose(tw[inside] / lifted[inside], (tw[inside] / lifted[inside])[0], rtol=1e-9)
    b = summary["budget"]
    assert b["applied"] is True and b["refusals_exempt"] == int((budget.harmful_like & refusal).sum())
    assert b["harmful_like_rows"] == int(eligible.size - eligible.sum())
    report = (out / "report.md").read_text()
    [row] = cells(report, "## Harmful-row budget")
    assert row[:3] == [f"{b['estimated_contamination']:.1%}", str(b["harmful_like_rows"]), f"{b['threshold']:.3f}"]
    assert "not applied" not in report and summary["warnings"] == []


def test_budget_is_not_applied_when_most_of_the_pool_scores_like_harm(inputs):
    pool, weights = inputs[4], inputs[5]
    refusal = np.array([r["response"] == REFUSAL for r in pool])
    out, summary, budget = budget_run(inputs, "mostly", np.arange(len(pool)) >= 6)
    assert budget.contamination > 0.5
    table = pq.read_table(out / "weights.parquet").to_pydict()
    np.testing.assert_array_equal(table["selected"], expected_selection(weights, refusal))  # top-K alone decides
    assert summary["budget"]["applied"] is False and summary["warnings"]
    assert "the harmful-row budget was **not applied**" in (out / "report.md").read_text()


def test_an_empty_selection_or_foreign_labels_publish_nothing(inputs):
    """Refused before any file is written: keep 0.01 (no row kept), labels naming no pool row."""
    from sot_core.curate.guards import SelectionError
    from sot_core.errors import InputError

    tmp, store, pool_id, solve, *_ = inputs
    with pytest.raises(SelectionError, match="keeps 0 of 36 rows"):
        publish(store, pool_id, str(solve), CurateConfig(keep=0.01, harmful_recall=0.0), tmp / "none", {})
    with pytest.raises(InputError, match="no id of the labels file matches"):
        publish(store, pool_id, str(solve), CurateConfig(keep=KEEP, harmful_recall=0.0), tmp / "foreign", {},
                labels={"other-pool-1": True})
    assert not (tmp / "none" / "weights.parquet").exists() and not (tmp / "foreign" / "weights.parquet").exists()


def markdown_blocks(text: str) -> list[tuple[str, object]]:
    """The top-level blocks a CommonMark parser with tables (markdown-it) reads in `text`:
    ("h1"/"h2", title), ("p", text), ("blockquote", text) or ("table", number of body rows)."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    blocks = []
    for i, t in enumerate(tokens):
        if t.level != 0 or t.nesting != 1:
            continue
        end = next(j for j in range(i + 1, len(tokens)) if tokens[j].level == 0 and tokens[j].nesting == -1)
        inline = " / ".join(x.content for x in tokens[i:end] if x.type == "inline")
        if t.type == "table_open":
            blocks.append(("table", sum(x.type == "tr_open" for x in tokens[i:end]) - 1))
        else:
            blocks.append((t.tag if t.type == "heading_open" else t.type.removesuffix("_open").replace(
                "paragraph", "p"), inline))
    return blocks


def test_report_markdown_structure_as_a_parser_reads_it():
    """Every section of report.md is a heading, each table a table with its rows, and the warning
    that the budget was not applied a quote of its own after the composition warnings."""
    from sot_core.curate.report import render_report

    budget = {"applied": False, "folds": 5, "harmful_recall": 0.95, "estimated_contamination": 0.6,
              "harmful_like_rows": 3, "threshold": 0.05, "fold_score_thresholds": [0.1, 0.2],
              "held_out_recall": [1.0, 0.95], "anchor_harmful_share": 0.0}
    summary = {"version": "v1", "counts": {"selected": 3, "pool": 5, "embedded_now": {"pool": 5}},
               "config": {"keep": 0.6, "harmful_recall": 0.95, "lam": 1, "eps": 0.1, "mode": "push-pull",
                          "encoder": "minilm"},
               "warnings": ["most of the pool scores like harm", "the anchor looks harmful"], "budget": budget,
               "quality": {"harmful_total": 2, "harmful_kept": 1, "harmful_kept_fraction": 0.5, "auroc": 0.75},
               "refusals": {"pool": 2, "kept": 1, "labels_used": False},
               "stage_seconds": {"embed": 1.0, "solve": 2.0}, "solver": {"converged": True, "objective_trace": [1]},
               "top_flagged": [{"id": "a", "score": 1.0, "prompt": "x | y\nz"}, {"id": "b", "score": 0.5, "prompt": "w"}]}
    blocks = markdown_blocks(render_report(summary))
    assert [b for b in blocks if b[0] in ("h1", "h2")] == [
        ("h1", "SOT curation report: v1"), ("h2", "Harmful-row budget"), ("h2", "Against the labels"),
        ("h2", "Refusals in the pool (keyword heuristic)"), ("h2", "Time per stage (s)"), ("h2", "Solver"),
        ("h2", "Most harmful-like rows")]
    assert [b[1] for b in blocks if b[0] == "table"] == [1, 1, 2, 1, 2]  # budget, labels, stages, solver, rows
    quotes = [b[1] for b in blocks if b[0] == "blockquote"]
    assert len(quotes) == 2 and "the anchor looks harmful" in quotes[0] and "not applied" in quotes[1]
    # a summary written before the budget recorded `applied` (or harmful_recall) reads as applied (0)
    del budget["applied"], summary["config"]["harmful_recall"]
    text = render_report(summary)
    assert "not applied" not in text and "harmful_recall=0," in text


def test_curated_jsonl_is_utf8_text_in_pool_order():
    """curated.jsonl keeps non-ASCII text as it is (UTF-8, not \\u escapes) and lists the kept rows
    in pool order with their training weights."""
    import pyarrow as pa

    from sot_core.curate.select import _curated_jsonl

    rows = pa.table({"id": ["a", "b", "c"], "prompt": ["Café?", "plain", "naïve ✓"],
                     "response": ["Oui, café.", "ok", "— fine"], "source": ["s", "s", "t"]})
    text = _curated_jsonl(rows, np.array([True, False, True]), np.array([0.5, 0.0, 1.5]))
    assert "Café?" in text and "naïve ✓" in text and "\\u" not in text
    assert [json.loads(line) for line in text.splitlines()] == [
        {"id": "a", "prompt": "Café?", "response": "Oui, café.", "source": "s", "weight": 0.5},
        {"id": "c", "prompt": "naïve ✓", "response": "— fine", "source": "t", "weight": 1.5}]


def test_a_budget_dropping_exactly_half_the_pool_is_applied_and_named_in_the_error(inputs):
    """MOSTLY = 0.5 is inclusive: a budget that finds exactly half the pool harmful-like (a
    hand-made cross-fit: rows 18-35, no refusal among them) is still applied with a numeric keep,
    and a selection it leaves too small fails with the count of harmful-like rows in its message."""
    from sot_core.curate.budget import CrossFit
    from sot_core.curate.guards import SelectionError

    tmp, store, pool_id, solve, pool, weights, *_ = inputs
    like = np.arange(len(pool)) >= 18
    folder = tmp / "half"
    folder.mkdir()
    CrossFit(like[None, :].astype(float), np.zeros((1, 0)), [np.arange(10.0)], np.zeros(len(pool))).save(folder)
    run_info = {"budget_path": str(folder)}
    summary = publish(store, pool_id, str(solve), CurateConfig(keep=0.5, harmful_recall=0.95), tmp / "out-half",
                      run_info)
    table = pq.read_table(tmp / "out-half" / "weights.parquet").to_pydict()
    assert summary["budget"]["applied"] is True and summary["budget"]["harmful_like_rows"] == 18
    assert table["selected"] == (~like).tolist()  # the 18 eligible rows, although heavier rows were dropped
    assert weights[like].max() > np.sort(weights[~like])[0]
    with pytest.raises(SelectionError, match="18 rows score like harmful reference rows; check the inputs"):
        publish(store, pool_id, str(solve), CurateConfig(keep=0.01, harmful_recall=0.95), tmp / "none-half",
                run_info)
    # harmful_recall 0 turns the budget off even where a budget stage exists: keep alone decides
    off = publish(store, pool_id, str(solve), CurateConfig(keep=0.5, harmful_recall=0.0), tmp / "out-off", run_info)
    assert off["budget"] is None and off["counts"]["selected"] == 18


def expected_review(selected, protected, score, budget_score=None, rows=50) -> list[int]:
    """Brute force: kept, unprotected rows sorted by (budget score, score), both descending."""
    cand = [i for i in range(len(score)) if selected[i] and not protected[i]]
    key = (lambda i: (-score[i],)) if budget_score is None else (lambda i: (-budget_score[i], -score[i]))
    return sorted(cand, key=lambda i: (*key(i), i))[:rows]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_budget", [True, False])
def test_review_order_is_the_kept_rows_by_budget_score_then_score(seed, with_budget):
    """Against a sort by hand, with ties in the budget score (it is a share of held-out rows)."""
    from sot_core.curate.review import review_order

    rng = np.random.default_rng(seed)
    n = 200
    selected, protected = rng.random(n) < 0.7, rng.random(n) < 0.1
    score = rng.normal(size=n)
    u = rng.integers(0, 8, size=n) / 8 if with_budget else None  # few levels: many ties
    for rows in (50, 5, 1000):
        got = review_order(selected, protected, score, u, rows=rows).tolist()
        assert got == expected_review(selected, protected, score, u, rows)
        assert len(got) == min(rows, int((selected & ~protected).sum()))


def test_review_jsonl_lists_the_kept_rows_most_harmful_like_first(inputs):
    """Through publish with a budget: review.jsonl holds kept non-refusal rows in review order, each
    with the pool row and the scores weights.parquet holds; run.json and report.md say the same."""
    pool = inputs[4]
    rows = np.arange(len(pool))
    out, summary, budget = budget_run(inputs, "review", (rows >= 10) & (rows < 18))
    table = pq.read_table(out / "weights.parquet").to_pydict()
    sel, refusal = np.array(table["selected"]), np.array(table["refusal"])
    review = read_jsonl(out / "review.jsonl")
    order = expected_review(sel, refusal, np.array(table["score"]), np.array(table["budget_score"]))
    assert [r["id"] for r in review] == [pool[i]["id"] for i in order] and len(review) == min(50, (sel & ~refusal).sum())
    for rank, (r, i) in enumerate(zip(review, order), start=1):
        assert r["rank"] == rank and (r["prompt"], r["response"]) == (pool[i]["prompt"], pool[i]["response"])
        assert (r["score"], r["budget_score"], r["weight"]) == (table["score"][i], table["budget_score"][i],
                                                               table["train_weight"][i])
        assert r["weight"] > 0  # kept rows only
    assert summary["review"]["rows"] == len(review) and summary["review"]["ranked_by"] == "budget_score, then score"
    assert [p["id"] for p in summary["review"]["preview"]] == [r["id"] for r in review[:10]]
    report = (out / "report.md").read_text()
    shown = cells(report, "## Kept rows to review first")
    assert [c[:4] for c in shown] == [[str(r["rank"]), r["id"], f"{r['budget_score']:.3f}", f"{r['score']:.4f}"]
                                      for r in review[:10]]


def test_review_without_a_budget_ranks_by_score(published):
    out, _, pool, weights, score, labels = published
    table = pq.read_table(out / "weights.parquet").to_pydict()
    review = read_jsonl(out / "review.jsonl")
    order = expected_review(np.array(table["selected"]), np.array(table["refusal"]), score)
    assert [r["id"] for r in review] == [pool[i]["id"] for i in order] and "budget_score" not in review[0]
    assert json.loads((out / "run.json").read_text())["review"]["ranked_by"] == "score"


@pytest.mark.parametrize("review_rows", [0, 3])
def test_review_rows_sets_the_queue_length(inputs, review_rows):
    """`review_rows` (``--review-rows``) caps review.jsonl; 0 writes an empty file and the report says why."""
    tmp, store, pool_id, solve = inputs[:4]
    out = tmp / f"out-review-{review_rows}"
    summary = publish(store, pool_id, str(solve), CurateConfig(keep=KEEP, harmful_recall=0.0), out, {},
                      name="reviewrows", review_rows=review_rows)
    text = (out / "review.jsonl").read_text()
    review = read_jsonl(out / "review.jsonl") if text else []
    assert len(review) == review_rows == summary["review"]["rows"] and (text == "") == (review_rows == 0)
    report = (out / "report.md").read_text()
    assert ("`--review-rows 0`" in report) == (review_rows == 0)
