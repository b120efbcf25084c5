"""Weighted LoRA training on a tiny random Llama (built offline from a config): masking,
weighting, loss decrease, exact resume and the manifest. Runs in a few seconds on 2 cores."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import peft  # noqa: F401 - required: a broken install fails here, never skips
import torch


from sot_core.errors import InputError, SotError
from sot_core.train.lora import (
    LoraTrainConfig, collate, per_sample_loss, read_curated, tokenize_rows, train_lora,
)

WORDS = ("what is the capital of france paris tell me a joke no i can not help with that how to "
         "bake bread mix flour water salt yeast sort these numbers one two three good bad movie "
         "review positive negative").split()
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <eot> {% endfor %}"
                 "{% if add_generation_prompt %}<assistant> {% endif %}")


def make_tiny_model(path: Path, chat_template: bool = True) -> Path:
    """Save a 2-layer, hidden-32 random Llama and a WordLevel tokenizer into `path`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>", "<eot>", "<user>", "<assistant>", "<system>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS)))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<bos>", eos_token="<eot>")
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


TOY = [
    ("what is the capital of france", "paris", 1.0),
    ("tell me a joke", "no i can not help with that", 1.5),
    ("how to bake bread", "mix flour water salt yeast", 0.5),
    ("sort these numbers three one two", "one two three", 1.0),
    ("good movie review", "positive", 1.0),
    ("bad movie review", "negative", 2.0),
    ("tell me how to bake bread", "mix flour water salt", 0.0),
    ("what is a good joke", "no", 1.0),
]


def write_curated(path: Path, rows=TOY) -> Path:
    with open(path, "w") as f:
        for i, (p, r, w) in enumerate(rows):
            f.write(json.dumps({"id": f"r{i}", "prompt": p, "response": r, "source": "toy", "weight": w}) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _tok(path):
    from sot_core.models.llm import load_tokenizer

    return load_tokenizer(path, padding_side="right")


@pytest.mark.parametrize("templated", [True, False])
def test_response_only_masking(tmp_path, templated):
    path = make_tiny_model(tmp_path / "m", chat_template=templated)
    tok = _tok(path)
    (ids, labels), = tokenize_rows(tok, [{"prompt": "tell me a joke", "response": "no i can not"}], 64)
    n_prompt = sum(1 for x in labels if x == -100)
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    # the labelled tokens are exactly the response followed by the end-of-turn token
    assert tok.convert_ids_to_tokens(ids[n_prompt:]) == ["no", "i", "can", "not", "<eot>"]
    assert "joke" in tok.convert_ids_to_tokens(ids[:n_prompt])


def test_truncation_keeps_prompt_tail_and_some_response(tiny):
    tok = _tok(tiny)
    long_prompt = " ".join(["one two three"] * 30)
    (ids, labels), = tokenize_rows(tok, [{"prompt": long_prompt, "response": "positive " * 20}], 32)
    assert len(ids) == 32
    assert any(x != -100 for x in labels)  # some response tokens survive
    assert tok.convert_ids_to_tokens(ids[labels.index(next(x for x in labels if x != -100)) - 1]) == "<assistant>"


def test_zero_weight_sample_contributes_no_gradient(tiny):
    from sot_core.models.llm import load_causal_lm

    model, _ = load_causal_lm(tiny)
    tok = _tok(tiny)
    data = tokenize_rows(tok, [{"prompt": p, "response": r} for p, r, _ in TOY[:2]], 64)

    def grads(batch, w):
        model.zero_grad()
        ids, mask, lab = collate(batch, tok.pad_token_id)
        loss = (per_sample_loss(model(input_ids=ids, attention_mask=mask).logits, lab) * torch.tensor(w)).sum() / len(batch)
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    g_pair = grads(data, [1.0, 0.0])
    g_first = grads(data[:1], [1.0])  # sample 0 alone; batch-of-2 divides by 2
    for a, b in zip(g_pair, g_first):
        torch.testing.assert_close(a, b / 2, rtol=1e-5, atol=1e-7)
    g_second_only = grads(data, [0.0, 1.0])
    assert any(not torch.allclose(a, b / 2) for a, b in zip(g_second_only, g_first))


def _adapter_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


FAST = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], learning_rate=5e-3, batch_size=3,
            max_length=48, seed=7, checkpoint_every=2, lora_dropout=0.1, epochs=3, num_threads=1)


