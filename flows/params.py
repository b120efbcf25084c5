"""Flow parameters from the config classes: `flow_signature` gives a flow one parameter per config
field, typed by `bounded` with the field's bounds, so a deployment's run form shows them and the
server refuses a value outside them (enforce_parameter_schema) before any flow run is created."""
from __future__ import annotations

import dataclasses
import inspect
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


def flow_signature(*classes, nested: dict[str, type] | None = None):
    """Decorator: give a flow written as ``def f(**params)`` one keyword parameter per field of the
    config `classes` (bounded type, the config's default), then one per `nested` dataclass
    (``{name: cls}``, default ``cls()``).

    Prefect builds the run form, the deployment's parameter schema and its validation from this
    signature, so the parameters are written once, in the config. Fields the classes share appear
    once; the store fields (``home``) come last. A run from a deployment passes only the parameters
    it sets: build the config objects with `config_values`, so the dataclass defaults fill the rest.
    """
    from sot_core.config import StoreOptions
    from sot_core.fields import default_of

    last = {f.name for f in dataclasses.fields(StoreOptions)}
    names = {}  # name -> owning class, in field order, first class wins
    for cls in classes:
        for f in dataclasses.fields(cls):
            names.setdefault(f.name, cls)
    order = [n for n in names if n not in last] + [n for n in names if n in last]
    params = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=bounded(names[n], n),
                                default=default_of(names[n], n)) for n in order]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=cls, default=cls())
               for n, cls in (nested or {}).items()]

    def decorate(fn):
        fn.__signature__ = inspect.Signature(params, return_annotation=dict)
        return fn
    return decorate


def config_values(cls, params: dict) -> dict:
    """The entries of `params` that are fields of dataclass `cls` (absent ones take its defaults)."""
    return {f.name: params[f.name] for f in dataclasses.fields(cls) if f.name in params}
