"""Command-line options generated from the configuration dataclasses in `sot_core.config`.

A field `max_length` becomes `--max-length`, with the field's default, its help text and, for a
`Literal` type, its choices. Nothing here restates a default, so `sot` and the flows cannot drift.
"""
from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields
from typing import Literal

from sot_core.fields import default_of, value_problem

# Old spellings kept working: `--out` for `--out-dir`, `--base` for `--base-model`.
ALIASES = {"out_dir": ["--out"], "base_model": ["--base"]}


class StoreGiven(argparse.Action):
    """Store the value and remember that the option was given (`given(args)`), as opposed to defaulted."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.__dict__.setdefault("_given", set()).add(self.dest)


def given(args: argparse.Namespace) -> set[str]:
    """Destinations of the options given on the command line."""
    return getattr(args, "_given", set())


def flag(name: str, prefix: str = "") -> str:
    return "--" + (prefix + name).replace("_", "-")


def add_options(parser: argparse.ArgumentParser, cls, only: typing.Iterable[str] | None = None,
                prefix: str = "", skip: typing.Iterable[str] = ()) -> list[str]:
    """Add one option per field of dataclass `cls` (or the fields named in `only`); returns the
    argparse destinations added. `prefix` namespaces a nested dataclass (`solver_` → `--solver-tau`)."""
    hints = typing.get_type_hints(cls)
    chosen = [f for f in fields(cls) if (only is None or f.name in only) and f.name not in skip]
    dests = []
    for f in chosen:
        kind, choices = _scalar_type(hints[f.name])
        if kind is None:  # lists and nested dataclasses have no flat option
            continue
        default = default_of(cls, f.name) if (f.default is not MISSING or f.default_factory is not MISSING) else None
        names = [flag(f.name, prefix)] + ([] if prefix else ALIASES.get(f.name, []))
        dest = prefix + f.name
        help_text = f.metadata.get("help", "") + ("" if default is None else f" (default: {default})")
        help_text = help_text.replace("%", "%%")  # argparse %-formats help ("87.5% of" read as a %o conversion)
        if kind is bool:
            parser.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(*names, dest=dest, type=checked(kind, f.metadata), choices=choices, default=default,
                                help=help_text, action=StoreGiven)
        dests.append(dest)
    return dests


class NumberOrChoice(typing.NamedTuple):
    """The argparse kind of a field typed ``float | Literal["auto"]``: one of the choices, or a number."""

    kind: type
    choices: tuple


def checked(kind, metadata) -> typing.Callable[[str], typing.Any]:
    """An argparse type: converts, then applies the field's bounds, so a bad value stops the
    command before any work with a message that names the option."""
    if isinstance(kind, NumberOrChoice):
        number = checked(kind.kind, metadata)

        def convert_either(text: str):
            if text in kind.choices:
                return text
            try:
                return number(text)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"must be {' or '.join(map(repr, kind.choices))} or a {kind.kind.__name__}, got {text!r}") from None

        convert_either.__name__ = kind.kind.__name__
        return convert_either
    if kind not in (int, float, str):
        return kind

    def convert(text: str):
        problem = value_problem(kind(text), metadata)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return kind(text)

    convert.__name__ = kind.__name__  # argparse names the type in "invalid float value"
    return convert


def take(args: argparse.Namespace, cls, dests: typing.Iterable[str], prefix: str = "", **extra):
    """Build dataclass `cls` from the options `dests` that `add_options` made for it (others default)."""
    names = {f.name for f in fields(cls)}
    values = {d[len(prefix):]: getattr(args, d) for d in dests if d.startswith(prefix) and d[len(prefix):] in names}
    return cls(**{**values, **extra})


def _scalar_type(hint) -> tuple[type | None, list | None]:
    """(argparse type, choices) of a field's type; (None, None) for lists and dataclasses."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    literal = [a for a in args if typing.get_origin(a) is Literal]
    if len(args) == 2 and len(literal) == 1 and _scalar_type(next(a for a in args if a not in literal))[0]:
        # a number or a named choice (`--keep 0.8` or `--keep auto`)
        return NumberOrChoice(_scalar_type(next(a for a in args if a not in literal))[0],
                              typing.get_args(literal[0])), None
    if typing.get_origin(hint) is Literal:
        return type(typing.get_args(hint)[0]), list(typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return _scalar_type(args[0])
    if hint in (str, int, float, bool):
        return hint, None
    return None, None
