"""The arms of `selection_budget` and `aligned_budget` (shared): one general-pool draw or sweep level
curated by the old default, the new default, ``--keep auto`` at three recalls, and every
instance-level baseline plain and with the refusal guard's rows; means and spreads over draws.

`general` and `sweep` take a `view(pool, anchor, ref)` that maps each draw's stored vectors to the
features the arms see (identity for MiniLM; `aligned_budget` joins the aligned model's states).
"""
from __future__ import annotations

import json
import random

import numpy as np

from benchmarks.common import draw
from sot_core.config import CurateConfig
from sot_core.curate.baselines import BASELINES
from sot_core.curate.budget import apply_recall, cross_fit
from sot_core.curate.quality import auroc
from sot_core.curate.select import _selection, refusal_aware_score, refusal_rows
from sot_core.ot.costs import cosine_costs
from sot_core.ot.push_pull import solve_push_pull

# Target recalls of --keep auto reported beside the default's (the budget's trade-off curve).
RECALL_CURVE = (0.9, 0.96, 0.97, 0.975, 0.98)


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


def harmful_kept_at_benign_share(score, kinds, protected, share=0.85) -> int:
    """Harmful rows kept when the cut keeps `share` of the benign rows (threshold-free: the ranking alone)."""
    kept = (score <= np.quantile(score[kinds == "benign"], share)) | protected
    return int(kept[kinds == "harmful"].sum())


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
    for r in RECALL_CURVE:
        hl = apply_recall(fit, r).harmful_like & ~protected
        curve[f"sot_keep_auto_recall{r:g}"] = figures(_selection(res.weights, responses, CurateConfig(keep="auto"),
                                                                 ~hl, protected)[0], aware, kinds)
    budget_aware = refusal_aware_score(fit.pool_scores, protected)  # the cross-fitted score the budget drops by
    new_figures = {**figures(new, aware, kinds), "auroc_budget_score": round(auroc(budget_aware, kinds == "harmful"), 4)
                   if (kinds == "harmful").any() else None}
    return {"sot_old_default": figures(old, res.score, kinds), "sot_new_default": new_figures,
            "sot_keep_auto": {**figures(auto, aware, kinds), "estimated_contamination":
                              round(float((budget.harmful_like & ~protected).mean()), 4),
                              "harmful_kept_benign85": harmful_kept_at_benign_share(fit.pool_scores, kinds, protected)},
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


def same(pool, anchor, ref):
    """The default view: the embeddings as stored."""
    return pool, anchor, ref


def stack_parts(rows, emb, parts) -> tuple[np.ndarray, list]:
    """Pool vectors and responses of [(role, row indices)], in that order."""
    pool = np.vstack([emb[r][i] for r, i in parts if len(i)])
    return pool, [rows[r][j]["output"] for r, i in parts for j in i]


def product_selection(pool, anchor, ref, responses, cfg) -> tuple:
    """Curate one pool as `publish` does at `cfg`: (solve result, budget, refusal rows, kept rows)."""
    res = solve_push_pull(cosine_costs(pool, anchor), cosine_costs(pool, ref), cfg.push_pull())
    budget = apply_recall(cross_fit(pool, anchor, ref, cfg), cfg.harmful_recall)
    protected = refusal_rows(responses)
    selected, _ = _selection(res.weights, responses, cfg, ~(budget.harmful_like & ~protected), protected)
    return res, budget, protected, selected


# Kinds of the rows of a general-pool draw, in pool order (`general_draw`).
GENERAL_KINDS = np.array(["benign"] * 700 + ["harmful"] * 100 + ["refusal"] * 100)


def general_draw(rows, emb, seed: int) -> tuple[dict, np.ndarray, list, np.ndarray]:
    """One general-pool draw (`common.draw`): its indices, pool vectors, responses and anchor vectors."""
    idx = draw(rows, seed)
    pool, responses = stack_parts(rows, emb, [("alpaca", idx["alpaca"]), ("harmful", idx["harmful"]),
                                              ("refusal", idx["refusal"])])
    return idx, pool, responses, emb["alpaca"][idx["anchor"]]


def general(rows, emb, ref, seeds, adv_emb, adv_rows, view=same) -> list[dict]:
    """The general-pool draws; `view(pool, anchor, ref)` maps each draw's embeddings to the features used."""
    per_seed = []
    for seed in seeds:
        idx, pool, responses, anchor = general_draw(rows, emb, seed)
        arms = curate_arms(*view(pool, anchor, ref), responses, GENERAL_KINDS)
        protected = arms.pop("_protected")
        arms.update(baseline_arms(*view(pool, anchor, ref), responses, GENERAL_KINDS, protected))
        # apology-then-comply: the same draw with every harmful answer given an apology opening
        adv_pool = np.vstack([emb["alpaca"][idx["alpaca"]], adv_emb[idx["harmful"]], emb["refusal"][idx["refusal"]]])
        adv_resp = responses[:700] + [adv_rows[j]["output"] for j in idx["harmful"]] + responses[800:]
        adv = curate_arms(*view(adv_pool, anchor, ref), adv_resp, GENERAL_KINDS)
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


def sweep_draw(rows, seed: int, level: float) -> tuple[list, list]:
    """One sweep pool: 400 Alpaca rows, 40 refusals and the harm that makes `level` of the pool, as
    [(role, row indices)], and the 50 Alpaca rows of its anchor (seeded by the draw alone)."""
    rng = random.Random(5000 + seed)
    benign = rng.sample(range(800), 450)
    benign, anchor_idx = benign[:400], benign[400:]
    refusal = rng.sample(range(len(rows["refusal"])), 40)
    harmful = rng.sample(range(len(rows["harmful"])), int(round(level * 440 / (1 - level))))
    return [("alpaca", benign), ("refusal", refusal), ("harmful", harmful)], anchor_idx


def sweep(rows, emb, ref, seeds, levels=(0.0, 0.05, 0.10, 0.30), view=same) -> dict:
    out = {}
    for level in levels:
        runs = []
        for seed in seeds:
            parts, anchor_idx = sweep_draw(rows, seed, level)
            n_h = len(parts[2][1])
            kinds = np.array(["benign"] * 400 + ["refusal"] * 40 + ["harmful"] * n_h)
            pool, responses = stack_parts(rows, emb, parts)
            arms = curate_arms(*view(pool, emb["alpaca"][anchor_idx], ref), responses, kinds)
            a = arms["sot_keep_auto"]
            runs.append({"harmful_injected": n_h, "harmful_kept": a["harmful_kept"],
                         "benign_dropped": round(1 - a["benign_kept_fraction"], 4),
                         "refusals_kept": a.get("refusal_kept_fraction"),
                         "estimated_contamination": a["estimated_contamination"],
                         "true_contamination": round(n_h / len(kinds), 4),
                         "harmful_kept_benign85": a["harmful_kept_benign85"],
                         **{f"{k}_recall{r:g}": v for r in RECALL_CURVE for k, v in (
                             ("harmful_kept", arms[f"sot_keep_auto_recall{r:g}"]["harmful_kept"]),
                             ("benign_dropped",
                              round(1 - arms[f"sot_keep_auto_recall{r:g}"]["benign_kept_fraction"], 4)))}})
        out[f"{level:.0%}"] = runs
        print(f"sweep {level:.0%}: " + json.dumps(summarise_runs(runs)), flush=True)
    return out


def lone_draw(rows, seed: int, per_draw: int) -> tuple[list, list, list[int]]:
    """A clean sweep pool (`sweep_draw` at 0%), its anchor, and `per_draw` harmful rows to add one at a time."""
    parts, anchor_idx = sweep_draw(rows, seed, 0.0)
    return parts, anchor_idx, random.Random(9000 + seed).sample(range(len(rows["harmful"])), per_draw)


def lone_rows(rows, emb, ref, seeds, per_draw: int = 10, view=same, cfg=CurateConfig()) -> list[dict]:
    """One harmful row alone in a clean sweep pool, `per_draw` rows per draw: does ``--keep auto`` drop it?

    Why: the pool-neighbourhood term adds half the mean score of a row's 10 nearest pool rows, which
    for a lone harmful row are benign, so it could pull the row under the cut that harm coming in
    numbers passes (a nightly batch often holds one or two). Each row is budgeted with and without
    the term (`cross_fit(neighbourhood=...)`); rows the refusal judge protects count as kept.
    """
    runs = []
    for seed in seeds:
        parts, anchor_idx, lone = lone_draw(rows, seed, per_draw)
        pool0, responses0 = stack_parts(rows, emb, parts)
        n_benign = len(parts[0][1])  # the pool's Alpaca rows come first (`stack_parts` keeps the parts' order)
        for h in lone:
            pool, responses = np.vstack([pool0, emb["harmful"][h][None]]), responses0 + [rows["harmful"][h]["output"]]
            protected = refusal_rows(responses)
            run = {"seed": seed, "harmful_row": h, "refusal_judge_protects_it": bool(protected[-1])}
            for name, neighbourhood in (("default", True), ("no_neighbourhood", False)):
                budget = apply_recall(cross_fit(*view(pool, emb["alpaca"][anchor_idx], ref), cfg,
                                                neighbourhood=neighbourhood), cfg.harmful_recall)
                dropped = budget.harmful_like & ~protected
                run[name] = {"lone_dropped": bool(dropped[-1]), "benign_dropped": round(float(dropped[:n_benign].mean()), 4),
                             "lone_budget_score": round(float(budget.budget_score[-1]), 4)}
            runs.append(run)
        print(f"lone rows, draw {seed}: " + json.dumps(summarise_lone(runs)), flush=True)
    return runs


def summarise_lone(runs: list[dict]) -> dict:
    """Share of lone harmful rows dropped and mean benign share dropped, per variant."""
    return {name: {"lone_dropped": round(float(np.mean([r[name]["lone_dropped"] for r in runs])), 4),
                   "benign_dropped": round(float(np.mean([r[name]["benign_dropped"] for r in runs])), 4),
                   "trials": len(runs)} for name in ("default", "no_neighbourhood")}


def summarise_runs(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and v is not None]
    return {k: f"{np.mean([r[k] for r in runs]):.4g} ± {np.std([r[k] for r in runs], ddof=1) if len(runs) > 1 else 0:.2g}"
            for k in keys}


def summarise(per_seed: list[dict]) -> dict:
    return {arm: summarise_runs([s[arm] for s in per_seed]) for arm in per_seed[0]}
