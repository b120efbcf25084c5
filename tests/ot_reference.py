r"""Independent reference for the push-pull objective: POT (float64) potentials and values.

See `tests/test_push_pull_reference.py` for the derivation of the first-order condition
:math:`w \propto \exp(-(f_\alpha - \lambda f_\beta)/\tau)` that `stationarity_gap` measures.
Nothing here imports the solver.
"""
from __future__ import annotations

import warnings

import numpy as np
import ot as pot
from scipy.special import logsumexp


def cosine_cost(rng, n: int, m: int, d: int = 6, shift: np.ndarray | None = None) -> np.ndarray:
    """1 - <x, y> for random unit rows (the solver's cost family), float64."""
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d)) + (0 if shift is None else shift)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return 1.0 - x @ y.T


def pot_ot(w: np.ndarray, b: np.ndarray, C: np.ndarray, eps: float) -> tuple[np.ndarray, float]:
    """(f, value) of OT_eps(w, b) with the KL(P | w x b) regulariser, in float64.

    POT's log-domain Sinkhorn gives the target potential (KL convention g = eps (log v - log b));
    `newton_polish` then maximises the m-dimensional semi-dual to machine precision, because
    Sinkhorn stalls where the plan saturates (a pool row whose weight equals an anchor row's
    mass: POT stopped at marginal error 3e-7 after 200,000 iterations on such a 5 x 4 problem).
    f_i = -eps log sum_j b_j exp((g_j - C_ij)/eps) (centred) and value = <w, f> + <b, g>.
    """
    w, b, C = (np.asarray(x, dtype=np.float64) for x in (w, b, C))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "did not converge": the polish finishes it
        _, log = pot.sinkhorn(w, b, C, eps, method="sinkhorn_log", numItermax=2000, stopThr=1e-14, log=True)
    g = newton_polish(w, b, C, eps, eps * (log["log_v"] - np.log(b)))
    f = -eps * logsumexp(np.log(b)[None, :] + (g[None, :] - C) / eps, axis=1)
    value = float(w @ f + b @ g)
    return f - f.mean(), value


def semi_dual(g, w, b, C, eps):
    """Semi-dual D(g) = <b, g> + <w, f(g)>, its gradient b - P^T 1 and Hessian (concave in g)."""
    z = np.log(b)[None, :] + (g[None, :] - C) / eps
    lse = logsumexp(z, axis=1)
    pi = np.exp(z - lse[:, None])  # row-conditional plan
    col = w @ pi
    hess = -(np.einsum("i,ij->j", w, pi)[:, None] * np.eye(len(g)) - (w[:, None] * pi).T @ pi) / eps
    return float(b @ g - eps * (w @ lse)), b - col, hess


def newton_polish(w, b, C, eps, g, iters: int = 100):
    """Damped Newton ascent on the semi-dual (g defined up to a constant: least-squares steps)."""
    value, grad, hess = semi_dual(g, w, b, C, eps)
    for _ in range(iters):
        if np.abs(grad).sum() < 1e-15:
            break
        step = np.linalg.lstsq(-hess, grad, rcond=1e-14)[0]
        t = 1.0
        while t > 1e-12:
            trial = semi_dual(g + t * step, w, b, C, eps)
            if trial[0] >= value - 1e-15 * abs(value):
                break
            t *= 0.5
        g = g + t * step
        value, grad, hess = trial
    assert np.abs(grad).sum() < 1e-10, f"reference did not converge: marginal error {np.abs(grad).sum():.3g}"
    return g


def gradient_is_resolvable(w, b, C, eps) -> bool:
    """Whether float64 can pin the gradient f of OT_eps(., b) at w: f moves by < 1e-6 when w
    moves by 1e-9 (relative).

    Not so where the plan nearly splits into blocks (a pool row whose weight equals an anchor
    row's mass and sends all of it there, coupled to the rest by exp(-gap/eps) ~ 1e-15): OT_eps
    is then kinked to working precision, the minimiser sits on the kink (as minimisers of convex
    functions do) and no gradient-based reference can certify it; a 4 x 3 problem at eps 0.03
    gave reference gradients differing by 0.4 and finite differences drifting with the step.
    The property test leaves such draws out (`assume`)."""
    rng = np.random.default_rng(0)
    f0 = pot_ot(w, b, C, eps)[0]
    nudged = w * (1 + 1e-9 * rng.standard_normal(len(w)))
    return bool(np.abs(pot_ot(nudged / nudged.sum(), b, C, eps)[0] - f0).max() < 1e-6)


def uniform(m: int) -> np.ndarray:
    return np.full(m, 1.0 / m)


def pot_terms(w, cost_anchor, cost_harmful, eps, anchor_b=None) -> tuple[tuple | None, tuple | None]:
    """POT's (potential, value) of the anchor and harmful problems at w; None for a missing cost."""
    anchor = harmful = None
    if cost_anchor is not None:
        b = uniform(cost_anchor.shape[1]) if anchor_b is None else anchor_b / anchor_b.sum()
        anchor = pot_ot(w, b, cost_anchor, eps)
    if cost_harmful is not None:
        harmful = pot_ot(w, uniform(cost_harmful.shape[1]), cost_harmful, eps)
    return anchor, harmful


def objective(w, cost_anchor, cost_harmful, lam, eps, tau, anchor_b=None) -> float:
    """J(w) recomputed with POT; a missing cost drops its term (modes 'push' and 'pull')."""
    anchor, harmful = pot_terms(w, cost_anchor, cost_harmful, eps, anchor_b)
    j = tau * float(np.sum(w * np.log(len(w) * w)))
    if anchor is not None:
        j += anchor[1]
    if harmful is not None:
        j -= lam * harmful[1]
    return j


def gradient_score(w, cost_anchor, cost_harmful, lam, eps, anchor_b=None) -> np.ndarray:
    """f_anchor - lam * f_harmful at w (a missing cost contributes nothing), from POT."""
    anchor, harmful = pot_terms(w, cost_anchor, cost_harmful, eps, anchor_b)
    s = np.zeros(len(w))
    if anchor is not None:
        s += anchor[0]
    if harmful is not None:
        s -= lam * harmful[0]
    return s


def gibbs(score: np.ndarray, tau: float) -> np.ndarray:
    z = -(score - score.min()) / tau
    p = np.exp(z)
    return p / p.sum()


def stationarity_gap(w, cost_anchor, cost_harmful, lam, eps, tau, anchor_b=None) -> float:
    """L1 distance between w and the Gibbs distribution of the POT gradient at w: zero exactly at
    a stationary point of J on the simplex."""
    return float(np.abs(gibbs(gradient_score(w, cost_anchor, cost_harmful, lam, eps, anchor_b), tau) - w).sum())
