"""A stdio upstream's process and pipes: ``tools/call`` as plain JSON-RPC frames, next to
the ``ClientSession`` that does everything else.

The gateway's session with its upstream (``tether.gateway.upstream.open_session``) stays
an SDK ``ClientSession`` for the handshake, ``tools/list``, notifications and whatever the
upstream asks of its client. A forwarded call does not need that machinery: the request
is already decided and its arguments are the canonical ones, so :class:`Relay` writes it
straight to the upstream's stdin under its own request id, and the one stdout reader hands
its answer to the waiting call before anything else sees it. That saves the session's
request models, the dispatcher's per-request cancel scope, timer, span and memory stream,
and the transport's writer and reader hops (docs/architecture.md, "MCP gateway").

A relayed frame is written by orjson, and an answer to one is parsed once (orjson) and
its envelope checked here; only what is not plainly a result (an error answer, a request
or notification reusing the id, anything odd) takes the SDK's own message models, so it
is judged exactly as before.

What the SDK does, the relay does too: the process starts and stops as ``stdio_client``
starts and stops it; an abandoned call (timeout, cancellation) sends the upstream
``notifications/cancelled``; when the upstream's stdout ends every waiting call fails with
``CONNECTION_CLOSED``, which the gateway takes as the upstream's death.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, TextIO

import anyio
import mcp_types as types
import orjson
from anyio.abc import Process
from mcp.client.stdio import (
    FORCE_KILL_TIMEOUT,
    PROCESS_TERMINATION_TIMEOUT,
    StdioServerParameters,
    get_default_environment,
)
from mcp.os.posix.utilities import terminate_posix_process_tree
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage

log = logging.getLogger("tether.gateway.mcp")

__all__ = ["Relay"]

_CANCEL_WRITE_SECONDS = 5.0  # the SDK's bound on a courtesy cancel
_CLOSED = types.ErrorData(code=types.CONNECTION_CLOSED, message="Connection closed")
_BROKEN = (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError)


#: What a relayed call waits on: the ``result`` of its answer, or why it has none.
_Outcome = dict[str, Any] | types.ErrorData


def _frame(msg: types.JSONRPCMessage) -> bytes:
    # The SDK transport's serialization of a frame, one per line.
    return msg.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"


def _request_frame(rid: str, method: str, params: dict[str, Any]) -> bytes:
    """A request frame as :func:`_frame` writes it, by orjson (no model built and dumped);
    what orjson cannot write (an integer past 64 bits, a non-string key) takes the SDK's way."""
    try:
        return orjson.dumps(
            {"jsonrpc": "2.0", "id": rid, "method": method, "params": params},
            option=orjson.OPT_APPEND_NEWLINE,
        )
    except TypeError:  # orjson.JSONEncodeError
        return _frame(types.JSONRPCRequest(jsonrpc="2.0", id=rid, method=method, params=params))


def _plain_result(frame: dict[str, Any]) -> dict[str, Any] | None:
    """The ``result`` of a frame that can only be read as a ``JSONRPCResponse``: version
    2.0, a result object, no method and no error. Anything else is ``None`` (the models decide)."""
    result = frame.get("result")
    if (
        isinstance(result, dict)
        and frame.get("jsonrpc") == "2.0"
        and "method" not in frame
        and "error" not in frame
    ):
        return result
    return None


def _parse(line: bytes) -> SessionMessage | Exception:
    # The SDK transport's parsing: a bad line is handed to the session as an exception.
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:
        log.warning("the upstream sent a line that is not JSON-RPC: %s", exc)
        return exc