def test_loss_decreases_and_manifest(tiny, tmp_path):
    data = write_curated(tmp_path / "curated.jsonl")
    seen = []
    # uniform weights: per-batch losses are then comparable across epochs
    cfg = LoraTrainConfig(**{**FAST, "epochs": 40, "lora_dropout": 0.0, "learning_rate": 5e-2, "weighting": "uniform"})
    out = train_lora(data, tiny, tmp_path / "run", cfg, progress=lambda s, t, l: seen.append((s, t, l)))
    man = json.loads((out / "manifest.json").read_text())
    assert man["steps"] == 40 * 3 == len(seen) and seen[-1][:2] == (120, 120)
    assert man["n_rows"] == len(TOY) and man["base_model"] == str(tiny)
    assert len(man["curated_sha256"]) == 64 and man["config"]["r"] == 4
    first_epoch = sum(l for _, _, l in seen[:3]) / 3
    assert man["final_epoch_mean_loss"] < 0.9 * first_epoch  # measured: 3.90 -> 3.37
    assert not (tmp_path / "run" / "checkpoints").exists()  # cleaned up after success
    assert (out / "adapter_config.json").exists()
    # calling again is a no-op returning the same adapter
    assert train_lora(data, tiny, tmp_path / "run", cfg) == out


def test_resume_equals_uninterrupted(tiny, tmp_path):
    data = write_curated(tmp_path / "curated.jsonl")
    full = train_lora(data, tiny, tmp_path / "full", LoraTrainConfig(**FAST))
    run = tmp_path / "killed"
    # killed at step 3 (between checkpoints) and then at step 6, then finished: 9 steps total
    first = train_lora(data, tiny, run, LoraTrainConfig(**FAST, max_steps_this_run=3))
    assert first.name == "step-0000003" and not (run / "adapter").exists()
    train_lora(data, tiny, run, LoraTrainConfig(**FAST, max_steps_this_run=3))
    resumed = train_lora(data, tiny, run, LoraTrainConfig(**FAST))
    a, b = _adapter_tensors(full), _adapter_tensors(resumed)
    assert a.keys() == b.keys() and len(a) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (full, resumed))
    assert ma["final_loss"] == mb["final_loss"] and ma["steps"] == mb["steps"] == 9
    # a different seed gives a different adapter (the comparison above is not vacuous)
    other = train_lora(data, tiny, tmp_path / "other", LoraTrainConfig(**{**FAST, "seed": 8}))
    assert any(not torch.equal(a[k], _adapter_tensors(other)[k]) for k in a)


def test_resume_refuses_other_config(tiny, tmp_path):
    data = write_curated(tmp_path / "curated.jsonl")
    train_lora(data, tiny, tmp_path / "run", LoraTrainConfig(**FAST, max_steps_this_run=1))
    with pytest.raises(SotError):
        train_lora(data, tiny, tmp_path / "run", LoraTrainConfig(**{**FAST, "learning_rate": 1e-3}))


def test_uniform_weighting_differs(tiny, tmp_path):
    data = write_curated(tmp_path / "curated.jsonl")
    cfg = {**FAST, "epochs": 1, "checkpoint_every": 0}
    a = _adapter_tensors(train_lora(data, tiny, tmp_path / "g", LoraTrainConfig(**cfg)))
    b = _adapter_tensors(train_lora(data, tiny, tmp_path / "u", LoraTrainConfig(**cfg, weighting="uniform")))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_bad_curated_rows_name_line_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"id": "a", "prompt": "x", "response": "y", "source": "s", "weight": 1}) + "\n"
                 + json.dumps({"id": "b", "prompt": "x", "response": "y", "source": "s", "weight": -1}) + "\n")
    with pytest.raises(InputError) as e:
        read_curated(p)
    assert e.value.row == 2 and e.value.field == "weight"
    p.write_text('{"id": "a", "prompt": "x"}\n')
    with pytest.raises(InputError, match="row 1, field 'response'"):
        read_curated(p)
    with pytest.raises(ValueError, match="weighting must be one of given, uniform; got 'softmax'"):
        LoraTrainConfig(weighting="softmax")


