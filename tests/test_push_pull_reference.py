r"""The push-pull solution checked independently of the solver, with POT in float64.

The documented objective (`sot_core.ot.push_pull`) over the simplex is

.. math::
    J(w) = \mathrm{OT}_\varepsilon(w, \alpha) - \lambda\,\mathrm{OT}_\varepsilon(w, \beta)
           + \tau\,\mathrm{KL}(w \,|\, u_n),

with :math:`\mathrm{OT}_\varepsilon` regularised by :math:`\varepsilon\,\mathrm{KL}(P|w\otimes b)`.
Derivation of the first-order condition used here (not taken from the solver): for that
regulariser the envelope theorem gives :math:`\partial_{w_i}\mathrm{OT}_\varepsilon(w,b) = f_i`,
the w-side dual potential, because :math:`\partial_{w_i}\varepsilon\mathrm{KL}(P|w\otimes b)
= \varepsilon(1 - (P1)_i / w_i) = 0` at a feasible plan; and
:math:`\partial_{w_i}\tau\mathrm{KL}(w|u) = \tau(\log(n w_i) + 1)`. A stationary point in the
interior of the simplex has a gradient constant over i (the Lagrange multiplier of
:math:`\sum_i w_i = 1`):

.. math::
    f_{\alpha,i} - \lambda f_{\beta,i} + \tau \log w_i = \text{const}
    \iff w \propto \exp\!\big(-(f_\alpha - \lambda f_\beta)/\tau\big).

The potentials come from POT's log-domain Sinkhorn (`ot.sinkhorn`, entropy :math:`-H(P)`):
its plan is :math:`P = \mathrm{diag}(u) K \mathrm{diag}(v)` and the KL-convention potential is
:math:`f = \varepsilon(\log u - \log w)` up to a constant. The objective's values are recomputed
from POT's plans, and a finite-difference check of :math:`J` needs no potentials at all.

Which deliberate breakages each test caught (run once against broken copies of the solver,
see benchmarks/results/mutation/ for the full mutation run):

- ``push-pull uses 0.8*lam in the linearisation``: stationarity, finite differences, lam sweep,
  property tests.
- ``step_size ignored`` (the linearisation always takes the fresh potential):
  `test_step_size_damps_the_linearisation_as_documented`.
- ``tau ignored in the anchor step`` / ``KL term dropped from the objective trace``:
  stationarity, `test_objective_trace_is_monotone_and_matches_pot`.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import ot as pot
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ot_reference import (cosine_cost, gibbs, gradient_is_resolvable, gradient_score, objective, pot_ot,
                          stationarity_gap, uniform)

from sot_core.config import PushPullConfig
from sot_core.ot.push_pull import solve_push_pull

SHARP = dict(dtype="float64", sinkhorn_tol=1e-11, max_sinkhorn_iter=20000, outer_tol=1e-9, max_outer=400,
             min_ess=0.0)


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def problem():
    """24 pool rows, 5 anchor rows, 7 harmful rows; the harmful set sits in one direction."""
    rng = np.random.default_rng(7)
    shift = np.zeros(6)
    shift[0] = 1.5
    return cosine_cost(rng, 24, 5), cosine_cost(rng, 24, 7, shift=shift)


def solve(cost_anchor, cost_harmful, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a solve that warns (not converged) fails here
        return solve_push_pull(cost_anchor, cost_harmful, PushPullConfig(**{**SHARP, **kw}))


# ---------------------------------------------------------------- first-order condition

def test_reference_is_pot_where_sinkhorn_converges(problem):
    """The Newton polish changes nothing where POT's Sinkhorn converges: same potential and value
    as plain POT (and POT's value agrees with ot.solve's KL-regularised value)."""
    ca, _ = problem
    w = np.random.default_rng(3).dirichlet(np.ones(ca.shape[0]))
    b = uniform(ca.shape[1])
    f, value = pot_ot(w, b, ca, 0.1)
    _, log = pot.sinkhorn(w, b, ca, 0.1, method="sinkhorn_log", numItermax=100000, stopThr=1e-14, log=True)
    f_pot = 0.1 * (log["log_u"] - np.log(w))
    np.testing.assert_allclose(f, f_pot - f_pot.mean(), atol=1e-10)
    reference = pot.solve(ca, w, b, reg=0.1, reg_type="KL", max_iter=100000, tol=1e-14).value
    assert value == pytest.approx(reference, abs=1e-10)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 2.0])
def test_weights_are_stationary_for_the_documented_objective(problem, lam):
    """At the returned w, the POT potentials satisfy w ~ exp(-(f_a - lam f_h)/tau), for several lam;
    a solver that optimises any other objective (0.8 lam, another tau) misses it by > 1e-2."""
    ca, ch = problem
    eps = 0.1
    result = solve(ca, ch, lam=lam, eps=eps)
    tau = result.diagnostics["tau"]
    assert tau == pytest.approx(max(0.2, 2 * eps) * max(1.0, lam))  # the documented default
    assert result.diagnostics["converged"]
    w = result.weights
    gap = stationarity_gap(w, ca, ch, lam, eps, tau)
    assert gap < 1e-6, gap
    # the solver's own score is that gradient, up to the free constant
    s = gradient_score(w, ca, ch, lam, eps)
    np.testing.assert_allclose(result.score - result.score.mean(), s - s.mean(), atol=1e-6)
    # the stationary point is not the trivial one: the push moves the weights
    if lam > 0:
        assert np.abs(w - uniform(len(w))).sum() > 0.05


def test_lam_zero_equals_the_pull_only_solution(problem):
    ca, ch = problem
    both = solve(ca, ch, lam=0.0, eps=0.1)
    pull = solve(ca, None, mode="pull", eps=0.1)
    np.testing.assert_allclose(both.weights, pull.weights, atol=1e-8)


def test_finite_differences_of_the_objective_vanish_along_the_simplex(problem):
    """No potentials at all: central differences of J (POT values) along e_i - e_j are zero at the
    solution, while the same differences at the uniform start are not."""
    ca, ch = problem
    lam, eps = 1.0, 0.1
    result = solve(ca, ch, lam=lam, eps=eps)
    tau, w = result.diagnostics["tau"], result.weights
    order = np.argsort(w)
    pairs = [(order[-1], order[0]), (order[-2], order[1]), (order[len(w) // 2], order[0])]

    def slopes(at):
        out = []
        for i, j in pairs:
            d = np.zeros(len(at))
            d[i], d[j] = 1.0, -1.0
            t = 1e-5 * min(at[i], at[j])
            out.append((objective(at + t * d, ca, ch, lam, eps, tau) - objective(at - t * d, ca, ch, lam, eps, tau))
                       / (2 * t))
        return np.array(out)

    at_solution, at_start = slopes(w), slopes(uniform(len(w)))
    assert np.abs(at_start).max() > 0.05  # the test can see a gradient when there is one
    assert np.abs(at_solution).max() < 1e-4 * np.abs(at_start).max() + 1e-6, (at_solution, at_start)


def test_non_uniform_anchor_masses_enter_the_stationarity(problem):
    ca, ch = problem
    masses = np.array([4.0, 1.0, 1.0, 1.0, 1.0])
    result = solve_push_pull(ca, ch, PushPullConfig(**SHARP), anchor_weights=masses)
    tau = result.diagnostics["tau"]
    assert stationarity_gap(result.weights, ca, ch, 1.0, 0.1, tau, anchor_b=masses) < 1e-6
    # and the masses matter: with uniform masses the same w is far from stationary
    assert stationarity_gap(result.weights, ca, ch, 1.0, 0.1, tau) > 1e-3


def test_push_only_and_pull_only_are_stationary(problem):
    """Mode 'push': w ~ exp(lam f_h / tau); mode 'pull': w ~ exp(-f_a / tau)."""
    ca, ch = problem
    push = solve(None, ch, mode="push", lam=1.5, eps=0.1)
    tau = push.diagnostics["tau"]
    assert push.diagnostics["converged"] and push.diagnostics["marginal_error_anchor"] is None
    assert stationarity_gap(push.weights, None, ch, 1.5, 0.1, tau) < 1e-6
    pull = solve(ca, None, mode="pull", eps=0.05, tau=0.15)
    assert pull.diagnostics["marginal_error_harmful"] is None and pull.diagnostics["tau"] == 0.15
    assert stationarity_gap(pull.weights, ca, None, 1.0, 0.05, 0.15) < 1e-6
    # the two pull in different directions: push-only is not the pull solution
    assert np.abs(push.weights - pull.weights).sum() > 0.05


# ---------------------------------------------------------------- the iteration

def test_objective_trace_is_monotone_and_matches_pot(problem):
    """Plain DCA (step 1) never increases J; the trace's values are J at the iterates (the last
    one agrees with POT at the returned w) and every one is below J at the uniform start."""
    ca, ch = problem
    lam, eps = 2.0, 0.1
    result = solve(ca, ch, lam=lam, eps=eps)
    tau, trace = result.diagnostics["tau"], np.array(result.diagnostics["objective_trace"])
    assert len(trace) >= 3
    assert np.all(np.diff(trace) <= 1e-9), np.diff(trace)
    assert trace[-1] == pytest.approx(objective(result.weights, ca, ch, lam, eps, tau), abs=1e-7)
    start = objective(uniform(len(result.weights)), ca, ch, lam, eps, tau)
    assert trace[0] < start - 1e-4


@pytest.mark.parametrize("step", [0.3, 0.7])
def test_step_sizes_below_one_reach_the_same_stationary_point(problem, step):
    ca, ch = problem
    plain = solve(ca, ch, eps=0.1)
    damped = solve(ca, ch, eps=0.1, step_size=step)
    tau = damped.diagnostics["tau"]
    assert damped.diagnostics["converged"] and damped.diagnostics["step_size"] == step
    assert stationarity_gap(damped.weights, ca, ch, 1.0, 0.1, tau) < 1e-6
    np.testing.assert_allclose(damped.weights, plain.weights, atol=1e-6)
    # damping slows the push's linearisation down: more outer steps than plain DCA
    assert damped.diagnostics["outer_iterations"] > plain.diagnostics["outer_iterations"]


@pytest.mark.parametrize("step", [0.25, 0.6])
def test_step_size_damps_the_linearisation_as_documented(problem, step):
    """Two outer steps by hand (module docstring): w1 = the first convexified solution, then
    w2 ~ exp(-(f_a(w2) - lam * fbar)/tau) with fbar = (1 - s) f_h(u) + s f_h(w1). Potentials from
    POT; the solver's w1 and w2 come from max_outer = 1 and 2 (outer_tol tiny, so no early stop)."""
    ca, ch = problem
    lam, eps = 1.0, 0.1
    kw = dict(lam=lam, eps=eps, step_size=step, outer_tol=1e-300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # max_outer is reached on purpose
        w1 = solve_push_pull(ca, ch, PushPullConfig(**{**SHARP, **kw, "max_outer": 1})).weights
        r2 = solve_push_pull(ca, ch, PushPullConfig(**{**SHARP, **kw, "max_outer": 2}))
    w2, tau, n = r2.weights, r2.diagnostics["tau"], len(r2.weights)
    u = uniform(n)
    f_h = lambda w: pot_ot(w, uniform(ch.shape[1]), ch, eps)[0]  # noqa: E731
    f_a = pot_ot(w2, uniform(ca.shape[1]), ca, eps)[0]
    # w1 is the convexified solution linearised at u (no damping on the first step)
    assert np.abs(gibbs(pot_ot(w1, uniform(ca.shape[1]), ca, eps)[0] - lam * f_h(u), tau) - w1).sum() < 1e-6
    damped = (1 - step) * f_h(u) + step * f_h(w1)
    assert np.abs(gibbs(f_a - lam * damped, tau) - w2).sum() < 1e-6
    undamped = f_h(w1)  # what an undamped step would have used: measurably different here
    assert np.abs(gibbs(f_a - lam * undamped, tau) - w2).sum() > 1e-3


def test_max_outer_reached_is_reported_not_converged(problem):
    ca, ch = problem
    with pytest.warns(RuntimeWarning, match="max_outer"):
        r = solve_push_pull(ca, ch, PushPullConfig(**{**SHARP, "max_outer": 2, "outer_tol": 1e-300}))
    assert not r.diagnostics["converged"] and r.diagnostics["stop_reason"].startswith("max_outer")
    assert r.diagnostics["outer_iterations"] == 2


# ---------------------------------------------------------------- property-based

@st.composite
def small_problems(draw):
    n = draw(st.integers(4, 16))
    m_a, m_h = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    shift = np.zeros(6)
    shift[0] = draw(st.floats(0.0, 2.0))
    return cosine_cost(rng, n, m_a), cosine_cost(rng, n, m_h, shift=shift)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(costs=small_problems(), lam=st.floats(0.0, 2.0), eps=st.floats(0.03, 0.5),
       step=st.sampled_from([0.5, 1.0]), dtype=st.sampled_from(["float32", "float64"]),
       mode=st.sampled_from(["push-pull", "push", "pull"]))
def test_property_random_small_problems_are_stationary(costs, lam, eps, step, dtype, mode):
    """Any small cosine problem, lam, eps, damping and mode: the float64 solve is a stationary
    point of its mode's objective, on the simplex, with a consistent ESS; plain DCA has a
    non-increasing trace; a float32 solve lands within 1e-3 (L1) of it. (The stationarity gap
    amplifies errors in w by the stiffness of the anchor potential, up to ~1e3 on 4-row problems,
    so float32 is compared with the float64 solution rather than tested for stationarity.)"""
    ca, ch = costs
    if mode == "push":
        ca = None
    if mode == "pull":
        ch = None
    lam_used = 1.0 if mode == "pull" else lam
    common = dict(mode=mode, lam=lam_used, eps=eps, step_size=step, min_ess=0.0, max_outer=2000,
                  max_sinkhorn_iter=20000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = solve_push_pull(ca, ch, PushPullConfig(**common, dtype="float64", sinkhorn_tol=1e-10,
                                                        outer_tol=1e-8))
    d, w = result.diagnostics, result.weights
    assert w.dtype == np.float64 and abs(w.sum() - 1) < 1e-9 and (w > 0).all()
    assert d["converged"], d["stop_reason"]
    for cost in (ca, ch):
        assume(cost is None or gradient_is_resolvable(w, uniform(cost.shape[1]), cost, eps))
    gap = stationarity_gap(w, ca, ch, lam_used, eps, d["tau"])
    assert gap < 2e-5, gap  # stiff draws (eps 0.03, 16 x 5) reach 4e-6 at these tolerances
    if step == 1.0 and mode != "pull":
        assert np.all(np.diff(d["objective_trace"]) <= 1e-8)
    assert 1.0 / np.sum(w ** 2) == pytest.approx(d["ess"], rel=1e-9)
    if dtype == "float32":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            low = solve_push_pull(ca, ch, PushPullConfig(**common, dtype="float32", sinkhorn_tol=1e-6,
                                                         outer_tol=1e-6))
        assert low.diagnostics["converged"], low.diagnostics["stop_reason"]
        assert np.abs(low.weights - w).sum() < 1e-3


@pytest.mark.parametrize("outer_tol", [1e-3, 3e-4, 1e-4, 3e-5])
def test_returned_weights_meet_outer_tol_independently(problem, outer_tol):
    """The stopping rule, checked from outside: the returned w is within outer_tol (L1) of the
    Gibbs point of its own POT gradient, i.e. the certified residual is the returned point's.
    A rule that stopped 10x early (or returned another point) leaves some of these above."""
    ca, ch = problem
    result = solve(ca, ch, lam=2.0, eps=0.1, outer_tol=outer_tol)
    gap = stationarity_gap(result.weights, ca, ch, 2.0, 0.1, result.diagnostics["tau"])
    assert gap <= outer_tol, (gap, result.diagnostics["fixed_point_residual"])
    assert result.diagnostics["fixed_point_residual"] == pytest.approx(gap, rel=1e-3, abs=1e-9)


# ---------------------------------------------------------------- diagnostics, progress, budget

def test_diagnostics_agree_with_the_returned_weights_and_the_wall_clock(problem):
    """ESS, its fraction, the weights' sum and the seconds, recomputed outside the solver."""
    ca, ch = problem
    started = time.perf_counter()
    r = solve(ca, ch)
    wall = time.perf_counter() - started
    w, d = r.weights, r.diagnostics
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert d["ess"] == pytest.approx(1.0 / np.sum(w ** 2), rel=1e-12)
    assert d["ess_fraction"] == pytest.approx(d["ess"] / len(w), rel=1e-12)
    assert 0.0 < d["seconds"] <= wall
    # each outer step solves both problems once, and the last (converged) step the harmful one:
    # at least one Sinkhorn iteration per solve
    assert d["sinkhorn_iterations"] >= 2 * d["outer_iterations"] + 1


def test_progress_is_called_once_per_outer_step_and_matches_the_count(problem):
    ca, ch = problem
    seen = []
    r = solve_push_pull(ca, ch, PushPullConfig(**SHARP), progress=lambda step, total: seen.append((step, total)))
    k = r.diagnostics["outer_iterations"]
    assert r.diagnostics["converged"] and k >= 2
    assert seen == [(i, SHARP["max_outer"]) for i in range(1, k + 1)]
    seen.clear()
    with pytest.warns(RuntimeWarning, match="max_outer"):
        r = solve_push_pull(ca, ch, PushPullConfig(**{**SHARP, "max_outer": 3, "outer_tol": 1e-300}),
                            progress=lambda step, total: seen.append((step, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)] and r.diagnostics["outer_iterations"] == 3


def test_sinkhorn_iterations_are_counted_exactly_when_every_solve_runs_to_its_cap(problem, caplog):
    """With an unreachable sinkhorn_tol every inner solve runs max_sinkhorn_iter iterations: pull
    mode solves once, push mode once per outer step. Each problem's unconverged solve is logged
    once (a WARNING), however many steps repeat it."""
    ca, ch = problem
    capped = dict(SHARP, sinkhorn_tol=1e-300, max_sinkhorn_iter=3, eps_scaling=False)
    with pytest.warns(RuntimeWarning, match="inner_not_converged"):
        pull = solve_push_pull(ca, None, PushPullConfig(**capped, mode="pull"))
    assert pull.diagnostics["sinkhorn_iterations"] == 3
    caplog.clear()
    with caplog.at_level("WARNING", logger="sot_core.ot.push_pull"), pytest.warns(RuntimeWarning):
        push = solve_push_pull(ca, ch, PushPullConfig(**{**capped, "max_outer": 4, "outer_tol": 1e-300}))
    # steps 1-4 solve harmful then anchor: 8 solves of 3 iterations
    assert push.diagnostics["sinkhorn_iterations"] == 8 * 3
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2 and {"harmful" in m for m in warned} == {True, False}


def test_a_converged_solve_logs_no_warning_and_no_inner_progress(problem, caplog):
    """Inner progress lines come every 15 s of a long solve: none in a sub-second one."""
    ca, ch = problem
    with caplog.at_level("INFO", logger="sot_core.ot.push_pull"):
        r = solve(ca, ch)
    assert r.diagnostics["converged"]
    assert not [x for x in caplog.records if x.levelname == "WARNING"]
    assert not [x for x in caplog.records if "OT iteration" in x.getMessage()]
    assert any("outer step" in x.getMessage() for x in caplog.records)


@pytest.mark.parametrize("mode", ["push", "pull"])
def test_one_sided_objective_trace_matches_pot(problem, mode):
    """The trace of a one-sided solve is J with only its own term: the other OT value counts 0."""
    ca, ch = problem
    ca, ch = (None, ch) if mode == "push" else (ca, None)
    r = solve(ca, ch, mode=mode, lam=1.5)
    d = r.diagnostics
    expected = objective(r.weights, ca, ch, 1.5, 0.1, d["tau"])
    assert d["objective_trace"][-1] == pytest.approx(expected, abs=1e-7)
    if mode == "pull":  # one exact step: a stationary point, residual zero by construction
        assert d["fixed_point_residual"] == 0.0 and len(d["objective_trace"]) == 1


def test_time_budget_error_names_the_phase_and_the_cost_spread(problem):
    """max_seconds spent: the first check comes during epsilon scaling (error inf), or, without
    scaling, after a Sinkhorn iteration (a marginal error); the message gives the harmful cost's
    spread (max - min of the cost, recomputed here)."""
    from sot_core.ot.push_pull import SolverBudgetError

    ca, ch = problem
    spread = f"{ch.max() - ch.min():.3g}"
    with pytest.raises(SolverBudgetError, match="during epsilon scaling") as caught:
        solve_push_pull(ca, ch, PushPullConfig(**SHARP, max_seconds=1e-9))
    assert f"cost spread {spread}" in str(caught.value)
    with pytest.raises(SolverBudgetError, match="marginal error") as caught:
        solve_push_pull(ca, ch, PushPullConfig(**SHARP, max_seconds=1e-9, eps_scaling=False))
    assert "during epsilon scaling" not in str(caught.value)


@pytest.mark.parametrize("mode", ["push-pull", "pull"])
def test_collapse_guard_compares_ess_with_min_ess_of_the_pool(problem, mode):
    """min_ess is a share of the pool: just above the achieved ESS share the solve is flagged
    collapsed (with the push's feedback named only when there is a push), just below it is not."""
    ca, ch = problem
    ch = ch if mode == "push-pull" else None
    share = solve(ca, ch, mode=mode).diagnostics["ess_fraction"]
    assert solve(ca, ch, mode=mode, min_ess=share * 0.99).diagnostics["converged"]
    with pytest.warns(RuntimeWarning, match="collapsed"):
        r = solve_push_pull(ca, ch, PushPullConfig(**{**SHARP, "mode": mode, "min_ess": share * 1.01}))
    assert not r.diagnostics["converged"] and "collapsed" in r.diagnostics["stop_reason"]
    assert ("lam*eps" in r.diagnostics["stop_reason"]) == (mode == "push-pull")


def test_bad_costs_and_masses_are_refused_and_a_one_row_pool_is_solved(problem):
    ca, ch = problem
    with pytest.raises(ValueError, match="2-D"):
        solve(ca[0], ch[0])
    for masses in (np.ones(6), np.array([1.0, 1.0, 0.0, 1.0, 1.0])):  # wrong length; a zero mass
        with pytest.raises(ValueError, match="anchor_weights must be 5 positive"):
            solve_push_pull(ca, ch, PushPullConfig(**SHARP), anchor_weights=masses)
    masses = np.array([4.0, 1.0, 1.0, 1.0, 1.0])
    scaled = solve_push_pull(ca, ch, PushPullConfig(**SHARP), anchor_weights=10.0 * masses)
    plain = solve_push_pull(ca, ch, PushPullConfig(**SHARP), anchor_weights=masses)
    np.testing.assert_allclose(scaled.weights, plain.weights, atol=1e-12)  # masses are normalised
    np.testing.assert_allclose(scaled.diagnostics["objective_trace"], plain.diagnostics["objective_trace"], rtol=1e-9)
    assert plain.diagnostics["objective_trace"][-1] == pytest.approx(
        objective(plain.weights, ca, ch, 1.0, 0.1, plain.diagnostics["tau"], anchor_b=masses), abs=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "std of one value" warning from torch
        one = solve(ca[:1], ch[:1])
    assert one.weights.tolist() == [1.0] and one.diagnostics["ess"] == pytest.approx(1.0)
