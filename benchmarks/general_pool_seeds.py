"""Curation quality over many draws of the general-instruction pool: every method's mean and
spread, and how often (and by how much, paired per draw) SOT beats that draw's best baseline.

Each draw (as `benchmarks.safety_e2e.general_mix`): 700 Alpaca-demo rows out of rows 0-799, 100 of
the 200 distinct BeaverTails harmful answers of the shared mixes, 100 of the 1,593
safety-tuned-llamas refusals the alignment recipe does not train on; anchor = 50 of the other
Alpaca rows 0-799. Harmful reference: the 463 PyRIT rows (`common.pyrit_harmful_reference`).
Refusal anchor: the bundled PyRIT refusals (`sot curate --refusal-anchor`) at share S of the
anchor mass; baselines get the same rows on their safe side ("+ref"). MiniLM pair view, SOT
defaults. Pair embeddings are computed once for every candidate row and cached in `.sot-bench`.

`--view contrast` gives SOT the contrast view (`sot_core.embed.encoders.contrast_view`: the pair
view joined with what the response adds to the prompt, weight `--contrast-weight`) and runs every
baseline in both views (pair-view keys prefixed "pair:"), so the bar of a draw is the best
baseline in either view. `--first-seed` draws other pools than the ones a setting was chosen on.
`--pool-harmful pyrit` swaps the harmful sources: 100 PyRIT rows go into the pool and the 200
BeaverTails answers become the harmful reference.

    python -m benchmarks.general_pool_seeds [--seeds 10] [--first-seed 0] [--view pair|contrast]
        [--contrast-weight 0.7] [--harmful-ref FILE] [--encoder minilm|hf:MODEL[@layer]]
        [--pool-harmful beavertails|pyrit] [--out FILE]

The default output is results/general_pool_seeds/<view>.json.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import (PYRIT_REFUSALS, SHARED, bench_store, candidate_rows, compare, draw, embed_file,
                               pyrit_harmful_reference, result_path, score_baselines, write_jsonl)
from sot_core.data.loaders import load_rows
from sot_core.embed.base import CONTRAST_WEIGHT, Encoder, contrast_view
from sot_core.embed.encoders import get_encoder
from sot_core.io import atomic_write_text

SHARES = (0.0, 0.2, 0.5, 0.7, 0.9)


def with_view(encoder: str, view: str) -> str:
    """`minilm` -> `minilm:pair`; `hf:M@middle` -> `hf:M:pair@middle` (the layer comes last)."""
    head, at, layer = encoder.rpartition("@") if encoder.startswith("hf:") and "@" in encoder else (encoder, "", "")
    return f"{head}:{view}{at}{layer}"


def prompt_view(encoder: Encoder, path: str | Path) -> np.ndarray:
    """Each row's prompt embedded alone: the pair view of the row without its answer (not cached)."""
    prompts = load_rows(str(path)).column("prompt").to_pylist()
    return encoder.encode(prompts, [""] * len(prompts))


def summarise(per_seed: list[dict]) -> dict:
    """Mean and sd of every score per method; for SOT also its AUROC minus each draw's best baseline."""
    methods = per_seed[0].keys()
    out = {}
    for m in methods:
        cols = {k: np.array([s[m][k] for s in per_seed], float) for k in per_seed[0][m]}
        out[m] = {k: {"mean": round(float(v.mean()), 4), "sd": round(float(v.std(ddof=1)), 4)} for k, v in cols.items()}
    bars = {  # the bar of each draw: its best non-random baseline, without / with the refusal rows
        "best_plain_baseline": lambda k: not k.startswith(("sot", "random")) and not k.endswith("+ref"),  # any view
        "best_baseline": lambda k: not k.startswith(("sot", "random"))}
    for m in (m for m in methods if m.startswith("sot")):
        for bar, allowed in bars.items():
            best = np.array([max(v["auroc"] for k, v in s.items() if allowed(k)) for s in per_seed])
            diff = np.array([s[m]["auroc"] for s in per_seed]) - best
            out[m][f"auroc_minus_{bar}"] = {"mean": round(float(diff.mean()), 4), "sd": round(float(diff.std(ddof=1)), 4),
                                            "draws_won": int((diff > 0).sum()), "draws": len(diff)}
        kept = np.array([s[m]["refusals_kept_fraction"] for s in per_seed])
        out[m]["refusals_kept_min"] = round(float(kept.min()), 4)
        out[m]["draws_most_refusals_kept"] = int((kept > 0.5).sum())
    return out


