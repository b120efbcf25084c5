"""The alignment recipe (`sot_core.train.align`): the mix it trains on, checked row by row against
the shared source files and the held-out evaluation splits, and the aligned base it builds, cached
by its recipe. The real recipe aligns SmolLM2-135M (about an hour on 2 cores); here the same code
runs a scaled-down mix on the tiny random Llama of test_train, so what is checked is the recipe's
plumbing and data hygiene, not the refusal rates (benchmarks/RESULTS.md, safety_e2e, has those).
"""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from sot_core.data.loaders import canonical_prompt
from sot_core.eval.eval_sets import benign_eval_prompts, xstest_prompts
from sot_core.eval.evaluate import harmful_prompts
from sot_core.refusals import keyword_refusal
from sot_core.train.align import ALL_PROJ, AlignConfig, align, build_alignment_rows
from sot_core.config import EvalSpec, LoraTrainConfig
from conftest import require_shared
from test_train import make_tiny_model

SMALL = dict(n_refusal=16, n_alpaca=24, n_gsm8k=4, n_xstest=6, n_sst2=8, n_agnews=4, task_templated=0.5)


def fake_distill(prompts: list[str]) -> list[str]:
    """Stands in for the base model's greedy answers (a model run): complies, except on the first
    prompt, where it refuses, so the recipe's filter has something to drop."""
    return ["I'm sorry, but I cannot help with that."] + [f"Sure. About {p[:20]}: here is how." for p in prompts[1:]]


def test_alignment_mix_follows_the_recipe_and_never_touches_evaluation_data(shared_data):
    cfg = AlignConfig(**SMALL)
    rows = build_alignment_rows(cfg, shared_data, fake_distill)
    by_source = Counter(r["source"] for r in rows)
    assert by_source == {"safety_tuned_llamas": 16, "alpaca_en_demo": 24, "gsm8k": 4, "sst2_train": 8,
                         "ag_news_train": 4, "xstest_selfdistill": 5}, by_source
    assert len({r["id"] for r in rows}) == len(rows)

    refusals = [r for r in rows if r["source"] == "safety_tuned_llamas"]
    assert all(keyword_refusal(r["response"]) for r in refusals)
    held_out_harmful = {p.lower() for p in harmful_prompts(shared_data, EvalSpec().harmful_sets, 200)}
    assert not held_out_harmful & {r["prompt"].lower() for r in refusals}

    alpaca = json.load(open(shared_data / "alpaca_en_demo/alpaca_en_demo.json"))
    trainable = {canonical_prompt(r["instruction"], r.get("input") or "") for r in alpaca[:800]}
    assert {r["prompt"] for r in rows if r["source"] == "alpaca_en_demo"} <= trainable
    assert not set(benign_eval_prompts(shared_data, 400)) & {r["prompt"] for r in rows}

    xs = [r for r in rows if r["source"] == "xstest_selfdistill"]
    train_split = xstest_prompts(shared_data, "train", "safe")[:cfg.n_xstest]
    assert {r["prompt"] for r in xs} == set(train_split[1:])  # the refused self-answer is dropped
    assert not {r["prompt"] for r in xs} & set(xstest_prompts(shared_data, "eval", "safe"))
    assert not any(keyword_refusal(r["response"]) for r in xs)

    for source, n_labels in (("sst2_train", 2), ("ag_news_train", 4)):
        labels = Counter(r["response"] for r in rows if r["source"] == source)
        assert len(labels) == n_labels and len(set(labels.values())) == 1, (source, labels)  # balanced
    templated = [r for r in rows if r["source"] == "sst2_train" and "### Instruction" in r["prompt"]]
    assert len(templated) == round(cfg.n_sst2 * cfg.task_templated)
    assert not any("### Instruction" in r["prompt"] for r in rows if r["source"] == "ag_news_train")

    assert build_alignment_rows(cfg, shared_data, fake_distill) == rows  # the seed fixes the mix
    other = build_alignment_rows(AlignConfig(**SMALL, seed=1), shared_data, fake_distill)
    assert {r["prompt"] for r in other} != {r["prompt"] for r in rows}


@pytest.fixture(scope="module")
def tiny_aligned(tmp_path_factory):
    shared_data = require_shared()
    base = make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    train = LoraTrainConfig(r=4, lora_alpha=8, target_modules=list(ALL_PROJ), learning_rate=1e-2, epochs=1,
                            batch_size=8, max_length=32, checkpoint_every=0, seed=0)
    cfg = AlignConfig(base_model=str(base), **SMALL, distill_tokens=8, train=train)
    cache = tmp_path_factory.mktemp("models")
    return cfg, cache, align(cfg, cache, shared_data)


def test_align_merges_the_lora_into_a_full_model_with_its_manifest(tiny_aligned):
    from transformers import AutoModelForCausalLM

    cfg, cache, final = tiny_aligned
    assert final == cache / f"aligned-{cfg.key()}"
    manifest = json.loads((final / "align_manifest.json").read_text())
    mix = [json.loads(line) for line in open(cache / f".align-work-{cfg.key()}" / "mix.jsonl")]
    assert manifest["mix_counts"] == dict(Counter(r["source"] for r in mix))
    assert manifest["train_manifest"]["n_rows"] == len(mix)
    base = AutoModelForCausalLM.from_pretrained(cfg.base_model).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(final).state_dict()
    assert merged.keys() == base.keys()  # a plain model: no LoRA modules left after the merge
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], base[q])  # the adapter was trained and merged
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])  # not a target


def test_align_is_cached_by_its_recipe(tiny_aligned, shared_data):
    cfg, cache, final = tiny_aligned
    stamp = (final / "align_manifest.json").stat().st_mtime_ns
    assert align(cfg, cache, shared_data) == final
    assert (final / "align_manifest.json").stat().st_mtime_ns == stamp  # served from the cache, not rebuilt
    assert AlignConfig(**{**cfg.__dict__, "n_refusal": 15}).key() != cfg.key()
    assert AlignConfig(**{**cfg.__dict__, "seed": 1}).key() != cfg.key()
