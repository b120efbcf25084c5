"""The review queue: the kept rows a person should read first.

No threshold catches every harmful row: on the general pool the budget misses about 3-6% of the harm
(`benchmarks/RESULTS.md`, sections aligned_budget and review_queue). Those misses are not spread evenly
over the kept rows; they gather near the top of the kept rows ranked by the score the threshold cuts
(36-76% of them in the first 50 of 330-640 kept rows, measured). So `publish` writes ``review.jsonl``:
the kept rows that score most like harm (``--review-rows``, default `REVIEW_ROWS`), most harmful-like
first, with the full row and its scores, for a person (or a stronger judge) to check before training.
``weights.parquet`` holds every row's scores.

Ranking: the budget score u(x) (`sot_core.curate.budget`), ties broken by the OT score; without a
budget (``harmful_recall 0``), the OT score alone. Rows the refusal guard kept are left out: they
score like harm because they answer harmful prompts, and would fill the queue with refusals.
"""
from __future__ import annotations

import json

import numpy as np

from sot_core.config import REVIEW_ROWS

# The report and the Prefect table show the first REVIEW_PREVIEW rows of the queue.
REVIEW_PREVIEW = 10


def review_order(selected: np.ndarray, protected: np.ndarray, score: np.ndarray,
                 budget_score: np.ndarray | None = None, rows: int = REVIEW_ROWS) -> np.ndarray:
    """Indices of up to `rows` kept, unprotected rows, most harmful-like first.

    Parameters
    ----------
    selected, protected : np.ndarray of bool (n,)
        Kept rows; rows the refusal guard kept (left out of the queue).
    score : np.ndarray (n,)
        OT score, higher = more harmful-like (the tie-break, or the ranking without a budget).
    budget_score : np.ndarray (n,), optional
        The budget's u(x) in [0, 1]; ranks first when given.
    """
    candidates = np.flatnonzero(np.asarray(selected, dtype=bool) & ~np.asarray(protected, dtype=bool))
    keys = [-np.asarray(score, dtype=np.float64)[candidates]]  # np.lexsort: the last key is the primary one
    if budget_score is not None:
        keys.append(-np.asarray(budget_score, dtype=np.float64)[candidates])
    return candidates[np.lexsort(keys)][:rows]


def review_jsonl(order: np.ndarray, ids: list, prompts: list, responses: list, sources: list,
                 score: np.ndarray, budget_score: np.ndarray | None, train_weight: np.ndarray) -> str:
    """``review.jsonl``: one kept row per line, in review order, with its scores and training weight."""
    lines = []
    for rank, i in enumerate(order, start=1):
        row = {"rank": rank, "id": ids[i], "prompt": prompts[i], "response": responses[i], "source": sources[i],
               "score": float(score[i]), "weight": float(train_weight[i])}
        if budget_score is not None:
            row["budget_score"] = float(budget_score[i])
        lines.append(json.dumps(row, ensure_ascii=False))
    return "\n".join(lines) + "\n" if lines else ""


def review_summary(order: np.ndarray, ids: list, prompts: list, score: np.ndarray,
                   budget_score: np.ndarray | None) -> dict:
    """run.json's ``review`` entry: the file, how it is ranked, and the first rows as previews."""
    preview = [{"rank": r, "id": ids[i], "budget_score": None if budget_score is None else float(budget_score[i]),
                "score": float(score[i]), "prompt": prompts[i][:160]}
               for r, i in enumerate(order[:REVIEW_PREVIEW], start=1)]
    return {"file": "review.jsonl", "rows": int(len(order)),
            "ranked_by": "budget_score, then score" if budget_score is not None else "score",
            "preview": preview}
