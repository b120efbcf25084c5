"""How many of the harmful rows a selection keeps sit in its review queue (`sot_core.curate.review`)?

The budget's threshold misses a few harmful rows. `publish` writes the kept rows that score most
like harm to ``review.jsonl`` (`REVIEW_ROWS` = 50). This measures, per draw, where the kept harmful
rows rank among the kept rows in that order: how many a reader of the first 10 / 25 / 50 queue rows
finds, against what the same number of kept rows taken at random would hold (k / kept x harmful kept).

Parts, on the rows and draws of `benchmarks.aligned_budget` (held-out draws from 10 by default):

* ``general``: 700 Alpaca + 100 harmful + 100 refusals, the product's defaults (keep 0.8, recall 0.95);
* ``sweep``: 400 Alpaca + 40 refusals + harm at 5 / 10 / 30%, ``keep auto`` at ``--recall``.

Views: ``minilm`` (the default encoder) and ``shipped`` (the composite, ``--lm-share`` as the product's).

    python -m benchmarks.review_queue --model .sot/models/aligned-<key> [--views minilm,shipped]
        [--lm-share 0.25] [--recall 0.97] [--seeds 30] [--first-seed 10]

Output: results/review_queue/<name>.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.aligned_model import composite_centre, make_view, rows_and_views
from benchmarks.budget_arms import GENERAL_KINDS, general_draw, product_selection, stack_parts, sweep_draw
from benchmarks.common import SHARED, result_path
from sot_core.config import REVIEW_ROWS, CurateConfig
from sot_core.curate.review import review_order
from sot_core.io import atomic_write_text

DEPTHS = (10, 25, REVIEW_ROWS)


def queue_figures(pool, anchor, ref, responses, harmful, cfg) -> dict:
    """Curate one pool as the product does and rank its kept rows as `publish` writes review.jsonl."""
    res, budget, protected, selected = product_selection(pool, anchor, ref, responses, cfg)
    order = review_order(selected, protected, res.score, budget.budget_score, rows=len(pool))
    rank = np.flatnonzero(harmful[order])  # 0-based queue positions of the kept harmful rows
    kept_rows = len(order)
    out = {"kept_rows": kept_rows, "harmful_kept": int(len(rank))}
    for k in DEPTHS:
        out[f"found_top{k}"] = int((rank < k).sum())
        out[f"random_top{k}"] = round(min(k, kept_rows) / kept_rows * len(rank), 3) if kept_rows else 0.0
    return out


def general_part(rows, raw, ref, seeds, view) -> list[dict]:
    runs = []
    for seed in seeds:
        _, pool, responses, anchor = general_draw(rows, raw, seed)
        runs.append(queue_figures(*view(pool, anchor, ref), responses, GENERAL_KINDS == "harmful", CurateConfig()))
    return runs


def sweep_part(rows, raw, ref, seeds, view, recall: float, levels=(0.05, 0.10, 0.30)) -> dict:
    """The contamination sweep of `benchmarks.budget_arms.sweep` (the same `sweep_draw` pools), keep auto."""
    cfg = CurateConfig(keep="auto", harmful_recall=recall)
    out = {}
    for level in levels:
        runs = []
        for seed in seeds:
            parts, anchor_idx = sweep_draw(rows, seed, level)
            pool, responses = stack_parts(rows, raw, parts)
            harmful = np.array([False] * 440 + [True] * len(parts[2][1]))
            runs.append(queue_figures(*view(pool, raw["alpaca"][anchor_idx], ref), responses, harmful, cfg))
        out[f"{level:.0%}"] = runs
    return out


def pooled(runs: list[dict]) -> dict:
    """Totals over draws: harmful kept, found in the queue's first k rows, and the random expectation."""
    tot = {k: round(sum(r[k] for r in runs), 3) for k in runs[0]}
    tot["kept_rows"] = round(tot["kept_rows"] / len(runs), 1)  # mean per draw
    for k in DEPTHS:
        tot[f"found_share_top{k}"] = round(tot[f"found_top{k}"] / tot["harmful_kept"], 3) if tot["harmful_kept"] else None
    return tot


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="aligned model folder (e.g. .sot/models/aligned-<key>)")
    ap.add_argument("--views", default="minilm,shipped")
    ap.add_argument("--parts", default="general,sweep")
    ap.add_argument("--lm-share", type=float, default=0.25, help="shipped view: the product's --lm-share")
    ap.add_argument("--recall", type=float, default=CurateConfig().harmful_recall, help="sweep: --harmful-recall")
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--first-seed", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.time()
    rows, states, minilm = rows_and_views(args.model, SHARED)
    raw = {role: np.hstack([minilm[role], states[role][:, 29]]) for role in rows}
    ref = raw.pop("reference")
    c0 = composite_centre(args.model)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    report = {"model": args.model, "lm_share": args.lm_share, "sweep_recall": args.recall, "seeds": list(seeds),
              "review_rows": REVIEW_ROWS, "views": {}}
    for name in args.views.split(","):
        view, out = make_view(name, "pool", c0, args.lm_share), {}
        if "general" in args.parts:
            runs = general_part(rows, raw, ref, seeds, view)
            out["general"] = {"pooled": pooled(runs), "runs": runs}
            print(f"{name} general: {json.dumps(out['general']['pooled'])}", flush=True)
        if "sweep" in args.parts:
            levels = sweep_part(rows, raw, ref, seeds, view, args.recall)
            out["sweep"] = {lvl: {"pooled": pooled(r), "runs": r} for lvl, r in levels.items()}
            for lvl, r in out["sweep"].items():
                print(f"{name} sweep {lvl}: {json.dumps(r['pooled'])}", flush=True)
        report["views"][name] = out
    report["seconds"] = round(time.time() - t0, 1)
    atomic_write_text(json.dumps(report, indent=1), Path(args.out or result_path("review_queue", "heldout.json")))
    return report


if __name__ == "__main__":
    main()
