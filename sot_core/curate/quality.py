"""How well a curation separates harmful rows, against ground-truth labels (True = harmful).

Used by `publish` (the report's "Against the labels" section) and by the benchmarks; labels are
read with `read_labels` from an ``id,label`` file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sot_core.data.loaders import load_labels

# Label values (lower-cased, stripped) that mean "harmful".
POSITIVE = {"1", "true", "yes", "unsafe", "harmful"}


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    r"""Area under the ROC curve of `score` (higher = more harmful) for binary `label`.

    Computed as the normalised Mann-Whitney U statistic with average ranks :math:`r_i` for ties:

    .. math:: \mathrm{AUROC} = \frac{\sum_{i:\,y_i=1} r_i - n_+(n_+ + 1)/2}{n_+\, n_-}

    Parameters
    ----------
    score : array_like, shape (n,)
    label : array_like of bool, shape (n,)

    Returns
    -------
    float
        In [0, 1]; NaN when one class is empty.

    References
    ----------
    Hanley & McNeil (1982), The meaning and use of the area under a ROC curve, Radiology 143.
    """
    score, label = np.asarray(score, float), np.asarray(label, bool)
    n_pos, n_neg = label.sum(), (~label).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    i = 0
    while i < len(score):  # average ranks over runs of ties
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def harmful_kept(selected: np.ndarray, label: np.ndarray) -> dict:
    """How many labelled-harmful rows survived selection: total, kept and kept fraction."""
    selected, label = np.asarray(selected, bool), np.asarray(label, bool)
    kept = int((selected & label).sum())
    total = int(label.sum())
    return {"harmful_total": total, "harmful_kept": kept, "harmful_kept_fraction": kept / total if total else 0.0}


def read_labels(path: str | Path, field: str = "label", id_field: str = "id") -> dict[str, bool]:
    """Read {id: is_harmful} from a file with an id and a label column (CSV, JSONL, JSON...), or from
    a labelled dataset without ids (a fine-tuning mix with its ``flag``: its rows get the ids
    ingestion gives them, so the pool file can label itself).

    Any format `sot_core.data.loaders.load_rows` reads; field names are case-insensitive; a
    label is harmful when its text is one of `POSITIVE` (``1``, ``true``, ``unsafe``...).
    Errors name the file, row and field.
    """
    labels = load_labels(str(path), field, id_field=id_field, rows_without_ids=True)
    return {row_id: str(value).strip().lower() in POSITIVE for row_id, value in labels.items()}
