"""Weighted LoRA fine-tuning on a curated dataset, checkpointed and exactly resumable.

Input is the curation side's ``curated.jsonl``: one object per line with ``id, prompt,
response, source, weight``. Each sample's loss is the mean cross-entropy over its *response*
tokens (prompt tokens are masked out) multiplied by its weight; a batch's loss is the sum of
weighted sample losses divided by the batch size (not by the sum of weights), so a weight-0
sample contributes exactly no gradient and weights with mean ~1 keep the usual loss scale.

Determinism: the seed fixes LoRA initialisation, the data order (one permutation per epoch from
``seed + epoch``) and dropout. A checkpoint stores adapter, optimizer, scheduler, every RNG state
and the step, so a run killed after any checkpoint and resumed ends with bit-identical adapter
weights to an uninterrupted run (tested in ``tests/test_train.py``). Checkpoints hold safetensors
and JSON only (`sot_core.train.trainer_state`): resuming never unpickles anything.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from sot_core.config import LoraTrainConfig
from sot_core.errors import InputError, SotError
from sot_core.failpoints import failpoint
from sot_core.io import atomic_dir, file_sha256, sweep_temp
from sot_core.models.device import resolve_device
from sot_core.models.llm import encode_pair, load_causal_lm, model_fingerprint, resolve_model_path
from sot_core.train.trainer_state import STATE_JSON, load_state, save_state

CURATED_FIELDS = {"id": str, "prompt": str, "response": str, "source": str, "weight": (int, float)}


def read_curated(path: str | Path) -> list[dict]:
    """Read and validate ``curated.jsonl``; errors name the file, 1-based line and field."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(path, f"not valid JSON: {exc.msg}", row=lineno) from exc
            for name, typ in CURATED_FIELDS.items():
                if name not in obj:
                    raise InputError(path, "missing field", row=lineno, field=name)
                if not isinstance(obj[name], typ) or isinstance(obj[name], bool):
                    raise InputError(path, f"expected {getattr(typ, '__name__', 'number')}", row=lineno, field=name)
            if not math.isfinite(obj["weight"]) or obj["weight"] < 0:
                raise InputError(path, "weight must be a finite number >= 0", row=lineno, field="weight")
            rows.append(obj)
    if not rows:
        raise InputError(path, "no rows")
    return rows


def tokenize_rows(tokenizer, rows: list[dict], max_length: int) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, labels)`` per row, with labels -100 on prompt tokens (response-only loss)."""
    out = []
    for r in rows:
        ids, n_prompt = encode_pair(tokenizer, r["prompt"], r["response"], max_length)
        out.append((ids, [-100] * n_prompt + ids[n_prompt:]))
    return out


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-pad a batch (training needs no left padding) into ids, mask and labels tensors."""
    import torch

    n = max(len(ids) for ids, _ in batch)
    ids_t = torch.full((len(batch), n), pad_id, dtype=torch.long)
    lab_t = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, (ids, labels) in enumerate(batch):
        ids_t[i, : len(ids)] = torch.tensor(ids)
        lab_t[i, : len(labels)] = torch.tensor(labels)
        mask[i, : len(ids)] = 1
    return ids_t, mask, lab_t


def per_sample_loss(logits, labels):
    """Mean next-token cross-entropy over each row's labelled (response) tokens, shape (B,)."""
    import torch.nn.functional as F

    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    tok = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="none")
    tok = tok.view(target.shape)
    valid = (target != -100).float()
    return (tok * valid).sum(1) / valid.sum(1).clamp(min=1.0)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch; a pure function of (n, seed, epoch) so resume can rebuild it."""
    import torch

    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _rng_state() -> dict:
    import numpy as np
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():  # dropout on a GPU draws from the CUDA generators
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _checkpoints(out_dir: Path) -> list[Path]:
    ck = out_dir / "checkpoints"
    return sorted(ck.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if ck.exists() else []


def _save_checkpoint(model, optimizer, scheduler, step: int, losses: list[float], out_dir: Path, cfg: LoraTrainConfig) -> Path:
    final = out_dir / "checkpoints" / f"step-{step:07d}"
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp)
        save_state({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(),
                    "step": step, "losses": losses, "config_hash": cfg.result_hash()}, tmp)
        failpoint("train.checkpoint")
    for old in _checkpoints(out_dir)[: -max(cfg.keep_checkpoints, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(model, optimizer, scheduler, ckpt: Path, cfg: LoraTrainConfig) -> tuple[int, list[float]]:
    """Restore a checkpoint. Nothing is unpickled (see `sot_core.train.trainer_state`); a checkpoint
    of the old pickle format (``trainer_state.pt`` alone) is refused, never loaded."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if not (ckpt / STATE_JSON).exists() and (ckpt / "trainer_state.pt").exists():
        raise SotError(f"{ckpt / 'trainer_state.pt'}: a checkpoint in the old pickle format is not loaded "
                       f"(unpickling can run code); delete {ckpt.parent} to start the run over")
    state = load_state(ckpt)
    if state["config_hash"] != cfg.result_hash():
        raise SotError(f"{ckpt}: checkpoint was written with a different training config; use a new out_dir")
    set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return state["step"], state["losses"]


