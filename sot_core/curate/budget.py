r"""The harmful-row budget: how many rows to keep, calibrated on harmful rows the solve never saw.

A fixed keep fraction drops 20% of a clean pool and keeps half of a pool that is 40% harmful.
The budget instead finds the rows that score like held-out harmful rows and drops them.

Cross-fitting. The harmful reference is split into ``folds`` disjoint parts by a seeded
permutation (`reference_folds`). For each fold k the push-pull weights are solved with the
reference minus fold k, and every row x (pool rows, the held-out rows of fold k, the anchor) is
scored out of sample by the soft c-transforms of that solve's dual potentials:

.. math::
    s_k(x) = T_{\alpha}(x) - \lambda\, T_{\beta_{-k}}(x), \qquad
    T_b(x) = -\varepsilon \log \sum_j b_j \exp\big((g_j - C(x, y_j))/\varepsilon\big),

where :math:`g` is the reference-side potential of the entropic OT problem between the solved
weights w and the reference b (for a pool row, :math:`T_b(x_i)` is its Sinkhorn potential
:math:`f_i`, so :math:`s_k` is the solver's score up to a constant). A held-out harmful row is
thus scored exactly as an unseen harmful row of the pool would be.

The score. By default (``discriminant=True``) the fold's score adds to the standardised OT score
s_k the standardised logit of a logistic discriminant fitted in the same fold: the reference minus
fold k against the anchor and the pool's lower half by s_k (`sot_core.curate.discriminant`). The
OT score alone (``discriminant=False``) let benign rows near some reference row but far from the
small anchor score like harm; the sum drops fewer benign rows at the same recall (measured in
benchmarks/RESULTS.md, section selection_budget). Then (``neighbourhood=True``, the default) each
row's score gains half the mean fold score of its 10 nearest pool rows (`sot_core.curate.neighbours`,
one round of its propagation): a pool's harm comes in numbers and sits together, a benign row that
happens to look like one reference row mostly does not. Everything below holds for any of these scores.

Threshold. In fold k, :math:`P_k(x)` is the share of the fold's held-out rows that score at or
below x. The budget score is :math:`u(x) = \frac{1}{K}\sum_k P_k(x)` in [0, 1] (0: below every
held-out harmful row), and a row is *harmful-like* when :math:`u(x) > 1 - r` for the target
recall r (``harmful_recall``). Within a fold, a held-out row of rank q (of m) has
:math:`P_k = q/m`, so exactly :math:`m - \lfloor (1-r) m \rfloor \ge r\,m` of them exceed the
threshold: at least r of the held-out harmful rows would be dropped (`per_fold_recall` checks it).
The guarantee transfers to the pool's harmful rows only as far as they resemble the reference
(the usual exchangeability caveat of split calibration); the benchmarks measure how far.

Harm from another source. Harmful rows of the pool that the reference covers only loosely score
lower than the held-out reference rows (which have near neighbours in the fitted part), so the
recall guarantee can fail for them. A second, label-free rule catches them when they stand
apart from the pool: a row is also harmful-like when its cross-fitted score exceeds the pool's
median by more than `OUTLIER_SD` robust standard deviations (`outlier_threshold`). On the
bundled demo the held-out rule alone keeps 20 of its 100 harmful rows; with the outlier rule 0.

Estimated contamination = the share of pool rows that are harmful-like. It counts benign rows
that score like harm too, so it is an upper estimate on clean data, and it is what the nightly
flow compares batch to batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sot_core.curate.discriminant import CombinedScorer
from sot_core.curate.neighbours import add_neighbourhood, pool_neighbours, propagate, query_neighbours
from sot_core.errors import SotError

# Fewest harmful reference rows the budget can be calibrated on (each of 2 folds holds out half).
MIN_REFERENCE = 4
# Fewest held-out harmful rows per fold: below this a fold's quantile is too coarse to mean much.
MIN_FOLD_ROWS = 10
# Cross-fitting folds and the seed of the reference split (fixed: the same inputs give the same budget).
FOLDS = 5
SEED = 0
# Version of the stored cross-fit (part of its cache key). 3: the discriminant joins the score;
# 4: the pool-neighbourhood term joins it (one round of `neighbours.propagate`: the same scores).
FORMAT = 4
# The budget's score adds the logistic discriminant to the OT score (`sot_core.curate.discriminant`).
DISCRIMINANT = True
# ... and the mean score of each row's nearest pool rows (`sot_core.curate.neighbours`).
NEIGHBOURHOOD = True
# Robust standard deviations above the pool's median score at which a row is harmful-like anyway.
OUTLIER_SD = 4.0
# Rows scored at a time out of sample (bounds memory to SCORE_BLOCK x reference rows).
SCORE_BLOCK = 4096  # pragma: no mutate: rows per block, memory and speed only


class BudgetError(SotError, ValueError):
    """The budget cannot be calibrated on these inputs (too few harmful reference rows)."""


@dataclass
class Budget:
    """Result of `calibrate`.

    Attributes
    ----------
    budget_score : np.ndarray (n,)
        u(x) of every pool row, in [0, 1]; higher = scores like more of the held-out harmful rows.
    harmful_like : np.ndarray of bool (n,)
        u(x) > threshold: rows the budget drops.
    threshold : float
        1 - harmful_recall, on the budget score's scale.
    fold_thresholds : list of float
        Per fold, the OT score above which a row counts as harmful-like in that fold (the
        ceil(r m)-th largest held-out score): the threshold in the score's own units.
    per_fold_recall : list of float
        Share of each fold's held-out harmful rows that the threshold drops (>= harmful_recall).
    anchor_harmful_share : float
        Share of the safe anchor's rows that are harmful-like (a guard: should be near 0).
    """

    budget_score: np.ndarray
    harmful_like: np.ndarray
    threshold: float
    fold_thresholds: list
    per_fold_recall: list
    anchor_harmful_share: float
    folds: int
    harmful_recall: float
    outlier_threshold: float = float("inf")
    outliers: int = 0
    refusals_exempt: int = 0

    @property
    def contamination(self) -> float:
        """Estimated pool contamination: the share of pool rows that are harmful-like."""
        return float(self.harmful_like.mean()) if len(self.harmful_like) else 0.0

    def summary(self) -> dict:
        """JSON-able figures for run.json, report.md and the artifacts."""
        return {"harmful_recall": self.harmful_recall, "folds": self.folds, "threshold": self.threshold,
                "fold_score_thresholds": [float(t) for t in self.fold_thresholds],
                "held_out_recall": [float(r) for r in self.per_fold_recall],
                "estimated_contamination": self.contamination,
                "harmful_like_rows": int(self.harmful_like.sum()),
                "outlier_score_threshold": float(self.outlier_threshold), "outlier_rows": self.outliers,
                "refusals_exempt": self.refusals_exempt,
                "anchor_harmful_share": float(self.anchor_harmful_share)}


def reference_folds(n_ref: int, folds: int, seed: int = 0) -> np.ndarray:
    """Fold id (0..folds-1) of every reference row: a seeded permutation cut into near-equal parts.

    Deterministic for a given (n_ref, folds, seed); the folds are disjoint and cover every row.
    """
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    perm = np.random.default_rng(seed).permutation(n_ref)
    fold = np.empty(n_ref, dtype=np.int64)
    fold[perm] = np.arange(n_ref) % folds
    return fold


def cluster_folds(x: np.ndarray, folds: int, seed: int = 0, per_fold: int = 4, iters: int = 25) -> np.ndarray:
    """Fold id of every reference row such that near rows share a fold (leave-cluster-out).

    Spherical k-means (seeded, `per_fold` clusters per fold) groups the reference; whole clusters
    are dealt to the folds, largest first, each to the fold with the fewest rows so far. A held-out
    fold then holds harm that the fitted part does not cover closely, as a pool's harm from another
    source would be; a random split would score held-out rows against their near duplicates.
    """
    n = len(x)
    k = min(n, folds * per_fold)
    rng = np.random.default_rng(seed)
    centres = x[rng.choice(n, k, replace=False)].astype(np.float64)
    for _ in range(iters):
        assign = np.argmax(x @ centres.T, axis=1)
        for c in range(k):
            members = x[assign == c]
            if len(members):
                v = members.sum(axis=0)
                centres[c] = v / max(np.linalg.norm(v), 1e-12)
    assign = np.argmax(x @ centres.T, axis=1)
    sizes = np.bincount(assign, minlength=k)
    fold_of_cluster, load = np.zeros(k, dtype=np.int64), np.zeros(folds)
    for c in np.argsort(-sizes, kind="stable"):
        fold_of_cluster[c] = int(np.argmin(load))
        load[fold_of_cluster[c]] += sizes[c]
    return fold_of_cluster[assign]


def usable_folds(n_ref: int, folds: int) -> int:
    """The folds actually used: fewer when the reference is too small for `MIN_FOLD_ROWS` per fold."""
    return max(2, min(folds, n_ref // MIN_FOLD_ROWS))


def soft_c_transform(cost: np.ndarray, g: np.ndarray, log_b: np.ndarray, eps: float) -> np.ndarray:
    r""":math:`T(x) = -\varepsilon \log \sum_j b_j \exp((g_j - C(x, y_j))/\varepsilon)` per row of `cost`."""
    z = (g[None, :] - cost) / eps + log_b[None, :]
    top = z.max(axis=1, keepdims=True)
    return -eps * (top[:, 0] + np.log(np.exp(z - top).sum(axis=1)))


def _cos_cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - x.astype(np.float64) @ y.astype(np.float64).T, 0.0, 2.0)


def _solve_cost(x: np.ndarray, y: np.ndarray):
    """Costs for a fold's solve: dense when small, kNN-sparse (as the pipeline's costs stage) when large."""
    from sot_core.curate.pipeline import DEFAULT_KNN, DENSE_LIMIT
    from sot_core.ot.costs import cosine_costs

    big = len(x) * len(y) > DENSE_LIMIT and len(y) > DEFAULT_KNN
    return cosine_costs(x, y, k=DEFAULT_KNN if big else None)


class FoldScorer:
    """Out-of-sample OT score of one push-pull solve (see the module docstring).

    Solves the weights on (pool, anchor, reference part), then the two entropic OT problems between
    those weights and each side once more to get the reference-side potentials g.
    """

    def __init__(self, pool: np.ndarray, anchor: np.ndarray | None, reference: np.ndarray, config,
                 anchor_masses: np.ndarray | None = None):
        from sot_core.ot.push_pull import solve_push_pull
        from sot_core.ot.sinkhorn import sinkhorn_log

        cfg = config.push_pull()
        self.eps, self.lam, self.mode = cfg.eps, cfg.lam, cfg.mode
        self.anchor, self.reference = anchor, reference
        cost_a = _solve_cost(pool, anchor) if self.mode != "push" else None
        cost_h = _solve_cost(pool, reference) if self.mode != "pull" else None
        w = solve_push_pull(cost_a, cost_h, cfg, anchor_weights=anchor_masses).weights.astype(np.float64)
        w = np.maximum(w, 1e-300) / w.sum()
        self.sides = {}
        if cost_a is not None:
            a = np.full(len(anchor), 1.0 / len(anchor)) if anchor_masses is None else anchor_masses / anchor_masses.sum()
            g = sinkhorn_log(w, a, cost_a, self.eps, dtype="float64", device="cpu").g
            self.sides["anchor"] = (anchor, g, np.log(np.maximum(a, 1e-300)))
        if cost_h is not None:
            b = np.full(len(reference), 1.0 / len(reference))
            g = sinkhorn_log(w, b, cost_h, self.eps, dtype="float64", device="cpu").g
            self.sides["harmful"] = (reference, g, np.log(b))

    def score(self, x: np.ndarray) -> np.ndarray:
        """s(x) = T_anchor(x) - lam * T_harmful(x) (one term in modes 'pull' and 'push'); higher = more harmful-like."""
        out = np.zeros(len(x))
        for lo in range(0, len(x), SCORE_BLOCK):  # blockwise: never an (n, m) float64 matrix of a large pool
            block = x[lo:lo + SCORE_BLOCK]
            for side, sign in (("anchor", 1.0), ("harmful", -self.lam)):
                if side in self.sides:
                    y, g, log_b = self.sides[side]
                    out[lo:lo + SCORE_BLOCK] += sign * soft_c_transform(_cos_cost(block, y), g, log_b, self.eps)
        return out


def fold_threshold(held_out_scores: np.ndarray, recall: float) -> float:
    """The ceil(recall m)-th largest held-out score: rows scoring at or above it are dropped."""
    s = np.sort(np.asarray(held_out_scores))[::-1]
    return float(s[int(np.ceil(recall * len(s) - 1e-9)) - 1])


def share_at_or_below(scores: np.ndarray, held_out: np.ndarray) -> np.ndarray:
    """P(x): share of the held-out scores at or below each of `scores`."""
    ref = np.sort(held_out)
    return np.searchsorted(ref, scores, side="right") / len(ref)


@dataclass
class CrossFit:
    """What the cross-fitted solves measured, independent of the target recall (cached by the pipeline).

    ``pool_shares`` (folds, n) and ``anchor_shares`` (folds, m) hold P_k(x); ``held_out`` the
    held-out rows' scores of each fold.
    """

    pool_shares: np.ndarray
    anchor_shares: np.ndarray
    held_out: list
    pool_scores: np.ndarray

    def save(self, folder) -> None:
        from pathlib import Path

        np.save(Path(folder) / "pool_shares.npy", self.pool_shares)
        np.save(Path(folder) / "anchor_shares.npy", self.anchor_shares)
        np.save(Path(folder) / "pool_scores.npy", self.pool_scores)
        np.savez(Path(folder) / "held_out.npz", *self.held_out)

    FILES = ("pool_shares.npy", "anchor_shares.npy", "held_out.npz", "pool_scores.npy")

    @classmethod
    def complete(cls, folder) -> bool:
        from pathlib import Path

        return all((Path(folder) / f).exists() for f in cls.FILES)

    @classmethod
    def load(cls, folder) -> "CrossFit":
        from pathlib import Path

        held = np.load(Path(folder) / "held_out.npz")
        return cls(np.load(Path(folder) / "pool_shares.npy"), np.load(Path(folder) / "anchor_shares.npy"),
                   [held[f"arr_{i}"] for i in range(len(held.files))], np.load(Path(folder) / "pool_scores.npy"))


def cross_fit(pool: np.ndarray, anchor: np.ndarray | None, harmful: np.ndarray, config, folds: int = 5,
              seed: int = 0, anchor_masses: np.ndarray | None = None, check_anchor_rows: int | None = None,
              discriminant: bool = DISCRIMINANT, neighbourhood: bool = NEIGHBOURHOOD) -> CrossFit:
    """The cross-fitted solves of `calibrate`: P_k of every pool and anchor row, held-out scores per fold.

    Parameters
    ----------
    pool, anchor, harmful : np.ndarray
        Unit-norm embeddings of the pool, the (possibly composite) safe anchor and the harmful reference.
    config : CurateConfig
        Supplies the solver settings (lam, eps, mode, tau...).
    folds : int
        Cross-fitting folds (fewer when the reference has under `MIN_FOLD_ROWS` rows per fold).
    seed : int
        Seeds the split of the reference: the same inputs always give the same budget.
    anchor_masses : np.ndarray, optional
        Masses of a composite anchor (task rows, then refusal rows).
    check_anchor_rows : int, optional
        The first rows of the anchor that the anchor guard looks at (the task anchor of a
        composite one, whose refusal rows answer harmful prompts by design); default all.
    discriminant : bool
        Add the fold's logistic discriminant to the OT score (`DISCRIMINANT`, the default).
    neighbourhood : bool
        Add the mean score of each row's nearest pool rows (`NEIGHBOURHOOD`, the default).
    """
    if len(harmful) < MIN_REFERENCE:
        raise BudgetError(f"the harmful-row budget needs at least {MIN_REFERENCE} harmful reference rows to hold "
                          f"some out, the reference has {len(harmful)}: give a larger --harmful-ref, or "
                          "--harmful-recall 0 with a numeric --keep")
    k = usable_folds(len(harmful), folds)
    fold = reference_folds(len(harmful), k, seed)
    shares, anchor_shares, held_out, scores = [], [], [], []
    checked = anchor[:check_anchor_rows] if anchor is not None else None
    if neighbourhood:  # neighbours in the pool of every row scored; the fold's scores are averaged over them
        from sot_core.ot.costs import NearestRows

        index = NearestRows(pool)  # one index for the three searches (an IVF build is most of a search's cost)
        near = (pool_neighbours(pool, nearest=index), query_neighbours(harmful, pool, nearest=index),
                query_neighbours(checked, pool, nearest=index) if checked is not None else None)
    for f in range(k):
        scorer = FoldScorer(pool, anchor, harmful[fold != f], config, anchor_masses)
        if discriminant:
            scorer = CombinedScorer(scorer, pool, anchor, harmful[fold != f], seed)
        held, pool_s = scorer.score(harmful[fold == f]), scorer.score(pool)
        anchor_s = scorer.score(checked) if checked is not None else np.zeros(0)
        if neighbourhood:
            pool_s, read = propagate(pool_s, near[0])
            held = add_neighbourhood(held, near[1][fold == f], read)
            anchor_s = add_neighbourhood(anchor_s, near[2], read) if checked is not None else anchor_s
        held_out.append(held)
        scores.append(pool_s)
        shares.append(share_at_or_below(pool_s, held))
        anchor_shares.append(share_at_or_below(anchor_s, held) if checked is not None else np.zeros(0))
    return CrossFit(np.array(shares), np.array(anchor_shares), held_out, np.mean(scores, axis=0))


def outlier_threshold(scores: np.ndarray, k: float = None) -> float:
    r"""Score above which a row stands out from the pool's bulk toward harm: median + k * 1.4826 * MAD.

    1.4826 MAD estimates the bulk's standard deviation robustly (it ignores a minority of harmful
    rows), and k = `OUTLIER_SD` = 4 flags about 3 in 100,000 rows of a normal bulk.
    """
    k = OUTLIER_SD if k is None else k
    med = float(np.median(scores))
    return med + k * 1.4826 * float(np.median(np.abs(scores - med)))


def apply_recall(fit: CrossFit, harmful_recall: float) -> Budget:
    """The budget for target recall r: rows with u(x) > 1 - r are harmful-like."""
    if not 0 < harmful_recall < 1:
        raise ValueError(f"harmful_recall must be in (0, 1), got {harmful_recall}")
    cut = 1.0 - harmful_recall
    u = fit.pool_shares.mean(axis=0)
    anchor_u = fit.anchor_shares.mean(axis=0)
    recalls = [float((share_at_or_below(h, h) > cut).mean()) for h in fit.held_out]
    outlier_cut = outlier_threshold(fit.pool_scores)
    outliers = fit.pool_scores > outlier_cut
    return Budget(budget_score=u, harmful_like=(u > cut) | outliers, threshold=cut, outlier_threshold=outlier_cut,
                  outliers=int(outliers.sum()),
                  fold_thresholds=[fold_threshold(h, harmful_recall) for h in fit.held_out],
                  per_fold_recall=recalls, anchor_harmful_share=float((anchor_u > cut).mean()) if len(anchor_u) else 0.0,
                  folds=len(fit.held_out), harmful_recall=harmful_recall)


def calibrate(pool: np.ndarray, anchor: np.ndarray | None, harmful: np.ndarray, config, harmful_recall: float,
              folds: int = 5, seed: int = 0, anchor_masses: np.ndarray | None = None,
              discriminant: bool = DISCRIMINANT, neighbourhood: bool = NEIGHBOURHOOD) -> Budget:
    """Cross-fitted harmful-row budget of a pool (see the module docstring): `cross_fit`, then `apply_recall`."""
    return apply_recall(cross_fit(pool, anchor, harmful, config, folds, seed, anchor_masses,
                                  discriminant=discriminant, neighbourhood=neighbourhood), harmful_recall)
