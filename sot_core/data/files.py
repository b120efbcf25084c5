"""Parsing local files into numbered records: text (gzip or not), JSONL, JSON, CSV/TSV, Parquet.

Each parser returns ``(row number, record)`` pairs, numbered from 1 as a person counts them (see
`sot_core.data.loaders` for what the numbers mean per format), and raises `InputError` naming the
file and row for anything malformed.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import re
from pathlib import Path

import pyarrow as pa

from sot_core.errors import InputError

# Bytes that are not UTF-8 survive decoding as lone surrogates (errors="surrogateescape"), so
# they can be traced to the row and field holding them instead of failing the file as a whole.
SURROGATE = re.compile("[\ud800-\udfff]")
_LEADING_COMMENTS = re.compile(r"(?:[ \t]*(?:#[^\n]*)?\r?\n)*")


def read_text(source: str, path: Path) -> tuple[str, bool]:
    """Return the file's text and whether it held bytes that are not UTF-8."""
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":  # gzip magic: .jsonl.gz and friends
            data = gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise InputError(source, f"cannot read the file: {exc}") from None
    if not data.strip():
        raise InputError(source, "the file is empty")
    try:
        return data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return data.decode("utf-8-sig", errors="surrogateescape"), True


def jsonl_records(source: str, text: str) -> list[tuple[int, object]]:
    """One record per non-blank line, numbered by line."""
    records = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other line separators
    for line_number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                records.append((line_number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InputError(source, f"broken JSON: {exc.msg} at column {exc.colno}", row=line_number) from None
    return records


def json_records(source: str, text: str, singular: set[str]) -> list[tuple[int, object]]:
    """Items of a JSON list, of the one list in an object, or rows zipped from column lists.

    `singular` names the row fields whose plural spelling marks a column list (see
    `unwrap_json_object`).
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(source, f"broken JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if isinstance(data, dict):
        data = unwrap_json_object(source, data, singular)
    if not isinstance(data, list):
        raise InputError(source, f"expected a JSON list of objects, got {type_name(data)}")
    return list(enumerate(data, start=1))


def unwrap_json_object(source: str, data: dict, singular: set[str]) -> list:
    """Find the rows in {"data": [{...}, ...]} or in column lists {"prompts": [...], ...}.

    Column lists are named in the plural ("instructions"); a key that is a name of `singular`
    (or ``id``) plus an "s" becomes that singular name in the rows.
    """
    lists = {key: value for key, value in data.items() if isinstance(value, list) and value}
    if not lists:
        raise InputError(source, "the JSON object holds no list of rows")
    if len(lists) == 1 and all(isinstance(item, dict) for item in next(iter(lists.values()))):
        return next(iter(lists.values()))
    length = max(len(column) for column in lists.values())
    for key, column in lists.items():
        if len(column) != length:
            raise InputError(source, f"column list has {len(column)} items, others have {length}", field=key)
    names = {key: key[:-1] if key[-1:].lower() == "s" and key[:-1].lower() in singular | {"id"} else key
             for key in lists}
    return [{names[key]: column[i] for key, column in lists.items()} for i in range(length)]


def csv_records(source: str, text: str, delimiter: str = ",") -> list[tuple[int, dict]]:
    """Rows of CSV/TSV text as dicts keyed by the (stripped) header, numbered by data row.

    Leading blank and ``# ...`` comment lines are skipped (PyRIT puts a version line before the
    header); blank rows are not data rows. A malformed file fails with the row that breaks it:
    an unterminated quote, a row with the wrong number of values, a repeated header.
    """
    text = text[_LEADING_COMMENTS.match(text).end():]
    csv.field_size_limit(2**31 - 1)  # long model responses exceed the 128 KiB default
    # strict: an unterminated quote must fail, not swallow the rest of the file into one cell
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header, row, records = None, 0, []
    try:
        header = next(reader, None)
        if not header:
            raise InputError(source, "the file has no CSV header row")
        header = _csv_header(source, header)
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue  # blank lines are not data rows
            row += 1
            if [cell.strip() for cell in cells] == header:
                raise InputError(source, "the header appears again inside the data (two CSV files "
                                 "joined together?)", row=row)
            if len(cells) != len(header):
                raise InputError(source, f"the row has {len(cells)} values but the header names "
                                 f"{len(header)} columns", row=row)
            records.append((row, dict(zip(header, cells))))
    except csv.Error as exc:
        raise InputError(source, f"malformed CSV: {exc}", row=row + 1 if header else None) from None
    return records


def _csv_header(source: str, header: list[str]) -> list[str]:
    # An unnamed index column (pandas' to_csv) gets a usable name instead of ""
    header = [name.strip() or f"column_{i}" for i, name in enumerate(header, start=1)]
    lowered = [name.lower() for name in header]
    for i, name in enumerate(lowered):
        if name in lowered[:i]:
            raise InputError(source, "the CSV header names this column twice", field=header[i])
    return header


def parquet_records(source: str, path: Path) -> list[tuple[int, object]]:
    """Rows of a Parquet file as dicts, numbered from 1."""
    import pyarrow.parquet as pq

    try:
        return list(enumerate(pq.read_table(path).to_pylist(), start=1))
    except (OSError, pa.ArrowException) as exc:
        raise InputError(source, f"cannot read Parquet: {exc}") from None


def type_name(value) -> str:
    """How an error message names the JSON type of `value`."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    return {list: "a list", dict: "an object", str: "text"}.get(type(value), type(value).__name__)
