"""What every encoder shares: the representations of a row, the contrast view, the `Encoder` base.

An encoder turns (prompt, response) rows into L2-normalised float32 vectors and is identified by
`encoder_id`, which keys the embedding cache in the store together with each row's content hash:
change the model or the representation and the id changes, so stale vectors are never reused.
Concrete encoders live in `sot_core.embed.encoders` (MiniLM, and the registry `get_encoder`) and
`sot_core.embed.llm_encoder` (last-token states of a causal LM).
"""
from __future__ import annotations

import abc
import typing
from typing import Callable, Sequence

import numpy as np

from sot_core.config import View

# Which text of a row is embedded. "pair" embeds prompt and response together (the paper's
# choice); "response" embeds the answer alone, so a refusal to a harmful prompt looks like a
# refusal, not like the harmful prompt; "both" concatenates the two views (dim doubles);
# "contrast" concatenates the pair view with what the response adds to the prompt (see
# `contrast_view`; dim doubles).
REPRESENTATIONS: tuple[str, ...] = typing.get_args(View)

#: Weight of the "what the response adds" half of the contrast view (how it was chosen, and on
#: which data: benchmarks/RESULTS.md, section general_pool_seeds).
CONTRAST_WEIGHT = 0.7
# A residual |p - q| below this is float noise (batching, padding), not something the response
# said; real residuals are orders of magnitude larger.
_CONTRAST_MIN_RESIDUAL = 1e-3


def pair_text(prompt: str, response: str) -> str:
    """The single string a sentence encoder sees for a (prompt, response) pair."""
    return f"User: {prompt}\nAssistant: {response}" if response else f"User: {prompt}"


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of `x` scaled to unit L2 norm (all-zero rows stay zero), as float32."""
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
