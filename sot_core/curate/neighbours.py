r"""The pool-neighbourhood term of the harmful-row budget's score (issue 14).

Why. A benign row that looks like some harmful reference row on its own (a cocktail recipe near
drug recipes, a password generator near credential theft) is usually surrounded in the pool by
benign rows that do not (other recipes, other small utilities), while a pool's harmful rows come
in numbers and sit near one another. Adding to a row's score the mean score of its nearest pool
rows lowers the first kind and raises the second: on the general pool's tuning draws it kept
fewer harmful rows at the same benign keep rate (benchmarks/RESULTS.md, section selection_budget).

The term. With :math:`N_k(x)` the k pool rows nearest to x by cosine (x itself excluded when x is a
pool row),

.. math:: s'(x) = s(x) + \beta \, \frac{1}{k} \sum_{j \in N_k(x)} s(x_j).

Propagation. The budget applies the term `STEPS` times over the pool's kNN graph,
:math:`s_{t+1} = s_0 + \beta\,\mathrm{mean}_{N_k}(s_t)` (`propagate`), so a row also hears its
neighbours' neighbours. With beta < 1 the rounds converge to :math:`(I - \beta P)^{-1} s_0` (P the
row-normalised kNN matrix), a personalised-PageRank-style smoothing. The default is one round:
5 rounds over 20 neighbours ranked the general pool's harm better (harmful kept at 85% of benign
rows 6.0 -> 4.9 of 100 on the tuning draws) but, calibrated on held-out reference rows scored as
lone rows, dropped 0.4-1.5 more points of benign rows on the held-out sweep pools
(benchmarks/RESULTS.md, section selection_budget).

A held-out harmful reference row gets its neighbours in the pool exactly as an unseen pool row
would, and reads the scores that the last round read, so the budget's split calibration stays out
of sample (`sot_core.curate.budget`).
"""
from __future__ import annotations

import numpy as np

# Neighbours per row and the weight of their mean score (chosen on the tuning draws 0-9).
K = 10
BETA = 0.5
# Rounds of propagation over the pool's kNN graph (1: each row's own neighbours only).
STEPS = 1


def pool_neighbours(pool: np.ndarray, k: int = K, nearest=None) -> np.ndarray:
    """(n, min(k, n - 1)) indices of each pool row's nearest other pool rows (cosine, FAISS kNN).

    A row's own index is removed from its list (an exact duplicate of it may remain: it is
    another row). Returns an (n, 0) array for a pool of one row. `nearest`: the pool's
    `sot_core.ot.costs.NearestRows`, when the caller searches it more than once.
    """
    n = len(pool)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, 0), dtype=np.int64)
    idx = _nearest(pool, nearest).search(pool, k + 1)[1]
    own = idx == np.arange(n)[:, None]
    # drop the row itself where found, else the farthest of the k + 1 (ties can hide the row)
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(idx, dtype=bool)
    keep[np.arange(n), drop] = False
    return idx[keep].reshape(n, k)


def query_neighbours(x: np.ndarray, pool: np.ndarray, k: int = K, nearest=None) -> np.ndarray:
    """(len(x), min(k, n)) indices of the pool rows nearest to each row of `x` (rows not in the pool)."""
    k = min(k, len(pool))
    if k <= 0 or len(x) == 0:
        return np.zeros((len(x), 0), dtype=np.int64)
    return _nearest(pool, nearest).search(x, k)[1]


def _nearest(pool: np.ndarray, nearest):
    from sot_core.ot.costs import NearestRows

    return nearest if nearest is not None else NearestRows(pool)


def propagate(pool_scores: np.ndarray, neighbours: np.ndarray, beta: float = BETA,
              steps: int = STEPS) -> tuple[np.ndarray, np.ndarray]:
    r"""`steps` rounds of :math:`s_{t+1} = s_0 + \beta\,\mathrm{mean}_{N_k}(s_t)` over the pool's kNN graph.

    Returns (s_T, s_{T-1}): the pool's scores after the last round, and the scores that round read,
    which a row outside the pool (a held-out reference row, an anchor row) averages over its pool
    neighbours, as that round did for a pool row. With steps = 1 this is `add_neighbourhood` once
    (s_{T-1} = s_0); with beta < 1 the rounds converge (the mean is a contraction).
    """
    s0 = np.asarray(pool_scores, dtype=np.float64)
    current, previous = s0, s0
    for _ in range(steps):
        previous, current = current, add_neighbourhood(s0, neighbours, current, beta)
    return current, previous


def add_neighbourhood(scores: np.ndarray, neighbours: np.ndarray, pool_scores: np.ndarray,
                      beta: float = BETA) -> np.ndarray:
    """s + beta * mean of `pool_scores` over each row's `neighbours` (unchanged when there are none)."""
    scores = np.asarray(scores, dtype=np.float64)
    if neighbours.shape[1] == 0 or beta == 0:
        return scores
    return scores + beta * np.asarray(pool_scores, dtype=np.float64)[neighbours].mean(axis=1)