@dataclass
class _Run:
    """Everything one training run works with, built by `_start_run`."""

    cfg: LoraTrainConfig
    out_dir: Path
    rows: list[dict]
    data: list[tuple[list[int], list[int]]]
    weights: list[float]
    model: Any
    tok: Any
    device: Any
    use_bf16: bool
    params: list
    optimizer: Any
    scheduler: Any
    steps_per_epoch: int
    total: int

    def save_checkpoint(self, step: int, losses: list[float]) -> Path:
        return _save_checkpoint(self.model, self.optimizer, self.scheduler, step, losses, self.out_dir, self.cfg)


def train_lora(
    curated_path: str | Path,
    base_model: str | Path,
    out_dir: str | Path,
    config: LoraTrainConfig | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Fine-tune `base_model` with LoRA on `curated_path`, weighting each sample's loss.

    Parameters
    ----------
    curated_path : path
        ``curated.jsonl`` (see module docstring).
    base_model : str or path
        Local model folder, ``smollm2``, or a cached hub id.
    out_dir : path
        Run folder. If it holds checkpoints the run resumes from the latest one; if it already
        holds a finished adapter for the same data and config, that adapter is returned.
    config : LoraTrainConfig, optional
    progress : callable, optional
        Called as ``progress(step, total_steps, loss)`` after every optimizer step.

    Returns
    -------
    Path
        ``out_dir/adapter``: peft adapter files plus ``manifest.json``. If the run stopped early
        because of ``max_steps_this_run``, the latest checkpoint folder is returned instead.
    """
    cfg = config or LoraTrainConfig()
    out_dir, curated_path = Path(out_dir), Path(curated_path)
    final = out_dir / "adapter"
    data_sha = file_sha256(curated_path)
    if _finished_adapter(final, data_sha, cfg):
        return final
    sweep_temp(out_dir)  # half-written checkpoints or adapter of a killed run
    run = _start_run(curated_path, base_model, out_dir, cfg)
    step, losses = 0, []
    ckpts = _checkpoints(out_dir)
    if ckpts:
        step, losses = _load_checkpoint(run.model, run.optimizer, run.scheduler, ckpts[-1], cfg)
    resumed_from = step
    t0 = time.time()
    step, run_steps, stopped_at = _train_steps(run, step, losses, progress)
    if stopped_at is not None:
        return stopped_at
    manifest = {
        "base_model": str(base_model), "base_model_resolved": resolve_model_path(base_model),
        "base_model_fingerprint": model_fingerprint(base_model),
        "curated_path": str(curated_path.resolve()), "curated_sha256": data_sha, "n_rows": len(run.rows),
        **_run_record(run, step, losses, run_steps, t0), "resumed_from_step": resumed_from, "steps_this_run": run_steps,
    }
    with atomic_dir(final) as tmp:
        run.model.save_pretrained(tmp)
        run.tok.save_pretrained(tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    return final


def _finished_adapter(final: Path, data_sha: str, cfg: LoraTrainConfig) -> bool:
    """True when `final` holds an adapter of the same data and config; raise if of other ones."""
    if not (final / "manifest.json").exists():
        return False
    man = json.loads((final / "manifest.json").read_text())
    if man.get("curated_sha256") == data_sha and man.get("config_hash") == cfg.result_hash():
        return True
    raise SotError(f"{final.parent}: holds a finished adapter for other data or config; use a new out_dir")


def _start_run(curated_path: Path, base_model: str | Path, out_dir: Path, cfg: LoraTrainConfig) -> _Run:
    """Read and tokenise the data, load the model, wrap it with LoRA, build optimizer and schedule.

    The global RNGs are seeded right before the LoRA layers are created (their initialisation
    draws from them), after the model is loaded, so a run's adapter depends on the seed alone.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    rows = read_curated(curated_path)
    weights = [1.0 if cfg.weighting == "uniform" else float(r["weight"]) for r in rows]
    model, tok = load_causal_lm(base_model, padding_side="right")
    data = tokenize_rows(tok, rows, cfg.max_length)
    device = resolve_device(cfg.device)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    model.to(device)

    torch.manual_seed(cfg.seed)  # LoRA init draws from the global RNG
    random.seed(cfg.seed)
    lcfg = LoraConfig(r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM", bias="none")
    model = get_peft_model(model, lcfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_then_linear_decay(cfg.warmup_ratio, total))
    return _Run(cfg, out_dir, rows, data, weights, model, tok, device, use_bf16, params, optimizer, scheduler,
                steps_per_epoch, total)


def _warmup_then_linear_decay(warmup_ratio: float, total: int) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up over a share of the steps, then linear decay to 0."""
    warm = max(1, int(warmup_ratio * total)) if warmup_ratio > 0 else 0

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return max(0.0, (total - s) / max(1, total - warm))

    return factor


def _train_steps(run: _Run, step: int, losses: list[float],
                 progress: Callable[[int, int, float], None] | None) -> tuple[int, int, Path | None]:
    """Optimizer steps from `step` to the end, appending to `losses` and checkpointing on schedule.

    Returns ``(step, steps run here, checkpoint)``: the checkpoint folder when the run stopped
    early because of ``max_steps_this_run``, else None.
    """
    cfg, run_steps = run.cfg, 0
    run.model.train()
    while step < run.total:
        losses.append(_train_step(run, step))
        step += 1
        run_steps += 1
        if progress is not None:
            progress(step, run.total, losses[-1])
        failpoint("train.after_step")
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < run.total:
            run.save_checkpoint(step, losses)
        if cfg.max_steps_this_run is not None and run_steps >= cfg.max_steps_this_run and step < run.total:
            last = _checkpoints(run.out_dir)
            if not last or not last[-1].name.endswith(f"{step:07d}"):
                last = [run.save_checkpoint(step, losses)]
            return step, run_steps, last[-1]
    return step, run_steps, None


def _train_step(run: _Run, step: int) -> float:
    """One optimizer step on batch `step` of the epoch order; returns the batch loss."""
    import torch

    cfg = run.cfg
    epoch, b = divmod(step, run.steps_per_epoch)
    idx = epoch_order(len(run.data), cfg.seed, epoch)[b * cfg.batch_size : (b + 1) * cfg.batch_size]
    ids, mask, labels = (t.to(run.device) for t in collate([run.data[i] for i in idx], run.tok.pad_token_id))
    w = torch.tensor([run.weights[i] for i in idx], dtype=torch.float32, device=run.device)
    # autocast keeps the master weights and the loss in fp32 (per_sample_loss upcasts logits)
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.use_bf16):
        logits = run.model(input_ids=ids, attention_mask=mask).logits
    loss = (per_sample_loss(logits, labels) * w).sum() / len(idx)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(run.params, cfg.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    return float(loss.detach())


def _run_record(run: _Run, step: int, losses: list[float], run_steps: int, t0: float) -> dict:
    """The training part of the adapter's manifest: config, steps, losses, device and timing."""
    tail = losses[-run.steps_per_epoch:]
    return {
        "config": asdict(run.cfg), "config_hash": run.cfg.result_hash(), "steps": step,
        "final_loss": losses[-1] if losses else None, "final_epoch_mean_loss": sum(tail) / max(1, len(tail)),
        "first_loss": losses[0] if losses else None,
        "device": str(run.device), "bf16": run.use_bf16,
        "seconds_this_run": round(time.time() - t0, 2),
        "seconds_per_step_this_run": round((time.time() - t0) / max(1, run_steps), 4),
    }
