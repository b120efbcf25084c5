"""Nightly incremental re-curation: new rows past the watermark -> re-solve the pool -> new version."""
from __future__ import annotations

from prefect import flow

from sot_core.config import CurateConfig, NightlyInputs
from sot_core.fields import documented
from sot_prefect.flows.curate import embed_and_solve, publish_and_report, resolve_home
from sot_prefect.tasks.curation import ingest_inputs, run_info
from sot_prefect.tasks.incremental import (
    accumulate_pool, batch_contamination, batch_drift, collect_incoming, commit_batch, drift_alert, drift_artifacts,
    nightly_artifact,
    noop_artifact,
)
from sot_prefect.tasks.ops import HOOKS, run_name, shared_results

from sot_prefect.flows.params import config_values, flow_signature


# The parameters are the fields of NightlyInputs and CurateConfig, with their defaults (sot_core/config.py).
# A night that runs past 6 hours is stuck: fail it (and alert) rather than block the next night's queued run.
@flow(name="nightly-recuration", log_prints=True, flow_run_name=run_name("nightly"), timeout_seconds=6 * 3600, **HOOKS)
@documented("Curate what arrived since the last run together with everything before it.", NightlyInputs, CurateConfig)
@flow_signature(NightlyInputs, CurateConfig)
def nightly_recuration(**params) -> dict:
    config = CurateConfig(**config_values(CurateConfig, params))
    run = NightlyInputs(**config_values(NightlyInputs, params))
    home, name, out_dir = resolve_home(run.home), run.name, run.out_dir
    batch = collect_incoming(home, name, run.incoming, run.incoming_table, run.watermark_column)
    if batch["n_new"] == 0:
        noop_artifact(name, batch)
        print(f"nightly '{name}': nothing new past batch {batch['prev_seq']}; no-op")
        return {"status": "no-op", "name": name, "batch": batch["prev_seq"]}
    sources = {**({"pool": run.base_pool} if run.base_pool else {}), "safe_anchor": run.safe_anchor,
               "harmful_ref": run.harmful_ref, **({"refusal_anchor": run.refusal_anchor} if run.refusal_anchor else {})}
    refs = shared_results(ingest_inputs, home)(home, sources, config.encoder, None)
    base = refs.get("pool", {})
    pool = accumulate_pool(home, name, base.get("dataset_id"), batch, run.window, base.get("records_id"))
    references = {role: {"source": sources[role], **refs[role]} for role in sources if role != "pool"}
    ids = {"pool": pool["dataset_id"], **{role: r["dataset_id"] for role, r in references.items()}}
    embedded, costs, solved = embed_and_solve(home, ids, config)
    drift = batch_drift(home, batch["dataset_id"], ids["safe_anchor"], ids["harmful_ref"],
                        embedded["pool"]["encoder_id"], config.eps, config.lm_share)
    inputs = {"pool": {"source": f"accumulated:{name}", **pool, "batch": batch["dataset_id"]}, **references}
    info = run_info(inputs, embedded, costs, solved, pool["seconds"] + batch.get("seconds", 0.0),
                    incoming={k: batch[k] for k in ("n_new", "files", "table_watermark")}, drift=drift)
    summary = publish_and_report(home, ids["pool"], solved, config, out_dir, info, None, name, run.review_rows)
    drift = {**drift, "contamination": batch_contamination(home, batch["dataset_id"], out_dir)}
    committed = commit_batch(home, batch, ids["pool"], summary["version"], embedded["pool"]["n_embedded"], drift,
                             pool["base_version"])
    drift_alert(name, drift_artifacts(home, name), drift, run.drift_tolerance)
    nightly_artifact(name, batch, summary, drift, committed)
    return {"status": "published", **summary, "batch": committed["seq"], "n_new": batch["n_new"], "drift": drift}


if __name__ == "__main__":
    nightly_recuration()
