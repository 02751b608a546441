"""The broker's HTTP API (ASGI, Starlette).

Agents authenticate with a JWT-SVID to open tasks and with their task token for
everything else. Operator actions (approvals, revocation, reload) are not here: they
go through the admin socket, where the kernel tells us who is asking.

Every error is JSON ``{"code", "message", ...}`` with the status of its ``TetherError``;
an unexpected exception is a 500 ``internal_error`` that allows nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether import tracing
from tether.broker import OpenTaskRequest
from tether.errors import (
    ErrorCode,
    Forbidden,
    HeadersTooLarge,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    TetherError,
    Unauthenticated,
    http_status,
)
from tether.identity.dpop import DpopProof
from tether.model import Task
from tether.server.edge import CatchAll
from tether.server.metrics import metrics_endpoint
from tether.server.openapi import document as openapi_document
from tether.server.parsing import authorize_request, grants, header_int, parse_json_object
from tether.server.protocol import MAX_TARGET_BYTES
from tether.wire import models as w
from tether.wire.validate import parse, render_json

if TYPE_CHECKING:
    from tether.runtime import Runtime

log = logging.getLogger("tether.http")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")

Handler = Callable[[Request], Awaitable[Response]]


def reply(
    model: type[BaseModel], view: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """An answer rendered through its wire model (the shape ``/openapi.json`` documents)."""
    return Response(render_json(model, view), status, headers, media_type="application/json")


def error_response(exc: TetherError) -> JSONResponse:
    headers = {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{exc.code}"'
    return JSONResponse(exc.to_dict(), status_code=http_status(exc), headers=headers)


def bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthenticated("send a bearer token in the `Authorization` header", code="missing_token")
    scheme, _, token = header.partition(" ")
    if scheme.lower() not in ("bearer", "dpop") or not token.strip():
        raise Unauthenticated("the `Authorization` header must be `Bearer <token>`", code="missing_token")
    return token.strip()


def dpop_proof(request: Request, public_url: str = "") -> DpopProof:
    """The request's ``DPoP`` header with the method and URL it must be bound to (RFC 9449).

    Behind a proxy, ``identity.public_url`` names the URL agents see; otherwise the URL
    the request arrived on (without query) is used.
    """
    values = request.headers.getlist("dpop")
    if not values:  # the URL is only compared with a proof's `htu`: not built without one
        return DpopProof(None, request.method, "", count=0)
    url = (
        (public_url.rstrip("/") + request.url.path)
        if public_url
        else str(request.url.replace(query="", fragment=""))
    )
    return DpopProof(values[0], request.method, url, count=len(values))


def trace_id(request: Request) -> str | None:
    m = _TRACEPARENT.match(request.headers.get("traceparent", ""))
    return m.group(1) if m else None


def task_view(task: Task, children: list[Task] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_id": task.id,
        "agent": task.agent,
        "intent": task.intent,
        "description": task.description,
        "state": task.state.value,
        "scope": [g.to_dict() for g in task.scope],
        "created_at": task.created_at,
        "expires_at": task.expires_at,
        "parent_id": task.parent_id,
        "root_id": task.root_id,
        "depth": task.depth,
        "act": list(task.act_chain),
        "delegator": (
            {"sub": task.delegator.subject, "iss": task.delegator.issuer} if task.delegator else None
        ),
    }
    if children is not None:
        body["children"] = [{"task_id": c.id, "agent": c.agent, "state": c.state.value} for c in children]
    return body


async def json_body(request: Request, max_body: int) -> dict[str, Any]:
    """The request's JSON object body, size-limited while it streams in, strictly parsed."""
    length = header_int(request.headers, "content-length", lo=0, hi=10**18)
    if length is not None and length > max_body:
        raise PayloadTooLarge(f"the body exceeds {max_body} bytes", limit=max_body)
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if ctype != "application/json":
        raise InvalidRequest("send `Content-Type: application/json`", code="unsupported_media_type")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            raise PayloadTooLarge(f"the body exceeds {max_body} bytes", limit=max_body)
        chunks.append(chunk)
    return parse_json_object(b"".join(chunks))


