"""The aligned model's view of the general pool's rows (shared by `aligned_states` and `aligned_budget`):
the rows, their prompts as ingestion stores them, and every layer's last-token states plus the
refusal likelihood of each prompt, computed once per model and cached under the benchmark store.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.common import BENCH_HOME, candidate_rows, pyrit_harmful_reference
from sot_core.data.loaders import canonical_prompt
from sot_core.embed.composite import calibration_rows, pool_centred

OPENERS = ("I'm sorry, but", "As an AI")
N_REFUSALS = 400


def benchmark_rows(shared: Path) -> dict[str, list[dict]]:
    rows = candidate_rows(shared)
    rows["refusal"] = rows["refusal"][:N_REFUSALS]
    rows["reference"] = [{"instruction": r["prompt"], "input": "", "output": r["response"]}
                         for r in pyrit_harmful_reference(shared)]
    return rows


def row_prompt(row: dict) -> str:
    """The prompt as ingestion stores it (Alpaca template unwrapped), so the LLM reads what MiniLM reads."""
    return canonical_prompt(row["instruction"], row.get("input") or "")


def opener_logprob(encoder, prompts: list[str], opener: str, batch_size: int = 16) -> np.ndarray:
    """Teacher-forced log p(opener | chat-templated prompt) for each prompt (prompt cut to its last 200 tokens)."""
    import torch

    from sot_core.models.llm import encode_pair

    model, tok = encoder._load()
    seqs = []
    for p in prompts:
        ids, n_prompt = encode_pair(tok, p, opener, None)
        ids = ids[:n_prompt][-200:] + ids[n_prompt:-1]  # drop the end-of-turn token after the opener
        seqs.append((ids, min(n_prompt, 200)))  # start: the opener's first token
    out = np.empty(len(seqs))
    head = model.get_output_embeddings()
    for s in range(0, len(seqs), batch_size):
        batch = seqs[s : s + batch_size]
        n = max(len(q) for q, _ in batch)
        x = torch.full((len(batch), n), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(x)
        for j, (q, _) in enumerate(batch):
            x[j, : len(q)], mask[j, : len(q)] = torch.tensor(q), 1
        with torch.no_grad():
            final = model(input_ids=x, attention_mask=mask, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
            for j, (q, start) in enumerate(batch):
                logp = head(final[j, start - 1 : len(q) - 1]).float().log_softmax(-1)  # predicts tokens start..end
                out[s + j] = float(logp[torch.arange(len(q) - start), torch.tensor(q[start:])].sum())
    return out


def model_states(model: str, rows: dict[str, list[dict]]) -> dict[str, np.ndarray]:
    """{role}: (n, layers, dim) states and {role}_lp: (n, openers) log-likelihoods, cached per model."""
    from sot_core.embed.llm_encoder import LastTokenEncoder
    from sot_core.models.llm import model_fingerprint

    cache = BENCH_HOME / "aligned_states" / f"{Path(model).name}-{model_fingerprint(model)}-v2.npz"
    if cache.exists():
        with np.load(cache) as z:  # plain arrays only (allow_pickle stays off)
            return dict(z)
    enc, out, t0 = LastTokenEncoder(model, max_length=256), {}, time.time()
    for role, rs in rows.items():
        out[role] = enc.all_layer_states([row_prompt(r) for r in rs], [r["output"] for r in rs])
        out[f"{role}_lp"] = np.stack([opener_logprob(enc, [row_prompt(r) for r in rs], o) for o in OPENERS], 1)
        print(f"{role}: {len(rs)} rows, {time.time() - t0:.0f} s", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(cache)
    return out


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def rows_and_views(model: str, shared: Path) -> tuple[dict, dict, dict]:
    """(rows, the aligned model's states, MiniLM's vectors) of every role, each computed once and cached."""
    from benchmarks.common import bench_store, embed_file, write_jsonl

    rows = benchmark_rows(shared)
    states = model_states(model, rows)
    work = BENCH_HOME / "aligned_states" / "rows"
    minilm = {role: embed_file(bench_store(), write_jsonl(rs, work / f"{role}.jsonl"), "minilm") for role, rs in rows.items()}
    return rows, states, minilm


# MiniLM's width: the first block of every [MiniLM | aligned state] row of the views below.
MINILM_DIM = 384


def composite_centre(model: str, layer: int = 29) -> np.ndarray:
    """c0 of ``--encoder minilm+hf:MODEL:pair@LAYER``: the mean state of the bundled calibration rows."""
    from sot_core.embed.llm_encoder import LastTokenEncoder

    lm = LastTokenEncoder(model, layer=layer, max_length=256)
    return lm.pair_states(*calibration_rows()).astype(np.float64).mean(axis=0)


def make_view(name: str, centre_on: str = "pool", c0: np.ndarray | None = None, lm_share: float = 0.5):
    """Map raw [MiniLM | aligned] rows of one draw to the features the budget sees.

    `lm_share` (``shipped`` only) weighs the two blocks as ``--lm-share`` does in the product
    (`pool_centred`): the cosine is (1 - lm_share) x MiniLM's + lm_share x the LM's; 0.5 is equal.
    """
    def view(pool, anchor, ref):
        if name == "shipped":
            stored = lambda x: np.hstack([x[:, :MINILM_DIM], unit(x[:, MINILM_DIM:] - c0)]) / np.sqrt(2)  # noqa: E731
            layout = f"concat.v1[{MINILM_DIM},{pool.shape[1] - MINILM_DIM}c]:benchmark"
            return pool_centred(layout, *(stored(x).astype(np.float32) for x in (pool, anchor, ref)),
                                lm_share=None if lm_share == 0.5 else lm_share)
        if name == "both_unit":
            return make_view("both", centre_on)(*(np.hstack([x[:, :MINILM_DIM], unit(x[:, MINILM_DIM:])])
                                                  for x in (pool, anchor, ref)))
        centre = {"pool": pool, "anchor": anchor, "reference": np.vstack([anchor, ref])}.get(centre_on)
        centre = centre[:, MINILM_DIM:].mean(0) if centre is not None else 0.0  # label-free: no pool labels used
        parts = lambda x: (x[:, :MINILM_DIM], unit(x[:, MINILM_DIM:] - centre))  # noqa: E731
        if name == "minilm":
            f = lambda x: parts(x)[0]  # noqa: E731
        elif name == "aligned":
            f = lambda x: parts(x)[1]  # noqa: E731
        else:
            f = lambda x: np.hstack(parts(x)) / np.sqrt(2.0)  # noqa: E731
        return tuple(np.ascontiguousarray(f(x), dtype=np.float32) for x in (pool, anchor, ref))
    return view
