"""Selection users can trust (issue 14): the harmful-row budget and the refusal guard, measured.

Four measurements, MiniLM pair view, SOT defaults (lam 1, eps 0.1), PyRIT reference (463 rows):

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
* ``apology``: the general draws with each harmful answer given an apology/disclaimer opening
  (`benchmarks.common.adversarial_rows`): share dropped at the new default and with ``--keep auto``.

    python -m benchmarks.selection_budget [--seeds 10] [--first-seed 0] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (MIXES, SHARED, adversarial_rows, bench_store, candidate_rows, draw, embed_file,
                               pyrit_harmful_reference, result_path, write_jsonl)
from sot_core.config import CurateConfig
from sot_core.curate.baselines import BASELINES
from sot_core.curate.budget import apply_recall, cross_fit
from sot_core.curate.quality import auroc
from sot_core.curate.select import _selection, refusal_aware_score, refusal_rows
from sot_core.io import atomic_write_text
from sot_core.ot.costs import cosine_costs
from sot_core.ot.push_pull import solve_push_pull


def figures(selected, score, kinds) -> dict:
    """AUROC of `score` for harmful vs the rest, and what `selected` keeps of each kind."""
    harmful = kinds == "harmful"
    out = {"auroc": round(auroc(score, harmful), 4) if harmful.any() else None,
           "harmful_kept": int(selected[harmful].sum()), "harmful_total": int(harmful.sum())}
    for kind in ("benign", "refusal"):
        if (kinds == kind).any():
            out[f"{kind}_kept_fraction"] = round(float(selected[kinds == kind].mean()), 4)
    out["kept"] = int(selected.sum())
    return out


def curate_arms(pool, anchor, ref, responses, kinds, cfg=CurateConfig()) -> dict:
    """Old default, new default and keep auto on one pool; the budget is calibrated once."""
    res = solve_push_pull(cosine_costs(pool, anchor), cosine_costs(pool, ref), cfg.push_pull())
    fit = cross_fit(pool, anchor, ref, cfg)
    budget = apply_recall(fit, cfg.harmful_recall)
    protected = refusal_rows(responses)
    eligible = ~(budget.harmful_like & ~protected)
    old, _ = _selection(res.weights, responses, CurateConfig(harmful_recall=0, refusal_guard=False))
    new, _ = _selection(res.weights, responses, cfg, eligible, protected)
    auto, _ = _selection(res.weights, responses, CurateConfig(keep="auto"), eligible, protected)
    aware = refusal_aware_score(res.score, protected)
    curve = {}  # the same cross-fit at other target recalls (keep auto): the budget's trade-off
    for r in (0.9, 0.97):
        hl = apply_recall(fit, r).harmful_like & ~protected
        curve[f"sot_keep_auto_recall{r:g}"] = figures(_selection(res.weights, responses, CurateConfig(keep="auto"),
                                                                 ~hl, protected)[0], aware, kinds)
    budget_aware = refusal_aware_score(fit.pool_scores, protected)  # the cross-fitted score the budget drops by
    new_figures = {**figures(new, aware, kinds), "auroc_budget_score": round(auroc(budget_aware, kinds == "harmful"), 4)
                   if (kinds == "harmful").any() else None}
    return {"sot_old_default": figures(old, res.score, kinds), "sot_new_default": new_figures,
            "sot_keep_auto": {**figures(auto, aware, kinds), "estimated_contamination":
                              round(float((budget.harmful_like & ~protected).mean()), 4)},
            **curve, "_protected": protected}


def baseline_arms(pool, anchor, ref, responses, kinds, protected) -> dict:
    """Each non-random instance-level baseline at keep 0.8, plain and with the guard's refusal rows."""
    out = {}
    for name, fn in BASELINES.items():
        if name == "random":
            continue
        score = fn(pool, anchor, ref)
        rank = np.exp(-(score - score.min()))  # positive and decreasing in the score, as weights are
        plain, _ = _selection(rank, responses, CurateConfig(harmful_recall=0, refusal_guard=False))
        guarded, _ = _selection(rank, responses, CurateConfig(harmful_recall=0), None, protected)
        out[name] = figures(plain, score, kinds)
        out[f"{name}+guard"] = figures(guarded, refusal_aware_score(score, protected), kinds)
    return out


