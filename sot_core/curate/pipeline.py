"""The curation stages as plain functions: ingest, embed, costs, solve, select.

Each stage reads its inputs from the store by id and writes its outputs to the store, and returns
a small JSON-able summary (ids, counts, seconds). That makes every stage idempotent (a finished
output is found and reused), lets the Prefect tasks in `tasks/` cache on content hashes rather
than on in-memory objects, and lets `curate()` run the same path without Prefect.
"""
from __future__ import annotations

import functools
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from sot_core.config import CurateConfig, config_hash
from sot_core.curate.guards import outside_anchor_share
from sot_core.data.loaders import FieldMap, load_rows
from sot_core.data.schema import dataset_id_of
from sot_core.data.store import Store
from sot_core.embed import shards
from sot_core.embed.base import Encoder
from sot_core.embed.composite import pool_centred
from sot_core.embed.encoders import get_encoder
from sot_core.errors import InputError
from sot_core.failpoints import failpoint
from sot_core.io import atomic_dir, atomic_write_text

# Dense costs up to this many entries (80 MB in float32); kNN-sparse above it.
DENSE_LIMIT = 20_000_000
DEFAULT_KNN = 64
# Rows per embeddings shard: `sot_core.embed.shards` (kept importable here).
SHARD_ROWS, shard_rows = shards.SHARD_ROWS, shards.shard_rows


# Inputs whose responses are the point: the pool is fine-tuning data, the refusal anchor refusals.
NEEDS_RESPONSES = ("pool", "refusal_anchor")
# Explicit field names are written for the pool: it must have them. The other inputs take them
# where they have any of them, else their own layout is detected (a bundled harmful reference).
FIELD_NAMES_REQUIRED = ("pool",)
# Inputs whose rows are published (curated_records.jsonl): their input records are stored.
RECORD_ROLES = ("pool", "incoming")


def load_inputs(sources: dict[str, str], fields: dict[str, FieldMap | None] | None = None,
                labels: str | None = None, label_field: str = "label") -> dict[str, pa.Table]:
    """Load and validate every input before anything is written, so bad input leaves the store untouched.

    The pool and the refusal anchor must have responses: a file of prompts alone (the loaders'
    prompt-only mode, fine for a harmful reference) is refused for them, since curated rows
    without responses teach fine-tuning nothing and an anchor without responses holds no
    refusals. Explicit field names (`fields`) must fit the pool; the other inputs use them only
    when they have any of the named fields (`FIELD_NAMES_REQUIRED`). `labels`, an ``id,label`` file
    or a labelled copy of the pool (`sot_core.curate.quality.read_labels`, label in `label_field`), is read
    and checked too, so that a bad one fails before the run stores anything.
    """
    fields = fields or {}
    tables = {}
    for role, source in sources.items():
        rows = load_rows(source, fields=fields.get(role), fields_if_present=role not in FIELD_NAMES_REQUIRED)
        if rows.num_rows == 0:
            raise InputError(source, f"the {role.replace('_', ' ')} has no rows")
        if role in NEEDS_RESPONSES:
            require_responses(source, rows, role)
        tables[role] = rows
    if labels:
        from sot_core.curate.guards import check_labels_match
        from sot_core.curate.quality import read_labels

        if "pool" in tables:  # a labels file that names no pool row is the wrong file
            check_labels_match(read_labels(labels, label_field), tables["pool"].column("id").to_pylist(), labels)
        else:
            read_labels(labels, label_field)
    return tables


def require_responses(source: str, rows: pa.Table, role: str) -> None:
    """Refuse rows of which none has a response, for an input whose responses are the point."""
    if not any(rows.column("response").to_pylist()):
        raise InputError(source, f"no row has a response, and the {role.replace('_', ' ')} needs (prompt, "
                         "response) pairs; name the response field if it has another name")


def ingest(store: Store, source: str, rows: pa.Table, role: str) -> dict:
    """Store validated canonical rows, and the input records of rows that will be published
    (`RECORD_ROLES`); returns {dataset_id, records_id, n_rows, stored}."""
    start = time.perf_counter()
    dataset_id = dataset_id_of(rows)
    stored = store.put_dataset(dataset_id, rows, name=role, source_uri=str(source))
    failpoint("ingest.after_dataset")
    records_id = store.put_records(rows) if role in RECORD_ROLES else None
    return {"role": role, "dataset_id": dataset_id, "records_id": records_id, "n_rows": rows.num_rows,
            "stored": stored, "seconds": time.perf_counter() - start}


@functools.lru_cache(maxsize=4)
def cached_encoder(spec: str) -> Encoder:
    """One encoder instance per spec and process: models load once, not per dataset."""
    return get_encoder(spec)


