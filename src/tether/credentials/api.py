"""HTTP routes of the credentials layer (served beside the core API).

    POST /v1/credentials            task token → a credential for one resource
                                     (decided by policy as `credential:issue`)
    POST /v1/introspect             RFC 7662; caller authenticates with a JWT-SVID
    POST /v1/revoke-token           RFC 7009; caller: a JWT-SVID or a task token
    GET  /v1/revocations            polling form of the feed: ?since=&limit=&wait=
    GET  /v1/revocations/stream     server-sent events; resume with ?since= or Last-Event-ID

Feed and introspection callers are workloads (resource servers, gateways) proving
themselves with a JWT-SVID for the broker's audience, the same as agents opening tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import anyio.to_thread
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tether import actions
from tether.broker import AuthorizeRequest
from tether.credentials.introspection import Introspector
from tether.credentials.service import Credentials
from tether.errors import Forbidden, InvalidRequest, PayloadTooLarge, TetherError, TooManyRequests
from tether.server.app import bearer, guarded, json_body, reply, trace_id
from tether.server.parsing import header_int, query_int
from tether.wire import models as w
from tether.wire.validate import parse

if TYPE_CHECKING:
    from tether.runtime import Core

SSE_POLL = 0.25  # seconds between in-memory checks; the store is read on change or each second
SSE_HEARTBEAT = 15.0
#: Threads for feed reads, apart from the pool decisions run in: waiting callers never
#: hold a thread (they sleep on the event loop), and their short reads cannot crowd out
#: an authorize call however many of them there are.
FEED_READERS = anyio.CapacityLimiter(4)


async def _feed_read(fn: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(fn, *args, limiter=FEED_READERS)


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    return query_int(request.query_params, name, default, lo=lo, hi=hi)


class CredentialsApi:
    def __init__(self, rt: Core, creds: Credentials, introspector: Introspector) -> None:
        self.rt = rt
        self.creds = creds
        self.introspector = introspector
        self.max_body = rt.settings.limits.max_body_bytes
        self.max_waits = rt.settings.limits.max_waits_per_caller
        self._waits: Counter[str] = Counter()
        self._head, self._head_at, self._head_busy = 0, 0.0, False

    async def _store_head(self) -> int:
        """The feed's newest cursor in the store, read at most once a second for all waiters
        together: how entries committed by other replicas are noticed."""
        if time.monotonic() - self._head_at >= 1.0 and not self._head_busy:
            self._head_busy = True
            try:
                self._head = await _feed_read(self.creds.feed.head)
                self._head_at = time.monotonic()
            finally:
                self._head_busy = False
        return self._head

    def _reserve(self, caller: str) -> Callable[[], None]:
        """Count one open long-poll or stream of ``caller`` (429 past the cap); returns the
        release, which is safe to call more than once."""
        if self._waits[caller] >= self.max_waits:
            raise TooManyRequests(
                f"`{caller}` already holds {self.max_waits} open waits on the revocation feed; "
                "close one, or follow the feed with one stream",
                code="too_many_waits",
                limit=self.max_waits,
            )
        self._waits[caller] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._waits[caller] -= 1
                if self._waits[caller] <= 0:
                    del self._waits[caller]

        return release

    @contextlib.contextmanager
    def _waiting(self, caller: str) -> Iterator[None]:
        release = self._reserve(caller)
        try:
            yield
        finally:
            release()

    async def _form(self, request: Request) -> dict[str, str]:
        """RFC 7662/7009 bodies are form-encoded; JSON is accepted too. Keys appear once."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        if ctype == "application/json":
            doc = await json_body(request, self.max_body)
            return {k: v for k, v in doc.items() if isinstance(v, str)}
        if ctype != "application/x-www-form-urlencoded":
            raise InvalidRequest("send `application/x-www-form-urlencoded`", code="unsupported_media_type")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.max_body:
                raise PayloadTooLarge(f"the body exceeds {self.max_body} bytes")
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw))
        except (UnicodeDecodeError, ValueError):
            raise InvalidRequest("the body is not valid form data", code="malformed_body") from None
        out: dict[str, str] = {}
        for k, v in pairs:
            if k in out:
                raise InvalidRequest(f"duplicate parameter `{k[:64]}`", code="malformed_body")
            out[k] = v
        return out

    def _workload(self, request: Request) -> str:
        return self.rt.svids.verify(bearer(request)).spiffe_id

    # -- endpoints -----------------------------------------------------------------------
    async def issue(self, request: Request) -> Response:
        token = bearer(request)
        try:
            doc = await json_body(request, self.max_body)
        except InvalidRequest as bad:  # a forged token is recorded whatever the body holds
            await run_in_threadpool(self.rt.broker.refuse_body, token, bad)
            raise
        resource_id = parse(w.CredentialRequest, doc).resource
        resource = self.rt.catalog.get(resource_id)
        if resource is not None and resource.connector is None:
            raise InvalidRequest(
                f"`{resource_id}` has no connector; nothing to issue", code="no_connector", field="resource"
            )
        req = AuthorizeRequest(
            action=actions.CREDENTIAL_ISSUE, resource=resource_id, trace_id=trace_id(request)
        )
        result = await run_in_threadpool(self.rt.broker.authorize, token, req)
        if not result.decision.allowed or result.credential is None:
            raise Forbidden(
                "policy does not allow a credential for this resource",
                code=result.decision.code or "credential_denied",
                decision=result.decision.to_dict(),
            )
        body: dict[str, Any] = {
            "lease_id": result.credential.lease_id,
            **(result.credential.for_agent or {}),
            "decision_id": result.decision.id,
        }
        return reply(w.CredentialIssued, body, 201, headers={"Cache-Control": "no-store"})

    async def introspect(self, request: Request) -> Response:
        await run_in_threadpool(self._workload, request)
        form = await self._form(request)
        token = form.get("token")
        if not token:
            raise InvalidRequest("missing parameter `token`", code="missing_field", field="token")
        body = await run_in_threadpool(self.introspector.introspect, token)
        return reply(w.Introspection, body, headers={"Cache-Control": "no-store"})

    async def revoke_token(self, request: Request) -> Response:
        caller = bearer(request)

        def who() -> str:
            try:
                return self.rt.svids.verify(caller).spiffe_id
            except TetherError:
                return self.rt.broker.verify_token(caller).agent  # an agent revoking its own tokens

        by = await run_in_threadpool(who)
        form = await self._form(request)
        token = form.get("token")
        if not token:
            raise InvalidRequest("missing parameter `token`", code="missing_field", field="token")
        await run_in_threadpool(self.introspector.revoke, token, by=by)
        return Response(status_code=200, headers={"Cache-Control": "no-store"})

    async def revocations(self, request: Request) -> Response:
        caller = await run_in_threadpool(self._workload, request)
        since = _int_param(request, "since", 0, 0, 2**62)
        limit = _int_param(request, "limit", 500, 1, 1000)
        wait = _int_param(request, "wait", 0, 0, 30)
        if wait == 0:
            events, cursor = await _feed_read(self.creds.feed.since, since, limit)
        else:
            with self._waiting(caller):
                events, cursor = await self._long_poll(since, float(wait), limit)
        return reply(w.Revocations, {"events": [e.to_dict() for e in events], "cursor": cursor})

    async def _long_poll(self, since: int, wait: float, limit: int) -> tuple[list[Any], int]:
        """The feed after ``since``, waiting up to ``wait`` s on the event loop, not a thread:
        woken by a local commit (the feed's generation) or a newer head in the store."""
        feed = self.creds.feed
        deadline = time.monotonic() + wait
        while True:
            generation = feed.generation
            events, cursor = await _feed_read(feed.since, since, limit)
            if events or time.monotonic() >= deadline:
                return events, cursor
            while time.monotonic() < deadline:
                await asyncio.sleep(min(SSE_POLL, max(0.0, deadline - time.monotonic())))
                if feed.generation != generation or await self._store_head() > cursor:
                    break

    async def stream(self, request: Request) -> Response:
        caller = await run_in_threadpool(self._workload, request)
        last = header_int(request.headers, "last-event-id", lo=0, hi=2**62)
        since = _int_param(request, "since", last or 0, 0, 2**62)
        duration = _int_param(request, "timeout", 300, 1, 3600)
        feed = self.creds.feed

        # The slot is taken here, so a caller past the cap gets a 429 and not an empty
        # stream; it is given back when the stream ends, or when an unstarted one is dropped.
        release = self._reserve(caller)

        async def events() -> AsyncIterator[str]:
            try:
                async for chunk in follow():
                    yield chunk
            finally:
                release()

        async def follow() -> AsyncIterator[str]:
            cursor, deadline = since, time.monotonic() + duration
            seen_gen, last_beat = -1, time.monotonic()
            yield "retry: 1000\n\n"
            while time.monotonic() < deadline:
                now = time.monotonic()
                if feed.generation != seen_gen or await self._store_head() > cursor:
                    seen_gen = feed.generation
                    batch, cursor = await _feed_read(feed.since, cursor, 500)
                    for e in batch:
                        yield f"id: {e.seq}\nevent: revocation\ndata: {json.dumps(e.to_dict())}\n\n"
                    if batch:
                        continue
                if now - last_beat >= SSE_HEARTBEAT:
                    last_beat = now
                    yield ": keepalive\n\n"
                if await request.is_disconnected():
                    return
                await asyncio.sleep(SSE_POLL)

        body = events()
        weakref.finalize(body, release)
        return StreamingResponse(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


def routes(rt: Core, creds: Credentials, introspector: Introspector) -> list[Route]:
    a = CredentialsApi(rt, creds, introspector)
    return [
        Route("/v1/credentials", guarded(a.issue), methods=["POST"]),
        Route("/v1/introspect", guarded(a.introspect), methods=["POST"]),
        Route("/v1/revoke-token", guarded(a.revoke_token), methods=["POST"]),
        Route("/v1/revocations", guarded(a.revocations), methods=["GET"]),
        Route("/v1/revocations/stream", guarded(a.stream), methods=["GET"]),
    ]
