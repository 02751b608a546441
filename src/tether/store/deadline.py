"""A bound on how long one store connection may stay checked out.

A PostgreSQL server that stops answering (SIGSTOP, a hung disk, a network partition that
drops nothing) is never noticed by the client on its own: the kernel still acknowledges
TCP, so keepalives and ``tcp_user_timeout`` pass, and a server-side
``statement_timeout`` cannot fire in a process that does not run. A request thread would
wait in ``recv`` forever, holding its pool slot and the audit lock with it.

So every checkout is armed with a deadline, and one watchdog thread shuts down the socket
of any connection still checked out past it. The blocked driver call then fails at once,
SQLAlchemy invalidates the connection, and the caller gets ``store_unavailable``.

After a cut or a failed connect the store is presumed down for one budget: new
connections fail at once instead of each waiting out the connect timeout (a small
circuit breaker; the first connect after that window tries the store again).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, event

_unbounded = threading.local()


@contextlib.contextmanager
def unbounded() -> Iterator[None]:
    """Checkouts made by this thread inside the block are not cut (migrations, exports)."""
    _unbounded.on = getattr(_unbounded, "on", 0) + 1
    try:
        yield
    finally:
        _unbounded.on -= 1


def _set_timeouts(dbapi_conn: Any, ms: int) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"SET statement_timeout = {int(ms)}")
        cur.execute(f"SET lock_timeout = {int(ms)}")
    finally:
        cur.close()
    dbapi_conn.commit()  # a SET inside an open transaction would be undone by its rollback


class Watchdog:
    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.budget_ms = int(budget * 1000)
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, int]] = {}  # id(record) → (deadline, socket fd)
        self._thread: threading.Thread | None = None
        self._closed = False
        self.cut = 0  # connections cut so far (tests, diagnostics)
        self._down_until = 0.0

    def install(self, engine: Engine) -> None:
        event.listen(engine, "do_connect", self._on_connect)
        event.listen(engine, "checkout", self._on_checkout)
        for name in ("checkin", "invalidate", "soft_invalidate", "close", "detach"):
            event.listen(engine, name, self._on_release)

    def _trip(self) -> None:
        self._down_until = time.monotonic() + self.budget

    def _on_connect(self, dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        error = dialect.loaded_dbapi.OperationalError
        if time.monotonic() < self._down_until and not getattr(_unbounded, "on", 0):
            raise error("the store stopped answering moments ago; not connecting again yet")
        try:
            return dialect.connect(*cargs, **cparams)
        except error:
            self._trip()
            raise

    def _on_checkout(self, dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        # The server-side timeouts come with the connection (connect options); a connection
        # lent to unbounded work has them lifted, and restored before bounded work again.
        if getattr(_unbounded, "on", 0):
            if not record.info.get("tether_unbounded"):
                _set_timeouts(dbapi_conn, 0)
                record.info["tether_unbounded"] = True
            return
        if record.info.pop("tether_unbounded", False):
            _set_timeouts(dbapi_conn, self.budget_ms)
        try:
            fd = int(dbapi_conn.fileno())
        except Exception:  # a driver without a socket: nothing to cut
            return
        with self._cond:
            self._armed[id(record)] = (time.monotonic() + self.budget, fd)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tether-store-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _on_release(self, _dbapi_conn: Any, record: Any, *_: Any) -> None:
        # Under the lock: once this returns, the watchdog can no longer touch the fd, so
        # closing it (and the kernel reusing the number) is safe.
        with self._cond:
            self._armed.pop(id(record), None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                due = [k for k, (deadline, _) in self._armed.items() if deadline <= now]
                for key in due:
                    _, fd = self._armed.pop(key)
                    self._cut(fd)
                nearest = min((d for d, _ in self._armed.values()), default=None)
                self._cond.wait(None if nearest is None else max(0.0, nearest - now))

    def _cut(self, fd: int) -> None:
        self.cut += 1
        self._trip()
        with contextlib.suppress(OSError):
            sock = socket.socket(fileno=os.dup(fd))
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()
