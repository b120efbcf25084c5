"""The store: Parquet files plus a DuckDB catalog under one home directory.

Layout under `home` (default `./.sot`, or `$SOT_HOME`); the catalog names every file by its path
relative to `home`, so a store copied or mounted elsewhere works where it lands::

    catalog.duckdb                      datasets, rows, encoders, embeddings, runs, curated versions
    datasets/<dataset_id>.parquet       canonical rows (ROW_SCHEMA)
    records/<records_id>.parquet        the input records of a dataset's rows (RECORDS_SCHEMA)
    embeddings/<encoder>/<shard>.parquet content_hash + FixedSizeList<float32> vectors
    stages/<stage>/<key>/...            content-addressed outputs of costs and solves
    curated/<version>/                  published curated datasets

Every catalog access holds the store's exclusive lock (`sot_core.data.catalog`): concurrent runs
queue, then fail with `StoreBusyError`, never with a corrupted catalog.

Writes, and what a crash leaves
-------------------------------
Every file is written under a temp name that carries the writer's process id
(`sot_core.io.temp_name`) and renamed into place only when complete. Files the catalog indexes
(``datasets/``, ``embeddings/``, ``curated/``) are renamed into place *while the catalog lock is
held*, in the same critical section as the transaction that registers them; stage outputs
(``stages/``) are whole folders renamed into place. So a run killed at any point (``kill -9``,
power loss) leaves at most: temp files of a dead process, or one indexed file whose transaction
never committed. Holding the lock, a file there that the catalog does not name is therefore
debris of a killed writer, never a file about to be registered.

Recovery: `Store.recover` runs at the first open of a home in each process and repairs what a
crash or damage left (`sot_core.data.recovery` lists the repairs).

A stage folder (``stages/``) that a cached task result names but that is gone stops the run with
one line naming it and changes `store_id` (`Store.lost_stage`), so the next run computes it again.

Reads verify too: dataset files and shards are written with Parquet page checksums and read with
verification (a flipped byte is caught, not used). A read that fails (damage after the process
opened the store) drops what it read from the catalog, as above, and raises `StoreError` naming
the file, so the run stops with one line and the next run repairs. A home that cannot be written
(read-only folder or file system) is refused at open with a `StoreError` naming the path.

Failpoints (`sot_core.failpoints`, a test hook): ``ingest.before_catalog`` and
``embed.before_catalog`` fire here, between a file's rename and its catalog commit;
``tests/test_fault_injection.py`` kills real `sot` processes there and at the other points and
checks the next run ends where an uninterrupted one would.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sot_core.data import recovery
from sot_core.data.catalog import SCHEMA_SQL, locked_catalog
from sot_core.data.names import plain_component
from sot_core.data.parquet import embeddings_table, one_line, read_vectors, write_parquet
from sot_core.data.schema import RECORD_FIELD, RECORDS_SCHEMA, ROW_SCHEMA, records_id_of
from sot_core.errors import StoreError
from sot_core.failpoints import failpoint
from sot_core.io import atomic_write, atomic_write_text, default_home, staged_write, temp_dir


def slug(text: str) -> str:
    """Folder name for an identifier such as an encoder id: each run of characters other than
    letters, digits, '.', '_' and '-' becomes '_' (``minilm-l6-v2:pair`` -> ``minilm-l6-v2_pair``).

    The folder only groups files: the catalog keeps the exact id and every shard's path. An id that
    would leave an empty, dot (``.``, ``..``) or hidden name raises `StoreError` instead.
    """
    return plain_component(re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_"), f"the folder name of {text!r}")


# Homes this process has recovered (see `Store.recover`): once per process and home.
_RECOVERED: set[str] = set()


class Store:
    """Catalog and files of one SOT home directory. Cheap to construct; safe across processes."""

    def __init__(self, home: str | os.PathLike | None = None, lock_timeout: float | None = None):
        self.home = Path(home) if home is not None else default_home()
        self.lock_timeout = float(os.environ.get("SOT_LOCK_TIMEOUT", 600) if lock_timeout is None else lock_timeout)
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"{self.home}: cannot create the store ({err.strerror}); give a writable --home or "
                             "SOT_HOME") from None
        self._check_writable()
        with self.catalog() as con:
            con.execute(SCHEMA_SQL)
            id_file = self.home / "store_id"
            if not id_file.exists():
                atomic_write_text(uuid.uuid4().hex, id_file)
        self.repairs: list[str] = []
        if str(self.home.resolve()) not in _RECOVERED:
            self.repairs = self.recover()
            _RECOVERED.add(str(self.home.resolve()))
        # Changes when the store is wiped or loses a dataset, so caches keyed on it never point at lost files.
        self.store_id = (self.home / "store_id").read_text().strip()

    def _check_writable(self) -> None:
        """Refuse a read-only store up front, naming the first path that cannot be written."""
        paths = [self.home, *(self.home / n for n in (".lock", "catalog.duckdb", "store_id", "datasets", "embeddings",
                                                      "stages", "curated"))]
        if (self.home / "embeddings").is_dir():
            paths += sorted((self.home / "embeddings").iterdir())
        for path in paths:
            if path.exists() and not os.access(path, os.W_OK):
                raise StoreError(f"{path}: the store is read-only (this process cannot write there); give a "
                                 "writable --home or SOT_HOME, or make the store writable")

    # -- locking and catalog access -------------------------------------------------------
    @contextlib.contextmanager
    def catalog(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Exclusive, queued access to the DuckDB catalog (one writer per file is DuckDB's rule)."""
        with locked_catalog(self.home, self.lock_timeout) as con:
            yield con

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The catalog lock and one transaction: committed when the block ends, rolled back on error."""
        with self.catalog() as con:
            con.execute("BEGIN")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    # -- recovery -------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Repair what killed runs and damage left (`sot_core.data.recovery`); one line per repair.

        Holds the catalog lock throughout, so no run registers files meanwhile.
        """
        return recovery.recover(self)

    def _drop(self, reason: str, dataset_id: str | None = None, shard: str | None = None) -> str:
        """Drop a dataset or a shard found damaged while reading it; returns the one-line error."""
        with self._transaction() as con:
            if dataset_id is not None:
                con.execute("DELETE FROM datasets WHERE dataset_id = ?", [dataset_id])
                con.execute("DELETE FROM rows WHERE dataset_id = ?", [dataset_id])
                path = self.dataset_path(dataset_id)
                what = (f"dataset {dataset_id} {reason}; it was dropped from the store: run again to store it again "
                        "from its source")
            else:
                con.execute("DELETE FROM embeddings WHERE shard = ?", [shard])
                path = self.shard_path(shard)
                what = f"embeddings shard {reason}; its vectors were dropped: run again to embed them again"
            path.unlink(missing_ok=True)
            if dataset_id is not None:
                atomic_write_text(uuid.uuid4().hex, self.home / "store_id")
        return f"{path}: {what}"

    # -- datasets ---------------------------------------------------------------------------
    def dataset_path(self, dataset_id: str) -> Path:
        """``datasets/<dataset_id>.parquet``; `StoreError` for an id that is not a plain file name."""
        return self.home / "datasets" / f"{plain_component(dataset_id, 'dataset id')}.parquet"

    def put_dataset(self, dataset_id: str, rows: pa.Table, name: str, source_uri: str) -> bool:
        """Store canonical rows under a content-derived id. Returns False if already stored."""
        with self.catalog() as con:
            if con.execute("SELECT 1 FROM datasets WHERE dataset_id = ?", [dataset_id]).fetchone():
                return False
        path = self.dataset_path(dataset_id)
        # name and source travel in the file too, so `recover` can register it again after a crash
        table = rows.select(ROW_SCHEMA.names).cast(ROW_SCHEMA).replace_schema_metadata({"sot.name": name, "sot.source_uri": source_uri})
        with staged_write(path, lambda tmp: write_parquet(table, tmp)) as tmp, self._transaction() as con:
            if con.execute("SELECT 1 FROM datasets WHERE dataset_id = ?", [dataset_id]).fetchone():
                return False  # a concurrent run stored the same content first
            os.replace(tmp, path)
            try:
                failpoint("ingest.before_catalog")
                self._register_dataset(con, dataset_id, table, name, source_uri, path)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        return True

    def _register_dataset(self, con, dataset_id: str, rows: pa.Table, name: str, source_uri: str, path: Path) -> None:
        index = pa.table(
            {
                "dataset_id": pa.array([dataset_id] * rows.num_rows, pa.string()),
                "id": rows.column("id"),
                "content_hash": rows.column("content_hash"),
                "row_index": pa.array(np.arange(rows.num_rows), pa.int64()),
            }
        )
        con.execute(
            "INSERT INTO datasets (dataset_id, name, source_uri, n_rows, path) VALUES (?, ?, ?, ?, ?)",
            [dataset_id, name, source_uri, rows.num_rows, self.catalog_path(path)],
        )
        con.register("new_rows", index)
        con.execute("INSERT INTO rows SELECT * FROM new_rows")
        con.unregister("new_rows")

    def get_rows(self, dataset_id: str) -> pa.Table:
        path = self.dataset_path(dataset_id)
        if not path.exists():
            raise StoreError(f"{path}: dataset {dataset_id} is not in the store at {self.home}")
        try:
            return pq.read_table(path, page_checksum_verification=True)
        except (OSError, pa.ArrowException) as err:
            raise StoreError(self._drop(f"is unreadable ({one_line(err)})", dataset_id=dataset_id)) from None

    # -- input records ----------------------------------------------------------------------
    def records_path(self, records_id: str) -> Path:
        """``records/<records_id>.parquet``; `StoreError` for an id that is not a plain file name."""
        return self.home / "records" / f"{plain_component(records_id, 'records id')}.parquet"

    def put_records(self, rows: pa.Table) -> str | None:
        """Store the rows' input records (`RECORD_FIELD`) under a content-derived id and return it
        (None when the rows carry none). Immutable and content-addressed, like embeddings, so no
        catalog entry: a file present is complete (written under a temp name, then renamed)."""
        records_id = records_id_of(rows)
        if records_id is not None and not self.records_path(records_id).exists():
            table = pa.table([rows.column("id"), rows.column(RECORD_FIELD.name)], schema=RECORDS_SCHEMA)
            atomic_write(self.records_path(records_id), lambda tmp: write_parquet(table, tmp))
        return records_id

    def get_records(self, records_id: str) -> pa.Table | None:
        """The records stored under `records_id` (id, record), or None when the store lacks them. A
        damaged file is removed (the next ingest of the same rows writes it again): records are an
        extra output, so losing them must not fail a curation."""
        path = self.records_path(records_id)
        try:
            return pq.read_table(path, page_checksum_verification=True) if path.exists() else None
        except (OSError, pa.ArrowException):
            path.unlink(missing_ok=True)
            return None

    # -- embeddings -------------------------------------------------------------------------
    def shard_path(self, shard: str) -> Path:
        """The file of a shard as the catalog names it, under this home: relative to the home
        (``embeddings/<encoder>/<shard>.parquet``), or absolute under the home an earlier version
        wrote it in (catalogs kept absolute paths before), which may have moved since."""
        shard = Path(shard)
        return self.home / "embeddings" / shard.parent.name / shard.name

    def catalog_path(self, path: Path) -> str:
        """How the catalog records a file of this home: relative to it, with '/' separators."""
        return path.relative_to(self.home).as_posix()

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
        index = pa.table(
            {
                "content_hash": pa.array(hashes, pa.string()),
                "encoder_id": pa.array([encoder_id] * len(hashes), pa.string()),
                "shard": pa.array([self.catalog_path(shard)] * len(hashes), pa.string()),
                "row_in_shard": pa.array(np.arange(len(hashes)), pa.int64()),
            }
        )
        table = embeddings_table(hashes, vectors)
        with staged_write(shard, lambda tmp: write_parquet(table, tmp)) as tmp, self._transaction() as con:
            os.replace(tmp, shard)
            try:
                failpoint("embed.before_catalog")
                con.register("new_emb", index)
                con.execute(
                    "INSERT INTO embeddings (content_hash, encoder_id, shard, row_in_shard) "
                    "SELECT * FROM new_emb ON CONFLICT DO NOTHING"
                )
            except BaseException:
                shard.unlink(missing_ok=True)
                raise
        return shard

    def get_embeddings(self, hashes: list[str], encoder_id: str) -> np.ndarray:
        """Vectors for `hashes` in the given order, gathered from their shards.

        A shard that cannot be read, or that does not hold the row the catalog names, is dropped
        (`StoreError` naming it: the next run embeds its rows again); nothing damaged is returned.
        """
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
            try:
                shard_hashes, shard_vectors = read_vectors(self.shard_path(shard))
            except (OSError, pa.ArrowException) as err:
                raise StoreError(self._drop(f"is unreadable ({one_line(err)})", shard=shard)) from None
            if shard_vectors.shape[1] != dim:
                raise StoreError(
                    f"{self.shard_path(shard)}: field 'emb' has dimension {shard_vectors.shape[1]} but encoder "
                    f"'{encoder_id}' is registered with {dim}"
                )
            for h in members:
                i = where[h][1]
                if i >= len(shard_hashes) or shard_hashes[i] != h:
                    raise StoreError(self._drop(f"does not hold row {i} ({h}) that the catalog names", shard=shard))
                position[h] = len(position)
                vectors[position[h]] = shard_vectors[i]
        return vectors[[position[h] for h in hashes]]

    # -- curated versions -------------------------------------------------------------------
    def put_curated_version(self, version: str, files: dict[str, str], **fields) -> str | None:
        """Store `files` ({name: text}) as ``curated/<version>/`` and record the version with
        `fields` (columns of ``curated_versions``), in one step under the lock.

        Returns the version's parent: the latest version of the same name before it.
        """
        final = self.curated_dir(version)
        tmp = temp_dir(final)
        try:
            for name, text in files.items():
                (tmp / name).write_text(text, encoding="utf-8")
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
            with self._transaction() as con:
                row = con.execute("SELECT version FROM curated_versions WHERE name = ? ORDER BY created_at DESC "
                                  "LIMIT 1", [fields.get("name")]).fetchone()
                parent = row[0] if row else None
                record = {**fields, "version": version, "parent_version": parent, "path": self.catalog_path(final)}
                os.replace(tmp, final)
                try:
                    con.execute(f"INSERT INTO curated_versions ({', '.join(record)}) VALUES "
                                f"({', '.join('?' for _ in record)})", list(record.values()))
                except BaseException:
                    shutil.rmtree(final, ignore_errors=True)
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return parent

    # -- stage outputs and runs -------------------------------------------
    def curated_dir(self, version: str) -> Path:
        """``curated/<version>``; `StoreError` for a version that is not a plain file name."""
        return self.home / "curated" / plain_component(version, "curated version")

    def stage_dir(self, stage: str, key: str) -> Path:
        """``stages/<stage>/<key>``; `StoreError` for a stage or key that is not a plain file name."""
        return self.home / "stages" / plain_component(stage, "stage") / plain_component(key, "stage key")

    def lost_stage(self, path: Path) -> StoreError:
        """The error for a stage folder that an earlier stage's (cached) result names but the store
        no longer holds. Changes `store_id`, so the next run's cache keys miss and the stages are
        computed again."""
        with self.catalog():
            atomic_write_text(uuid.uuid4().hex, self.home / "store_id")
        return StoreError(f"{path}: this stage output is gone from the store though a cached result names it; "
                          "the caches were reset: run again to compute it again")

    def record_run(self, run_id: str, kind: str, status: str, config: dict, out_dir: str, stage_seconds: dict) -> None:
        with self.catalog() as con:
            con.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, current_timestamp, current_timestamp)",
                [run_id, kind, status, json.dumps(config, sort_keys=True), out_dir, json.dumps(stage_seconds)],
            )

    def latest_curated_version(self, name: str) -> str | None:
        with self.catalog() as con:
            row = con.execute(
                "SELECT version FROM curated_versions WHERE name = ? ORDER BY created_at DESC LIMIT 1", [name]
            ).fetchone()
        return row[0] if row else None

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        with self.catalog() as con:
            return con.execute(sql, params or []).fetchall()
