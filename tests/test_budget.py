"""The harmful-row budget (sot_core/curate/budget.py): the split, the quantile, the out-of-sample
score against the solver's own potentials, determinism, the selection it drives, and `sot curate --keep auto`."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sot_core.config import CurateConfig
from sot_core.curate import budget as B
from sot_core.curate.select import _selection


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clouds(n_benign=150, n_harm=30, n_anchor=20, n_ref=80, dim=16, seed=0):
    """Benign rows around one direction, harmful rows (and the reference) around another."""
    rng = np.random.default_rng(seed)
    b, h = np.eye(dim)[0], np.eye(dim)[1]
    draw = lambda centre, n: unit(centre + 0.35 * rng.normal(size=(n, dim)))
    return draw(b, n_benign), draw(h, n_harm), draw(b, n_anchor), draw(h, n_ref)


@pytest.mark.parametrize("n,folds,seed", [(10, 2, 0), (463, 5, 0), (464, 5, 3), (97, 7, 1)])
def test_reference_folds_are_disjoint_balanced_and_deterministic(n, folds, seed):
    f = B.reference_folds(n, folds, seed)
    assert f.shape == (n,) and set(f) == set(range(folds))  # every row in exactly one fold
    sizes = np.bincount(f)
    assert sizes.max() - sizes.min() <= 1
    assert (B.reference_folds(n, folds, seed) == f).all()
    assert not (B.reference_folds(n, folds, seed + 1) == f).all()


def test_cluster_folds_keep_each_tight_cluster_whole_and_deal_clusters_largest_first():
    """Eight tight, far-apart clusters of known sizes and k = 2 folds x 4 = 8 k-means clusters:
    every true cluster lands whole in one fold, and the folds' sizes are those of dealing the
    clusters largest first, each to the fold with fewer rows so far (recomputed here)."""
    rng = np.random.default_rng(0)
    sizes = [30, 25, 20, 15, 12, 10, 8, 5]
    truth = np.repeat(np.arange(8), sizes)
    x = unit(np.eye(16)[truth] + 0.05 * rng.normal(size=(len(truth), 16)))
    # seed 3 draws one initial centre per true cluster (seed 0 draws two in one, and k-means then
    # splits that cluster and merges two others: a local optimum, not a contract breach)
    f = B.cluster_folds(x, folds=2, seed=3)
    assert f.shape == (len(truth),) and set(f) <= {0, 1}
    for c in range(8):
        assert len(set(f[truth == c])) == 1, f"cluster {c} split across folds"
    load = [0, 0]
    for size in sorted(sizes, reverse=True):
        load[int(np.argmin(load))] += size
    assert sorted(np.bincount(f, minlength=2)) == sorted(load)
    assert (B.cluster_folds(x, folds=2, seed=3) == f).all()  # seeded: deterministic


def test_usable_folds_shrink_for_small_references():
    assert B.usable_folds(463, 5) == 5 and B.usable_folds(30, 5) == 3 and B.usable_folds(12, 5) == 2
    assert B.usable_folds(35, 5) == 3 and isinstance(B.usable_folds(35, 5), int)  # whole folds of >= 10 rows


def test_the_documented_constants_are_the_defaults_of_the_direct_calls():
    """FOLDS, SEED and DISCRIMINANT (what the pipeline's budget stage passes) are also the defaults
    of `cross_fit`, `calibrate` and `reference_folds`: a direct call splits and scores the reference
    as a pipeline run does. The values are the documented ones (5 folds, seed 0, discriminant on)."""
    import inspect

    assert (B.FOLDS, B.SEED, B.DISCRIMINANT) == (5, 0, True)
    for f in (B.cross_fit, B.calibrate):
        p = inspect.signature(f).parameters
        assert (p["folds"].default, p["seed"].default, p["discriminant"].default) == (B.FOLDS, B.SEED, B.DISCRIMINANT)
    assert (B.reference_folds(50, 5) == B.reference_folds(50, 5, B.SEED)).all()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("recall", [0.5, 0.9, 0.95, 0.99])
def test_fold_threshold_is_the_brute_force_quantile(seed, recall):
    """Rows at or above t are dropped: at least recall * m held-out rows are, and no larger
    candidate threshold drops enough (brute force over every held-out value)."""
    rng = np.random.default_rng(seed)
    held = np.round(rng.normal(size=int(rng.integers(5, 60))), 1)  # ties on purpose
    t = B.fold_threshold(held, recall)
    assert (held >= t).sum() >= recall * len(held) - 1e-9
    best = max(c for c in held if (held >= c).sum() >= recall * len(held) - 1e-9)
    assert t == best
    # the budget score agrees: held-out rows with share > 1 - recall are exactly those >= t
    shares = B.share_at_or_below(held, held)
    assert ((shares > 1 - recall) == (held >= t)).all() or (held >= t).sum() >= ((shares > 1 - recall)).sum()
    assert (shares > 1 - recall).mean() >= recall - 1e-9


def test_share_at_or_below_brute_force():
    rng = np.random.default_rng(0)
    held, x = rng.normal(size=40), rng.normal(size=25)
    assert np.allclose(B.share_at_or_below(x, held), [(held <= v).mean() for v in x])


def test_soft_c_transform_reproduces_the_sinkhorn_potential_and_the_solver_score():
    """At a Sinkhorn fixed point f_i = T(x_i); the scorer's pool scores equal the solver's up to a constant."""
    from sot_core.ot.push_pull import solve_push_pull
    from sot_core.ot.sinkhorn import sinkhorn_log

    benign, harm, anchor, ref = clouds()
    pool = np.vstack([benign, harm])
    cost = np.clip(1 - pool @ ref.T, 0, 2)
    w = np.random.default_rng(1).dirichlet(np.ones(len(pool)))
    res = sinkhorn_log(w, np.full(len(ref), 1 / len(ref)), cost, 0.1, dtype="float64", device="cpu", tol=1e-9,
                       max_iter=20000)
    t = B.soft_c_transform(cost, res.g, np.log(np.full(len(ref), 1 / len(ref))), 0.1)
    assert np.allclose(t, res.f, atol=1e-6)
    cfg = CurateConfig()
    scorer = B.FoldScorer(pool, anchor, ref, cfg)
    solver = solve_push_pull(np.clip(1 - pool @ anchor.T, 0, 2), cost, cfg.push_pull()).score
    diff = scorer.score(pool) - solver
    # measured 4.5e-4 (the solver stops at outer_tol); kNN-64 costs instead of dense ones give 3.3e-3
    assert diff.std() < 1e-3 * solver.std()
    # each side's reference masses are a probability vector: uniform, or the anchor masses normalised
    assert np.allclose(np.exp(scorer.sides["anchor"][2]), 1 / len(anchor), rtol=1e-12)
    assert np.allclose(np.exp(scorer.sides["harmful"][2]), 1 / len(ref), rtol=1e-12)


def test_fold_scorer_normalises_the_anchor_masses():
    benign, harm, anchor, ref = clouds(n_benign=20, n_harm=5, n_anchor=6, n_ref=12)
    masses = np.linspace(1.0, 3.0, 6)
    weighted = B.FoldScorer(np.vstack([benign, harm]), anchor, ref, CurateConfig(), anchor_masses=masses)
    assert np.allclose(np.exp(weighted.sides["anchor"][2]), masses / masses.sum(), rtol=1e-12)


@pytest.mark.filterwarnings("ignore:push-pull solve not converged")  # well-separated toy clouds
def test_calibrate_drops_the_harm_keeps_the_benign_and_is_deterministic():
    benign, harm, anchor, ref = clouds()
    pool = np.vstack([benign, harm])
    a = B.calibrate(pool, anchor, ref, CurateConfig(), 0.95)
    b = B.calibrate(pool, anchor, ref, CurateConfig(), 0.95)
    assert (a.budget_score == b.budget_score).all() and a.fold_thresholds == b.fold_thresholds
    assert all(r >= 0.95 for r in a.per_fold_recall) and a.folds == 5
    # 30 harmful pool rows at a 95% target: 27 or more dropped (the OT score alone and with the discriminant both
    # dropped 27-30 of them over the cloud seeds 0-5, 0.955 and 0.944 on average: binomial noise around 0.95)
    assert a.harmful_like[len(benign):].mean() >= 0.9 and a.harmful_like[:len(benign)].mean() <= 0.05
    assert a.anchor_harmful_share == 0.0
    assert abs(a.contamination - len(harm) / len(pool)) < 0.05
    swapped = B.calibrate(pool, ref[:20], anchor, CurateConfig(), 0.95)  # anchor and reference swapped
    assert swapped.contamination > 0.5


def test_selection_with_budget_caps_and_protects():
    w = np.linspace(1.0, 0.0, 10)
    eligible = np.array([1, 1, 0, 1, 1, 1, 1, 1, 1, 1], bool)
    protected = np.zeros(10, bool)
    protected[9] = True
    sel, tw = _selection(w, ["x"] * 10, CurateConfig(keep="auto"), eligible, protected)
    assert sel.tolist() == eligible.tolist()  # auto: every eligible row
    sel, tw = _selection(w, ["x"] * 10, CurateConfig(keep=0.3), eligible, protected)
    assert sel.sum() == 3 and sel[9] and sel[0] and sel[1] and not sel[2]  # cap; refusal first; dropped never
    assert abs(tw[sel].mean() - 1) < 1e-9 and tw[9] > 0.5  # trains at the median level, not the 0.2 floor


def test_keep_auto_config_and_option():
    from sot_prefect.flows.cli import build_parser

    assert CurateConfig(keep="auto").keep == "auto"
    with pytest.raises(ValueError, match="keep must be one of auto or a float"):
        CurateConfig(keep="most")
    with pytest.raises(ValueError, match="harmful_recall > 0"):
        CurateConfig(keep="auto", harmful_recall=0)
    parser, _ = build_parser()
    assert parser.parse_args(["curate", "--keep", "auto"]).keep == "auto"
    assert parser.parse_args(["curate", "--keep", "0.7", "--harmful-recall", "0.9"]).harmful_recall == 0.9
    with pytest.raises(SystemExit):
        parser.parse_args(["curate", "--keep", "most"])


def test_keep_auto_through_sot_reports_contamination_and_threshold(tmp_path, capsys, prefect_backend):
    """`sot curate --keep auto` in this process (the session's Prefect backend; the real process
    and its exit codes are tests/test_cli_process.py's subject)."""
    from sot_prefect.flows.cli import main
    from tests.test_cli_process import SMALL

    out = tmp_path / "out"
    code = main(["curate", *SMALL, "--home", str(tmp_path / "home"), "--out-dir", str(out),
                 "--keep", "auto", "--harmful-recall", "0.95", "--review-rows", "4"])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    assert "estimated contamination" in printed.out
    info = json.loads((out / "run.json").read_text())
    b = info["budget"]
    assert b["harmful_recall"] == 0.95 and 0 <= b["estimated_contamination"] <= 1 and b["fold_score_thresholds"]
    # the fixture pool holds 5 PyRIT rows among 25 GSM8K rows: they are the rows dropped
    kept = {json.loads(line)["id"] for line in (out / "curated.jsonl").read_text().splitlines()}
    assert not any(i.startswith("pyrit") for i in kept) and len(kept) >= 23
    assert "## Harmful-row budget" in (out / "report.md").read_text()
    # --review-rows: the 4 kept rows with the highest budget scores, in that order
    import pyarrow.parquet as pq

    review = [json.loads(line) for line in (out / "review.jsonl").read_text().splitlines()]
    assert len(review) == 4 == info["review"]["rows"] and {r["id"] for r in review} <= kept
    table = pq.read_table(out / "weights.parquet").to_pydict()
    top = sorted((u for u, s, r in zip(table["budget_score"], table["selected"], table["refusal"]) if s and not r),
                 reverse=True)[:4]
    assert [r["budget_score"] for r in review] == top


def test_contamination_jump_raises_the_nightly_drift_alarm(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sot_core.curate.incremental import batch_contamination, contamination_jump, drift_alarm

    quiet = [{"contamination": c, "drift_to_harmful": 1.0, "drift_to_anchor": 0.5} for c in (0.02, 0.03, 0.02)]
    assert contamination_jump(quiet, 0.04, 0.25) is None  # within (1.25 * 0.02 + 0.05)
    assert "jumped to 30.0%" in contamination_jump(quiet, 0.30, 0.25)
    assert contamination_jump([], 0.04, 0.25) is None and "jumped" in contamination_jump([], 0.30, 0.25)
    drift = {"to_harmful": 1.0, "to_anchor": 0.5, "contamination": 0.30}
    assert "contamination" in drift_alarm(quiet, drift, 0.25)
    assert drift_alarm(quiet, {**drift, "contamination": 0.02}, 0.25) is None
    pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "harmful_like": [True, False, True, False]}),
                   tmp_path / "weights.parquet")
    assert batch_contamination(tmp_path / "weights.parquet", ["a", "b", "c"]) == pytest.approx(2 / 3)
    pq.write_table(pa.table({"id": ["a"], "weight": [1.0]}), tmp_path / "plain.parquet")
    assert batch_contamination(tmp_path / "plain.parquet", ["a"]) is None


