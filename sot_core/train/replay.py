"""Safety replay: mix trusted refusal rows into a curated training set.

Curation removes harmful rows, but a clean benign fine-tune can still erode some refusals.
Replaying a small share of trusted safe answers to harmful prompts during fine-tuning is the
usual remedy (Bianchi et al. 2024, "Safety-Tuned LLaMAs", arXiv 2309.07875: a few percent of
safety rows restore most refusals); benchmarks/RESULTS.md (section safety_e2e) measures it here.
The rows come from the user's trusted data, the same kind of data SOT's refusal anchor pulls
towards; they are never drawn from evaluation prompts.

The mix is a plain ``curated.jsonl``, so training, caching and lineage treat it like any
curated version: its content hash changes when the replay file or fraction changes.
"""
from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

from sot_core.data.loaders import load_rows
from sot_core.errors import InputError
from sot_core.io import atomic_write_text


def mix_replay(curated: list[dict], replay: list[dict], fraction: float, seed: int = 0) -> list[dict]:
    """Return `curated` plus ``round(fraction * len(curated))`` replay rows, shuffled.

    Replay rows are sampled without replacement while there are enough of them, then cycled.
    Each gets the curated rows' mean weight, so replay neither dominates nor vanishes in a
    weighted loss, and the source ``replay`` so the trainer's manifest shows where it came from.

    Parameters
    ----------
    curated : list of dict
        Rows with ``id, prompt, response, source, weight`` (`sot_core.train.lora.read_curated`).
    replay : list of dict
        Rows with ``id, prompt, response``.
    fraction : float
        Replay rows per curated row, in [0, 1].
    seed : int
        Fixes which replay rows are drawn and the final order.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"replay fraction must be in [0, 1], got {fraction}")
    n = int(round(fraction * len(curated)))
    if n == 0:
        return list(curated)
    if not replay:
        raise ValueError("replay fraction > 0 but the replay set is empty")
    rng = random.Random(seed)
    drawn: list[dict] = []
    while len(drawn) < n:
        drawn += rng.sample(replay, min(len(replay), n - len(drawn)))
    weight = sum(r["weight"] for r in curated) / len(curated)
    mixed = list(curated) + [
        {"id": f"replay-{k}-{r['id']}", "prompt": r["prompt"], "response": r["response"], "source": "replay",
         "weight": weight}
        for k, r in enumerate(drawn)
    ]
    rng.shuffle(mixed)
    return mixed


def write_replay_mix(curated_path: str | Path, replay_path: str | Path, fraction: float, out_path: str | Path,
                     seed: int = 0) -> Path:
    """Write `curated_path` + replay rows from `replay_path` (any format ``load_rows`` reads) to `out_path`."""
    from sot_core.train.lora import read_curated

    curated = read_curated(curated_path)
    replay = load_rows(str(replay_path)).select(["id", "prompt", "response"]).to_pylist()
    if not replay and fraction > 0:
        raise InputError(str(replay_path), "no rows to replay")
    needed = int(round(fraction * len(curated)))
    if needed > len(replay):
        # Cycling is allowed (a small trusted set is better than none) but it is not what was measured:
        # the general pool's 30% dose drew 210 distinct explanatory refusals (benchmarks/RESULTS.md).
        warnings.warn(f"{replay_path}: {len(replay)} replay rows for {needed} replay slots (fraction {fraction:g} of "
                      f"{len(curated)} curated rows); each row repeats about {needed / len(replay):.1f} times. "
                      "Give more distinct refusals or a lower --replay-fraction.", stacklevel=2)
    rows = mix_replay(curated, replay, fraction, seed)
    out = Path(out_path)
    atomic_write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), out)
    return out
