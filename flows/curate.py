"""The curation flow: ingest -> embed -> costs -> push-pull OT -> select and publish."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from sot_core.config import DEMO_DIR, CurateConfig, CurateInputs
from sot_core.fields import documented
from sot_core.io import default_home
from sot_prefect.flows.embed import embed_on
from sot_prefect.tasks.curation import (
    budget_stage, build_costs, embed_dataset, ingest_inputs, publish_curated, report_artifacts, run_info, solve_weights,
    stage_result, visual_artifacts,
)
from sot_prefect.tasks.ops import HOOKS, rename_run, run_name, shared_results

from sot_prefect.flows.params import config_values, flow_signature


# The parameters are the fields of CurateInputs and CurateConfig, with their defaults (sot_core/config.py).
@flow(name="curate-dataset", log_prints=True, flow_run_name=run_name("curate"), **HOOKS)
@documented("Curate one pool against a safe anchor and a harmful reference; returns the run summary.",
            CurateInputs, CurateConfig)
@flow_signature(CurateInputs, CurateConfig)
def curate_dataset(**params) -> dict:
    config = CurateConfig(**config_values(CurateConfig, params))
    run = CurateInputs(**config_values(CurateInputs, params))
    home = resolve_home(run.home)
    sources = {"pool": run.pool, "safe_anchor": run.safe_anchor, "harmful_ref": run.harmful_ref,
               **({"refusal_anchor": run.refusal_anchor} if run.refusal_anchor else {})}
    labels = run.labels or demo_labels(run.pool)
    ingest_state = shared_results(ingest_inputs, home)(home, sources, config.encoder, run.field_names(), labels,
                                                       run.label_field, return_state=True)
    cached = ingest_state.name == "Cached"
    inputs = {role: {"source": sources[role], **r, **({"seconds": 0.0} if cached else {})}
              for role, r in ingest_state.result().items()}
    ids = {role: inputs[role]["dataset_id"] for role in sources}
    embedded, costs, solved = embed_and_solve(home, ids, config)
    info = run_info(inputs, embedded, costs, solved, sum(i["seconds"] for i in inputs.values()), ingest_cached=cached)
    return publish_and_report(home, ids["pool"], solved, config, run.out_dir, info, labels, run.name, run.review_rows,
                              run.label_field)


def resolve_home(home: str | None) -> str:
    return str(Path(home or default_home()).resolve())


def demo_labels(pool: str) -> str | None:
    """The demo's labels when the pool is the bundled demo pool, so its report states harmful rows kept."""
    return str(DEMO_DIR / "labels.csv") if Path(pool).resolve() == (DEMO_DIR / "pool.jsonl") else None


def flow_kind() -> str:
    """The running flow's short name (curate, nightly) for run names."""
    from prefect.runtime import flow_run

    return "nightly" if flow_run.flow_name == "nightly-recuration" else "curate"


def embed_and_solve(home: str, ids: dict[str, str], config: CurateConfig) -> tuple[dict, dict, dict]:
    """Embed every input, build the cost matrices and solve the weights: (embedded, costs, solved)."""
    sharded = embed_on(config.runner, home, ids, config.encoder, config.batch_size, config.shard_rows)
    # per input: what the shards left (nothing after a complete run), the totals and their log line
    embedded = {role: embed_dataset.with_options(task_run_name=f"embed-{role}")(
        home, ids[role], config.encoder, config.batch_size, sharded[role]) for role in ids}
    costs = stage_result(shared_results(build_costs, home)(
        home, ids["pool"], ids["safe_anchor"], ids["harmful_ref"], embedded["pool"]["encoder_id"], config.knn,
        ids.get("refusal_anchor"), config.lm_share, return_state=True))
    solved = stage_result(shared_results(solve_weights, home)(home, costs["cost_key"], config.result_dict(),
                                                              return_state=True))
    if config.harmful_recall > 0:  # the harmful-row budget (sot_core/curate/budget.py)
        solved["budget"] = stage_result(shared_results(budget_stage, home)(
            home, ids, embedded["pool"]["encoder_id"], config.result_dict(), return_state=True))
    return embedded, costs, solved


def publish_and_report(home: str, pool_id: str, solved: dict, config: CurateConfig, out_dir: str, info: dict,
                       labels: str | None, name: str, review_rows: int, label_field: str = "label") -> dict:
    """Publish the curated version, then its report, tables and plot as artifacts."""
    summary = publish_curated(home, pool_id, solved["path"], config.result_dict(), out_dir, info, labels, name,
                              review_rows, label_field)
    rename_run(f"{flow_kind()}-{summary['version']}")
    report_artifacts(summary, (Path(out_dir) / "report.md").read_text(), name)
    visual_artifacts(home, summary, out_dir, info["encoder_id"], name)
    return summary


if __name__ == "__main__":
    curate_dataset()
