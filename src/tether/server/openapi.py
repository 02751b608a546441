"""The OpenAPI 3.1 document of the broker's HTTP API (served at ``/openapi.json``).

Generated, not written: each operation below names its request and response models
from :mod:`tether.wire.models`, and the schemas come from those models — the same
ones the handlers parse and render with. Every error status answers the one
``ErrorBody``; which statuses an operation documents come from the error classes it
can raise (``tether.errors``). A test checks that every route the server mounts is
documented here and that real answers match their documented schemas.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from tether.errors import ErrorCode
from tether.wire import models as m

Security = Literal["svid", "task", "task+enforcer", "enforcer", "svid-or-task"]
_FORM = "application/x-www-form-urlencoded"
_SSE = "text/event-stream"


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query", "header"]
    schema: Mapping[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Operation:
    method: Literal["get", "post"]
    path: str
    summary: str
    responses: Mapping[int, type[BaseModel] | str | None]
    security: Security | None = None
    request: type[BaseModel] | None = None
    request_media: str = "application/json"
    errors: tuple[int, ...] = ()
    params: tuple[Param, ...] = field(default=())
    #: The request carries a task token, so a ``DPoP`` proof may (or, by policy, must) go with it.
    dpop: bool = False
    #: The setting that mounts the route (empty: always served).
    only_when: str = ""


_TASK_ID = Param("task_id", "path", {"type": "string", "maxLength": 128}, required=True)
_TRACEPARENT = Param(
    "traceparent",
    "header",
    {"type": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"},
    "W3C trace context; its trace id is recorded with the decision",
)
_ALL = (400, 401, 403, 413, 503)
#: What the HTTP edge itself may answer on any route (``server/app.py``: method, target and
#: header limits) and the fail-closed 500 of ``server/edge.py``.
EDGE_ERRORS = (405, 414, 431, 500)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post",
        "/v1/tasks",
        "Open a task (or redeem a delegation) with the agent's JWT-SVID",
        {201: m.TaskOpened},
        "svid",
        m.OpenTaskRequest,
        errors=(*_ALL, 404, 409),
        dpop=True,
    ),
    Operation(
        "get",
        "/v1/tasks/{task_id}",
        "A task's state, scope, parent and children (its token or an ancestor's)",
        {200: m.TaskView},
        "task",
        errors=(400, 401, 403, 404, 503),
        params=(_TASK_ID,),
        dpop=True,
    ),
    Operation(
        "post",
        "/v1/tasks/{task_id}/delegations",
        "Offer part of a task to one child agent (single use, short-lived)",
        {201: m.DelegationOffered},
        "task",
        m.DelegateRequest,
        errors=(*_ALL, 404, 409),
        params=(_TASK_ID,),
        dpop=True,
    ),
    Operation(
        "post",
        "/v1/tasks/{task_id}/close",
        "Close a task and every descendant (the body, if any, is ignored)",
        {200: m.TaskClosed},
        "task",
        errors=(400, 401, 403, 404, 409, 503),
        params=(_TASK_ID,),
        dpop=True,
    ),
    Operation(
        "post",
        "/v1/authorize",
        "Decide one action of the task now (allow, deny or approval_required)",
        {200: m.AuthorizeResponse},
        "task",
        m.AuthorizeRequestBody,
        errors=(*_ALL, 404, 409),
        params=(_TRACEPARENT,),
        dpop=True,
    ),
    Operation("get", "/.well-known/jwks.json", "The broker's public signing keys", {200: m.Jwks}),
    Operation(
        "get",
        "/.well-known/spiffe-bundle",
        "The broker's JWT-SVID authorities as a SPIFFE bundle",
        {200: m.SpiffeBundle},
    ),
    Operation("get", "/healthz", "Liveness", {200: m.Health}),
    Operation("get", "/readyz", "Readiness (store reachable)", {200: m.Readiness, 503: m.Readiness}),
    Operation("get", "/openapi.json", "This document", {200: "application/json"}),
    Operation(
        "get",
        "/metrics",
        "Prometheus metrics, for the addresses in `metrics.allow`",
        {200: "text/plain"},
        errors=(403, 404),
    ),
    Operation(
        "post",
        "/v1/credentials",
        "A credential for one resource, decided as `credential:issue`",
        {201: m.CredentialIssued},
        "task",
        m.CredentialRequest,
        errors=(*_ALL, 404, 409),
        params=(_TRACEPARENT,),
    ),
    Operation(
        "post",
        "/v1/introspect",
        "RFC 7662 token introspection (callers authenticate with their JWT-SVID)",
        {200: m.Introspection},
        "svid",
        m.TokenForm,
        _FORM,
        errors=(400, 401, 413, 503),
    ),
    Operation(
        "post",
        "/v1/revoke-token",
        "RFC 7009 token revocation (a workload's SVID, or an agent's own task token)",
        {200: None},
        "svid-or-task",
        m.TokenForm,
        _FORM,
        errors=(400, 401, 413, 503),
    ),
    Operation(
        "get",
        "/v1/revocations",
        "Revocations after a cursor; `wait` long-polls until one arrives",
        {200: m.Revocations},
        "svid",
        errors=(400, 401, 429, 503),
        params=(
            Param("since", "query", {"type": "integer", "minimum": 0, "maximum": 2**62}, "feed cursor"),
            Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 500}),
            Param("wait", "query", {"type": "integer", "minimum": 0, "maximum": 30, "default": 0}, "seconds"),
        ),
    ),
    Operation(
        "get",
        "/v1/revocations/stream",
        "Revocations as server-sent events (`event: revocation`, `id:` the cursor)",
        {200: _SSE},
        "svid",
        errors=(400, 401, 429, 503),
        params=(
            Param("since", "query", {"type": "integer", "minimum": 0, "maximum": 2**62}, "feed cursor"),
            Param(
                "timeout",
                "query",
                {"type": "integer", "minimum": 1, "maximum": 3600, "default": 300},
                "seconds",
            ),
            Param("Last-Event-ID", "header", {"type": "string", "pattern": "^[0-9]+$"}, "resume after"),
        ),
    ),
    Operation(
        "post",
        "/v1/gateway/authorize",
        "Enforcement points: decide an agent's action, with the credential half to inject",
        {200: m.EnforcerAuthorizeResponse},
        "task+enforcer",
        m.EnforcerAuthorizeRequest,
        errors=(*_ALL, 404, 409),
        params=(_TRACEPARENT,),
    ),
    Operation(
        "post",
        "/v1/gateway/visible",
        "Enforcement points: which resources a task could use (tool-list filtering)",
        {200: m.VisibleResponse},
        "task+enforcer",
        m.VisibleRequest,
        errors=_ALL,
    ),
    Operation(
        "post",
        "/v1/gateway/token",
        "Enforcement points: check an agent's token for one resource (OAuth resource servers)",
        {200: m.TokenChecked},
        "task+enforcer",
        m.TokenCheckRequest,
        errors=_ALL,
    ),
    Operation(
        "post",
        "/v1/gateway/calls",
        "Enforcement points: record a forwarded call or its result",
        {200: m.CallRecorded},
        "enforcer",
        m.CallRecord,
        errors=_ALL,
    ),
    Operation(
        "post",
        "/v1/gateway/arguments",
        "Enforcement points: the typed arguments the catalog declares for resources",
        {200: m.ArgumentsResponse},
        "enforcer",
        m.ArgumentsRequest,
        errors=_ALL,
    ),
    Operation(
        "post",
        "/v1/gateway/tools",
        "Enforcement points: check MCP tool definitions against their pins",
        {200: m.ToolsResponse},
        "enforcer",
        m.ToolsRequest,
        errors=_ALL,
    ),
    # The OAuth authorization server (`docs/oauth.md`): RFC 6749 error bodies, not ErrorBody.
    Operation(
        "get",
        "/.well-known/oauth-authorization-server",
        "RFC 8414 authorization server metadata",
        {200: m.OAuthMetadata},
        errors=(404,),
        only_when="oauth.enabled",
    ),
    Operation(
        "post",
        "/oauth/token",
        "RFC 6749 token endpoint: authorization code (PKCE), refresh token, RFC 8693 token exchange",
        {200: m.OAuthTokens, 400: m.OAuthErrorBody, 401: m.OAuthErrorBody},
        request=m.OAuthTokenForm,
        request_media=_FORM,
        errors=(404, 413, 503),
        only_when="oauth.enabled",
    ),
    Operation(
        "post",
        "/oauth/revoke",
        "RFC 7009 revocation of an OAuth refresh or access token",
        {200: m.Empty, 400: m.OAuthErrorBody, 401: m.OAuthErrorBody},
        request=m.OAuthRevokeForm,
        request_media=_FORM,
        errors=(404, 413, 503),
        only_when="oauth.enabled",
    ),
)
#: Mounted applications that are not this API: the operators' web console (HTML pages,
#: its own sign-in) and the in-process HTTP gateway (it proxies upstream paths).
NOT_API_MOUNTS = ("console", "gateway.http_mount")

_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "svid": [{"svid": []}],
    "task": [{"task": []}],
    "task+enforcer": [{"task": [], "enforcer": []}],
    "enforcer": [{"enforcer": []}],
    "svid-or-task": [{"svid": []}, {"task": []}],
}

_ERROR_DESCRIPTIONS = {
    400: "invalid request (the `code` and `field` say what)",
    401: "missing, forged, expired or untrusted credential",
    403: "not allowed",
    404: "unknown task, delegation or resource",
    405: "method not allowed on this path",
    409: "the state does not allow it",
    413: "body over `limits.max_body_bytes`",
    414: "request target over 8192 bytes",
    429: "too many open waits for this caller",
    431: "headers over `limits.max_header_bytes`",
    500: "internal error: nothing was allowed",
    503: "store, audit or connector unavailable: nothing was allowed",
}
_DPOP = Param(
    "DPoP",
    "header",
    {"type": "string", "maxLength": 8192},
    "RFC 9449 proof of the key the task is bound to (required when `identity.dpop` says so)",
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _content(body: type[BaseModel] | str, media: str = "application/json") -> dict[str, Any]:
    if isinstance(body, str):
        return {body: {}}
    return {media: {"schema": _ref(body)}}


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(op)}
    if op.security is not None:
        out["security"] = _SECURITY[op.security]
    params = (*op.params, _DPOP) if op.dpop else op.params
    if params:
        out["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required or p.where == "path",
                "schema": dict(p.schema),
                **({"description": p.description} if p.description else {}),
            }
            for p in params
        ]
    if op.request is not None:
        out["requestBody"] = {"required": True, "content": _content(op.request, op.request_media)}
    responses: dict[str, Any] = {}
    for status, body in op.responses.items():
        entry: dict[str, Any] = {"description": _describe(body)}
        if body is not None:
            entry["content"] = _content(body)
        responses[str(status)] = entry
    for status in sorted({*op.errors, *EDGE_ERRORS}):
        responses.setdefault(
            str(status),
            {
                "description": _ERROR_DESCRIPTIONS[status],
                "content": {"application/json": {"schema": _ref(m.ErrorBody)}},
            },
        )
    out["responses"] = responses
    return out


def _describe(body: type[BaseModel] | str | None) -> str:
    doc = (body.__doc__ or "").strip() if isinstance(body, type) else ""
    return doc.splitlines()[0] if doc else "ok"


def _operation_id(op: Operation) -> str:
    words = [w for w in op.path.replace("{", "").replace("}", "").replace(".", "").split("/") if w]
    return op.method + "".join(w.replace("-", "_").title().replace("_", "") for w in words)


def _schemas() -> dict[str, Any]:
    models: set[type[BaseModel]] = {m.ErrorBody}
    for op in OPERATIONS:
        if op.request is not None:
            models.add(op.request)
        models.update(b for b in op.responses.values() if isinstance(b, type))
    _, top = models_json_schema(
        [(model, "validation") for model in sorted(models, key=lambda x: x.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    defs = dict(top.get("$defs", {}))
    defs["ErrorCode"] = {
        "type": "string",
        "enum": [c.value for c in ErrorCode],
        "description": "the error codes this version names (`ErrorBody.code`; the set may grow)",
    }
    return dict(sorted(defs.items()))


@cache
def document() -> dict[str, Any]:
    """The document (built once per process; it depends on the code only)."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tether broker API",
            "version": "1",
            "description": (
                "Every error is an `ErrorBody` with a stable `code`. Request bodies are strict: "
                "unknown fields, duplicate keys, NaN and integers beyond ±(2^53-1) are refused "
                "(400). Not part of this API: the operators' console (HTML, under `/console`) "
                "and the in-process HTTP gateway (under `gateway.http_mount`)."
            ),
        },
        "components": {
            "securitySchemes": {
                "svid": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT-SVID"},
                "task": {"type": "http", "scheme": "bearer", "bearerFormat": "txntoken+jwt"},
                "enforcer": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Tether-Enforcer",
                    "description": "the enforcement point's own JWT-SVID",
                },
            },
            "schemas": _schemas(),
        },
        "paths": paths,
    }
