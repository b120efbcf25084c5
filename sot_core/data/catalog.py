"""The store's DuckDB catalog: its tables, and the one way to open it.

DuckDB allows one writing process per database file, so every access goes through an exclusive
`flock` on ``home/.lock``: concurrent runs queue (up to `lock_timeout` seconds) and then fail with
`StoreBusyError`, never with a corrupted catalog.
"""
from __future__ import annotations

import contextlib
import fcntl
import time
from pathlib import Path
from typing import Iterator

import duckdb

from sot_core.data.parquet import one_line
from sot_core.errors import StoreBusyError, StoreError

# datasets.path, embeddings.shard and curated_versions.path name files relative to the home
# (`Store.catalog_path`); catalogs written before hold absolute paths there, read as well.
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


@contextlib.contextmanager
def locked_catalog(home: Path, lock_timeout: float) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to ``home/catalog.duckdb`` held under the store's exclusive lock.

    Waits up to `lock_timeout` seconds for another run to let go, then raises `StoreBusyError`;
    a lock file or catalog that cannot be opened raises `StoreError` naming it.
    """
    lock_path, catalog_path = home / ".lock", home / "catalog.duckdb"
    try:
        lock_file = open(lock_path, "a+")
    except OSError as err:
        raise StoreError(f"{lock_path}: cannot open the store's lock file ({err.strerror}); the store must "
                         "be writable") from None
    with lock_file:
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreBusyError(
                        f"{home}: the store is in use by another run (waited {lock_timeout:.0f} s "
                        "for its lock); retry later or raise SOT_LOCK_TIMEOUT"
                    ) from None
                time.sleep(0.1)
        try:
            try:
                con = duckdb.connect(str(catalog_path))
            except duckdb.Error as err:
                raise StoreError(f"{catalog_path}: cannot open the catalog ({one_line(err)})") from None
            try:
                yield con
            finally:
                con.close()
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