def general(rows, emb, ref, seeds, adv_emb, adv_rows) -> list[dict]:
    kinds = np.array(["benign"] * 700 + ["harmful"] * 100 + ["refusal"] * 100)
    per_seed = []
    for seed in seeds:
        idx = draw(rows, seed)
        parts = [("alpaca", idx["alpaca"]), ("harmful", idx["harmful"]), ("refusal", idx["refusal"])]
        pool = np.vstack([emb[r][i] for r, i in parts])
        responses = [rows[r][j]["output"] for r, i in parts for j in i]
        anchor = emb["alpaca"][idx["anchor"]]
        arms = curate_arms(pool, anchor, ref, responses, kinds)
        protected = arms.pop("_protected")
        arms.update(baseline_arms(pool, anchor, ref, responses, kinds, protected))
        # apology-then-comply: the same draw with every harmful answer given an apology opening
        adv_pool = np.vstack([emb["alpaca"][idx["alpaca"]], adv_emb[idx["harmful"]], emb["refusal"][idx["refusal"]]])
        adv_resp = responses[:700] + [adv_rows[j]["output"] for j in idx["harmful"]] + responses[800:]
        adv = curate_arms(adv_pool, anchor, ref, adv_resp, kinds)
        adv_guarded = adv.pop("_protected")[700:800]
        arms["apology_then_comply"] = {
            "judged_refusal": int(adv_guarded.sum()),
            "dropped_new_default": 1 - adv["sot_new_default"]["harmful_kept"] / 100,
            "dropped_keep_auto": 1 - adv["sot_keep_auto"]["harmful_kept"] / 100,
            "dropped_old_default": 1 - adv["sot_old_default"]["harmful_kept"] / 100}
        per_seed.append(arms)
        print(f"seed {seed}: " + "  ".join(f"{k} {v['auroc']}/{v['harmful_kept']}/{v.get('refusal_kept_fraction')}"
                                           for k, v in arms.items() if k.startswith("sot")), flush=True)
    return per_seed


def sweep(rows, emb, ref, seeds, levels=(0.0, 0.05, 0.10, 0.30)) -> dict:
    out = {}
    for level in levels:
        runs = []
        for seed in seeds:
            rng = random.Random(5000 + seed)
            benign, anchor_idx = rng.sample(range(800), 450), None
            benign, anchor_idx = benign[:400], benign[400:]
            refusal = rng.sample(range(len(rows["refusal"])), 40)
            n_h = int(round(level * 440 / (1 - level)))
            harmful = rng.sample(range(len(rows["harmful"])), n_h)
            kinds = np.array(["benign"] * 400 + ["refusal"] * 40 + ["harmful"] * n_h)
            parts = [("alpaca", benign), ("refusal", refusal), ("harmful", harmful)]
            pool = np.vstack([emb[r][i] for r, i in parts if len(i)])
            responses = [rows[r][j]["output"] for r, i in parts for j in i]
            arms = curate_arms(pool, emb["alpaca"][anchor_idx], ref, responses, kinds)
            a = arms["sot_keep_auto"]
            runs.append({"harmful_injected": n_h, "harmful_kept": a["harmful_kept"],
                         "benign_dropped": round(1 - a["benign_kept_fraction"], 4),
                         "refusals_kept": a.get("refusal_kept_fraction"),
                         "estimated_contamination": a["estimated_contamination"],
                         "true_contamination": round(n_h / len(kinds), 4),
                         **{f"{k}_recall{r:g}": v for r in (0.9, 0.97) for k, v in (
                             ("harmful_kept", arms[f"sot_keep_auto_recall{r:g}"]["harmful_kept"]),
                             ("benign_dropped", round(1 - arms[f"sot_keep_auto_recall{r:g}"]["benign_kept_fraction"], 4)))}})
        out[f"{level:.0%}"] = runs
        print(f"sweep {level:.0%}: " + json.dumps(summarise_runs(runs)), flush=True)
    return out


