"""Guards against runs that look successful but are not: an empty or near-empty selection, a
labels file that names none of the pool's rows, and inputs whose composition defeats curation.

A selection below `MIN_SELECTED` rows is an error: fine-tuning on a handful of rows teaches the
model nothing, so such a run must fail loudly rather than publish. Composition problems (an
anchor that looks like the harmful reference, a pool most of which looks harmful) are warnings:
the run is still well defined, but the report and the command line say plainly that its result
is unlikely to be what the user wants.
"""
from __future__ import annotations

from sot_core.errors import InputError, SotError

# The fewest rows a curated set may hold: below this a fine-tune on it is meaningless.
MIN_SELECTED = 5
# Share of harmful-like rows above which a pool or an anchor is reported as "mostly harmful-like".
MOSTLY = 0.5


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


def composition_warnings(pool_harmful_share: float | None, anchor_harmful_share: float | None) -> list[str]:
    """Plain-language warnings when the pool or the safe anchor is mostly harmful-like.

    Parameters
    ----------
    pool_harmful_share, anchor_harmful_share : float or None
        Estimated share of harmful-like rows (`sot_core.curate.budget`); None: not estimated.
    """
    out = []
    if anchor_harmful_share is not None and anchor_harmful_share > MOSTLY:
        out.append(f"the safe anchor looks mostly like the harmful reference ({anchor_harmful_share:.0%} of its rows "
                   "score as harmful-like): curation pulls toward it, so check that --safe-anchor and --harmful-ref "
                   "are not swapped and that the anchor is trusted data of the task")
    if pool_harmful_share is not None and pool_harmful_share > MOSTLY:
        out.append(f"the pool looks mostly harmful-like (estimated contamination {pool_harmful_share:.0%}): "
                   "check the inputs; the curated set keeps only the rows below the harmful-row threshold")
    return out
