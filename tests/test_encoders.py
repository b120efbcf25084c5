"""The MiniLM encoder (the real offline model) and the encoder registry."""
from __future__ import annotations

import numpy as np
import pytest

from sot_core.encoders import MiniLMEncoder, get_encoder

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
