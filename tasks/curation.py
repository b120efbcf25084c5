"""Prefect tasks around the curation stages in `sot_core.curate.pipeline`.

Cache keys are built from content (file bytes, dataset ids, configuration) and the store's id,
never from in-memory objects (prefect#15861: an unhashable input silently degrades the default
policy). Retries are for transient failures only; bad input fails at once.
"""
from __future__ import annotations

import hashlib
import sys
from datetime import timedelta
from pathlib import Path

from prefect import task
from prefect.serializers import JSONSerializer
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact

from sot_core.curate import pipeline, plots
from sot_core.config import REVIEW_ROWS, CurateConfig, config_hash
from sot_core.data.loaders import FieldMap
from sot_core.io import atomic_write
from sot_core.curate.quality import read_labels
from sot_core.curate.select import publish
from sot_core.data.store import Store
from sot_core.embed.composite import pool_centred
from sot_prefect.tasks.ops import log, not_bad_input, retry_policy  # noqa: F401  (not_bad_input: re-exported)

CACHE_TTL = timedelta(days=30)


def source_fingerprint(source: str) -> str:
    """sha256 of a file's bytes, of every file under a folder, or of a dataset name."""
    path = Path(source)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        h.update(source.encode())  # e.g. hf:NAME, or a missing path that will fail in the task
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def key_for(stage: str):
    """cache_key_fn: stage name + store id and location + every parameter (all plain JSON values).

    The location counts because results name files under the store: a copied store has the same
    id but must not be served results that point into the original."""

    def cache_key(context, parameters) -> str:
        params = dict(parameters)
        home = Path(params.pop("home")).resolve()
        if "sources" in params:
            params["sources"] = {role: source_fingerprint(s) for role, s in params["sources"].items()}
        if params.get("labels"):
            params["labels"] = source_fingerprint(params["labels"])
        return f"{stage}-{config_hash(Store(home).store_id, str(home), params)}"

    return cache_key


def stage_result(state) -> dict:
    """A task's result with `cached` set, and its seconds zeroed when Prefect served it from cache."""
    result = dict(state.result())
    result["cached"] = state.name == "Cached"
    if result["cached"]:
        result["seconds"] = 0.0
    return result


def run_info(inputs: dict, embedded: dict, costs: dict, solved: dict, ingest_seconds: float,
             ingest_cached: bool = False, **extra) -> dict:
    """The run record that `publish` writes into run.json: inputs, encoder, stage times, caching,
    solver diagnostics, plus flow-specific `extra` entries (the nightly flow's batch and drift)."""
    return {
        "inputs": inputs,
        "encoder_id": embedded["pool"]["encoder_id"],
        "embedded_now": {role: e["n_embedded"] for role, e in embedded.items()},
        "stage_seconds": {"ingest": ingest_seconds, "embed": sum(e["seconds"] for e in embedded.values()),
                          "costs": costs["seconds"], "solve": solved["seconds"],
                          **({"budget": solved["budget"]["seconds"]} if solved.get("budget") else {})},
        "cached_stages": [stage for stage, cached in (("ingest", ingest_cached), ("costs", costs["cached"]),
                                                      ("solve", solved["cached"])) if cached],
        "solver": solved["diagnostics"],
        **({"budget_path": solved["budget"]["path"]} if solved.get("budget") else {}),
        "costs_path": costs["path"],
        **extra,
    }


# Cached results are read back on every cache hit, possibly by another worker: store them as plain
# JSON and decode them without object hooks, so nothing is unpickled or imported by name (a result
# that is not plain JSON fails when it is written, not when it is read).
JSON_RESULTS = JSONSerializer(object_encoder=None, object_decoder=None)
TASK_OPTIONS = dict(persist_result=True, result_serializer=JSON_RESULTS, cache_expiration=CACHE_TTL, **retry_policy())


