"""Selection and publishing: which rows are kept, their training weights, and the run's output files.

Order of the selection (`publish`): rows whose whole response refuses (`refusal_rows`, when
``refusal_guard``) are protected; the harmful-row budget (`sot_core.curate.budget`) drops the
other harmful-like rows; among the rest the top rows by OT weight are kept, all of them with
``keep='auto'``, at most round(keep * n) with a numeric keep; fewer than `guards.MIN_SELECTED`
rows is an error. The OT weights themselves are not changed by the guard or the budget.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from sot_core.config import CODE_VERSION, REVIEW_ROWS, CurateConfig, config_hash
from sot_core.curate.export import FILE_NAME as RECORDS_FILE, curated_records_jsonl
from sot_core.curate.guards import MOSTLY, check_labels_match, check_selection, composition_warnings
from sot_core.curate.quality import auroc, harmful_kept
from sot_core.curate.report import render_report
from sot_core.curate.review import review_jsonl, review_order, review_summary
from sot_core.data.names import check_name
from sot_core.data.store import Store
from sot_core.failpoints import failpoint
from sot_core.io import atomic_write_table, atomic_write_text, sweep_temp
from sot_core.refusals import keyword_refusal, whole_response_refusal

if TYPE_CHECKING:  # the budget stage is imported where it is used (`_budget`)
    from sot_core.curate.budget import Budget


def select_top(weights: np.ndarray, keep: float) -> np.ndarray:
    """Boolean mask of the round(keep * n) rows with the largest weights (ties: earlier row wins)."""
    n_keep = int(round(keep * len(weights)))
    order = np.argsort(-weights, kind="stable")
    mask = np.zeros(len(weights), dtype=bool)
    mask[order[:n_keep]] = True
    return mask


def label_groups(responses: list[str], min_group: int = 20) -> np.ndarray:
    """Group id per row for label-stratified selection: rows whose (normalised) response is
    shared by at least `min_group` rows form a label group (classification tasks: the label);
    every other row gets -1 (free-form answers, where harmful rows live)."""
    keys = [r.strip().lower() for r in responses]
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    ids = {k: g for g, k in enumerate(sorted(k for k, c in counts.items() if c >= min_group))}
    return np.array([ids.get(k, -1) for k in keys], dtype=np.int64)


def select_stratified(weights: np.ndarray, keep: float, groups: np.ndarray) -> np.ndarray:
    """Top-K by weight that keeps the label balance of the label groups.

    The global top-K decides how many label-group rows survive in total (q = kept / total over
    rows with group >= 0) and which free-form rows (group -1) survive; each label group then
    keeps its own top round(q * size) rows. Curation thus still removes harmful free-form rows,
    but cannot shift a classification task's label distribution (see the SST-2 safety
    benchmark in benchmarks/RESULTS.md for why that matters).
    """
    base = select_top(weights, keep)
    labelled = groups >= 0
    if not labelled.any():
        return base
    q = base[labelled].mean()
    mask = base & ~labelled
    for g in np.unique(groups[labelled]):
        idx = np.flatnonzero(groups == g)
        top = idx[np.argsort(-weights[idx], kind="stable")[: int(round(q * len(idx)))]]
        mask[top] = True
    return mask


def count_refusals(responses: list[str], selected: np.ndarray, harmful: np.ndarray | None = None) -> dict:
    """Rows whose response contains a refusal phrase early (`sot_core.refusals.keyword_refusal`), and how
    many were kept. Refusals to harmful prompts are wanted data that curation tends to drop, and
    this count needs no labels. The heuristic also flags partial compliances that open with an
    apology, so rows labelled harmful (when `harmful` is given) are left out of the count."""
    refusal = np.array([keyword_refusal(r) for r in responses], dtype=bool)
    if harmful is not None:
        refusal &= ~harmful
    return {"pool": int(refusal.sum()), "kept": int((refusal & selected).sum()), "labels_used": harmful is not None}


# Range of the training weights (mean 1): no row counts less than a fifth or more than five times.
TRAIN_WEIGHT_RANGE = (0.2, 5.0)


def training_weights(weights: np.ndarray, scheme: str) -> np.ndarray:
    """Per-sample loss weights of the kept rows, mean 1.

    The paper uses exp(w_i) renormalised, which is nearly uniform for w on the simplex. We use
    t_i = clip(c w_i, 0.2, 5) with the scale c chosen so that mean(t) = 1: OT's preference shows
    (rows inside the range keep their weight ratios), no row leaves [0.2, 5], and a few rows
    cannot dominate the loss. `uniform` turns weighting off.
    """
    if scheme == "uniform" or len(weights) == 0:
        return np.ones(len(weights))
    lo, hi = TRAIN_WEIGHT_RANGE
    w = np.asarray(weights, dtype=np.float64)
    if not w.any():
        return np.ones(len(w))
    # mean(clip(c w)) grows with c, from lo (c = 0) to hi (c large): bisect on log c.
    low, high = np.log(lo / w.max()), np.log(hi / w[w > 0].min())
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if np.clip(np.exp(mid) * w, lo, hi).mean() < 1.0 else (low, mid)
    return np.clip(np.exp(0.5 * (low + high)) * w, lo, hi)


def publish(store: Store, pool_id: str, solve_path: str, config: CurateConfig, out_dir: str | Path,
            run_info: dict, labels: dict[str, bool] | None = None, name: str = "default",
            review_rows: int = REVIEW_ROWS) -> dict:
    """Write weights.parquet, curated.jsonl, review.jsonl, report.md and run.json, and record a curated version.

    Parameters
    ----------
    solve_path : str
        Folder of the solve stage (``weights.npy``, ``score.npy``) for the pool `pool_id`.
    run_info : dict
        What earlier stages report: ``stage_seconds``, ``inputs``, ``encoder_id``,
        ``embedded_now``, ``cached_stages``, ``solver``, ``run_id`` (all optional).
    labels : dict, optional
        {row id: is harmful}; adds the "against the labels" quality figures.
    name : str
        Name of the curated dataset; each call adds a version of it, whose parent is the
        latest version before it. A plain name (`sot_core.data.names.check_name`): anything
        else raises `OptionError` before a file is written.
    review_rows : int
        Kept rows listed in ``review.jsonl`` (`sot_core.curate.review`); 0 writes an empty file.

    Returns
    -------
    dict
        The run summary written to ``run.json``.
    """
    start = time.perf_counter()
    check_name(name)  # it becomes the version's folder name: refused before anything is written
    out_dir = Path(out_dir)
    sweep_temp(out_dir, recursive=False)  # what a killed publish left in this folder
    weights, score = _load_solve(store, Path(solve_path))
    rows = store.get_rows(pool_id)
    ids, prompts, responses = (rows.column(c).to_pylist() for c in ("id", "prompt", "response"))
    sel = decide_selection(store, config, run_info, weights, responses)  # checked before any file is written
    if labels is not None:
        check_labels_match(labels, ids)
    _write_weights(out_dir / "weights.parquet", ids, weights, score, sel)
    curated = _curated_jsonl(rows, sel.selected, sel.train_weight)
    atomic_write_text(curated, out_dir / "curated.jsonl")
    records_id = run_info.get("inputs", {}).get("pool", {}).get("records_id")
    records, missing_records = curated_records_jsonl(rows, store.get_records(records_id) if records_id else None,
                                                     sel.selected, sel.train_weight)
    if records is not None:
        atomic_write_text(records, out_dir / RECORDS_FILE)
    else:  # no stale copy from an earlier run in this folder
        (out_dir / RECORDS_FILE).unlink(missing_ok=True)
    review = _write_review(out_dir / "review.jsonl", ids, prompts, responses, rows.column("source").to_pylist(), score,
                           sel, review_rows)
    quality, label = _label_quality(labels, ids, score, sel)
    failpoint("publish.before_record")
    # The random part keeps two identical runs in the same second apart.
    version = f"{name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    files = {"curated.jsonl": curated, **({RECORDS_FILE: records} if records is not None else {})}
    parent = _record_version(store, version, files, config, run_info, pool_id, name, len(ids),
                             int(sel.selected.sum()))
    failpoint("publish.after_record")
    summary = {
        "version": version,
        "parent_version": parent,
        "code_version": CODE_VERSION,
        "config": config.to_dict(),
        "inputs": run_info.get("inputs", {}),
        "encoder_id": run_info.get("encoder_id"),  # the exact embedding: model, view, weights
        "store": str(store.home.resolve()),
        "counts": {"pool": len(ids), "selected": int(sel.selected.sum()),
                   "embedded_now": run_info.get("embedded_now", {})},
        "stage_seconds": {**run_info.get("stage_seconds", {}), "select": time.perf_counter() - start},
        "cached_stages": run_info.get("cached_stages", []),
        "solver": run_info.get("solver", {}),
        "quality": quality,
        **_selection_summary(sel, ids, prompts, responses, score, label, run_info.get("pool_outside_anchor")),
        "review": review,
        "curated_records": {"file": RECORDS_FILE if records is not None else None,
                            "kept_rows_without_record": missing_records},
    }
    atomic_write_text(json.dumps(summary, indent=2, default=float), out_dir / "run.json")
    atomic_write_text(render_report(summary), out_dir / "report.md")
    return summary


@dataclass
class Selection:
    """What `decide_selection` decided for a pool, row by row, and the budget behind it."""

    selected: np.ndarray       # kept rows (mask)
    train_weight: np.ndarray   # per-row training weight, 0 for dropped rows
    protected: np.ndarray      # refusal rows: ranked first, never dropped by the budget
    budget: Budget | None      # the harmful-row budget (None when off)
    applied: bool              # whether the budget decided which rows may be kept


def decide_selection(store: Store, config: CurateConfig, run_info: dict, weights: np.ndarray,
                     responses: list[str]) -> Selection:
    """The kept rows and their training weights, in the order the module docstring gives.

    Raises `SelectionError` (`guards.check_selection`) when too few rows would be kept.
    """
    n = len(responses)
    budget = _budget(store, config, run_info, n)
    protected = refusal_rows(responses) if config.refusal_guard else np.zeros(n, dtype=bool)
    if budget is not None:  # refusals are wanted data, not contamination
        budget.refusals_exempt = int((budget.harmful_like & protected).sum())
        budget.harmful_like = budget.harmful_like & ~protected
    # A pool that mostly scores like harm (or that the scores cannot tell from it) makes the budget
    # unreliable: with a numeric keep the top-K alone decides, and the report says so.
    applied = budget is not None and (config.keep == "auto" or budget.contamination <= MOSTLY)
    eligible = ~budget.harmful_like if applied else None
    selected, train_w = _selection(weights, responses, config, eligible, protected)
    check_selection(int(selected.sum()), n, config.keep,
                    "" if budget is None or budget.harmful_like.mean() < 0.5 else
                    f"{int(budget.harmful_like.sum())} rows score like harmful reference rows; check the inputs")
    return Selection(selected, train_w, protected, budget, applied)


def _write_weights(path: Path, ids: list[str], weights: np.ndarray, score: np.ndarray, sel: Selection) -> None:
    """``weights.parquet``: every pool row's OT weight and score, and what the selection made of it."""
    budget = sel.budget
    atomic_write_table(
        pa.table({"id": ids, "weight": weights, "selected": sel.selected, "score": score,
                  "train_weight": sel.train_weight, "safety_score": refusal_aware_score(score, sel.protected),
                  "refusal": sel.protected,
                  **({} if budget is None else {"budget_score": budget.budget_score,
                                                "harmful_like": budget.harmful_like})}),
        path,
    )


