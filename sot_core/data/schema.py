"""The canonical row schema every loader produces and every stage consumes."""
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