@task(name="ingest", cache_key_fn=key_for("ingest"), **TASK_OPTIONS)
def ingest_inputs(home: str, sources: dict[str, str], encoder: str, fields: dict | None = None,
                  labels: str | None = None, label_field: str = "label") -> dict:
    """Validate all inputs (and the labels file, if any) and the encoder's fit with the store first,
    then store the inputs: bad input leaves the store untouched."""
    store = Store(home)
    field_map = FieldMap(**fields) if fields else None
    tables = pipeline.load_inputs(sources, {role: field_map for role in sources}, labels, label_field)
    spec = pipeline.cached_encoder(encoder)
    store.check_encoder(spec.encoder_id, spec.dim, register=False)
    stored = {role: pipeline.ingest(store, sources[role], tables[role], role) for role in sources}
    for role, info in stored.items():
        log().info(f"ingest {role}: {info['n_rows']} rows from {sources[role]} -> {info['dataset_id']}")
    return stored


@task(name="embed", **retry_policy())
def embed_dataset(home: str, dataset_id: str, encoder: str, batch_size: int = 64, sharded: dict | None = None) -> dict:
    """One input's embedding after its shards (`sot_prefect.tasks.embedding`, the ``embed-shard``
    tasks that `sharded` sums up): embeds whatever they left (nothing after a complete shard run;
    every missing row when called without shards) and reports what this run embedded in all.

    Not Prefect-cached on purpose: the store's (content hash, encoder) cache is finer grained
    (only new rows are embedded) and the run summary must report what this run embedded.
    The flows name each call after its role (``embed-pool``)."""
    # A progress bar only on a terminal: under a worker, stderr is a pipe that dies with the worker, and
    # the bar's BrokenPipeError used to fail the run (and every retry) instead of the real cause.
    done = pipeline.embed(Store(home), dataset_id, encoder, batch_size, show_progress=sys.stderr.isatty())
    if sharded:
        done.update(n_embedded=done["n_embedded"] + sharded["n_embedded"], seconds=done["seconds"] + sharded["seconds"],
                    n_shards=sharded["n_shards"])
    log().info(f"embed {dataset_id}: {done['n_embedded']} of {done['n_rows']} rows embedded now "
               f"({done['encoder_id']}, {done['seconds']:.1f} s"
               + (f", {done['n_shards']} shards" if sharded else "") + "); the rest came from the store")
    return done


@task(name="costs", cache_key_fn=key_for("costs"), **TASK_OPTIONS)
def build_costs(home: str, pool_id: str, anchor_id: str, harmful_id: str, encoder_id: str, knn: int | None,
                refusal_id: str | None = None, lm_share: float | None = None) -> dict:
    done = pipeline.build_costs(Store(home), pool_id, anchor_id, harmful_id, encoder_id, knn, refusal_id, lm_share)
    log().info(f"costs {'kNN k=' + str(knn) if knn else 'dense'} for pool {pool_id}: {done['seconds']:.1f} s")
    return done


