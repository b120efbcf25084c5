"""Cosine cost matrices between a pool and a reference set, dense or kNN-sparse.

The OT solver (`sot_core.ot.push_pull`) needs costs C_ij = 1 - <x_i, y_j> for unit vectors, which
lie in [0, 2]. Up to ~10^5 x 10^4 entries a dense float32 matrix fits in memory; beyond that we
keep, for every pool row, only its k nearest reference rows (`KnnCost`). Both paths go through
FAISS inner products and work in row blocks, so the only large allocation is the output itself.
FAISS is imported when costs are built, not with this module: the solver needs `KnnCost` only,
and imports without FAISS.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Rows of x handled per FAISS call: bounds the (block, m) temporary to ~64 MB at m = 5k.
_ROW_BLOCK = 4096  # pragma: no mutate: rows per FAISS call, memory and speed only
# The kNN search switches from exact to an IVF index at this many reference rows; IVF recall
# against the exact search: tests/test_ivf.py (synthetic clustered data).
IVF_MIN_ROWS = 100_000
IVF_NPROBE = 32
IVF_TRAIN_ROWS = 100_000
# Unit-norm check tolerance: float32 embeddings normalised upstream are within ~1e-6.
_NORM_TOL = 1e-3


@dataclass
class KnnCost:
    """kNN-sparse cosine cost: for each pool row i, its k nearest reference rows.

    Attributes
    ----------
    indices : np.ndarray, shape (n, k), int64
        Column (reference row) index of each kept entry; distinct within a row.
    costs : np.ndarray, shape (n, k), float32
        C_ij = 1 - <x_i, y_j> for the kept entries, ascending along each row when built by
        `cosine_costs`.
    n_targets : int
        m, the number of reference rows (columns of the full cost).
    missing : {"mean", "kth", "inf"}, optional
        How the solver treats the m - k entries a row did not keep. Default: "mean" when
        `fill` is given (as `cosine_costs` does), else "kth".

        * ``"mean"``: every missing entry takes `fill`, the exact mean of the row's missing
          costs. For unit vectors the row's total cost is known without the dense matrix,
          sum_j C_ij = m - <x_i, sum_j y_j>, so the mean costs one inner product per row. The
          support stays complete (always feasible) and exact for k = m. Measured on the
          `benchmarks.ot_scaling` data (5,000 x 5,000, the paper's size, eps 0.1, k = 64): OT
          value error 2.3% against 11.8% for "kth"; the push-pull weights 0.016 from the dense
          solve in L1 against 0.042, keep-80% selections 99.5% equal against 97.2%
          (benchmarks/RESULTS.md, ot_scaling).
        * ``"kth"``: every missing entry takes the row's largest kept cost C_ik, a lower bound
          on its true cost (the kept entries are the k smallest), which overstates the kernel
          mass of the tail. The fallback when the row means are unknown (a `KnnCost` built
          from indices and costs alone).
        * ``"inf"``: missing entries have cost +inf, i.e. kernel exp(-C/eps) = 0. This is the
          textbook sparse approximation; its error per row is the kernel mass of the dropped
          entries, at most (m - k) * exp(-C_ik / eps) relative to exp(-C_i1 / eps), so it
          vanishes as k -> m or eps -> 0. Its weakness: a reference row that is nobody's
          neighbour gets no mass at all (the solver drops it and renormalises b), and a row
          reachable only from pool rows of tiny weight makes the transport problem infeasible.
    fill : np.ndarray, shape (n,), float32, optional
        Mean cost of each row's missing entries (the "mean" rule); `cosine_costs` sets it.
        Anything that stores a `KnnCost` must store it too, or reloads fall back to "kth".
    """

    indices: np.ndarray
    costs: np.ndarray
    n_targets: int
    missing: str | None = None
    fill: np.ndarray | None = None

    def __post_init__(self):
        if self.indices.shape != self.costs.shape or self.indices.ndim != 2:
            raise ValueError(
                f"KnnCost: indices {self.indices.shape} and costs {self.costs.shape} must be "
                "the same (n, k) shape")
        if self.missing is None:
            self.missing = "mean" if self.fill is not None else "kth"
        if self.missing not in ("mean", "kth", "inf"):
            raise ValueError(f"KnnCost.missing must be 'mean', 'kth' or 'inf', got {self.missing!r}")
        if not 0 < self.indices.shape[1] <= self.n_targets:
            raise ValueError(f"KnnCost: k={self.indices.shape[1]} must be in [1, n_targets="
                             f"{self.n_targets}]")
        if self.fill is not None and np.shape(self.fill) != (self.indices.shape[0],):
            raise ValueError(f"KnnCost: fill must have shape ({self.indices.shape[0]},), got {np.shape(self.fill)}")
        if self.missing == "mean" and self.fill is None:
            raise ValueError("KnnCost: missing='mean' needs fill, the mean cost of each row's missing entries")

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the full cost matrix this approximates, (n, m)."""
        return (self.indices.shape[0], self.n_targets)


def _as_unit_float32(name: str, v: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(v, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (rows, dim) array, got shape {v.shape}")
    if v.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    return v


def _check_block(name: str, start: int, block: np.ndarray) -> None:
    # Checked per block so a 1M-row pool never needs a second full-size temporary.
    if not np.isfinite(block).all():
        raise ValueError(f"{name} contains NaN or Inf (rows {start}..{start + len(block) - 1})")
    norms = np.sqrt(np.einsum("ij,ij->i", block, block))
    bad = np.flatnonzero(np.abs(norms - 1.0) > _NORM_TOL)
    if bad.size:
        raise ValueError(
            f"{name} row {start + bad[0]} has norm {norms[bad[0]]:.4f}; cosine costs need "
            "unit-norm rows (normalise the embeddings first)")


def cosine_costs(x: np.ndarray, y: np.ndarray, k: int | None = None) -> np.ndarray | KnnCost:
    """Cosine costs C_ij = 1 - <x_i, y_j> between unit-norm rows, dense or kNN-sparse.

    Parameters
    ----------
    x : np.ndarray, shape (n, d)
        Pool embeddings, unit L2 norm (float32; other float dtypes are converted).
    y : np.ndarray, shape (m, d)
        Reference embeddings, unit L2 norm.
    k : int, optional
        None: return the dense (n, m) float32 matrix. An int in [1, m]: keep, for every row of
        x, the k nearest rows of y (exact search with a FAISS ``IndexFlatIP``, on GPU when
        ``faiss.get_num_gpus() > 0``) and return a `KnnCost`.

    Returns
    -------
    np.ndarray of shape (n, m), float32, or KnnCost

    Raises
    ------
    ValueError
        Mismatched dimensions, NaN/Inf, rows that are not unit norm, or k outside [1, m].

    Notes
    -----
    Costs lie in [0, 2] up to float32 rounding (an exact duplicate can give -1e-7). Memory is
    the output plus one (4096, m) block; the dense output is n * m * 4 bytes.
    """
    x = _as_unit_float32("x", x)
    y = _as_unit_float32("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x has dim {x.shape[1]} but y has dim {y.shape[1]}")
    m = y.shape[0]
    _check_block("y", 0, y)
    if k is not None:
        k = int(k)
        if not 1 <= k <= m:
            raise ValueError(f"k={k} must be in [1, m={m}]")
    return _dense_costs(x, y) if k is None else _knn_costs(x, y, k)


def _dense_costs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The full (n, m) float32 cost, one FAISS inner-product block of rows of x at a time."""
    import faiss  # lazy: see the module docstring

    out = np.empty((x.shape[0], y.shape[0]), dtype=np.float32)
    for start in range(0, x.shape[0], _ROW_BLOCK):
        block = x[start:start + _ROW_BLOCK]
        _check_block("x", start, block)
        ip = faiss.pairwise_distances(block, y, faiss.METRIC_INNER_PRODUCT)
        np.subtract(1.0, ip, out=out[start:start + len(block)])
    return out


def _knn_index(faiss, y: np.ndarray):
    r"""A FAISS inner-product index of `y`: exact (``IndexFlatIP``) below `IVF_MIN_ROWS` rows, else an
    inverted file (``IndexIVFFlat``) with :math:`n_{list} = 4\sqrt{m}` k-means cells (trained on at
    most `IVF_TRAIN_ROWS` rows) of which `IVF_NPROBE` nearest are searched per query; on all GPUs
    when FAISS has any."""
    m, dim = y.shape
    if m < IVF_MIN_ROWS:
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = int(4 * np.sqrt(m))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)  # a fixed sample: the same reference gives the same index
        index.train(y[np.sort(rng.choice(m, size=min(m, IVF_TRAIN_ROWS), replace=False))])
        index.nprobe = min(IVF_NPROBE, nlist)
    if faiss.get_num_gpus() > 0:  # only GPU builds of faiss have this; faiss-cpu reports 0
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(y)
    return index


class NearestRows:
    """The rows of `y` in a FAISS index (`_knn_index`), built once and searched for any rows.

    Building is the costly part for a large `y` (the IVF k-means takes ~40 s at 10^5 rows on
    2 cores), so callers that search one set several times keep one `NearestRows`.

    Parameters
    ----------
    y : np.ndarray, shape (m, d)
        Unit-norm rows (float32; other float dtypes are converted).
    """

    def __init__(self, y: np.ndarray):
        import faiss  # lazy: see the module docstring

        self._faiss = faiss
        self.y = _as_unit_float32("y", y)
        _check_block("y", 0, self.y)
        self.index = _knn_index(faiss, self.y)

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, indices), each (len(x), k), of the k rows of y nearest to each row of
        `x`, by decreasing similarity. A row for which the probed IVF cells hold fewer than k
        rows is searched exactly."""
        x = _as_unit_float32("x", x)
        sims = np.empty((len(x), k), dtype=np.float32)
        idx = np.empty((len(x), k), dtype=np.int64)
        for start in range(0, len(x), _ROW_BLOCK):
            block = x[start:start + _ROW_BLOCK]
            _check_block("x", start, block)
            s, i = self.index.search(block, k)
            short = np.flatnonzero((i < 0).any(axis=1))
            if len(short):
                s[short], i[short] = self._faiss.knn(block[short], self.y, k, metric=self._faiss.METRIC_INNER_PRODUCT)
            sims[start:start + len(block)], idx[start:start + len(block)] = s, i
        return sims, idx


def _knn_costs(x: np.ndarray, y: np.ndarray, k: int) -> KnnCost:
    """k nearest rows of y per row of x: exact (FAISS ``IndexFlatIP``) or, for a reference of
    `IVF_MIN_ROWS` rows or more, approximate (IVF, `_knn_index`); on all GPUs when FAISS has any."""
    n, m = x.shape[0], y.shape[0]
    sims, indices = NearestRows(y).search(x, k)  # sorted by decreasing similarity
    costs = np.subtract(1.0, sims, out=sims)  # in place: one (n, k) array, not two
    kth = costs[:, -1].astype(np.float64)
    fill = kth.astype(np.float32)  # k = m: nothing is missing
    if k < m:  # mean of the missing costs; each is >= the k-th and <= 2 (rounding aside)
        y_sum = y.sum(axis=0, dtype=np.float64)  # sum_j C_ij = m - <x_i, y_sum>
        for start in range(0, n, _ROW_BLOCK):  # blockwise: no float64 copy of a large pool
            rows = slice(start, start + _ROW_BLOCK)
            missing_sum = m - x[rows].astype(np.float64) @ y_sum - costs[rows].sum(axis=1, dtype=np.float64)
            fill[rows] = np.clip(missing_sum / (m - k), kth[rows], 2.0)
    return KnnCost(indices=indices, costs=costs, n_targets=m, fill=fill)