def test_too_small_a_reference_is_refused_with_one_line():
    benign, harm, anchor, ref = clouds()
    with pytest.raises(B.BudgetError, match="at least 4 harmful reference rows"):
        B.calibrate(np.vstack([benign, harm]), anchor, ref[:3], CurateConfig(), 0.95)
    assert B.calibrate(np.vstack([benign, harm]), anchor, ref[:4], CurateConfig(), 0.95).folds == 2


def test_logistic_fit_matches_a_general_optimiser():
    """fit_logistic (Newton) against scipy's L-BFGS on the same class-balanced, ridge objective (bias not shrunk)."""
    from scipy.optimize import minimize

    from sot_core.curate.discriminant import fit_logistic

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5))
    y = (x[:, 0] + 0.5 * rng.normal(size=120) > 0.8).astype(float)  # unbalanced classes
    w = fit_logistic(x, y, l2=0.7)
    xb, sw = np.hstack([x, np.ones((120, 1))]), np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))

    def objective(v):
        z = xb @ v
        return float(np.sum(sw * (np.logaddexp(0, z) - y * z)) + 0.35 * np.sum(v[:-1] ** 2))

    ref = minimize(objective, np.zeros(6), method="L-BFGS-B", options={"gtol": 1e-10, "maxiter": 2000}).x
    assert np.allclose(w, ref, atol=1e-4)