@task(name="solve", cache_key_fn=key_for("solve"), **TASK_OPTIONS)
def solve_weights(home: str, cost_key: str, config: dict) -> dict:
    done = pipeline.solve(Store(home), cost_key, CurateConfig(**config))
    figures = {k: v for k, v in done["diagnostics"].items()
               if k != "objective_trace" and not isinstance(v, (list, dict))}
    log().info(f"solve (lam {config.get('lam')}, eps {config.get('eps')}): {done['seconds']:.1f} s; "
               + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
    return done


@task(name="budget", cache_key_fn=key_for("budget"), **TASK_OPTIONS)
def budget_stage(home: str, ids: dict[str, str], encoder_id: str, config: dict) -> dict:
    """The cross-fitted harmful-row budget (`sot_core.curate.budget`); the target recall is applied at publish."""
    return pipeline.budget(Store(home), ids, encoder_id, CurateConfig(**config))


@task(name="publish", **retry_policy(retries=1))
def publish_curated(home: str, pool_id: str, solve_path: str, config: dict, out_dir: str, run_info: dict,
                    labels: str | None = None, name: str = "default", review_rows: int = REVIEW_ROWS,
                    label_field: str = "label") -> dict:
    """Never cached: every run publishes a new curated version with its lineage."""
    label_map = read_labels(labels, label_field) if labels else None
    outside = pipeline.anchor_fit(Store(home), run_info.get("costs_path"), pool_id,
                                  run_info["inputs"]["safe_anchor"]["dataset_id"], run_info["encoder_id"],
                                  config.get("lm_share"))
    run_info = {**run_info, "pool_outside_anchor": outside}
    summary = publish(Store(home), pool_id, solve_path, CurateConfig(**config), out_dir, run_info, label_map, name,
                      review_rows)
    quality = summary.get("quality") or {}
    log().info(f"published {summary['version']}: kept {summary['counts']['selected']} of {summary['counts']['pool']} "
               f"rows (keep {config.get('keep')}), parent {summary['parent_version']}, out {out_dir}"
               + (f"; against the labels: AUROC {quality['auroc']:.3f}" if quality.get("auroc") is not None else ""))
    return summary


@task(name="report-artifacts")
def report_artifacts(summary: dict, report_md: str, name: str = "default") -> None:
    """Markdown and table artifacts under stable keys, so the nightly trend lines up in the UI."""
    key = artifact_key(name)
    create_markdown_artifact(report_md, key=f"{key}-report", description="SOT curation report")
    create_table_artifact(summary["top_flagged"], key=f"{key}-flagged", description="Most harmful-like rows")
    if (summary.get("review") or {}).get("preview"):
        create_table_artifact(summary["review"]["preview"], key=f"{key}-review",
                              description="Kept rows to review first (all of them in review.jsonl)")
    if summary.get("budget"):
        rows = [{"key": k, "value": str(v)} for k, v in summary["budget"].items()]
        create_table_artifact(rows, key=f"{key}-budget",
                              description="Harmful-row budget: threshold, estimated contamination, warnings")


def artifact_key(name: str) -> str:
    """Stable artifact key prefix of a curated dataset name (lowercase letters, digits, dashes)."""
    return "sot-" + "".join(ch if ch.isalnum() else "-" for ch in name.lower())


@task(name="visual-artifacts", **retry_policy(retries=1))
def visual_artifacts(home: str, summary: dict, out_dir: str, encoder_id: str, name: str = "default") -> dict:
    """Counts, harmful-likeness distribution, flagged rows with nearest harmful neighbours, solver
    diagnostics and a plot, as artifacts under stable keys (one series per key across runs)."""
    import pyarrow.parquet as pq

    store, key, inputs = Store(home), artifact_key(name), summary["inputs"]
    pool_id, harmful_id = inputs["pool"]["dataset_id"], inputs["harmful_ref"]["dataset_id"]
    anchor_id = inputs["safe_anchor"]["dataset_id"]
    table = pq.read_table(Path(out_dir) / "weights.parquet")
    weights, score = table.column("weight").to_numpy(), table.column("score").to_numpy()
    selected = table.column("selected").to_numpy(zero_copy_only=False).astype(bool)
    # the vectors the costs saw: a composite encoder's LM blocks pool-centred and weighted (`pool_centred`)
    emb = dict(zip((pool_id, anchor_id, harmful_id), pool_centred(
        encoder_id, *(pipeline.load_embeddings(store, d, encoder_id) for d in (pool_id, anchor_id, harmful_id)),
        lm_share=summary["config"].get("lm_share"))))
    counts = [{"version": summary["version"], "pool": summary["counts"]["pool"],
               "selected": summary["counts"]["selected"],
               **{f"embedded_{role}": n for role, n in summary["counts"]["embedded_now"].items()}}]
    create_table_artifact(counts, key=f"{key}-counts", description="Rows in the pool, kept, embedded by this run")
    create_table_artifact(plots.score_distribution(score, selected), key=f"{key}-scores",
                          description="Distribution of harmful-likeness (OT score; higher = more harmful-like)")
    neighbours = plots.flagged_neighbours(store.get_rows(pool_id), emb[pool_id], score, store.get_rows(harmful_id),
                                          emb[harmful_id])
    create_table_artifact(neighbours, key=f"{key}-neighbours",
                          description="Most flagged rows with their nearest harmful reference row")
    solver = [{"key": k, "value": str(v)} for k, v in summary["solver"].items() if k != "objective_trace"]
    create_table_artifact(solver, key=f"{key}-solver", description="Push-pull OT solver diagnostics")
    png = plots.curation_figure(weights, selected, emb[pool_id], emb[anchor_id], emb[harmful_id],
                                title=summary["version"])
    atomic_write(Path(out_dir) / "curation.png", lambda tmp: tmp.write_bytes(png))
    create_image_artifact(plots.data_uri(png), key=f"{key}-plot",
                          description="Weight histogram and PCA map of pool, anchor and harmful reference")
    return {"plot": str(Path(out_dir) / "curation.png"), "neighbours": neighbours}
