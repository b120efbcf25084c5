"""Study: one representation per OT term. Can the pull and the push look at different views of a
row (prompt+response "pair", "response" alone, or "max" = the larger of the two cosine costs,
i.e. close only if close in both views) and keep most refusals while beating the baselines?
A third setting, "pull=pair+response-refusals", compares the pool with the task part of the
anchor in the pair view and with the refusal part in the response view (a refusal is told by
its answer, whatever the prompt).

General-instruction pool of `curation_quality.py` (800 Alpaca, 100 harmful answers, 100
refusals to harmful prompts), MiniLM, eps 0.1, lam 1; refusal anchor = the bundled PyRIT
refusals with anchor share S (as `sot curate --refusal-anchor`). Cells: AUROC / harmful rows
kept at 80% / refusals kept. Baselines for comparison are in `refusal_anchor.json`.

    python benchmarks/refusal_views.py [--out FILE]
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
from sot_core.ot.costs import cosine_costs  # noqa: E402
from sot_core.ot.push_pull import PushPullConfig, solve_push_pull  # noqa: E402
from sot_core.curate.pipeline import composite_anchor_masses  # noqa: E402
from sot_core.data.store import Store  # noqa: E402

VIEWS = [("pair", "pair"), ("pair", "response"), ("pair", "max"), ("both", "both"), ("max", "max"), ("response", "response"),
         ("pair+response-refusals", "pair")]


def view_costs(emb: dict, pool: str, other: str, view: str) -> np.ndarray:
    if view == "max":
        return np.maximum(cosine_costs(emb["pair"][pool], emb["pair"][other]),
                          cosine_costs(emb["response"][pool], emb["response"][other]))
    return cosine_costs(emb[view][pool], emb[view][other])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--shares", default="0,0.2,0.5")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "refusal_views.json"))
    args = p.parse_args()
    store = Store(REPO / ".sot-bench")
    inputs = cq.build_inputs(Path(args.shared), Path(tempfile.mkdtemp(prefix="sot-views-")))
    task = inputs["tasks"]["general"]
    refusals = str(REPO / "data" / "refusals" / "pyrit_refusals.jsonl")
    emb = {}
    for rep in ("pair", "response", "both"):
        enc = f"minilm:{rep}"
        anchor, ref = cq.embed_file(store, task["anchor"], enc), cq.embed_file(store, refusals, enc)
        emb[rep] = {"pool": cq.embed_file(store, task["pool"], enc), "harmful": cq.embed_file(store, inputs["reference"], enc),
                    "anchor": anchor, "ref": ref, "anchor+ref": np.vstack([anchor, ref])}
    n_anchor, n_ref = len(emb["pair"]["anchor"]), len(emb["pair"]["anchor+ref"]) - len(emb["pair"]["anchor"])
    results = {}
    for pull, push in VIEWS:
        c_push = view_costs(emb, "pool", "harmful", push)
        for share in (float(s) for s in args.shares.split(",")):
            masses = None if share == 0 else composite_anchor_masses(n_anchor, n_ref, share)
            if pull == "pair+response-refusals":  # task anchor by pair, refusal anchor by response
                c_pull = view_costs(emb, "pool", "anchor", "pair")
                if share:
                    c_pull = np.hstack([c_pull, view_costs(emb, "pool", "ref", "response")])
            else:
                c_pull = view_costs(emb, "pool", "anchor" if share == 0 else "anchor+ref", pull)
            res = solve_push_pull(c_pull, c_push, PushPullConfig(), anchor_weights=masses)
            key = f"pull={pull}/push={push}/S={share:g}"
            results[key] = cq.evaluate(res.score, res.weights, task)
            r = results[key]
            print(f"{key}: {r['auroc']:.3f} / {r['harmful_kept']} / {r['refusals_kept_fraction']:.0%}", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
