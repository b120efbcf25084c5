"""The store: Parquet files plus a DuckDB catalog under one home directory.

Layout under `home` (default `./.sot`, or `$SOT_HOME`)::

    catalog.duckdb                      datasets, rows, encoders, embeddings, runs, curated versions
    datasets/<dataset_id>.parquet       canonical rows (ROW_SCHEMA)
    embeddings/<encoder>/<shard>.parquet content_hash + FixedSizeList<float32> vectors
    stages/<stage>/<key>/...            content-addressed outputs of costs and solves
    curated/<version>/                  published curated datasets

DuckDB allows one writing process per file, so every catalog access goes through an exclusive
`flock` on `home/.lock`: concurrent runs queue (up to `lock_timeout` seconds) and then fail with
`StoreBusyError`, never with a corrupted catalog. Files are written to a temp name and renamed,
and the catalog is updated in one transaction after the files exist, so a failure part-way leaves
what was stored before untouched.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sot_core.data.schema import ROW_SCHEMA
from sot_core.errors import StoreBusyError, StoreError
from sot_core.io import atomic_write_table, atomic_write_text, default_home

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS datasets (
    dataset_id VARCHAR PRIMARY KEY, name VARCHAR, source_uri VARCHAR, n_rows BIGINT,
    path VARCHAR, created_at TIMESTAMP DEFAULT current_timestamp);
CREATE TABLE IF NOT EXISTS rows (
    dataset_id VARCHAR, id VARCHAR, content_hash VARCHAR, row_index BIGINT);
CREATE TABLE IF NOT EXISTS encoders (encoder_id VARCHAR PRIMARY KEY, dim INTEGER);
CREATE TABLE IF NOT EXISTS embeddings (
    content_hash VARCHAR, encoder_id VARCHAR, shard VARCHAR, row_in_shard BIGINT,
    created_at TIMESTAMP DEFAULT current_timestamp, PRIMARY KEY (content_hash, encoder_id));
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, kind VARCHAR, status VARCHAR, config VARCHAR, out_dir VARCHAR,
    stage_seconds VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS curated_versions (
    version VARCHAR PRIMARY KEY, run_id VARCHAR, name VARCHAR, pool_dataset_id VARCHAR,
    anchor_dataset_id VARCHAR, harmful_dataset_id VARCHAR, config_hash VARCHAR,
    code_version VARCHAR, n_pool BIGINT, n_selected BIGINT, parent_version VARCHAR,
    path VARCHAR, created_at TIMESTAMP DEFAULT current_timestamp);
"""


def slug(text: str) -> str:
    """File-system-safe name for an identifier such as an encoder id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def embeddings_table(hashes: list[str], vectors: np.ndarray) -> pa.Table:
    """content_hash + FixedSizeList<float32>[dim]: reads back zero-copy into numpy."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    emb = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    return pa.table({"content_hash": pa.array(hashes, pa.string()), "emb": emb})


def read_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(path)
    col = table.column("emb").combine_chunks()
    dim = col.type.list_size if pa.types.is_fixed_size_list(col.type) else None
    if dim is None:
        raise StoreError(f"{path}: field 'emb' is not a fixed-size float32 list; the file was not written by sot")
    vectors = col.values.to_numpy(zero_copy_only=False).reshape(len(col), dim)
    return table.column("content_hash").to_pylist(), vectors


