"""Embedding a dataset in shards: the plan, one shard, and the whole dataset in one process.

A dataset's distinct content hashes, in row order, are cut into shards of `shard_rows` rows
(whole encoder batches). A shard is named by `shard_key`, a digest of the encoder id and its
rows' content hashes, so the same content and encoder give the same shards in every run, on every
runner and worker. Embedding a shard embeds only its rows the store does not hold yet for the
encoder (the store's catalog, keyed by (content hash, encoder id), is what keeps any row from
being embedded twice) and stores them as one Parquet file, registered in the catalog as soon as
it is written (`Store.put_embeddings`: renamed into place under the catalog lock). A run killed
at any moment keeps every finished shard and loses at most the shard it was embedding.

The Prefect layer (``sot_prefect.tasks.embedding``) runs one task per shard; `embed_dataset` is
the same loop without Prefect (library use, benchmarks).
"""
from __future__ import annotations

import os
import time
from typing import Callable

from sot_core.data.store import Store
from sot_core.embed.base import Encoder
from sot_core.failpoints import failpoint
from sot_core.io import digest

#: Default rows per shard (rounded down to whole encoder batches): the most embedding work a
#: killed run loses. ``SOT_EMBED_SHARD_ROWS`` overrides the configured value (a test hook: the
#: fault-injection tests use shards of 16 rows).
SHARD_ROWS = 8192


def shard_rows(batch_size: int, rows: int | None = None) -> int:
    """Rows per shard: `rows` (default `SHARD_ROWS`; ``$SOT_EMBED_SHARD_ROWS`` wins), in whole batches,
    so a resumed run embeds the same batches."""
    rows = int(os.environ.get("SOT_EMBED_SHARD_ROWS") or rows or SHARD_ROWS)
    return max(batch_size, rows - rows % batch_size)


def shard_key(encoder_id: str, hashes: list[str]) -> str:
    """Content key of a shard: sha256 of the encoder id and the rows' content hashes (24 hex digits)."""
    return digest(encoder_id, "\n", "\n".join(hashes), n=24)


def distinct_rows(store: Store, dataset_id: str) -> tuple[list[str], list[str], list[str]]:
    """(content hashes, prompts, responses) of the dataset's distinct rows, first occurrence order."""
    rows = store.get_rows(dataset_id)
    seen: set[str] = set()
    hashes, prompts, responses = [], [], []
    for h, p, r in zip(rows.column("content_hash").to_pylist(), rows.column("prompt").to_pylist(),
                       rows.column("response").to_pylist()):
        if h not in seen:
            seen.add(h)
            hashes.append(h), prompts.append(p), responses.append(r)
    return hashes, prompts, responses


def plan_shards(store: Store, dataset_id: str, encoder_id: str, rows_per_shard: int) -> dict:
    """The dataset's shards: ``{"n_rows", "n_distinct", "shards": [{"index", "lo", "hi", "key"}]}``
    (``lo:hi`` slices the distinct rows)."""
    hashes, _, _ = distinct_rows(store, dataset_id)
    shards = [{"index": i, "lo": lo, "hi": min(lo + rows_per_shard, len(hashes)),
               "key": shard_key(encoder_id, hashes[lo:lo + rows_per_shard])}
              for i, lo in enumerate(range(0, len(hashes), rows_per_shard))]
    return {"n_rows": store.get_rows(dataset_id).num_rows, "n_distinct": len(hashes), "shards": shards}


def shard_done(store: Store, dataset_id: str, encoder_id: str, lo: int, hi: int) -> bool:
    """Whether the store holds every row of the shard for this encoder."""
    hashes, _, _ = distinct_rows(store, dataset_id)
    return not store.missing_hashes(hashes[lo:hi], encoder_id)


def embed_rows(store: Store, encoder: Encoder, hashes: list[str], prompts: list[str], responses: list[str],
               batch_size: int, progress: Callable[[int], None] | None = None) -> int:
    """Embed the given rows the store lacks, store them as one shard; returns how many were embedded."""
    missing = set(store.missing_hashes(hashes, encoder.encoder_id))
    if not missing:
        return 0
    keep = [i for i, h in enumerate(hashes) if h in missing]
    vectors = encoder.encode([prompts[i] for i in keep], [responses[i] for i in keep], batch_size=batch_size,
                             progress=progress)
    store.put_embeddings(encoder.encoder_id, [hashes[i] for i in keep], vectors)
    failpoint("embed.after_shard")
    return len(keep)


def prepare(store: Store, encoder: Encoder) -> None:
    """Refuse a dimension clash with the store before any work; cache ONNX exports in the store."""
    store.check_encoder(encoder.encoder_id, encoder.dim)
    if hasattr(encoder, "attach_store"):
        encoder.attach_store(store.home)


def embed_shard(store: Store, encoder: Encoder, dataset_id: str, lo: int, hi: int, batch_size: int) -> dict:
    """Embed one shard (rows ``lo:hi`` of the distinct rows): ``{"n_rows", "n_embedded", "seconds"}``."""
    start = time.perf_counter()
    prepare(store, encoder)
    hashes, prompts, responses = distinct_rows(store, dataset_id)
    n = embed_rows(store, encoder, hashes[lo:hi], prompts[lo:hi], responses[lo:hi], batch_size)
    return {"n_rows": hi - lo, "n_embedded": n, "seconds": time.perf_counter() - start}


def embed_dataset(store: Store, encoder: Encoder, dataset_id: str, batch_size: int = 64, rows: int | None = None,
                  show_progress: bool = True) -> int:
    """Embed every shard of a dataset in this process; returns the rows embedded."""
    prepare(store, encoder)
    hashes, prompts, responses = distinct_rows(store, dataset_id)
    missing = store.missing_hashes(hashes, encoder.encoder_id)
    if not missing:
        return 0
    from tqdm.auto import tqdm

    step, done = shard_rows(batch_size, rows), 0
    desc = f"embed {dataset_id}" + (f" ({encoder.passes} passes)" if encoder.passes > 1 else "")
    with tqdm(total=len(missing) * encoder.passes, desc=desc, unit="row", disable=not show_progress) as bar:
        for lo in range(0, len(hashes), step):
            done += embed_rows(store, encoder, hashes[lo:lo + step], prompts[lo:lo + step],
                               responses[lo:lo + step], batch_size, bar.update)
    return done
