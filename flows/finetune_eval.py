"""Curation -> weighted LoRA fine-tuning -> safety and utility evaluation."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow

from sot_core.config import EvalSpec, FinetuneInputs, LoraTrainConfig
from sot_core.fields import documented
from sot_prefect.flows.curate import curate_dataset, resolve_home
from sot_prefect.tasks.ops import HOOKS, run_name
from sot_prefect.tasks.training import align_base, evaluate_adapter, mix_replay_rows, safety_artifacts, train_adapter

from sot_prefect.flows.params import bounded

ReplayFraction = bounded(FinetuneInputs, "replay_fraction")  # the run form shows and enforces [0, 1]


# Every default below is the config's own (sot_core/config.py); tests/test_config_consistency.py checks it.
@flow(name="finetune-and-evaluate", log_prints=True, flow_run_name=run_name("finetune"), **HOOKS)
@documented("Fine-tune on curated data and measure harmfulness, over-refusal and utility.", FinetuneInputs)
def finetune_and_evaluate(
    curated: str | None = FinetuneInputs.curated,
    pool: str = FinetuneInputs.pool,
    safe_anchor: str = FinetuneInputs.safe_anchor,
    harmful_ref: str = FinetuneInputs.harmful_ref,
    base_model: str = FinetuneInputs.base_model,
    out_dir: str = FinetuneInputs.out_dir,
    train: LoraTrainConfig = LoraTrainConfig(),
    evaluation: EvalSpec = EvalSpec(),
    replay: str | None = FinetuneInputs.replay,
    replay_fraction: ReplayFraction = FinetuneInputs.replay_fraction,
    home: str | None = FinetuneInputs.home,
) -> dict:
    home = resolve_home(home)
    curated, base_model, adapter = _train(curated, pool, safe_anchor, harmful_ref, base_model, out_dir, train, replay,
                                          replay_fraction, home)
    metrics = evaluate_adapter(base_model, adapter, asdict(evaluation), trained_on=curated, home=home)
    safety_artifacts(metrics)
    return {"curated": curated, "base_model": base_model, "adapter": adapter, "metrics": metrics}


@flow(name="finetune", log_prints=True, flow_run_name=run_name("finetune"), **HOOKS)
@documented("Weighted LoRA fine-tuning only (no evaluation).", FinetuneInputs)
def train_only(
    curated: str | None = FinetuneInputs.curated,
    pool: str = FinetuneInputs.pool,
    safe_anchor: str = FinetuneInputs.safe_anchor,
    harmful_ref: str = FinetuneInputs.harmful_ref,
    base_model: str = FinetuneInputs.base_model,
    out_dir: str = FinetuneInputs.out_dir,
    train: LoraTrainConfig = LoraTrainConfig(),
    replay: str | None = FinetuneInputs.replay,
    replay_fraction: ReplayFraction = FinetuneInputs.replay_fraction,
    home: str | None = FinetuneInputs.home,
) -> dict:
    curated, base_model, adapter = _train(curated, pool, safe_anchor, harmful_ref, base_model, out_dir, train, replay,
                                          replay_fraction, home)
    return {"curated": curated, "base_model": base_model, "adapter": adapter}


@flow(name="evaluate-model", log_prints=True, flow_run_name=run_name("evaluate"), **HOOKS)
@documented("Harmful compliance (keyword and learned judges), over-refusal and utility of one model.", FinetuneInputs)
def evaluate_only(base_model: str = FinetuneInputs.base_model, adapter: str | None = None, evaluation: EvalSpec = EvalSpec(),
                  home: str | None = FinetuneInputs.home) -> dict:
    home = resolve_home(home)
    metrics = evaluate_adapter(resolve_base(base_model, home), adapter, asdict(evaluation), home=home)
    safety_artifacts(metrics)
    return metrics


def _train(curated, pool, safe_anchor, harmful_ref, base_model, out_dir, train, replay, replay_fraction, home):
    """(training file, base model folder, adapter folder): curate first when no curated file is given."""
    FinetuneInputs(curated=curated, pool=pool, safe_anchor=safe_anchor, harmful_ref=harmful_ref, base_model=base_model,
                   out_dir=out_dir, replay=replay, replay_fraction=replay_fraction, home=home)  # validates
    home = resolve_home(home)
    if not curated:
        curate_dataset(pool=pool, safe_anchor=safe_anchor, harmful_ref=harmful_ref,
                       out_dir=str(Path(out_dir) / "curation"), home=home)
        curated = str(Path(out_dir) / "curation" / "curated.jsonl")
    base_model = resolve_base(base_model, home)
    if replay and replay_fraction > 0:
        curated = mix_replay_rows(curated, replay, replay_fraction, str(Path(out_dir) / "train_with_replay.jsonl"))
    adapter = train_adapter(curated, base_model, str(Path(out_dir) / "lora"), asdict(train))
    return curated, base_model, adapter


def resolve_base(base_model: str, home: str) -> str:
    return align_base(str(Path(home) / "models")) if base_model == "aligned-smollm2" else base_model
