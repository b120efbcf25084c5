"""Curation -> weighted LoRA fine-tuning -> safety and utility evaluation."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from sot_prefect.flows.curate import DEMO, curate_dataset
from sot_core.data.store import default_home
from sot_prefect.tasks.training import align_base, evaluate_adapter, mix_replay_rows, safety_artifacts, train_adapter


@flow(name="finetune-and-evaluate", log_prints=True)
def finetune_and_evaluate(
    curated: str | None = None,
    pool: str = str(DEMO / "pool.jsonl"),
    safe_anchor: str = str(DEMO / "safe_anchor.jsonl"),
    harmful_ref: str = str(DEMO / "harmful_ref.jsonl"),
    base_model: str = "aligned-smollm2",
    out_dir: str = "out/finetune",
    train: dict | None = None,
    evaluation: dict | None = None,
    replay: str | None = None,
    replay_fraction: float = 0.1,
    home: str | None = None,
) -> dict:
    """Fine-tune on curated data and measure harmfulness, over-refusal and utility.

    Args:
        curated: A curated.jsonl to train on; empty: curate pool/anchor/reference first.
        pool: Pool to curate when no curated file is given.
        safe_anchor: Trusted safe sample of the task.
        harmful_ref: Harmful reference set.
        base_model: Model folder or hub id; 'aligned-smollm2' builds the bundled aligned base.
        out_dir: Run folder (checkpoints, adapter, metrics).
        train: LoraTrainConfig fields (r, lora_alpha, epochs, batch_size, max_length, ...).
        evaluation: EvalSpec fields (n_harmful, n_benign, n_xstest, utility_task, ...).
        replay: Optional trusted refusals (harmful prompt -> safe answer) mixed into training.
        replay_fraction: Replay rows per curated row, in [0, 1] (used only with replay).
        home: Store folder (empty: $SOT_HOME, else ./.sot).
    """
    home = str(Path(home or default_home()).resolve())
    curated = curated or curate_first(pool, safe_anchor, harmful_ref, out_dir, home)
    base_model = resolve_base(base_model, home)
    curated = with_replay(curated, replay, replay_fraction, out_dir)
    adapter = train_adapter(curated, base_model, str(Path(out_dir) / "lora"), train)
    metrics = evaluate_adapter(base_model, adapter, evaluation, trained_on=curated)
    safety_artifacts(metrics)
    return {"curated": curated, "base_model": base_model, "adapter": adapter, "metrics": metrics}


def curate_first(pool: str, safe_anchor: str, harmful_ref: str, out_dir: str, home: str) -> str:
    curate_dataset(pool=pool, safe_anchor=safe_anchor, harmful_ref=harmful_ref,
                   out_dir=str(Path(out_dir) / "curation"), home=home)
    return str(Path(out_dir) / "curation" / "curated.jsonl")


def with_replay(curated: str, replay: str | None, fraction: float, out_dir: str) -> str:
    if not replay or fraction <= 0:
        return curated
    return mix_replay_rows(curated, replay, fraction, str(Path(out_dir) / "train_with_replay.jsonl"))


def resolve_base(base_model: str, home: str) -> str:
    return align_base(str(Path(home) / "models")) if base_model == "aligned-smollm2" else base_model


@flow(name="finetune", log_prints=True)
def train_only(curated: str | None, base_model: str = "aligned-smollm2", out_dir: str = "out/finetune",
               train: dict | None = None, replay: str | None = None, replay_fraction: float = 0.1,
               home: str | None = None) -> dict:
    """Weighted LoRA fine-tuning only (no evaluation); `replay` as in finetune_and_evaluate."""
    home = str(Path(home or default_home()).resolve())
    base_model = resolve_base(base_model, home)
    curated = curated or curate_first(*(str(DEMO / f) for f in ("pool.jsonl", "safe_anchor.jsonl", "harmful_ref.jsonl")),
                                      out_dir, home)
    curated = with_replay(curated, replay, replay_fraction, out_dir)
    adapter = train_adapter(curated, base_model, str(Path(out_dir) / "lora"), train)
    return {"curated": curated, "base_model": base_model, "adapter": adapter}


@flow(name="evaluate-model", log_prints=True)
def evaluate_only(base_model: str = "aligned-smollm2", adapter: str | None = None, evaluation: dict | None = None,
                  home: str | None = None) -> dict:
    """Harmful compliance (keyword and learned judges), over-refusal and utility of one model."""
    home = str(Path(home or default_home()).resolve())
    metrics = evaluate_adapter(resolve_base(base_model, home), adapter, evaluation)
    safety_artifacts(metrics)
    return metrics
