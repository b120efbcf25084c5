"""Prefect tasks of the nightly incremental re-curation (`sot_core.curate.incremental` does the work).

None of these is Prefect-cached: each reads or moves the watermark, which changes between runs.
The heavy stages (ingest of the references, embed, costs, solve) reuse the tasks of
`tasks.curation` and their content-hash caches.
"""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact

from sot_core.curate import incremental

from sot_core.curate import plots
from sot_core.data.loaders import FieldMap
from sot_core.data.store import Store
from sot_prefect.tasks.curation import artifact_key
from sot_prefect.tasks.ops import emit, log, retry_policy


@task(name="collect-incoming", **retry_policy())
def collect_incoming(home: str, name: str, incoming: str | None, incoming_table: str | None = None,
                     watermark_column: str = "seq", fields: dict | None = None) -> dict:
    """Stage everything past the watermark as one batch dataset (n_new == 0: nothing arrived)."""
    batch = incremental.stage_batch(Store(home), name, incoming, incoming_table, watermark_column,
                                    FieldMap(**fields) if fields else None)
    log().info(f"nightly '{name}': {batch['n_new']} new rows of {batch['n_read']} read past batch {batch['prev_seq']} "
               f"(files: {', '.join(batch['files']) or 'none'}; table watermark {batch['table_watermark']})")
    return batch


@task(name="accumulate-pool", **retry_policy(retries=1))
def accumulate_pool(home: str, name: str, base_dataset_id: str | None, batch: dict, window: int | None,
                    base_records_id: str | None = None) -> dict:
    """The pool to re-solve: base pool + committed batches + this batch (windowed), with the curated
    version of the base pool (`base_version`, None when the base pool was never curated)."""
    store = Store(home)
    pool = incremental.accumulate_pool(
        store, name, base_dataset_id, batch["batch_dataset_ids"] + [batch["dataset_id"]], window, base_records_id,
        batch["batch_records_ids"] + [batch["records_id"]])
    base = incremental.base_version(store, base_dataset_id)
    log().info(f"accumulated pool of '{name}': {pool['n_rows']} rows from {len(pool['parts'])} parts; "
               f"base version {base}")
    return {**pool, "base_version": base}


@task(name="batch-drift", **retry_policy(retries=1))
def batch_drift(home: str, batch_id: str, anchor_id: str, harmful_id: str, encoder_id: str, eps: float,
                lm_share: float | None = None) -> dict:
    drift = incremental.batch_drift(Store(home), batch_id, anchor_id, harmful_id, encoder_id, eps, lm_share=lm_share)
    log().info(f"drift of batch {batch_id} ({drift['n_batch']} rows): to anchor {drift['to_anchor']:.4f}, "
               f"to harmful reference {drift['to_harmful']:.4f}")
    return drift


@task(name="batch-contamination")
def batch_contamination(home: str, batch_id: str, out_dir: str) -> float | None:
    """The batch's estimated contamination: share of its rows the published budget drops (issue 14)."""
    ids = Store(home).get_rows(batch_id).column("id").to_pylist()
    c = incremental.batch_contamination(Path(out_dir) / "weights.parquet", ids)
    if c is not None:
        log().info(f"estimated contamination of batch {batch_id}: {c:.1%}")
    return c


@task(name="commit-batch", **retry_policy(retries=0))
def commit_batch(home: str, batch: dict, pool_dataset_id: str, version: str, n_embedded: int, drift: dict,
                 base_version: str | None = None) -> dict:
    """Move the watermark; last step, so a failed run leaves the rows for the next one."""
    return incremental.commit_batch(Store(home), batch, pool_dataset_id, version, n_embedded, drift, base_version)


@task(name="drift-alert")
def drift_alert(name: str, history: list[dict], drift: dict, tolerance: float) -> str | None:
    """Emit ``sot.nightly.drift`` when this batch moved towards the harmful reference or away from the
    anchor (`incremental.drift_alarm`); every batch emits ``sot.nightly.batch`` with its figures."""
    reason = incremental.drift_alarm(history[:-1], drift, tolerance)
    payload = {**{k: drift.get(k) for k in ("to_anchor", "to_harmful", "eps", "n_batch", "contamination")},
               "reason": reason}
    emit("sot.nightly.batch", name, payload)
    if reason:
        log().warning(f"drift alert for '{name}': {reason}")
        emit("sot.nightly.drift", name, payload)
    return reason


@task(name="drift-artifacts")
def drift_artifacts(home: str, name: str) -> list[dict]:
    """The drift history of `name` as a table and a plot, under stable keys (the nightly trend)."""
    history = incremental.drift_history(Store(home), name)
    key = artifact_key(name)
    create_table_artifact(history, key=f"{key}-drift",
                          description="Per batch: Sinkhorn divergence to the safe anchor and to the harmful reference")
    if history:
        create_image_artifact(plots.data_uri(plots.drift_figure(history)), key=f"{key}-drift-plot",
                              description="Drift of incoming batches over time")
    return history


@task(name="noop-artifact")
def noop_artifact(name: str, batch: dict) -> None:
    """Say so in the UI when nothing arrived, so a quiet night is visibly a no-op, not a failure."""
    create_markdown_artifact(
        f"# Nightly re-curation `{name}`: nothing new\n\nNo new rows past the watermark (batch "
        f"{batch['prev_seq']} is the latest); no version was published.\n",
        key=f"{artifact_key(name)}-nightly", description="Nightly re-curation status")


@task(name="nightly-summary-artifact")
def nightly_artifact(name: str, batch: dict, summary: dict, drift: dict, committed: dict) -> None:
    embedded = summary["counts"]["embedded_now"]
    create_markdown_artifact(
        f"# Nightly re-curation `{name}`: batch {committed['seq']}\n\n"
        f"- new rows: **{batch['n_new']}** (files: {', '.join(batch['files']) or 'none'}; "
        f"table watermark: {batch['table_watermark']})\n"
        f"- embedded now: {', '.join(f'{k} {v}' for k, v in embedded.items())}\n"
        f"- accumulated pool: {summary['counts']['pool']} rows, kept {summary['counts']['selected']}\n"
        f"- drift (Sinkhorn divergence, eps {drift['eps']}): to anchor **{drift['to_anchor']:.4f}**, "
        f"to harmful reference **{drift['to_harmful']:.4f}**\n"
        f"- published version `{summary['version']}` (parent `{summary['parent_version']}`, base "
        f"`{summary['inputs']['pool'].get('base_version')}`)\n",
        key=f"{artifact_key(name)}-nightly", description="Nightly re-curation status")
