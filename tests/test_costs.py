"""Cosine cost construction: dense FAISS path, kNN-sparse path, input validation."""
import numpy as np
import pytest

from sot_core.ot import costs as costs_mod
from sot_core.ot.costs import KnnCost, cosine_costs


def unit_rows(rng, n, d):
    v = rng.normal(size=(n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    return unit_rows(rng, 37, 16), unit_rows(rng, 23, 16)


def test_dense_equals_one_minus_inner_product(xy, monkeypatch):
    x, y = xy
    monkeypatch.setattr(costs_mod, "_ROW_BLOCK", 8)  # exercise block boundaries
    C = cosine_costs(x, y)
    assert C.dtype == np.float32 and C.shape == (37, 23)
    np.testing.assert_allclose(C, 1.0 - x.astype(np.float64) @ y.T.astype(np.float64), atol=1e-6)


def test_knn_matches_dense_top_k(xy, monkeypatch):
    x, y = xy
    monkeypatch.setattr(costs_mod, "_ROW_BLOCK", 10)
    dense = cosine_costs(x, y)
    knn = cosine_costs(x, y, k=5)
    assert isinstance(knn, KnnCost) and knn.indices.dtype == np.int64
    assert knn.indices.shape == knn.costs.shape == (37, 5) and knn.n_targets == 23
    np.testing.assert_allclose(np.sort(dense, axis=1)[:, :5], knn.costs, atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(dense, knn.indices, axis=1), knn.costs, atol=1e-6)
    assert (np.diff(knn.costs, axis=1) >= -1e-7).all()  # ascending


def test_knn_full_k_covers_every_column(xy):
    x, y = xy
    knn = cosine_costs(x, y, k=23)
    assert all(sorted(row) == list(range(23)) for row in knn.indices)


@pytest.mark.parametrize("bad,message", [
    ("nan", "x contains NaN or Inf"), ("norm", "x row 0 has norm 2.0000"), ("dim", "x has dim 16 but y has dim 8"),
    ("k0", r"k=0 must be in \[1, m=23\]"), ("kbig", r"k=24 must be in \[1, m=23\]"), ("1d", "x must be a 2-D"),
    ("empty", "x has no rows"), ("ynorm", "y row 2 has norm 1.0100"), ("knn_norm", "x row 12 has norm 1.0100"),
    ("block_norm", "x row 12 has norm 1.0100")])
def test_invalid_inputs_raise(xy, bad, message, monkeypatch):
    """Each bad input is refused with its own message (the row named is the bad one, also past
    the first row block and on the kNN path)."""
    x, y = xy
    kwargs = {}
    monkeypatch.setattr(costs_mod, "_ROW_BLOCK", 8)
    if bad == "nan":
        x = x.copy(); x[3, 2] = np.nan
    elif bad == "norm":
        x = x * 2.0
    elif bad == "dim":
        y = y[:, :8]
    elif bad == "k0":
        kwargs["k"] = 0
    elif bad == "kbig":
        kwargs["k"] = 24
    elif bad == "1d":
        x = x[0]
    elif bad == "empty":
        x = x[:0]
    elif bad == "ynorm":
        y = y.copy(); y[2] *= 1.01
    elif bad in ("knn_norm", "block_norm"):
        x = x.copy(); x[12] *= 1.01
        kwargs["k"] = 5 if bad == "knn_norm" else None
    with pytest.raises(ValueError, match=message):
        cosine_costs(x, y, **kwargs)


def test_unit_norm_tolerance_is_1e_3(xy):
    """Rows within 1e-3 of unit norm are accepted (float32 rounding upstream), rows beyond are not."""
    x, y = xy
    near, far = x.copy(), x.copy()
    near[0] *= 1.0005
    far[0] *= 1.0015
    assert cosine_costs(near, y).shape == (37, 23)
    with pytest.raises(ValueError, match="x row 0 has norm 1.0015"):
        cosine_costs(far, y)


def test_smallest_inputs_one_row_and_k_1(xy):
    x, y = xy
    assert cosine_costs(x[:1], y).shape == (1, 23)
    knn = cosine_costs(x, y, k=1)
    np.testing.assert_allclose(knn.costs[:, 0], cosine_costs(x, y).min(axis=1), atol=1e-6)


def test_knn_index_holds_every_reference_row(xy):
    import faiss

    index = costs_mod._knn_index(faiss, xy[1])
    assert index.ntotal == 23 and isinstance(index, faiss.IndexFlatIP)


def test_knncost_validation():
    with pytest.raises(ValueError):
        KnnCost(indices=np.zeros((3, 2), np.int64), costs=np.zeros((3, 3), np.float32), n_targets=4)
    with pytest.raises(ValueError):
        KnnCost(indices=np.zeros((3, 2), np.int64), costs=np.zeros((3, 2), np.float32),
                n_targets=4, missing="zero")
    knn = KnnCost(indices=np.zeros((3, 2), np.int64), costs=np.zeros((3, 2), np.float32), n_targets=4)
    assert knn.shape == (3, 4)
    one = KnnCost(indices=np.zeros((3, 1), np.int64), costs=np.zeros((3, 1), np.float32), n_targets=4)
    assert one.shape == (3, 4) and one.missing == "kth"  # k = 1 is allowed, k = 0 is not
    with pytest.raises(ValueError, match=r"k=0 must be in \[1, n_targets=4\]"):
        KnnCost(indices=np.zeros((3, 0), np.int64), costs=np.zeros((3, 0), np.float32), n_targets=4)


def test_knn_fill_is_the_exact_mean_of_the_missing_costs(xy, monkeypatch):
    """cosine_costs(k=...) records each row's mean missing cost, from sum_j C_ij = m - <x_i, sum y>,
    and makes "mean" the rule for the missing entries; a KnnCost without it falls back to "kth"."""
    x, y = xy
    monkeypatch.setattr(costs_mod, "_ROW_BLOCK", 10)
    dense = cosine_costs(x, y).astype(np.float64)
    knn = cosine_costs(x, y, k=5)
    assert knn.missing == "mean" and knn.fill.shape == (37,)
    kept = np.zeros_like(dense, dtype=bool)
    np.put_along_axis(kept, knn.indices, True, axis=1)
    missing_mean = np.where(kept, 0.0, dense).sum(axis=1) / (23 - 5)
    np.testing.assert_allclose(knn.fill, missing_mean, atol=1e-5)
    assert (knn.fill >= knn.costs[:, -1]).all()
    np.testing.assert_allclose(cosine_costs(x, y, k=23).fill, dense.max(axis=1), atol=1e-6)  # nothing missing
    stored = KnnCost(indices=knn.indices, costs=knn.costs, n_targets=23)  # e.g. reloaded without fill
    assert stored.missing == "kth"
    with pytest.raises(ValueError, match="fill"):
        KnnCost(indices=knn.indices, costs=knn.costs, n_targets=23, missing="mean")
    with pytest.raises(ValueError, match="fill"):
        KnnCost(indices=knn.indices, costs=knn.costs, n_targets=23, fill=knn.fill[:-1])
