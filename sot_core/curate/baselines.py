"""Instance-level baselines that score each pool row alone (higher = more harmful-like).

They are what SOT must beat: each looks at one pool row at a time, where OT weighs the pool as a
distribution against both references. Inputs are unit-norm embeddings: pool (n, d), anchor
(m_a, d), harmful (m_h, d).
"""
from __future__ import annotations

import numpy as np


def random_score(pool: np.ndarray, anchor: np.ndarray, harmful: np.ndarray, seed: int = 0) -> np.ndarray:
    """Uniform random scores (seeded): the floor every method must clear."""
    return np.random.default_rng(seed).random(len(pool))


def _max_similarity(x: np.ndarray, refs: np.ndarray, block: int = 8192) -> np.ndarray:
    out = np.empty(len(x), dtype=np.float32)
    for s in range(0, len(x), block):  # blocks keep the n x m temporary bounded
        out[s : s + block] = (x[s : s + block] @ refs.T).max(axis=1)
    return out


def max_cosine_harmful(pool, anchor, harmful) -> np.ndarray:
    """Representation matching (He et al. 2024): similarity to the nearest harmful example."""
    return _max_similarity(pool, harmful)


def bidirectional(pool, anchor, harmful) -> np.ndarray:
    """Nearest-harmful similarity minus nearest-anchor similarity."""
    return _max_similarity(pool, harmful) - _max_similarity(pool, anchor)


def centroid_difference(pool, anchor, harmful) -> np.ndarray:
    """Projection on the direction from the anchor centroid to the harmful centroid."""
    return pool @ (harmful.mean(axis=0) - anchor.mean(axis=0))


def classifier(pool, anchor, harmful, l2: float = 1e-2, steps: int = 200) -> np.ndarray:
    """Class-balanced logistic regression, anchor (0) versus harmful (1); the score is the logit.

    L2-penalised (``l2 * |w|^2``), fitted with L-BFGS in float64.
    """
    import torch  # lazy: the other baselines are plain NumPy

    x = torch.from_numpy(np.concatenate([anchor, harmful])).double()
    y = torch.cat([torch.zeros(len(anchor)), torch.ones(len(harmful))]).double()
    sample_w = torch.where(y == 1, 0.5 / len(harmful), 0.5 / len(anchor)).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = x @ w + b
        loss = (sample_w * torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()
        loss = loss + l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (torch.from_numpy(pool).double() @ w + b).numpy()


BASELINES = {
    "random": random_score,
    "max_cosine_harmful": max_cosine_harmful,
    "bidirectional": bidirectional,
    "centroid_difference": centroid_difference,
    "classifier": classifier,
}
