"""Validate a decoded JSON value against a wire model; every problem is an ``InvalidRequest``.

The strict decoder (``server/parsing.py``) has already refused duplicate keys, NaN and
other non-JSON; this checks the shape: types without coercion, bounds, no unknown fields.
Errors keep the codes and messages the API has always used (``unknown_field``,
``missing_field``, ``invalid_field``, ``invalid_scope``), name the field by its path
(``scope[2].action``) and report one problem: the first unknown field if there is one
(an unknown field usually means a misspelt known one), else the first in field order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from tether.errors import ErrorCode, InvalidRequest

M = TypeVar("M", bound=BaseModel)

#: Fields whose container-level problems carry their own code (a list of grants).
_CONTAINER_CODES = {"scope": ErrorCode.INVALID_SCOPE}
_KIND = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "a list",
}


def parse(model: type[M], doc: Any) -> M:
    """``model`` from ``doc`` (a decoded JSON value), or ``InvalidRequest`` naming the field."""
    try:
        return model.model_validate(doc, strict=True)
    except ValidationError as exc:
        raise translate(exc) from None


def field_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def translate(exc: ValidationError) -> InvalidRequest:
    errors = exc.errors(include_url=False, include_input=False)
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    first = unknown[0] if unknown else errors[0]
    loc = tuple(first["loc"])
    path = field_path(loc)[:200]
    kind, ctx = first["type"], first.get("ctx") or {}
    top = str(loc[0]) if loc else ""
    if kind == "extra_forbidden":
        return InvalidRequest(f"unknown field `{path}`", code=ErrorCode.UNKNOWN_FIELD, field=path)
    container = _CONTAINER_CODES.get(top)
    if container is not None and len(loc) <= 2:
        # The list itself is absent, null or the wrong shape, or one of its items is not an
        # object (a field inside an item is that field's problem, below).
        if len(loc) == 1:
            most = ctx.get("max_length", 100)
            message = f"`{path}` must be a list of at most {most} {{action, resource}} objects"
        else:
            message = f"`{path}` must be an object"
        return InvalidRequest(message, code=container, field=path)
    if kind == "missing":
        return InvalidRequest(f"missing field `{path}`", code=ErrorCode.MISSING_FIELD, field=path)
    if kind in _KIND:
        message = f"`{path}` must be {_KIND[kind]}"
    elif kind == "string_too_long":
        message = f"`{path}` is longer than {ctx.get('max_length')} characters"
    elif kind == "too_long":
        message = f"`{path}` may hold at most {ctx.get('max_length')} items"
    elif kind == "greater_than_equal":
        message = f"`{path}` must be at least {ctx.get('ge')}"
    elif kind == "less_than_equal":
        message = f"`{path}` must be at most {ctx.get('le')}"
    elif kind in ("literal_error", "enum"):
        message = f"`{path}` must be one of {ctx.get('expected', 'the documented values')}"
    else:
        message = f"`{path}` is invalid"
    return InvalidRequest(message, code=ErrorCode.INVALID_FIELD, field=path)


def render(model: type[BaseModel], value: Any) -> dict[str, Any]:
    """An answer as ``model`` documents it: ``value`` (a view dict) checked and dumped.

    Lax on the way out (an enum may be given as its string); fields the view did not set
    are left out, so optional members stay absent rather than ``null``. A view that does
    not fit its model raises here: a 500 that allows nothing, which the schema tests
    turn into a failing test long before a release.
    """
    return model.model_validate(value, strict=False).model_dump(mode="json", exclude_unset=True)


def render_json(model: type[BaseModel], value: Any) -> bytes:
    """As :func:`render`, straight to compact UTF-8 JSON (pydantic's serializer: no
    intermediate dict, and cheaper than ``json.dumps`` on the hot path)."""
    checked = model.__pydantic_validator__.validate_python(value, strict=False)
    return model.__pydantic_serializer__.to_json(checked, exclude_unset=True)
