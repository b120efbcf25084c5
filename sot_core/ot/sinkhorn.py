r"""Log-domain Sinkhorn for entropic OT with the KL(P | a (x) b) regulariser, dense or kNN-sparse.

Problem (Feydy et al. 2019, "Interpolating between OT and MMD using Sinkhorn divergences";
the GeomLoss convention)

.. math::
    \mathrm{OT}_\varepsilon(a, b) = \min_{P \in \Pi(a, b)} \langle C, P \rangle
        + \varepsilon\, \mathrm{KL}(P \,|\, a \otimes b)

with dual potentials (f, g) and the log-domain updates

.. math::
    f_i = -\varepsilon \log \sum_j b_j \exp((g_j - C_{ij}) / \varepsilon), \qquad
    g_j = -\varepsilon \log \sum_i a_i \exp((f_i - C_{ij}) / \varepsilon),

optimal plan :math:`P_{ij} = a_i b_j \exp((f_i + g_j - C_{ij}) / \varepsilon)` and value
:math:`\langle a, f \rangle + \langle b, g \rangle` (plan-free: the dual's mass term vanishes
after any half-step).

Why KL(P | a (x) b) and not POT's -H(P): both give the same plan, but with -H(P) the a-potential
is :math:`f + \varepsilon \log a`, so the gradient of the value in a carries
:math:`\varepsilon \log a`. In a push (maximise OT to a harmful set) that term rewards points
whose weight is already small to shrink further and fights the transport signal; with the KL
convention :math:`\nabla_a \mathrm{OT}_\varepsilon = f` exactly (envelope theorem), so the
gradient is pure geometry.

Memory stays linear in n: dense costs are read in row blocks of ~2M entries (no n x m
temporary), kNN costs are gathered/scattered per row block.

References
----------
Cuturi (2013), Sinkhorn distances. Schmitzer (2019), Stabilized sparse scaling algorithms for
entropy regularized transport problems (log domain, epsilon scaling). Feydy et al. (2019), AISTATS.
Peyre & Cuturi (2019), Computational Optimal Transport, section 4.4.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from sot_core.models.device import resolve_device
from sot_core.ot.operators import make_operator

#: The solver's floating point types, by the names configurations use.
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Epsilon scaling multiplies eps by this factor per annealing step (one Sinkhorn iteration each).
_EPS_SCALING_FACTOR = 0.5


@dataclass
class SinkhornState:
    """Potentials and convergence record of one solve (torch tensors on the solver device)."""

    f: torch.Tensor
    g: torch.Tensor
    value: float
    marginal_error: float
    n_iter: int
    converged: bool


def sinkhorn_potentials(op, log_a: torch.Tensor, log_b: torch.Tensor, eps: float, *,
                        g_init: torch.Tensor | None = None, tol: float = 1e-4,
                        max_iter: int = 1000, eps_start: float | None = None,
                        on_iter: Callable[[int, float], None] | None = None) -> SinkhornState:
    """Core loop on prepared tensors; see `sinkhorn_log` for the maths.

    Each iteration is an f-update (rows exact) then a g-update; the marginal error is the L1
    column error of the plan (f, g_old), read off the g-update for free:
    sum_j b_j |exp((g_old_j - g_new_j) / eps) - 1|. With ``eps_start`` > eps and no warm start,
    eps is annealed from eps_start by halving, one iteration per level (epsilon scaling), which
    avoids the slow start of small-eps Sinkhorn from zero potentials. ``on_iter(n_iter, err)``
    is called after every iteration (err is inf during epsilon scaling); it may raise to stop
    the solve (a time budget).
    """
    if op.col_support is not None:
        log_b = torch.where(op.col_support, log_b, torch.full_like(log_b, -math.inf))
        log_b = log_b - torch.logsumexp(log_b, dim=0)
    b = torch.exp(log_b)
    g = torch.zeros(op.m, dtype=log_a.dtype, device=log_a.device) if g_init is None else g_init
    n_iter = 0

    def half_steps(e: float, g_cur: torch.Tensor):
        f_new = -e * op.row_lse(log_b + g_cur / e, e)
        g_new = -e * op.col_lse(log_a + f_new / e, e)
        if op.col_support is not None:  # dropped columns: keep g finite, b_j = 0 mutes them
            g_new = torch.where(op.col_support, g_new, torch.zeros_like(g_new))
        return f_new, g_new

    if g_init is None and eps_start is not None:
        level = eps_start
        while level > eps:
            _, g = half_steps(level, g)
            n_iter += 1
            level *= _EPS_SCALING_FACTOR
            if on_iter is not None:
                on_iter(n_iter, math.inf)

    err, f = math.inf, None
    for _ in range(max(1, max_iter)):
        f, g_new = half_steps(eps, g)
        err = float((b * torch.expm1((g - g_new) / eps).abs()).sum())
        g = g_new
        n_iter += 1
        if err <= tol:
            break
        if on_iter is not None:
            on_iter(n_iter, err)
    a = torch.exp(log_a)
    value = float((a.double() * f.double()).sum() + (b.double() * g.double()).sum())
    return SinkhornState(f=f, g=g, value=value, marginal_error=err, n_iter=n_iter,
                         converged=err <= tol)


@dataclass
class SinkhornResult:
    """Output of `sinkhorn_log` (numpy, float64).

    Attributes
    ----------
    f : np.ndarray, shape (n,)
        Source potential; equals the gradient of OT_eps in a (KL convention).
    g : np.ndarray, shape (m,)
        Target potential.
    value : float
        OT_eps(a, b) = <a, f> + <b, g>.
    marginal_error : float
        L1 error of the plan's column marginal at the last iteration (rows are exact).
    n_iter : int
    converged : bool
        marginal_error <= tol.
    """

    f: np.ndarray
    g: np.ndarray
    value: float
    marginal_error: float
    n_iter: int
    converged: bool


def sinkhorn_log(a, b, C, eps: float, *, g_init=None, tol: float = 1e-4, max_iter: int = 1000,
                 eps_scaling: bool = True, dtype: str = "float32",
                 device: str = "auto") -> SinkhornResult:
    r"""Entropic OT with the KL(P | a (x) b) regulariser, log-domain Sinkhorn.

    Solves :math:`\min_{P \in \Pi(a,b)} \langle C, P\rangle + \varepsilon\,\mathrm{KL}(P|a\otimes b)`
    and returns the dual potentials, never the (n, m) plan.

    Parameters
    ----------
    a : array_like, shape (n,)
        Source weights, nonnegative, summing to 1.
    b : array_like, shape (m,)
        Target weights, nonnegative, summing to 1.
    C : np.ndarray or torch.Tensor of shape (n, m), or KnnCost
        Cost matrix (dense, read blockwise) or kNN-sparse cost.
    eps : float
        Entropic regularisation strength (> 0), in cost units.
    g_init : array_like, shape (m,), optional
        Warm-start target potential (e.g. from a nearby problem).
    tol : float
        Stop when the L1 marginal error is at most tol.
    max_iter : int
        Maximum number of Sinkhorn iterations (f- plus g-update).
    eps_scaling : bool
        Anneal eps from the cost spread on cold starts.
    dtype : {"float32", "float64"}
    device : str
        "auto" (CUDA when available), "cpu", "cuda", ...

    Returns
    -------
    SinkhornResult

    Notes
    -----
    The potentials are unique up to (f + c, g - c); the plan and value are not affected. Matches
    POT's ``ot.solve(C, a, b, reg=eps, reg_type="KL")`` value and ``ot.sinkhorn`` plan.

    References
    ----------
    Feydy et al. (2019); Peyre & Cuturi (2019), Computational Optimal Transport, eq. 4.43.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    dev, tdtype = resolve_device(device), DTYPES[dtype]
    op = make_operator(C, dev, tdtype)
    lo, hi = op.check_finite("C")
    log_a, log_b = _log_marginals(a, b, op, dev, tdtype)
    g0 = None if g_init is None else torch.as_tensor(np.asarray(g_init), device=dev).to(tdtype)
    state = sinkhorn_potentials(op, log_a, log_b, eps, g_init=g0, tol=tol, max_iter=max_iter,
                                eps_start=(hi - lo) if eps_scaling else None)
    return SinkhornResult(f=state.f.double().cpu().numpy(), g=state.g.double().cpu().numpy(),
                          value=state.value, marginal_error=state.marginal_error,
                          n_iter=state.n_iter, converged=state.converged)


