"""The incoming DuckDB table of the nightly re-curation: rows past a watermark column, as canonical rows.

A producer appends rows to a table with a monotonically increasing column (an arrival sequence
number or a timestamp); each night reads the rows past the largest value already consumed
(`sot_core.curate.incremental` keeps that value in its watermark).
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from sot_core.data.loaders import FieldMap, rows_from_records
from sot_core.errors import InputError, StoreError


def parse_table_spec(spec: str) -> tuple[str, str]:
    """`path/to/db.duckdb:table` -> (path, table)."""
    path, sep, table = spec.rpartition(":")
    if not sep or not path or not table.replace("_", "").replace(".", "").isalnum():
        raise InputError(spec, "an incoming table is given as PATH.duckdb:TABLE")
    return path, table


def read_table_rows(spec: str, column: str, after) -> tuple[list[dict], object]:
    """Rows of a DuckDB table with `column` > `after` (all rows when None), and the new maximum.

    Opened read-only, so the producer must not hold the database open for writing meanwhile
    (DuckDB allows one writing process per file).
    """
    import duckdb

    path, table = parse_table_spec(spec)
    if not Path(path).exists():
        raise InputError(path, "the incoming DuckDB database does not exist")
    try:
        con = duckdb.connect(path, read_only=True)
    except duckdb.Error as err:
        raise StoreError(f"{path}: cannot open the incoming database read-only ({err}); "
                         "is a producer holding it open for writing?") from None
    try:
        cols = [r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()]
        if column not in cols:
            raise InputError(spec, f"the table has no watermark column (has {', '.join(cols)})", field=column)
        where, params = (f'WHERE "{column}" > ?', [after]) if after is not None else ("", [])
        result = con.execute(f'SELECT * FROM "{table}" {where} ORDER BY "{column}"', params)
        names = [d[0] for d in result.description]
        records = [dict(zip(names, r)) for r in result.fetchall()]
    finally:
        con.close()
    high = records[-1][column] if records else after
    if hasattr(high, "isoformat"):
        high = high.isoformat()
    return records, high


def rows_from_table(records: list[dict], column: str, spec: str, fields: FieldMap | None) -> pa.Table:
    """Canonical rows of table records, validated and given ids exactly as a file of them would be.

    The watermark column is dropped, and a JSON round trip turns database values (timestamps,
    decimals) into the text a JSONL export of the same rows would hold.
    """
    plain = [json.loads(json.dumps({k: v for k, v in r.items() if k != column}, default=str)) for r in records]
    return rows_from_records(spec, plain, fields=fields, source_name=parse_table_spec(spec)[1])