def print_summary(summary: dict) -> None:
    for m, v in summary.items():
        line = f"{m:28s} AUROC {v['auroc']['mean']:.3f}±{v['auroc']['sd']:.3f}  harmful kept {v['harmful_kept']['mean']:.1f}" \
               f"±{v['harmful_kept']['sd']:.1f}  refusals kept {v['refusals_kept_fraction']['mean']:.0%}"
        if "draws_most_refusals_kept" in v:
            line += f" (min {v['refusals_kept_min']:.0%}, above half in {v['draws_most_refusals_kept']})"
        for bar in ("best_plain_baseline", "best_baseline"):
            if f"auroc_minus_{bar}" in v:
                d = v[f"auroc_minus_{bar}"]
                line += f"  vs {bar} {d['mean']:+.3f}±{d['sd']:.3f} (won {d['draws_won']}/{d['draws']})"
        print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(SHARED))
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=0, help="draws use seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--view", choices=("pair", "contrast"), default="pair", help="representation SOT sees")
    p.add_argument("--contrast-weight", type=float, default=CONTRAST_WEIGHT)
    p.add_argument("--encoder", default="minilm", help="encoder without its view: minilm or hf:<model folder>")
    p.add_argument("--harmful-ref", default=None, help="harmful reference file (default: the 463 PyRIT rows)")
    p.add_argument("--pool-harmful", choices=("beavertails", "pyrit"), default="beavertails",
                   help="source of the pool's harmful rows; 'pyrit' swaps the roles: 100 of the PyRIT rows go into "
                        "the pool and the 200 BeaverTails answers become the harmful reference")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.pool_harmful == "pyrit" and args.harmful_ref:
        p.error("--pool-harmful pyrit sets the harmful reference itself")
    shared, work = Path(args.shared), Path(tempfile.mkdtemp(prefix="sot-seeds-"))
    store = bench_store()
    rows = candidate_rows(shared)
    files = {role: write_jsonl(r, work / f"{role}.jsonl") for role, r in rows.items()}
    files.update(harmful_ref=args.harmful_ref or write_jsonl(pyrit_harmful_reference(shared), work / "harmful_reference.jsonl"),
                 refusal_anchor=PYRIT_REFUSALS)
    if args.pool_harmful == "pyrit":  # same draws of everything else; only the harmful sources swap
        files["harmful"], files["harmful_ref"] = files["harmful_ref"], files["harmful"]
    views = {"pair": {role: embed_file(store, f, with_view(args.encoder, "pair")) for role, f in files.items()}}
    if args.view == "contrast":
        encoder = get_encoder(with_view(args.encoder, "pair"))
        views["contrast"] = {role: contrast_view(views["pair"][role], prompt_view(encoder, f), args.contrast_weight)
                             for role, f in files.items()}

    kinds = np.array(["benign"] * 700 + ["harmful"] * 100 + ["refusal"] * 100)
    task = {"harmful": kinds == "harmful", "refusal": kinds == "refusal"}
    per_seed = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        idx = draw(rows, seed)
        if args.pool_harmful == "pyrit":
            idx["harmful"] = random.Random(1000 + seed).sample(range(len(views["pair"]["harmful"])), 100)
        res = {}
        for view, emb in sorted(views.items(), key=lambda kv: kv[0] != args.view):  # SOT's view first
            pool = np.vstack([emb["alpaca"][idx["alpaca"]], emb["harmful"][idx["harmful"]], emb["refusal"][idx["refusal"]]])
            anchor, refusal_anchor, harmful_ref = emb["alpaca"][idx["anchor"]], emb["refusal_anchor"], emb["harmful_ref"]
            if view == args.view:
                res.update(compare(pool, anchor, harmful_ref, task, refusal_anchor, SHARES))
            else:
                res.update(score_baselines(pool, anchor, harmful_ref, task, refusal_anchor, prefix=f"{view}:", with_random=False))
        per_seed.append(res)
        print(f"seed {seed}: " + "  ".join(f"{k} {v['auroc']:.3f}/{v['harmful_kept']}/{v['refusals_kept_fraction']:.0%}"
                                           for k, v in res.items() if k.startswith(("sot", "classifier"))), flush=True)
    out = {"seeds": args.seeds, "summary": summarise(per_seed), "per_seed": per_seed}
    if args.view != "pair" or args.first_seed or args.harmful_ref or args.encoder != "minilm" or args.pool_harmful != "beavertails":
        # the default run's file keeps the layout it was first written in
        ref_name = "BeaverTails (200 rows)" if args.pool_harmful == "pyrit" else args.harmful_ref or "PyRIT (463 rows)"
        out = {"view": args.view, "first_seed": args.first_seed, "harmful_ref": ref_name, "pool_harmful": args.pool_harmful,
               **({"encoder": args.encoder} if args.encoder != "minilm" else {}), **out}
        if args.view == "contrast":
            out["contrast_weight"] = args.contrast_weight
    atomic_write_text(json.dumps(out, indent=2), Path(args.out or result_path("general_pool_seeds", f"{args.view}.json")))
    print_summary(out["summary"])


if __name__ == "__main__":
    main()
