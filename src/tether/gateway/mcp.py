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
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from tether.arguments import ArgSpec, ArgumentRefused, canonicalize, resolve_symlinks
from tether.audit import event as ev
from tether.broker import AuthorizeRequest, args_digest
from tether.errors import InvalidRequest, TetherError, Unauthenticated
from tether.gateway.authorizer import Authorizer, Verdict, refusal_message
from tether.gateway.http import continue_trace
from tether.gateway.pins import APPROVED
from tether.identity.dpop import DpopProof

log = logging.getLogger("tether.gateway.mcp")

ACTION = "tool:call"
#: Tool names that can be catalog ids under a server (``<server>.<tool>``); others are dropped.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_PAGES = 20
#: JSON-RPC server-error code for a refused task token (the -32000..-32099 range).
UNAUTHENTICATED = -32001


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where the real MCP server is: a command (stdio) or a Streamable HTTP URL."""

    command: Sequence[str] = ()
    url: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # static headers for an HTTP upstream

    def __post_init__(self) -> None:
        if bool(self.command) == bool(self.url):
            raise InvalidRequest("name exactly one upstream: a command or a URL", code="invalid_upstream")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise InvalidRequest("the upstream URL must be http(s)://…", code="invalid_upstream")


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
    ) -> None:
        self.name = server
        self.authorizer = authorizer
        self.task_token = task_token
        self.record_arguments = record_arguments
        self.call_timeout = call_timeout
        self.refresh_seconds = refresh_seconds
        self.public_url = public_url
        #: Set for a task this gateway opened itself (``tether.gateway.session``).
        self.session_proof: Callable[[], DpopProof] | None = None
        self.session: ClientSession | None = None
        self._tools: dict[str, types.Tool] = {}
        self._states: dict[str, str] = {}
        self._specs: dict[str, dict[str, ArgSpec]] = {}
        #: A stdio upstream shares this machine's filesystem: symlinks are resolved here.
        self.local_upstream = False
        self._fetched = float("-inf")
        self._stale = True
        self._lock = anyio.Lock()

    # -- upstream ---------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def connect(self, upstream: Upstream) -> AsyncIterator[McpGateway]:
        self.local_upstream = bool(upstream.command)
        async with contextlib.AsyncExitStack() as stack:
            if upstream.command:
                params = StdioServerParameters(
                    command=upstream.command[0],
                    args=list(upstream.command[1:]),
                    env=dict(upstream.env) or None,
                )
                read, write = await stack.enter_async_context(stdio_client(params, errlog=sys.stderr))
            else:
                import httpx2
                from mcp.client.streamable_http import streamable_http_client

                client = await stack.enter_async_context(
                    httpx2.AsyncClient(
                        headers=dict(upstream.headers), timeout=self.call_timeout, follow_redirects=False
                    )
                )
                read, write = await stack.enter_async_context(
                    streamable_http_client(upstream.url, http_client=client)
                )
            session = await stack.enter_async_context(
                ClientSession(read, write, message_handler=self._on_upstream)
            )
            await session.initialize()
            self.session = session
            await self.refresh()
            try:
                yield self
            finally:
                self.session = None

    async def _on_upstream(self, message: Any) -> None:
        # The upstream says its tools changed: re-list (and re-check pins) before the next use.
        if isinstance(message, types.ToolListChangedNotification):
            self._stale = True

    async def refresh(self) -> None:
        """Fetch the upstream's tools and check each definition against its pin."""
        assert self.session is not None
        tools: dict[str, types.Tool] = {}
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            page = await self.session.list_tools(
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

    async def _fresh(self) -> None:
        async with self._lock:
            if self._stale or time.monotonic() - self._fetched > self.refresh_seconds:
                await self.refresh()

    # -- the agent's side -----------------------------------------------------------------
    def server(self) -> Server[Any]:
        return Server(
            f"tether-gateway:{self.name}",
            version="1",
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
        )

    def http_app(self, path: str = "/mcp", host: str = "127.0.0.1") -> Any:
        """The Streamable HTTP app for agents. Stateless: each request carries its own task
        token and is authorized on its own, so no MCP session outlives a revoked task."""
        app = self.server().streamable_http_app(
            streamable_http_path=path, stateless_http=True, json_response=True, host=host
        )
        return RequireBearer(app)

    def _credentials(self, ctx: ServerRequestContext[Any, Any]) -> tuple[str, DpopProof | None, str | None]:
        """(task token, DPoP proof, traceparent header) of the current request."""
        request = ctx.request
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
            token, proof, _ = self._credentials(ctx)
            await self._fresh()
            if any(v != APPROVED for v in self._states.values()):
                await self._recheck_states()  # an approval shows in the very next list
            approved = {
                f"{self.name}.{n}": t for n, t in self._tools.items() if self._states.get(n) == APPROVED
            }
            visible = await self.authorizer.visible(token, ACTION, list(approved), proof)
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
        name, arguments = params.name, dict(params.arguments or {})
        resource = f"{self.name}.{name}"
        try:
            token, proof, traceparent = self._credentials(ctx)
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
        if specs and self.local_upstream:
            # The upstream opens paths on this machine: decide on what a symlink points at.
            checked = await anyio.to_thread.run_sync(resolve_symlinks, specs, arguments, os.path.realpath)
        req = AuthorizeRequest(
            action=ACTION,
            resource=resource,
            arguments=checked,
            method="tools/call",
            path=name,
            trace_id=trace,
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
            assert self.session is not None
            with anyio.fail_after(self.call_timeout):
                result = await self.session.call_tool(name, arguments)
            outcome = "tool_error" if result.is_error else "ok"
        except TimeoutError:
            outcome = "upstream_timeout"
            result = _result("upstream_timeout", f"`{name}` did not answer within {self.call_timeout} s")
        except Exception as exc:  # the upstream's failure is the agent's error result, not ours
            log.warning("upstream call %s failed: %s", name, exc)
            outcome = "upstream_error"
            result = _result("upstream_error", f"the upstream server failed on `{name}`")
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
