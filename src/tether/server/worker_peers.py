"""How the workers of one ``tether serve --workers N`` reach each other for admin changes.

The admin socket is served by worker 0 alone, so an admin operation that changes what a
worker holds in memory (the enforced policy set, the shadow set) would otherwise reach one
process of N. Every other worker listens on a private Unix socket of its own,
``<dir>/w<i>.sock``, in a directory the parent makes (mode 0700) before forking and removes
when it exits; worker 0, having applied a change itself, sends it to each of them and
reports how many applied it (``tether.server.policy_ops.across_workers``).

The peer socket runs a fixed, small set of operations (``policy_ops.PEER_OPERATIONS``),
not the admin table; like the admin socket it answers only the broker's own uid (SO_PEERCRED). Each
request runs on the socket's thread, one at a time: these are rare operator actions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.errors import TetherError
from tether.linesocket import exchange, peer_credentials
from tether.server.admin import operator_allowed

if TYPE_CHECKING:
    from tether.runtime import Runtime

log = logging.getLogger("tether")

MAX_REQUEST = 64 * 1024
#: How long worker 0 keeps trying a worker whose socket is not there yet (still starting).
#: With the answer's own bound, within the 60 s an admin client waits for the reply: the
#: workers are asked at once, so this holds for any N.
START_WAIT_SECONDS = 15.0
#: One peer's answer: a reload parses and analyzes the whole policy directory.
CALL_TIMEOUT_SECONDS = 30.0

PeerHandler = Callable[["Runtime", dict[str, Any]], dict[str, Any]]


def socket_path(directory: Path, index: int) -> Path:
    return directory / f"w{index}.sock"


class PeerServer:
    """Worker ``index``'s end (``index`` ≥ 1): a thread answering worker 0's requests."""

    def __init__(
        self, rt: Runtime, directory: Path, index: int, operations: Mapping[str, PeerHandler]
    ) -> None:
        self.rt, self.index, self.operations = rt, index, operations
        self.path = socket_path(directory, index)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._thread = threading.Thread(target=self._loop, name=f"tether-peer-w{index}", daemon=True)
        self._closed = threading.Event()

    def start(self) -> None:
        old = os.umask(0o177)
        try:
            self._sock.bind(str(self.path))
        finally:
            os.umask(old)
        self._sock.listen(8)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    self._answer(conn)
                except Exception:  # one bad exchange must not end the worker's socket
                    log.exception("worker %d: peer request failed", self.index)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        _pid, uid, _gid = peer_credentials(conn)
        buf = b""
        while not buf.endswith(b"\n") and len(buf) <= MAX_REQUEST:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
        reply: dict[str, Any]
        if not operator_allowed(uid):
            reply = {"ok": False, "error": {"code": "operator_forbidden", "message": f"uid {uid} refused"}}
        else:
            reply = self._dispatch(buf)
        conn.sendall(json.dumps(reply, default=str).encode() + b"\n")

    def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(line)
            handler = self.operations[doc["op"]]
            args = doc.get("args") or {}
            if not isinstance(args, dict):
                raise TypeError("args")
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": {"code": "invalid_request", "message": "not a peer request"}}
        try:
            return {"ok": True, "result": handler(self.rt, args)}
        except TetherError as exc:
            return {"ok": False, "error": exc.to_dict()}
        except Exception as exc:
            log.exception("worker %d: peer operation failed", self.index)
            return {"ok": False, "error": {"code": "internal_error", "message": type(exc).__name__}}


class WorkerPeers:
    """Worker 0's end: sends one operation to every other worker and gathers the answers."""

    def __init__(self, directory: Path, workers: int) -> None:
        self.directory, self.workers = directory, workers

    def broadcast(self, op: str, args: dict[str, Any]) -> list[dict[str, Any]]:
        """``[{"worker": i, "ok": True, "result": …} | {"worker": i, "ok": False, "error": …}]``
        for workers 1..N-1, in order, asked at once. A worker still starting (no socket
        yet) is waited for up to ``START_WAIT_SECONDS``."""
        others = range(1, self.workers)
        if not others:
            return []
        with ThreadPoolExecutor(max_workers=len(others), thread_name_prefix="tether-peers") as pool:
            return list(pool.map(lambda i: self._one(i, op, args), others))

    def _one(self, index: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        path = socket_path(self.directory, index)
        deadline = time.monotonic() + START_WAIT_SECONDS
        while True:
            try:
                buf = exchange(path, {"op": op, "args": args}, timeout=CALL_TIMEOUT_SECONDS)
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if time.monotonic() > deadline:
                    return _failed(index, "worker_unreachable", f"worker {index} does not answer ({exc})")
                time.sleep(0.1)  # bounded: the worker is starting
            except OSError as exc:
                return _failed(index, "worker_unreachable", f"worker {index}: {exc}")
        try:
            reply = json.loads(buf) if buf else None
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            return _failed(index, "worker_unreachable", f"worker {index} closed the connection")
        return {"worker": index, **reply}


def _failed(index: int, code: str, message: str) -> dict[str, Any]:
    return {"worker": index, "ok": False, "error": {"code": code, "message": message}}
