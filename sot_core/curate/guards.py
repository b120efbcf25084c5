"""Guards against runs that look successful but are not: an empty or near-empty selection, a
labels file that names none of the pool's rows, and inputs whose composition defeats curation.

A selection below `MIN_SELECTED` rows is an error: fine-tuning on a handful of rows teaches the
model nothing, so such a run must fail loudly rather than publish. Composition problems (an
anchor that looks like the harmful reference, a pool most of which looks harmful) are warnings:
the run is still well defined, but the report and the command line say plainly that its result
is unlikely to be what the user wants. So is an anchor unlike the pool (`outside_anchor_share`):
the anchor of another task (the bundled demo's GSM8K rows beside an SST-2 pool) makes the pull
meaningless, and on such a pair the budget kept 34 of 200 harmful rows at AUROC 0.79.
"""
from __future__ import annotations

import numpy as np

from sot_core.errors import InputError, SotError

# The fewest rows a curated set may hold: below this a fine-tune on it is meaningless.
MIN_SELECTED = 5
# Share of harmful-like rows above which a pool or an anchor is reported as "mostly harmful-like".
MOSTLY = 0.5
# Quantile of the anchor rows' similarity to their nearest other anchor row that a pool row must
# reach to count as near the anchor (`outside_anchor_share`).
ANCHOR_QUANTILE = 0.1


class SelectionError(SotError, ValueError):
    """A selection too small to publish (empty or near-empty)."""


def check_selection(n_selected: int, n_pool: int, keep, reason: str = "") -> None:
    """Refuse a selection of fewer than `MIN_SELECTED` rows (or of every row of a tiny pool).

    Raises
    ------
    SelectionError
        One line naming the counts, the keep setting and what to change.
    """
    need = min(MIN_SELECTED, n_pool)
    if n_selected >= need and n_selected > 0:
        return
    what = "an empty" if n_selected == 0 else "a near-empty"
    hint = reason or "raise --keep, or give a larger pool"
    raise SelectionError(f"the selection keeps {n_selected} of {n_pool} rows (keep={keep}): {what} curated set "
                         f"is not published (at least {need} rows must be kept); {hint}")


def check_labels_match(labels: dict[str, bool], ids: list[str], source: str = "labels") -> None:
    """Refuse a labels file none of whose ids is a pool row id (the wrong file, or ids of another pool)."""
    if not labels:
        return
    if not any(i in labels for i in ids):
        sample = ", ".join(repr(k) for k in list(labels)[:3])
        raise InputError(source, f"no id of the labels file matches a pool row id (labels ids look like {sample}; "
                         f"pool ids like {', '.join(repr(i) for i in ids[:3])}); is it the labels file of another pool?",
                         field="id")


def outside_anchor_share(pool: np.ndarray, anchor: np.ndarray, block: int = 65536) -> float | None:
    r"""Share of pool rows farther from every anchor row than most anchor rows are from each other.

    With :math:`a_j = \max_{k \ne j} \langle y_j, y_k \rangle` each anchor row's similarity to its
    nearest other anchor row and :math:`q` their `ANCHOR_QUANTILE` quantile, the share of pool rows
    :math:`x` with :math:`\max_j \langle x, y_j \rangle < q`. A pool drawn like the anchor gives about
    `ANCHOR_QUANTILE` (0.05-0.17 on the shared task mixes and general pools with their own anchors);
    a pool of another task about 1 (0.99-1.00 against the bundled GSM8K anchor). Harmful rows sit
    outside too, so a pool with harm reads higher by up to its contamination.

    Parameters
    ----------
    pool : np.ndarray, shape (n, d); anchor : np.ndarray, shape (m, d)
        Unit-norm rows (cosine = inner product). None is returned when m < 2 (no nearest other row).
    """
    if len(anchor) < 2 or len(pool) == 0:
        return None
    anchor = np.asarray(anchor, dtype=np.float32)
    gram = anchor @ anchor.T
    np.fill_diagonal(gram, -np.inf)
    q = np.quantile(gram.max(axis=1), ANCHOR_QUANTILE)
    outside = sum(int(((pool[i:i + block] @ anchor.T).max(axis=1) < q).sum()) for i in range(0, len(pool), block))
    return outside / len(pool)


def composition_warnings(pool_harmful_share: float | None, anchor_harmful_share: float | None,
                         pool_outside_anchor: float | None = None) -> list[str]:
    """Plain-language warnings when the pool or the safe anchor is mostly harmful-like, or the pool
    mostly unlike the anchor.

    Parameters
    ----------
    pool_harmful_share, anchor_harmful_share : float or None
        Estimated share of harmful-like rows (`sot_core.curate.budget`); None: not estimated.
    pool_outside_anchor : float or None
        `outside_anchor_share` of the pool (the costs stage); None: not measured.
    """
    out = []
    if pool_outside_anchor is not None and pool_outside_anchor > MOSTLY:
        out.append(f"the pool looks unlike the safe anchor ({pool_outside_anchor:.0%} of its rows are farther from every "
                   f"anchor row than {1 - ANCHOR_QUANTILE:.0%} of the anchor's rows are from each other): curation pulls "
                   "toward the anchor, so it should be a trusted sample of the pool's own task; an anchor of another "
                   "task (the bundled demo's math rows beside your data, say) makes the selection far weaker")
    if anchor_harmful_share is not None and anchor_harmful_share > MOSTLY:
        out.append(f"the safe anchor looks mostly like the harmful reference ({anchor_harmful_share:.0%} of its rows "
                   "score as harmful-like): curation pulls toward it, so check that --safe-anchor and --harmful-ref "
                   "are not swapped and that the anchor is trusted data of the task")
    if pool_harmful_share is not None and pool_harmful_share > MOSTLY:
        out.append(f"the pool looks mostly harmful-like (estimated contamination {pool_harmful_share:.0%}): "
                   "check the inputs; the curated set keeps only the rows below the harmful-row threshold")
    return out
