"""One agent connection over a message stream (stdio, in memory): ``tools/call`` here,
everything else in the ``mcp`` SDK's server.

Why: for a ``tools/call`` the SDK's server spends about as long as the decision itself —
a task through its dispatcher, a cancel scope, a request context and session object, an
OpenTelemetry span, the params validated twice, the result dumped, validated and dumped
again (see docs/architecture.md, "MCP gateway"). Here a ``tools/call`` frame is checked
against the protocol revision the connection negotiated, exactly as the SDK checks it, and
handed to :meth:`McpGateway.handle_call` — the same decision, argument checks and audit
record as on the SDK's path — and its result is shaped for that revision as the SDK shapes
it. Every other frame (``initialize``, ``tools/list``, ``ping``, notifications, anything
unknown or malformed) goes to the SDK's server unchanged, and so does a ``tools/call`` that
arrives before the handshake completed or on a connection of the 2026 protocol era.

Rules kept from the SDK's dispatcher: each call runs in its own task (a slow tool blocks
nothing else); a call the peer cancels (``notifications/cancelled``) is interrupted and
never answered; when the agent's side closes, calls still running are interrupted and
answered with a connection-closed error. A malformed call gets a JSON-RPC error, as does a
frame that is not JSON-RPC at all (``PARSE_ERROR`` / ``INVALID_REQUEST``, id null), and a
failure inside the gateway gets ``INTERNAL_ERROR``; none of them ends the connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.models import InitializationOptions
from mcp.shared.message import SessionMessage
from mcp_types import methods
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from pydantic import ValidationError

if TYPE_CHECKING:
    from mcp.shared._stream_protocols import ReadStream, WriteStream

    from tether.gateway.mcp import McpGateway

log = logging.getLogger("tether.gateway.mcp")

__all__ = ["GatewayServer", "serve_stream"]

_METHOD = "tools/call"
_CLOSE_WRITE_SECONDS = 1.0  # bound on the last answer to a closing connection

ServeSdk = Callable[[Any, Any], Coroutine[Any, Any, None]]


class GatewayServer(Server[Any]):
    """The SDK's low-level server, with :meth:`run` (stream transports) serving
    ``tools/call`` through :func:`serve_stream`. Streamable HTTP does not use ``run``;
    there every request takes the SDK's path."""

    def __init__(self, gateway: McpGateway) -> None:
        super().__init__(
            f"tether-gateway:{gateway.name}",
            version="1",
            on_list_tools=gateway.list_tools,
            on_call_tool=gateway.call_tool,
        )
        self.gateway = gateway

    async def run(
        self,
        read_stream: ReadStream[SessionMessage | Exception],
        write_stream: WriteStream[SessionMessage],
        initialization_options: InitializationOptions,
        raise_exceptions: bool = False,
    ) -> None:
        async def sdk(read: Any, write: Any) -> None:
            await Server.run(self, read, write, initialization_options, raise_exceptions)

        await serve_stream(self.gateway, sdk, read_stream, write_stream)


def _modern_envelope(params: Mapping[str, Any] | None) -> bool:
    """The 2026-07-28 per-request envelope (the SDK's own test for the era)."""
    meta = params.get("_meta") if params else None
    return isinstance(meta, Mapping) and types.PROTOCOL_VERSION_META_KEY in meta


def _key(request_id: object) -> object:
    """Request ids correlate as the SDK correlates them: ``"7"`` and ``7`` are one id."""
    if isinstance(request_id, str):
        try:
            return int(request_id)
        except ValueError:
            return request_id
    return request_id


class _Call:
    """A ``tools/call`` being answered: its scope, and whether the peer cancelled it."""

    __slots__ = ("cancelled", "request", "scope")

    def __init__(self, request: types.JSONRPCRequest) -> None:
        self.request = request
        self.scope = anyio.CancelScope()
        self.cancelled = False


