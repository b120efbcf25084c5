"""One representation per OT term: the pull and the push may look at different views of a row
(prompt+response "pair", "response" alone, or "max" = the larger of the two cosine costs, i.e.
close only if close in both views). The setting "pair+response-refusals" compares the pool with
the task part of the anchor in the pair view and with the refusal part in the response view.

General-instruction pool of `benchmarks.curation_quality`, MiniLM, SOT defaults; refusal anchor =
the bundled PyRIT refusals with anchor share S (as `sot curate --refusal-anchor`). Each result:
AUROC, harmful rows kept at 80%, refusals kept. The baselines to compare with are in
results/refusal_anchor/pair_both_response.json.

    python -m benchmarks.refusal_views [--shares 0,0.2,0.5] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import PYRIT_REFUSALS, SHARED, bench_store, build_inputs, embed_file, result_path, score_sot
from sot_core.curate.pipeline import composite_anchor_masses
from sot_core.ot.costs import cosine_costs

VIEWS = [("pair", "pair"), ("pair", "response"), ("pair", "max"), ("both", "both"), ("max", "max"), ("response", "response"),
         ("pair+response-refusals", "pair")]


def view_costs(emb: dict, pool: str, other: str, view: str) -> np.ndarray:
    if view == "max":
        return np.maximum(cosine_costs(emb["pair"][pool], emb["pair"][other]),
                          cosine_costs(emb["response"][pool], emb["response"][other]))
    return cosine_costs(emb[view][pool], emb[view][other])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(SHARED))
    p.add_argument("--shares", default="0,0.2,0.5")
    p.add_argument("--out", default=result_path("refusal_views", "general_pool.json"))
    args = p.parse_args()
    store = bench_store()
    inputs = build_inputs(Path(args.shared), Path(tempfile.mkdtemp(prefix="sot-views-")))
    task = inputs["tasks"]["general"]
    emb = {}
    for rep in ("pair", "response", "both"):
        enc = f"minilm:{rep}"
        anchor, ref = embed_file(store, task["anchor"], enc), embed_file(store, PYRIT_REFUSALS, enc)
        emb[rep] = {"pool": embed_file(store, task["pool"], enc), "harmful": embed_file(store, inputs["reference"], enc),
                    "anchor": anchor, "ref": ref, "anchor+ref": np.vstack([anchor, ref])}
    n_anchor, n_ref = len(emb["pair"]["anchor"]), len(emb["pair"]["ref"])
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
            key = f"pull={pull}/push={push}/S={share:g}"
            r = results[key] = score_sot(c_pull, c_push, task, anchor_weights=masses)
            print(f"{key}: {r['auroc']:.3f} / {r['harmful_kept']} / {r['refusals_kept_fraction']:.0%}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
