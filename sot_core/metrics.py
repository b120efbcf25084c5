"""Curation quality metrics against ground-truth labels (1 = harmful)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from sot_core.errors import InputError

POSITIVE = {"1", "true", "yes", "unsafe", "harmful"}


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve of `score` (higher = more harmful) for binary `label`.

    Computed as the Mann-Whitney U statistic with average ranks for ties.
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
    """How many labelled-harmful rows survived selection."""
    selected, label = np.asarray(selected, bool), np.asarray(label, bool)
    kept = int((selected & label).sum())
    total = int(label.sum())
    return {"harmful_total": total, "harmful_kept": kept, "harmful_kept_fraction": kept / total if total else 0.0}


def read_labels(path: str | Path, field: str = "label", id_field: str = "id") -> dict[str, bool]:
    """Read {id: is_harmful} from a CSV or JSONL/JSON file with an id and a label column."""
    path = Path(path)
    if not path.exists():
        raise InputError(str(path), "labels file does not exist")
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f))
    elif path.suffix == ".json":
        records = json.loads(path.read_text(encoding="utf-8"))
    else:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    labels = {}
    for row_number, rec in enumerate(records, start=1):
        for name in (id_field, field):
            if name not in rec:
                raise InputError(str(path), "missing field", row=row_number, field=name)
        labels[str(rec[id_field])] = str(rec[field]).strip().lower() in POSITIVE
    return labels
