"""Which harmful rows does the contamination sweep keep, draw after draw?

The sweep of `benchmarks.budget_arms` samples its injected harm from the same 200 BeaverTails
rows in every draw. This reruns one level of it (``keep auto``, the composite view of
`benchmarks.aligned_budget`) and counts, per source row, how often it was injected and how often
kept: whether the misses are spread over the harm or come back to a few rows. Only row indices
and counts are written (the rows are CC BY-NC; read them in ../shared/data).

    python -m benchmarks.sweep_misses --model .sot/models/aligned-<key> [--level 0.05] [--recall 0.97]
        [--lm-share 0.25] [--seeds 60] [--first-seed 10]
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.aligned_model import composite_centre, make_view, rows_and_views
from benchmarks.budget_arms import product_selection, stack_parts, sweep_draw
from benchmarks.common import SHARED, result_path
from sot_core.config import CurateConfig
from sot_core.io import atomic_write_text


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--level", type=float, default=0.05)
    ap.add_argument("--recall", type=float, default=0.97)
    ap.add_argument("--lm-share", type=float, default=0.25)
    ap.add_argument("--seeds", type=int, default=60)
    ap.add_argument("--first-seed", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    rows, states, minilm = rows_and_views(args.model, SHARED)
    raw = {role: np.hstack([minilm[role], states[role][:, 29]]) for role in rows}
    ref = raw.pop("reference")
    view = make_view("shipped", "pool", composite_centre(args.model), args.lm_share)
    cfg = CurateConfig(keep="auto", harmful_recall=args.recall)
    injected, kept = Counter(), Counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        parts, anchor_idx = sweep_draw(rows, seed, args.level)  # the pools of budget_arms.sweep
        harmful = parts[2][1]
        pool, responses = stack_parts(rows, raw, parts)
        selected = product_selection(*view(pool, raw["alpaca"][anchor_idx], ref), responses, cfg)[3]
        for k, j in enumerate(harmful):
            injected[j] += 1
            kept[j] += int(selected[440 + k])
    ranked = sorted(kept, key=lambda j: (-kept[j], j))
    ranked = [j for j in ranked if kept[j]]
    total = sum(kept.values())
    report = {"level": args.level, "recall": args.recall, "lm_share": args.lm_share,
              "seeds": [args.first_seed, args.first_seed + args.seeds - 1],
              "injected": sum(injected.values()), "kept": total, "distinct_rows_kept": len(ranked),
              "distinct_rows_injected": len(injected),
              "kept_by_top6_rows": sum(kept[j] for j in ranked[:6]),
              "rows": [{"harmful_index": j, "kept": kept[j], "injected": injected[j]} for j in ranked]}
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
    atomic_write_text(json.dumps(report, indent=1), Path(args.out or result_path("sweep_misses", "level5.json")))
    return report


if __name__ == "__main__":
    main()