class Api:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.max_body = runtime.settings.limits.max_body_bytes

    async def body(self, request: Request) -> dict[str, Any]:
        return await json_body(request, self.max_body)

    # -- endpoints -------------------------------------------------------------------------
    def _authenticate(self, token: str) -> Any:
        return self.rt.identity.authenticate(token)

    async def open_task(self, request: Request) -> Response:
        token = bearer(request)
        try:
            doc = await self.body(request)
        except InvalidRequest:
            # A forged credential is refused (and recorded) as such whatever the body holds.
            await run_in_threadpool(self._authenticate, token)
            raise
        body = parse(w.OpenTaskRequest, doc)
        delegation = body.delegation or None
        if body.intent is None and delegation is None:
            raise InvalidRequest("missing field `intent`", code=ErrorCode.MISSING_FIELD, field="intent")
        limit = self.rt.settings.limits.max_token_bytes
        if body.delegator_token is not None and len(body.delegator_token) > limit:
            raise InvalidRequest(
                f"`delegator_token` is longer than {limit} characters",
                code=ErrorCode.INVALID_FIELD,
                field="delegator_token",
            )
        delegator_token = body.delegator_token or None
        proof = dpop_proof(request, self.rt.settings.identity.public_url)
        req = OpenTaskRequest(
            intent=body.intent or None,
            description=body.description or "",
            scope=grants(body.scope) if body.scope is not None else None,
            ttl_seconds=(
                body.ttl_seconds if body.ttl_seconds is not None else self.rt.settings.tasks.max_ttl_seconds
            ),
            delegation=delegation,
        )

        def run() -> Any:
            identity = self.rt.identity
            # Who (workload credential), for whom (delegator), bound to what (DPoP key):
            # each refusal is audited by the identity layer before it is raised.
            workload = identity.authenticate(token)
            delegator = identity.delegator(delegator_token) if delegator_token else None
            jkt = identity.bind_at_open(proof)
            return self.rt.broker.open_task(workload, replace(req, delegator=delegator, cnf_jkt=jkt))

        opened = await run_in_threadpool(run)
        view = {
            "task_id": opened.task.id,
            "task_token": opened.token,
            "expires_at": opened.task.expires_at,
            "scope": [g.to_dict() for g in opened.task.scope],
            "depth": opened.task.depth,
            "parent_id": opened.task.parent_id,
        }
        return reply(w.TaskOpened, view, 201)

    async def get_task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        token = bearer(request)
        proof = dpop_proof(request, self.rt.settings.identity.public_url)

        def run() -> Any:
            claims = self.rt.broker.verify_token(token, proof)
            task, children = self.rt.broker.get_task(task_id)
            # The task's own token or one of an ancestor (a parent supervises its children).
            if claims.task_id != task_id and claims.task_id not in (task.root_id, task.parent_id):
                raise Forbidden("this token may not read that task", code="token_task_mismatch")
            return task_view(task, children)

        return reply(w.TaskView, await run_in_threadpool(run))

    async def delegate(self, request: Request) -> Response:
        token = bearer(request)
        proof = dpop_proof(request, self.rt.settings.identity.public_url)
        body = parse(w.DelegateRequest, await self.body(request))
        child, scope, ttl = body.child, grants(body.scope), body.ttl_seconds
        task_id = request.path_params["task_id"]

        def run() -> Any:
            claims = self.rt.broker.verify_token(token, proof)
            return self.rt.broker.delegate(claims, task_id, child, scope, ttl)

        d = await run_in_threadpool(run)
        view = {
            "delegation": d.id,
            "child": d.child_agent,
            "expires_at": d.expires_at,
            "scope": [g.to_dict() for g in d.scope],
            "ttl_seconds": d.ttl_seconds,
        }
        return reply(w.DelegationOffered, view, 201)

    async def close(self, request: Request) -> Response:
        token = bearer(request)
        proof = dpop_proof(request, self.rt.settings.identity.public_url)
        task_id = request.path_params["task_id"]

        def run() -> list[str]:
            claims = self.rt.broker.verify_token(token, proof)
            return self.rt.broker.close_task(task_id, by=claims.agent, claims=claims)

        closed = await run_in_threadpool(run)
        return reply(w.TaskClosed, {"task_id": task_id, "closed": closed})

    async def authorize(self, request: Request) -> Response:
        token = bearer(request)
        proof = dpop_proof(request, self.rt.settings.identity.public_url)
        try:
            body = parse(w.AuthorizeRequestBody, await self.body(request))
        except InvalidRequest as bad:
            # A forged token is refused and recorded as forged, whatever the body holds.
            await run_in_threadpool(self.rt.broker.refuse_body, token, bad)
            raise
        req = authorize_request(body, trace_id=trace_id(request))
        if self.rt.db.dialect == "sqlite":
            # A few hundred microseconds of CPU and a local commit: cheaper on the loop than
            # a round trip through a worker thread. PostgreSQL waits on the network: thread.
            result = self.rt.broker.authorize(token, req, proof)
        else:
            result = await run_in_threadpool(self.rt.broker.authorize, token, req, proof)
        answer = result.decision.to_dict()
        if result.credential is not None and result.credential.for_agent is not None:
            answer["credential"] = {"lease_id": result.credential.lease_id, **result.credential.for_agent}
        return reply(w.AuthorizeResponse, answer)

    async def jwks(self, request: Request) -> Response:
        return reply(w.Jwks, self.rt.keys.jwks(), headers={"Cache-Control": "max-age=60"})

    async def healthz(self, request: Request) -> Response:
        return reply(w.Health, {"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        ok = await run_in_threadpool(self.rt.db.ping)
        body = {"status": "ok" if ok else "unavailable", "policy_version": self.rt.engine.bundle.version}
        return reply(w.Readiness, body, 200 if ok else 503)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())


def guarded(handler: Handler) -> Handler:
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except TetherError as exc:
            return error_response(exc)
        # Anything else escapes to the ASGI catch-all (tether.server.edge), which answers a
        # JSON 500 `internal_error` and records the deny.

    return wrapper


class HeaderLimit:
    """Refuse requests whose headers exceed the limit (431) before any handler runs.

    The HTTP parser only bounds headers that arrive in pieces; a single large read
    passes it, so the limit is enforced again here on what the server parsed.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            # A request target that arrived in one read passes the HTTP parser's bound too.
            target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            if target > MAX_TARGET_BYTES:
                response = JSONResponse(
                    {
                        "code": "request_target_too_long",
                        "message": f"the request target exceeds {MAX_TARGET_BYTES} bytes",
                    },
                    status_code=414,
                )
                await response(scope, receive, send)
                return
            size = sum(len(k) + len(v) + 4 for k, v in scope["headers"])
            if size > self.max_bytes:
                response = error_response(HeadersTooLarge(f"request headers exceed {self.max_bytes} bytes"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(runtime: Runtime, extra_routes: list[Route] | None = None) -> Starlette:
    api = Api(runtime)
    g = guarded
    routes = [
        Route("/v1/tasks", g(api.open_task), methods=["POST"]),
        Route("/v1/tasks/{task_id}", g(api.get_task), methods=["GET"]),
        Route("/v1/tasks/{task_id}/delegations", g(api.delegate), methods=["POST"]),
        Route("/v1/tasks/{task_id}/close", g(api.close), methods=["POST"]),
        Route("/v1/authorize", tracing.traced("tether.authorize", g(api.authorize)), methods=["POST"]),
        Route("/.well-known/jwks.json", g(api.jwks), methods=["GET"]),
        Route("/healthz", g(api.healthz), methods=["GET"]),
        Route("/readyz", g(api.readyz), methods=["GET"]),
        Route("/openapi.json", g(api.openapi), methods=["GET"]),
        Route("/metrics", g(metrics_endpoint), methods=["GET"]),
        *runtime.routes,
        *(extra_routes or []),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(HeaderLimit, max_bytes=runtime.settings.limits.max_header_bytes)
    app.add_middleware(CatchAll, runtime=runtime)  # added last: the outermost of ours
    app.state.runtime = runtime
    app.state.api = api

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(NotFound(f"no route `{request.url.path[:200]}`"))

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error_response(MethodNotAllowed(f"`{request.method}` not allowed"))

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_allowed)
    return app
