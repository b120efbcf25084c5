r"""Two encoders side by side, and the pool-centring that a causal LM's states need.

MiniLM sees a row's topic; the aligned model's late-layer states see whether it is harm or a
refusal of harm (AUROC 0.905 harmful vs refusals against MiniLM's 0.527, benchmarks/RESULTS.md,
section aligned_states). Side by side they give the budget's score an AUROC of 0.977 on held-out
general-pool draws, against 0.959 for MiniLM alone (section aligned_budget). The spec is
``minilm+hf:MODEL[:view][@layer]``.

A row is stored as :math:`z = [u_1, \dots, u_k] / \sqrt{k}` with each :math:`u_j` the unit
vector of part j, so :math:`\cos(z, z') = \frac{1}{k} \sum_j \cos(u_j, u'_j)`.

Last-token states of a causal LM share one large direction (every row's cosine to every other is
high), which drowns the differences the budget needs. Two steps take it off:

1. At embedding, the LM's state h of a row is stored as :math:`u = \mathrm{unit}(h - c_0)`, with
   :math:`c_0` the mean state of fixed calibration rows (the bundled demo anchor, 50 GSM8K rows:
   `CALIBRATION_FILE`). A fixed centre keeps every row's vector independent of the others, so
   the store's cache, shards and the nightly flow work unchanged.
2. Before costs and the budget are computed, `pool_centred` replaces each LM block by
   :math:`\mathrm{unit}(u - \bar u)`, :math:`\bar u` the block's mean over the pool being curated
   (no labels; anchor and harmful reference are centred on the same pool mean).

Measured on the general pool, draws 0-9 (benchmarks/RESULTS.md, section aligned_budget): budget
AUROC 0.957 with neither step, 0.976 with step 2 alone, 0.978 with both (raw states centred on
the pool: 0.979); MiniLM alone 0.955.

The layout (dimension of each block, and which are centred) is part of the encoder id, so
`pool_centred` needs only the id that keys the stored vectors.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sot_core.embed.base import Encoder, l2_normalise

PREFIX = "concat.v1"
#: The calibration rows whose mean LM state is taken off every row (step 1), in the demo folder.
CALIBRATION_FILE = "safe_anchor.jsonl"
_LAYOUT = re.compile(r"^concat\.v1\[([0-9c,]+)\]:")


def split_spec(spec: str) -> list[str]:
    """``minilm+hf:/m:pair@29`` -> ["minilm", "hf:/m:pair@29"]; a '+' inside a model path stays."""
    return re.split(r"\+(?=hf:|minilm)", spec)


class CompositeEncoder(Encoder):
    """Rows embedded by each of `parts`, the unit vectors joined and scaled by 1/sqrt(k).

    Parameters
    ----------
    parts : list of Encoder
        At least two; blocks of a `LastTokenEncoder` are marked for pool-centring (`pool_centred`).
    """

    def __init__(self, parts: Sequence[Encoder], demo_dir: str | Path | None = None):
        from sot_core.embed.llm_encoder import LastTokenEncoder

        if len(parts) < 2:
            raise ValueError("a composite encoder joins at least two encoders (e.g. minilm+hf:MODEL:pair@29)")
        super().__init__("pair")
        self.parts = list(parts)
        self.centred = [isinstance(p, LastTokenEncoder) for p in self.parts]
        for p, c in zip(self.parts, self.centred):
            if c and p.representation != "pair":
                raise ValueError(f"the causal LM of a composite encoder uses the pair view, not {p.representation!r}")
        self.dim = sum(p.dim for p in self.parts)
        self.calibration = calibration_rows(demo_dir) if any(self.centred) else None
        digest = calibration_digest(*self.calibration)[:12] if self.calibration else ""
        ids = [f"{p.encoder_id}:centre-{digest}" if c else p.encoder_id for p, c in zip(self.parts, self.centred)]
        layout = ",".join(f"{p.dim}{'c' if c else ''}" for p, c in zip(self.parts, self.centred))
        self.encoder_id = f"{PREFIX}[{layout}]:" + "+".join(ids)
        self._centres: dict[int, np.ndarray] = {}

    def centre(self, j: int) -> np.ndarray:
        """c_0 of part j: its mean raw state over the calibration rows (computed once per instance)."""
        if j not in self._centres:
            prompts, responses = self.calibration
            self._centres[j] = self.parts[j].pair_states(prompts, responses).astype(np.float64).mean(axis=0)
        return self._centres[j]

    @property
    def passes(self) -> int:
        return sum(p.passes for p in self.parts)

    def _embed_texts(self, texts, batch_size, progress):  # pragma: no cover - encode is overridden
        raise NotImplementedError("a composite encoder embeds rows, not plain texts")

    def encode(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        """(n, dim) float32 with unit-norm rows: each part's vectors, joined, / sqrt(k)."""
        blocks = [l2_normalise(p.pair_states(prompts, responses, batch_size, progress) - self.centre(j)) if c
                  else p.encode(prompts, responses, batch_size=batch_size, progress=progress)
                  for j, (p, c) in enumerate(zip(self.parts, self.centred))]
        return (np.concatenate(blocks, axis=1) / np.sqrt(len(blocks))).astype(np.float32)


