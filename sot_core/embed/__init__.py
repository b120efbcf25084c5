"""Embedding: (prompt, response) rows to L2-normalised float32 vectors, keyed by an encoder id.

`get_encoder` builds an encoder from a spec (``minilm[:view]``, ``hf:MODEL[:view][@layer]``);
views are `REPRESENTATIONS` (pair, response, both, contrast; `contrast_view` builds the last).
Every encoder subclasses `Encoder`.

Modules: `base` (shared base and views), `encoders` (MiniLM and the registry), `exported` (the
export of MiniLM cached in the store, and the loop the exported backends share), `onnx_backend`
(MiniLM on ONNX Runtime, fp32 and int8), `openvino_backend` (MiniLM on OpenVINO, static int8),
`shards` (a dataset embedded shard by shard, resumable), `llm_encoder` (last-token hidden states
of a causal LM).
Scaling out (backends, shards, Dask/Ray runners, GPUs): docs/scaling.md.
"""
from sot_core.embed.base import (
    CONTRAST_WEIGHT, REPRESENTATIONS, Encoder, contrast_view, l2_normalise, pair_text, representation_id,
)
from sot_core.embed.encoders import ENCODERS, MiniLMEncoder, get_encoder
from sot_core.embed.llm_encoder import LastTokenEncoder

__all__ = ["CONTRAST_WEIGHT", "ENCODERS", "Encoder", "LastTokenEncoder", "MiniLMEncoder", "REPRESENTATIONS",
           "contrast_view", "get_encoder", "l2_normalise", "pair_text", "representation_id"]
