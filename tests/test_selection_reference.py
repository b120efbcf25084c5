"""`select_top` against a brute-force reference: exactly round(keep * n) rows, the heaviest, ties
broken towards the earlier row (hypothesis over weights with many ties and every keep)."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sot_core.curate.select import select_top


def reference_top(weights: list[float], keep: float) -> set[int]:
    """Sort rows by (-weight, index) and take the first round(keep * n): no numpy involved."""
    ranked = sorted(range(len(weights)), key=lambda i: (-weights[i], i))
    return set(ranked[:int(round(keep * len(weights)))])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=30), st.floats(0.01, 1.0))
def test_select_top_equals_the_brute_force_reference(levels, keep):
    weights = [float(v) for v in levels]  # small integer levels: ties are the rule, not the exception
    mask = select_top(np.array(weights), keep)
    assert mask.dtype == bool and len(mask) == len(weights)
    assert set(np.flatnonzero(mask)) == reference_top(weights, keep)


def test_the_kept_count_is_rounded_not_truncated():
    assert select_top(np.linspace(1, 0, 10), 0.75).sum() == 8  # round(7.5) = 8; int() would give 7
    assert select_top(np.linspace(1, 0, 10), 0.76).sum() == 8
