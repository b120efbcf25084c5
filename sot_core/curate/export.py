"""``curated_records.jsonl``: the kept rows in the user's own format.

Why. ``curated.jsonl`` holds the canonical (prompt, response) pair that `sot finetune` trains on;
a chat's earlier turns, its system prompt, an Alpaca row's separate ``input`` and every other
field are not in it. A team that trains with its own stack wants its rows back as it sent them,
with the weight to train them at. Ingestion stores the pool rows' input records
(`sot_core.data.store.Store.put_records`), so the export is a lookup, not a second read of files
that may have moved or changed since.

Each line is the kept row's record, field names as the input spelt them, with two fields added
(replaced if the record already has them, e.g. when a curated set is curated again):
``sot_id`` (the row's id) and ``sot_weight`` (its training weight, as in ``curated.jsonl``). A
record that was a bare list of chat turns becomes ``{"messages": [...]}``. Rows in pool order.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from sot_core.data.schema import aligned_records

FILE_NAME = "curated_records.jsonl"


def curated_records_jsonl(rows: pa.Table, records: pa.Table | None, selected: np.ndarray,
                          train_weight: np.ndarray) -> tuple[str | None, int]:
    """(the file's text, kept rows without a record).

    `records` is the pool's stored records table (id, record; `Store.get_records`), row for row
    with `rows`. The text is None when a kept row has no record (a pool ingested before records
    were kept, or records the store lost: curate the pool again from its files to get them); a
    file that mixed the two formats would mislead.
    """
    kept = np.flatnonzero(selected)
    take = pa.array(kept, pa.int64())
    column = aligned_records(records, rows)
    if column is None:
        return None, len(kept)
    values = column.take(take).to_pylist()
    missing = sum(r is None for r in values)
    if missing:
        return None, missing
    ids = rows.column("id").take(take).to_pylist()
    lines = []
    for row_id, record, weight in zip(ids, values, train_weight[kept]):
        value = json.loads(record)  # written by the loaders with json.dumps: data, never code
        value = value if isinstance(value, dict) else {"messages": value}
        value.update(sot_id=row_id, sot_weight=float(weight))
        lines.append(json.dumps(value, ensure_ascii=False))
    return "\n".join(lines) + "\n", 0
