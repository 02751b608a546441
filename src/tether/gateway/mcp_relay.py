"""``tools/call`` to a stdio upstream as plain JSON-RPC frames, next to its ``ClientSession``.

The gateway's session with its upstream (``tether.gateway.upstream.open_session``) stays
an SDK ``ClientSession`` for the handshake, ``tools/list``, notifications and whatever the
upstream asks of its client. A forwarded call does not need that machinery: the request
is already decided and its arguments are the canonical ones, so :class:`Relay` writes it
on the upstream's stream under its own request id and takes the answer off the stream
before the session would see it. That saves the session's request model round trip, the
dispatcher's per-request cancel scope, timer, span and memory stream, and a task hop each
way (docs/architecture.md, "MCP gateway").

What the session's dispatcher does for a request, the relay does too: an abandoned call
(timeout, cancellation) sends the upstream ``notifications/cancelled``, and when the
upstream's stream ends every waiting call fails with ``CONNECTION_CLOSED`` — which the
gateway takes as the upstream's death, as before.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage

log = logging.getLogger("tether.gateway.mcp")

__all__ = ["Relay"]

_CANCEL_WRITE_SECONDS = 5.0  # the SDK's bound on a courtesy cancel
_CLOSED = types.ErrorData(code=types.CONNECTION_CLOSED, message="Connection closed")


class _Waiter:
    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.outcome: dict[str, Any] | types.ErrorData = _CLOSED


class Relay:
    """One upstream stream's relayed requests. :meth:`wrap` sits between the transport's
    streams and the session; :meth:`call` sends one request and waits for its answer."""

    def __init__(self) -> None:
        # String ids that never parse as integers: the session's dispatcher mints integers
        # (and reads "7" as 7), so the two id spaces cannot meet.
        self._ids = (f"tether-{n}" for n in itertools.count(1))
        self._pending: dict[str, _Waiter] = {}
        self._write: Any = None
        self._open = False

    @contextlib.asynccontextmanager
    async def wrap(self, read: Any, write: Any) -> AsyncIterator[tuple[Any, Any]]:
        """The streams to give the session: every frame but the relay's answers."""
        to_session, session_reads = anyio.create_memory_object_stream[SessionMessage | Exception]()
        self._write, self._open = write, True
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump, read, to_session)
                try:
                    yield session_reads, write
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self._close()
            session_reads.close()

    async def _pump(self, read: Any, to_session: Any) -> None:
        async with to_session:
            try:
                async for item in read:
                    if not self._answered(item):
                        await to_session.send(item)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                log.debug("the upstream's stream closed under the relay")
        self._close()  # the upstream's stream ended: nothing waiting will be answered

    def _answered(self, item: SessionMessage | Exception) -> bool:
        """Whether ``item`` answers a relayed request (and is then taken here)."""
        msg = item.message if isinstance(item, SessionMessage) else None
        if not isinstance(msg, types.JSONRPCResponse | types.JSONRPCError) or not isinstance(msg.id, str):
            return False
        waiter = self._pending.pop(msg.id, None)
        if waiter is None:
            return False  # not one of ours (or abandoned): the session drops or uses it
        waiter.outcome = msg.result if isinstance(msg, types.JSONRPCResponse) else msg.error
        waiter.done.set()
        return True

    def _close(self) -> None:
        self._open = False
        for waiter in self._pending.values():
            waiter.done.set()  # outcome stays CONNECTION_CLOSED
        self._pending.clear()

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The result of one request; ``MCPError`` for an error answer or a closed stream."""
        if not self._open:
            raise MCPError.from_error_data(_CLOSED)
        rid = next(self._ids)
        waiter = self._pending[rid] = _Waiter()
        request = types.JSONRPCRequest(jsonrpc="2.0", id=rid, method=method, params=params)
        sent = False
        try:
            try:
                await self._write.send(SessionMessage(message=request))
                sent = True
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                raise MCPError.from_error_data(_CLOSED) from None
            await waiter.done.wait()
        except anyio.get_cancelled_exc_class():
            if sent and self._pending.pop(rid, None) is not None:
                await self._cancel(rid)
            raise
        finally:
            self._pending.pop(rid, None)
        if isinstance(waiter.outcome, types.ErrorData):
            raise MCPError.from_error_data(waiter.outcome)
        return waiter.outcome

    async def _cancel(self, rid: str) -> None:
        note = types.JSONRPCNotification(
            jsonrpc="2.0", method="notifications/cancelled", params={"requestId": rid, "reason": "abandoned"}
        )
        with anyio.move_on_after(_CANCEL_WRITE_SECONDS, shield=True):
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                await self._write.send(SessionMessage(message=note))
