"""The pool-neighbourhood term of the budget's score (sot_core/curate/neighbours.py): the kNN lists
against brute force, the term's arithmetic, what it does to a cluster of harm against a lone look-alike,
and that the cross-fitted budget keeps its held-out recall guarantee with it."""
from __future__ import annotations

import numpy as np
import pytest

from sot_core.config import CurateConfig
from sot_core.curate import budget as B
from sot_core.curate import neighbours as N


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_knn(q, base, k, exclude_self=False):
    sim = q.astype(np.float64) @ base.astype(np.float64).T
    if exclude_self:
        np.fill_diagonal(sim, -np.inf)
    return [set(np.argsort(-row, kind="stable")[:k].tolist()) for row in sim]


@pytest.mark.parametrize("n,k", [(50, 10), (12, 11), (7, 10), (2, 10), (20, 1)])
def test_pool_neighbours_are_the_nearest_other_rows(n, k):
    pool = unit(np.random.default_rng(n).normal(size=(n, 8))).astype(np.float32)
    got = N.pool_neighbours(pool, k)
    kk = min(k, n - 1)
    assert got.shape == (n, kk)
    assert not (got == np.arange(n)[:, None]).any()  # never the row itself
    assert [set(r.tolist()) for r in got] == brute_knn(pool, pool, kk, exclude_self=True)


def test_pool_of_one_row_has_no_neighbours_and_keeps_its_score():
    pool = unit(np.ones((1, 4))).astype(np.float32)
    nb = N.pool_neighbours(pool)
    assert nb.shape == (1, 0)
    assert N.add_neighbourhood(np.array([2.5]), nb, np.array([2.5])).tolist() == [2.5]


def test_query_neighbours_and_the_term_match_a_loop():
    rng = np.random.default_rng(1)
    pool = unit(rng.normal(size=(40, 8))).astype(np.float32)
    q = unit(rng.normal(size=(9, 8))).astype(np.float32)
    nb = N.query_neighbours(q, pool, 5)
    assert [set(r.tolist()) for r in nb] == brute_knn(q, pool, 5)
    pool_s, q_s = rng.normal(size=40), rng.normal(size=9)
    want = [q_s[i] + 0.5 * np.mean([pool_s[j] for j in nb[i]]) for i in range(9)]
    assert np.allclose(N.add_neighbourhood(q_s, nb, pool_s, 0.5), want)
    assert np.array_equal(N.add_neighbourhood(q_s, nb, pool_s, 0.0), q_s)


def test_a_cluster_of_harm_outranks_a_lone_benign_look_alike():
    """Ten harmful rows scoring 1.0 together, a benign row scoring 1.2 alone among benign rows scoring 0:
    the raw score ranks the lone row first, the term ranks every cluster row above it."""
    rng = np.random.default_rng(0)
    e = np.eye(16)
    benign = unit(e[0] + 0.3 * rng.normal(size=(100, 16)))
    harm = unit(e[1] + 0.1 * rng.normal(size=(10, 16)))
    lone = unit(e[0] + 0.3 * e[2] + 0.05 * rng.normal(size=(1, 16)))
    pool = np.vstack([benign, harm, lone]).astype(np.float32)
    s = np.r_[np.zeros(100), np.ones(10), 1.2]
    out = N.add_neighbourhood(s, N.pool_neighbours(pool), s)
    assert s[110] > s[100:110].max() and out[110] < out[100:110].min()


def test_budget_with_the_term_keeps_its_recall_guarantee_and_drops_the_harm():
    rng = np.random.default_rng(0)
    dim, e = 16, np.eye(16)
    draw = lambda centre, n: unit(centre + 0.35 * rng.normal(size=(n, dim)))  # noqa: E731
    benign, harm, anchor, ref = draw(e[0], 80), draw(e[1], 16), draw(e[0], 12), draw(e[1], 40)
    pool = np.vstack([benign, harm])
    on = B.calibrate(pool, anchor, ref, CurateConfig(), 0.95)
    off = B.calibrate(pool, anchor, ref, CurateConfig(), 0.95, neighbourhood=False)
    assert on.folds == 4 and all(r >= 0.95 for r in on.per_fold_recall)  # the split guarantee is the term's too
    # 16 harmful rows at a 95% target: 14 dropped here; 13 leaves room for binomial noise, not for a broken term
    assert on.harmful_like[80:].sum() >= 13 and on.harmful_like[:80].mean() <= 0.05
    assert not np.allclose(on.budget_score, off.budget_score)  # the default really adds the term


def test_propagation_converges_to_the_linear_solve():
    """Many rounds of s <- s0 + beta * mean_N(s) reach the fixed point (I - beta P)^-1 s0, P the
    row-normalised kNN matrix (an independent dense solve); one round is `add_neighbourhood` once."""
    rng = np.random.default_rng(3)
    pool = unit(rng.normal(size=(30, 6))).astype(np.float32)
    nb = N.pool_neighbours(pool, 4)
    s0 = rng.normal(size=30)
    P = np.zeros((30, 30))
    np.add.at(P, (np.repeat(np.arange(30), 4), nb.ravel()), 0.25)
    fixed = np.linalg.solve(np.eye(30) - 0.5 * P, s0)
    last, read = N.propagate(s0, nb, 0.5, 60)
    assert np.allclose(last, fixed, atol=1e-9) and np.allclose(read, fixed, atol=1e-9)
    one, read1 = N.propagate(s0, nb, 0.5, 1)
    assert np.allclose(one, N.add_neighbourhood(s0, nb, s0, 0.5)) and np.array_equal(read1, s0)
    two, read2 = N.propagate(s0, nb, 0.5, 2)
    assert np.array_equal(read2, one) and np.allclose(two, s0 + 0.5 * one[nb].mean(axis=1))
    # the default (what the budget runs) is one round at beta 0.5: the fourth session's term, bit for bit
    default, read_d = N.propagate(s0, nb)
    assert np.array_equal(default, s0 + 0.5 * s0[nb].mean(axis=1)) and np.array_equal(read_d, s0)


