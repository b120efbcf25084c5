"""The store's Parquet files: written with page checksums, read with verification, and checked
from their footers.

Embeddings are stored as ``content_hash`` plus a ``FixedSizeList<float32>[dim]`` column, which
reads back zero-copy into numpy (a file written by DuckDB loses the fixed size, so these are
written with pyarrow).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sot_core.errors import StoreError


def embeddings_table(hashes: list[str], vectors: np.ndarray) -> pa.Table:
    """content_hash + FixedSizeList<float32>[dim]: reads back zero-copy into numpy."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    emb = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    return pa.table({"content_hash": pa.array(hashes, pa.string()), "emb": emb})


def read_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    """The content hashes and the (rows, dim) float32 vectors of one embeddings shard, verified."""
    table = pq.read_table(path, page_checksum_verification=True)
    col = table.column("emb").combine_chunks()
    dim = col.type.list_size if pa.types.is_fixed_size_list(col.type) else None
    if dim is None:
        raise StoreError(f"{path}: field 'emb' is not a fixed-size float32 list; the file was not written by sot")
    vectors = col.values.to_numpy(zero_copy_only=False).reshape(len(col), dim)
    return table.column("content_hash").to_pylist(), vectors


def write_parquet(table: pa.Table, path: Path) -> None:
    """Parquet with page checksums, so a damaged page fails its read instead of giving wrong values."""
    pq.write_table(table, path, write_page_checksum=True)


def parquet_problem(path: Path, columns: tuple[str, ...] | list[str], rows: int | None = None,
                    min_rows: int | None = None) -> str | None:
    """What is wrong with the Parquet file at `path` (None: nothing), from its footer alone."""
    if not path.is_file():
        return "is missing"
    try:
        meta = pq.read_metadata(path)
        names = meta.schema.to_arrow_schema().names
    except Exception as err:  # noqa: BLE001 - any reader error means the file cannot be used
        return f"is unreadable ({one_line(err)})"
    absent = [c for c in columns if c not in names]
    if absent:
        return f"has no column '{absent[0]}'"
    if rows is not None and meta.num_rows != rows:
        return f"holds {meta.num_rows} rows where the catalog says {rows}"
    if min_rows is not None and meta.num_rows < min_rows:
        return f"holds {meta.num_rows} rows where the catalog indexes {min_rows}"
    return None


def one_line(err: BaseException) -> str:
    """The first line of an error's message (reader errors run to several lines)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
