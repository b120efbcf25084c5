"""Curation: the stages from input files to a published curated dataset, and how good it is.

Stages (`pipeline`): `load_inputs`, `ingest`, `embed`, `build_costs`, `solve`, `budget` (the
cross-fitted harmful-row threshold, `budget`); then `publish` (`select`: the refusal guard, the
budget's survivors, top-K or label-stratified selection, training weights and lineage; `report`
renders its ``report.md``; `review` ranks the kept rows a person should read first, ``review.jsonl``).
`guards` refuses empty selections and wrong labels files and words the composition warnings.
`quality` measures a curation against labels (`auroc`, `harmful_kept`, `read_labels`);
`baselines` are the per-row scores SOT must beat (`BASELINES`); `incremental` runs the nightly
re-curation of newly arrived rows; `plots` draws what a run shows a person.

Curation imports nothing from `sot_core.train` or `sot_core.eval`.
"""
from sot_core.curate.baselines import BASELINES
from sot_core.curate.incremental import (
    accumulate_pool, batch_drift, commit_batch, drift_history, read_watermark, sinkhorn_divergence, stage_batch,
)
from sot_core.curate.pipeline import (
    build_costs, composite_anchor_masses, dataset_id_of, embed, ingest, load_inputs, solve,
)
from sot_core.curate.plots import curation_figure, drift_figure, flagged_neighbours, score_distribution
from sot_core.curate.quality import auroc, harmful_kept, read_labels
from sot_core.curate.report import render_report
from sot_core.curate.select import (
    count_refusals, label_groups, publish, select_stratified, select_top, training_weights,
)

__all__ = ["BASELINES", "accumulate_pool", "auroc", "batch_drift", "build_costs", "commit_batch",
           "composite_anchor_masses", "count_refusals", "curation_figure", "dataset_id_of", "drift_figure",
           "drift_history", "embed", "flagged_neighbours", "harmful_kept", "ingest", "label_groups", "load_inputs",
           "publish", "read_labels", "read_watermark", "render_report", "score_distribution", "select_stratified",
           "select_top", "sinkhorn_divergence", "solve", "stage_batch", "training_weights"]
