"""Prefect tasks around alignment, weighted LoRA training and safety evaluation (`sot_core`).

Keys are content hashes: the curated file's sha256, the base model's fingerprint and the
configuration. Training checkpoints inside its run folder, so a retried or re-triggered task
resumes from the last checkpoint instead of starting over.
"""
from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from sot_core.train.align import AlignConfig, align
from sot_core.config import EvalSpec, LoraTrainConfig
from sot_core.eval.evaluate import evaluate_model
from sot_core.models.llm import model_fingerprint
from sot_core.train.replay import write_replay_mix
from sot_core.io import file_sha256
from sot_core.train.lora import read_curated, train_lora
from sot_prefect.tasks.curation import JSON_RESULTS
from sot_prefect.tasks.ops import retry_policy

OPTIONS = dict(persist_result=True, result_serializer=JSON_RESULTS, cache_expiration=timedelta(days=30),
               **retry_policy(retries=1, first_delay=10))


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _key_if_exists(path_of_result, *parts):
    """Cache key that is valid only while the task's output folder still exists."""
    def key(context, parameters):
        digest = _digest(*[parameters.get(p) for p in parts], *[_fingerprint(parameters, p) for p in parts])
        return digest if Path(path_of_result(parameters)).exists() else None
    return key


def _fingerprint(parameters: dict, name: str):
    value = parameters.get(name)
    if name == "curated_path" and value and Path(value).is_file():
        return file_sha256(value)
    if name == "base_model" and value:
        try:
            return model_fingerprint(value)
        except Exception:  # an unknown model fails in the task with a clear error
            return value
    return None


@task(name="align-base", **OPTIONS)
def align_base(models_dir: str, config: dict | None = None) -> str:
    """The aligned base model folder (built once per recipe, then read from its cache)."""
    cfg = AlignConfig(**{k: v for k, v in (config or {}).items() if k != "train"})
    return str(align(cfg, cache_dir=models_dir, progress=print))


@task(name="train-lora", cache_key_fn=_key_if_exists(lambda p: Path(p["out_dir"]) / "adapter" / "manifest.json",
                                                      "curated_path", "base_model", "config"), **OPTIONS)
def train_adapter(curated_path: str, base_model: str, out_dir: str, config: dict | None = None) -> str:
    cfg = LoraTrainConfig(**(config or {}))
    return str(train_lora(curated_path, base_model, out_dir, cfg,
                          progress=lambda s, n, loss: print(f"step {s}/{n} loss {loss:.3f}") if s % 10 == 0 else None))


@task(name="mix-replay", **retry_policy(retries=1))
def mix_replay_rows(curated_path: str, replay_path: str, fraction: float, out_path: str, seed: int = 0) -> str:
    """curated.jsonl plus trusted refusal rows (`sot_core.train.replay`); cheap, so not cached."""
    return str(write_replay_mix(curated_path, replay_path, fraction, out_path, seed))


@task(name="evaluate", **OPTIONS)
def evaluate_adapter(base_model: str, adapter_dir: str | None, spec: dict | None = None,
                     trained_on: str | None = None, home: str | None = None) -> dict:
    """Safety and utility metrics; prompts of `trained_on` (a curated.jsonl) are never scored as held
    out. The learned judge is kept in the store at `home`."""
    trained = [r["prompt"] for r in read_curated(trained_on)] if trained_on else ()
    return evaluate_model(base_model, adapter_dir, EvalSpec(**(spec or {})), trained_prompts=trained,
                          judge_cache=Path(home) / "judges" if home else None)


@task(name="safety-artifacts")
def safety_artifacts(metrics: dict, key: str = "sot-safety") -> None:
    keys = ["harmful_rate_keyword", "harmful_rate_judge", "over_refusal", "over_refusal_xstest", "utility"]
    rows = [{"metric": k, "value": metrics.get(k)} for k in keys if k in metrics]
    create_table_artifact(rows, key=key, description="Safety and utility after fine-tuning")
    create_markdown_artifact("# Safety evaluation\n\n" + "\n".join(f"- **{r['metric']}**: {r['value']}" for r in rows),
                             key=f"{key}-summary")



