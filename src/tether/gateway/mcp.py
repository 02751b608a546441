"""The MCP gateway: an MCP server in front of one upstream MCP server, authorizing every call.

Facing the agent it is a low-level ``mcp`` ``Server`` (stdio or Streamable HTTP); facing
the upstream a ``ClientSession`` (stdio subprocess or Streamable HTTP). The agent's task
token comes from the HTTP ``Authorization`` header (with its DPoP proof, where bound) or,
over stdio, from the launch (``TETHER_TASK_TOKEN`` / ``--task-token``).

* ``tools/list`` shows only tools that are pinned and approved, in the catalog as
  ``Tool::"<server>.<tool>"``, inside the task's scope and covered by some permit
  (see :func:`tether.gateway.service.visible`).
* ``tools/call`` is authorized as ``tool:call`` on ``Tool::"<server>.<tool>"`` with the
  call's arguments as ``context.call`` tags, so policies can read them. A deny is a tool
  error result saying it was denied and why (never "tool not found"); ``approval_required``
  names the approval id. Machine-readable details ride in ``_meta["tether"]``.
* Definitions are pinned (:mod:`tether.gateway.pins`): a tool whose definition changed
  since it was approved is hidden and its calls are blocked until an operator approves.
* Each forwarded call is a ``call.forwarded`` event linked to its decision: tool, argument
  digest (arguments themselves only with ``record_arguments``), result status, duration.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import anyio
import mcp_types as types
from mcp import ClientSession
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from tether.arguments import ArgSpec, ArgumentRefused, canonicalize, resolve_symlinks
from tether.audit import event as ev
from tether.broker import AuthorizeRequest, args_digest
from tether.errors import TetherError, Unauthenticated, Unavailable
from tether.gateway.authorizer import Authorizer, Verdict, refusal_message, upstream_credential_headers
from tether.gateway.http import continue_trace
from tether.gateway.mcp_relay import Relay
from tether.gateway.oauth_resource import OAuthFrontDoor, ProtectedResource
from tether.gateway.pins import APPROVED
from tether.gateway.upstream import CallHeaders, Upstream, UpstreamGone, open_session
from tether.identity.dpop import DpopProof

log = logging.getLogger("tether.gateway.mcp")

ACTION = "tool:call"
#: Tool names that can be catalog ids under a server (``<server>.<tool>``); others are dropped.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_PAGES = 20
#: JSON-RPC server-error code for a refused task token (the -32000..-32099 range).
UNAUTHENTICATED = -32001
_HEALTHY_SECONDS = 60.0  # an upstream that ran this long resets the restart count
_BACKOFF_MAX = 30.0

__all__ = ["McpGateway", "Upstream", "UpstreamGone", "refusal"]


def _result(code: str, text: str, details: Mapping[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        is_error=True,
        _meta={"tether": {**(details or {}), "code": code}},
    )


def _unknown_tool(name: str) -> types.CallToolResult:
    return _result("unknown_tool", f"no tool `{name[:64]}` is available to this task")


def refusal(verdict: Verdict) -> types.CallToolResult:
    """The agent-facing answer for a deny or an approval request: which check and why."""
    public = verdict.public()
    code = (
        "approval_required" if verdict.outcome == "approval_required" else str(public.get("code") or "denied")
    )
    return _result(code, refusal_message(verdict), public)


class McpGateway:
    """One upstream MCP server behind Tether. Use :meth:`connect`, then :meth:`server`."""

    def __init__(
        self,
        server: str,
        authorizer: Authorizer,
        *,
        task_token: str | None = None,
        record_arguments: bool = False,
        call_timeout: float = 60.0,
        refresh_seconds: float = 30.0,
        public_url: str = "",
        max_restarts: int = 3,
        backoff: float = 0.5,
        resource: ProtectedResource | None = None,
    ) -> None:
        self.name = server
        #: Set when this gateway is an OAuth protected resource: tokens must be minted for it.
        self.resource = resource
        self.authorizer = authorizer
        self.task_token = task_token
        self.record_arguments = record_arguments
        self.call_timeout = call_timeout
        self.refresh_seconds = refresh_seconds
        self.public_url = public_url
        #: Set for a task this gateway opened itself (``tether.gateway.session``).
        self.session_proof: Callable[[], DpopProof] | None = None
        self.session: ClientSession | None = None
        #: ``tools/call`` to a stdio upstream goes through this, next to ``session``.
        self._relay: Relay | None = None
        self._tools: dict[str, types.Tool] = {}
        self._states: dict[str, str] = {}
        self._specs: dict[str, dict[str, ArgSpec]] = {}
        #: A stdio upstream shares this machine's filesystem: symlinks are resolved here.
        self.local_upstream = False
        self._fetched = float("-inf")
        self._stale = True
        self._lock = anyio.Lock()
        self.max_restarts = max_restarts
        self.backoff = backoff
        self._ready = anyio.Event()
        self._dead = anyio.Event()
        self._dead_reason = ""
        self._call_headers = CallHeaders()

    # -- upstream ---------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def connect(self, upstream: Upstream) -> AsyncIterator[McpGateway]:
        """Serve with ``upstream`` until the block exits. A dead upstream is reconnected with
        backoff (HTTP) or restarted up to ``max_restarts`` times (stdio); past that the
        block ends with :class:`UpstreamGone` so the process exits non-zero."""
        self.local_upstream = bool(upstream.command)
        async with anyio.create_task_group() as tg:
            await tg.start(self._supervise, upstream)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    async def _supervise(self, upstream: Upstream, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        restarts, started = 0, False
        while True:
            began = time.monotonic()
            reason = "the connection closed"
            # A stdio upstream's process is the relay's (POSIX: a process group of its own).
            relay = Relay() if upstream.command and sys.platform != "win32" else None
            try:
                async with open_session(
                    upstream,
                    self._on_upstream,
                    self.call_timeout,
                    self._call_headers,
                    stdio=relay.process if relay is not None else None,
                ) as session:
                    self.session, self._relay = session, relay
                    self._dead = anyio.Event()
                    await self.refresh()
                    self._ready.set()
                    if not started:
                        started = True
                        task_status.started()
                    else:
                        log.warning("upstream of `%s` is back (restart %d)", self.name, restarts)
                    await self._dead.wait()
                    reason = self._dead_reason
            except Exception as exc:  # a dead process or refused connection; first start raises
                if not started:
                    raise
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self._not_ready()
            if time.monotonic() - began > _HEALTHY_SECONDS:
                restarts = 0  # it ran fine for a while: count afresh
            restarts += 1
            log.error("upstream of `%s` is gone: %s", self.name, reason)
            if upstream.command and restarts > self.max_restarts:
                raise UpstreamGone(
                    f"the upstream MCP server of `{self.name}` stopped {restarts} times "
                    f"(last: {reason}); giving up so a supervisor sees it"
                )
            await anyio.sleep(min(_BACKOFF_MAX, self.backoff * 2 ** (restarts - 1)))

    def _not_ready(self) -> None:
        # Invariant: no session ⇔ `_ready` unset, so waiters wake only for a live session.
        self.session = self._relay = None
        if self._ready.is_set():
            self._ready = anyio.Event()

    def _upstream_died(self, reason: str) -> None:
        self._dead_reason = reason
        self._not_ready()  # the next call waits for the restarted upstream, not the dead one
        self._dead.set()

    async def _live_session(self) -> ClientSession:
        """The current upstream session, waiting (bounded) while it is being restarted."""
        with anyio.move_on_after(self.call_timeout):
            while self.session is None:
                await self._ready.wait()
        if self.session is None:
            raise Unavailable(
                f"the upstream server of `{self.name}` is unavailable; try again shortly",
                code="upstream_unavailable",
            )
        return self.session

    async def _on_upstream(self, message: Any) -> None:
        # The upstream says its tools changed: re-list (and re-check pins) before the next use.
        if isinstance(message, types.ToolListChangedNotification):
            self._stale = True

    async def refresh(self) -> None:
        """Fetch the upstream's tools and check each definition against its pin."""
        session = self.session
        if session is None:
            raise Unavailable(
                f"the upstream server of `{self.name}` is unavailable", code="upstream_unavailable"
            )
        tools: dict[str, types.Tool] = {}
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            page = await session.list_tools(
                params=types.PaginatedRequestParams(cursor=cursor) if cursor else None
            )
            tools.update({t.name: t for t in page.tools if _TOOL_NAME.match(t.name)})
            cursor = page.next_cursor
            if not cursor:
                break
        definitions = {
            n: t.model_dump(by_alias=True, mode="json", exclude_none=True) for n, t in tools.items()
        }
        self._states = await self.authorizer.observe_tools(self.name, definitions)
        self._specs = await self.authorizer.tool_arguments([f"{self.name}.{n}" for n in tools])
        self._tools = tools
        self._fetched = time.monotonic()
        self._stale = False

    async def _recheck_states(self) -> None:
        """Pin states of the definitions already fetched (no upstream round trip)."""
        definitions = {
            n: t.model_dump(by_alias=True, mode="json", exclude_none=True) for n, t in self._tools.items()
        }
        self._states = await self.authorizer.observe_tools(self.name, definitions)

    async def _record_blocked(self, name: str) -> None:
        """Every blocked call is an audit record, not only the first detection."""
        payload = {
            "gateway": "mcp",
            "server": self.name,
            "tool": name,
            "resource": f"{self.name}.{name}",
            "outcome": "blocked_definition_not_approved",
            "is_error": True,
        }
        try:
            with anyio.CancelScope(shield=True):
                await self.authorizer.record(ev.CALL_RESULT, Verdict(decision={}), payload)
        except Exception:
            log.exception("could not record the blocked call of %s", name)

    def _current(self) -> bool:
        return not self._stale and time.monotonic() - self._fetched <= self.refresh_seconds

    async def _fresh(self) -> None:
        if self.session is not None and self._current():
            return  # the common case, without a timeout scope or the lock (a refresh sets both)
        await self._live_session()
        async with self._lock:
            if not self._current():
                try:
                    await self.refresh()
                except MCPError as exc:
                    if exc.error.code == types.CONNECTION_CLOSED:
                        self._upstream_died("the connection closed while listing tools")
                    raise Unavailable(
                        f"the upstream server of `{self.name}` failed to list its tools",
                        code="upstream_unavailable",
                    ) from None

    # -- the agent's side -----------------------------------------------------------------
    def server(self) -> Server[Any]:
        """The agent-facing server: the SDK's, with ``tools/call`` over a stream answered
        by :mod:`tether.gateway.mcp_stream` (Streamable HTTP keeps the SDK's path)."""
        from tether.gateway.mcp_stream import GatewayServer

        return GatewayServer(self)

    def http_app(self, path: str = "/mcp", host: str = "127.0.0.1") -> Any:
        """The Streamable HTTP app for agents. Stateless: each request carries its own task
        token and is authorized on its own, so no MCP session outlives a revoked task."""
        app = self.server().streamable_http_app(
            streamable_http_path=path, stateless_http=True, json_response=True, host=host
        )
        if self.resource is not None:
            return OAuthFrontDoor(app, self.resource, self.authorizer)
        return RequireBearer(app)

    @property
    def audience(self) -> str | None:
        return self.resource.resource if self.resource is not None else None

    def _credentials(self, request: Any) -> tuple[str, DpopProof | None, str | None]:
        """(task token, DPoP proof, traceparent header) of the current request: the HTTP
        request the SDK hands over, or ``None`` on a stream (stdio, in memory)."""
        headers = getattr(request, "headers", None)
        trace = headers.get("traceparent") if headers is not None else None
        if self.task_token is not None:
            # A session task this gateway opened is bound to its key: a fresh proof per call.
            return self.task_token, self.session_proof() if self.session_proof else None, trace
        header = headers.get("authorization", "") if headers is not None else ""
        scheme, _, token = header.partition(" ")
        if headers is None or scheme.lower() not in ("bearer", "dpop") or not token.strip():
            raise Unauthenticated(
                "send your task token as `Authorization: Bearer <token>`", code="missing_token"
            )
        proofs = headers.getlist("dpop") if hasattr(headers, "getlist") else []
        proof = None
        if proofs:
            url = self.public_url or str(getattr(request, "url", ""))
            proof = DpopProof(
                proof=proofs[0], method=str(getattr(request, "method", "POST")), url=url, count=len(proofs)
            )
        return token.strip(), proof, trace

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        try:
            token, proof, _ = self._credentials(ctx.request)
            await self._fresh()
            if any(v != APPROVED for v in self._states.values()):
                await self._recheck_states()  # an approval shows in the very next list
            approved = {
                f"{self.name}.{n}": t for n, t in self._tools.items() if self._states.get(n) == APPROVED
            }
            visible = await self.authorizer.visible(token, ACTION, list(approved), proof, self.audience)
        except TetherError as exc:
            raise MCPError(
                UNAUTHENTICATED if isinstance(exc, Unauthenticated) else types.INTERNAL_ERROR,
                exc.message,
                {"code": exc.code},
            ) from None
        return types.ListToolsResult(tools=[t for rid, t in approved.items() if rid in visible])

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return await self.handle_call(params.name, dict(params.arguments or {}), ctx.request)

    async def handle_call(self, name: str, arguments: dict[str, Any], request: Any) -> types.CallToolResult:
        """Decide, argument-check, forward and audit one ``tools/call``: the one path every
        call takes, from the SDK's handler (HTTP) or the stream fast path
        (:mod:`tether.gateway.mcp_stream`). ``request`` is the HTTP request, if any."""
        resource = f"{self.name}.{name}"
        try:
            token, proof, traceparent = self._credentials(request)
            await self._fresh()
        except TetherError as exc:
            return _result(exc.code, exc.message)
        if name not in self._tools:
            return _unknown_tool(name)
        if self._states.get(name) != APPROVED:
            # Blocked: ask again now, so an operator's approval works on the very next call
            # (on every gateway, with no cache to wait out).
            try:
                await self._recheck_states()
            except TetherError as exc:
                return _result(exc.code, exc.message)
        if self._states.get(name) != APPROVED:
            # Rug pull (ASI04): the definition is not one that was approved.
            await self._record_blocked(name)
            return _result(
                "tool_definition_changed",
                f"`{name}` presents a definition that is not approved; calls are blocked until "
                f"an operator reviews it (`tether mcp tools list --changed`) and approves it",
            )
        trace, _ = continue_trace(traceparent)
        specs = self._specs.get(resource, {})
        checked = arguments
        if self.local_upstream and any(
            spec.kind == "path" and arguments.get(n) is not None for n, spec in specs.items()
        ):
            # The upstream opens paths on this machine: decide on what a symlink points at
            # (in a thread: a slow mount must not stall the loop). A call with no path
            # argument has nothing to resolve, so it skips the thread hop.
            checked = await anyio.to_thread.run_sync(resolve_symlinks, specs, arguments, os.path.realpath)
        req = AuthorizeRequest(
            action=ACTION,
            resource=resource,
            arguments=checked,
            method="tools/call",
            path=name,
            trace_id=trace,
            audience=self.audience,
        )
        try:
            verdict = await self.authorizer.authorize(token, req, proof)
        except TetherError as exc:
            if exc.code == "unknown_resource":
                # Not in the catalog: the same answer as a tool the upstream lacks, so a
                # refusal never tells the agent which unlisted tools the upstream has.
                return _unknown_tool(name)
            return _result(exc.code, exc.message)
        if not verdict.allowed:
            return refusal(verdict)
        try:
            # Forward exactly what was decided: the canonical values, not the raw spelling.
            forward = canonicalize(specs, checked).forward
        except ArgumentRefused as exc:  # the broker allowed what this side cannot name: refuse
            return _result(exc.code, exc.message)
        return await self._forward(verdict, name, forward, trace, raw=arguments, decided=checked)

    async def _forward(
        self,
        verdict: Verdict,
        name: str,
        arguments: dict[str, Any],
        trace: str,
        *,
        raw: dict[str, Any],
        decided: dict[str, Any],
    ) -> types.CallToolResult:
        started = time.perf_counter()
        outcome = "ok"
        try:
            session, relay = self.session or await self._live_session(), self._relay
            with anyio.fail_after(self.call_timeout):
                if relay is not None:
                    result = await _relayed_call(session, relay, name, arguments)
                elif self.local_upstream:
                    result = await session.call_tool(name, arguments)
                else:
                    # Streamable HTTP: this call's own credential (minted for this task and
                    # service, or the injected secret), one call at a time.
                    headers = upstream_credential_headers(verdict)
                    async with self._call_headers.lock:
                        self._call_headers.current = headers
                        try:
                            result = await session.call_tool(name, arguments)
                        finally:
                            self._call_headers.current = {}
            outcome = "tool_error" if result.is_error else "ok"
        except TimeoutError:
            outcome = "upstream_timeout"
            result = _result("upstream_timeout", f"`{name}` did not answer within {self.call_timeout} s")
        except Exception as exc:  # the upstream's failure is the agent's error result, not ours
            log.warning("upstream call %s failed: %s", name, exc)
            outcome = "upstream_error"
            result = _result("upstream_error", f"the upstream server failed on `{name}`")
            if isinstance(exc, MCPError) and exc.error.code == types.CONNECTION_CLOSED:
                self._upstream_died(f"the connection closed during `{name}`")
                result = _result(
                    "upstream_unavailable",
                    f"the upstream server stopped during `{name}`; it is being restarted, call again",
                )
        payload: dict[str, Any] = {
            "gateway": "mcp",
            "server": self.name,
            "tool": name,
            "resource": f"{self.name}.{name}",
            "args_digest": args_digest(decided),  # the decision's digest: the two link up
            "outcome": outcome,
            "is_error": bool(result.is_error),
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if self.record_arguments:
            payload["arguments"] = raw  # as the agent sent them; masked like any payload
            if raw != arguments:
                payload["forwarded_arguments"] = arguments
        try:
            with anyio.CancelScope(shield=True):
                await self.authorizer.record(ev.CALL_FORWARDED, verdict, payload, trace)
        except Exception:
            log.exception("could not record the tool call of decision %s", verdict.decision_id)
        return result


async def _relayed_call(
    session: ClientSession, relay: Relay, name: str, arguments: dict[str, Any]
) -> types.CallToolResult:
    """``session.call_tool`` without the session's request machinery (see
    :mod:`tether.gateway.mcp_relay`): the answer is still parsed as a ``CallToolResult`` and
    checked against the tool's declared output schema by the session, as ``call_tool`` does."""
    raw = await relay.call("tools/call", {"name": name, "arguments": arguments})
    result = types.CallToolResult.model_validate(raw, by_name=False)
    if not result.is_error:
        await session.validate_tool_result(name, result)
    return result


class RequireBearer:
    """Refuse HTTP requests without a bearer before the MCP layer: 401 with a code, as the
    broker's API does (the token itself is checked by the broker on each call)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = next((v for k, v in scope["headers"] if k.lower() == b"authorization"), b"")
            scheme, _, token = header.decode("latin-1").partition(" ")
            if scheme.lower() not in ("bearer", "dpop") or not token.strip():
                from tether.gateway.http import _send_json

                body = {
                    "code": "missing_token",
                    "message": "send your task token as `Authorization: Bearer <token>`",
                }
                await _send_json(send, 401, body, {"www-authenticate": 'Bearer error="invalid_token"'})
                return
        await self.app(scope, receive, send)
