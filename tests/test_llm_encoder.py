"""LastTokenEncoder on a tiny random Llama: shapes, unit norm, exact last-token gathering under
padding, and cache ids that change with layer / representation / model. A few seconds."""
from __future__ import annotations

import numpy as np
import pytest
import torch


from sot_core.embed.encoders import get_encoder
from sot_core.embed.llm_encoder import LastTokenEncoder, _fit

WORDS = "what is the capital of france paris tell me a joke no i can not help how to bake bread mix flour".split()
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <eot> {% endfor %}"
                 "{% if add_generation_prompt %}<assistant> {% endif %}")
ROWS = [("what is the capital of france", "paris"),
        ("tell me a joke", "no i can not help"),
        ("how to bake bread " * 6, "mix flour " * 5),
        ("a", ""),
        ("what is the capital of france", "paris paris")]


def make_tiny_model(path, hidden=32, seed=0):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>", "<eot>", "<user>", "<assistant>", "<system>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS)))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eot>")
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                      bos_token_id=2, eos_token_id=3)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("enc") / "model")


@pytest.mark.parametrize("representation,dim", [("pair", 32), ("response", 32), ("both", 64), ("contrast", 64)])
def test_shapes_and_unit_norm(tiny, representation, dim):
    enc = LastTokenEncoder(tiny, representation=representation)
    x = enc.encode([p for p, _ in ROWS], [r for _, r in ROWS], batch_size=2)
    assert x.shape == (len(ROWS), dim) == (len(ROWS), enc.dim) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("layer", ["final", "middle", 0])
def test_batched_equals_unbatched(tiny, layer):
    enc = LastTokenEncoder(tiny, layer=layer)
    ids = enc._pair_ids([p for p, _ in ROWS], [r for _, r in ROWS])
    assert len({len(i) for i in ids}) > 2  # rows of different lengths: padding really happens
    batched = enc.embed_ids(ids, batch_size=len(ids))
    for i, row in enumerate(ids):
        single = enc.embed_ids([row], batch_size=1)[0]
        np.testing.assert_allclose(batched[i], single, rtol=1e-4, atol=1e-5)
    # and it is the state at the row's own last token: compare with a direct forward pass
    model, _ = enc._load()
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([ids[2]]), output_hidden_states=True).hidden_states[enc.layer]
    np.testing.assert_allclose(batched[2], hs[0, -1].numpy(), rtol=1e-4, atol=1e-5)


def test_all_layer_states_match_each_single_layer_encoder(tiny):
    """One forward pass for every layer gives what a single-layer encoder gives at that layer."""
    prompts, responses = [p for p, _ in ROWS], [r for _, r in ROWS]
    states = LastTokenEncoder(tiny).all_layer_states(prompts, responses, batch_size=3)
    assert states.shape == (len(ROWS), 3, 32)  # tiny model: 2 layers + embeddings, hidden 32
    for layer in range(3):
        enc = LastTokenEncoder(tiny, layer=layer)
        np.testing.assert_allclose(states[:, layer], enc.embed_ids(enc._pair_ids(prompts, responses)), rtol=1e-4, atol=1e-5)
    assert not np.allclose(states[:, 1], states[:, 2])  # the layers really differ


def test_last_token_is_end_of_turn(tiny):
    enc = LastTokenEncoder(tiny)
    _, tok = enc._load()
    for ids in enc._pair_ids(["tell me a joke"], ["no"]):
        assert tok.convert_ids_to_tokens(ids[-1]) == "<eot>"


def test_fit_keeps_prompt_and_response_tails():
    p, r = list(range(100)), list(range(100, 150))
    out = _fit(p, r, 40)
    assert len(out) == 40 and out[-1] == 149 and out[:20] == list(range(80, 100))
    assert _fit([1, 2], [3], 10) == [1, 2, 3]


def test_encoder_id_changes_with_layer_representation_and_model(tiny, tmp_path):
    a = LastTokenEncoder(tiny)
    assert a.encoder_id != LastTokenEncoder(tiny, layer="middle").encoder_id
    assert a.encoder_id != LastTokenEncoder(tiny, representation="response").encoder_id
    assert a.encoder_id != LastTokenEncoder(tiny, representation="contrast").encoder_id
    assert a.encoder_id == LastTokenEncoder(tiny).encoder_id  # stable across instances
    other = make_tiny_model(tmp_path / "model", hidden=48)  # same folder name, other weights
    assert LastTokenEncoder(other).encoder_id != a.encoder_id
    assert "L2" in a.encoder_id and "L1" in LastTokenEncoder(tiny, layer="middle").encoder_id
    with pytest.raises(ValueError):
        LastTokenEncoder(tiny, layer=7)


def test_get_encoder_hf_spec(tiny):
    enc = get_encoder(f"hf:{tiny}:both")
    assert isinstance(enc, LastTokenEncoder) and enc.representation == "both" and enc.dim == 64
    done = []
    enc.encode(["tell me a joke"] * 3, ["no"] * 3, batch_size=2, progress=done.append)
    assert sum(done) == 6  # both views, 3 rows each


def test_get_encoder_hf_spec_layer_suffix(tiny):
    assert get_encoder(f"hf:{tiny}:response@middle").layer == LastTokenEncoder(tiny, layer="middle").layer == 1
    assert get_encoder(f"hf:{tiny}@1").layer == 1 and get_encoder(f"hf:{tiny}@1").representation == "pair"
    assert get_encoder(f"hf:{tiny}:pair@final").encoder_id == LastTokenEncoder(tiny).encoder_id
    with pytest.raises(ValueError, match="layer"):
        get_encoder(f"hf:{tiny}@9")


def test_contrast_second_half_is_what_the_answer_adds_to_the_prompt_state(tiny):
    """The contrast view is `contrast_view` of the state after the whole pair and the state at
    the assistant header of the prompt alone."""
    from sot_core.embed.base import contrast_view, l2_normalise

    enc = LastTokenEncoder(tiny, representation="contrast")
    prompts, responses = [p for p, _ in ROWS], [r for _, r in ROWS]
    z = enc.encode(prompts, responses, batch_size=2)
    pair = l2_normalise(enc.embed_ids(enc._pair_ids(prompts, responses)))
    prompt = l2_normalise(enc.embed_ids(enc._pair_ids(prompts, [""] * len(prompts))))
    np.testing.assert_allclose(z, contrast_view(pair, prompt, enc.contrast_weight), atol=1e-5)
    assert not np.allclose(z[:, 32:], 0)  # the answers did move the state
    # "the prompt alone" is the pair's own prefix, up to the assistant header: d compares the state
    # before the answer with the state after it, nothing else
    for r, with_answer, alone in zip(responses, enc._pair_ids(prompts, responses), enc._pair_ids(prompts, [""] * len(prompts))):
        assert with_answer[: len(alone)] == alone and (len(alone) < len(with_answer)) == bool(r)
    assert np.allclose(z[responses.index(""), 32:], 0)  # an empty answer adds nothing