def embed(store: Store, dataset_id: str, encoder_spec: str, batch_size: int = 64, show_progress: bool = True,
          rows_per_shard: int | None = None) -> dict:
    """Embed only the rows whose (content hash, encoder id) is not in the store yet.

    The rows go to the store in shards (`sot_core.embed.shards`), each registered as soon as it is
    encoded, so a run killed mid-dataset keeps its finished shards and the next run embeds the rest.
    """
    start = time.perf_counter()
    encoder = cached_encoder(encoder_spec)
    n_embedded = shards.embed_dataset(store, encoder, dataset_id, batch_size, rows_per_shard, show_progress)
    failpoint("embed.after_dataset")
    return {"dataset_id": dataset_id, "encoder_id": encoder.encoder_id, "n_rows": store.get_rows(dataset_id).num_rows,
            "n_embedded": n_embedded, "seconds": time.perf_counter() - start}


def load_embeddings(store: Store, dataset_id: str, encoder_id: str) -> np.ndarray:
    rows = store.get_rows(dataset_id)
    return store.get_embeddings(rows.column("content_hash").to_pylist(), encoder_id)


# The costs stage's measure of how well the anchor covers the pool (`guards.outside_anchor_share`).
ANCHOR_FIT = "anchor_fit.json"


def build_costs(store: Store, pool_id: str, anchor_id: str, harmful_id: str, encoder_id: str, knn: int | None,
                refusal_id: str | None = None, lm_share: float | None = None) -> dict:
    """Cosine costs pool x anchor and pool x harmful via FAISS; dense when small, kNN-sparse when large.

    Vectors of a composite encoder are pool-centred and their blocks weighted by `lm_share` first
    (`sot_core.embed.composite.pool_centred`).

    With `refusal_id` the anchor is composite: the task anchor's rows, then the refusal rows
    (``anchor_parts.json`` records the two sizes so `solve` can give each part its mass share).
    """
    from sot_core.ot.costs import KnnCost, cosine_costs

    start = time.perf_counter()
    key = config_hash("costs", pool_id, anchor_id, harmful_id, encoder_id, knn, *([refusal_id] if refusal_id else []),
                      *([{"lm_share": lm_share}] if lm_share is not None else []))
    out = store.stage_dir("costs", key)
    if not (out / "done").exists():
        pool, anchor, harmful, *refusals = pool_centred(
            encoder_id, *(load_embeddings(store, d, encoder_id) for d in (pool_id, anchor_id, harmful_id, refusal_id) if d),
            lm_share=lm_share)
        _clear_incomplete(out)
        with atomic_dir(out, keep_if="done") as tmp:  # a killed run leaves a temp folder, never half a stage
            (tmp / ANCHOR_FIT).write_text(json.dumps({"pool_outside_anchor": outside_anchor_share(pool, anchor)}))
            for name, ref in (("anchor", anchor), ("harmful", harmful)):
                if name == "anchor" and refusal_id:
                    (tmp / "anchor_parts.json").write_text(json.dumps({"task": len(ref), "refusal": len(refusals[0])}))
                    ref = np.vstack([ref, refusals[0]])
                k = knn
                if k is None and pool.shape[0] * ref.shape[0] > DENSE_LIMIT:
                    k = DEFAULT_KNN
                cost = cosine_costs(pool, ref, k=None if k is None or k >= ref.shape[0] else k)
                if isinstance(cost, KnnCost):
                    np.save(tmp / f"{name}_knn_indices.npy", cost.indices)
                    np.save(tmp / f"{name}_knn_costs.npy", cost.costs)
                    (tmp / f"{name}_knn_targets").write_text(str(cost.n_targets))
                else:
                    np.save(tmp / f"{name}.npy", cost)
                if name == "anchor":
                    failpoint("costs.after_anchor")
            (tmp / "done").write_text(key)
    failpoint("costs.done")
    return {"cost_key": key, "path": str(out), "seconds": time.perf_counter() - start}


def anchor_fit(store: Store, costs_path: str | None, pool_id: str, anchor_id: str, encoder_id: str,
               lm_share: float | None = None) -> float | None:
    """`guards.outside_anchor_share` of the pool: from the costs stage's `ANCHOR_FIT` file, or, for a
    stage built before the guard, measured now from the stored vectors (and written there)."""
    path = Path(costs_path) / ANCHOR_FIT if costs_path else None
    if path is not None and path.exists():
        return json.loads(path.read_text())["pool_outside_anchor"]
    pool, anchor = pool_centred(encoder_id, *(load_embeddings(store, d, encoder_id) for d in (pool_id, anchor_id)),
                                lm_share=lm_share)
    outside = outside_anchor_share(pool, anchor)
    if path is not None and path.parent.is_dir():
        atomic_write_text(json.dumps({"pool_outside_anchor": outside}), path)
    return outside


def _clear_incomplete(out: Path) -> None:
    """Remove a stage folder without its completion mark. Folders are renamed into place complete,
    so only a store written before that rule (its writer killed half-way) can hold one."""
    if out.exists():
        shutil.rmtree(out)


