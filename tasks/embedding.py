"""Sharded embedding as Prefect tasks, and the task runners that spread shards over workers.

`embed_datasets` plans each dataset's shards (`sot_core.embed.shards`) and runs one ``embed-shard``
task per shard: locally one after the other, or on a Dask cluster or Ray (`task_runner`), where
shards run in parallel on the workers. Each shard task

- is keyed by its content (`shard_key`: the encoder id and its rows' content hashes) together
  with the store's id and location: when the store already holds all its rows the key is its
  Prefect cache key (the run shows it as Cached); when rows are missing it runs, so a shard
  whose vectors the store lost or dropped is embedded again, never served from a stale cache;
- embeds only the rows the store lacks, writes them as one Parquet file renamed into place and
  catalogued at once, so a killed run keeps every finished shard;
- is retried on transient errors (not on bad input or store refusals);
- logs its progress (rows, seconds, rows/s) through `get_run_logger`, so it is in the flow
  run's logs in the UI, whichever worker ran it.

Every worker must reach the store: a local path on one machine, or a shared file system mounted
at the same path on every worker (NFS, a Kubernetes ReadWriteMany volume); see
docs/scaling.md.
"""
from __future__ import annotations

from pathlib import Path

from prefect import task

from sot_core.config import config_hash
from sot_core.curate import pipeline
from sot_core.data.store import Store
from sot_core.embed import shards
from sot_core.failpoints import failpoint
from sot_prefect.tasks.curation import CACHE_TTL, JSON_RESULTS
from sot_prefect.tasks.ops import log, retry_policy, shared_results


@task(name="plan-embed-shards", **retry_policy())
def plan_embedding(home: str, dataset_id: str, encoder: str, batch_size: int, shard_rows: int) -> dict:
    """The dataset's shards, after refusing a dimension clash with the store (before any work)."""
    store, spec = Store(home), pipeline.cached_encoder(encoder)
    store.check_encoder(spec.encoder_id, spec.dim)
    plan = shards.plan_shards(store, dataset_id, spec.encoder_id, shards.shard_rows(batch_size, shard_rows))
    return {"dataset_id": dataset_id, "encoder_id": spec.encoder_id, **plan}


def shard_cache_key(context, parameters) -> str | None:
    """The shard's content key (+ store id and location) when the store holds all its rows; else
    None: no cache, the task runs and embeds what is missing."""
    home = Path(parameters["home"]).resolve()
    store = Store(home)
    encoder_id = pipeline.cached_encoder(parameters["encoder"]).encoder_id
    if not shards.shard_done(store, parameters["dataset_id"], encoder_id, parameters["lo"], parameters["hi"]):
        return None
    return f"embed-shard-{config_hash(store.store_id, str(home), parameters['key'])}"


@task(name="embed-shard", task_run_name="embed-{role}-shard-{index}", cache_key_fn=shard_cache_key,
      persist_result=True, result_serializer=JSON_RESULTS, cache_expiration=CACHE_TTL, **retry_policy())
def embed_shard(home: str, dataset_id: str, encoder: str, lo: int, hi: int, key: str, batch_size: int,
                role: str = "rows", index: int = 0, n_shards: int = 1) -> dict:
    """Embed rows ``lo:hi`` of the dataset's distinct rows that the store lacks (one stored shard)."""
    done = shards.embed_shard(Store(home), pipeline.cached_encoder(encoder), dataset_id, lo, hi, batch_size)
    rate = done["n_embedded"] / done["seconds"] if done["seconds"] > 0 else 0.0
    log().info("%s shard %d/%d (%s): embedded %d of %d rows in %.1f s (%.1f rows/s)", role, index + 1,
                          n_shards, key, done["n_embedded"], done["n_rows"], done["seconds"], rate)
    return {"key": key, **done}


def embed_datasets(home: str, ids: dict[str, str], encoder: str, batch_size: int, shard_rows: int,
                   parallel: bool) -> dict[str, dict]:
    """Embed every dataset of `ids` ({role: dataset_id}) shard by shard; one summary per role.

    With `parallel`, every shard of every dataset is submitted at once to the flow's task runner
    (Dask, Ray); otherwise shards run one after the other in this process. A shard served from
    the Prefect cache embedded nothing in this run.
    """
    plans = {role: plan_embedding(home, ids[role], encoder, batch_size, shard_rows) for role in ids}
    calls = {role: [dict(home=home, dataset_id=ids[role], encoder=encoder, lo=s["lo"], hi=s["hi"], key=s["key"],
                         batch_size=batch_size, role=role, index=s["index"], n_shards=len(plans[role]["shards"]))
                    for s in plans[role]["shards"]] for role in ids}
    shard_task = shared_results(embed_shard, home)  # cache records in the store, seen by every worker
    if parallel:
        futures = {role: [shard_task.submit(**c) for c in cs] for role, cs in calls.items()}
        states = {role: [f.wait() or f.state for f in fs] for role, fs in futures.items()}
    else:
        states = {}
        for role, cs in calls.items():
            states[role] = [shard_task(**c, return_state=True) for c in cs]
            failpoint("embed.after_dataset")  # one input wholly embedded, the next not started
    out = {}
    for role, plan in plans.items():
        # a cached shard embedded nothing now; seconds are the shards' own (worker seconds when parallel)
        done = [{"n_embedded": 0, "seconds": 0.0} if s.name == "Cached" else s.result() for s in states[role]]
        out[role] = {"dataset_id": plan["dataset_id"], "encoder_id": plan["encoder_id"], "n_rows": plan["n_rows"],
                     "n_embedded": sum(d["n_embedded"] for d in done), "n_shards": len(done),
                     "seconds": sum(d["seconds"] for d in done)}
    return out


def task_runner(runner: str):
    """The Prefect task runner for `runner`: None for local (the flow's own), a `DaskTaskRunner`
    for ``dask`` (a local cluster of processes) or a scheduler address, a `RayTaskRunner` for ``ray``.

    Raises `OptionError` naming the ``runner`` option when the extra it needs is not installed.
    """
    from sot_core.errors import OptionError

    if runner == "local":
        return None
    try:
        if runner == "ray":
            from prefect_ray import RayTaskRunner

            return RayTaskRunner()
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        extra = "ray" if runner == "ray" else "dask"
        raise OptionError("runner", runner, f"needs the '{extra}' extra (pip install 'sot[{extra}]'): {exc}") from None
    if runner == "dask":
        return DaskTaskRunner(cluster_kwargs={"processes": True, "threads_per_worker": 1})
    return DaskTaskRunner(address=runner)
