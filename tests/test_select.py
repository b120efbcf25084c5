"""Selection: plain top-K and the label-stratified variant, against brute-force expectations."""
from __future__ import annotations

import numpy as np
import pytest

from sot_core.curate.report import render_report
from sot_core.curate.select import count_refusals, label_groups, select_stratified, select_top, training_weights


def test_select_top_keeps_the_largest_weights():
    w = np.array([0.1, 0.5, 0.2, 0.2, 0.0])
    assert select_top(w, 0.6).tolist() == [False, True, True, True, False]  # tie: earlier row first


def test_label_groups_only_for_shared_responses():
    resp = ["Positive"] * 3 + [" positive "] * 2 + ["negative"] * 4 + ["a long free answer", "another"]
    g = label_groups(resp, min_group=4)
    assert (g[:5] == g[0]).all() and g[0] >= 0 and (g[5:9] == g[5]).all() and g[5] != g[0]
    assert (g[9:] == -1).all()


def test_stratified_keeps_label_shares_and_still_drops_harmful():
    rng = np.random.default_rng(0)
    # 60 "positive" rows, 40 "negative" rows, 20 free-form rows of which the first 10 are harmful
    groups = np.r_[np.zeros(60, int), np.ones(40, int), -np.ones(20, int)]
    w = rng.random(120) + 1.0
    w[60:80] *= 0.3  # the curator dislikes half of the negatives: plain top-K would skew the labels
    w[100:110] = 0.01  # harmful free-form rows
    plain = select_top(w, 0.75)
    strat = select_stratified(w, 0.75, groups)
    assert plain[60:100].mean() < plain[:60].mean() - 0.2  # the skew stratification must undo
    pos, neg = strat[:60].mean(), strat[60:100].mean()
    assert abs(pos - neg) <= 1.0 / 40 + 1e-9
    assert not strat[100:110].any() and (strat[110:] == plain[110:]).all()
    assert abs(int(strat.sum()) - int(plain.sum())) <= 2  # rounding per group only
    # within a group the kept rows are that group's largest weights (brute force)
    kept_neg = np.flatnonzero(strat[60:100]) + 60
    assert w[kept_neg].min() >= np.sort(w[60:100])[::-1][len(kept_neg) - 1]


@pytest.mark.parametrize("scheme", ["normalised", "uniform"])
def test_training_weights_have_mean_one(scheme):
    w = np.random.default_rng(1).random(50)
    assert np.isclose(training_weights(w, scheme).mean(), 1.0)


@pytest.mark.parametrize("seed", range(5))
def test_training_weights_stay_in_range_with_mean_one_and_keep_ratios(seed):
    """Heavy-tailed OT weights (some rows 1000x the median): the result never leaves [0.2, 5],
    has mean 1, and rows inside the range keep their weight ratios (checked against w itself)."""
    rng = np.random.default_rng(seed)
    w = np.exp(rng.normal(0.0, 2.0, 400))
    t = training_weights(w, "normalised")
    assert t.min() >= 0.2 - 1e-12 and t.max() <= 5.0 + 1e-12
    assert abs(t.mean() - 1.0) < 1e-9
    inside = (t > 0.2 + 1e-9) & (t < 5.0 - 1e-9)
    assert inside.sum() > 10
    ratio = t[inside] / w[inside]
    assert np.allclose(ratio, ratio[0], rtol=1e-9)
    # clipped rows are exactly those whose scaled weight falls outside the range
    scale = ratio[0]
    assert np.array_equal(t <= 0.2 + 1e-12, scale * w <= 0.2 + 1e-12)


def test_refusal_count_follows_the_selection_and_skips_labelled_harm():
    responses = ["I'm sorry, but I can't help with that.", "I cannot assist with this request.",
                 "Sorry, I can't... but here is how: step 1, buy the parts.", "Positive", "Here is a cake recipe."]
    selected = np.array([True, False, True, True, False])
    assert count_refusals(responses, selected) == {"pool": 3, "kept": 2, "labels_used": False}
    harmful = np.array([False, False, True, False, False])  # the partial compliance is labelled harmful
    assert count_refusals(responses, selected, harmful) == {"pool": 2, "kept": 1, "labels_used": True}


def test_report_shows_the_refusal_section_only_when_there_are_refusals():
    summary = {"version": "v", "counts": {"selected": 1, "pool": 2, "embedded_now": {}},
               "config": {"keep": 0.5, "lam": 1, "eps": 0.1, "mode": "push-pull", "encoder": "minilm"},
               "solver": {}, "stage_seconds": {}, "top_flagged": [], "quality": None,
               "refusals": {"pool": 4, "kept": 3, "labels_used": True}}
    assert "**3 kept** (75%)" in render_report(summary) and "labelled harmful are not counted" in render_report(summary)
    summary["refusals"] = {"pool": 0, "kept": 0, "labels_used": False}
    assert "Refusals in the pool" not in render_report(summary)


