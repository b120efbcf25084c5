"""Curation quality: SOT (with ablations) against the instance-level baselines on labelled pools.

Pools (`common.build_inputs`): the shared harmful fine-tuning mixes (SST-2 at 5/10/20%, AG News,
GSM8K; anchor = 50 rows of the task's held-out split) and a general-instruction pool (800 Alpaca,
100 BeaverTails harmful answers, 100 refusals; anchor = 50 other Alpaca rows), also with 25
refusals added to its anchor. Harmful reference: the 463 PyRIT rows. Each pool is embedded in
each requested MiniLM view; the `response` and `both` views run on the general pools only.

Writes the JSON and a Markdown table (cells: AUROC / harmful rows kept at keep = 80%
[/ refusals kept]).

    python -m benchmarks.curation_quality [--representations pair,response,both,contrast]
        [--json FILE] [--md FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from benchmarks.common import SHARED, bench_store, build_inputs, embed_file, result_path, score_baselines, score_sot
from sot_core.ot.costs import cosine_costs
from sot_core.ot.push_pull import PushPullConfig

SOT_VARIANTS = {
    "sot_push_pull": dict(mode="push-pull"),
    "sot_pull_only": dict(mode="pull"),
    "sot_push_only": dict(mode="push"),
    "sot_lam0.5": dict(lam=0.5),
    "sot_lam2": dict(lam=2.0),
    "sot_eps0.01": dict(eps=0.01),
    "sot_eps0.05": dict(eps=0.05),
    "sot_eps0.2": dict(eps=0.2),
}


def run(shared: Path, representations: list[str]) -> dict:
    """{"<pool>/<representation>": {method: scores}} for every pool and view."""
    store = bench_store()
    inputs = build_inputs(shared, Path(tempfile.mkdtemp(prefix="sot-bench-")))
    results = {}
    for representation in representations:
        encoder = f"minilm:{representation}"
        harmful_ref = embed_file(store, inputs["reference"], encoder)
        for name, task in inputs["tasks"].items():
            if representation in ("response", "both") and task["refusal"] is None:
                continue  # these views concern the pool with refusals; contrast is checked everywhere
            pool, anchor = embed_file(store, task["pool"], encoder), embed_file(store, task["anchor"], encoder)
            c_anchor, c_harmful = cosine_costs(pool, anchor), cosine_costs(pool, harmful_ref)
            row = score_baselines(pool, anchor, harmful_ref, task)
            for variant, overrides in SOT_VARIANTS.items():
                cfg = PushPullConfig(**overrides)
                row[variant] = score_sot(c_anchor if cfg.mode != "push" else None,
                                         c_harmful if cfg.mode != "pull" else None, task, cfg, timed=True)
            results[f"{name}/{representation}"] = row
            print(f"{name}/{representation}: " + ", ".join(
                f"{m} auroc={v['auroc']:.3f} kept={v['harmful_kept']}" for m, v in row.items()), flush=True)
    return results


def to_markdown(results: dict) -> str:
    methods = list(next(iter(results.values())).keys())
    lines = ["| pool / representation | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for name, row in results.items():
        cells = []
        for m in methods:
            v = row[m]
            cell = f"{v['auroc']:.3f} / {v['harmful_kept']}"
            if "refusals_kept_fraction" in v:
                cell += f" / {v['refusals_kept_fraction']:.0%}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(SHARED))
    p.add_argument("--representations", default="pair,response,both,contrast")
    p.add_argument("--json", default=result_path("curation_quality", "all_pools.json"))
    p.add_argument("--md", default=result_path("curation_quality", "all_pools.md"))
    args = p.parse_args()
    shared = Path(args.shared)
    if not shared.exists():
        sys.exit(f"shared data not found at {shared}: nothing to benchmark")
    results = run(shared, args.representations.split(","))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    md = (f"Machine: {machine}. Cells: AUROC / harmful rows kept at keep=80% [/ refusals kept].\n\n"
          + to_markdown(results) + "\n")
    Path(args.md).parent.mkdir(parents=True, exist_ok=True)
    Path(args.md).write_text(md)
    print(md)


if __name__ == "__main__":
    main()