def _write_review(path: Path, ids: list, prompts: list, responses: list, sources: list, score: np.ndarray,
                  sel: Selection, review_rows: int) -> dict:
    """``review.jsonl`` (`sot_core.curate.review`): the kept rows to read first; returns run.json's entry."""
    u = sel.budget.budget_score if sel.budget is not None else None
    order = review_order(sel.selected, sel.protected, score, u, rows=review_rows)
    atomic_write_text(review_jsonl(order, ids, prompts, responses, sources, score, u, sel.train_weight), path)
    return review_summary(order, ids, prompts, score, u)


def _selection_summary(sel: Selection, ids: list[str], prompts: list[str], responses: list[str],
                       score: np.ndarray, label: np.ndarray | None, outside_anchor: float | None = None) -> dict:
    """The run summary's entries about the selection: refusals, budget, warnings, top flagged rows."""
    budget = sel.budget
    return {
        "refusals": count_refusals(responses, sel.selected, label),
        "budget": budget_summary(budget, sel.applied),
        "warnings": composition_warnings(*(None, None) if budget is None else
                                         (budget.contamination, budget.anchor_harmful_share), outside_anchor),
        "pool_outside_anchor": outside_anchor,
        "top_flagged": _top_flagged(ids, prompts, score),
    }


def refusal_rows(responses: list[str]) -> np.ndarray:
    """Rows whose whole response refuses (`sot_core.refusals.whole_response_refusal`)."""
    return np.array([whole_response_refusal(r or "") for r in responses], dtype=bool)


