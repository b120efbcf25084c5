"""Load fine-tuning data from local files into a ROW_SCHEMA table.

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

Prompts wrapped in the Alpaca template ("Below is an instruction that describes a task...") are
unwrapped to instruction (+ input), so the same task compares equal with or without it.

Rows are numbered from 1 in errors: the line number for JSONL; the data row number for CSV/TSV
(header, comment and blank lines not counted); the item number for JSON, Parquet and datasets.
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import re
import socket
from dataclasses import dataclass, field, fields as dataclass_fields, replace
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa

from sot_core.errors import InputError
from sot_core.data.schema import ROW_SCHEMA, content_hash

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
# Bytes that are not UTF-8 survive decoding as lone surrogates (errors="surrogateescape"), so
# they can be traced to the row and field holding them instead of failing the file as a whole.
_SURROGATE = re.compile("[\ud800-\udfff]")
_LEADING_COMMENTS = re.compile(r"(?:[ \t]*(?:#[^\n]*)?\r?\n)*")


@dataclass(frozen=True)
class FieldMap:
    """Explicit field names (case-insensitive); each one given overrides layout detection."""

    prompt: str | None = field(default=None, metadata={"help": "field holding the prompt or instruction"})
    response: str | None = field(default=None, metadata={"help": "field holding the response (default: "
                                                          "detected; none means an empty response)"})
    id: str | None = field(default=None, metadata={"help": "field holding a unique row id (default: 'id' "
                                                    "if present, else one derived from the content)"})
    input: str | None = field(default=None, metadata={"help": "extra context field appended to the prompt "
                                                       "after a blank line"})
    messages: str | None = field(default=None, metadata={"help": "field holding a chat: a list of "
                                                          "{role, content} turns"})

    @staticmethod
    def help() -> dict[str, str]:
        """Help text per field, e.g. for building command-line options."""
        return {f.name: f.metadata["help"] for f in dataclass_fields(FieldMap)}


@dataclass(frozen=True)
class _Layout:
    """Which (lower-cased) fields hold the prompt, response and input, or the chat turns."""

    prompt: str | None = None
    response: str | None = None
    input: str | None = None
    messages: str | None = None


# Detection order (see the module docstring). Prompt-only layouts come last so that they never
# hide a response field.
_LAYOUTS = [
    _Layout("prompt", "response"), _Layout("instruction", "output", "input"),
    _Layout("instruction", "response", "context"),
    _Layout(messages="messages"), _Layout(messages="conversations"),
    _Layout("user", "assistant"), _Layout("question", "answer"), _Layout("goal", "target"),
    _Layout("query", "response"), _Layout("prompt", "completion"), _Layout("objective", "assistant_response"),
    *(_Layout(name, input="input" if name == "instruction" else None)
      for name in ("prompt", "instruction", "question", "goal", "query", "user", "objective", "text")),
]


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
              source_name: str | None = None, split: str = "train") -> pa.Table:
    """Read a dataset into a table with ROW_SCHEMA (id, prompt, response, source, content_hash).

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
    return _load(source, fields or FieldMap(), fmt, source_name, split)[0]


def load_labels(source: str, label_field: str, *, fields: FieldMap | None = None,
                fmt: str | None = None, split: str = "train") -> dict[str, object]:
    """Map each row id, as `load_rows` assigns it, to the row's `label_field` value (case-insensitive).

    Raises InputError naming the row when a row lacks the field, e.g. ``flag`` in the fine-tuning mixes.
    """
    table, records = _load(source, fields or FieldMap(), fmt, None, split)
    labels: dict[str, object] = {}
    for row_id, (row, record) in zip(table.column("id").to_pylist(), records):
        if label_field.lower() not in record:
            raise InputError(source, "the label field is missing", row=row, field=label_field)
        labels[row_id] = record[label_field.lower()]
    return labels


