"""Strict request parsing shared by the HTTP API and the admin socket.

Bodies are size-limited before they are read whole, parsed as JSON with duplicate keys
and NaN refused, and checked field by field; every problem is an ``InvalidRequest``
naming the field, so clients get a 4xx with a stable code and never a 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from tether.broker import AuthorizeRequest
from tether.errors import InvalidRequest
from tether.model import Grant


def _no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise InvalidRequest(f"duplicate key `{k[:64]}` in JSON body", code="malformed_json")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise InvalidRequest(f"`{name}` is not valid JSON", code="malformed_json")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw, object_pairs_hook=_no_dupes, parse_constant=_no_constants)
    except InvalidRequest:
        raise
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest("the body is not valid JSON", code="malformed_json") from exc
    if not isinstance(doc, dict):
        raise InvalidRequest("the body must be a JSON object", code="malformed_json")
    return doc


def check_fields(doc: Mapping[str, Any], allowed: Collection[str], where: str = "") -> None:
    for key in doc:
        if key not in allowed:
            raise InvalidRequest(
                f"unknown field `{where}{key[:64]}`", code="unknown_field", field=f"{where}{key[:64]}"
            )


def req_str(
    doc: Mapping[str, Any], key: str, *, max_len: int = 256, required: bool = True, default: str = ""
) -> str:
    value = doc.get(key)
    if value is None:
        if required:
            raise InvalidRequest(f"missing field `{key}`", code="missing_field", field=key)
        return default
    if not isinstance(value, str):
        raise InvalidRequest(f"`{key}` must be a string", code="invalid_field", field=key)
    if len(value) > max_len:
        raise InvalidRequest(f"`{key}` is longer than {max_len} characters", code="invalid_field", field=key)
    return value


def req_int(doc: Mapping[str, Any], key: str, *, lo: int, hi: int, default: int | None = None) -> int:
    value = doc.get(key, default)
    if value is None:
        raise InvalidRequest(f"missing field `{key}`", code="missing_field", field=key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"`{key}` must be an integer", code="invalid_field", field=key)
    if not lo <= value <= hi:
        raise InvalidRequest(f"`{key}` must be between {lo} and {hi}", code="invalid_field", field=key)
    return value


def parse_scope(value: Any, key: str = "scope") -> tuple[Grant, ...]:
    if not isinstance(value, list) or len(value) > 100:
        raise InvalidRequest(
            f"`{key}` must be a list of at most 100 {{action, resource}} objects",
            code="invalid_scope",
            field=key,
        )
    grants = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"`{where}` must be an object", code="invalid_scope", field=where)
        check_fields(item, ("action", "resource"), f"{where}.")
        grants.append(Grant(req_str(item, "action", max_len=64), req_str(item, "resource")))
    return tuple(grants)


def parse_arguments(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("`arguments` must be an object", code="invalid_field", field="arguments")
    if len(value) > 64:
        raise InvalidRequest("`arguments` may hold at most 64 keys", code="invalid_field", field="arguments")
    return value


AUTHORIZE_FIELDS = ("action", "resource", "arguments", "context")


def parse_authorize(
    doc: Mapping[str, Any], *, trace_id: str | None, extra_fields: Collection[str] = ()
) -> AuthorizeRequest:
    """An authorize body — ``{action, resource, arguments?, context?: {method, path}}`` —
    as the agent API and the enforcer API both accept it (plus ``extra_fields``)."""
    check_fields(doc, (*AUTHORIZE_FIELDS, *extra_fields))
    ctx = doc.get("context") or {}
    if not isinstance(ctx, dict):
        raise InvalidRequest("`context` must be an object", code="invalid_field", field="context")
    check_fields(ctx, ("method", "path"), "context.")
    return AuthorizeRequest(
        action=req_str(doc, "action", max_len=64),
        resource=req_str(doc, "resource"),
        arguments=parse_arguments(doc.get("arguments")),
        method=req_str(ctx, "method", max_len=16, required=False),
        path=req_str(ctx, "path", max_len=4096, required=False),
        trace_id=trace_id,
    )