def load_cost(path: Path, name: str):
    from sot_core.ot.costs import KnnCost

    dense = path / f"{name}.npy"
    if dense.exists():
        return np.load(dense)
    return KnnCost(
        indices=np.load(path / f"{name}_knn_indices.npy"),
        costs=np.load(path / f"{name}_knn_costs.npy"),
        n_targets=int((path / f"{name}_knn_targets").read_text()),
    )


def composite_anchor_masses(n_task: int, n_refusal: int, share: float) -> np.ndarray:
    """Masses of a composite anchor (task rows first, then refusal rows): 1 - share spread evenly
    over the task rows, share over the refusal rows."""
    return np.r_[np.full(n_task, (1.0 - share) / n_task), np.full(n_refusal, share / n_refusal)]


def anchor_masses(costs_dir: Path, config: CurateConfig) -> np.ndarray | None:
    """Anchor masses of the run's composite anchor; None (uniform) for a plain anchor."""
    parts_file = costs_dir / "anchor_parts.json"
    if not parts_file.exists():
        return None
    parts, share = json.loads(parts_file.read_text()), config.refusal_share
    if share == 0.0:  # refusal rows present but massless: drop them from the measure
        share = 1e-12
    return composite_anchor_masses(parts["task"], parts["refusal"], share)


def solve(store: Store, cost_key: str, config: CurateConfig, show_progress: bool = True) -> dict:
    """Push-pull OT weights for the pool; cached in the store under costs + solver configuration."""
    from sot_core.ot.push_pull import solve_push_pull

    start = time.perf_counter()
    solver_cfg = config.push_pull()
    costs_dir = store.stage_dir("costs", cost_key)
    if not (costs_dir / "done").exists():
        raise store.lost_stage(costs_dir)
    masses = anchor_masses(costs_dir, config)
    key = config_hash("solve", cost_key, solver_cfg.__dict__, *([config.refusal_share] if masses is not None else []))
    out = store.stage_dir("solve", key)
    if not (out / "diagnostics.json").exists():
        cost_anchor = load_cost(costs_dir, "anchor") if config.mode != "push" else None
        cost_harmful = load_cost(costs_dir, "harmful") if config.mode != "pull" else None
        result = solve_push_pull(cost_anchor, cost_harmful, solver_cfg, anchor_weights=masses)
        _clear_incomplete(out)
        with atomic_dir(out, keep_if="diagnostics.json") as tmp:
            np.save(tmp / "weights.npy", result.weights)
            np.save(tmp / "score.npy", result.score)
            failpoint("solve.before_rename")
            (tmp / "diagnostics.json").write_text(json.dumps(result.diagnostics, default=float))
    failpoint("solve.done")
    diagnostics = json.loads((out / "diagnostics.json").read_text())
    return {"solve_key": key, "path": str(out), "diagnostics": diagnostics, "seconds": time.perf_counter() - start}


def budget(store: Store, ids: dict[str, str], encoder_id: str, config: CurateConfig) -> dict:
    """The cross-fitted harmful-row budget of the pool (`sot_core.curate.budget.cross_fit`), cached in
    the store under its inputs and solver settings. The target recall is applied at selection, so
    changing ``harmful_recall`` reuses this stage. `ids` maps roles (pool, safe_anchor, harmful_ref,
    optionally refusal_anchor) to dataset ids."""
    from sot_core.curate import budget as bud

    start = time.perf_counter()
    refusal_id = ids.get("refusal_anchor")
    key = config_hash("budget", ids["pool"], ids["safe_anchor"], ids["harmful_ref"], refusal_id, encoder_id,
                      config.push_pull().__dict__, config.refusal_share if refusal_id else None,
                      bud.FOLDS, bud.SEED, bud.FORMAT,
                      *([{"lm_share": config.lm_share}] if config.lm_share is not None else []))
    out = store.stage_dir("budget", key)
    if not (out / "done").exists():
        pool, anchor, harmful, *refusals = pool_centred(
            encoder_id, *(load_embeddings(store, ids[role], encoder_id) for role in
                          ("pool", "safe_anchor", "harmful_ref", "refusal_anchor") if ids.get(role)),
            lm_share=config.lm_share)
        n_task, masses = len(anchor), None
        if refusal_id:
            refusals = refusals[0]
            masses = composite_anchor_masses(n_task, len(refusals), max(config.refusal_share, 1e-12))
            anchor = np.vstack([anchor, refusals])
        fit = bud.cross_fit(pool, anchor, harmful, config, bud.FOLDS, bud.SEED, masses, check_anchor_rows=n_task)
        _clear_incomplete(out)
        with atomic_dir(out, keep_if="done") as tmp:
            fit.save(tmp)
            (tmp / "done").write_text(key)
    return {"budget_key": key, "path": str(out), "seconds": time.perf_counter() - start}
