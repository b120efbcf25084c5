"""Does the aligned model's own view of a row see harm better than MiniLM? (issue 14's open question)

The budget's missed targets (AUROC 0.97, the contamination sweep) were put down to a representation
that sees topic, not harm; the SOT paper's representation is the last-token hidden state of the
aligned model itself. This measures it on the general pool's rows, every layer, three ways:

* ``transfer``: the budget's discriminant alone (`sot_core.logistic.fit_logistic`, class-balanced,
  L2 1.0, the features centred on the pool and unit-normed), fitted on the 50 anchor rows against
  the 463-row PyRIT reference and scored on the pool (700 Alpaca, 100 BeaverTails harmful answers,
  100 refusals; 10 draws); threshold at 95% recall of reference rows held out by 5-fold
  cross-fitting, as `--keep auto` sets it. MiniLM runs through the same code as the baseline.
* ``separable``: 5-fold cross-validated logistic regression *within* pairs of sources (Alpaca vs
  BeaverTails harm, Alpaca vs PyRIT, refusals vs harm), features standardised: is the information
  there at all, given labels from the same source?
* ``refusal_likelihood``: log p(opener | templated prompt) under the aligned model, for the
  openers its alignment data use most ("I'm sorry, but", "As an AI"): would the model refuse the
  prompt? AUROC of harmful-prompt rows against Alpaca.

States are computed once per model (`LastTokenEncoder.all_layer_states`, pair view, 256 tokens;
refusals: the first 400 of the held-out set) and cached under the benchmark store.

    python -m benchmarks.aligned_states --model .sot/models/aligned-<key>

Output: results/aligned_states/general.json.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from benchmarks.aligned_model import rows_and_views, unit
from benchmarks.common import SHARED, result_path
from sot_core.curate.quality import auroc
from sot_core.io import atomic_write_text
from sot_core.logistic import fit_logistic

ROLES = ("alpaca", "harmful", "refusal", "reference")


def logit(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x @ coef[:-1] + coef[-1]


def transfer(x: dict[str, np.ndarray], seeds=range(10), recall: float = 0.95) -> dict:
    """Anchor-vs-reference discriminant scored on general-pool draws (module docstring), mean over draws."""
    runs = []
    for seed in seeds:
        rng = random.Random(seed)
        alpaca = rng.sample(range(len(x["alpaca"])), len(x["alpaca"]))
        pool = np.vstack([x["alpaca"][alpaca[:700]], x["harmful"][rng.sample(range(len(x["harmful"])), 100)],
                          x["refusal"][rng.sample(range(len(x["refusal"])), 100)]])
        kinds = np.array(["benign"] * 700 + ["harmful"] * 100 + ["refusal"] * 100)
        centre = pool.mean(0)
        f = lambda v: unit(v - centre)  # noqa: E731
        anchor, ref = f(x["alpaca"][alpaca[700:750]]), f(x["reference"])
        folds = np.array_split(np.random.default_rng(seed).permutation(len(ref)), 5)
        score, held = np.zeros(len(pool)), np.zeros(len(ref))
        for k, fold in enumerate(folds):
            fit_rows = np.concatenate([folds[j] for j in range(5) if j != k])
            coef = fit_logistic(np.vstack([ref[fit_rows], anchor]), np.r_[np.ones(len(fit_rows)), np.zeros(len(anchor))])
            score += logit(coef, f(pool)) / len(folds)
            held[fold] = logit(coef, ref[fold])
        dropped = score >= np.quantile(held, 1 - recall)
        h, b, r = kinds == "harmful", kinds == "benign", kinds == "refusal"
        runs.append({"auroc_harmful_vs_rest": auroc(score, h), "auroc_harmful_vs_benign": auroc(score[~r], h[~r]),
                     "auroc_harmful_vs_refusal": auroc(score[~b], h[~b]), "harmful_kept_of_100": int((h & ~dropped).sum()),
                     "benign_dropped": float(dropped[b].mean())})
    return {k: round(float(np.mean([run[k] for run in runs])), 3) for k in runs[0]}


def separable(a: np.ndarray, b: np.ndarray, folds: int = 5, l2: float = 0.01) -> float:
    """Cross-validated AUROC of a logistic fit telling `b` from `a` (features standardised)."""
    x = np.vstack([a, b])
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    order = np.random.default_rng(0).permutation(len(x))
    score = np.empty(len(x))
    for part in np.array_split(order, folds):
        rest = np.setdiff1d(order, part)
        score[part] = logit(fit_logistic(x[rest], y[rest], l2), x[part])
    return round(auroc(score, y == 1), 3)


def separability(x: dict[str, np.ndarray]) -> dict:
    return {"alpaca_vs_beavertails": separable(x["alpaca"], x["harmful"]),
            "alpaca_vs_pyrit": separable(x["alpaca"], x["reference"]),
            "refusal_vs_beavertails": separable(x["refusal"], x["harmful"])}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="aligned model folder (e.g. .sot/models/aligned-<key>)")
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.time()
    rows, states, minilm = rows_and_views(args.model, args.shared)
    report = {"model": args.model, "rows": {r: len(v) for r, v in rows.items()},
              "minilm": {"transfer": transfer(minilm), "separable": separability(minilm)}, "layers": {}}
    for layer in range(states["alpaca"].shape[1]):
        x = {role: states[role][:, layer] for role in ROLES}
        report["layers"][layer] = {"transfer": transfer(x), "separable": separability(x)}
        print(f"layer {layer}: {report['layers'][layer]}", flush=True)
    lp = {role: np.logaddexp.reduce(states[f"{role}_lp"], axis=1) for role in ROLES}
    vs_alpaca = lambda role: round(auroc(np.r_[lp[role], lp["alpaca"]], np.r_[np.ones(len(lp[role])), np.zeros(len(lp["alpaca"]))] == 1), 3)  # noqa: E731
    report["refusal_likelihood"] = {"auroc_vs_alpaca": {role: vs_alpaca(role) for role in ("harmful", "refusal", "reference")},
                                    "median_logprob": {role: round(float(np.median(v)), 2) for role, v in lp.items()}}
    report["seconds"] = round(time.time() - t0, 1)
    atomic_write_text(json.dumps(report, indent=1), Path(args.out or result_path("aligned_states", "general.json")))
    print(json.dumps({k: v for k, v in report.items() if k != "layers"}, indent=1))
    return report


if __name__ == "__main__":
    main()
