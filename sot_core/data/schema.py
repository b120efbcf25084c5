"""The canonical row schema every loader produces and every stage consumes, and the rows' records.

Loaders also return each row's input record (`RECORD_FIELD`: the row as JSON text, field names
as the file spelt them), so a curated version can be handed back in the user's own format
(``curated_records.jsonl``: chat turns, system prompts and every other field the canonical
(prompt, response) pair leaves out). Records are payload, not what curation reads: the store
keeps them apart from the dataset (`records_id_of`), so a dataset's id, and every stage cached
on it, depends on the ids and texts alone.
"""
from __future__ import annotations

import pyarrow as pa

from sot_core.io import digest

# One row of fine-tuning data after ingestion. `content_hash` keys the embedding cache, so
# it depends only on the text (never on id or source): the same text is embedded once.
ROW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
    ]
)

# The input row as it was read, as JSON text; null where a row has no record.
RECORD_FIELD = pa.field("record", pa.string(), nullable=True)
LOADED_SCHEMA = ROW_SCHEMA.append(RECORD_FIELD)  # what the loaders return
RECORDS_SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), RECORD_FIELD])  # a stored records file


def content_hash(prompt: str, response: str) -> str:
    """Stable 128-bit hex digest (32 digits) of a (prompt, response) pair.

    The unit separator between the two keeps ("ab", "c") and ("a", "bc") apart.
    """
    return digest(prompt, b"\x1f", response, n=32)


def dataset_id_of(rows: pa.Table) -> str:
    """Content-derived dataset id: same ids and texts in the same order -> same id.

    ``ds-`` + 20 hex digits of sha256 over one ``id<US>content_hash<LF>`` line per row.
    """
    lines = (f"{i}\x1f{c}\n" for i, c in zip(rows.column("id").to_pylist(), rows.column("content_hash").to_pylist()))
    return "ds-" + digest(lines, n=20)


def aligned_records(stored: pa.Table | None, rows: pa.Table) -> pa.ChunkedArray | None:
    """The record column of `stored` (a records file: id, record) when it holds `rows`' ids in their
    order, else None (no records, or records of other rows)."""
    if stored is None or stored.column("id").to_pylist() != rows.column("id").to_pylist():
        return None
    return stored.column(RECORD_FIELD.name)


def records_id_of(rows: pa.Table) -> str | None:
    """Content-derived id of the rows' records (None when no row has one).

    ``rec-`` + 20 hex digits of sha256 over one ``id<US>record<LF>`` line per row (an empty record
    for a row without one), so two files with the same texts but other fields (a system prompt, a
    label) share their dataset and differ here.
    """
    if RECORD_FIELD.name not in rows.column_names or rows.column(RECORD_FIELD.name).null_count == rows.num_rows:
        return None
    records = rows.column(RECORD_FIELD.name).to_pylist()
    return "rec-" + digest((f"{i}\x1f{r or ''}\n" for i, r in zip(rows.column("id").to_pylist(), records)), n=20)