def calibration_rows(demo_dir: str | Path | None = None) -> tuple[list[str], list[str]]:
    """(prompts, responses) of `CALIBRATION_FILE` in the bundled demo folder, in file order."""
    from sot_core.config import DEMO_DIR
    from sot_core.data.loaders import load_rows

    table = load_rows(str(Path(demo_dir or DEMO_DIR) / CALIBRATION_FILE))
    return table.column("prompt").to_pylist(), table.column("response").to_pylist()


def calibration_digest(prompts: Sequence[str], responses: Sequence[str]) -> str:
    """sha256 of the calibration rows: part of the encoder id, so other rows give another cache key."""
    return hashlib.sha256("\0".join([*prompts, *responses]).encode()).hexdigest()


def blocks(encoder_id: str) -> list[tuple[int, int, bool]] | None:
    """[(start, end, centred)] column ranges of a composite encoder's vectors; None for other encoders."""
    m = _LAYOUT.match(encoder_id)
    if m is None:
        return None
    out, start = [], 0
    for part in m.group(1).split(","):
        dim = int(part.rstrip("c"))
        out.append((start, start + dim, part.endswith("c")))
        start += dim
    return out


def block_weights(layout: list[tuple[int, int, bool]], lm_share: float | None) -> list[float]:
    """Weight of each block in the cosine (they sum to 1): equal (1/k) when `lm_share` is None, else
    `lm_share` split evenly over the centred (LM) blocks and the rest over the others."""
    k, n_lm = len(layout), sum(c for _, _, c in layout)
    if lm_share is None or n_lm in (0, k):
        return [1.0 / k] * k
    return [lm_share / n_lm if c else (1.0 - lm_share) / (k - n_lm) for _, _, c in layout]


def pool_centred(encoder_id: str, pool: np.ndarray, *others: np.ndarray,
                 lm_share: float | None = None) -> tuple[np.ndarray, ...]:
    r"""`pool` and `others` with every centred block of `encoder_id` centred on the pool's mean,
    and the blocks weighted by `lm_share`.

    For block j of k (stored as :math:`u_j/\sqrt{k}`), each row becomes
    :math:`\sqrt{w_j}\,\mathrm{unit}(u_j - \bar u_j)` when the block is centred,
    :math:`\bar u_j` the mean of :math:`u_j` over `pool`, and :math:`\sqrt{w_j}\,u_j` when it is
    not; so :math:`\cos(z, z') = \sum_j w_j \cos(\cdot_j, \cdot'_j)` and rows stay unit-norm (a
    row equal to the mean gets a zero block). The weights :math:`w_j` are `block_weights`: 1/k
    each by default (the stored vectors' own weighting). Arrays of other encoders are returned as
    they are.

    Measured on the general pool with the aligned model at layer 29 (benchmarks/RESULTS.md, section
    aligned_budget, 30 held-out draws): lm_share 0.25 ranks harm better than equal weights (budget
    AUROC 0.980 against 0.977; harmful rows kept when 85% of benign rows are kept: 4.1 / 2.8 / 1.7% of
    those injected at 5 / 10 / 30% contamination, against 5.2 / 4.5 / 3.1%).

    Parameters
    ----------
    encoder_id : str
        The id the vectors were stored under.
    pool : (n, d) array
        The rows being curated: the mean is taken over these.
    *others : (m, d) arrays
        Anchor, harmful reference, refusals...: centred on the same mean.
    lm_share : float in (0, 1), optional
        Share of the cosine given to the centred (causal LM) blocks; None: every block 1/k.

    Returns
    -------
    tuple of float32 arrays, `pool` first, each the shape it came in.
    """
    layout = blocks(encoder_id)
    arrays = (pool, *others)
    if lm_share is not None and not 0 < lm_share < 1:
        raise ValueError(f"lm_share must be in (0, 1), got {lm_share}")
    if layout is None or not any(c for _, _, c in layout):
        return arrays
    if len(pool) == 0:
        raise ValueError("cannot centre on an empty pool")
    scale = np.sqrt(len(layout))
    out = [np.array(a, dtype=np.float32, copy=True) for a in arrays]
    for (start, end, centred), weight in zip(layout, block_weights(layout, lm_share)):
        # stored blocks are unit / sqrt(k): back to unit (x scale), centre, then scale to sqrt(w_j)
        if not centred:
            for a in out:
                a[:, start:end] *= np.sqrt(weight * len(layout))  # exactly 1 for equal weights
            continue
        mean = pool[:, start:end].astype(np.float64).mean(axis=0) * scale
        for a, src in zip(out, arrays):
            a[:, start:end] = l2_normalise(src[:, start:end] * scale - mean) * np.sqrt(weight)
    return tuple(out)