def refusal_aware_score(score: np.ndarray, protected: np.ndarray) -> np.ndarray:
    """The OT score with refusal rows lowered to at most the pool's median score: the harmful-likeness
    the selection acts on (a refusal shares its prompt with harm, not its content)."""
    if not protected.any():
        return np.asarray(score, dtype=np.float64)
    return np.where(protected, np.minimum(score, np.median(score)), score)


def _selection(weights: np.ndarray, responses: list[str], config: CurateConfig,
               eligible: np.ndarray | None = None,
               protected: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The kept rows (mask) and their training weights (0 for dropped rows), per `config`.

    Only `eligible` rows (the harmful-row budget's survivors; default all) can be kept; among them
    the top rows by weight, at most round(keep * n) of them when keep is a fraction (keep 'auto':
    all of them). `protected` rows (refusals) rank first and train at the kept rows' median weight
    (their OT weight is low only because they share prompts with harm).
    """
    n = len(weights)
    eligible = np.ones(n, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    if protected is not None and protected.any():
        others = weights[eligible & ~protected]
        level = float(np.median(others)) if len(others) else float(np.max(weights))
        weights = np.where(protected, np.maximum(weights, level), weights)
        rank = np.where(protected, np.inf, weights)
    else:
        rank = weights
    cap = n if config.keep == "auto" else int(round(config.keep * n))
    fraction = min(cap, int(eligible.sum())) / n if n else 0.0
    masked = np.where(eligible, rank, -np.inf)  # dropped rows rank last and are never kept
    train_w = np.zeros(n)
    if config.stratify == "label":
        groups = label_groups(responses)
        selected = select_stratified(masked, fraction, groups) & eligible
        for g in np.unique(groups[selected]):  # mean weight 1 within each group: label masses stay put
            part = selected & (groups == g)
            train_w[part] = training_weights(weights[part], config.train_weighting)
    else:
        selected = select_top(masked, fraction) & eligible
        train_w[selected] = training_weights(weights[selected], config.train_weighting)
    return selected, train_w


def _budget(store: Store, config: CurateConfig, run_info: dict, n: int):
    """The harmful-row budget at the configured recall (None when off); keep 'auto' needs one."""
    path = run_info.get("budget_path")
    if config.harmful_recall > 0 and path:
        from sot_core.curate.budget import CrossFit, apply_recall

        if not CrossFit.complete(path):
            raise store.lost_stage(Path(path))
        budget = apply_recall(CrossFit.load(path), config.harmful_recall)
        if len(budget.budget_score) != n:
            raise ValueError(f"{path}: the budget covers {len(budget.budget_score)} rows, the pool {n}")
        return budget
    if config.keep == "auto":
        raise ValueError("keep 'auto' needs the harmful-row budget stage (run through the curation flow)")
    return None


def _curated_jsonl(rows: pa.Table, selected: np.ndarray, train_w: np.ndarray) -> str:
    """``curated.jsonl``: the kept rows with their training weights, in pool order."""
    ids, prompts, responses, sources = (rows.column(c).to_pylist() for c in ("id", "prompt", "response", "source"))
    lines = [
        json.dumps({"id": ids[i], "prompt": prompts[i], "response": responses[i], "source": sources[i],
                    "weight": float(train_w[i])}, ensure_ascii=False)
        for i in np.flatnonzero(selected)
    ]
    return "\n".join(lines) + "\n"


def _label_quality(labels: dict[str, bool] | None, ids: list[str], score: np.ndarray,
                   sel: Selection) -> tuple[dict | None, np.ndarray | None]:
    """The quality figures against `labels` and the per-row label array (both None without labels).

    ``auroc`` ranks by the score the selection acts on (`refusal_aware_score`), ``auroc_ot_score``
    by the OT score alone. Rows the labels do not name count as not harmful and are reported as
    ``unlabelled_rows``.
    """
    if labels is None:
        return None, None
    missing = [i for i in ids if i not in labels]
    label = np.array([labels.get(i, False) for i in ids])
    quality = {"auroc": auroc(refusal_aware_score(score, sel.protected), label),
               **harmful_kept(sel.selected, label), "unlabelled_rows": len(missing)}
    quality["auroc_ot_score"] = auroc(score, label)
    return quality, label


def _load_solve(store: Store, solve_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The solve stage's weights and scores; a folder the store has lost stops the run (`Store.lost_stage`)."""
    if not all((solve_path / f).exists() for f in ("weights.npy", "score.npy")):
        raise store.lost_stage(solve_path)
    weights, score = (np.load(solve_path / f) for f in ("weights.npy", "score.npy"))
    return weights, score


def _top_flagged(ids: list[str], prompts: list[str], score: np.ndarray, top: int = 10) -> list[dict]:
    """The `top` highest-scoring rows with a 160-character prompt preview."""
    return [{"id": ids[i], "score": float(score[i]), "prompt": prompts[i][:160]} for i in np.argsort(-score)[:top]]


def _record_version(store: Store, version: str, files: dict[str, str], config: CurateConfig, run_info: dict,
                    pool_id: str, name: str, n_pool: int, n_selected: int) -> str | None:
    """Store `files` ({name: text}: ``curated.jsonl`` and the records) as ``curated/<version>/`` and record
    the version with its lineage in the store's catalog, in one step; returns its parent (the latest
    version of `name` before it)."""
    inputs = run_info.get("inputs", {})
    return store.put_curated_version(
        version, files, run_id=run_info.get("run_id", version), name=name,
        pool_dataset_id=pool_id,
        anchor_dataset_id=inputs.get("safe_anchor", {}).get("dataset_id"),
        harmful_dataset_id=inputs.get("harmful_ref", {}).get("dataset_id"),
        config_hash=config_hash(config.to_dict()), code_version=CODE_VERSION, n_pool=n_pool, n_selected=n_selected,
    )


def budget_summary(budget, applied: bool = True) -> dict | None:
    """The budget's figures for run.json and the artifacts (None when the budget is off)."""
    return None if budget is None else {**budget.summary(), "applied": applied}