class Relay:
    """One upstream process. :meth:`process` starts it and yields the session's streams;
    :meth:`call` sends one request next to the session and waits for its answer."""

    def __init__(self) -> None:
        # String ids that never parse as integers: the session's dispatcher mints integers
        # (and reads "7" as 7), so the two id spaces cannot meet.
        self._ids = (f"tether-{n}" for n in itertools.count(1))
        self._pending: dict[str, asyncio.Future[_Outcome]] = {}
        self._stdin: Any = None
        # One frame at a time on stdin; uncontended, taking it does not yield to the loop.
        self._lock = anyio.Lock(fast_acquire=True)
        self._open = False

    @contextlib.asynccontextmanager
    async def process(self, params: StdioServerParameters, errlog: TextIO) -> AsyncIterator[tuple[Any, Any]]:
        """Start the upstream as the SDK's ``stdio_client`` does (its safe environment
        plus ``params.env``, a process group of its own, stderr to ``errlog``) and yield
        the session's (read, write) streams; on exit stop it as the SDK does (stdin
        closed, then the process group terminated past the grace period)."""
        proc = await anyio.open_process(
            [params.command, *params.args],
            env=get_default_environment() | (params.env or {}),
            stderr=errlog,
            cwd=params.cwd,
            start_new_session=True,
        )
        to_session, session_reads = anyio.create_memory_object_stream[SessionMessage | Exception]()
        session_writes, from_session = anyio.create_memory_object_stream[SessionMessage]()
        self._stdin, self._open = proc.stdin, True
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_stdout, proc, to_session)
                tg.start_soon(self._write_stdin, from_session, to_session)
                try:
                    yield session_reads, session_writes
                finally:
                    self._close()
                    with anyio.CancelScope(shield=True):
                        await _stop(proc)
                    tg.cancel_scope.cancel()
        finally:
            self._close()
            for stream in (session_reads, session_writes, to_session, from_session):
                stream.close()

    async def _read_stdout(self, proc: Process, to_session: Any) -> None:
        assert proc.stdout is not None
        buffer, deliver = b"", True
        try:
            async with to_session:
                async for chunk in proc.stdout:
                    *lines, buffer = (buffer + chunk).split(b"\n")
                    for line in lines:
                        if not line.strip() or self._answered(line) or not deliver:
                            continue  # (a session that left: keep draining, so the server can exit)
                        try:
                            await to_session.send(_parse(line))
                        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                            deliver = False
        except _BROKEN:
            log.debug("the upstream's stdout closed")
        finally:
            self._close()  # the upstream's stream ended: nothing waiting will be answered

    async def _write_stdin(self, from_session: Any, to_session: Any) -> None:
        try:
            async for msg in from_session:
                async with self._lock:
                    await self._stdin.send(_frame(msg.message))
        except _BROKEN:
            # As the SDK's transport does: the session sees the connection end.
            self._close()
            await to_session.aclose()

    def _answered(self, line: bytes) -> bool:
        """Whether this stdout line answers a relayed call (and is then taken here)."""
        if not self._pending:
            return False
        try:
            frame = orjson.loads(line)
        except ValueError:  # orjson.JSONDecodeError: NaN, an integer past 64 bits, …
            try:
                frame = json.loads(line)  # what the stdlib reads, as before
            except ValueError:
                return False
        rid = frame.get("id") if isinstance(frame, dict) else None
        if not isinstance(rid, str):
            return False
        waiter = self._pending.get(rid)
        if waiter is None:
            return False
        outcome: _Outcome | None = _plain_result(frame)
        if outcome is None:
            msg: types.JSONRPCMessage
            try:
                msg = types.jsonrpc_message_adapter.validate_python(frame, by_name=False)
            except ValueError:
                bad = types.ErrorData(code=types.INTERNAL_ERROR, message="the upstream's answer is malformed")
                msg = types.JSONRPCError(jsonrpc="2.0", id=rid, error=bad)
            if not isinstance(msg, types.JSONRPCResponse | types.JSONRPCError):
                return False  # a request or notification that reuses the id is the session's
            outcome = msg.result if isinstance(msg, types.JSONRPCResponse) else msg.error
        del self._pending[rid]
        if not waiter.done():
            waiter.set_result(outcome)
        return True

    def _close(self) -> None:
        self._open = False
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_result(_CLOSED)
        self._pending.clear()

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The result of one request; ``MCPError`` for an error answer or a closed stream."""
        if not self._open:
            raise MCPError.from_error_data(_CLOSED)
        rid = next(self._ids)
        # A bare future: the one reader sets it, nothing else waits on it.
        waiter: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self._pending[rid] = waiter
        data = _request_frame(rid, method, params)
        sent = False
        try:
            try:
                async with self._lock:
                    await self._stdin.send(data)
                sent = True
            except _BROKEN:
                raise MCPError.from_error_data(_CLOSED) from None
            outcome = await waiter
        except anyio.get_cancelled_exc_class():
            if sent and self._pending.pop(rid, None) is not None:
                await self._cancel(rid)
            raise
        finally:
            self._pending.pop(rid, None)
        if isinstance(outcome, types.ErrorData):
            raise MCPError.from_error_data(outcome)
        return outcome

    async def _cancel(self, rid: str) -> None:
        note = types.JSONRPCNotification(
            jsonrpc="2.0", method="notifications/cancelled", params={"requestId": rid, "reason": "abandoned"}
        )
        with anyio.move_on_after(_CANCEL_WRITE_SECONDS, shield=True), contextlib.suppress(*_BROKEN):
            async with self._lock:
                await self._stdin.send(_frame(note))


async def _stop(proc: Process) -> None:
    """Close stdin, give the server its grace period, then end its process group."""
    with contextlib.suppress(*_BROKEN):
        if proc.stdin is not None:
            await proc.stdin.aclose()
    with anyio.move_on_after(PROCESS_TERMINATION_TIMEOUT):
        while proc.returncode is None:
            await anyio.sleep(0.01)
    if proc.returncode is None:
        await terminate_posix_process_tree(proc, FORCE_KILL_TIMEOUT)
    with anyio.move_on_after(1.0), contextlib.suppress(*_BROKEN):
        if proc.returncode is not None:
            await proc.aclose()  # the pipes and the reaped process, not left to the GC
