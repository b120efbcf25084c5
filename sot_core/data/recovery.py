"""Store recovery: repair what killed runs and damage left in a store's home.

`recover` runs under the catalog lock at the first open of a home in each process (so once per
`sot` run; `Store.recover` calls it) and prints one line per repair to stderr, each naming the
file. It relies on how the store writes (see `sot_core.data.store`): holding the lock, a file the
catalog does not name is debris of a killed writer, never a file about to be registered.

- temp files and folders of processes that are gone: removed;
- a dataset file the catalog does not name: registered again when its content gives back its
  content-derived id (a run killed between the file and its catalog rows), else removed;
- a catalogued dataset whose file is missing, unreadable or of another row count: its catalog
  rows are dropped and `store_id` changes, so caches keyed on it (the Prefect task cache) miss and
  the next run stores the dataset again from its source;
- an embeddings shard that is missing, unreadable or shorter than its catalog rows say: its rows
  are dropped from the catalog in one transaction and the file removed; those rows count as not
  embedded, and the next embed stage embeds them again (and nothing else);
- shard files and ``curated/<version>`` folders no catalog row names: removed.

Catalog changes are one transaction; files are removed after it commits, still under the lock.
"""
from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from sot_core.data.parquet import parquet_problem
from sot_core.data.schema import ROW_SCHEMA, dataset_id_of
from sot_core.io import atomic_write_text, sweep_temp

if TYPE_CHECKING:  # the store calls in here; importing it at run time would be a cycle
    from sot_core.data.store import Store


def recover(store: Store) -> list[str]:
    """Repair what killed runs and damage left in `store`'s home; returns one line per repair."""
    repairs: list[str] = []
    remove: list[Path] = []
    with store.catalog() as con:
        swept = sweep_temp(store.home)
        if swept:
            repairs.append(f"{store.home}: removed {len(swept)} temp file(s) of killed runs "
                           f"({', '.join(str(p.relative_to(store.home)) for p in swept[:3])}"
                           f"{', ...' if len(swept) > 3 else ''})")
        con.execute("BEGIN")
        try:
            lost = _recover_datasets(store, con, repairs, remove)
            _recover_embeddings(store, con, repairs, remove)
            _recover_curated(store, con, repairs, remove)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        # still under the lock, so no run stores a file of the same name in between
        for path in remove:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        if lost:
            atomic_write_text(uuid.uuid4().hex, store.home / "store_id")
    for line in repairs:
        sys.stderr.write(f"sot: store repair: {line}\n")
    return repairs


def _recover_curated(store: Store, con, repairs: list[str], remove: list[Path]) -> None:
    """Remove ``curated/<version>`` folders the catalog does not list (a publish killed half-way)."""
    versions = {v for (v,) in con.execute("SELECT version FROM curated_versions").fetchall()}
    curated = store.home / "curated"
    for folder in sorted(curated.iterdir()) if curated.is_dir() else []:
        if folder.is_dir() and not folder.name.startswith(".") and folder.name not in versions:
            remove.append(folder)
            repairs.append(f"{folder}: a curated version the catalog does not list (a run was killed while "
                           "publishing it); removed")


def _recover_datasets(store: Store, con, repairs: list[str], remove: list[Path]) -> bool:
    """Drop catalogued datasets whose file is bad, register complete files the catalog lacks.
    Returns True when a catalogued dataset was lost."""
    catalogued = dict(con.execute("SELECT dataset_id, n_rows FROM datasets").fetchall())
    lost = []
    for dataset_id, n_rows in catalogued.items():
        path = store.dataset_path(dataset_id)
        problem = parquet_problem(path, ROW_SCHEMA.names, rows=n_rows)
        if problem:
            lost.append(dataset_id)
            remove.append(path)
            repairs.append(f"{path}: dataset {dataset_id} {problem}; dropped it from the catalog (a run with the "
                           "same input stores it again)")
    folder = store.home / "datasets"
    unnamed = [p for p in sorted(folder.glob("*.parquet")) if p.stem not in catalogued] if folder.is_dir() else []
    if lost:
        con.execute("DELETE FROM datasets WHERE dataset_id IN (SELECT unnest(?))", [lost])
    if lost or unnamed:  # index rows of datasets that are gone (or about to be registered again)
        con.execute("DELETE FROM rows WHERE dataset_id NOT IN (SELECT dataset_id FROM datasets)")
    for path in unnamed:
        try:
            rows = pq.read_table(path, page_checksum_verification=True)
            whole = set(ROW_SCHEMA.names) <= set(rows.column_names) and dataset_id_of(rows) == path.stem
        except Exception:  # noqa: BLE001 - unreadable: not a dataset
            whole = False
        if whole:
            meta = {k.decode(errors="replace"): v.decode(errors="replace")
                    for k, v in (rows.schema.metadata or {}).items()}
            store._register_dataset(con, path.stem, rows, meta.get("sot.name", "recovered"),
                                    meta.get("sot.source_uri", ""), path)
            repairs.append(f"{path}: dataset {path.stem} was stored but not registered (a run was killed "
                           "in between); registered it")
        else:
            remove.append(path)
            repairs.append(f"{path}: not a complete dataset of this store (a killed run's or damaged); removed")
    return bool(lost)


def _recover_embeddings(store: Store, con, repairs: list[str], remove: list[Path]) -> None:
    """Drop the catalog rows of bad shards; remove shard files no catalog row names."""
    shards = con.execute("SELECT shard, count(*), max(row_in_shard) FROM embeddings GROUP BY shard").fetchall()
    bad = []
    for shard, n, top in shards:
        path = store.shard_path(shard)
        problem = parquet_problem(path, ("content_hash", "emb"), min_rows=top + 1)
        if problem:
            bad.append(shard)
            remove.append(path)
            repairs.append(f"{path}: embeddings shard {problem}; dropped its {n} vectors from the catalog (the "
                           "next embed stage embeds them again)")
    if bad:
        con.execute("DELETE FROM embeddings WHERE shard IN (SELECT unnest(?))", [bad])
    named = {store.shard_path(shard) for shard, _, _ in shards}
    folder = store.home / "embeddings"
    for path in sorted(folder.glob("*/*.parquet")) if folder.is_dir() else []:
        if path not in named:
            remove.append(path)
            repairs.append(f"{path}: an embeddings shard no catalog row names (a run was killed while storing "
                           "it); removed")
