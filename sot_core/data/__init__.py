"""Data: fine-tuning rows from local files (or the Hub) into one canonical schema, and the store.

`load_rows` reads JSONL, JSON, CSV/TSV, Parquet and Hugging Face datasets into a table of
``ROW_SCHEMA`` (id, prompt, response, source, content hash) plus each row's input record, detecting which fields hold the
prompt and response (`FieldMap` overrides it); `load_labels` reads a label per row;
`canonical_prompt` is the one rule for turning an (instruction, input) pair into a prompt.
`Store` keeps datasets, embeddings, stage outputs and curated versions under one home folder.

Modules: `loaders` (formats, layout detection, ids), `layouts` (`FieldMap` and detection order),
`files` (parsers of each file format), `hub` (Hugging Face datasets), `schema`, `store` (with `catalog`, `parquet` and
`recovery`).
"""
from sot_core.data.layouts import FieldMap
from sot_core.data.loaders import (
    FORMATS, canonical_prompt, load_labels, load_rows, rows_from_records, unwrap_alpaca_template,
)
from sot_core.data.schema import ROW_SCHEMA, content_hash
from sot_core.data.store import Store

__all__ = ["FORMATS", "FieldMap", "ROW_SCHEMA", "Store", "canonical_prompt", "content_hash", "load_labels",
           "load_rows", "rows_from_records", "unwrap_alpaca_template"]
