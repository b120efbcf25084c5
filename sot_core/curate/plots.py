"""What a run shows a person: harmful-likeness distribution, flagged rows with their nearest harmful
neighbours, a weight histogram and a 2-D map of pool, anchor and reference.

Plain functions over arrays and Arrow tables (no Prefect): `tasks/` turns their outputs into
artifacts. matplotlib runs on the Agg backend, so plots render on headless workers.
"""
from __future__ import annotations

import base64
import io

import numpy as np
import pyarrow as pa


def score_distribution(score: np.ndarray, selected: np.ndarray, bins: int = 10) -> list[dict]:
    """Counts of pool rows per band of harmful-likeness score (equal-width bands, low to high).

    Returns
    -------
    list of dict
        One row per band: ``band`` (its score range), ``rows``, ``kept`` (selected rows in it),
        ``share`` (fraction of the pool).
    """
    score = np.asarray(score, dtype=np.float64)
    edges = np.linspace(score.min(), score.max(), bins + 1) if len(score) else np.zeros(bins + 1)
    if edges[0] == edges[-1]:
        edges = edges + np.linspace(-0.5, 0.5, bins + 1)
    band = np.clip(np.searchsorted(edges, score, side="right") - 1, 0, bins - 1)
    table = []
    for b in range(bins):
        inside = band == b
        table.append({"band": f"{edges[b]:.4f} .. {edges[b + 1]:.4f}", "rows": int(inside.sum()),
                      "kept": int((inside & selected).sum()), "share": round(float(inside.mean()), 4) if len(score) else 0.0})
    return table


def flagged_neighbours(pool: pa.Table, pool_emb: np.ndarray, score: np.ndarray, harmful: pa.Table,
                       harmful_emb: np.ndarray, top: int = 10, width: int = 120) -> list[dict]:
    """The `top` most harmful-like pool rows, each with its nearest harmful reference row (cosine).

    Embeddings are unit-norm, so the dot product is the cosine similarity.
    """
    order = np.argsort(-np.asarray(score))[:top]
    sims = pool_emb[order] @ harmful_emb.T
    nearest = sims.argmax(axis=1)
    ids, prompts = pool.column("id").to_pylist(), pool.column("prompt").to_pylist()
    h_ids, h_prompts = harmful.column("id").to_pylist(), harmful.column("prompt").to_pylist()
    return [
        {"id": ids[i], "score": round(float(score[i]), 5), "prompt": _short(prompts[i], width),
         "nearest_harmful_id": h_ids[j], "cosine": round(float(sims[r, j]), 4),
         "nearest_harmful_prompt": _short(h_prompts[j], width)}
        for r, (i, j) in enumerate(zip(order, nearest))
    ]


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def pca_2d(*clouds: np.ndarray, max_points: int = 3000, seed: int = 0) -> list[np.ndarray]:
    """Project clouds onto the top two principal axes of their union (subsampled for the fit)."""
    stacked = np.concatenate(clouds).astype(np.float64)
    rng = np.random.default_rng(seed)
    fit = stacked[rng.choice(len(stacked), max_points, replace=False)] if len(stacked) > max_points else stacked
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    return [(c.astype(np.float64) - mean) @ vt[:2].T for c in clouds]


def curation_figure(weights: np.ndarray, selected: np.ndarray, pool_emb: np.ndarray, anchor_emb: np.ndarray,
                    harmful_emb: np.ndarray, title: str = "", max_points: int = 4000, seed: int = 0) -> bytes:
    """PNG of two panels: the weight histogram (kept vs dropped) and a PCA map of the three clouds.

    Pool points larger than `max_points` are subsampled (fixed seed) so the map stays readable.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights, selected = np.asarray(weights), np.asarray(selected, dtype=bool)
    fig, (ax_h, ax_m) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=90)
    scaled = weights * len(weights)  # 1.0 = uniform weight, easier to read than 1/n
    bins = np.linspace(scaled.min(), scaled.max(), 50) if scaled.max() > scaled.min() else 10
    ax_h.hist([scaled[selected], scaled[~selected]], bins=bins, stacked=True, color=["#2b8cbe", "#e34a33"],
              label=[f"kept ({selected.sum()})", f"dropped ({(~selected).sum()})"])
    ax_h.set_xlabel("weight x pool size (1 = uniform)")
    ax_h.set_ylabel("rows")
    ax_h.set_title("OT weights")
    ax_h.legend()

    rng = np.random.default_rng(seed)
    show = np.sort(rng.choice(len(pool_emb), max_points, replace=False)) if len(pool_emb) > max_points \
        else np.arange(len(pool_emb))
    pool_2d, anchor_2d, harmful_2d = pca_2d(pool_emb[show], anchor_emb, harmful_emb)
    kept = selected[show]
    ax_m.scatter(*pool_2d[kept].T, s=5, c="#9ecae1", label="pool, kept")
    ax_m.scatter(*pool_2d[~kept].T, s=7, c="#fc9272", label="pool, dropped")
    ax_m.scatter(*harmful_2d.T, s=10, c="#a50f15", marker="x", label="harmful reference")
    ax_m.scatter(*anchor_2d.T, s=28, c="#238b45", marker="^", label="safe anchor")
    ax_m.set_title("PCA map of embeddings")
    ax_m.set_xticks([]), ax_m.set_yticks([])
    ax_m.legend(loc="best", fontsize=8, markerscale=1.5)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """A PNG as a data: URI, so an image artifact needs no file server next to the Prefect UI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def drift_figure(history: list[dict]) -> bytes:
    """PNG of drift to the anchor and to the harmful reference, batch after batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=90)
    x = [h["batch"] for h in history]
    for key, colour in (("drift_to_anchor", "#238b45"), ("drift_to_harmful", "#a50f15")):
        ax.plot(x, [np.nan if h[key] is None else h[key] for h in history], "o-", c=colour, label=key)
    ax.set_xlabel("batch")
    ax.set_ylabel("Sinkhorn divergence")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
