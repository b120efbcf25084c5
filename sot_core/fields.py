"""What the config dataclasses' field metadata is used for: checking values, reading defaults,
and writing help.

Each field of a config class (`sot_core.config`) carries its help text and, where it has them,
its bounds (``gt``/``ge``/``lt``/``le``) or ``pattern`` in ``metadata``; choices are ``Literal``
types. `validate_fields` checks an instance against them, `value_problem` one value (the CLI and
the flow parameter types use it too), `default_of` and `same_field` read a field's one default,
and `google_args_doc` / `documented` turn the help texts into a flow's docstring.
"""
from __future__ import annotations

import math
import re
import typing
from dataclasses import field, fields
from typing import Literal


def validate_fields(obj) -> None:
    """Check every ``Literal`` field against its choices and every bounded field against its
    ``gt``/``ge``/``lt``/``le`` metadata; raises ValueError naming the field."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        choices, others = _literal_choices(hint), _plain_types(hint)
        if choices and value not in choices and not (others and isinstance(value, others)
                                                     and not isinstance(value, bool)):
            also = f" or a {' or '.join(t.__name__ for t in others)}" if others else ""
            raise ValueError(f"{f.name} must be one of {', '.join(map(str, choices))}{also}; got {value!r}")
        problem = value_problem(value, f.metadata)
        if problem:
            raise ValueError(f"{f.name} {problem}")


def value_problem(value, metadata) -> str | None:
    """Why a value breaks its field's bounds or pattern ("must be <= 1, got 1.5"); None if it does not."""
    if isinstance(value, str) and "pattern" in metadata and not re.fullmatch(metadata["pattern"], value):
        return f"must match {metadata['pattern']} ({metadata.get('pattern_help', 'a plain name')}), got {value!r}"
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    for key, ok, word in (("gt", value.__gt__, ">"), ("ge", value.__ge__, ">="),
                          ("lt", value.__lt__, "<"), ("le", value.__le__, "<=")):
        if key in metadata and not ok(metadata[key]):
            return f"must be {word} {metadata[key]}, got {value!r}"
    return None


def _literal_choices(hint) -> tuple:
    """The choices of ``Literal[...]`` or ``Literal[...] | None``; () for other types."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    for arg in typing.get_args(hint):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return ()


def _plain_types(hint) -> tuple:
    """The non-Literal scalar types a field also accepts besides its choices (``float | Literal["auto"]``:
    (float, int)); () for a plain ``Literal``."""
    out = tuple(a for a in typing.get_args(hint) if a in (int, float, str))
    return out + ((int,) if float in out and int not in out else ())


def default_of(cls, name: str):
    """The default of field `name` of dataclass `cls` (the one place it is written)."""
    f = next(f for f in fields(cls) if f.name == name)
    return f.default_factory() if callable(f.default_factory) else f.default


def same_field(cls, name: str):
    """A field with the default and help of `cls.name`: one class reuses another's setting."""
    f = next(f for f in fields(cls) if f.name == name)
    return field(default=f.default, metadata=f.metadata)


def google_args_doc(summary: str, *classes) -> str:
    """A Google-style docstring whose Args come from the help text of `classes` (Prefect reads
    this style into a deployment's run form), so flows do not restate the help."""
    lines, seen = [summary, "", "Args:"], set()
    for cls in classes:
        for f in fields(cls):
            if f.name not in seen and "help" in f.metadata:
                seen.add(f.name)
                lines.append(f"    {f.name}: {f.metadata['help']}")
    return "\n".join(lines) + "\n"


def documented(summary: str, *classes):
    """Decorator: give a flow the docstring `google_args_doc(summary, *classes)` (before @flow reads it)."""
    def decorate(fn):
        fn.__doc__ = google_args_doc(summary, *classes)
        return fn
    return decorate
