"""The embedding subflow: every input's shards, on the task runner the `runner` option names."""
from __future__ import annotations

from prefect import flow

from sot_prefect.tasks.embedding import embed_datasets, task_runner


@flow(name="embed-shards", log_prints=True)
def embed_shards(home: str, ids: dict[str, str], encoder: str, batch_size: int, shard_rows: int,
                 parallel: bool = False) -> dict:
    """Embed the datasets `ids` ({role: dataset_id}) shard by shard; one summary per role."""
    return embed_datasets(home, ids, encoder, batch_size, shard_rows, parallel)


def embed_on(runner: str, home: str, ids: dict[str, str], encoder: str, batch_size: int, shard_rows: int) -> dict:
    """Embed the shards in the calling flow (``local``), or in the `embed_shards` subflow on a Dask/Ray
    task runner, which starts with the subflow (a local cluster) or connects to a scheduler, and ends with it."""
    chosen = task_runner(runner)
    if chosen is None:  # local: the shard tasks run in the calling flow, one after the other
        return embed_datasets(home, ids, encoder, batch_size, shard_rows, parallel=False)
    return embed_shards.with_options(task_runner=chosen)(home, ids, encoder, batch_size, shard_rows, parallel=True)
