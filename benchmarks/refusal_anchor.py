"""Study: does a composite safe anchor (task rows + refusals, with a chosen mass share) keep the
refusals of a general-instruction pool, and what does it do to AUROC on every pool?

Refusal rows: the bundled `data/refusals/pyrit_refusals.jsonl` (PyRIT refusal-scorer rows with
human_score = 1; MIT; a different source from the safety-tuned-llamas refusals injected into the
general pool), as `sot curate --refusal-anchor` uses them. The anchor is the task anchor of
`curation_quality.py` plus these rows; `solve_push_pull(anchor_weights=...)` gives the refusal
part the share s of the anchor mass (s = 0: the task anchor alone). Baselines are shown with the
plain anchor and with the task + refusal rows ("+ref"), the best of either is the bar to beat.

    python benchmarks/refusal_anchor.py [--representations pair,both,response] [--shares 0,0.2,0.5]
    python benchmarks/refusal_anchor.py --representations contrast --out results/refusal_anchor_contrast.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import curation_quality as cq  # noqa: E402
from sot_core.curate.baselines import BASELINES  # noqa: E402
from sot_core.ot.costs import cosine_costs  # noqa: E402
from sot_core.ot.push_pull import PushPullConfig, solve_push_pull  # noqa: E402
from sot_core.curate.pipeline import composite_anchor_masses  # noqa: E402
from sot_core.data.store import Store  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--representations", default="pair,both,response")
    p.add_argument("--shares", default="0,0.2,0.5")
    p.add_argument("--encoder", default="minilm", help="encoder family; ':<representation>' is appended")
    p.add_argument("--tasks", default=None, help="comma-separated pool names (default: all)")
    p.add_argument("--eps", type=float, default=PushPullConfig().eps)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "refusal_anchor.json"))
    args = p.parse_args()
    shared, work = Path(args.shared), Path(tempfile.mkdtemp(prefix="sot-refusal-"))
    store = Store(REPO / ".sot-bench")
    inputs = cq.build_inputs(shared, work)
    refusals = str(REPO / "data" / "refusals" / "pyrit_refusals.jsonl")
    results = {}
    for rep in args.representations.split(","):
        enc = f"{args.encoder}:{rep}"
        harmful, refusal = cq.embed_file(store, inputs["reference"], enc), cq.embed_file(store, refusals, enc)
        for name, task in inputs["tasks"].items():
            if name == "general_refusal_anchor" or (rep in ("response", "both") and task["refusal"] is None):
                continue
            if args.tasks and name not in args.tasks.split(","):
                continue
            pool, anchor = cq.embed_file(store, task["pool"], enc), cq.embed_file(store, task["anchor"], enc)
            both = np.vstack([anchor, refusal])
            row = {}
            for method, fn in BASELINES.items():
                for tag, anc in (("", anchor), ("+ref", both)):
                    if method != "random" or not tag:
                        score = fn(pool, anc, harmful)
                        row[method + tag] = cq.evaluate(score, -score, task)
            c_harm = cosine_costs(pool, harmful)
            for share in (float(s) for s in args.shares.split(",")):
                if share == 0:
                    res = solve_push_pull(cosine_costs(pool, anchor), c_harm, PushPullConfig(eps=args.eps))
                else:
                    masses = composite_anchor_masses(len(anchor), len(refusal), share)
                    res = solve_push_pull(cosine_costs(pool, both), c_harm, PushPullConfig(eps=args.eps), anchor_weights=masses)
                row[f"sot_share{share:g}"] = cq.evaluate(res.score, res.weights, task)
            results[f"{name}/{enc}"] = row
            best = max((v["auroc"], k) for k, v in row.items() if not k.startswith("sot"))
            print(f"{name}/{enc}: best baseline {best[1]} {best[0]:.3f}; " + ", ".join(
                f"{k} {v['auroc']:.3f}/{v['harmful_kept']}/{v.get('refusals_kept_fraction', '-')}"
                for k, v in row.items() if k.startswith("sot")), flush=True)
    Path(args.out).write_text(json.dumps({"eps": args.eps, "refusal_rows": sum(1 for _ in open(refusals)),
                                          "results": results}, indent=2))


if __name__ == "__main__":
    main()