def _log_marginals(a, b, op, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """log a and log b as tensors, after checking their shapes against the cost and their signs."""
    a = torch.as_tensor(np.asarray(a, dtype=np.float64), device=device).to(dtype)
    b = torch.as_tensor(np.asarray(b, dtype=np.float64), device=device).to(dtype)
    if a.shape != (op.n,) or b.shape != (op.m,):
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} do not match C {(op.n, op.m)}")
    if bool((a < 0).any()) or bool((b < 0).any()):
        raise ValueError("a and b must be nonnegative")
    return torch.log(a), torch.log(b)


@dataclass
class SemiRelaxedState(SinkhornState):
    """Solution of `semi_relaxed_potentials`: also the free marginal w (f is balanced-convention)."""

    log_w: torch.Tensor


def semi_relaxed_potentials(op, log_p: torch.Tensor, log_b: torch.Tensor, eps: float,
                            rho: float, *, g_init: torch.Tensor | None = None,
                            tol: float = 1e-4, max_iter: int = 1000,
                            on_iter: Callable[[int, float], None] | None = None) -> SemiRelaxedState:
    r"""Solve :math:`\min_w \mathrm{OT}_\varepsilon(w, b) + (\rho + \varepsilon)\,\mathrm{KL}(w | p')`.

    Rewriting :math:`\varepsilon\mathrm{KL}(P|w\otimes b) = \varepsilon\mathrm{KL}(P|u\otimes b)
    - \varepsilon\mathrm{KL}(w|u)` turns the problem into a jointly convex semi-relaxed OT
    problem (Chizat et al. 2018): :math:`\min_{P^\top 1 = b} \langle C, P\rangle
    + \varepsilon\mathrm{KL}(P|u\otimes b) + \rho\,\mathrm{KL}(P1 | p)` with
    :math:`\rho = \tau - \varepsilon > 0` and :math:`p \propto (p')^{\tau/\rho}`; the caller
    passes ``log_p`` directly. Scaling updates (contraction factor :math:`\rho/(\rho+\varepsilon)`
    on the f side, so fast even for small eps):

    .. math::
        f_i = \tfrac{\rho\varepsilon}{\rho+\varepsilon}\Big(\log\tfrac{p_i}{u_i}
              - \log\sum_j b_j e^{(g_j - C_{ij})/\varepsilon}\Big), \quad
        g_j = -\varepsilon\log\sum_i u_i e^{(f_i - C_{ij})/\varepsilon}, \quad
        w_i = p_i e^{-f_i/\rho}.

    Returns the balanced-convention potential :math:`f + \varepsilon\log(u/w)` (the gradient of
    :math:`\mathrm{OT}_\varepsilon(\cdot, b)` at w) and :math:`\mathrm{OT}_\varepsilon(w, b)`.
    The error is the L1 gap between the plan's row sums and :math:`p e^{-f/\rho}`.
    ``on_iter(n_iter, err)`` is called after every iteration, as in `sinkhorn_potentials`.
    """
    n = op.n
    log_u = torch.full((n,), -math.log(n), dtype=log_p.dtype, device=log_p.device)
    shrink = rho * eps / (rho + eps)
    g = torch.zeros(op.m, dtype=log_p.dtype, device=log_p.device) if g_init is None else g_init
    f, err, n_iter = None, math.inf, 0
    for _ in range(max_iter + 1):
        softmin = op.row_lse(log_b + g / eps, eps)
        if f is not None:
            plan_rows = log_u + f / eps + softmin
            wanted = log_p - f / rho
            err = float((torch.exp(plan_rows) - torch.exp(wanted)).abs().sum())
            if err <= tol or n_iter >= max_iter:
                break
        f = shrink * (log_p - log_u - softmin)
        g = -eps * op.col_lse(log_u + f / eps, eps)
        n_iter += 1
        if on_iter is not None:
            on_iter(n_iter, err)
    log_w = torch.log_softmax(log_p - f / rho, dim=0)
    f_balanced = f + eps * (log_u - log_w)
    w, b = torch.exp(log_w).double(), torch.exp(log_b).double()
    value = float((w * f_balanced.double()).sum() + (b * g.double()).sum())
    return SemiRelaxedState(log_w=log_w, f=f_balanced, g=g, value=value, marginal_error=err,
                            n_iter=n_iter, converged=err <= tol)
