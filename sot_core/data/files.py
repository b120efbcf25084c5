"""Parsing local files into numbered records: text (gzip or not), JSONL, JSON, CSV/TSV, Parquet.

Each parser returns ``(row number, record)`` pairs, numbered from 1 as a person counts them (see
`sot_core.data.loaders` for what the numbers mean per format), and raises `InputError` naming the
file and row for anything malformed.
"""
from __future__ import annotations

import codecs
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
    """Return the file's text and whether it held bytes that are not UTF-8.

    A file in another Unicode encoding (UTF-16 or UTF-32, with or without a byte-order mark, as
    Excel's "Unicode text" and PowerShell write) or a binary file fails here, naming what it is,
    instead of as broken JSON or CSV at row 1. Stray non-UTF-8 bytes (Latin-1 text, say) are kept
    as lone surrogates so that the row and field holding them can be named (`not_utf8`).
    """
    try:
        if path.is_dir():
            raise InputError(source, "cannot read the file: it is a folder")
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":  # gzip magic: .jsonl.gz and friends
            data = gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise InputError(source, f"cannot read the file: {exc}") from None
    if not data.strip():
        raise InputError(source, "the file is empty")
    problem = _other_encoding(data)
    if problem is not None:
        raise InputError(source, problem)
    try:
        return data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return data.decode("utf-8-sig", errors="surrogateescape"), True


_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32 (little-endian, with a byte-order mark)"),
         (codecs.BOM_UTF32_BE, "UTF-32 (big-endian, with a byte-order mark)"),
         (codecs.BOM_UTF16_LE, "UTF-16 (little-endian, with a byte-order mark)"),
         (codecs.BOM_UTF16_BE, "UTF-16 (big-endian, with a byte-order mark)"))


def _other_encoding(data: bytes) -> str | None:
    """Why a file is not UTF-8 text, judged from its byte-order mark or its NUL bytes; None if it may be."""
    encoding = _encoding_of(data)
    if encoding == "binary":
        return ("the file holds NUL bytes: binary data, or UTF-16/UTF-32 text, not UTF-8 text; re-save it "
                "as UTF-8 text")
    return None if encoding is None else f"the file is {encoding}, not UTF-8; re-save it as UTF-8"


def _encoding_of(data: bytes) -> str | None:
    """The encoding named by a byte-order mark or by where NUL bytes fall, "binary", or None (no sign)."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name
    sample = data[:4096]
    if b"\x00" not in sample:
        return None  # text files in UTF-8 hold no NUL bytes; UTF-16/32 text of Latin script is full of them
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    quads = [sample[i::4].count(0) for i in range(4)]
    n = max(len(sample) // 4, 1)
    if sum(q > 0.6 * n for q in quads) == 3:  # three NULs of every four bytes: ASCII in UTF-32
        return "UTF-32 (no byte-order mark)"
    if odd > 0.3 * len(sample) / 2 and even < 0.05 * len(sample) / 2:
        return "UTF-16 (little-endian, no byte-order mark)"
    if even > 0.3 * len(sample) / 2 and odd < 0.05 * len(sample) / 2:
        return "UTF-16 (big-endian, no byte-order mark)"
    return "binary"


def not_utf8(text: str) -> str | None:
    """Why `text` (decoded with surrogateescape) is not UTF-8: its first stray byte and a guess."""
    match = SURROGATE.search(text)
    if match is None:
        return None
    code = ord(match.group()) - 0xDC00
    if not 0x80 <= code <= 0xFF:
        return "holds text that is not valid UTF-8"
    guess = bytes([code]).decode("cp1252", errors="replace")
    return (f"holds bytes that are not valid UTF-8 (byte 0x{code:02x}, {guess!r} in Latin-1/Windows-1252: "
            "is the file in that encoding?); re-save the file as UTF-8")


def printable(text: str) -> str:
    """`text` with stray (surrogate-escaped) bytes shown as U+FFFD, safe to print in a message."""
    return SURROGATE.sub("\ufffd", text)


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
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    return {list: "a list", dict: "an object", str: "text"}.get(type(value), type(value).__name__)
