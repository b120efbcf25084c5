"""Sinkhorn's bookkeeping, pinned: the epsilon-scaling schedule, iteration counts, warm starts and
the stopping rule (results alone do not show them: a solver that skips the annealing or
miscounts iterations returns the same potentials, only slower or with a wrong record)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ot_reference import cosine_cost
from sot_core.ot.operators import make_operator
from sot_core.ot.sinkhorn import sinkhorn_log, sinkhorn_potentials

EPS = 0.05


def problem(n=12, m=9, seed=0):
    rng = np.random.default_rng(seed)
    C = cosine_cost(rng, n, m)
    return np.full(n, 1 / n), np.full(m, 1 / m), C


def potentials(C, a, b, eps, **kwargs):
    """sinkhorn_potentials on float64 tensors, recording every on_iter call."""
    calls = []
    op = make_operator(C, torch.device("cpu"), torch.float64)
    state = sinkhorn_potentials(op, torch.log(torch.as_tensor(a)), torch.log(torch.as_tensor(b)), eps,
                                on_iter=lambda i, err: calls.append((i, err)), **kwargs)
    return state, calls


def test_epsilon_scaling_halves_from_eps_start_one_iteration_per_level():
    """eps_start = 8 eps exactly: levels at 8, 4 and 2 eps (3 iterations reported with an infinite
    error), then Sinkhorn at eps; every iteration but the converged last one is reported."""
    a, b, C = problem()
    state, calls = potentials(C, a, b, EPS, eps_start=8 * EPS, tol=1e-8, max_iter=5000)
    assert [err for _, err in calls[:3]] == [math.inf] * 3 and all(math.isfinite(e) for _, e in calls[3:])
    assert [i for i, _ in calls] == list(range(1, len(calls) + 1))
    assert state.converged and state.n_iter == len(calls) + 1 and state.marginal_error <= 1e-8
    plain, plain_calls = potentials(C, a, b, EPS, tol=1e-8, max_iter=5000)  # no eps_start: no levels
    assert all(math.isfinite(e) for _, e in plain_calls) and plain.n_iter == len(plain_calls) + 1
    np.testing.assert_allclose(state.f.numpy() - state.f.numpy().mean(), plain.f.numpy() - plain.f.numpy().mean(),
                               atol=1e-6)


def test_warm_start_skips_the_annealing():
    a, b, C = problem()
    cold, _ = potentials(C, a, b, EPS, tol=1e-9, max_iter=5000)
    warm, calls = potentials(C, a, b, EPS, eps_start=8 * EPS, g_init=cold.g, tol=1e-6, max_iter=5000)
    assert all(math.isfinite(e) for _, e in calls)  # no epsilon-scaling level from a warm start
    assert warm.n_iter <= 2


def test_epsilon_scaling_saves_iterations_at_small_eps():
    a, b, C = problem(30, 20, seed=1)
    eps = 0.005
    scaled = sinkhorn_log(a, b, C, eps, tol=1e-6, max_iter=20_000, dtype="float64")
    cold = sinkhorn_log(a, b, C, eps, tol=1e-6, max_iter=20_000, dtype="float64", eps_scaling=False)
    assert scaled.converged and cold.converged and scaled.n_iter < cold.n_iter
    assert abs(scaled.value - cold.value) < 1e-6


def test_iteration_count_and_unconverged_record():
    a, b, C = problem()
    res = sinkhorn_log(a, b, C, 0.01, tol=0.0, max_iter=7, eps_scaling=False, dtype="float64")
    assert res.n_iter == 7 and not res.converged and res.marginal_error > 0
    one = sinkhorn_log(a, b, C, 0.01, tol=0.0, max_iter=0, eps_scaling=False, dtype="float64")
    assert one.n_iter == 1 and np.isfinite(one.f).all()  # max_iter 0 still runs one iteration
    exact = sinkhorn_log(a, b, C, 0.05, tol=1e-6, max_iter=5000, dtype="float64")
    assert exact.converged and exact.marginal_error <= 1e-6


def test_reported_marginal_error_is_the_plans_true_error():
    """The stopping rule reads the column error off the g-update; at the returned potentials the
    plan's columns are exact and its row error is what the rule certified (an error measure
    that is too small stops early and leaves a real marginal error)."""
    a, b, C = problem(15, 10, seed=2)
    for eps, tol in ((0.05, 1e-6), (0.02, 1e-4)):
        res = sinkhorn_log(a, b, C, eps, tol=tol, max_iter=20_000, dtype="float64", eps_scaling=False)
        P = a[:, None] * b[None, :] * np.exp((res.f[:, None] + res.g[None, :] - C) / eps)
        np.testing.assert_allclose(P.sum(axis=0), b, atol=1e-12)
        row_error = np.abs(P.sum(axis=1) - a).sum()
        assert res.converged and res.marginal_error <= tol
        assert row_error <= 3 * tol, (eps, row_error)


def test_sinkhorn_log_defaults_tol_1e4_1000_iterations_and_epsilon_scaling():
    """The defaults the library's other callers rely on (the budget and drift computations pass
    neither tol nor max_iter): 1,000 iterations after the epsilon-scaling levels, tol 1e-4."""
    a, b, C = problem()
    eps = 1e-3
    spread, levels = C.max() - C.min(), 0
    while spread > eps:  # the annealing schedule: halve from the cost spread down to eps
        spread *= 0.5
        levels += 1
    capped = sinkhorn_log(a, b, C, eps, tol=0.0, dtype="float64")
    assert capped.n_iter == levels + 1000 and not capped.converged
    slow = problem(40, 30, seed=3)  # converges slowly at eps 0.01: the stop lands just below tol
    res = sinkhorn_log(*slow, 0.01, dtype="float64")
    assert res.converged and 0.5e-4 < res.marginal_error <= 1e-4


def test_eps_must_be_positive():
    a, b, C = problem()
    for eps in (0.0, -0.1):
        with pytest.raises(ValueError, match="eps must be > 0"):
            sinkhorn_log(a, b, C, eps)


def test_bad_marginals_are_refused_and_zero_weights_are_not():
    a, b, C = problem()
    with pytest.raises(ValueError, match="do not match C"):
        sinkhorn_log(a[:-1], b, C, EPS)
    with pytest.raises(ValueError, match="do not match C"):
        sinkhorn_log(a, b[:-1], C, EPS)
    for bad_a, bad_b in ((-a, b), (a, -b)):
        with pytest.raises(ValueError, match="nonnegative"):
            sinkhorn_log(bad_a, bad_b, C, EPS)
    a0, b0 = a.copy(), b.copy()
    a0[0], b0[0] = 0.0, 0.0
    a0, b0 = a0 / a0.sum(), b0 / b0.sum()
    res = sinkhorn_log(a0, b0, C, EPS, tol=1e-8, max_iter=5000, dtype="float64")
    assert res.converged and np.isfinite(res.value)


def test_epsilon_scaling_starts_at_the_cost_spread():
    """Shifting every cost by 1 changes no potential difference and not the spread: the same
    number of annealing levels (it starts from max C - min C, not from max C + min C)."""
    a, b, C = problem()
    eps = 1e-3
    plain = sinkhorn_log(a, b, C, eps, tol=0.0, max_iter=1, dtype="float64")
    shifted = sinkhorn_log(a, b, C + 1.0, eps, tol=0.0, max_iter=1, dtype="float64")
    spread, levels = C.max() - C.min(), 0
    while spread > eps:
        spread *= 0.5
        levels += 1
    assert plain.n_iter == shifted.n_iter == levels + 1


def semi_relaxed(C, eps, rho, **kwargs):
    from sot_core.ot.sinkhorn import semi_relaxed_potentials

    n, m = C.shape
    op = make_operator(C, torch.device("cpu"), torch.float64)
    log_p = torch.log_softmax(torch.linspace(0.0, 1.0, n, dtype=torch.float64), dim=0)
    log_b = torch.full((m,), -math.log(m), dtype=torch.float64)
    calls = []
    state = semi_relaxed_potentials(op, log_p, log_b, eps, rho, on_iter=lambda i, e: calls.append(i), **kwargs)
    return state, calls, log_p


def test_semi_relaxed_counts_iterations_and_meets_its_tolerance():
    _, _, C = problem()
    capped, calls, _ = semi_relaxed(C, 0.05, 0.15, tol=0.0, max_iter=5)
    assert capped.n_iter == 5 and calls == [1, 2, 3, 4, 5] and not capped.converged
    state, _, log_p = semi_relaxed(C, 0.05, 0.15, tol=1e-9, max_iter=5000)
    assert state.converged and state.marginal_error <= 1e-9
    w = torch.exp(state.log_w).numpy()
    assert abs(w.sum() - 1) < 1e-12
    # the plan of (f, g) in the balanced convention has rows w and columns b
    f, g = state.f.numpy(), state.g.numpy()
    P = w[:, None] / C.shape[1] * np.exp((f[:, None] + g[None, :] - C) / 0.05)
    np.testing.assert_allclose(P.sum(axis=1), w, atol=1e-8)
    np.testing.assert_allclose(P.sum(axis=0), np.full(C.shape[1], 1 / C.shape[1]), atol=1e-8)


def test_knn_inf_drops_the_columns_nobody_reaches_and_renormalises_b():
    """missing='inf': a reference row that is no pool row's neighbour gets no mass; the solve equals
    a dense solve over the reached columns with b renormalised there (missing entries: a cost so
    large its kernel underflows to 0)."""
    from sot_core.ot.costs import KnnCost

    a, b, C = problem(10, 6, seed=4)
    b = np.array([0.1, 0.2, 0.15, 0.25, 0.1, 0.2])
    idx = np.argsort(C[:, :5], axis=1)[:, :3]  # column 5 is never kept
    knn = KnnCost(indices=idx, costs=np.take_along_axis(C, idx, axis=1).astype(np.float32), n_targets=6,
                  missing="inf")
    sparse = sinkhorn_log(a, b, knn, EPS, tol=1e-10, max_iter=20_000, dtype="float64")
    dense = np.full((10, 5), 1e3)
    np.put_along_axis(dense, idx, np.take_along_axis(C, idx, axis=1).astype(np.float32).astype(np.float64), axis=1)
    ref = sinkhorn_log(a, b[:5] / b[:5].sum(), dense, EPS, tol=1e-10, max_iter=20_000, dtype="float64",
                       eps_scaling=False)
    assert sparse.converged and np.isfinite(sparse.g).all() and abs(sparse.value - ref.value) < 1e-8
    np.testing.assert_allclose(sparse.f - sparse.f.mean(), ref.f - ref.f.mean(), atol=1e-8)
