"""Class-balanced, L2-regularised logistic regression by Newton's method: the fit shared by the
learned refusal judge (`sot_core.eval.judges`) and the budget's discriminant
(`sot_core.curate.discriminant`). Small d (an embedding) and any n: each step is one (d+1)^2 solve."""
from __future__ import annotations

import numpy as np


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 30) -> np.ndarray:
    """Coefficients (d + 1, bias last) of a class-balanced L2 logistic regression, by Newton's method.

    Each class carries half of the total sample weight, so a class much larger or smaller than the
    other does not shift the fit; the bias is not shrunk. `x` is (n, d) without a bias column.
    """
    xb = np.hstack([np.asarray(x, dtype=np.float64), np.ones((len(x), 1))])
    y = np.asarray(y, dtype=np.float64)
    if not 0 < y.mean() < 1:
        raise ValueError("a logistic fit needs examples of both classes")
    sw = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    reg = l2 * np.eye(xb.shape[1])
    reg[-1, -1] = 0.0
    w = np.zeros(xb.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -50, 50)))
        grad = xb.T @ (sw * (p - y)) + reg @ w
        hess = (xb * (sw * p * (1 - p))[:, None]).T @ xb + reg
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w
