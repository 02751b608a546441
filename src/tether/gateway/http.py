"""The HTTP gateway: an ASGI reverse proxy that authorizes every request.

For each request: match a configured route and rule (anything else is a 404: no open
proxying), ask the broker (task token → action, resource, captured parameters as
arguments), and only on ``allow`` forward it with the credential the connector minted.
The agent's own ``Authorization`` never leaves the gateway; hop-by-hop headers, cookies
and anything the ``Connection`` header names are dropped both ways.

Bodies stream in both directions through one pool of HTTP/1.1 keep-alive connections
(:mod:`tether.gateway.http_client`), counted against the configured limits. The W3C
``traceparent`` is continued (same trace id, a new span id for the gateway's hop) and
its trace id recorded with the decision and the call. Each forwarded call is an audit
event (``call.forwarded``) linked to its decision id: method, route, upstream status,
bytes and duration — bodies only when a route sets ``record_bodies``.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

import anyio
from starlette.types import Receive, Scope, Send

from tether.audit import event as ev
from tether.broker import AuthorizeRequest
from tether.errors import (
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    TetherError,
    Unauthenticated,
    Unavailable,
    http_status,
)
from tether.gateway.authorizer import Authorizer, Verdict, refusal_message, upstream_credential_headers
from tether.gateway.http_client import (
    Origin,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)
from tether.gateway.routes import Route, RouteTable, Rule
from tether.identity.dpop import DpopProof

log = logging.getLogger("tether.gateway.http")


#: RFC 9110 §7.6.1 connection-specific headers, plus the legacy ones proxies still see.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    }
)
#: Never forwarded upstream: the agent's credentials and what the gateway sets itself.
_DROP_REQUEST = HOP_BY_HOP | {
    b"authorization",
    b"dpop",
    b"cookie",
    b"host",
    b"content-length",
    b"x-tether-enforcer",
    b"traceparent",
    b"tracestate",
}
#: Never returned to the agent: upstream sessions are not the agent's to hold.
_DROP_RESPONSE = HOP_BY_HOP | {b"set-cookie", b"set-cookie2", b"content-length"}
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_BAD_RAW_PATH = re.compile(r"%2f|%5c|%00|\\|%2e", re.IGNORECASE)
_RECORD_LIMIT = 64 * 1024
#: A request body up to this size is read whole before it is forwarded (one write upstream).
_BUFFER_BYTES = 64 * 1024
APPROVAL_POLL_SECONDS = 1.0


class _BodyTooLarge(Exception):
    pass


class _TooLargeAnswer(Exception):
    """The upstream's answer is over the limit and nothing of it was relayed yet."""


class _Exchange:
    """The bytes of one forwarded call: counted against the limits, kept for the record
    when the route records bodies."""

    def __init__(self, record: bool, request_limit: int, response_limit: int) -> None:
        self.record = record
        self.request_limit, self.response_limit = request_limit, response_limit
        self.request_bytes = self.response_bytes = 0
        self.recorded_request, self.recorded_response = bytearray(), bytearray()

    def _count_request(self, chunk: bytes) -> None:
        self.request_bytes += len(chunk)
        if self.request_bytes > self.request_limit:
            raise _BodyTooLarge
        if self.record and len(self.recorded_request) < _RECORD_LIMIT:
            self.recorded_request += chunk[: _RECORD_LIMIT - len(self.recorded_request)]

    def count_response(self, chunk: bytes) -> None:
        self.response_bytes += len(chunk)
        if self.response_bytes > self.response_limit:
            raise _BodyTooLarge
        if self.record and len(self.recorded_response) < _RECORD_LIMIT:
            self.recorded_response += chunk[: _RECORD_LIMIT - len(self.recorded_response)]

    async def _next(self, receive: Any) -> tuple[bytes, bool]:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise anyio.get_cancelled_exc_class()()
        chunk: bytes = msg.get("body", b"")
        self._count_request(chunk)
        return chunk, bool(msg.get("more_body", False))

    async def read_request(self, receive: Any) -> tuple[bytes, AsyncIterator[bytes] | None]:
        """The request body: whole when it ends within :data:`_BUFFER_BYTES` (sent with
        its head in one write), else that much and a stream of the rest."""
        first, more = bytearray(), True
        while more and len(first) < _BUFFER_BYTES:
            chunk, more = await self._next(receive)
            first += chunk
        if not more:
            return bytes(first), None

        async def rest() -> AsyncIterator[bytes]:
            more = True
            while more:
                chunk, more = await self._next(receive)
                if chunk:
                    yield chunk

        return bytes(first), rest()