def _load(source: str, fields: FieldMap, fmt: str | None, source_name: str | None, split: str):
    records = _read_records(source, fmt, split)
    if not records:
        raise InputError(source, "the file holds no rows")
    layout, id_key = _resolve_layout(source, records, fields)
    ids, prompts, responses, hashes = [], [], [], []
    row_of_id: dict[str, int] = {}
    for row, record in records:
        prompt, response = _extract_pair(source, row, record, layout)
        digest = content_hash(prompt, response)
        if id_key is not None:
            row_id = _id_text(source, row, record.get(id_key), id_key)
            if row_id in row_of_id:
                raise InputError(source, f"duplicate id {row_id!r}, also used in row {row_of_id[row_id]}",
                                 row=row, field=id_key)
        else:
            row_id, copies = "h-" + digest[:16], 1
            while row_id in row_of_id:  # identical content: number the copies in file order
                copies += 1
                row_id = f"h-{digest[:16]}-{copies}"
        row_of_id[row_id] = row
        ids.append(row_id)
        prompts.append(prompt)
        responses.append(response)
        hashes.append(digest)
    columns = [ids, prompts, responses, [source_name or _default_source_name(source)] * len(ids), hashes]
    return pa.Table.from_arrays([pa.array(c, pa.string()) for c in columns], schema=ROW_SCHEMA), records


