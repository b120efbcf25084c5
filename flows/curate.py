"""The curation flow: ingest -> embed -> costs -> push-pull OT -> select and publish."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from sot_core.config import CurateConfig
from sot_core.data.store import default_home
from sot_prefect.tasks.curation import (
    build_costs, embed_dataset, ingest_inputs, publish_curated, report_artifacts, solve_weights, stage_result,
    visual_artifacts,
)

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"


@flow(name="curate-dataset", log_prints=True)
def curate_dataset(
    pool: str = str(DEMO / "pool.jsonl"),
    safe_anchor: str = str(DEMO / "safe_anchor.jsonl"),
    harmful_ref: str = str(DEMO / "harmful_ref.jsonl"),
    out_dir: str = "out/demo",
    keep: float = 0.8,
    lam: float = 1.0,
    eps: float = 0.1,
    mode: str = "push-pull",
    encoder: str = "minilm",
    knn: int | None = None,
    labels: str | None = None,
    refusal_anchor: str | None = None,
    refusal_share: float = 0.2,
    stratify: str = "none",
    name: str = "default",
    fields: dict | None = None,
    solver: dict | None = None,
    home: str | None = None,
) -> dict:
    """Curate one pool against a safe anchor and a harmful reference; returns the run summary.

    Google style on purpose: Prefect reads only that style into the deployment's run form.

    Args:
        pool: Pool to curate: jsonl/json/csv/parquet file, HF datasets folder or hf:NAME.
        safe_anchor: Trusted safe sample of the task (same formats).
        harmful_ref: Harmful reference set (same formats).
        out_dir: Output folder (relative to the working directory).
        keep: Fraction of the pool kept, in (0, 1].
        lam: Push strength lambda.
        eps: Entropic regularisation epsilon, in cosine-cost units.
        mode: push-pull, pull or push.
        encoder: minilm[:pair|response|both|contrast] or hf:<model>[:repr].
        knn: k nearest reference rows per pool row (empty: dense when small, kNN when large).
        labels: Optional id,label file; the report then states harmful rows kept.
        refusal_anchor: Optional safe answers to harmful prompts (e.g. data/refusals/pyrit_refusals.jsonl),
            added to the anchor so that refusals in the pool are kept as wanted data.
        refusal_share: Share of the anchor mass given to the refusal rows, in [0, 1).
        stratify: none, or label: keep each label's share of a classification pool (rows sharing a response).
        name: Name of the curated dataset in the catalog; also prefixes the artifact keys.
        fields: Explicit field names (prompt, response, id, input, messages).
        solver: Extra PushPullConfig fields (tau, step_size, ...).
        home: Store folder (empty: $SOT_HOME, else ./.sot under the working directory).
    """
    home = str(Path(home or default_home()).resolve())
    config = CurateConfig(keep=keep, lam=lam, eps=eps, mode=mode, encoder=encoder, knn=knn, solver=solver or {},
                          refusal_share=refusal_share, stratify=stratify)
    sources = {"pool": pool, "safe_anchor": safe_anchor, "harmful_ref": harmful_ref}
    if refusal_anchor:
        sources["refusal_anchor"] = refusal_anchor
    ingest_state = ingest_inputs(home, sources, encoder, fields, return_state=True)
    inputs = {role: {**r, "seconds": 0.0} if ingest_state.name == "Cached" else r
              for role, r in ingest_state.result().items()}
    embedded = {role: embed_dataset(home, inputs[role]["dataset_id"], encoder) for role in sources}
    costs = stage_result(build_costs(home, inputs["pool"]["dataset_id"], inputs["safe_anchor"]["dataset_id"],
                                     inputs["harmful_ref"]["dataset_id"], embedded["pool"]["encoder_id"], knn,
                                     inputs.get("refusal_anchor", {}).get("dataset_id"), return_state=True))
    solved = stage_result(solve_weights(home, costs["cost_key"], config.to_dict(), return_state=True))
    run_info = {
        "inputs": {role: {"source": sources[role], **inputs[role]} for role in sources},
        "encoder_id": embedded["pool"]["encoder_id"],
        "embedded_now": {role: e["n_embedded"] for role, e in embedded.items()},
        "stage_seconds": {
            "ingest": sum(i["seconds"] for i in inputs.values()),
            "embed": sum(e["seconds"] for e in embedded.values()),
            "costs": costs["seconds"],
            "solve": solved["seconds"],
        },
        "cached_stages": [stage for stage, cached in (("ingest", ingest_state.name == "Cached"),
                          ("costs", costs["cached"]), ("solve", solved["cached"])) if cached],
        "solver": solved["diagnostics"],
    }
    summary = publish_curated(home, inputs["pool"]["dataset_id"], solved["path"], config.to_dict(), out_dir,
                              run_info, labels, name)
    report_artifacts(summary, (Path(out_dir) / "report.md").read_text(), name)
    visual_artifacts(home, summary, out_dir, embedded["pool"]["encoder_id"], name)
    return summary


if __name__ == "__main__":
    curate_dataset(labels=str(DEMO / "labels.csv"))
