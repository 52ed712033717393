"""Typed config sections: fields with their allowed ranges declared beside them, checked at load.

A section is a dataclass (:func:`section`: pydantic v2 underneath, so a field's range lives in
its annotation and an unknown key is an error). Field types come from the aliases below: a
count is ``Count`` (an integer in [1, 10^6]), a probability ``Probability`` ([0, 1]), and so
on. Scalars are strict: ``"3"`` is no integer and ``1`` no boolean. :func:`build` turns a
mapping into a section and any failure into one :class:`~treesearch.errors.ConfigError` line
naming the field, the value and what is allowed, e.g.
``algorithm.width: -3 is not an integer in [1, 1000000] or 'auto'``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Annotated, Any, Literal

import annotated_types as at
from pydantic import BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass

from treesearch.errors import ConfigError

MAX_COUNT = 1_000_000  # counts of things a search or a pool makes (samples, replicas, problems)
MAX_TOKENS = 10**12  # token budgets and caps
Auto = Literal["auto"]  # a shape field sized by the budget (treesearch.sizing)


def section(cls: type | None = None, *, frozen: bool = False) -> Any:
    """The decorator of a config section: a dataclass that rejects unknown keys and checks types
    and ranges when built (directly, or from a mapping by :func:`build`)."""
    wrap = _pydantic_dataclass(config=ConfigDict(extra="forbid", arbitrary_types_allowed=True), frozen=frozen)
    return wrap if cls is None else wrap(cls)


def _yaml_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e6`` (no sign in the exponent) as a string: read it as the number."""
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+\s*", value):
        return float(value)
    return value


def Int(ge: int | None = None, le: int | None = None) -> Any:
    """An integer (booleans and strings refused) in [ge, le]."""
    return Annotated[int, Strict(), Field(ge=ge, le=le)]


def Float(
    ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None
) -> Any:
    """A finite number (an integer is taken as one) within the bounds."""
    return Annotated[
        float, BeforeValidator(_yaml_number), Strict(), Field(ge=ge, gt=gt, le=le, lt=lt, allow_inf_nan=False)
    ]


Count = Int(ge=1, le=MAX_COUNT)  # 0 would make nothing run
Count0 = Int(ge=0, le=MAX_COUNT)  # a count whose 0 means something of its own (said at the field)
Tokens = Int(ge=1, le=MAX_TOKENS)
Probability = Float(ge=0, le=1)
Seconds = Float(gt=0, le=10**7)
Flag = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]


# ----------------------------------------------------------------------------- building
def build(cls: type, data: Any, where: str, owner: str = "") -> Any:
    """Section ``cls`` from the mapping ``data``; a failure is one ConfigError line naming the
    field (``where.key``), the value and what is allowed. ``owner`` names what the fields belong
    to in an unknown-field error (e.g. ``backend vllm``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as e:
        raise ConfigError(explain(cls, e, where, owner)) from None


_TAG = re.compile(r"^[a-z_][a-z0-9_]*$")
_TYPE_TAGS = {"int", "float", "str", "bool", "none", "dict", "list"}


def _path(loc: tuple[Any, ...]) -> list[str | int]:
    """A pydantic error location without its union-member tags (``constrained-int`` ...)."""
    return [p for p in loc if isinstance(p, int) or (_TAG.match(p) and p not in _TYPE_TAGS)]


def explain(cls: type, error: ValidationError, where: str, owner: str = "") -> str:
    """One line for the first field a validation error names (see :func:`build`)."""
    errors = error.errors()
    path = _path(errors[0]["loc"])
    at_path = [e for e in errors if _path(e["loc"]) == path]
    name = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in [where] * bool(where) + path)
    name = name.lstrip(".") or "config"
    first = at_path[0]
    if first["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        parent = annotation_at(cls, path[:-1])
        fields = [f.name for f in dataclasses.fields(parent)] if dataclasses.is_dataclass(parent) else []
        of = f" of {owner}" if owner and len(path) == 1 else ""
        return f"{name}: unknown field{of} (expected one of {', '.join(fields)})"
    if first["type"] == "value_error":  # a check across fields (a section's __post_init__)
        return f"{name}: {first['ctx']['error']}"
    expected = describe(annotation_at(cls, path))
    if expected == "a mapping" and isinstance(first.get("input"), dict):
        return f"{name}: {first['msg']}"
    return f"{name}: {first.get('input')!r} is not {expected}"


def annotation_at(cls: Any, path: list[str | int]) -> Any:
    """The type annotation of the field at ``path`` inside section ``cls`` (Any if unknown)."""
    tp: Any = cls
    for part in path:
        tp = _strip(tp)
        if dataclasses.is_dataclass(tp) and isinstance(part, str):
            tp = typing.get_type_hints(tp, include_extras=True).get(part, Any)
            continue
        args = [a for a in _members(tp) if a is not type(None)]
        inner = next((a for a in args if typing.get_origin(_strip(a)) in (list, dict)), None)
        if inner is None:
            return Any
        tp = typing.get_args(_strip(inner))[-1]
    return tp


def _strip(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


def _members(tp: Any) -> tuple[Any, ...]:
    """The members of a union (each with its annotations), or ``(tp,)``."""
    inner = _strip(tp)
    return typing.get_args(inner) if typing.get_origin(inner) in (typing.Union, types.UnionType) else (tp,)


def _bounds(tp: Any) -> str:
    """`` in [1, 10]`` / `` >= 0`` for an annotated number, from its pydantic metadata."""
    lo = hi = None
    lo_open = hi_open = False
    for meta in typing.get_args(tp)[1:] if typing.get_origin(tp) is Annotated else ():
        for m in getattr(meta, "metadata", [meta]):
            if isinstance(m, at.Ge):
                lo = m.ge
            elif isinstance(m, at.Gt):
                lo, lo_open = m.gt, True
            elif isinstance(m, at.Le):
                hi = m.le
            elif isinstance(m, at.Lt):
                hi, hi_open = m.lt, True
    fmt = lambda x: f"{x:g}" if isinstance(x, float) else str(x)  # noqa: E731
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{fmt(lo)}, {fmt(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {fmt(lo)}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {fmt(hi)}"
    return ""


def describe(tp: Any) -> str:
    """What a field of type ``tp`` accepts, in words (``an integer in [1, 1000000] or 'auto'``)."""
    parts = []
    for member in _members(tp):
        base = _strip(member)
        origin = typing.get_origin(base)
        if base is type(None):
            parts.append("null")
        elif origin is Literal:
            values = typing.get_args(base)
            parts.append(repr(values[0]) if len(values) == 1 else "one of " + ", ".join(map(repr, values)))
        elif base is bool:
            parts.append("true or false")
        elif base is int:
            parts.append(f"an integer{_bounds(member)}")
        elif base is float:
            parts.append(f"a finite number{_bounds(member)}")
        elif base is str:
            parts.append("a string")
        elif origin is list:
            parts.append(f"a list of {describe(typing.get_args(base)[0])}")
        elif origin is dict or dataclasses.is_dataclass(base):
            parts.append("a mapping")
        else:
            parts.append(getattr(base, "__name__", str(base)))
    return " or ".join(parts)
