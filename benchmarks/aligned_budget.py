"""The harmful-row budget on the aligned model's own states, alone and beside MiniLM (issue 14).

`benchmarks.aligned_states` found that layer 29 of the aligned SmolLM2 tells harm from refusals
(discriminant alone: AUROC 0.905, MiniLM 0.527) but, alone at the 95% threshold, keeps more harm.
This runs the whole budget (`benchmarks.budget_arms`, as `selection_budget` does: OT + discriminant + neighbourhood,
cross-fitted, refusal guard) on three views of the same rows and draws:

* ``minilm``: the MiniLM pair view as shipped;
* ``aligned``: layer-``--layer`` last-token states, centred on each pool's mean and unit-normed
  (centring is label-free: a pool's mean, which a production run also has);
* ``both``: the two unit vectors side by side, scaled by 1/sqrt(2), so the cosine is the mean
  of the two views' cosines;
* ``both_unit``: as ``both``, the states unit-normed before centring on the pool;
* ``shipped``: what ``--encoder minilm+hf:MODEL:pair@LAYER`` does (`sot_core.embed.composite`):
  states stored as unit(h - c0), c0 their mean over the bundled calibration rows, then
  `pool_centred` at curation. c0 comes from the product's own code.

Rows are those `benchmarks.aligned_model` caches states for (refusals: the first 400 of the held-out set),
so the draws differ from `selection_budget`'s; MiniLM runs on the same draws as the reference.
The apology-then-comply rows get their states here (cached beside the others).

    python -m benchmarks.aligned_budget --model .sot/models/aligned-<key> [--views minilm,aligned,both,both_unit,shipped]
        [--seeds 10] [--parts general,sweep] [--layer 29] [--lm-share 0.5]

Output: results/aligned_budget/general.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.aligned_model import composite_centre, make_view, row_prompt, rows_and_views
from benchmarks.budget_arms import general, summarise, summarise_runs, sweep
from benchmarks.common import BENCH_HOME, SHARED, adversarial_rows, bench_store, embed_file, result_path, write_jsonl
from sot_core.io import atomic_write_text

def adversarial_states(model: str, rows: list[dict], layer: int) -> np.ndarray:
    """Layer-`layer` states of the apology-then-comply rows, computed once per model and cached."""
    from sot_core.embed.llm_encoder import LastTokenEncoder
    from sot_core.models.llm import model_fingerprint

    cache = BENCH_HOME / "aligned_states" / f"{Path(model).name}-{model_fingerprint(model)}-adv-v2.npz"
    if not cache.exists():
        enc = LastTokenEncoder(model, max_length=256)
        states = enc.all_layer_states([row_prompt(r) for r in rows], [r["output"] for r in rows])
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, apology=states)
        tmp.replace(cache)
    with np.load(cache) as z:
        return z["apology"][:, layer]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="aligned model folder (e.g. .sot/models/aligned-<key>)")
    ap.add_argument("--layer", type=int, default=29)
    ap.add_argument("--views", default="minilm,aligned,both,both_unit,shipped")
    ap.add_argument("--parts", default="general,sweep")
    ap.add_argument("--centre", default="pool", choices=("pool", "anchor", "reference", "none"),
                    help="rows whose mean is taken off the aligned states (reference: anchor and harmful reference)")
    ap.add_argument("--lm-share", type=float, default=0.5,
                    help="shipped view: the LM block's share of the cosine, as the product's --lm-share (0.5: equal)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.time()
    rows, states, minilm = rows_and_views(args.model, args.shared)
    work = BENCH_HOME / "aligned_states" / "rows"
    raw = {role: np.hstack([minilm[role], states[role][:, args.layer]]) for role in rows}
    adv = adversarial_rows(rows["harmful"])
    adv_raw = np.hstack([embed_file(bench_store(), write_jsonl(adv, work / "apology.jsonl"), "minilm"),
                         adversarial_states(args.model, adv, args.layer)])
    ref = raw.pop("reference")
    c0 = composite_centre(args.model, args.layer) if "shipped" in args.views else None
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    report = {"model": args.model, "layer": args.layer, "centre": args.centre, "lm_share": args.lm_share,
              "seeds": list(seeds),
              "rows": {r: len(v) for r, v in rows.items()}, "views": {}}
    for name in args.views.split(","):
        view, out = make_view(name, args.centre, c0, args.lm_share), {}
        if "general" in args.parts:
            per_seed = general(rows, raw, ref, seeds, adv_raw, adv, view=view)
            out["general"] = {"summary": summarise(per_seed), "per_seed": per_seed}
        if "sweep" in args.parts:
            runs = sweep(rows, raw, ref, seeds, view=view)
            out["sweep"] = {"summary": {k: summarise_runs(v) for k, v in runs.items()}, "runs": runs}
        report["views"][name] = out
        print(f"view {name} done at {time.time() - t0:.0f} s", flush=True)
    report["seconds"] = round(time.time() - t0, 1)
    atomic_write_text(json.dumps(report, indent=1, default=float),
                      Path(args.out or result_path("aligned_budget", "general.json")))
    return report


if __name__ == "__main__":
    main()