def test_defaults_read_the_documented_ten_neighbours_at_half_weight():
    """The module docstring and RESULTS.md describe 10 neighbours and beta 0.5: the calls without
    arguments must use them (checked through behaviour, against the loop of the test above)."""
    rng = np.random.default_rng(3)
    pool = unit(rng.normal(size=(30, 8))).astype(np.float32)
    nb = N.pool_neighbours(pool)
    assert nb.shape == (30, 10)
    assert [set(r.tolist()) for r in nb] == brute_knn(pool, pool, 10, exclude_self=True)
    q = unit(rng.normal(size=(4, 8))).astype(np.float32)
    assert N.query_neighbours(q, pool).shape == (4, 10)
    s = rng.normal(size=30)
    assert np.allclose(N.add_neighbourhood(s, nb, s), s + 0.5 * s[nb].mean(axis=1))


@pytest.mark.parametrize("beta,want", [(0.5, [2.0, 4.0, 4.5]), (1.0, [3.0, 6.0, 5.0])])
def test_one_neighbour_is_still_a_neighbourhood(beta, want):
    s = np.array([1.0, 2.0, 4.0])
    assert N.add_neighbourhood(s, np.array([[1], [2], [0]]), s, beta).tolist() == want


@pytest.mark.parametrize("n_query,n_pool", [(0, 5), (3, 0), (0, 0)])
def test_query_neighbours_of_nothing_or_in_an_empty_pool_are_empty_lists(n_query, n_pool):
    """No query rows, or no pool rows to find: one empty list per query row, and the term leaves
    the scores as they were (a reference row with no pool around it keeps its own score)."""
    rng = np.random.default_rng(4)
    q = unit(rng.normal(size=(max(n_query, 1), 8))).astype(np.float32)[:n_query]
    pool = unit(rng.normal(size=(max(n_pool, 1), 8))).astype(np.float32)[:n_pool]
    nb = N.query_neighbours(q, pool)
    assert nb.shape == (n_query, 0) and nb.dtype == np.int64
    s = rng.normal(size=n_query)
    assert np.array_equal(N.add_neighbourhood(s, nb, np.zeros(n_pool)), s)


@pytest.mark.parametrize("n_query,k", [(1, 3), (3, 1)])
def test_query_neighbours_of_one_row_or_one_neighbour_match_brute_force(n_query, k):
    rng = np.random.default_rng(5)
    pool = unit(rng.normal(size=(20, 8))).astype(np.float32)
    q = unit(rng.normal(size=(n_query, 8))).astype(np.float32)
    assert [set(r.tolist()) for r in N.query_neighbours(q, pool, k)] == brute_knn(q, pool, k)


def test_the_cross_fitted_pool_score_is_a_real_score_of_every_pool_row():
    """The stored pool score (what the outlier rule reads) is a score of every pool row, not a
    placeholder: finite, one per row, and higher on the harmful cluster than on the benign bulk."""
    rng = np.random.default_rng(0)
    dim, e = 16, np.eye(16)
    draw = lambda centre, n: unit(centre + 0.35 * rng.normal(size=(n, dim)))  # noqa: E731
    pool = np.vstack([draw(e[0], 60), draw(e[1], 12)])
    fit = B.cross_fit(pool, draw(e[0], 12), draw(e[1], 40), CurateConfig())
    assert fit.pool_scores.shape == (72,) and np.isfinite(fit.pool_scores).all()
    assert fit.pool_scores[60:].min() > np.median(fit.pool_scores[:60])
    assert fit.pool_shares.shape == (B.usable_folds(40, B.FOLDS), 72)



def test_cross_fit_builds_one_pool_index_for_its_three_neighbour_searches(monkeypatch):
    """The pool's FAISS index is built once and searched for the pool, the held-out reference and
    the anchor (an IVF build at 10^5 rows costs ~40 s: building it three times doubled the stage)."""
    from sot_core.ot import costs

    built = []
    real = costs._knn_index
    monkeypatch.setattr(costs, "_knn_index", lambda faiss, y: built.append(len(y)) or real(faiss, y))
    rng = np.random.default_rng(3)
    pool = unit(rng.normal(size=(120, 16))).astype(np.float32)
    anchor, harmful = (unit(rng.normal(size=(n, 16))).astype(np.float32) for n in (20, 60))
    fit = B.cross_fit(pool, anchor, harmful, CurateConfig(), folds=3, neighbourhood=True)
    assert built == [len(pool)]
    # and the shared index gives the lists a fresh search would
    index = costs.NearestRows(pool)
    np.testing.assert_array_equal(N.query_neighbours(harmful, pool, nearest=index), N.query_neighbours(harmful, pool))
    assert fit.pool_shares.shape == (3, len(pool))
