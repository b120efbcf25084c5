"""Error of the kNN-sparse harmful cost against the dense solve, on the scaling benchmark's data.

    python benchmarks/knn_error.py [--n 20000] [--k 8 32 128]

Reports, per k: the L1 distance between the kNN and dense weight vectors, the fraction of rows
on which the keep-80% selections agree, and the Spearman correlation of the two scores.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ot_scaling import make_data  # noqa: E402
from sot_core.ot.costs import cosine_costs  # noqa: E402
from sot_core.ot.push_pull import PushPullConfig, solve_push_pull  # noqa: E402
from sot_core.curate.select import select_top  # noqa: E402


def ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--k", type=int, nargs="+", default=[8, 32, 128])
    args = p.parse_args()
    pool, anchor, harmful = make_data(args.n)
    cost_anchor = cosine_costs(pool, anchor)
    dense = solve_push_pull(cost_anchor, cosine_costs(pool, harmful), PushPullConfig())
    for k in args.k:
        sparse = solve_push_pull(cost_anchor, cosine_costs(pool, harmful, k=k), PushPullConfig())
        l1 = np.abs(sparse.weights - dense.weights).sum()
        agree = (select_top(sparse.weights, 0.8) == select_top(dense.weights, 0.8)).mean()
        spearman = np.corrcoef(ranks(sparse.score), ranks(dense.score))[0, 1]
        print(f"n={args.n} k={k}: L1(w) = {l1:.4f}, keep-80% agreement = {agree:.4f}, Spearman(score) = {spearman:.4f}")


if __name__ == "__main__":
    main()
