"""Which fields of a record hold the prompt, the response and the id: `FieldMap` and detection.

The detection order is listed in `sot_core.data.loaders`' module docstring; `resolve_layout`
applies it to the fields the rows of one file fill.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields as dataclass_fields, replace

from sot_core.errors import InputError


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
class Layout:
    """Which (lower-cased) fields hold the prompt, response and input, or the chat turns."""

    prompt: str | None = None
    response: str | None = None
    input: str | None = None
    messages: str | None = None


# Detection order (see the loaders' module docstring). Prompt-only layouts come last so that
# they never hide a response field.
LAYOUTS = [
    Layout("prompt", "response"), Layout("instruction", "output", "input"),
    Layout("instruction", "response", "context"),
    Layout(messages="messages"), Layout(messages="conversations"),
    Layout("user", "assistant"), Layout("question", "answer"), Layout("goal", "target"),
    Layout("query", "response"), Layout("prompt", "completion"), Layout("objective", "assistant_response"),
    *(Layout(name, input="input" if name == "instruction" else None)
      for name in ("prompt", "instruction", "question", "goal", "query", "user", "objective", "text")),
]
# Row field names of the layouts: their plurals name column lists in JSON objects.
ROW_FIELDS = {f for layout in LAYOUTS for f in (layout.prompt, layout.response, layout.input) if f}


def resolve_layout(source: str, records: list[tuple[int, dict]], fields: FieldMap) -> tuple[Layout, str | None]:
    """Pick the layout and the id field from the fields that any row fills (not None)."""
    present = {key for _, record in records for key, value in record.items() if value is not None}
    null_everywhere = {key for _, record in records for key in record} - present
    first_row = records[0][0]
    named = {key: value.lower() for key, value in vars(fields).items() if value}
    for key, name in named.items():
        if name in null_everywhere:
            raise InputError(source, "the field is null in every row", row=first_row, field=getattr(fields, key))
        if name not in present:
            raise InputError(source, f"field not found; rows have: {', '.join(sorted(present))}",
                             field=getattr(fields, key))
    if "messages" in named and {"prompt", "response", "input"} & set(named):
        raise InputError(source, "a chat field and prompt/response fields are both named; name the chat field "
                         "alone, or the prompt and response fields", field=fields.messages)
    detected = next((replace(layout, input=layout.input if layout.input in present else None)
                     for layout in LAYOUTS
                     if {layout.prompt, layout.response, layout.messages} - {None} <= present), None)
    if (detected is not None and detected.response is None and detected.messages is None
            and not {"response", "messages"} & set(named)):
        # a prompt-only file, unless its response field is there but null in every row
        for layout in LAYOUTS:
            if layout.prompt == detected.prompt and layout.response in null_everywhere:
                raise InputError(source, "the response field is null in every row; a file of prompts alone has "
                                 "no response field", row=first_row, field=layout.response)
    id_key = named.get("id", "id" if "id" in present else None)
    if "messages" in named:
        return Layout(messages=named["messages"]), id_key
    if {"prompt", "response", "input"} & set(named):
        base = detected if detected is not None and detected.messages is None else Layout()
        # A detected input belongs to the detected prompt, so it goes when the prompt is named;
        # a detected response fits any prompt and stays.
        layout = Layout(named.get("prompt", base.prompt), named.get("response", base.response),
                        named.get("input", None if "prompt" in named else base.input))
        if layout.prompt is not None:
            return layout, id_key
    elif detected is not None:
        return detected, id_key
    raise InputError(source, f"cannot tell which fields hold the prompt and response; rows have: "
                     f"{', '.join(sorted(present))}; name them in a field map")