class _Connection:
    """What this side knows of the connection: its era, the negotiated revision, and
    the calls it is answering."""

    def __init__(self, gateway: McpGateway, write: WriteStream[SessionMessage]) -> None:
        self.gateway = gateway
        self.write = write
        self.legacy: bool | None = None  # decided by the first request, as the SDK decides
        self.version: str | None = None  # set by a well-formed `initialize`
        self.ready = False  # `notifications/initialized` after it
        self.calls: dict[object, _Call] = {}

    def take(self, item: SessionMessage | Exception) -> _Call | None:
        """The ``tools/call`` this side answers (registered, so a cancel finds it at
        once), or ``None``: the SDK's frame."""
        if not isinstance(item, SessionMessage):
            return None
        msg = item.message
        if isinstance(msg, types.JSONRPCRequest):
            if self.legacy is None:
                self.legacy = msg.method == "initialize" or not _modern_envelope(msg.params)
            if msg.method == "initialize":
                self._negotiated(msg.params)
            elif (
                msg.method == _METHOD
                and self.legacy
                and self.ready
                and self.version is not None
                and not _modern_envelope(msg.params)
                and _key(msg.id) not in self.calls
            ):
                call = self.calls[_key(msg.id)] = _Call(msg)
                return call
        elif isinstance(msg, types.JSONRPCNotification):
            if msg.method == "notifications/initialized" and self.version is not None:
                self.ready = True
            elif msg.method == "notifications/cancelled":
                self._cancelled(msg.params)
        return None

    def _negotiated(self, params: Mapping[str, Any] | None) -> None:
        # The SDK's negotiation (ServerRunner._negotiate_initialize): the client's
        # revision if served, else the latest. A malformed `initialize` changes nothing.
        try:
            init = types.InitializeRequestParams.model_validate(params or {}, by_name=False)
        except ValidationError:
            return
        requested = init.protocol_version
        self.version = requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION

    def _cancelled(self, params: Mapping[str, Any] | None) -> None:
        rid = params.get("requestId") if params else None
        if isinstance(rid, bool) or not isinstance(rid, str | int):
            return
        call = self.calls.get(_key(rid))
        if call is not None:
            call.cancelled = True
            call.scope.cancel()

    async def answer(self, call: _Call) -> None:
        """Answer one ``tools/call`` (in its own task)."""
        req = call.request
        reply: types.JSONRPCResponse | types.JSONRPCError | None = None
        try:
            with call.scope:
                reply = await self._reply(req)
        except anyio.get_cancelled_exc_class():
            # The connection is closing: say so, unless the peer cancelled this call.
            if not call.cancelled:
                await self.send(_error(req.id, types.CONNECTION_CLOSED, "Connection closed"), shield=True)
            raise
        finally:
            if self.calls.get(_key(req.id)) is call:
                del self.calls[_key(req.id)]
        if reply is not None and not call.cancelled:
            await self.send(reply)

    async def _reply(self, req: types.JSONRPCRequest) -> types.JSONRPCResponse | types.JSONRPCError:
        version = self.version or LATEST_HANDSHAKE_VERSION
        try:
            # The revision's own shape check, as the SDK's server makes it. A frame read off
            # the wire that passes has a string `name` and an object (or no) `arguments`, so
            # the SDK's second parse of the same params is kept for what only a lax parse
            # admits (bytes for a name, handed over in memory).
            methods.validate_client_request(_METHOD, version, req.params)
            params = req.params or {}
            name, arguments = params.get("name"), params.get("arguments")
            if not isinstance(name, str) or not isinstance(arguments, dict | None):
                parsed = types.CallToolRequestParams.model_validate(params, by_name=False)
                name, arguments = parsed.name, parsed.arguments
        except ValidationError:
            # The SDK's answer to the same frame (no pydantic text on the wire).
            return _error(req.id, types.INVALID_PARAMS, "Invalid request parameters", "")
        try:
            result = await self.gateway.handle_call(name, dict(arguments or {}), None)
        except Exception:
            log.exception("tools/call `%s` failed inside the gateway", name[:64])
            return _error(req.id, types.INTERNAL_ERROR, "the gateway failed on this call")
        try:
            wire = methods.serialize_server_result(
                _METHOD, version, result.model_dump(by_alias=True, mode="json", exclude_none=True)
            )
        except ValidationError:
            log.exception("tools/call `%s` produced a result invalid at %s", name[:64], version)
            return _error(req.id, types.INTERNAL_ERROR, "Handler returned an invalid result")
        return types.JSONRPCResponse(jsonrpc="2.0", id=req.id, result=wire)

    async def send(self, reply: types.JSONRPCResponse | types.JSONRPCError, shield: bool = False) -> None:
        if shield:  # the last answer to a closing connection: bounded, whatever cancels us
            with anyio.move_on_after(_CLOSE_WRITE_SECONDS, shield=True):
                await self._send(reply)
        else:
            await self._send(reply)  # unbounded, as before (a scope with no deadline only cost time)

    async def _send(self, reply: types.JSONRPCResponse | types.JSONRPCError) -> None:
        try:
            await self.write.send(SessionMessage(message=reply))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            log.debug("dropped the answer to %r: the connection closed", reply.id)


def _unreadable(exc: ValueError) -> types.JSONRPCError:
    """JSON-RPC's answer to a frame it cannot read (id null: none could be read). The SDK's
    server only logs these, so a client would wait for an answer that never comes."""
    errors = exc.errors() if isinstance(exc, ValidationError) else [{"type": "json_invalid"}]
    if any(e.get("type") == "json_invalid" for e in errors):
        return _error(None, types.PARSE_ERROR, "Parse error")
    return _error(None, types.INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message")


def _error(
    request_id: types.RequestId | None, code: int, message: str, data: Any = None
) -> types.JSONRPCError:
    return types.JSONRPCError(
        jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=message, data=data)
    )


async def serve_stream(
    gateway: McpGateway,
    sdk: ServeSdk,
    read_stream: ReadStream[SessionMessage | Exception],
    write_stream: WriteStream[SessionMessage],
) -> None:
    """Serve one connection until the agent's side closes (see the module docstring)."""
    conn = _Connection(gateway, write_stream)
    to_sdk, sdk_reads = anyio.create_memory_object_stream[SessionMessage | Exception]()
    async with anyio.create_task_group() as tg:
        # The SDK owns (and finally closes) the write stream; it ends after this loop
        # closed its read side, so every answer here is written before that.
        tg.start_soon(sdk, sdk_reads, write_stream)
        async with to_sdk, anyio.create_task_group() as calls:
            try:
                async for item in read_stream:
                    call = conn.take(item)
                    if call is not None:
                        calls.start_soon(conn.answer, call)
                    elif isinstance(item, ValueError):  # a line that is not JSON-RPC
                        await conn.send(_unreadable(item))
                    else:
                        await to_sdk.send(item)
            except anyio.ClosedResourceError:
                log.debug("the agent's stream closed under the gateway; treating it as EOF")
            finally:
                await read_stream.aclose()
            calls.cancel_scope.cancel()  # EOF: calls still running end, as in the SDK
