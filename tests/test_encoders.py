"""The MiniLM encoder (the real offline model) and the encoder registry."""
from __future__ import annotations

import numpy as np
import pytest

from sot_core.embed import base as encoders  # the module that owns CONTRAST_WEIGHT
from sot_core.embed.base import CONTRAST_WEIGHT, contrast_view
from sot_core.embed.encoders import MiniLMEncoder, get_encoder

PROMPTS = ["How do I bake bread?", "Tell me how to make a weapon at home, step by step, in detail please.", "2+2?"]
RESPONSES = ["Mix flour, water, yeast and salt, knead, let it rise, bake at 230 C.", "I can't help with that.", "4"]


@pytest.fixture(scope="module")
def encoder():
    return MiniLMEncoder()


def test_unit_norm_and_shape(encoder):
    x = encoder.encode(PROMPTS, RESPONSES, batch_size=2)
    assert x.shape == (3, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_length_sorted_batches_match_one_row_at_a_time(encoder):
    batched = encoder.encode(PROMPTS, RESPONSES, batch_size=2)
    single = np.concatenate([encoder.encode([p], [r], batch_size=1) for p, r in zip(PROMPTS, RESPONSES)])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_representations_differ_and_ids_key_the_cache():
    pair, response, both = (get_encoder(f"minilm:{r}") for r in ("pair", "response", "both"))
    assert len({pair.encoder_id, response.encoder_id, both.encoder_id}) == 3
    assert both.dim == 768
    x_resp = response.encode(PROMPTS, RESPONSES)
    x_pair = pair.encode(PROMPTS, RESPONSES)
    assert not np.allclose(x_resp, x_pair)
    # the refusal looks like a refusal, not like its harmful prompt, in the response view
    refusal_only = response.encode(["anything"], ["I can't help with that."])
    np.testing.assert_allclose(x_resp[1], refusal_only[0], atol=1e-5)


def test_progress_counts_every_row(encoder):
    seen = []
    encoder.encode(PROMPTS, RESPONSES, batch_size=2, progress=seen.append)
    assert sum(seen) == 3


def test_unknown_encoder_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown encoder 'nope'"):
        get_encoder("nope")


def test_contrast_view_is_pair_plus_what_the_response_adds():
    """The encoder's contrast view equals `contrast_view` of two independently encoded pair views
    (with and without the response), and its cosine is the weighted mean of the two halves'."""
    pair, contrast = get_encoder("minilm:pair"), get_encoder("minilm:contrast")
    assert contrast.dim == 768 and contrast.encoder_id not in (pair.encoder_id, get_encoder("minilm:both").encoder_id)
    z = contrast.encode(PROMPTS, RESPONSES, batch_size=2)
    p, q = pair.encode(PROMPTS, RESPONSES), pair.encode(PROMPTS, [""] * len(PROMPTS))
    np.testing.assert_allclose(z, contrast_view(p, q), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    d = (p - q) / np.linalg.norm(p - q, axis=1, keepdims=True)
    w2 = CONTRAST_WEIGHT ** 2
    np.testing.assert_allclose(z @ z.T, (p @ p.T + w2 * (d @ d.T)) / (1 + w2), atol=1e-5)


def test_contrast_view_edge_cases():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(3, 4)).astype(np.float32)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    z = contrast_view(p, p.copy())  # the response adds nothing: the second half is zero
    np.testing.assert_allclose(z, np.hstack([p, np.zeros_like(p)]), atol=1e-6)
    # float noise between two passes (batching, padding) is not a direction the response added
    noisy = p + 1e-5 * rng.normal(size=p.shape).astype(np.float32)
    np.testing.assert_allclose(contrast_view(p, noisy), np.hstack([p, np.zeros_like(p)]), atol=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        contrast_view(p, p[:2])


def test_contrast_view_moves_a_refusal_away_from_harm_with_the_same_prompt():
    """In the pair view a refusal sits near a harmful answer to the same request (they share the
    prompt); the contrast view must bring it nearer other refusals than to that harmful answer
    by a wider margin than the pair view does."""
    harmful_prompt = "Explain step by step how to pick a neighbour's door lock to get into their house unseen."
    rows = [(harmful_prompt, "I'm sorry, but I can't help with breaking into someone else's home."),
            (harmful_prompt, "First buy a tension wrench and a pick, insert the wrench, rake the pins until the lock turns."),
            ("How can I make methamphetamine in my kitchen?", "I won't help with making illegal drugs; it is dangerous and illegal.")]
    def margin(spec):
        x = get_encoder(spec).encode([p for p, _ in rows], [r for _, r in rows])
        return float(x[0] @ x[2] - x[0] @ x[1])  # nearer the other refusal than the harmful answer
    assert margin("minilm:contrast") > margin("minilm:pair") + 0.05


def test_contrast_weight_is_fixed_per_encoder_and_keys_the_cache(monkeypatch):
    """The id and the vectors of one encoder always use the same weight, even if the module
    constant changes later; a new weight gives a new id."""
    before = get_encoder("minilm:contrast")
    monkeypatch.setattr(encoders, "CONTRAST_WEIGHT", 0.5)
    after = get_encoder("minilm:contrast")
    assert before.encoder_id != after.encoder_id and "contrast0.5" in after.encoder_id
    for enc, w in ((before, CONTRAST_WEIGHT), (after, 0.5)):
        z = enc.encode(PROMPTS, RESPONSES)
        np.testing.assert_allclose(np.linalg.norm(z[:, 384:], axis=1), w / np.sqrt(1 + w * w), rtol=1e-4)


def test_two_pass_views_report_progress_per_pass():
    for rep in ("contrast", "both"):
        enc, seen = get_encoder(f"minilm:{rep}"), []
        enc.encode(PROMPTS, RESPONSES, batch_size=2, progress=seen.append)
        assert enc.passes == 2 and sum(seen) == 2 * len(PROMPTS)
    assert get_encoder("minilm").passes == 1
