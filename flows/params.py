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
        return _number_or_choice(hint, args, choices[0], limits)
    if isinstance(hint, types.UnionType) and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return Optional[Annotated[inner, Field(**limits)]]
    return Annotated[hint, Field(**limits)]


def _number_or_choice(hint, args, choice, limits: dict):
    """``float | Literal["auto"]`` with the number's bounds at the top of its JSON schema (JSON Schema's
    numeric keywords ignore strings), so the run form and the server bound the number and accept the choice."""
    from pydantic import AfterValidator, WithJsonSchema

    from sot_core.fields import value_problem

    def check(value):
        problem = value_problem(value, limits)
        if problem:
            raise ValueError(problem)
        return value

    keywords = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}
    schema = {"anyOf": [{"type": "number"}, {"type": "string", "enum": list(typing.get_args(choice))}],
              **{keywords[k]: v for k, v in limits.items()}}
    return Annotated[hint, AfterValidator(check), WithJsonSchema(schema)]
