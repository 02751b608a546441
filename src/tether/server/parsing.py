"""Strict request decoding shared by the HTTP API, the enforcer API and the admin socket.

Every value that crosses the edge — JSON bodies, query parameters, header values — is
decoded here, once, and refused with an ``InvalidRequest`` (a 4xx with a stable code and
the field at fault) unless the rest of the broker can hold it without surprise:

* JSON is UTF-8 only (no BOM, no UTF-16/32 guessing); duplicate keys, ``NaN`` and
  ``Infinity``, numbers that overflow a double (``1e999``), integers outside the exact
  range of a double (RFC 7493 I-JSON), lone surrogates (``"\\ud800"``), NUL characters
  and nesting deeper than ``MAX_DEPTH`` are refused — canonical JSON, the audit hash and
  PostgreSQL text columns cannot represent them.
* Integers in query strings and headers are ASCII digits only: ``"²".isdigit()`` is true
  but ``int("²")`` fails, so ``str.isdigit`` is never the check.
* A query parameter appears at most once.

The shape of a decoded body (fields, types, bounds) is checked by its wire model
(``tether.wire``), which refuses with the same codes (``unknown_field``, ``missing_field``,
``invalid_field``, ``invalid_scope``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from tether.errors import InvalidRequest
from tether.model import AuthorizeRequest, Grant
from tether.wire import models as w
from tether.wire.validate import parse

#: Deepest nesting a JSON body may have (objects and arrays); far above any real body.
MAX_DEPTH = 32
#: Integers a double holds exactly (RFC 7493 §2.2): beyond, canonical JSON would lie.
MAX_SAFE_INT = 2**53 - 1
#: Longest run of digits an integer query parameter or header may have.
_MAX_DIGITS = 19

_ASCII_INT = re.compile(rf"[0-9]{{1,{_MAX_DIGITS}}}", re.ASCII)
# Only these escapes can smuggle a surrogate or a NUL into a decoded string: raw UTF-8
# cannot (the decoder refuses encoded surrogates, and JSON refuses raw control bytes).
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:[dD][89a-fA-F]|0000)")
_BAD_CHAR = re.compile("[\ud800-\udfff\x00]")


def _malformed(why: str) -> InvalidRequest:
    return InvalidRequest(why, code="malformed_json")


def _no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _malformed(f"duplicate key `{_show(k)}` in JSON body")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise _malformed(f"`{name}` is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _malformed(f"the number `{text[:32]}` is too large")
    return value


def _safe_int(text: str) -> int:
    value = int(text)  # Python refuses > 4300 digits itself (ValueError, caught below)
    if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise _malformed(f"the integer `{text[:32]}` is outside ±(2^53-1)")
    return value


def _show(text: str) -> str:
    """A value for an error message: cut, and with unprintable characters escaped."""
    return text[:64].encode("unicode_escape").decode("ascii")


def _walk(doc: Any) -> None:
    """Refuse too-deep nesting, lone surrogates and NULs (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _BAD_CHAR.search(value):
                raise _malformed(f"the string `{_show(value)}` holds a lone surrogate or a NUL character")
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise _malformed(f"the body nests deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
            for k, v in items:
                if k is not None:
                    stack.append((k, depth))
                stack.append((v, depth + 1))


def parse_json(raw: bytes | str) -> Any:
    """Any JSON value, strictly (see the module docstring); ``malformed_json`` otherwise."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _malformed("the body is not valid UTF-8") from exc
    else:
        text = raw
    if text.startswith("\ufeff"):
        raise _malformed("the body starts with a byte-order mark; send plain UTF-8")
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_no_dupes,
            parse_constant=_no_constants,
            parse_float=_finite_float,
            parse_int=_safe_int,
        )
    except InvalidRequest:
        raise
    except (ValueError, RecursionError) as exc:
        raise _malformed("the body is not valid JSON") from exc
    # The full walk runs only when it can find something: a suspicious escape, a string
    # given as text (admin socket lines), or enough brackets to nest too deep.
    suspicious = isinstance(raw, str) or _SUSPECT_ESCAPE.search(raw) is not None
    if suspicious or text.count("[") + text.count("{") > MAX_DEPTH:
        _walk(doc)
    return doc


def parse_json_object(raw: bytes | str) -> dict[str, Any]:
    doc = parse_json(raw)
    if not isinstance(doc, dict):
        raise _malformed("the body must be a JSON object")
    return doc


def parse_uint(raw: str, name: str, *, lo: int, hi: int, code: str = "invalid_field") -> int:
    """An integer written in ASCII digits, within ``[lo, hi]`` (query values, headers)."""
    if _ASCII_INT.fullmatch(raw) is None or not lo <= int(raw) <= hi:
        raise InvalidRequest(f"`{name}` must be an integer between {lo} and {hi}", code=code, field=name)
    return int(raw)


def query_param(params: Any, name: str) -> str | None:
    """The one value of query parameter ``name`` (``params``: Starlette's ``QueryParams``)."""
    values = params.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(
            f"query parameter `{name}` given more than once", code="invalid_field", field=name
        )
    return values[0] if values else None


def query_int(params: Any, name: str, default: int, *, lo: int, hi: int) -> int:
    raw = query_param(params, name)
    return default if raw is None else parse_uint(raw, name, lo=lo, hi=hi)


def header_int(headers: Any, name: str, *, lo: int, hi: int) -> int | None:
    """An integer header (``Content-Length``, ``Last-Event-ID``), given at most once."""
    values = headers.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest(f"header `{name}` given more than once", code="invalid_header", field=name)
    return parse_uint(values[0].strip(), name, lo=lo, hi=hi, code="invalid_header")


def grants(scope: Sequence[w.Grant]) -> tuple[Grant, ...]:
    return tuple(Grant(g.action, g.resource) for g in scope)


def parse_scope(value: Any) -> tuple[Grant, ...]:
    """A ``scope`` value (a list of ``{action, resource}``), through the wire model."""
    return grants(parse(w.DelegateRequest, {"child": "-", "scope": value, "ttl_seconds": 1}).scope)


def authorize_request(body: w.AuthorizeRequestBody, *, trace_id: str | None) -> AuthorizeRequest:
    """The broker's request for a parsed authorize body (agent API and enforcer API alike)."""
    ctx = body.context
    return AuthorizeRequest(
        action=body.action,
        resource=body.resource,
        arguments=body.arguments or {},
        method=(ctx.method or "") if ctx is not None else "",
        path=(ctx.path or "") if ctx is not None else "",
        trace_id=trace_id,
    )


def parse_authorize(doc: Any, *, trace_id: str | None) -> AuthorizeRequest:
    """An authorize body — ``{action, resource, arguments?, context?: {method, path}}``."""
    return authorize_request(parse(w.AuthorizeRequestBody, doc), trace_id=trace_id)
