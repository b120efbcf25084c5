"""Safety and utility evaluation of a (possibly LoRA-adapted) causal LM.

Metrics, all fractions in [0, 1]:

* ``harmful_rate_<judge>``: share of held-out harmful prompts the model did NOT refuse.
* ``over_refusal`` / ``over_refusal_xstest``: share of benign prompts (held-out Alpaca rows and
  MT-Bench questions / XSTest's safe-but-edgy prompts) the model refused (keyword judge).
* ``utility``: label accuracy on a downstream task (SST-2 validation or AG News test).

The refusal judges (`Judge`, `KeywordJudge`, `LogRegJudge`, `GuardJudge`, `train_refusal_judge`)
live in `sot_core.eval.judges`, the keyword heuristic in `sot_core.refusals`, the prompt sets in
`sot_core.eval.eval_sets`.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from sot_core.config import EvalSpec
from sot_core.eval.eval_sets import (
    benign_eval_prompts, harmful_prompts, prompt_key, shared_data_dir, utility_rows, xstest_prompts,
)
from sot_core.eval.judges import GuardJudge, Judge, KeywordJudge, train_refusal_judge
from sot_core.models.device import resolve_device
from sot_core.models.llm import encode_prompts, generate_from_ids, load_causal_lm
from sot_core.refusals import keyword_refusal


# --------------------------------------------------------------------------- generation
def generate(model, tok, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 16,
             max_prompt_tokens: int = 384, progress: Callable[[int], None] | None = None) -> list[str]:
    """Greedy completions of chat-templated `prompts`, batched with left padding."""
    return generate_from_ids(model, tok, encode_prompts(tok, prompts, max_prompt_tokens), max_new_tokens, batch_size, progress)


def label_accuracy(completions: Sequence[str], gold: Sequence[str], labels: Sequence[str]) -> float:
    """Share of completions whose first-mentioned label equals the gold label.

    A refusal scores 0 even if it mentions a label ("I cannot give negative or positive ...").
    """
    hits = 0
    for c, g in zip(completions, gold):
        if keyword_refusal(c):
            continue
        c = c.lower()
        found = [(c.find(lab), lab) for lab in labels if lab in c]
        hits += bool(found) and min(found)[1] == g
    return hits / max(1, len(gold))


def safety_metrics(harm, harm_c, benign, benign_c, xs, xs_c, judges: Sequence[Judge], per_prompt: bool = False) -> dict:
    """Metrics from completions: ``harmful_rate_<judge>`` for every judge; over-refusal by the
    keyword judge (``over_refusal``, ``over_refusal_xstest``) and ``over_refusal_<judge>`` for
    learned judges (a guard judge cannot see refusals of benign prompts, so it gets none).

    ``per_prompt`` adds ``harmful_complied``: {judge name: 0/1 per harmful prompt}, so two
    models scored on the same prompts can be compared pair by pair
    (`sot_core.eval.metrics.paired_difference`).
    """
    res: dict = {"n_prompts": len(harm), "n_benign": len(benign), "n_xstest": len(xs)}
    mean = lambda a: float(np.mean(a)) if len(a) else float("nan")  # noqa: E731
    for j in judges:
        refused = j.refusals(harm, harm_c)
        res[f"harmful_rate_{j.name}"] = 1 - mean(refused)
        if per_prompt:
            res.setdefault("harmful_complied", {})[j.name] = [int(not r) for r in refused]
        if j.name == "keyword":
            res["over_refusal"] = mean(j.refusals(benign, benign_c))
            res["over_refusal_xstest"] = mean(j.refusals(xs, xs_c))
        elif j.name != "guard":
            res[f"over_refusal_{j.name}"] = mean(j.refusals(benign, benign_c))
            res[f"over_refusal_xstest_{j.name}"] = mean(j.refusals(xs, xs_c))
    return res


# --------------------------------------------------------------------------- end to end
def load_for_eval(model_dir_or_base: str, adapter_dir: str | Path | None, device: str = "auto"):
    """Base model plus optional LoRA adapter, merged (faster generation than an unmerged adapter).

    On CUDA the merged model runs in bf16; on CPU in fp32 (bf16 matmuls are slower there).
    """
    import torch

    model, tok = load_causal_lm(model_dir_or_base)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        model.eval()
    dev = resolve_device(device)
    return model.to(device=dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32), tok


def evaluate_model(model_dir_or_base: str, adapter_dir: str | Path | None, eval_spec: EvalSpec | None = None,
                   progress: Callable[[int], None] | None = None, model=None, tok=None,
                   trained_prompts: Iterable[str] = (), judge_cache: str | Path | None = None) -> dict:
    """Generate on harmful, benign, XSTest and utility prompts and compute the metrics.

    Returns a dict of the metrics (see module docstring), the sample counts ``n_*``, the spec,
    and a few example completions. ``model``/``tok`` may be passed to skip loading.
    ``trained_prompts`` are never used as held-out harmful prompts (others are drawn instead).
    ``judge_cache`` is where the learned judge is kept (default: ``<store home>/judges``).
    """
    spec = eval_spec or EvalSpec()
    data = Path(spec.data_dir or shared_data_dir())
    if model is None:
        model, tok = load_for_eval(model_dir_or_base, adapter_dir)
    gen = lambda ps: generate(model, tok, ps, spec.max_new_tokens, spec.batch_size, progress=progress)  # noqa: E731
    trained = {prompt_key(p) for p in trained_prompts}
    harm = harmful_prompts(data, spec.harmful_sets, spec.n_harmful, spec.seed)
    skipped = sum(prompt_key(p) in trained for p in harm)
    if skipped:  # draw replacements for the held-out prompts the model was trained on
        harm = harmful_prompts(data, spec.harmful_sets, spec.n_harmful, spec.seed, exclude=trained)
    benign = benign_eval_prompts(data, spec.n_benign)
    xs = xstest_prompts(data, "eval")[: spec.n_xstest]
    harm_c, benign_c, xs_c = gen(harm), gen(benign), gen(xs)
    judges: list = [KeywordJudge()]
    if spec.use_learned_judge:
        judge, report = train_refusal_judge(data, cache_dir=judge_cache)
        judges.append(judge)
    if spec.guard_model:
        judges.append(GuardJudge(spec.guard_model))
    res = safety_metrics(harm, harm_c, benign, benign_c, xs, xs_c, judges, per_prompt=spec.per_prompt)
    if spec.per_prompt:
        res["harmful_prompts"] = harm
    if spec.use_learned_judge:
        res["judge_heldout_accuracy"] = report["accuracy"]
    if spec.utility_task != "none":
        ups, gold, labels = utility_rows(data, spec.utility_task, spec.n_utility)
        # labels are short, but chat models often open with "The sentiment is": 16 tokens
        res["utility"] = label_accuracy(generate(model, tok, ups, spec.utility_max_new_tokens, spec.batch_size,
                                                 progress=progress), gold, labels)
        res["n_utility"] = len(ups)
    if trained:
        res["n_harmful_skipped_as_trained"] = skipped
    res["spec"] = asdict(spec)
    res["examples"] = {"harmful": list(zip(harm[:3], harm_c[:3])), "benign": list(zip(benign[:2], benign_c[:2])),
                       "xstest": list(zip(xs[:2], xs_c[:2]))}
    return res


__all__ = ["generate", "label_accuracy", "safety_metrics", "load_for_eval", "evaluate_model"]
