"""Composite safe anchor: task rows plus refusals, with refusal share S of the anchor mass. Does it
keep the refusals of the general-instruction pool, and what does it cost on every pool?

Refusal rows: the bundled `data/refusals/pyrit_refusals.jsonl` (PyRIT refusal-scorer rows with
human_score = 1; another source than the pool's safety-tuned-llamas refusals), as
`sot curate --refusal-anchor` uses them. Pools and harmful reference: those of
`benchmarks.curation_quality`. Baselines run with the plain anchor and with task + refusal rows
("+ref"); SOT runs at each share S (S = 0: the task anchor alone), key "sot_share<S>".

    python -m benchmarks.refusal_anchor [--representations pair,both,response] [--shares 0,0.2,0.5]
        [--encoder minilm|hf:MODEL] [--tasks general,...] [--eps 0.1] [--out FILE]

The default output is results/refusal_anchor/<representations joined by _>.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import PYRIT_REFUSALS, SHARED, bench_store, build_inputs, compare, embed_file, result_path
from sot_core.ot.push_pull import PushPullConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(SHARED))
    p.add_argument("--representations", default="pair,both,response")
    p.add_argument("--shares", default="0,0.2,0.5")
    p.add_argument("--encoder", default="minilm", help="encoder family; ':<representation>' is appended")
    p.add_argument("--tasks", default=None, help="comma-separated pool names (default: all)")
    p.add_argument("--eps", type=float, default=PushPullConfig().eps)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    reps = args.representations.split(",")
    out = Path(args.out or result_path("refusal_anchor", "_".join(reps) + ".json"))
    store = bench_store()
    inputs = build_inputs(Path(args.shared), Path(tempfile.mkdtemp(prefix="sot-refusal-")))
    shares = [float(s) for s in args.shares.split(",")]
    results = {}
    for rep in reps:
        enc = f"{args.encoder}:{rep}"
        harmful, refusal = embed_file(store, inputs["reference"], enc), embed_file(store, PYRIT_REFUSALS, enc)
        for name, task in inputs["tasks"].items():
            if name == "general_refusal_anchor" or (rep in ("response", "both") and task["refusal"] is None):
                continue
            if args.tasks and name not in args.tasks.split(","):
                continue
            pool, anchor = embed_file(store, task["pool"], enc), embed_file(store, task["anchor"], enc)
            row = compare(pool, anchor, harmful, task, refusal, shares, PushPullConfig(eps=args.eps),
                          sot_key="sot_share{share:g}")
            results[f"{name}/{enc}"] = row
            best = max((v["auroc"], k) for k, v in row.items() if not k.startswith("sot"))
            print(f"{name}/{enc}: best baseline {best[1]} {best[0]:.3f}; " + ", ".join(
                f"{k} {v['auroc']:.3f}/{v['harmful_kept']}/{v.get('refusals_kept_fraction', '-')}"
                for k, v in row.items() if k.startswith("sot")), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"eps": args.eps, "refusal_rows": sum(1 for _ in open(PYRIT_REFUSALS)),
                               "results": results}, indent=2))


if __name__ == "__main__":
    main()
