"""Selection users can trust (issue 14): the harmful-row budget and the refusal guard, measured.

Five measurements, MiniLM pair view (or `--encoder`), SOT defaults (lam 1, eps 0.1), PyRIT reference (463 rows):

* ``general``: draws of the general pool of `general_pool_seeds` (700 Alpaca, 100 BeaverTails
  harmful answers, 100 held-out safety-tuned-llamas refusals; anchor 50 other Alpaca rows). Arms:
  the old default (top 80% by weight), the new default (keep 0.8 as a cap on the budget's
  survivors, refusal guard on), ``--keep auto`` (also at target recalls 0.9 and 0.97, from the same
  cross-fit), and every instance-level baseline plain and with the same refusal information (the
  guard's refusal rows ranked first, their score lowered). ``auroc_budget_score`` is the AUROC of the
  budget's cross-fitted score (OT + discriminant + pool-neighbourhood term), the score rows are dropped by.
* ``sweep``: 400 Alpaca + 40 refusals + harmful rows at 0/5/10/30% of the pool, ``--keep auto``.
* ``clean``: the task mixes (SST-2, AG News, GSM8K) without their harmful rows, ``--keep auto``,
  and as shipped (5% harmful) at the new default and with ``--keep auto``.
* ``lone``: a clean sweep pool plus one harmful row at a time (10 rows per draw): the share of lone
  rows ``--keep auto`` drops, with and without the pool-neighbourhood term.
* ``apology``: the general draws with each harmful answer given an apology/disclaimer opening
  (`benchmarks.common.adversarial_rows`): share dropped at the new default and with ``--keep auto``.

    python -m benchmarks.selection_budget [--seeds 10] [--first-seed 0] [--encoder SPEC] [--mixes sst2,...] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.budget_arms import curate_arms, general, lone_rows, summarise, summarise_lone, summarise_runs, sweep
from benchmarks.common import (MIXES, SHARED, adversarial_rows, bench_store, candidate_rows, embed_file,
                               pyrit_harmful_reference, result_path, write_jsonl)
from sot_core.curate.pipeline import cached_encoder
from sot_core.embed.composite import pool_centred
from sot_core.io import atomic_write_text


def clean_pools(shared: Path, store, ref, encoder: str = "minilm", names=("sst2", "ag_news", "gsm8k")) -> dict:
    """The task mixes: clean (harmful rows removed) with keep auto, and as shipped (5% harmful) at the
    new default and with keep auto."""
    out = {}
    mixes = shared / "harmful_finetune_mixes_beavertails"
    view = encoder_view(encoder)
    for name, pool_file, heldout_file in MIXES:
        if name not in names:
            continue
        work = Path(tempfile.mkdtemp(prefix="sot-clean-"))
        mixed = json.loads((mixes / pool_file).read_text())
        heldout = json.loads((mixes / heldout_file).read_text())
        anchor = [heldout[i] for i in random.Random(0).sample(range(len(heldout)), 50)]
        anc = embed_file(store, write_jsonl(anchor, work / "anchor.jsonl"), encoder)
        for tag, rows in (("clean", [r for r in mixed if r.get("flag") != "unsafe"]), ("mix", mixed)):
            pool = embed_file(store, write_jsonl(rows, work / f"{tag}.jsonl"), encoder)
            kinds = np.array(["harmful" if r.get("flag") == "unsafe" else "benign" for r in rows])
            arms = curate_arms(*view(pool, anc, ref), [r["output"] for r in rows], kinds)
            a = arms["sot_keep_auto"]
            out[f"{name}_{tag}"] = {"rows": len(rows), "harmful": int((kinds == "harmful").sum()), "kept_auto": a["kept"],
                                    "kept_fraction_auto": round(a["kept"] / len(rows), 4),
                                    "harmful_kept_auto": a["harmful_kept"],
                                    "harmful_kept_new_default": arms["sot_new_default"]["harmful_kept"],
                                    "auroc_new_default": arms["sot_new_default"]["auroc"],
                                    "estimated_contamination": a["estimated_contamination"]}
            print(f"task {name}_{tag}: {out[f'{name}_{tag}']}", flush=True)
    return out


def encoder_view(encoder: str):
    """What curation does to the stored vectors before costs and the budget (`pool_centred`)."""
    encoder_id = cached_encoder(encoder).encoder_id
    return lambda pool, anchor, ref: pool_centred(encoder_id, pool, anchor, ref)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(SHARED))
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--parts", default="general,sweep,clean")
    p.add_argument("--encoder", default="minilm", help="encoder spec, as `sot curate --encoder` (e.g. minilm+hf:MODEL:pair@29)")
    p.add_argument("--mixes", default="sst2,ag_news,gsm8k", help="task mixes of the clean part")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    start = time.time()
    shared, work, store = Path(args.shared), Path(tempfile.mkdtemp(prefix="sot-budget-")), bench_store()
    embed = lambda rows, name: embed_file(store, write_jsonl(rows, work / name), args.encoder)  # noqa: E731
    ref = embed(pyrit_harmful_reference(shared), "harmful_reference.jsonl")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    parts = args.parts.split(",")
    out = {"seeds": list(seeds), "encoder": args.encoder,
           "settings": "lam 1, eps 0.1, keep 0.8, harmful_recall 0.95, 5-fold cross-fitting, budget score = OT + "
                       "logistic discriminant + 0.5 x mean score of the 10 nearest pool rows, PyRIT reference (463 rows)"}
    if {"general", "sweep", "lone"} & set(parts):
        rows = candidate_rows(shared)
        emb = {role: embed(r, f"{role}.jsonl") for role, r in rows.items()}
    if "general" in parts:
        adv = adversarial_rows(rows["harmful"])
        per_seed = general(rows, emb, ref, seeds, embed(adv, "apology_then_comply.jsonl"), adv, encoder_view(args.encoder))
        out["general"] = {"summary": summarise(per_seed), "per_seed": per_seed}
    if "sweep" in parts:
        runs = sweep(rows, emb, ref, seeds, view=encoder_view(args.encoder))
        out["sweep"] = {"summary": {k: summarise_runs(v) for k, v in runs.items()}, "runs": runs}
    if "lone" in parts:
        runs = lone_rows(rows, emb, ref, seeds, view=encoder_view(args.encoder))
        out["lone"] = {"summary": summarise_lone(runs), "runs": runs}
    if "clean" in parts:
        out["clean"] = clean_pools(shared, store, ref, args.encoder, args.mixes.split(","))
    out["seconds"] = round(time.time() - start, 1)
    atomic_write_text(json.dumps(out, indent=2, default=float),
                      Path(args.out or result_path("selection_budget", "general.json")))
    print(json.dumps({k: v.get("summary", v) if isinstance(v, dict) else v for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
