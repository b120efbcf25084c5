r"""The discriminative half of the harmful-row budget's score (issue 14).

Why. The OT score of a row compares it with the safe anchor and the harmful reference through soft
nearest neighbours. A task anchor is small (50 rows in the paper's setting), so a benign row far
from every anchor row but topically near some reference row (a cocktail recipe near drug recipes,
a password generator near credential theft) scores like harm, and the budget's threshold, set on
held-out reference rows, then drops it. A linear discriminant sees the whole reference at once and
learns which directions of the embedding separate harm from safe rows of *this* pool.

The discriminant. L2-regularised, class-balanced logistic regression (Newton's method, the bias not
shrunk) with the reference rows as positives and, as negatives, the anchor rows plus the pool rows
that the OT score puts in its lower half. A pool's harm is a minority that scores high, so those
rows are safe with few exceptions; a pool that is mostly harm-like breaks this, which the budget's
"mostly harmful-like" warning reports. At most `MAX_NEGATIVES` pool rows are used (a seeded draw):
the fit stays a few (d+1)^2 solves on any pool.

The budget's score. Each part is standardised on the pool (median and 1.4826 MAD, robust to the
harmful minority) and the two are added:

.. math:: s(x) = \frac{s_{OT}(x) - m_{OT}}{\sigma_{OT}} + \frac{\ell(x) - m_\ell}{\sigma_\ell},

with :math:`\ell` the discriminant's logit. The budget fits both parts per cross-fitting fold
without the fold's reference rows, so a held-out harmful row is scored as an unseen pool row would
be (`sot_core.curate.budget`). Measured against the OT score alone: benchmarks/RESULTS.md, section
selection_budget.
"""
from __future__ import annotations

import numpy as np

from sot_core.logistic import fit_logistic

# Ridge strength of the logistic fit (on unit-norm embeddings; 1.0 was better than 0.1 on the tuning draws).
L2 = 1.0
# Share of the pool, by OT score from the bottom, used as safe examples.
SAFE_QUANTILE = 0.5
# Most pool rows used as safe examples (a seeded draw beyond this).
MAX_NEGATIVES = 20_000
NEWTON_ITERS = 30


def robust_scale(scores: np.ndarray) -> tuple[float, float]:
    """(median, 1.4826 MAD) of `scores`; the standard deviation stands in when the MAD is 0."""
    med = float(np.median(scores))
    mad = 1.4826 * float(np.median(np.abs(scores - med)))
    return med, (mad if mad > 1e-12 else float(np.std(scores)) or 1.0)


class CombinedScorer:
    """Budget score = standardised OT score + standardised discriminant logit (module docstring).

    Parameters
    ----------
    ot_scorer : object with ``score(x) -> np.ndarray``
        The fold's OT scorer (`sot_core.curate.budget.FoldScorer`).
    pool, anchor, reference : np.ndarray
        Unit-norm embeddings; `reference` is the fold's fitted part of the harmful reference.
    seed : int
        Seeds the draw of safe pool rows when there are more than `MAX_NEGATIVES`.
    """

    def __init__(self, ot_scorer, pool: np.ndarray, anchor: np.ndarray | None, reference: np.ndarray, seed: int = 0):
        self.ot = ot_scorer
        pool_ot = ot_scorer.score(pool)
        safe = np.flatnonzero(pool_ot <= np.quantile(pool_ot, SAFE_QUANTILE))
        if len(safe) > MAX_NEGATIVES:
            safe = np.sort(np.random.default_rng(seed).choice(safe, MAX_NEGATIVES, replace=False))
        negatives = pool[safe] if anchor is None else np.vstack([anchor, pool[safe]])
        x = np.vstack([reference, negatives])
        self.coef = fit_logistic(x, np.r_[np.ones(len(reference)), np.zeros(len(negatives))], L2, NEWTON_ITERS)
        self.ot_scale = robust_scale(pool_ot)
        self.logit_scale = robust_scale(self.logit(pool))

    def logit(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.coef[:-1] + self.coef[-1]

    def score(self, x: np.ndarray) -> np.ndarray:
        """Higher = more harmful-like."""
        (m_ot, s_ot), (m_l, s_l) = self.ot_scale, self.logit_scale
        return (self.ot.score(x) - m_ot) / s_ot + (self.logit(x) - m_l) / s_l
