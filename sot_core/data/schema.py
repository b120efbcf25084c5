"""The canonical row schema every loader produces and every stage consumes."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa

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
    """Stable 128-bit hex digest of a (prompt, response) pair."""
    h = hashlib.sha256()
    h.update(prompt.encode("utf-8"))
    h.update(b"\x1f")  # unit separator: ("ab", "c") and ("a", "bc") must differ
    h.update(response.encode("utf-8"))
    return h.hexdigest()[:32]


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
