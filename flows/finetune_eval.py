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

from sot_prefect.flows.params import config_values, flow_signature

# The run's nested settings: one parameter each, its default the class's default instance.
TRAIN = {"train": LoraTrainConfig}
EVALUATION = {"evaluation": EvalSpec}


# The parameters are the fields of FinetuneInputs with their defaults (sot_core/config.py), then `train`
# and `evaluation`.
@flow(name="finetune-and-evaluate", log_prints=True, flow_run_name=run_name("finetune"), **HOOKS)
@documented("Fine-tune on curated data and measure harmfulness, over-refusal and utility.", FinetuneInputs)
@flow_signature(FinetuneInputs, nested={**TRAIN, **EVALUATION})
def finetune_and_evaluate(**params) -> dict:
    run = FinetuneInputs(**config_values(FinetuneInputs, params))
    home = resolve_home(run.home)
    curated, base_model, adapter = _train(run, params.get("train", LoraTrainConfig()), home)
    metrics = evaluate_adapter(base_model, adapter, asdict(params.get("evaluation", EvalSpec())), trained_on=curated,
                               home=home)
    safety_artifacts(metrics)
    return {"curated": curated, "base_model": base_model, "adapter": adapter, "metrics": metrics}


@flow(name="finetune", log_prints=True, flow_run_name=run_name("finetune"), **HOOKS)
@documented("Weighted LoRA fine-tuning only (no evaluation).", FinetuneInputs)
@flow_signature(FinetuneInputs, nested=TRAIN)
def train_only(**params) -> dict:
    run = FinetuneInputs(**config_values(FinetuneInputs, params))
    curated, base_model, adapter = _train(run, params.get("train", LoraTrainConfig()), resolve_home(run.home))
    return {"curated": curated, "base_model": base_model, "adapter": adapter}


@flow(name="evaluate-model", log_prints=True, flow_run_name=run_name("evaluate"), **HOOKS)
@documented("Harmful compliance (keyword and learned judges), over-refusal and utility of one model.", FinetuneInputs)
def evaluate_only(base_model: str = FinetuneInputs.base_model, adapter: str | None = None, evaluation: EvalSpec = EvalSpec(),
                  home: str | None = FinetuneInputs.home) -> dict:
    home = resolve_home(home)
    metrics = evaluate_adapter(resolve_base(base_model, home), adapter, asdict(evaluation), home=home)
    safety_artifacts(metrics)
    return metrics


def _train(run: FinetuneInputs, train: LoraTrainConfig, home: str) -> tuple[str, str, str]:
    """(training file, base model folder, adapter folder): curate first when no curated file is given."""
    curated, out_dir = run.curated, Path(run.out_dir)
    if not curated:
        curate_dataset(pool=run.pool, safe_anchor=run.safe_anchor, harmful_ref=run.harmful_ref,
                       out_dir=str(out_dir / "curation"), home=home)
        curated = str(out_dir / "curation" / "curated.jsonl")
    base_model = resolve_base(run.base_model, home)
    if run.replay and run.replay_fraction > 0:
        curated = mix_replay_rows(curated, run.replay, run.replay_fraction, str(out_dir / "train_with_replay.jsonl"))
    adapter = train_adapter(curated, base_model, str(out_dir / "lora"), asdict(train))
    return curated, base_model, adapter


def resolve_base(base_model: str, home: str) -> str:
    return align_base(str(Path(home) / "models")) if base_model == "aligned-smollm2" else base_model
