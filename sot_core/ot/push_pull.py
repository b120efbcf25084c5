r"""Push-pull optimal transport weights for SOT (Safety Optimal Transport, arXiv 2601.07200).

One weight vector w on the simplex over a pool of n rows solves

.. math::
    \min_{w \in \Delta_n}\; J(w) = \mathrm{OT}_\varepsilon(w, \alpha)
        - \lambda\, \mathrm{OT}_\varepsilon(w, \beta) + \tau\, \mathrm{KL}(w \,|\, u_n)

where :math:`\alpha` is the uniform safe anchor (pull), :math:`\beta` the uniform harmful
reference (push), :math:`u_n` the uniform weights and :math:`\mathrm{OT}_\varepsilon` entropic OT
with the KL(P | w (x) b) regulariser (see `sot_core.ot.sinkhorn` for why that convention).

Gradient. By the envelope theorem :math:`\nabla_w \mathrm{OT}_\varepsilon(w, b) = f`, the
w-side Sinkhorn potential, so :math:`\nabla F = f_\alpha - \lambda f_\beta` (the "score").

Why a prior. :math:`-\lambda\,\mathrm{OT}_\varepsilon(w, \beta)` is concave in w: plain mirror
descent on it concentrates w on a few points. Raising w_i lowers the harmful potential g of
its neighbours by up to :math:`\varepsilon` per unit of :math:`\log w_i`, which lowers the
score of i by up to :math:`\lambda\varepsilon` per unit: a self-reinforcing loop. The entropic
prior :math:`\tau\,\mathrm{KL}(w|u_n)` adds :math:`\tau` of restoring force per unit of
:math:`\log w`, so for :math:`\tau > \lambda\varepsilon` the loop is damped and the stationary
point :math:`w \propto \exp(-\nabla F(w)/\tau)` is well defined and non-degenerate.

Algorithm (DCA / convex-concave procedure, a mirror-descent scheme with exact prox steps).
J is convex (pull + prior) minus convex (push). Each outer step linearises the push at the
current iterate and solves the remaining convex problem exactly:

.. math::
    w^{t+1} = \arg\min_w \mathrm{OT}_\varepsilon(w, \alpha) - \lambda\langle \bar f^t, w\rangle
              + \tau\,\mathrm{KL}(w|u_n), \qquad
    \bar f^t = (1-s)\,\bar f^{t-1} + s\, f_\beta(w^t),

a semi-relaxed OT problem solved by scaling iterations (`semi_relaxed_potentials`, needs
:math:`\tau > \varepsilon`). s = ``step_size`` (default 1: plain DCA, which decreases J
monotonically) damps the push linearisation. We do not take plain mirror-descent steps on J:
measured on clustered sentence-like embeddings, the pull term is stiff (its potentials move by
far more than :math:`\varepsilon` per unit of :math:`\log w` when the anchor is small), and
explicit steps of size 1/tau oscillated forever while steps of 0.1/tau were still oscillating
after 40 iterations. At the solution, :math:`w = \mathrm{softmax}(-(f_\alpha -
\lambda \bar f)/\tau)`. Mode 'push' has no anchor term and the step is the closed form
:math:`w^{t+1} = \mathrm{softmax}(\lambda \bar f^t/\tau)`; mode 'pull' needs one step.

Stopping. The fixed-point residual :math:`r^t = \|\mathrm{softmax}(-\nabla F(w^t)/\tau) -
w^t\|_1` (zero exactly at a stationary point of J); stop when :math:`r^t \le` ``outer_tol``.
Potentials are warm-started across outer steps (the first harmful solve uses epsilon scaling).

References
----------
Feydy et al. (2019), Interpolating between OT and MMD using Sinkhorn divergences, AISTATS.
Chizat, Peyre, Schmitzer, Vialard (2018), Scaling algorithms for unbalanced optimal transport.
Tao & An (1997), Convex analysis approach to D.C. programming (DCA).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from sot_core.config import PushPullConfig
from sot_core.ot.costs import KnnCost
from sot_core.ot.sinkhorn import (_DTYPES, SinkhornResult, make_operator, resolve_device,  # noqa: F401
                       semi_relaxed_potentials, sinkhorn_log, sinkhorn_potentials)

@dataclass
class PushPullResult:
    """Output of `solve_push_pull`.

    Attributes
    ----------
    weights : np.ndarray, shape (n,), float64
        Weights on the simplex, exactly softmax(-score / tau): rank by weight to keep rows.
    score : np.ndarray, shape (n,), float64
        Final gradient f_anchor - lam * f_harmful (mode 'push': -lam * f_harmful, 'pull':
        f_anchor), shift-free on the simplex. Higher means more harmful-like / farther from
        the anchor. On convergence it is the gradient at the returned point up to outer_tol.
    diagnostics : dict
        JSON-serialisable record: outer_iterations, sinkhorn_iterations (total over both
        problems), marginal_error_anchor, marginal_error_harmful (None when unused),
        objective_trace, fixed_point_residual, converged, seconds, device, dtype, mode, lam,
        eps, tau, step_size.
    """

    weights: np.ndarray
    score: np.ndarray
    diagnostics: dict


def _cost_rows(cost) -> int:
    if isinstance(cost, KnnCost):
        return cost.indices.shape[0]
    shape = getattr(cost, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"a cost must be a 2-D (n, m) array or a KnnCost, got {type(cost)}")
    return int(shape[0])


def _log_masses(weights, m: int, dtype, device) -> torch.Tensor:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (m,) or not np.isfinite(w).all() or (w <= 0).any():
        raise ValueError(f"anchor_weights must be {m} positive finite numbers, got shape {w.shape}")
    return torch.from_numpy(np.log(w / w.sum())).to(dtype=dtype, device=device)


def solve_push_pull(cost_anchor, cost_harmful, config: PushPullConfig = PushPullConfig(),
                    progress: Callable[[int, int], None] | None = None,
                    anchor_weights: np.ndarray | None = None) -> PushPullResult:
    """Weights on the pool that pull towards the anchor and push away from the harmful set.

    Parameters
    ----------
    cost_anchor : np.ndarray (n, m_a), torch.Tensor or KnnCost, or None
        Pool-to-anchor costs (uniform anchor weights). None only in mode 'push'.
    cost_harmful : np.ndarray (n, m_h), torch.Tensor or KnnCost, or None
        Pool-to-harmful-reference costs (uniform weights). None only in mode 'pull'.
    config : PushPullConfig
    progress : callable(outer_step, total), optional
        Called after each outer step (1-based) with total = config.max_outer.
    anchor_weights : np.ndarray (m_a,), optional
        Masses of the anchor rows (normalised here); default uniform. Lets a composite anchor
        (task rows plus refusals) give each part a chosen share of the mass.

    Returns
    -------
    PushPullResult

    Raises
    ------
    ValueError
        Bad config, a cost missing for the mode, mismatched pool sizes, NaN/Inf in a cost.

    Notes
    -----
    Per outer step: one warm-started balanced Sinkhorn solve for the harmful problem and one
    semi-relaxed solve for the anchor problem (cheap, m_a ~ 50); see the module docstring.
    Memory is linear in n beyond the costs themselves.
    """
    config.validate()
    tau = config.effective_tau()
    started = time.perf_counter()
    use_anchor = config.mode in ("push-pull", "pull")
    use_harmful = config.mode in ("push-pull", "push")
    for used, cost, name in ((use_anchor, cost_anchor, "cost_anchor"),
                             (use_harmful, cost_harmful, "cost_harmful")):
        if used and cost is None:
            raise ValueError(f"mode {config.mode!r} needs {name}, got None")
    costs = {name: cost for used, cost, name in ((use_anchor, cost_anchor, "anchor"),
                                                 (use_harmful, cost_harmful, "harmful")) if used}
    rows = {name: _cost_rows(cost) for name, cost in costs.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"pool sizes differ: anchor has {rows.get('anchor')} rows, harmful "
                         f"has {rows.get('harmful')}")
    n = next(iter(rows.values()))
    if n == 0:
        raise ValueError("the pool is empty")

    device, dtype = resolve_device(config.device), _DTYPES[config.dtype]
    problems = {}
    for name, cost in costs.items():
        op = make_operator(cost, device, dtype)
        lo, hi = op.check_finite(f"cost_{name}")
        log_b = torch.full((op.m,), -math.log(op.m), dtype=dtype, device=device)
        if name == "anchor" and anchor_weights is not None:
            log_b = _log_masses(anchor_weights, op.m, dtype, device)
        problems[name] = {"op": op, "log_b": log_b, "g": None, "spread": hi - lo}

    def solve_harmful(log_w: torch.Tensor):
        prob = problems["harmful"]
        state = sinkhorn_potentials(
            prob["op"], log_w.to(dtype), prob["log_b"], config.eps, g_init=prob["g"],
            tol=config.sinkhorn_tol, max_iter=config.max_sinkhorn_iter,
            eps_start=prob["spread"] if config.eps_scaling else None)
        prob["g"] = state.g
        return state

    def solve_anchor(push_term: torch.Tensor):
        # argmin_w OT(w, anchor) - <push_term, w> + tau KL(w|u), as semi-relaxed OT
        prob = problems["anchor"]
        rho = tau - config.eps
        log_p = torch.log_softmax(push_term / rho, dim=0).to(dtype)
        state = semi_relaxed_potentials(
            prob["op"], log_p, prob["log_b"], config.eps, rho, g_init=prob["g"],
            tol=config.sinkhorn_tol, max_iter=config.max_sinkhorn_iter)
        prob["g"] = state.g
        return state

    zeros = torch.zeros(n, dtype=torch.float64, device=device)
    log_w = torch.full((n,), -math.log(n), dtype=torch.float64, device=device)
    push_lin = zeros  # lam * (damped) harmful potential used in the linearisation
    f_anchor, f_harmful = zeros, zeros
    trace: list[float] = []
    total_sinkhorn, residual, converged, errors = 0, math.inf, False, {}
    value = {"anchor": 0.0, "harmful": 0.0}
    step = 0
    for step in range(1, config.max_outer + 1):
        # 1. evaluate the push at the current iterate and update its (damped) linearisation
        if use_harmful:
            state = solve_harmful(log_w)
            total_sinkhorn += state.n_iter
            errors["harmful"], value["harmful"] = state.marginal_error, state.value
            f_harmful = state.f.double()
            fresh = config.lam * f_harmful
            push_lin = fresh if step == 1 else (1 - config.step_size) * push_lin + \
                config.step_size * fresh
            # residual of the current iterate, known once its harmful potential is
            if step > 1:
                target = torch.log_softmax(-(f_anchor - fresh) / tau, dim=0)
                residual = float((torch.exp(target) - torch.exp(log_w)).abs().sum())
                trace.append(value["anchor"] - config.lam * value["harmful"] + tau *
                             float((torch.exp(log_w) * (log_w + math.log(n))).sum()))
                if progress is not None:
                    progress(step - 1, config.max_outer)
                if residual <= config.outer_tol:
                    converged = True
                    step -= 1
                    break
        # 2. exact minimisation of the convexified objective
        if use_anchor:
            state = solve_anchor(push_lin)
            total_sinkhorn += state.n_iter
            errors["anchor"], value["anchor"] = state.marginal_error, state.value
            f_anchor = state.f.double()
        log_w = torch.log_softmax(-(f_anchor - push_lin) / tau, dim=0)
        if not bool(torch.isfinite(log_w).all()):
            raise FloatingPointError("non-finite weights; try dtype='float64' or a larger eps")
        if not use_harmful:  # pull: the convex problem is the whole problem
            residual, converged = 0.0, True
            trace.append(value["anchor"] + tau *
                         float((torch.exp(log_w) * (log_w + math.log(n))).sum()))
            break
    else:
        if progress is not None:
            progress(config.max_outer, config.max_outer)

    score = f_anchor - push_lin
    # weights and score agree exactly: w = softmax(-score / tau)
    weights = torch.softmax(-score / tau, dim=0).cpu().numpy()
    weights /= weights.sum()
    diagnostics = {
        "outer_iterations": step,
        "sinkhorn_iterations": total_sinkhorn,
        "marginal_error_anchor": errors.get("anchor"),
        "marginal_error_harmful": errors.get("harmful"),
        "objective_trace": trace,
        "fixed_point_residual": residual,
        "converged": bool(converged),
        "seconds": time.perf_counter() - started,
        "device": str(device),
        "dtype": config.dtype,
        "mode": config.mode,
        "lam": config.lam,
        "eps": config.eps,
        "tau": tau,
        "step_size": config.step_size,
    }
    return PushPullResult(weights=weights, score=score.cpu().numpy(), diagnostics=diagnostics)
