"""Nightly incremental re-curation: new rows past the watermark -> re-solve the pool -> new version."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from sot_core.config import CurateConfig
from sot_core.data.store import default_home
from sot_prefect.tasks.curation import (
    build_costs, embed_dataset, ingest_inputs, publish_curated, report_artifacts, solve_weights, stage_result,
    visual_artifacts,
)
from sot_prefect.tasks.incremental import (
    accumulate_pool, batch_drift, collect_incoming, commit_batch, drift_artifacts, nightly_artifact, noop_artifact,
)

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"


@flow(name="nightly-recuration", log_prints=True)
def nightly_recuration(
    incoming: str | None = "data/incoming",
    incoming_table: str | None = None,
    watermark_column: str = "seq",
    base_pool: str | None = None,
    safe_anchor: str = str(DEMO / "safe_anchor.jsonl"),
    harmful_ref: str = str(DEMO / "harmful_ref.jsonl"),
    refusal_anchor: str | None = None,
    refusal_share: float = 0.2,
    out_dir: str = "out/nightly",
    keep: float = 0.8,
    lam: float = 1.0,
    eps: float = 0.1,
    encoder: str = "minilm",
    knn: int | None = None,
    window: int | None = None,
    name: str = "nightly",
    home: str | None = None,
) -> dict:
    """Curate what arrived since the last run together with everything before it.

    Google style on purpose: Prefect reads only that style into the deployment's run form.

    Args:
        incoming: Folder where new data files (jsonl/json/csv/parquet) arrive; empty: none.
        incoming_table: DuckDB table of new rows, as PATH.duckdb:TABLE; empty: none.
        watermark_column: Increasing column of the incoming table (sequence number or timestamp).
        base_pool: Pool the accumulated data starts from (e.g. the last full curation's pool).
        safe_anchor: Trusted safe sample of the task.
        harmful_ref: Harmful reference set.
        refusal_anchor: Safe answers to harmful prompts added to the anchor so refusals in the pool
            are kept (e.g. data/refusals/pyrit_refusals.jsonl); empty: none.
        refusal_share: Anchor mass on the refusal rows when a refusal anchor is given.
        out_dir: Output folder of the latest version (overwritten each night).
        keep: Fraction of the accumulated pool kept.
        lam: Push strength lambda.
        eps: Entropic regularisation epsilon (also used for the drift divergences).
        encoder: Encoder spec, as for curate-dataset.
        knn: k nearest reference rows per pool row (empty: auto).
        window: Keep only the most recent N rows of the accumulated pool (empty: all).
        name: Curated dataset name: its watermark, versions and artifact keys.
        home: Store folder (empty: $SOT_HOME, else ./.sot under the working directory).
    """
    home = str(Path(home or default_home()).resolve())
    batch = collect_incoming(home, name, incoming, incoming_table, watermark_column)
    if batch["n_new"] == 0:
        noop_artifact(name, batch)
        print(f"nightly '{name}': nothing new past batch {batch['prev_seq']}; no-op")
        return {"status": "no-op", "name": name, "batch": batch["prev_seq"]}
    config = CurateConfig(keep=keep, lam=lam, eps=eps, encoder=encoder, knn=knn, refusal_share=refusal_share)
    sources = {**({"pool": base_pool} if base_pool else {}), "safe_anchor": safe_anchor, "harmful_ref": harmful_ref,
               **({"refusal_anchor": refusal_anchor} if refusal_anchor else {})}
    refs = ingest_inputs(home, sources, encoder, None)
    pool = accumulate_pool(home, name, refs.get("pool", {}).get("dataset_id"), batch, window)
    ids = {"pool": pool["dataset_id"], **{role: refs[role]["dataset_id"] for role in sources if role != "pool"}}
    embedded = {role: embed_dataset(home, ids[role], encoder) for role in ids}
    encoder_id = embedded["pool"]["encoder_id"]
    costs = stage_result(build_costs(home, ids["pool"], ids["safe_anchor"], ids["harmful_ref"], encoder_id, knn,
                                     ids.get("refusal_anchor"), return_state=True))
    solved = stage_result(solve_weights(home, costs["cost_key"], config.to_dict(), return_state=True))
    drift = batch_drift(home, batch["dataset_id"], ids["safe_anchor"], ids["harmful_ref"], encoder_id, eps)
    run_info = {
        "inputs": {"pool": {"source": f"accumulated:{name}", **pool, "batch": batch["dataset_id"]},
                   **{role: {"source": sources[role], **refs[role]} for role in sources if role != "pool"}},
        "encoder_id": encoder_id,
        "embedded_now": {role: e["n_embedded"] for role, e in embedded.items()},
        "stage_seconds": {"ingest": pool["seconds"] + batch.get("seconds", 0.0),
                          "embed": sum(e["seconds"] for e in embedded.values()),
                          "costs": costs["seconds"], "solve": solved["seconds"]},
        "cached_stages": [s for s, c in (("costs", costs["cached"]), ("solve", solved["cached"])) if c],
        "solver": solved["diagnostics"],
        "incoming": {"n_new": batch["n_new"], "files": batch["files"], "table_watermark": batch["table_watermark"]},
        "drift": drift,
    }
    summary = publish_curated(home, ids["pool"], solved["path"], config.to_dict(), out_dir, run_info, None, name)
    committed = commit_batch(home, batch, ids["pool"], summary["version"], embedded["pool"]["n_embedded"], drift)
    report_artifacts(summary, (Path(out_dir) / "report.md").read_text(), name)
    visual_artifacts(home, summary, out_dir, encoder_id, name)
    drift_artifacts(home, name)
    nightly_artifact(name, batch, summary, drift, committed)
    return {"status": "published", **summary, "batch": committed["seq"], "n_new": batch["n_new"], "drift": drift}


if __name__ == "__main__":
    nightly_recuration()