def continue_trace(header: str | None) -> tuple[str, str]:
    """(trace id, traceparent for the upstream): the caller's trace or a new one."""
    m = _TRACEPARENT.match(header or "")
    fresh = secrets.token_hex(24)  # a span id, and a trace id if the caller has none: one read
    if m and m.group(1) != "0" * 32 and m.group(2) != "0" * 16:
        trace, flags = m.group(1), m.group(3)
    else:
        trace, flags = fresh[16:], "01"
    return trace, f"00-{trace}-{fresh[:16]}-{flags}"


def _connection_tokens(value: bytes) -> set[bytes]:
    """Headers a sender marked as hop-by-hop in its ``Connection`` header (RFC 9110 §7.6.1)."""
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


#: The request headers the gateway itself reads (see :class:`_Head`).
_READ = frozenset(
    {
        b"authorization",
        b"content-length",
        b"transfer-encoding",
        b"traceparent",
        b"dpop",
        b"host",
        b"connection",
    }
)


class _Head:
    """A request's headers, read in one pass: the names lowered (ASGI servers send them
    lowered already; an app mounted elsewhere may not), the first value of each header
    the gateway reads, every ``Authorization`` and ``DPoP`` value, and the ``Connection``
    tokens. (Each look-up used to be a scan of its own: five per request.)"""

    __slots__ = ("authorizations", "dpop", "first", "headers", "hop")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.first: dict[bytes, bytes] = {}
        self.authorizations: list[bytes] = []
        self.dpop: list[bytes] = []
        self.hop: set[bytes] = set()
        for k, v in raw:
            k = k.lower()
            self.headers.append((k, v))
            if k in _READ:
                self.first.setdefault(k, v)
                if k == b"authorization":
                    self.authorizations.append(v)
                elif k == b"dpop":
                    self.dpop.append(v)
                elif k == b"connection":
                    self.hop |= _connection_tokens(v)

    def get(self, name: bytes) -> str | None:
        value = self.first.get(name)
        return value.decode("latin-1") if value is not None else None

    def bearer(self) -> str:
        for v in self.authorizations:
            scheme, _, token = v.decode("latin-1").partition(" ")
            if scheme.lower() in ("bearer", "dpop") and token.strip():
                return token.strip()
        raise Unauthenticated("send your task token as `Authorization: Bearer <token>`", code="missing_token")

    def forward(self, extra: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
        """The headers as the upstream gets them: without hop-by-hop headers, the agent's
        credentials and what the gateway sets itself, plus ``extra``."""
        added = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
        drop = _DROP_REQUEST
        if self.hop or any(k not in drop for k, _ in added):
            drop = drop | self.hop | {k for k, _ in added}
        return [(k, v) for k, v in self.headers if k not in drop] + added


def forward_headers(raw: list[tuple[bytes, bytes]], extra: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """The agent's headers as the upstream gets them (see :meth:`_Head.forward`)."""
    return _Head(raw).forward(extra)


def response_headers(raw: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
    """The upstream's headers as the agent gets them (hop-by-hop, cookies and framing
    dropped), and its ``Content-Length`` if it sent one: one pass."""
    out: list[tuple[bytes, bytes]] = []
    hop: set[bytes] = set()
    length: bytes | None = None
    for k, v in raw:
        k = k.lower()
        if k in _DROP_RESPONSE:
            if k == b"connection":
                hop |= _connection_tokens(v)
            elif k == b"content-length" and length is None:
                length = v
            continue
        out.append((k, v))
    if hop:
        out = [(k, v) for k, v in out if k not in hop]
    return out, length


def query_arguments(params: dict[str, str], query: bytes) -> dict[str, Any]:
    """Path parameters plus the query string, as the arguments policy reads.

    A repeated query parameter is a list (a set in ``context.args`` when the catalog types
    it). A query parameter that repeats a path parameter's name is refused: the upstream
    may read either, so policy must not see only one.
    """
    out: dict[str, Any] = dict(params)
    if not query:
        return out
    try:
        pairs = parse_qsl(
            query.decode("ascii"), keep_blank_values=True, strict_parsing=True, max_num_fields=64
        )
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("the query string is malformed", code="invalid_query") from None
    for key, value in pairs:
        if key in params:
            raise InvalidRequest(
                f"query parameter `{key[:64]}` repeats a path parameter", code="invalid_query"
            )
        if key in out:
            prev = out[key]
            out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[key] = value
    return out


class HttpGateway:
    """An ASGI application: the reverse proxy of one route table."""

    def __init__(self, table: RouteTable, authorizer: Authorizer) -> None:
        self.table = table
        self.options = table.options
        self.authorizer = authorizer
        o = self.options
        self.pool = UpstreamPool(
            max_connections=o.max_connections,
            connect_timeout=o.connect_timeout_seconds,
            timeout=o.timeout_seconds,
        )
        self._origins = {r.upstream: Origin.parse(r.upstream) for r in table.routes}

    async def aclose(self) -> None:
        await self.pool.aclose()
        await self.authorizer.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            if scope["type"] == "websocket":  # cannot be authorized per message: refused
                await send({"type": "websocket.close", "code": 1008})
            return
        try:
            await self._handle(scope, receive, send)
        except TetherError as exc:
            await _send_json(send, http_status(exc), exc.to_dict())

    async def _handle(self, scope: Scope, receive: Any, send: Any) -> None:
        method: str = scope["method"]
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        root = scope.get("root_path") or ""
        if root and raw_path.startswith(root):  # mounted under the broker (``http_mount``)
            raw_path = raw_path[len(root) :] or "/"
        if not raw_path.startswith("/") or _BAD_RAW_PATH.search(raw_path):
            # Encoded slashes, dots and backslashes are how a path that was authorized as
            # one resource reaches another after the upstream normalizes it.
            raise InvalidRequest("the request path is not in normal form", code="invalid_path")
        path = unquote(raw_path)
        if any(seg in (".", "..") for seg in path.split("/")) or "//" in path:
            raise InvalidRequest("the request path is not in normal form", code="invalid_path")
        found = self.table.find(path)
        rule, params, route = None, None, None
        if found is not None:
            route, rest = found
            for r in route.rules:
                params = r.match(method, rest)
                if params is not None:
                    rule = r
                    break
        if route is None or rule is None or params is None:
            raise NotFound(f"no route for `{method} {path[:200]}`", code="no_route")
        head = _Head(scope["headers"])
        length = head.first.get(b"content-length")
        # Bytes, not text: ``str.isdigit`` also takes digits ``int`` refuses (``²``), and a
        # number of thousands of digits is too long for ``int``: either would be a 500.
        if length is not None and (
            not length.isdigit() or len(length) > 18 or int(length) > self.options.max_request_bytes
        ):
            raise PayloadTooLarge(
                f"the body exceeds {self.options.max_request_bytes} bytes",
                limit=self.options.max_request_bytes,
            )
        token = head.bearer()
        trace, traceparent = continue_trace(head.get(b"traceparent"))
        rest_raw = raw_path[len(route.prefix) :] if route.prefix != "/" else raw_path
        req = AuthorizeRequest(
            action=rule.action,
            resource=rule.resource,
            arguments=query_arguments(params, scope.get("query_string") or b""),
            method=method,
            path=path,
            trace_id=trace,
        )
        verdict = await self._decide(token, req, self._proof(scope, head, method, raw_path))
        if not verdict.allowed:
            await self._refuse(send, verdict)
            return
        await self._forward(
            scope, receive, send, head, route, rule, verdict, rest_raw or "/", traceparent, trace
        )

    def _proof(self, scope: Scope, head: _Head, method: str, raw_path: str) -> DpopProof | None:
        """The agent's DPoP proof and the URL it must be for: this gateway's, as the agent saw it."""
        if not head.dpop:
            return None
        base = self.options.public_url or f"{scope.get('scheme', 'http')}://{head.get(b'host') or ''}"
        return DpopProof(
            proof=head.dpop[0].decode("latin-1"),
            method=method,
            url=base.rstrip("/") + raw_path,
            count=len(head.dpop),
        )

    async def _decide(self, token: str, req: AuthorizeRequest, proof: DpopProof | None) -> Verdict:
        verdict = await self.authorizer.authorize(token, req, proof)
        wait = self.options.approval_wait_seconds
        # A DPoP proof is single-use (its jti is remembered): a held request could not be
        # re-asked with it, so a bound token gets the 403 and retries after Retry-After.
        if verdict.outcome != "approval_required" or wait <= 0 or proof is not None:
            return verdict
        # Hold the request while a human decides: re-ask on a fixed cadence (the same
        # arguments find the same pending approval), give up at the deadline.
        deadline = time.monotonic() + wait
        while verdict.outcome == "approval_required" and time.monotonic() < deadline:
            await anyio.sleep(min(APPROVAL_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            verdict = await self.authorizer.authorize(token, req, proof)
        return verdict

    async def _refuse(self, send: Any, verdict: Verdict) -> None:
        body = verdict.public()
        headers: dict[str, str] = {}
        if verdict.outcome == "approval_required":
            body["code"] = "approval_required"
            body["message"] = "a human must approve this call; retry once it is approved"
            headers["retry-after"] = str(self.options.retry_after_seconds)
        else:
            body.setdefault("code", "denied")
            body["message"] = refusal_message(verdict)
        await _send_json(send, 403, body, headers)

    async def _forward(
        self,
        scope: Scope,
        receive: Any,
        send: Any,
        head: _Head,
        route: Route,
        rule: Rule,
        verdict: Verdict,
        rest_raw: str,
        traceparent: str,
        trace: str,
    ) -> None:
        extra = {**route.headers, **upstream_credential_headers(verdict), "traceparent": traceparent}
        origin = self._origins[route.upstream]
        query = scope.get("query_string") or b""
        target = origin.base_path + rest_raw + ("?" + query.decode("latin-1") if query else "")
        length = head.first.get(b"content-length")
        has_body = length not in (None, b"0") or b"transfer-encoding" in head.first
        io = _Exchange(route.record_bodies, self.options.max_request_bytes, self.options.max_response_bytes)
        started = time.perf_counter()
        status, outcome, relayed = 0, "ok", False
        try:
            try:
                body, stream = await io.read_request(receive) if has_body else (None, None)
                resp = await self.pool.request(
                    origin,
                    scope["method"],
                    target,
                    head.forward(extra),
                    body,
                    stream,
                    int(length) if stream is not None and length is not None else None,
                )
            except _BodyTooLarge:
                outcome = "request_too_large"
                limit = io.request_limit
                raise PayloadTooLarge(f"the body exceeds {limit} bytes", limit=limit) from None
            except UpstreamTimeout:
                outcome = "upstream_timeout"
                raise GatewayTimeout("the upstream did not answer in time", code="upstream_timeout") from None
            except UpstreamError:
                outcome = "upstream_unavailable"
                raise BadGateway("the upstream could not be reached", code="upstream_unavailable") from None
            try:
                status = resp.status
                await self._relay(send, resp, verdict, io)
                relayed = True
            except _TooLargeAnswer:
                outcome = "response_too_large"
                limit = io.response_limit
                raise BadGateway(
                    f"the upstream response exceeds {limit} bytes", code="upstream_response_too_large"
                ) from None
            except (UpstreamError, _BodyTooLarge) as exc:
                # The status line is out: all that is left is cutting the connection.
                outcome = "response_too_large" if isinstance(exc, _BodyTooLarge) else "upstream_broken"
                raise
            finally:
                resp.release()
        finally:
            payload: dict[str, Any] = {
                "gateway": "http",
                "route": route.name,
                "service": route.service,
                "method": scope["method"],
                "path": unquote(rest_raw)[:512],
                "rule": rule.path,
                "action": rule.action,
                "resource": rule.resource,
                "upstream_status": status,
                "outcome": outcome,
                "request_bytes": io.request_bytes,
                "response_bytes": io.response_bytes,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            }
            if route.record_bodies:
                payload["request_body"] = io.recorded_request.decode("utf-8", "replace")
                payload["response_body"] = io.recorded_response.decode("utf-8", "replace")
            await self._record(verdict, payload, trace, relayed)

    async def _relay(self, send: Any, resp: UpstreamResponse, verdict: Verdict, io: _Exchange) -> None:
        limit = io.response_limit
        out, length = response_headers(resp.headers)
        if length is not None and not (length.isdigit() and len(length) <= 18):
            length = None  # (the parser refuses such an answer before it gets here)
        if length is not None and int(length) > limit:
            raise _TooLargeAnswer
        whole = resp.read_buffered() if resp.complete else None
        if whole is not None and len(whole) > limit:
            raise _TooLargeAnswer
        if length is not None:
            out.append((b"content-length", length))
        if verdict.decision_id:
            out.append((b"x-tether-decision-id", verdict.decision_id.encode()))
        await send({"type": "http.response.start", "status": resp.status, "headers": out})
        if whole is not None:  # the usual small answer, already whole: one body message
            io.count_response(whole)
            await send({"type": "http.response.body", "body": whole, "more_body": False})
            return
        async for chunk in resp.chunks():
            io.count_response(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _record(self, verdict: Verdict, payload: dict[str, Any], trace: str, relayed: bool) -> None:
        try:
            with anyio.CancelScope(shield=True):  # a client hanging up must not lose the record
                await self.authorizer.record(ev.CALL_FORWARDED, verdict, payload, trace, after_reply=relayed)
        except Exception:
            log.exception("could not record the forwarded call of decision %s", verdict.decision_id)


class BadGateway(Unavailable):
    """The upstream failed or misbehaved (502); nothing the agent can fix."""

    status = 502


class GatewayTimeout(Unavailable):
    status = 504


async def _send_json(
    send: Any, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"cache-control", b"no-store"),
    ]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data, "more_body": False})
