"""Nightly incremental re-curation: new rows past the watermark -> re-solve the pool -> new version."""
from __future__ import annotations

from prefect import flow

from sot_core.config import CurateConfig, Mode, NightlyInputs, SolverOptions, Stratify, TrainWeighting
from sot_core.fields import documented
from sot_prefect.flows.curate import embed_and_solve, publish_and_report, resolve_home
from sot_prefect.tasks.curation import ingest_inputs, run_info
from sot_prefect.tasks.incremental import (
    accumulate_pool, batch_contamination, batch_drift, collect_incoming, commit_batch, drift_alert, drift_artifacts,
    nightly_artifact,
    noop_artifact,
)
from sot_prefect.tasks.ops import HOOKS, run_name, shared_results

from sot_prefect.flows.params import bounded

# Bounded parameter types (the run form shows the bounds; the server refuses values outside them).
Keep, Lam, Eps = bounded(CurateConfig, "keep"), bounded(CurateConfig, "lam"), bounded(CurateConfig, "eps")
Recall = bounded(CurateConfig, "harmful_recall")
Knn, Batch = bounded(CurateConfig, "knn"), bounded(CurateConfig, "batch_size")
Share = bounded(CurateConfig, "refusal_share")
Rows = bounded(CurateConfig, "shard_rows")
Window, Tolerance = bounded(NightlyInputs, "window"), bounded(NightlyInputs, "drift_tolerance")


# Every default below is the config's own (sot_core/config.py); tests/test_config_consistency.py checks it.
# A night that runs past 6 hours is stuck: fail it (and alert) rather than block the next night's queued run.
# long function: 29 of its lines are the signature, every parameter spelled out for Prefect's run form.
@flow(name="nightly-recuration", log_prints=True, flow_run_name=run_name("nightly"), timeout_seconds=6 * 3600, **HOOKS)
@documented("Curate what arrived since the last run together with everything before it.", NightlyInputs, CurateConfig)
def nightly_recuration(
    incoming: str | None = NightlyInputs.incoming,
    incoming_table: str | None = NightlyInputs.incoming_table,
    watermark_column: str = NightlyInputs.watermark_column,
    base_pool: str | None = NightlyInputs.base_pool,
    safe_anchor: str = NightlyInputs.safe_anchor,
    harmful_ref: str = NightlyInputs.harmful_ref,
    refusal_anchor: str | None = NightlyInputs.refusal_anchor,
    refusal_share: Share = CurateConfig.refusal_share,
    out_dir: str = NightlyInputs.out_dir,
    keep: Keep = CurateConfig.keep,
    harmful_recall: Recall = CurateConfig.harmful_recall,
    refusal_guard: bool = CurateConfig.refusal_guard,
    lam: Lam = CurateConfig.lam,
    eps: Eps = CurateConfig.eps,
    mode: Mode = CurateConfig.mode,
    encoder: str = CurateConfig.encoder,
    knn: Knn = CurateConfig.knn,
    stratify: Stratify = CurateConfig.stratify,
    train_weighting: TrainWeighting = CurateConfig.train_weighting,
    batch_size: Batch = CurateConfig.batch_size,
    shard_rows: Rows = CurateConfig.shard_rows,
    runner: str = CurateConfig.runner,
    window: Window = NightlyInputs.window,
    name: str = NightlyInputs.name,
    drift_tolerance: Tolerance = NightlyInputs.drift_tolerance,
    solver: SolverOptions = SolverOptions(),
    home: str | None = NightlyInputs.home,
) -> dict:
    config = CurateConfig(keep=keep, harmful_recall=harmful_recall, refusal_guard=refusal_guard,
                          lam=lam, eps=eps, mode=mode, encoder=encoder, knn=knn, refusal_share=refusal_share,
                          stratify=stratify, train_weighting=train_weighting, batch_size=batch_size,
                          shard_rows=shard_rows, runner=runner, solver=solver)
    NightlyInputs(incoming=incoming, incoming_table=incoming_table, watermark_column=watermark_column,
                  base_pool=base_pool, safe_anchor=safe_anchor, harmful_ref=harmful_ref, refusal_anchor=refusal_anchor,
                  out_dir=out_dir, window=window, name=name, drift_tolerance=drift_tolerance, home=home)  # validates
    home = resolve_home(home)
    batch = collect_incoming(home, name, incoming, incoming_table, watermark_column)
    if batch["n_new"] == 0:
        noop_artifact(name, batch)
        print(f"nightly '{name}': nothing new past batch {batch['prev_seq']}; no-op")
        return {"status": "no-op", "name": name, "batch": batch["prev_seq"]}
    sources = {**({"pool": base_pool} if base_pool else {}), "safe_anchor": safe_anchor, "harmful_ref": harmful_ref,
               **({"refusal_anchor": refusal_anchor} if refusal_anchor else {})}
    refs = shared_results(ingest_inputs, home)(home, sources, encoder, None)
    pool = accumulate_pool(home, name, refs.get("pool", {}).get("dataset_id"), batch, window)
    references = {role: {"source": sources[role], **refs[role]} for role in sources if role != "pool"}
    ids = {"pool": pool["dataset_id"], **{role: r["dataset_id"] for role, r in references.items()}}
    embedded, costs, solved = embed_and_solve(home, ids, config)
    drift = batch_drift(home, batch["dataset_id"], ids["safe_anchor"], ids["harmful_ref"],
                        embedded["pool"]["encoder_id"], eps)
    inputs = {"pool": {"source": f"accumulated:{name}", **pool, "batch": batch["dataset_id"]}, **references}
    info = run_info(inputs, embedded, costs, solved, pool["seconds"] + batch.get("seconds", 0.0),
                    incoming={k: batch[k] for k in ("n_new", "files", "table_watermark")}, drift=drift)
    summary = publish_and_report(home, ids["pool"], solved, config, out_dir, info, None, name)
    drift = {**drift, "contamination": batch_contamination(home, batch["dataset_id"], out_dir)}
    committed = commit_batch(home, batch, ids["pool"], summary["version"], embedded["pool"]["n_embedded"], drift,
                             pool["base_version"])
    drift_alert(name, drift_artifacts(home, name), drift, drift_tolerance)
    nightly_artifact(name, batch, summary, drift, committed)
    return {"status": "published", **summary, "batch": committed["seq"], "n_new": batch["n_new"], "drift": drift}


if __name__ == "__main__":
    nightly_recuration()
