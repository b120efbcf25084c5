"""Flow parameter types with the config's bounds, so a deployment's run form shows them and the server
refuses a value outside them (enforce_parameter_schema) before any flow run is created."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Optional

from pydantic import Field

BOUNDS = ("gt", "ge", "lt", "le")


def bounded(cls, name: str):
    """The type of config field `name` of dataclass `cls`, constrained by its ``gt/ge/lt/le`` metadata
    (``X | None`` keeps None allowed and bounds X)."""
    hint = typing.get_type_hints(cls)[name]
    spec = next(f for f in dataclasses.fields(cls) if f.name == name)
    limits = {k: spec.metadata[k] for k in BOUNDS if k in spec.metadata}
    if not limits:
        return hint
    args = typing.get_args(hint)
    choices = [a for a in args if typing.get_origin(a) is typing.Literal]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and choices and type(None) not in args:  # keep
        number = next(a for a in args if a not in choices)
        return typing.Union[Annotated[number, Field(**limits)], choices[0]]
    if isinstance(hint, types.UnionType) and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return Optional[Annotated[inner, Field(**limits)]]
    return Annotated[hint, Field(**limits)]
