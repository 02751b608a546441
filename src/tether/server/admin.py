"""The operator's channel: a Unix socket in the state directory.

No admin password exists. The kernel tells us who connected (SO_PEERCRED); only the uid
that runs the broker, or root, may operate it. The socket file is 0600 as a second
fence, but the peer check is the one that counts.

Protocol: one JSON object per line each way. Request ``{"op": NAME, "args": {...}}``;
reply ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"code", "message"}}``.
Each layer keeps its operations in an :class:`OperationTable`; the composition root
(``tether.runtime``) puts the tables of the layers it builds into ``Runtime.operations``,
and the server runs only those: nothing is registered by importing a module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.errors import Forbidden, InvalidRequest, NotFound, TetherError, Unavailable
from tether.linesocket import exchange, peer_credentials, refuse_if_served
from tether.server.parsing import parse_json_object

if TYPE_CHECKING:
    from tether.runtime import Runtime

log = logging.getLogger("tether.admin")
MAX_REQUEST = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Operator:
    uid: int
    pid: int

    @property
    def name(self) -> str:
        return f"uid:{self.uid}"


OpHandler = Callable[["Runtime", dict[str, Any], Operator], Any]  # (runtime, args, operator) → JSON value


class OperationTable(dict[str, OpHandler]):
    """One layer's admin operations; ``@table.operation("name")`` adds one."""

    def operation(self, name: str) -> Callable[[OpHandler], OpHandler]:
        def register(fn: OpHandler) -> OpHandler:
            if name in self:
                raise ValueError(f"admin operation `{name}` defined twice")
            self[name] = fn
            return fn

        return register


def operator_allowed(uid: int, broker_uid: int | None = None) -> bool:
    owner = os.getuid() if broker_uid is None else broker_uid
    return uid in (owner, 0)


class AdminServer:
    def __init__(self, runtime: Runtime, path: Path) -> None:
        self.runtime = runtime
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._inode = -1

    async def start(self) -> None:
        refuse_if_served(self.path)  # never take a live broker's socket away from it
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._handle, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._inode = self.path.stat().st_ino

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        # Only our own socket file: another broker may have taken the path since.
        with contextlib.suppress(OSError):
            if self.path.is_socket() and self.path.stat().st_ino == self._inode:
                self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            pid, uid, _gid = peer_credentials(sock)
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=30)
                if not operator_allowed(uid):
                    raise Forbidden(
                        f"uid {uid} may not operate this broker; run as the broker's user or root",
                        code="operator_forbidden",
                    )
                reply = await self._dispatch(line, Operator(uid, pid))
            except TetherError as exc:
                reply = {"ok": False, "error": exc.to_dict()}
            except (ValueError, asyncio.LimitOverrunError):
                reply = {"ok": False, "error": {"code": "invalid_request", "message": "request too large"}}
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _dispatch(self, line: bytes, operator: Operator) -> dict[str, Any]:
        doc = parse_json_object(line)
        op = doc.get("op")
        args = doc.get("args") or {}
        if not isinstance(op, str) or not isinstance(args, dict):
            raise InvalidRequest('send {"op": NAME, "args": {...}}', code="invalid_request")
        handler = self.runtime.operations.get(op)
        if handler is None:
            raise NotFound(f"unknown admin operation `{op[:64]}`", code="unknown_operation")
        try:
            result = await asyncio.to_thread(handler, self.runtime, args, operator)
        except TetherError:
            raise
        except Exception as exc:
            log.exception("admin operation %s failed", op)
            raise Unavailable(f"`{op}` failed: {type(exc).__name__}", code="internal_error") from exc
        return {"ok": True, "result": result}


def call(path: Path, op: str, args: dict[str, Any] | None = None, *, timeout: float = 60) -> Any:
    """Client side: run one admin operation on the broker listening at ``path``."""
    try:
        buf = exchange(path, {"op": op, "args": args or {}}, timeout=timeout)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise Unavailable(
            f"no broker is listening on `{path}`; start one with `tether up`", code="broker_not_running"
        ) from exc
    if not buf:
        raise Unavailable("the broker closed the admin connection", code="broker_not_running")
    reply = json.loads(buf)
    if not reply.get("ok"):
        err = reply.get("error") or {}
        raise RemoteError(
            err.get("message", "admin operation failed"),
            code=err.get("code", "error"),
            **{k: v for k, v in err.items() if k not in ("code", "message")},
        )
    return reply.get("result")


class RemoteError(TetherError):
    """An error the broker returned over the admin socket (``code`` is the broker's)."""

    status = 400
