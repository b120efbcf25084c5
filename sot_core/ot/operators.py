r"""Soft-min reductions over a cost matrix, the only way the Sinkhorn solvers touch a cost.

For a cost :math:`C \in \mathbb{R}^{n \times m}`, a regularisation :math:`\varepsilon > 0` and
log-weights :math:`\beta \in \mathbb{R}^m`, :math:`\alpha \in \mathbb{R}^n`, an operator computes

.. math::
    \mathrm{row\_lse}(\beta)_i = \log \sum_j \exp(\beta_j - C_{ij}/\varepsilon), \qquad
    \mathrm{col\_lse}(\alpha)_j = \log \sum_i \exp(\alpha_i - C_{ij}/\varepsilon),

shapes (n,) and (m,): one half-step of log-domain Sinkhorn each. `DenseCostOperator` reads a
dense cost in row blocks of ~2M entries (no n x m temporary; on CPU the input is read in place),
and switches to a precomputed Gibbs kernel when that is exact in floating point.
`KnnCostOperator` works on a `KnnCost` (k kept entries per row) with the `missing` rule of that
cost for the other m - k entries. `make_operator` picks one.

References
----------
Schmitzer (2019), Stabilized sparse scaling algorithms for entropy regularized transport
problems, SIAM J. Sci. Comput. (log-domain, sparse kernels). Peyre & Cuturi (2019),
Computational Optimal Transport, section 4.4.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from sot_core.ot.costs import KnnCost

# Entries of a cost block per log-sum-exp call: large enough to amortise Python overhead,
# small enough that the block (8 MB in float32) stays near cache.
_BLOCK_ELEMS = 1 << 21
# Gibbs-kernel fast path: largest (hi - lo) / eps per dtype with no underflow, and memory cap.
_KERNEL_SPAN = {torch.float32: 40.0, torch.float64: 600.0}
_KERNEL_MAX_BYTES = 1 << 30


class DenseCostOperator:
    """Blockwise soft-min reductions over a dense (n, m) cost. CPU: zero-copy view of the input."""

    def __init__(self, cost, device: torch.device, dtype: torch.dtype):
        cost = cost if torch.is_tensor(cost) else torch.from_numpy(np.ascontiguousarray(cost))
        if cost.ndim != 2:
            raise ValueError(f"dense cost must be 2-D (n, m), got shape {tuple(cost.shape)}")
        # On CPU the input is read in place and cast per block; on GPU it must live there anyway.
        self.cost = cost if device.type == "cpu" else cost.to(device=device, dtype=dtype)
        self.dtype, self.device = dtype, device
        self.n, self.m = cost.shape
        self.rows_per_block = max(1, _BLOCK_ELEMS // max(self.m, 1))
        self.col_support = None
        self.lo = self.hi = None  # cost range, set by check_finite
        self._kernel = None  # (eps, K) with K = exp((lo - C) / eps)
        self._eps_calls: dict[float, int] = {}

    def _blocks(self):
        for start in range(0, self.n, self.rows_per_block):
            stop = min(start + self.rows_per_block, self.n)
            yield start, stop, self.cost[start:stop].to(self.dtype)

    def kernel(self, eps: float) -> torch.Tensor | None:
        """The Gibbs kernel exp((lo - C)/eps) when it is safe and worth it, else None.

        With it, each soft-min is one matrix-vector product instead of an exp per entry (about
        10x faster on CPU). Safe because every kernel entry is >= exp(-span) with
        span = (hi - lo) / eps, and each sum has a term with weight 1 (the shifted maximum), so
        no sum can underflow: float32 while span <= 40, float64 while span <= 600; beyond
        that (small eps) the log-domain path is used. The scaling vector exp(beta - max beta)
        is exponentiated in the kernel's dtype: a float32 solve with a float64 kernel (40 <
        span <= 600) would otherwise lose every term below exp(-103), often the dominant ones.
        Built on the second call with the same eps, so the one-iteration levels of epsilon
        scaling do not pay for it.
        """
        if self._kernel is not None and self._kernel[0] == eps:
            return self._kernel[1]
        self._eps_calls[eps] = self._eps_calls.get(eps, 0) + 1
        if self._eps_calls[eps] < 2:
            return None
        if self.lo is None:
            self.check_finite("cost")
        span = (self.hi - self.lo) / eps
        candidates = (torch.float32, torch.float64) if self.dtype == torch.float32 else (torch.float64,)
        for kdtype in candidates:
            itemsize = torch.finfo(kdtype).bits // 8
            if span <= _KERNEL_SPAN[kdtype] and self.n * self.m * itemsize <= _KERNEL_MAX_BYTES:
                K = torch.empty((self.n, self.m), dtype=kdtype, device=self.device)
                for start, stop, block in self._blocks():
                    K[start:stop] = torch.exp((self.lo - block.to(kdtype)) / eps)
                self._kernel = (eps, K)
                return K
        return None

    def check_finite(self, name: str) -> tuple[float, float]:
        """Raise on NaN/Inf; return (min, max) of the cost (for epsilon scaling)."""
        lo, hi = math.inf, -math.inf
        for start, stop, block in self._blocks():
            bmin, bmax = torch.aminmax(block)
            bmin, bmax = float(bmin), float(bmax)
            if not (math.isfinite(bmin) and math.isfinite(bmax)):
                raise ValueError(f"{name} contains NaN or Inf (rows {start}..{stop - 1})")
            lo, hi = min(lo, bmin), max(hi, bmax)
        self.lo, self.hi = lo, hi
        return lo, hi

    def row_lse(self, beta: torch.Tensor, eps: float) -> torch.Tensor:
        """out_i = log sum_j exp(beta_j - C_ij / eps), shape (n,)."""
        K = self.kernel(eps)
        if K is not None:
            shift = beta.max()
            sums = torch.mv(K, torch.exp(beta.to(K.dtype) - shift))
            return torch.log(sums).to(self.dtype) + (shift - self.lo / eps)
        out = torch.empty(self.n, dtype=self.dtype, device=self.device)
        for start, stop, block in self._blocks():
            out[start:stop] = torch.logsumexp(torch.sub(beta, block, alpha=1.0 / eps), dim=1)
        return out

    def col_lse(self, alpha: torch.Tensor, eps: float) -> torch.Tensor:
        """out_j = log sum_i exp(alpha_i - C_ij / eps), shape (m,)."""
        K = self.kernel(eps)
        if K is not None:
            shift = alpha.max()
            sums = torch.mv(K.t(), torch.exp(alpha.to(K.dtype) - shift))
            return torch.log(sums).to(self.dtype) + (shift - self.lo / eps)
        acc = torch.full((self.m,), -math.inf, dtype=self.dtype, device=self.device)
        for start, stop, block in self._blocks():
            part = torch.sub(alpha[start:stop, None], block, alpha=1.0 / eps)
            acc = torch.logaddexp(acc, torch.logsumexp(part, dim=0))
        return acc


class KnnCostOperator:
    """Soft-min reductions over a `KnnCost` (k kept entries per row, see its `missing` rule)."""

    def __init__(self, knn: KnnCost, device: torch.device, dtype: torch.dtype):
        self.indices = torch.from_numpy(np.ascontiguousarray(knn.indices, dtype=np.int64)).to(device)
        self.cost = torch.from_numpy(np.ascontiguousarray(knn.costs)).to(device=device, dtype=dtype)
        self.dtype, self.device = dtype, device
        self.n, self.k = self.indices.shape
        self.m = int(knn.n_targets)
        self.rows_per_block = max(1, _BLOCK_ELEMS // self.k)
        # "mean" / "kth": every missing entry of row i costs tail_cost_i, the mean of its missing
        # costs / its largest kept cost. None: "inf", or nothing missing (k = m).
        self.tail_cost = None
        if self.k < self.m and knn.missing == "mean":
            self.tail_cost = torch.from_numpy(np.ascontiguousarray(knn.fill)).to(device=device, dtype=dtype)
        elif self.k < self.m and knn.missing == "kth":
            self.tail_cost = self.cost.amax(dim=1)
        self.col_support = None
        if self.tail_cost is None and self.k < self.m:
            hits = torch.bincount(self.indices.reshape(-1), minlength=self.m)
            if bool((hits == 0).any()):
                self.col_support = hits > 0  # columns nobody reaches are dropped, b renormalised

    def check_finite(self, name: str) -> tuple[float, float]:
        """Raise on NaN/Inf costs or out-of-range indices; return (min, max) of the kept costs."""
        if not bool(torch.isfinite(self.cost).all()):
            raise ValueError(f"{name} contains NaN or Inf")
        if self.tail_cost is not None and not bool(torch.isfinite(self.tail_cost).all()):
            raise ValueError(f"{name}.fill contains NaN or Inf")
        lo_idx, hi_idx = int(self.indices.min()), int(self.indices.max())
        if lo_idx < 0 or hi_idx >= self.m:
            raise ValueError(f"{name}.indices must lie in [0, {self.m}), got [{lo_idx}, {hi_idx}]")
        return float(self.cost.min()), float(self.cost.max())

    def _blocks(self):
        for start in range(0, self.n, self.rows_per_block):
            stop = min(start + self.rows_per_block, self.n)
            yield start, stop, self.indices[start:stop], self.cost[start:stop]

    def row_lse(self, beta: torch.Tensor, eps: float) -> torch.Tensor:
        """out_i = log sum_j exp(beta_j - C_ij / eps) over kept entries (+ the missing ones unless "inf")."""
        out = torch.empty(self.n, dtype=self.dtype, device=self.device)
        if self.tail_cost is not None:
            # Missing mass of row i = (sum over all j) - (sum over kept j), in float64 because
            # the difference can be small next to the total.
            shift = beta.max()
            scaled = torch.exp((beta - shift).double())
            total = scaled.sum()
        for start, stop, idx, cost in self._blocks():
            kept = torch.logsumexp(torch.sub(beta[idx], cost, alpha=1.0 / eps), dim=1)
            if self.tail_cost is not None:
                rest = (total - scaled[idx].sum(dim=1)).clamp_min(0.0)
                tail = (torch.log(rest) + shift).to(self.dtype) - self.tail_cost[start:stop] / eps
                kept = torch.logaddexp(kept, tail)
            out[start:stop] = kept
        return out

    def col_lse(self, alpha: torch.Tensor, eps: float) -> torch.Tensor:
        """out_j = log sum_i exp(alpha_i - C_ij / eps) over kept entries (+ the missing ones unless "inf")."""
        # Two passes: per-column max first (scatter amax) so the exponentials cannot overflow.
        col_max = torch.full((self.m,), -math.inf, dtype=self.dtype, device=self.device)
        for start, stop, idx, cost in self._blocks():
            vals = torch.sub(alpha[start:stop, None], cost, alpha=1.0 / eps)
            col_max.scatter_reduce_(0, idx.reshape(-1), vals.reshape(-1), reduce="amax")
        safe_max = torch.where(torch.isfinite(col_max), col_max, torch.zeros_like(col_max))
        sums = torch.zeros(self.m, dtype=self.dtype, device=self.device)
        for start, stop, idx, cost in self._blocks():
            vals = torch.sub(alpha[start:stop, None], cost, alpha=1.0 / eps)
            sums.index_add_(0, idx.reshape(-1), torch.exp(vals - safe_max[idx]).reshape(-1))
        out = torch.log(sums) + safe_max
        if self.tail_cost is not None:
            h = alpha - self.tail_cost / eps
            shift = h.max()
            scaled = torch.exp((h - shift).double())
            kept = torch.zeros(self.m, dtype=torch.float64, device=self.device)
            for start, stop, idx, _ in self._blocks():
                kept.index_add_(0, idx.reshape(-1),
                                scaled[start:stop, None].expand(-1, self.k).reshape(-1))
            rest = (scaled.sum() - kept).clamp_min(0.0)
            out = torch.logaddexp(out, (torch.log(rest) + shift).to(self.dtype))
        return out


def make_operator(cost, device: torch.device, dtype: torch.dtype):
    """The operator for `cost`: `KnnCostOperator` for a `KnnCost`, else `DenseCostOperator`."""
    if isinstance(cost, KnnCost):
        return KnnCostOperator(cost, device, dtype)
    return DenseCostOperator(cost, device, dtype)