class Store:
    """Catalog and files of one SOT home directory. Cheap to construct; safe across processes."""

    def __init__(self, home: str | os.PathLike | None = None, lock_timeout: float | None = None):
        self.home = Path(home) if home is not None else default_home()
        self.lock_timeout = float(os.environ.get("SOT_LOCK_TIMEOUT", 600) if lock_timeout is None else lock_timeout)
        self.home.mkdir(parents=True, exist_ok=True)
        with self.catalog() as con:
            con.execute(SCHEMA_SQL)
            id_file = self.home / "store_id"
            if not id_file.exists():
                atomic_write_text(uuid.uuid4().hex, id_file)
        # Changes when the store is wiped, so caches keyed on it never point at lost files.
        self.store_id = (self.home / "store_id").read_text().strip()

    # -- locking and catalog access -------------------------------------------------------
    @contextlib.contextmanager
    def catalog(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Exclusive, queued access to the DuckDB catalog (one writer per file is DuckDB's rule)."""
        lock_path = self.home / ".lock"
        with open(lock_path, "a+") as lock_file:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreBusyError(
                            f"{self.home}: the store is in use by another run (waited {self.lock_timeout:.0f} s "
                            "for its lock); retry later or raise SOT_LOCK_TIMEOUT"
                        ) from None
                    time.sleep(0.1)
            try:
                con = duckdb.connect(str(self.home / "catalog.duckdb"))
                try:
                    yield con
                finally:
                    con.close()
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    # -- datasets ---------------------------------------------------------------------------
    def dataset_path(self, dataset_id: str) -> Path:
        return self.home / "datasets" / f"{dataset_id}.parquet"

    def put_dataset(self, dataset_id: str, rows: pa.Table, name: str, source_uri: str) -> bool:
        """Store canonical rows under a content-derived id. Returns False if already stored."""
        with self.catalog() as con:
            if con.execute("SELECT 1 FROM datasets WHERE dataset_id = ?", [dataset_id]).fetchone():
                return False
        path = self.dataset_path(dataset_id)
        atomic_write_table(rows.cast(ROW_SCHEMA), path)
        index = pa.table(
            {
                "dataset_id": pa.array([dataset_id] * rows.num_rows, pa.string()),
                "id": rows.column("id"),
                "content_hash": rows.column("content_hash"),
                "row_index": pa.array(np.arange(rows.num_rows), pa.int64()),
            }
        )
        with self.catalog() as con:
            con.execute("BEGIN")
            try:
                if con.execute("SELECT 1 FROM datasets WHERE dataset_id = ?", [dataset_id]).fetchone():
                    con.execute("ROLLBACK")  # a concurrent run stored the same content first
                    return False
                con.execute(
                    "INSERT INTO datasets (dataset_id, name, source_uri, n_rows, path) VALUES (?, ?, ?, ?, ?)",
                    [dataset_id, name, source_uri, rows.num_rows, str(path)],
                )
                con.register("new_rows", index)
                con.execute("INSERT INTO rows SELECT * FROM new_rows")
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
        return True

    def get_rows(self, dataset_id: str) -> pa.Table:
        path = self.dataset_path(dataset_id)
        if not path.exists():
            raise StoreError(f"{path}: dataset {dataset_id} is not in the store at {self.home}")
        return pq.read_table(path)

    # -- embeddings -------------------------------------------------------------------------
    def check_encoder(self, encoder_id: str, dim: int, register: bool = True) -> None:
        """Refuse a dimension clash with what is stored under this encoder id; else register it."""
        with self.catalog() as con:
            row = con.execute("SELECT dim FROM encoders WHERE encoder_id = ?", [encoder_id]).fetchone()
            if row is not None and row[0] != dim:
                raise StoreError(
                    f"{self.home / 'catalog.duckdb'}, table 'encoders', row '{encoder_id}', field 'dim': the store "
                    f"holds {row[0]}-dimensional vectors for this encoder but it now produces {dim}; "
                    "use a new encoder id or a new SOT_HOME"
                )
            if row is None and register:
                con.execute("INSERT INTO encoders VALUES (?, ?)", [encoder_id, dim])

    def missing_hashes(self, hashes: list[str], encoder_id: str) -> list[str]:
        """Content hashes (deduplicated, order kept) with no stored vector for this encoder."""
        unique = list(dict.fromkeys(hashes))
        with self.catalog() as con:
            con.register("wanted", pa.table({"content_hash": pa.array(unique, pa.string())}))
            have = {
                h
                for (h,) in con.execute(
                    "SELECT w.content_hash FROM wanted w JOIN embeddings e "
                    "ON e.content_hash = w.content_hash AND e.encoder_id = ?",
                    [encoder_id],
                ).fetchall()
            }
        return [h for h in unique if h not in have]

    def put_embeddings(self, encoder_id: str, hashes: list[str], vectors: np.ndarray) -> Path | None:
        """Write one new shard and index it. Rows already stored (a racing run) are skipped."""
        if not hashes:
            return None
        if vectors.ndim != 2 or vectors.shape[0] != len(hashes):
            raise StoreError(f"embedding batch has shape {vectors.shape} for {len(hashes)} hashes")
        self.check_encoder(encoder_id, int(vectors.shape[1]))
        shard = self.home / "embeddings" / slug(encoder_id) / f"{uuid.uuid4().hex}.parquet"
        atomic_write_table(embeddings_table(hashes, vectors), shard)
        index = pa.table(
            {
                "content_hash": pa.array(hashes, pa.string()),
                "encoder_id": pa.array([encoder_id] * len(hashes), pa.string()),
                "shard": pa.array([str(shard)] * len(hashes), pa.string()),
                "row_in_shard": pa.array(np.arange(len(hashes)), pa.int64()),
            }
        )
        with self.catalog() as con:
            con.register("new_emb", index)
            con.execute(
                "INSERT INTO embeddings (content_hash, encoder_id, shard, row_in_shard) "
                "SELECT * FROM new_emb ON CONFLICT DO NOTHING"
            )
        return shard

    def get_embeddings(self, hashes: list[str], encoder_id: str) -> np.ndarray:
        """Vectors for `hashes` in the given order, gathered from their shards."""
        with self.catalog() as con:
            con.register("wanted", pa.table({"content_hash": pa.array(list(dict.fromkeys(hashes)), pa.string())}))
            located = con.execute(
                "SELECT e.content_hash, e.shard, e.row_in_shard FROM wanted w JOIN embeddings e "
                "ON e.content_hash = w.content_hash AND e.encoder_id = ?",
                [encoder_id],
            ).fetchall()
            dim_row = con.execute("SELECT dim FROM encoders WHERE encoder_id = ?", [encoder_id]).fetchone()
        where = {h: (shard, i) for h, shard, i in located}
        missing = [h for h in hashes if h not in where]
        if missing:
            raise StoreError(f"{self.home}: {len(missing)} rows have no '{encoder_id}' embedding (first: {missing[0]})")
        dim = dim_row[0]
        by_shard: dict[str, list[str]] = {}
        for h, (shard, _) in where.items():
            by_shard.setdefault(shard, []).append(h)
        position = {}
        vectors = np.empty((len(where), dim), dtype=np.float32)
        for shard, members in by_shard.items():
            shard_hashes, shard_vectors = read_vectors(Path(shard))
            if shard_vectors.shape[1] != dim:
                raise StoreError(
                    f"{shard}: field 'emb' has dimension {shard_vectors.shape[1]} but encoder '{encoder_id}' "
                    f"is registered with {dim}"
                )
            for h in members:
                i = where[h][1]
                position[h] = len(position)
                vectors[position[h]] = shard_vectors[i]
        return vectors[[position[h] for h in hashes]]

    # -- stage outputs, runs and curated versions -------------------------------------------
    def stage_dir(self, stage: str, key: str) -> Path:
        return self.home / "stages" / stage / key

    def record_run(self, run_id: str, kind: str, status: str, config: dict, out_dir: str, stage_seconds: dict) -> None:
        with self.catalog() as con:
            con.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, current_timestamp, current_timestamp)",
                [run_id, kind, status, json.dumps(config, sort_keys=True), out_dir, json.dumps(stage_seconds)],
            )

    def record_curated_version(self, **fields) -> None:
        cols = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        with self.catalog() as con:
            con.execute(f"INSERT INTO curated_versions ({cols}) VALUES ({marks})", list(fields.values()))

    def latest_curated_version(self, name: str) -> str | None:
        with self.catalog() as con:
            row = con.execute(
                "SELECT version FROM curated_versions WHERE name = ? ORDER BY created_at DESC LIMIT 1", [name]
            ).fetchone()
        return row[0] if row else None

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        with self.catalog() as con:
            return con.execute(sql, params or []).fetchall()