@pytest.mark.filterwarnings("ignore:push-pull solve not converged")
def test_discriminant_separates_reference_from_anchor_and_ranks_harm_high():
    """The fitted logit puts reference rows above anchor rows; the combined score puts the pool's harmful rows
    above 95% of its benign rows; a fit without safe examples is refused."""
    from sot_core.curate.discriminant import CombinedScorer

    benign, harm, anchor, ref = clouds()
    pool = np.vstack([benign, harm])
    ot = B.FoldScorer(pool, anchor, ref, CurateConfig())
    comb = CombinedScorer(ot, pool, anchor, ref)
    assert comb.logit(ref).mean() > comb.logit(anchor).mean() + 1.0
    s = comb.score(pool)
    assert np.mean(s[len(benign):]) > np.quantile(s[:len(benign)], 0.95)  # harm above 95% of the benign rows
    with pytest.raises(ValueError, match="both classes"):
        from sot_core.curate.discriminant import fit_logistic
        fit_logistic(np.ones((3, 2)), np.ones(3))


def test_apply_recall_against_brute_force():
    """Every figure of the budget recomputed by brute force from a hand-made cross-fit: the budget
    score (mean share over folds), the harmful-like rows (held-out rule or the outlier rule, median +
    4 x 1.4826 MAD of the pool scores), per-fold thresholds and recalls, the anchor's share, summary."""
    import statistics

    rng = np.random.default_rng(5)
    held = [rng.normal(size=7), rng.normal(size=9)]
    pool_scores = np.r_[rng.normal(size=29), 40.0]  # the last row stands far out: an outlier
    shares = np.array([[np.mean(h <= s) for s in pool_scores] for h in held])
    anchor = rng.normal(size=6) - 1.0
    anchor_shares = np.array([[np.mean(h <= s) for s in anchor] for h in held])
    fit = B.CrossFit(shares, anchor_shares, held, pool_scores)
    r = 0.8
    b = B.apply_recall(fit, r)
    u = [(shares[0][i] + shares[1][i]) / 2 for i in range(30)]
    med = statistics.median(pool_scores.tolist())
    cut_out = med + 4 * 1.4826 * statistics.median([abs(s - med) for s in pool_scores.tolist()])
    like = [u[i] > 1 - r or pool_scores[i] > cut_out for i in range(30)]
    assert b.threshold == pytest.approx(1 - r) and b.outlier_threshold == pytest.approx(cut_out)
    np.testing.assert_allclose(b.budget_score, u)
    assert b.harmful_like.tolist() == like and b.harmful_like[-1] and b.outliers == 1
    assert b.fold_thresholds == [sorted(h, reverse=True)[int(np.ceil(r * len(h))) - 1] for h in held]
    assert b.per_fold_recall == pytest.approx([np.mean([np.mean(h <= x) > 1 - r for x in h]) for h in held])
    anchor_u = anchor_shares.mean(axis=0)
    assert b.anchor_harmful_share == pytest.approx(np.mean(anchor_u > 1 - r)) and b.folds == 2
    s = b.summary()
    json.dumps(s)  # JSON-able
    assert s["harmful_like_rows"] == sum(like) and s["estimated_contamination"] == pytest.approx(sum(like) / 30)
    assert s["outlier_rows"] == 1 and s["refusals_exempt"] == 0 and s["harmful_recall"] == r
    assert B.outlier_threshold(pool_scores, 2.0) == pytest.approx(
        med + 2 * 1.4826 * statistics.median([abs(x - med) for x in pool_scores.tolist()]))
    # no anchor rows checked: share 0; an empty pool: contamination 0
    empty = B.apply_recall(B.CrossFit(shares, np.zeros((2, 0)), held, pool_scores), r)
    assert empty.anchor_harmful_share == 0.0
    bare = B.Budget(np.zeros(0), np.zeros(0, bool), 0.2, [], [], 0.0, 2, r)
    assert bare.contamination == 0.0 and bare.outliers == 0 and bare.refusals_exempt == 0
    assert bare.outlier_threshold == float("inf")
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"harmful_recall must be in \(0, 1\)"):
            B.apply_recall(fit, bad)


def test_apply_recall_ties_at_the_threshold_are_not_harmful_like():
    """The rules are strict: u(x) > 1 - r and score > outlier threshold. With r = 0.75 (1 - r = 0.25
    exactly) and a held-out fold of 4 rows, shares of exactly 0.25 occur and stay below the line;
    a pool whose scores are mostly 0 has median and MAD 0, and its rows at 0 are no outliers."""
    held = [np.array([1.0, 2.0, 3.0, 4.0])]
    fit = B.CrossFit(np.array([[0.25, 0.25, 0.0, 1.0, 0.0, 0.0]]), np.array([[0.25, 0.0]]), held,
                     np.array([0.0, 0.0, 0.0, 0.0, 0.0, 5.0]))
    b = B.apply_recall(fit, 0.75)
    assert b.harmful_like.tolist() == [False, False, False, True, False, True] and b.outliers == 1
    assert b.per_fold_recall == [0.75]  # 3 of the 4 held-out rows lie above the line: exactly r
    assert b.anchor_harmful_share == 0.0