# ---------------------------------------------------------------- reading files into records
def _read_records(source: str, fmt: str | None, split: str) -> list[tuple[int, dict]]:
    """Return (1-based row number, record with lower-cased keys) for every row."""
    if fmt is not None and fmt.lower() not in FORMATS:
        raise InputError(source, f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if source.startswith("hf:"):
        return _lowercase_keys(source, _hf_records(source, source[3:], split, hub=True))
    path = Path(source)
    if not path.exists():
        raise InputError(source, "no such file or folder")
    fmt = (fmt or _format_from_name(source, path)).lower()
    if fmt == "hf":
        return _lowercase_keys(source, _hf_records(source, source, split, hub=False))
    if fmt == "parquet":
        return _lowercase_keys(source, _parquet_records(source, path))
    text, undecodable = _read_text(source, path)
    if fmt == "jsonl":
        records = _lowercase_keys(source, _jsonl_records(source, text))
    elif fmt == "json":
        records = _lowercase_keys(source, _json_records(source, text))
    else:
        records = _lowercase_keys(source, _csv_records(source, text, "\t" if fmt == "tsv" else ","))
    if undecodable:
        for row, record in records:
            for key, value in record.items():
                if _SURROGATE.search(key) or _SURROGATE.search(json.dumps(value, ensure_ascii=False)):
                    raise InputError(source, "holds bytes that are not valid UTF-8; re-save the file as "
                                     "UTF-8", row=row, field=key)
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


def _read_text(source: str, path: Path) -> tuple[str, bool]:
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


def _jsonl_records(source: str, text: str) -> list[tuple[int, object]]:
    records = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other line separators
    for line_number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                records.append((line_number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InputError(source, f"broken JSON: {exc.msg} at column {exc.colno}", row=line_number) from None
    return records


def _json_records(source: str, text: str) -> list[tuple[int, object]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(source, f"broken JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if isinstance(data, dict):
        data = _unwrap_json_object(source, data)
    if not isinstance(data, list):
        raise InputError(source, f"expected a JSON list of objects, got {_type_name(data)}")
    return list(enumerate(data, start=1))


def _unwrap_json_object(source: str, data: dict) -> list:
    """Find the rows in {"data": [{...}, ...]} or in column lists {"prompts": [...], ...}."""
    lists = {key: value for key, value in data.items() if isinstance(value, list) and value}
    if not lists:
        raise InputError(source, "the JSON object holds no list of rows")
    if len(lists) == 1 and all(isinstance(item, dict) for item in next(iter(lists.values()))):
        return next(iter(lists.values()))
    length = max(len(column) for column in lists.values())
    for key, column in lists.items():
        if len(column) != length:
            raise InputError(source, f"column list has {len(column)} items, others have {length}", field=key)
    # Column lists are named in the plural ("instructions"); rows use the singular
    singular = {f for layout in _LAYOUTS for f in (layout.prompt, layout.response, layout.input) if f}
    names = {key: key[:-1] if key[-1:].lower() == "s" and key[:-1].lower() in singular | {"id"} else key
             for key in lists}
    return [{names[key]: column[i] for key, column in lists.items()} for i in range(length)]


def _csv_records(source: str, text: str, delimiter: str) -> list[tuple[int, object]]:
    text = text[_LEADING_COMMENTS.match(text).end():]  # PyRIT: "# dataset_version=..." before the header
    csv.field_size_limit(2**31 - 1)  # long model responses exceed the 128 KiB default
    # strict: an unterminated quote must fail, not swallow the rest of the file into one cell
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header, row, records = None, 0, []
    try:
        header = next(reader, None)
        if not header:
            raise InputError(source, "the file has no CSV header row")
        # An unnamed index column (pandas' to_csv) gets a usable name instead of ""
        header = [name.strip() or f"column_{i}" for i, name in enumerate(header, start=1)]
        lowered = [name.lower() for name in header]
        for i, name in enumerate(lowered):
            if name in lowered[:i]:
                raise InputError(source, "the CSV header names this column twice", field=header[i])
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


def _parquet_records(source: str, path: Path) -> list[tuple[int, object]]:
    import pyarrow.parquet as pq

    try:
        return list(enumerate(pq.read_table(path).to_pylist(), start=1))
    except (OSError, pa.ArrowException) as exc:
        raise InputError(source, f"cannot read Parquet: {exc}") from None


def _hf_records(source: str, name: str, split: str, hub: bool) -> list[tuple[int, object]]:
    import datasets

    try:
        with _offline_unless_hub_reachable(check_hub=hub):
            if not hub and (Path(name) / "dataset_dict.json").exists():  # DatasetDict.save_to_disk
                splits = datasets.load_from_disk(name)
                if split not in splits:
                    raise InputError(source, f"no split {split!r}; the folder has {', '.join(splits)}")
                dataset = splits[split]
            elif not hub and (Path(name) / "state.json").exists():  # Dataset.save_to_disk
                dataset = datasets.load_from_disk(name)
            else:
                dataset = datasets.load_dataset(name, split=split)
    except InputError:
        raise
    except Exception as exc:  # datasets raises many unrelated types for the same user mistake
        hint = ("; without network only datasets already in the local cache load: download it where "
                "there is network, or pass a local path") if hub else ""
        raise InputError(source, f"cannot load the Hugging Face dataset: {type(exc).__name__}: {exc}{hint}") from None
    return list(enumerate(dataset.to_list(), start=1))


@contextlib.contextmanager
def _offline_unless_hub_reachable(check_hub: bool):
    """Put the Hub clients in offline mode unless a Hub dataset is wanted and the Hub answers.

    Without network `datasets` retries for about half a minute before failing; offline mode fails
    at once and still serves the local cache. The flags are module globals read at call time, so
    they are set for this call only (not thread-safe, like the flags themselves).
    """
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    if not check_hub or saved[0] or not _hub_reachable(hub_constants.ENDPOINT):
        datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _hub_reachable(endpoint: str, timeout_s: float = 3.0) -> bool:
    url = urlsplit(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _lowercase_keys(source: str, records: list[tuple[int, object]]) -> list[tuple[int, dict]]:
    lowered = []
    for row, record in records:
        if _is_chat(record):  # a bare list of turns (e.g. the LLMs-Finetuning-Safety AOA data)
            record = {"messages": record}
        if not isinstance(record, dict):
            raise InputError(source, f"expected an object (a row with named fields), got {_type_name(record)}",
                             row=row)
        keys: dict[str, str] = {}
        for key in record:
            if key.lower() in keys:
                raise InputError(source, f"fields {keys[key.lower()]!r} and {key!r} differ only in case",
                                 row=row, field=key)
            keys[key.lower()] = key
        lowered.append((row, {key.lower(): value for key, value in record.items()}))
    return lowered


# ---------------------------------------------------------------- layout and row extraction
def _resolve_layout(source: str, records: list[tuple[int, dict]], fields: FieldMap) -> tuple[_Layout, str | None]:
    """Pick the layout and the id field from the fields that any row fills (not None)."""
    present = {key for _, record in records for key, value in record.items() if value is not None}
    named = {key: value.lower() for key, value in vars(fields).items() if value}
    for key, name in named.items():
        if name not in present:
            raise InputError(source, f"field not found; rows have: {', '.join(sorted(present))}",
                             field=getattr(fields, key))
    detected = next((replace(layout, input=layout.input if layout.input in present else None)
                     for layout in _LAYOUTS
                     if {layout.prompt, layout.response, layout.messages} - {None} <= present), None)
    id_key = named.get("id", "id" if "id" in present else None)
    if "messages" in named:
        return _Layout(messages=named["messages"]), id_key
    if {"prompt", "response", "input"} & set(named):
        base = detected if detected is not None and detected.messages is None else _Layout()
        # A detected input belongs to the detected prompt, so it goes when the prompt is named;
        # a detected response fits any prompt and stays.
        layout = _Layout(named.get("prompt", base.prompt), named.get("response", base.response),
                         named.get("input", None if "prompt" in named else base.input))
        if layout.prompt is not None:
            return layout, id_key
    elif detected is not None:
        return detected, id_key
    raise InputError(source, f"cannot tell which fields hold the prompt and response; rows have: "
                     f"{', '.join(sorted(present))}; name them in a field map")


def _extract_pair(source: str, row: int, record: dict, layout: _Layout) -> tuple[str, str]:
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
                         f"{_type_name(turns)}", row=row, field=key)
    roles, contents = [], []
    for i, turn in enumerate(turns):
        content = turn.get("content", turn.get("value"))
        if isinstance(content, list):  # OpenAI-style content parts: keep the text parts
            content = "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
        roles.append(str(turn.get("role", turn.get("from", ""))).lower())
        contents.append(_text(source, row, content, f"{key}[{i}].content"))
    last = max((i for i, role in enumerate(roles) if role in _ASSISTANT_ROLES), default=None)
    users = [c for r, c in zip(roles[:last], contents[:last]) if r in _USER_ROLES and c]
    return "\n\n".join(unwrap_alpaca_template(c) for c in users), "" if last is None else contents[last]


def _is_chat(value) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(turn, dict) and ("role" in turn or "from" in turn) for turn in value))


def _text(source: str, row: int, value, key: str) -> str:
    if value is None:
        raise InputError(source, "the field is missing (other rows have it)", row=row, field=key)
    if not isinstance(value, str):
        raise InputError(source, f"expected text, got {_type_name(value)}", row=row, field=key)
    if _SURROGATE.search(value):
        raise InputError(source, "holds bytes that are not valid UTF-8", row=row, field=key)
    return value.strip()


def _id_text(source: str, row: int, value, key: str) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 7 and 7.0 (an integer id column that went through float) are one id
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if value is None:
        raise InputError(source, "the id is missing", row=row, field=key)
    if not isinstance(value, str):
        raise InputError(source, f"expected a text or number id, got {_type_name(value)}", row=row, field=key)
    if not value.strip():
        raise InputError(source, "the id is empty", row=row, field=key)
    if _SURROGATE.search(value):
        raise InputError(source, "holds bytes that are not valid UTF-8", row=row, field=key)
    return value.strip()


def _type_name(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    return {list: "a list", dict: "an object", str: "text"}.get(type(value), type(value).__name__)


def _default_source_name(source: str) -> str:
    if source.startswith("hf:"):
        return source[3:]
    name = Path(source).name
    while Path(name).suffix.lower() in {*_SUFFIX_FORMATS, ".gz"}:
        name = Path(name).stem
    return name
