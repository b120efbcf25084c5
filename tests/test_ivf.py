"""The IVF index of large harmful references: results against the exact (brute-force) search.

Synthetic clustered unit vectors (a harmful reference is clustered by topic); the switch point is
lowered from 100,000 rows so the test runs in seconds. The exact reference is a NumPy brute force.
"""
from __future__ import annotations

import numpy as np
import pytest

from sot_core.ot import costs
from sot_core.ot.costs import KnnCost, cosine_costs


def clustered(n: int, dim: int, centres: np.ndarray, rng) -> np.ndarray:
    x = centres[rng.integers(len(centres), size=n)] + 0.35 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32)) / np.sqrt(32) * 2
    return clustered(1500, 32, centres, rng), clustered(20_000, 32, centres, rng)


def test_ivf_neighbours_match_the_exact_search(data, monkeypatch):
    pool, ref = data
    k = 16
    exact = cosine_costs(pool, ref, k=k)
    monkeypatch.setattr(costs, "IVF_MIN_ROWS", 10_000)
    approx = cosine_costs(pool, ref, k=k)
    assert isinstance(approx, KnnCost)
    brute = np.argsort(-(pool @ ref.T), axis=1)[:, :k]  # independent reference: NumPy brute force
    assert np.mean([len(set(a) & set(b)) / k for a, b in zip(exact.indices, brute)]) > 0.999
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(approx.indices, brute)])
    assert recall >= 0.95, recall
    # every kept entry is the true cost of its pair, and the k-th cost is close to the exact one
    np.testing.assert_allclose(approx.costs, 1 - np.take_along_axis(pool @ ref.T, approx.indices, axis=1), atol=1e-5)
    kth_error = approx.costs[:, -1] - exact.costs[:, -1]  # >= 0: a missed neighbour makes the k-th farther
    assert kth_error.min() >= -1e-5 and np.quantile(kth_error, 0.99) < 0.01 and kth_error.max() < 0.05
    assert (approx.indices >= 0).all() and approx.n_targets == len(ref)


def test_exact_search_below_the_switch(data, monkeypatch):
    pool, ref = data
    calls = []
    import faiss

    monkeypatch.setattr(faiss, "IndexIVFFlat", lambda *a: calls.append(a))
    cosine_costs(pool[:100], ref, k=8)
    assert calls == []  # 20,000 reference rows < IVF_MIN_ROWS: the flat index


def test_ivf_from_the_switch_on(data, monkeypatch):
    """A reference of exactly IVF_MIN_ROWS rows gets the IVF index (the switch is 'at this many
    rows'); the index holds every reference row."""
    import faiss

    _, ref = data
    ref = ref[:2000]
    monkeypatch.setattr(costs, "IVF_MIN_ROWS", len(ref))
    index = costs._knn_index(faiss, ref)
    assert isinstance(index, faiss.IndexIVFFlat) and index.ntotal == len(ref)
    assert index.nlist == int(4 * np.sqrt(len(ref))) and index.nprobe == min(costs.IVF_NPROBE, index.nlist)
    monkeypatch.setattr(costs, "IVF_MIN_ROWS", len(ref) + 1)
    assert isinstance(costs._knn_index(faiss, ref), faiss.IndexFlatIP)