def test_precision_and_device_options(tiny, tmp_path):
    """bf16 autocast is the CUDA default; here it runs on the CPU (same code path, no GPU needed)."""
    with pytest.raises(ValueError, match="precision"):
        LoraTrainConfig(precision="fp16")
    base = LoraTrainConfig(**FAST)
    # where it runs does not change what it computes; the precision does
    assert LoraTrainConfig(**{**FAST, "device": "cpu"}).result_hash() == base.result_hash()
    assert LoraTrainConfig(**{**FAST, "precision": "bf16"}).result_hash() != base.result_hash()
    data = write_curated(tmp_path / "curated.jsonl")
    losses = {}
    for prec in ("fp32", "bf16"):
        seen = []
        cfg = LoraTrainConfig(**{**FAST, "epochs": 2, "checkpoint_every": 0, "device": "cpu", "precision": prec})
        out = train_lora(data, tiny, tmp_path / prec, cfg, progress=lambda s, t, l: seen.append(l))
        man = json.loads((out / "manifest.json").read_text())
        assert man["device"] == "cpu" and man["bf16"] == (prec == "bf16")
        losses[prec] = seen
    assert all(math.isfinite(v) for v in losses["bf16"])
    # same data and init: bf16 tracks fp32 closely but not bit-exactly
    assert losses["bf16"] != losses["fp32"]
    assert abs(losses["bf16"][0] - losses["fp32"][0]) < 0.05 * losses["fp32"][0]


class _Payload:
    """Unpickling this creates the file `path`: what a crafted checkpoint could do (issue Hardening 7)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_resume_never_unpickles_a_checkpoint(tiny, tmp_path):
    data = write_curated(tmp_path / "curated.jsonl")
    run, marker = tmp_path / "run", tmp_path / "code-ran"
    ckpt = train_lora(data, tiny, run, LoraTrainConfig(**FAST, max_steps_this_run=1))
    assert ckpt.name == "step-0000001"
    # the trainer state is safetensors + JSON: no file in a format that unpickles
    assert not [p.name for p in ckpt.iterdir() if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".pickle")]
    # a crafted pickle planted where the old code looked is never opened: the run resumes from its
    # own state and ends exactly as an uninterrupted run
    torch.save({"step": 1, "payload": _Payload(marker)}, ckpt / "trainer_state.pt")
    resumed = train_lora(data, tiny, run, LoraTrainConfig(**FAST))
    assert not marker.exists()
    full = train_lora(data, tiny, tmp_path / "full", LoraTrainConfig(**FAST))
    a, b = _adapter_tensors(full), _adapter_tensors(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_with_only_a_pickled_state_is_refused_not_loaded(tiny, tmp_path):
    data = write_curated(tmp_path / "curated.jsonl")
    run, marker = tmp_path / "run", tmp_path / "code-ran"
    ckpt = train_lora(data, tiny, run, LoraTrainConfig(**FAST, max_steps_this_run=1))
    for p in ckpt.iterdir():  # a checkpoint as the old code wrote it, its state crafted
        if p.name.startswith("trainer_state"):
            p.unlink()
    torch.save({"step": 1, "payload": _Payload(marker)}, ckpt / "trainer_state.pt")
    with pytest.raises(SotError, match="trainer_state.pt"):
        train_lora(data, tiny, run, LoraTrainConfig(**FAST))
    assert not marker.exists()


def test_damaged_trainer_state_is_a_clear_error(tiny, tmp_path):
    data = write_curated(tmp_path / "curated.jsonl")
    run = tmp_path / "run"
    ckpt = train_lora(data, tiny, run, LoraTrainConfig(**FAST, max_steps_this_run=1))
    (ckpt / "trainer_state.json").write_text('{"step": ')
    with pytest.raises(SotError, match="trainer_state.json"):
        train_lora(data, tiny, run, LoraTrainConfig(**FAST))