def test_label_groups_need_20_rows_by_default():
    """The default threshold: a response shared by exactly 20 rows is a label, by 19 it is not."""
    resp = ["yes"] * 20 + ["no"] * 19 + ["free answer"]
    g = label_groups(resp)
    assert (g[:20] == 0).all() and (g[20:] == -1).all()


def test_uniform_training_weights_ignore_the_ot_weights():
    w = np.array([0.5, 0.1, 0.3, 0.1])
    np.testing.assert_array_equal(training_weights(w, "uniform"), np.ones(4))
    assert training_weights(np.array([]), "normalised").shape == (0,)
    np.testing.assert_array_equal(training_weights(np.zeros(3), "normalised"), np.ones(3))  # no preference: uniform
    t = training_weights(np.array([0.0, 0.2, 0.5, 0.3]), "normalised")  # a zero weight: clipped up, not NaN
    assert t[0] == 0.2 and t.mean() == pytest.approx(1.0, abs=1e-12)


def test_selection_stratifies_only_when_asked():
    from sot_core.config import CurateConfig
    from sot_core.curate.select import _selection

    responses = ["positive"] * 30 + ["negative"] * 30 + [f"free answer {i}" for i in range(10)]
    w = np.r_[np.linspace(2.0, 1.0, 30), np.linspace(0.9, 0.1, 30), np.linspace(5.0, 3.0, 10)]
    plain, _ = _selection(w, responses, CurateConfig(keep=0.5, harmful_recall=0.0))
    assert plain[:25].all() and plain[60:].all() and not plain[25:60].any()
    strat, tw = _selection(w, responses, CurateConfig(keep=0.5, harmful_recall=0.0, stratify="label"))
    assert strat[:12].all() and strat[30:42].all() and strat[60:].all() and strat.sum() == 34  # round(12.5) = 12
    for part in (slice(0, 30), slice(30, 60), slice(60, 70)):  # mean training weight 1 within each group
        assert tw[part][strat[part]].mean() == pytest.approx(1.0, abs=1e-9)


def test_refusals_train_at_the_median_of_the_other_eligible_rows():
    """`_selection`: refusal rows (protected) rank first and train at the median OT weight of the
    eligible non-refusal rows; rows the budget made ineligible (heavy ones here) stay out of that
    median. No row is clipped, so the expected training weights are the lifted weights over their
    mean (recomputed here)."""
    from sot_core.config import CurateConfig
    from sot_core.curate.select import _selection

    w = np.array([1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 0.1, 0.1, 3.0, 3.0, 3.0, 3.0])
    protected = (np.arange(12) >= 6) & (np.arange(12) < 8)
    eligible = np.arange(12) < 8
    selected, tw = _selection(w, ["x"] * 12, CurateConfig(keep=1.0, harmful_recall=0.0), eligible, protected)
    assert selected.tolist() == eligible.tolist()
    lifted = np.where(protected, np.median(w[:6]), w)[:8]  # median 1.5 of the six eligible others
    np.testing.assert_allclose(tw[:8], lifted / lifted.mean(), rtol=1e-9)
    assert (tw[8:] == 0).all()


def test_stratified_without_label_groups_is_plain_top_k_and_no_refusals_leave_the_score():
    """Shortcuts with their general answers: no label group (all free-form rows) selects the plain
    top-K; no refusal row leaves the OT score as it is (as float64)."""
    from sot_core.curate.select import refusal_aware_score

    w = np.array([0.3, 0.1, 0.4, 0.2, 0.0])
    groups = -np.ones(5, dtype=np.int64)
    assert select_stratified(w, 0.6, groups).tolist() == [True, False, True, True, False]
    score = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    out = refusal_aware_score(score, np.zeros(3, dtype=bool))
    assert out.dtype == np.float64 and out.tolist() == score.astype(np.float64).tolist()
    lowered = refusal_aware_score(score.astype(np.float64), np.array([False, False, True]))
    assert lowered.tolist() == [0.5, -1.0, 0.5]  # a refusal is lowered to the median score


def test_top_flagged_are_the_ten_highest_scores_with_160_character_previews_and_budget_summary_default():
    from sot_core.curate.budget import Budget
    from sot_core.curate.select import _top_flagged, budget_summary

    rng = np.random.default_rng(3)
    score = rng.normal(size=14)
    ids = [f"r{i}" for i in range(14)]
    prompts = [str(i) * 200 for i in range(10)] + ["short"] * 4
    top = _top_flagged(ids, prompts, score)
    expected = sorted(range(14), key=lambda i: -score[i])[:10]
    assert [t["id"] for t in top] == [ids[i] for i in expected]
    assert [t["score"] for t in top] == [float(score[i]) for i in expected]
    assert all(t["prompt"] == prompts[int(t["id"][1:])][:160] for t in top)
    assert max(len(t["prompt"]) for t in top) == 160
    b = Budget(np.zeros(3), np.array([True, False, False]), 0.05, [0.1], [1.0], 0.0, 2, 0.95)
    assert budget_summary(b)["applied"] is True and budget_summary(b, False)["applied"] is False
    assert budget_summary(None) is None
