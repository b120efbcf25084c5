"""Load fine-tuning data from local files into a table of canonical rows (`LOADED_SCHEMA`).

Formats: JSONL (``.jsonl``, ``.ndjson``); JSON (``.json``): a list of objects, an object wrapping
one list of objects (``{"data": [...]}``) or column lists (``{"instructions": [...], "inputs": []}``);
CSV/TSV, skipping leading ``# ...`` comment lines as in PyRIT files; Parquet; a Hugging Face
``datasets`` folder (``save_to_disk`` output, or a folder of data files); ``hf:NAME`` for a Hub
dataset. Text formats may be gzip-compressed (``.jsonl.gz``). Dataset scripts need datasets < 4.

Layout detection matches field names case-insensitively. Fields named in a `FieldMap` win; the
rest are detected from the fields any row fills, first match wins:

1. ``prompt`` + ``response``
2. ``instruction`` + ``output``, with ``input`` appended after a blank line when non-empty
3. ``instruction`` + ``response``, with ``context`` appended (Dolly)
4. ``messages``: ``{role, content}`` turns; prompt = the user turns before the last assistant
   turn, joined by blank lines; response = the last assistant turn
5. ``conversations``: the same, ShareGPT style (``{from, value}``, human/gpt roles)
6. ``user`` + ``assistant``; 7. ``question`` + ``answer``; 8. ``goal`` + ``target``;
   9. ``query`` + ``response``; 10. ``prompt`` + ``completion``;
   11. ``objective`` + ``assistant_response`` (PyRIT scorer sets)
12. prompt only, with an empty response: ``prompt``, ``instruction`` (+ ``input``), ``question``,
    ``goal``, ``query``, ``user``, ``objective``, and last of all ``text``

Prompt-only mode is for files that have no response field at all (lists of harmful prompts, say).
A file that has a response but never fills it is an error, not prompt-only data: a response
field that is null or blank in every row, or a chat without an assistant turn (the error names
the row, the field and the roles it found). `sot_core.curate.pipeline.load_inputs` also refuses
a prompt-only pool or refusal anchor: their responses are what fine-tuning learns.

Files must be UTF-8 (a byte-order mark is skipped). UTF-16/UTF-32 files and binary files fail
naming what they are; stray bytes that are not UTF-8 fail naming the row and field holding them.

Prompts wrapped in the Alpaca template ("Below is an instruction that describes a task...") are
unwrapped to instruction (+ input), so the same task compares equal with or without it.

Rows are numbered from 1 in errors: the line number for JSONL; the data row number for CSV/TSV
(header, comment and blank lines not counted); the item number for JSON, Parquet and datasets.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa

from sot_core.data.files import (
    SURROGATE, csv_records, json_records, jsonl_records, not_utf8, parquet_records, printable, read_text, type_name,
)
from sot_core.data.hub import hf_records
from sot_core.data.layouts import ROW_FIELDS, FieldMap, Layout, resolve_layout
from sot_core.data.schema import LOADED_SCHEMA, content_hash
from sot_core.errors import InputError

FORMATS = ("jsonl", "json", "csv", "tsv", "parquet", "hf")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
                   ".parquet": "parquet", ".pq": "parquet", ".py": "hf"}
_USER_ROLES = {"user", "human"}
_ASSISTANT_ROLES = {"assistant", "gpt", "model", "bot", "chatgpt"}

_ALPACA_TEMPLATE = re.compile(
    r"\ABelow is an instruction that describes a task\b[^\n]*\n\s*"
    r"### Instruction:[ \t]*\n(?P<instruction>.*?)"
    r"(?:\n\s*### Input:[ \t]*\n(?P<input>.*?))?"
    r"\n\s*### Response:\s*\Z",
    re.DOTALL,
)


def unwrap_alpaca_template(text: str) -> str:
    """Return the instruction (+ blank line + input) of an Alpaca-templated prompt, else `text` stripped."""
    match = _ALPACA_TEMPLATE.match(text.strip())
    if match is None:
        return text.strip()
    return "\n\n".join(p for p in (match["instruction"].strip(), (match["input"] or "").strip()) if p)


def canonical_prompt(instruction: str, extra: str = "") -> str:
    """The prompt text ingestion stores: the unwrapped instruction, a blank line, the input.

    One rule for every place that turns an (instruction, input) row into a prompt, so that
    training, evaluation and benchmarks see the same text as curation.
    """
    return "\n\n".join(p for p in (unwrap_alpaca_template(instruction), extra.strip()) if p)


def load_rows(source: str, *, fields: FieldMap | None = None, fmt: str | None = None,
              source_name: str | None = None, split: str = "train", fields_if_present: bool = False) -> pa.Table:
    """Read a dataset into a table with LOADED_SCHEMA: ROW_SCHEMA (id, prompt, response, source,
    content_hash) and each row's input record as JSON text (``record``).

    Parameters
    ----------
    source : str
        A file path, a Hugging Face datasets folder, or ``hf:NAME`` for a Hub dataset.
    fields : FieldMap, optional
        Explicit field names; fields not named are detected (see the module docstring).
    fmt : str, optional
        One of FORMATS; overrides detection from the file extension.
    source_name : str, optional
        Value of the ``source`` column; defaults to the file name without its extensions.
    split : str
        Split to read from a Hugging Face dataset; ignored for plain files.
    fields_if_present : bool
        Apply `fields` only when the rows fill at least one of the named fields, else detect the
        layout: for inputs read beside the one the names were written for (a bundled harmful
        reference in prompt/response next to a chat pool). A file with some of the named fields
        but not all is still an error, naming the missing one.

    Returns
    -------
    pyarrow.Table
        One row per record, in file order, texts stripped of surrounding whitespace. Ids come from
        the id field (any scalar, as text) or else are ``"h-"`` + 16 hex digits of the content
        hash, with ``-2``, ``-3``... for repeats of identical rows, so they are stable across runs
        and formats.

    Raises
    ------
    InputError
        For any bad input, naming the file, the 1-based row (line number for JSONL, data row
        number for CSV/TSV, item number otherwise) and the field. No data is returned partially.
    """
    records = _read_records(source, fmt, split)
    fields = fields or FieldMap()
    if fields_if_present and not _fills_any(records, fields):
        fields = FieldMap()
    return _rows(source, records, fields, source_name)


def load_labels(source: str, label_field: str, *, id_field: str | None = None, fields: FieldMap | None = None,
                fmt: str | None = None, split: str = "train", rows_without_ids: bool = False) -> dict[str, object]:
    """Map each row id to the row's `label_field` value (field names are case-insensitive).

    Parameters
    ----------
    source, fields, fmt, split
        As for `load_rows`.
    label_field : str
        The field holding the label, e.g. ``flag`` in the fine-tuning mixes.
    id_field : str, optional
        None: the file is a dataset and the ids are the ones `load_rows` assigns to its rows.
        A name: the file needs only that field and the label (an ``id,label`` file); the ids are
        its values, as text.
    rows_without_ids : bool
        With `id_field` named but held by no row, read the file as a dataset (ids as for None):
        a labelled copy of the pool, such as a fine-tuning mix with its ``flag``, labels itself.

    Raises
    ------
    InputError
        Naming the row when a row lacks the label (or the id) field or repeats an id, and for any
        bad input `load_rows` refuses.
    """
    records = _read_records(source, fmt, split)
    if not records:
        raise InputError(source, "the file holds no rows")
    fallback = id_field is not None and rows_without_ids and not any(id_field.lower() in r for _, r in records)
    if id_field is None or fallback:
        try:
            ids = _rows(source, records, fields or FieldMap(), None).column("id").to_pylist()
        except InputError:
            if not fallback:
                raise
            # neither an id,label file nor a labelled dataset: name what is missing
            raise InputError(source, "the id field is missing (a labels file without ids must be a labelled "
                             "copy of the pool)", row=records[0][0], field=id_field) from None
    else:
        ids = [_id_text(source, row, record.get(id_field.lower()), id_field) for row, record in records]
    labels: dict[str, object] = {}
    row_of_id: dict[str, int] = {}
    for row_id, (row, record) in zip(ids, records):
        if label_field.lower() not in record:
            raise InputError(source, "the label field is missing", row=row, field=label_field)
        if row_id in row_of_id:  # two labels for one row: which one holds is anyone's guess
            raise InputError(source, f"duplicate id {row_id!r}, also used in row {row_of_id[row_id]}", row=row,
                             field=id_field)
        row_of_id[row_id] = row
        labels[row_id] = record[label_field.lower()]
    return labels


def rows_from_records(source: str, records: list[dict], *, fields: FieldMap | None = None,
                      source_name: str | None = None) -> pa.Table:
    """`load_rows` for records already in memory (e.g. rows of a database table), item i as row i + 1.

    Layout detection, validation and ids are exactly those of a file holding the same records;
    errors name `source`.
    """
    numbered = _lowercase_keys(source, list(enumerate(records, start=1)))
    return _rows(source, numbered, fields or FieldMap(), source_name)


def _fills_any(records: list[tuple[int, dict]], fields: FieldMap) -> bool:
    """Whether any row fills (non-null) any field `fields` names."""
    named = {name.lower() for name in vars(fields).values() if name}
    return any(record.get(name) is not None for _, record in records for name in named)


def _rows(source: str, records: list[tuple[int, dict]], fields: FieldMap, source_name: str | None) -> pa.Table:
    """The LOADED_SCHEMA table of numbered records (see `load_rows` for ids)."""
    if not records:
        raise InputError(source, "the file holds no rows")
    layout, id_key = resolve_layout(source, records, fields)
    ids, prompts, responses, hashes, originals = [], [], [], [], []
    row_of_id: dict[str, int] = {}
    for row, record in records:
        prompt, response = _extract_pair(source, row, record, layout)
        digest = content_hash(prompt, response)
        row_id = _row_id(source, row, record, id_key, digest, row_of_id)
        row_of_id[row_id] = row
        ids.append(row_id)
        prompts.append(prompt)
        responses.append(response)
        hashes.append(digest)
        originals.append(_record_json(record))
    response_key = layout.messages or layout.response
    if response_key is not None and not any(responses):
        raise InputError(source, f"the response is empty in every row ({len(responses)} rows); a file of prompts "
                         "alone has no response field", row=records[0][0], field=response_key)
    columns = [ids, prompts, responses, [source_name or _default_source_name(source)] * len(ids), hashes, originals]
    return pa.Table.from_arrays([pa.array(c, pa.string()) for c in columns], schema=LOADED_SCHEMA)


def _row_id(source: str, row: int, record: dict, id_key: str | None, digest: str, taken: dict[str, int]) -> str:
    """The row's id field as text (unique in the file), or ``h-`` + 16 hex digits of its content
    hash, numbered ``-2``, ``-3``... for repeats of identical content in file order."""
    if id_key is not None:
        row_id = _id_text(source, row, record.get(id_key), id_key)
        if row_id in taken:
            raise InputError(source, f"duplicate id {row_id!r}, also used in row {taken[row_id]}",
                             row=row, field=id_key)
        return row_id
    row_id, copies = "h-" + digest[:16], 1
    while row_id in taken:
        copies += 1
        row_id = f"h-{digest[:16]}-{copies}"
    return row_id


# ---------------------------------------------------------------- reading files into records
def _read_records(source: str, fmt: str | None, split: str) -> list[tuple[int, dict]]:
    """Return (1-based row number, record with lower-cased keys) for every row."""
    if fmt is not None and fmt.lower() not in FORMATS:
        raise InputError(source, f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if source.startswith("hf:"):
        return _lowercase_keys(source, hf_records(source, source[3:], split, hub=True))
    path = Path(source)
    if not path.exists():
        raise InputError(source, "no such file or folder")
    fmt = (fmt or _format_from_name(source, path)).lower()
    if fmt == "hf":
        return _lowercase_keys(source, hf_records(source, source, split, hub=False))
    if fmt == "parquet":
        return _lowercase_keys(source, parquet_records(source, path))
    text, undecodable = read_text(source, path)
    if fmt == "jsonl":
        records = _lowercase_keys(source, jsonl_records(source, text))
    elif fmt == "json":
        records = _lowercase_keys(source, json_records(source, text, ROW_FIELDS))
    else:
        records = _lowercase_keys(source, csv_records(source, text, "\t" if fmt == "tsv" else ","))
    if undecodable:
        for row, record in records:
            for key, value in record.items():
                problem = not_utf8(key) or not_utf8(json.dumps(value, ensure_ascii=False))
                if problem:
                    raise InputError(source, problem, row=row, field=printable(key))
        raise InputError(source, "holds bytes that are not valid UTF-8 outside any row; re-save it as UTF-8")
    return records


def _format_from_name(source: str, path: Path) -> str:
    if path.is_dir():
        return "hf"
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffixes[-1]]
    raise InputError(source, "unknown file format; name it .jsonl, .json, .csv, .tsv or .parquet, or "
                     "pass the format explicitly")


def _lowercase_keys(source: str, records: list[tuple[int, object]]) -> list[tuple[int, dict]]:
    lowered = []
    for row, record in records:
        original = record
        if _is_chat(record):  # a bare list of turns (e.g. the LLMs-Finetuning-Safety AOA data)
            record = {"messages": record}
        if not isinstance(record, dict):
            raise InputError(source, f"expected an object (a row with named fields), got {type_name(record)}",
                             row=row)
        keys: dict[str, str] = {}
        for key in record:
            if key.lower() in keys:
                raise InputError(source, f"fields {keys[key.lower()]!r} and {key!r} differ only in case",
                                 row=row, field=key)
            keys[key.lower()] = key
        lowered.append((row, _Record({key.lower(): value for key, value in record.items()}, original)))
    return lowered


class _Record(dict):
    """A record with lower-cased field names (what layout detection reads) that remembers the
    record as the file held it (`original`: field names as spelt, a bare list of turns as a list)."""

    def __init__(self, lowered: dict, original):
        super().__init__(lowered)
        self.original = original


def _record_json(record: dict) -> str:
    """The input row as JSON text, for `RECORD_FIELD`; values JSON lacks (timestamps, bytes) as text."""
    return json.dumps(getattr(record, "original", record), ensure_ascii=False, default=str)


# ---------------------------------------------------------------- row extraction
def _extract_pair(source: str, row: int, record: dict, layout: Layout) -> tuple[str, str]:
    if layout.messages is not None:
        prompt, response = _chat_pair(source, row, record.get(layout.messages), layout.messages)
    else:
        prompt = _text(source, row, record.get(layout.prompt), layout.prompt)
        response = "" if layout.response is None else _text(source, row, record.get(layout.response),
                                                             layout.response)
        extra = record.get(layout.input) if layout.input else None
        extra = "" if extra is None else _text(source, row, extra, layout.input)
        prompt = canonical_prompt(prompt, extra)
    if not prompt:
        raise InputError(source, "the prompt is empty", row=row, field=layout.messages or layout.prompt)
    return prompt, response


def _chat_pair(source: str, row: int, turns, key: str) -> tuple[str, str]:
    """Prompt = the user turns before the last assistant turn; response = that assistant turn."""
    if turns is None:
        raise InputError(source, "the field is missing (other rows have it)", row=row, field=key)
    if not _is_chat(turns):
        raise InputError(source, f"expected a list of chat turns with a role and content, got "
                         f"{type_name(turns)}", row=row, field=key)
    roles, contents = [], []
    for i, turn in enumerate(turns):
        content = turn.get("content", turn.get("value"))
        if isinstance(content, list):  # OpenAI-style content parts: keep the text parts
            content = "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
        roles.append(str(turn.get("role", turn.get("from", ""))).lower())
        contents.append(_text(source, row, content, f"{key}[{i}].content"))
    found = ", ".join(dict.fromkeys(roles))
    last = max((i for i, role in enumerate(roles) if role in _ASSISTANT_ROLES), default=None)
    if last is None:
        raise InputError(source, f"the chat has no assistant turn (roles: {found}), so no response; the response "
                         f"is the last turn with role {' or '.join(sorted(_ASSISTANT_ROLES))}", row=row, field=key)
    if not any(role in _USER_ROLES for role in roles[:last]):
        raise InputError(source, f"the chat has no user turn before its last assistant turn (roles: {found}); "
                         f"the prompt is the turns with role {' or '.join(sorted(_USER_ROLES))}", row=row, field=key)
    users = [c for r, c in zip(roles[:last], contents[:last]) if r in _USER_ROLES and c]
    return "\n\n".join(unwrap_alpaca_template(c) for c in users), contents[last]


def _is_chat(value) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(turn, dict) and ("role" in turn or "from" in turn) for turn in value))


def _text(source: str, row: int, value, key: str) -> str:
    if value is None:
        raise InputError(source, "the field is missing (other rows have it)", row=row, field=key)
    if not isinstance(value, str):
        raise InputError(source, f"expected text, got {type_name(value)}", row=row, field=key)
    if SURROGATE.search(value):
        raise InputError(source, not_utf8(value), row=row, field=key)
    return value.strip()


def _id_text(source: str, row: int, value, key: str) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 7 and 7.0 (an integer id column that went through float) are one id
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if value is None:
        raise InputError(source, "the id is missing", row=row, field=key)
    if not isinstance(value, str):
        raise InputError(source, f"expected a text or number id, got {type_name(value)}", row=row, field=key)
    if not value.strip():
        raise InputError(source, "the id is empty", row=row, field=key)
    if SURROGATE.search(value):
        raise InputError(source, not_utf8(value), row=row, field=key)
    return value.strip()


def _default_source_name(source: str) -> str:
    if source.startswith("hf:"):
        return source[3:]
    name = Path(source).name
    while Path(name).suffix.lower() in {*_SUFFIX_FORMATS, ".gz"}:
        name = Path(name).stem
    return name
