"""Last-token hidden states of a causal LM as row embeddings (the SOT paper's representation).

A row (prompt, response) is rendered with the model's chat template exactly as in training
(`sot_core.models.llm.encode_pair`: templated prompt + response + end-of-turn token) and the hidden
state at the final token is taken. That token is the end-of-turn marker, the position where
the model has read the whole exchange and decides what comes next, which is why it is the
usual choice for "is this exchange harmful" probes.

Layer choice: ``layer="final"`` (default) is the last decoder layer after the final norm, the
paper's choice and the only one that needs no tuning; ``"middle"`` (``num_layers // 2``) or an
int index into ``hidden_states`` (0 = embeddings) are available because refusal-related
directions are often clearest mid-network. Which layer (and which model) separates harmful rows
best depends on the data: measure before switching.

Batching uses right padding and gathers each row's last real token, so each row's vector equals
an unbatched run of that row (positions are unchanged and causal attention never sees the
padding). Vectors are L2-normalised; no centring is done here (costs are cosine).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sot_core.embed.base import Encoder, contrast_view, l2_normalise, representation_id
from sot_core.errors import InputError
from sot_core.models.llm import check_model_reference, encode_pair, hub_offline, model_fingerprint, one_line


def _fit(p_ids: list[int], r_ids: list[int], max_length: int) -> list[int]:
    """Cut a too-long pair keeping the prompt's tail and the response's tail (with end-of-turn)."""
    if len(p_ids) + len(r_ids) <= max_length:
        return p_ids + r_ids
    r_keep = min(len(r_ids), max(max_length // 2, max_length - len(p_ids)))
    p_keep = max_length - r_keep
    return (p_ids[len(p_ids) - p_keep :] if p_keep else []) + r_ids[len(r_ids) - r_keep :]


class LastTokenEncoder(Encoder):
    """Embed rows by the last-token hidden state of a (frozen) causal LM.

    Parameters
    ----------
    path : str
        Local model folder, ``smollm2``, or a hub id already in the local HF cache (`InputError`
        otherwise; a path that does not exist fails without any network access).
    representation : {"pair", "response", "both", "contrast"}
        "pair": user prompt + response; "response": the response under an empty user turn;
        "both": the two normalised vectors concatenated; "contrast": the pair view joined with
        what the response adds to the prompt alone (`sot_core.embed.base.contrast_view`).
    layer : "final", "middle" or int
        Index into ``hidden_states`` (0 = embeddings, ``num_hidden_layers`` = final).
    max_length : int
        Token cap per row (long rows keep the end of prompt and of response).
    num_threads : int, optional
        torch intra-op threads for encoding.
    """

    def __init__(self, path: str, representation: str = "pair", layer: str | int = "final", max_length: int = 256,
                 num_threads: int | None = None):
        super().__init__(representation)
        from transformers import AutoConfig

        self.path = check_model_reference(path)
        try:
            with hub_offline():
                cfg = AutoConfig.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as exc:
            if Path(self.path).is_dir():  # a model folder whose config does not load
                raise InputError(self.path, f"cannot read the model's config: {one_line(exc)}") from None
            raise InputError(self.path, "not a model folder, and not a model in the local Hugging Face cache "
                             "(nothing is downloaded: fetch it where there is network, or give a model folder)") from None
        n_layers = cfg.num_hidden_layers
        if layer == "final":
            self.layer = n_layers
        elif layer == "middle":
            self.layer = n_layers // 2
        elif isinstance(layer, int) and -n_layers - 1 <= layer <= n_layers:
            self.layer = layer % (n_layers + 1)
        else:
            raise ValueError(f"layer must be 'final', 'middle' or an int in [0, {n_layers}], got {layer!r}")
        self.max_length, self.num_threads = max_length, num_threads
        self.base_dim = cfg.hidden_size
        self.dim = self.base_dim * (2 if representation in ("both", "contrast") else 1)
        name = Path(self.path).name or self.path.replace("/", "_")
        self.encoder_id = (f"hf-lasttoken:{name}:{model_fingerprint(self.path)}:L{self.layer}:"
                           f"{representation_id(representation, self.contrast_weight)}"
                           f":max{max_length}:v1")
        self._model = self._tok = None

    def _load(self):
        if self._model is None:
            from sot_core.models.device import resolve_device
            from sot_core.models.llm import load_causal_lm

            # fp32 on a GPU too: the cached embeddings must not depend on where they were made
            self._model, self._tok = load_causal_lm(self.path, padding_side="right")
            self._model.to(resolve_device("auto"))
        return self._model, self._tok

    def _pair_ids(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        _, tok = self._load()
        out = []
        for p, r in zip(prompts, responses):
            ids, n_prompt = encode_pair(tok, p, r, None)
            out.append(_fit(ids[:n_prompt], ids[n_prompt:], self.max_length))
        return out

    def embed_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 16,
                  progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Raw (unnormalised) last-token states of token-id lists, shape (n, hidden_size)."""
        return self._last_token_states(ids, [self.layer], batch_size, progress)[:, 0]

    def pair_states(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 16,
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Raw (unnormalised) last-token states of the pair view at `self.layer`, shape (n, hidden_size)."""
        return self.embed_ids(self._pair_ids(prompts, responses), batch_size, progress)

    def all_layer_states(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 16,
                         progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Raw last-token states of the pair view at every layer, shape (n, num_layers + 1, hidden_size),
        from one forward pass per batch: for choosing a layer (`benchmarks.aligned_states`).
        ``[:, self.layer]`` equals `embed_ids` on the same rows."""
        ids = self._pair_ids(prompts, responses)
        model, _ = self._load()
        return self._last_token_states(ids, list(range(model.config.num_hidden_layers + 1)), batch_size, progress)

    def _last_token_states(self, ids, layers: list[int], batch_size: int, progress) -> np.ndarray:
        import torch

        model, tok = self._load()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        out = np.empty((len(ids), len(layers), self.base_dim), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths: less padding
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            n = max(len(ids[i]) for i in idx)
            x = torch.full((len(idx), n), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(idx), n), dtype=torch.long)
            for j, i in enumerate(idx):
                x[j, : len(ids[i])] = torch.tensor(list(ids[i]), dtype=torch.long)
                mask[j, : len(ids[i])] = 1
            x, mask = x.to(model.device), mask.to(model.device)
            with torch.no_grad():
                hidden = model(input_ids=x, attention_mask=mask, output_hidden_states=True).hidden_states
            rows, last = torch.arange(len(idx), device=model.device), mask.sum(1) - 1
            out[idx] = torch.stack([hidden[k][rows, last] for k in layers], 1).float().cpu().numpy()
            if progress is not None:
                progress(len(idx))
        return out

    def _embed_texts(self, texts, batch_size, progress):
        """Plain strings (no chat template), for callers that already formatted their text."""
        _, tok = self._load()
        ids = [tok(t, add_special_tokens=True)["input_ids"][-self.max_length :] for t in texts]
        return self.embed_ids(ids, batch_size, progress)

    def encode(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 16,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed rows under the chat template. Returns (n, dim) float32 with unit-norm rows."""
        views = []
        if self.representation == "contrast":
            pair = l2_normalise(self.embed_ids(self._pair_ids(prompts, responses), batch_size, progress))
            # the prompt alone ends at the assistant header: d is what the answer did to the state
            prompt = l2_normalise(self.embed_ids(self._pair_ids(prompts, [""] * len(prompts)), batch_size, progress))
            return contrast_view(pair, prompt, self.contrast_weight)
        if self.representation in ("pair", "both"):
            views.append(l2_normalise(self.embed_ids(self._pair_ids(prompts, responses), batch_size, progress)))
        if self.representation in ("response", "both"):
            views.append(l2_normalise(self.embed_ids(self._pair_ids([""] * len(responses), responses), batch_size, progress)))
        return l2_normalise(np.concatenate(views, axis=1))