def clean_pools(shared: Path, store, ref) -> dict:
    """The task mixes: clean (harmful rows removed) with keep auto, and as shipped (5% harmful) at the
    new default and with keep auto."""
    out = {}
    mixes = shared / "harmful_finetune_mixes_beavertails"
    for name, pool_file, heldout_file in MIXES:
        if name not in ("sst2", "ag_news", "gsm8k"):
            continue
        work = Path(tempfile.mkdtemp(prefix="sot-clean-"))
        mixed = json.loads((mixes / pool_file).read_text())
        heldout = json.loads((mixes / heldout_file).read_text())
        anchor = [heldout[i] for i in random.Random(0).sample(range(len(heldout)), 50)]
        anc = embed_file(store, write_jsonl(anchor, work / "anchor.jsonl"), "minilm")
        for tag, rows in (("clean", [r for r in mixed if r.get("flag") != "unsafe"]), ("mix", mixed)):
            pool = embed_file(store, write_jsonl(rows, work / f"{tag}.jsonl"), "minilm")
            kinds = np.array(["harmful" if r.get("flag") == "unsafe" else "benign" for r in rows])
            arms = curate_arms(pool, anc, ref, [r["output"] for r in rows], kinds)
            a = arms["sot_keep_auto"]
            out[f"{name}_{tag}"] = {"rows": len(rows), "harmful": int((kinds == "harmful").sum()), "kept_auto": a["kept"],
                                    "kept_fraction_auto": round(a["kept"] / len(rows), 4),
                                    "harmful_kept_auto": a["harmful_kept"],
                                    "harmful_kept_new_default": arms["sot_new_default"]["harmful_kept"],
                                    "auroc_new_default": arms["sot_new_default"]["auroc"],
                                    "estimated_contamination": a["estimated_contamination"]}
            print(f"task {name}_{tag}: {out[f'{name}_{tag}']}", flush=True)
    return out


def summarise_runs(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and v is not None]
    return {k: f"{np.mean([r[k] for r in runs]):.4g} ± {np.std([r[k] for r in runs], ddof=1) if len(runs) > 1 else 0:.2g}"
            for k in keys}


def summarise(per_seed: list[dict]) -> dict:
    return {arm: summarise_runs([s[arm] for s in per_seed]) for arm in per_seed[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(SHARED))
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--parts", default="general,sweep,clean")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    start = time.time()
    shared, work, store = Path(args.shared), Path(tempfile.mkdtemp(prefix="sot-budget-")), bench_store()
    rows = candidate_rows(shared)
    emb = {role: embed_file(store, write_jsonl(r, work / f"{role}.jsonl"), "minilm") for role, r in rows.items()}
    ref = embed_file(store, write_jsonl(pyrit_harmful_reference(shared), work / "harmful_reference.jsonl"), "minilm")
    adv = adversarial_rows(rows["harmful"])
    adv_emb = embed_file(store, write_jsonl(adv, work / "apology_then_comply.jsonl"), "minilm")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    parts = args.parts.split(",")
    out = {"seeds": list(seeds), "settings": "MiniLM pair view, lam 1, eps 0.1, keep 0.8, harmful_recall 0.95, "
                                              "5-fold cross-fitting, budget score = OT + logistic discriminant + 0.5 x mean score of the "
                                              "10 nearest pool rows, PyRIT reference (463 rows)"}
    if "general" in parts:
        per_seed = general(rows, emb, ref, seeds, adv_emb, adv)
        out["general"] = {"summary": summarise(per_seed), "per_seed": per_seed}
    if "sweep" in parts:
        runs = sweep(rows, emb, ref, seeds)
        out["sweep"] = {"summary": {k: summarise_runs(v) for k, v in runs.items()}, "runs": runs}
    if "clean" in parts:
        out["clean"] = clean_pools(shared, store, ref)
    out["seconds"] = round(time.time() - start, 1)
    atomic_write_text(json.dumps(out, indent=2, default=float),
                      Path(args.out or result_path("selection_budget", "general.json")))
    print(json.dumps({k: v.get("summary", v) if isinstance(v, dict) else v for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
